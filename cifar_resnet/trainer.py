"""Building the trainer (:class:`step.Trainer`: the loader, model, optimizer, schedule and weight
averages of a run) one way for ``fit``, the time-budget probe and the benchmarks alike."""

from __future__ import annotations

from typing import Any

import torch

from . import checkpoint as ckpt_io
from . import distributed
from .config import TrainConfig
from .data import DataBundle, RunSplits, splits_for
from .errors import CheckpointError
from .loader import train_loader
from .models import ModelSpec, min_input_size
from .optim import Lookahead, Schedule, make_ema, make_optimizer
from .runtime import Runtime, resolve_runtime, seed_everything
from .step import Trainer


def start(
    config: TrainConfig, bundle: DataBundle, device: torch.device, dist_info=None
) -> tuple[Runtime, RunSplits]:
    """What every run starts from (``fit``, the benchmarks): the runtime resolved for the
    device and the process's rank, the seeds set, the run's images picked."""
    dist_info = dist_info or distributed.DistInfo()  # single process
    runtime = resolve_runtime(
        config, device, dist_info.enabled, dist_info.rank, dist_info.world_size
    )
    seed_everything(config.seed)
    return runtime, splits_for(bundle, config)


def early_side(config: TrainConfig, side: int) -> int:
    """The image side of progressive resizing's early steps for images of ``side`` pixels:
    ``early_scale`` of it, at least what the model takes; 0 when there is no smaller size."""
    if not config.early_scale:
        return 0
    small = max(min_input_size(config.model), round(config.early_scale * side))
    return small if small < side else 0


def build_trainer(
    config: TrainConfig,
    splits: RunSplits,
    runtime: Runtime,
    spec: ModelSpec | None = None,
    resume: dict[str, Any] | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> Trainer:
    """The training loader, model, optimizer and step as ``fit`` trains them, with ``resume``'s
    weights, optimizer, lookahead and EMA state loaded (not its RNG or counters), or a new
    run's starting weights ``init_state`` (fine-tuning). ``spec``: the model (by default a
    new ``config.model`` for the run's classes)."""
    dev = runtime.device
    loader = train_loader(splits, config, runtime)
    spec = spec or ModelSpec.new(config.model, len(splits.classes), config.dropout)
    model = spec.build().to(dev)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if hasattr(model, "init_whitening") and resume is None:
        # The stem whitens 2x2 patches of (up to) 5000 unaugmented training images.
        model.init_whitening(loader.augment(loader.images[:5000]))
    if init_state is not None and resume is None:
        ckpt_io.load_weights(model, init_state, f"--init-from {config.init_from}")
    optimizer = make_optimizer(model, config, dev)
    if resume is not None:
        ckpt_io.validate_resume(resume, model, optimizer)  # every tensor, before any is used
        ckpt_io.load_weights(model, resume["model"], "the checkpoint's model")
        _load_optimizer(optimizer, resume["optimizer"])
    train_model = model
    if runtime.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        if config.sync_bn:
            train_model = distributed.convert_sync_batchnorm(train_model, dev)
        train_model = DistributedDataParallel(
            train_model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    trainer = Trainer(
        model,
        optimizer,
        runtime,
        Schedule.of(config, len(loader)),
        loader=loader,
        wrapped=train_model,
        label_smoothing=config.label_smoothing,
        early_size=early_side(config, int(splits.train.images.shape[1])),
        early_fraction=config.early_fraction,
    )
    if config.lookahead:
        trainer.lookahead = Lookahead(model, config.lookahead)
        if resume is not None:
            trainer.lookahead.load_state_dict(resume.get("lookahead", {}))
    if config.ema:
        trainer.ema = make_ema(model, config.ema)
        if resume is not None and "ema" in resume:
            ckpt_io.load_weights(trainer.ema.module, resume["ema"], "the checkpoint's EMA")
            trainer.ema.n_averaged.fill_(resume["ema_n_averaged"])
            trainer.ema._started = True
    return trainer


def _load_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(
            f"the checkpoint's optimizer state does not fit the model ({str(e)[:120]})"
        ) from None
