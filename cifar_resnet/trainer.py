"""The trainer: the loader, model, optimizer, step and weight averages of a run, built one way
for ``fit``, the time-budget probe and the benchmarks alike; and the step as the loop sees it
(:func:`train_step`: lr, optimizer step, EMA, lookahead)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import checkpoint as ckpt_io
from . import distributed
from .config import TrainConfig, early_steps
from .data import RunSplits
from .errors import CheckpointError
from .loader import DeviceLoader, downscale, train_loader
from .models import create_model, min_input_size
from .optim import Lookahead, lr_at, make_ema, make_optimizer, set_lr, update_ema
from .runtime import Runtime
from .step import Stepper


@dataclass
class Trainer:
    """What training steps need: the loader, the model, its optimizer, the step, and the
    optional weight averages (lookahead's slow weights, an EMA)."""

    loader: DeviceLoader
    model: torch.nn.Module  # unwrapped (the stepper may hold a DDP or SyncBN wrapper)
    optimizer: torch.optim.Optimizer
    stepper: Stepper
    lookahead: Lookahead | None = None
    ema: Any = None  # torch.optim.swa_utils.AveragedModel
    early_size: int = 0  # progressive resizing: the side of the early steps' images (0 = off)
    early_fraction: float = 0.0  # the share of the steps trained at early_size


def model_name(config: TrainConfig) -> str:
    """The registry name, with ``shortcut`` applied to He et al. ResNets."""
    name = config.model
    if config.shortcut and name.startswith("resnet"):
        name = name.rstrip("b") + ("b" if config.shortcut == "B" else "")
    return name


def early_side(config: TrainConfig, side: int) -> int:
    """The image side of progressive resizing's early steps for images of ``side`` pixels:
    ``early_scale`` of it, at least what the model takes; 0 when there is no smaller size."""
    if not config.early_scale:
        return 0
    small = max(min_input_size(model_name(config)), round(config.early_scale * side))
    return small if small < side else 0


def build_trainer(
    config: TrainConfig,
    splits: RunSplits,
    runtime: Runtime,
    dist_info: distributed.DistInfo | None = None,
    resume: dict[str, Any] | None = None,
    model_options: dict[str, Any] | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> Trainer:
    """The training loader, model, optimizer and step as ``fit`` trains them, with ``resume``'s
    weights, optimizer, lookahead and EMA state loaded (not its RNG or counters), or a new
    run's starting weights ``init_state`` (fine-tuning). ``model_options``: see
    ``checkpoint.model_options``."""
    dist_info = dist_info or distributed.DistInfo()  # single process
    dev = runtime.device
    loader = train_loader(
        splits.train.images,
        splits.train.labels,
        config,
        mean=splits.mean,
        std=splits.std,
        device=dev,
        channels_last=runtime.channels_last,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
        num_classes=len(splits.classes),
    )
    options = {**(model_options or {}), **({"dropout": config.dropout} if config.dropout else {})}
    model = create_model(model_name(config), len(splits.classes), **options)
    model = model.to(dev)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if hasattr(model, "init_whitening") and resume is None:
        # The stem whitens 2x2 patches of (up to) 5000 unaugmented training images.
        model.init_whitening(loader.augment(loader.images[:5000]))
    if init_state is not None and resume is None:
        ckpt_io.load_weights(model, init_state, f"--init-from {config.init_from}")
    optimizer = make_optimizer(model, config, dev)
    if resume is not None:
        ckpt_io.load_weights(model, resume["model"], "the checkpoint's model")
        _load_optimizer(optimizer, resume["optimizer"])
    train_model = model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        if config.sync_bn:
            train_model = distributed.convert_sync_batchnorm(train_model, dev)
        train_model = DistributedDataParallel(
            train_model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    trainer = Trainer(loader, model, optimizer, Stepper(train_model, optimizer, runtime))
    trainer.early_size = early_side(config, int(splits.train.images.shape[1]))
    trainer.early_fraction = config.early_fraction
    trainer.stepper.label_smoothing = config.label_smoothing
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


def train_step(
    trainer: Trainer, x: torch.Tensor, y: torch.Tensor, lr: float, step: int, total_steps: int
) -> None:
    """Optimizer step number ``step`` (0-based) of ``total_steps`` at learning rate ``lr``."""
    set_lr(trainer.optimizer, lr, step, total_steps)
    if trainer.early_size and step < early_steps(trainer.early_fraction, total_steps):
        x = downscale(x, trainer.early_size)
    trainer.stepper.step(x, y)
    if trainer.ema is not None:
        update_ema(trainer.ema, trainer.model)
    if trainer.lookahead is not None:
        trainer.lookahead.after_step(step + 1, total_steps)


def iter_steps(trainer: Trainer, config: TrainConfig, total_steps: int) -> Iterator[int]:
    """Train from step 0 on ``config``'s schedule over ``total_steps``, epoch after epoch,
    yielding the number of steps done after each (for benchmarks and the budget probe)."""
    steps_per_epoch, step, epoch = len(trainer.loader), 0, 0
    while True:
        trainer.loader.set_epoch(epoch)
        for x, y in trainer.loader.batches(0):
            lr = lr_at(config, step, steps_per_epoch, total_steps)
            train_step(trainer, x, y, lr, step, total_steps)
            step += 1
            yield step
        epoch += 1


def train_steps(trainer: Trainer, config: TrainConfig, n: int) -> None:
    """Train ``n`` steps from step 0 on ``config``'s schedule laid over ``n`` steps."""
    for done in iter_steps(trainer, config, n):
        if done >= n:
            break
