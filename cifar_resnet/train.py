"""``fit``: a run from start to summary, in short phases: set up (runtime, run folder, data,
trainer, resumed state) -> plan (time budget) -> run files -> epochs (:mod:`.loop`) -> summary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt_io
from . import distributed
from .config import TrainConfig, fold_shortcut
from .data import DataBundle
from .errors import CheckpointError, CifarResnetError, DistributedError, UsageError
from .evaluate import check_classes
from .loader import eval_loaders
from .loop import train_epochs
from .models import ModelSpec, check_model_name, min_input_size
from .probe import plan_budget
from .run import Run, RunOptions, RunState
from .rundir import RunDir
from .runtime import resolve_device
from .threads import busy_note, governor
from .trainer import build_trainer, start
from .weights import init_weights

__all__ = ["fit", "RunOptions", "weights_digest", "check_resume"]


def fit(
    config: TrainConfig,
    bundle: DataBundle,
    out_dir: str | os.PathLike,
    options: RunOptions | None = None,
    *,
    preset: str = "seed",
    **option_values: Any,
) -> dict[str, Any]:
    """Train ``config`` on ``bundle`` into the run folder ``out_dir``; returns the summary.

    ``options``: how to run it, a :class:`~cifar_resnet.run.RunOptions`, whose fields may
    also be given as keywords (``device="cpu", quiet=True``). ``resume``: None starts a new
    run (refused if ``out_dir`` holds one, unless ``overwrite``); ``"auto"`` continues
    ``out_dir``'s newest valid checkpoint if there is one, else starts; ``"required"``
    continues it or fails; a loaded checkpoint dict continues from that. Launched by torchrun,
    every rank calls ``fit`` with the same arguments; only rank 0 writes and prints.
    ``started`` (a ``time.perf_counter()`` value) is when the run's clock started, for
    ``time_budget``; by default, now. ``data_spec`` (the ``--data`` value) is recorded, so
    that the run's later commands find its data without being told. ``progress``: draw a
    bar per epoch (default: when stdout is a terminal); otherwise a progress line goes to
    ``log`` every ``log_every`` steps (default: every 10% of an epoch, or 30 s).
    """
    options = dataclasses.replace(options or RunOptions(), **option_values)
    started = time.perf_counter() if options.started is None else options.started
    config = fold_shortcut(config)
    _check_input_size(config, bundle)
    device = resolve_device(options.device)
    dist_info, dev = distributed.setup(device, options.dist_backend, options.dist_timeout)
    quiet = options.quiet or not dist_info.is_main
    options = dataclasses.replace(options, started=started, quiet=quiet)
    folder, done = RunDir(out_dir), False
    # A time budget's CPU threads follow the cores other work leaves free (threads.py),
    # looked at from the run's start; another run is told if its set-up met such work.
    threads = governor(dev.type, dist_info.enabled)
    try:
        _take_folder(folder, dist_info, dev)
        ckpt = _resume_checkpoint(options.resume, folder, options.overwrite, dist_info.is_main, dev)
        run = _set_up(config, bundle, folder, preset, ckpt, dist_info, dev, options)
        if config.time_budget:
            run.threads = threads
        elif threads is not None and (note := busy_note(threads)):
            run.log(note)
        tty = _is_terminal() if options.progress is None else options.progress
        plan_budget(run, tty)
        _write_run_files(run, bundle.source)
        _train(run, tty)
        summary = _finish(run)
        # The run (its DDP model holds the process group) is released, and every rank has
        # finished, before the group is destroyed: a gloo group torn down while a peer's
        # model still referenced it could abort that process at exit.
        del run
        distributed.barrier()
        done = True
        return summary
    except RuntimeError as e:
        if not dist_info.enabled:
            raise
        # A peer died or timed out: say which rank noticed; torchrun names the one that failed.
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DistributedError(
            f"rank {dist_info.rank} of {dist_info.world_size} lost the other "
            f"ranks ({first}); continue with --resume auto"
        ) from None
    finally:
        if threads is not None:
            threads.restore()
        folder.unlock(tidy=not done)  # a refused run leaves no empty folder or lock behind
        distributed.cleanup()


def _train(run: Run, progress: bool) -> None:
    """The epochs; one image reaching a 1x1 map (BatchNorm's ValueError) is one line."""
    try:
        train_epochs(run, progress)
    except ValueError as e:
        if "Expected more than 1 value per channel" not in str(e):
            raise
        raise UsageError(
            "a training batch of one image reaches a 1x1 feature map, where BatchNorm needs 2 "
            "values: use a --batch-size >= 2 that leaves no single image over, or a larger "
            "--image-size"
        ) from None


def _is_terminal() -> bool:
    return sys.stdout.isatty()


def _take_folder(folder: RunDir, dist_info: distributed.DistInfo, dev: torch.device) -> None:
    """Rank 0 locks the run folder; every rank learns whether it could (no rank goes on into
    collectives that rank 0 has left)."""
    error = None
    if dist_info.is_main:
        try:
            folder.lock()
        except CifarResnetError as e:
            error = e
    if distributed.any_rank(error is not None, dev):
        raise error or DistributedError("rank 0 could not take the run folder; see its error")


def _resume_checkpoint(
    resume: dict[str, Any] | str | None,
    folder: RunDir,
    overwrite: bool,
    main: bool,
    dev: torch.device,
) -> dict[str, Any] | None:
    """The checkpoint to continue from, by ``checkpoint.find_resume``'s policy; a new run
    clears what a previous one left. Only rank 0 looks at the folder for a previous run and
    changes files (the others would see the files rank 0 is writing)."""
    if isinstance(resume, dict):
        return resume
    if resume not in (None, "auto", "required"):
        raise UsageError(f"resume must be None, 'auto', 'required' or a checkpoint, got {resume!r}")
    if resume is not None:
        found = ckpt_io.find_resume(folder.path, required=resume == "required", quarantine=main)
        if found is not None:
            return found[1]
    taken = main and resume is None and folder.holds_run() and not overwrite
    if distributed.any_rank(taken, dev):
        raise UsageError(
            f"{folder.path} already holds a run; continue it with fit(..., resume='auto'), "
            "replace it with fit(..., overwrite=True), or choose another out_dir"
        )
    if main:  # a new run: --overwrite, or --resume auto on a run killed before any checkpoint
        folder.clear()
    return None


def check_resume(resume: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse to continue a checkpoint with another model or batch size."""
    if resume["model_name"] != config.model:
        raise CheckpointError(
            f"{path} holds a {resume['model_name']} model but the run asks for "
            f"{config.model}; drop --model or start a new --out"
        )
    saved = resume["config"].get("batch_size")
    if saved is not None and saved != config.batch_size:
        raise UsageError(
            f"--batch-size {config.batch_size} differs from the run's {saved}: a resumed run "
            "counts its position in batches of its own size; drop --batch-size"
        )


def _set_up(config, bundle, folder, preset, resume, dist_info, dev, options: RunOptions) -> Run:
    """Runtime, seeds, the run's images, evaluation loaders, the trainer and its state."""
    if dist_info.enabled and config.batch_size < dist_info.world_size:
        raise UsageError(
            f"--batch-size {config.batch_size} is the global batch and must be at "
            f"least the number of processes ({dist_info.world_size})"
        )
    runtime, splits = start(config, bundle, dev, dist_info)
    if resume is not None:
        check_resume(resume, config, folder.path)
        check_classes(bundle, resume)
        splits.mean, splits.std = tuple(resume["mean"]), tuple(resume["std"])
    spec, init_state = _model_spec(config, len(splits.classes), resume)
    trainer = build_trainer(config, splits, runtime, spec, resume, init_state)
    state = RunState()
    if resume is not None:
        state = _run_state(resume["state"])
        ckpt_io.set_rng_state(resume["rng"])
        trainer.loader.set_epoch(state.epoch)  # the resumed epoch's order, crops and flips
        if state.planned_steps:  # a time budget's plan, laid over the recipe again
            trainer.schedule = trainer.schedule.laid_over(state.planned_steps)
    meta = {
        "classes": splits.classes,
        "mean": list(splits.mean),
        "std": list(splits.std),
        "model_name": spec.name,
        "preset": preset,
        "input_size": int(splits.train.images.shape[1]),
        **spec.options,
    }
    if options.data_spec is not None:
        meta["data"] = options.data_spec
    test_loader, val_loader = eval_loaders(splits, config, runtime)
    main = dist_info.is_main
    return Run(
        config=config,
        preset=preset,
        splits=splits,
        runtime=runtime,
        dist=dist_info,
        trainer=trainer,
        state=state,
        folder=folder,
        test_loader=test_loader,
        val_loader=val_loader,
        meta=meta,
        options=options,
        log=(lambda message: None) if options.quiet else options.log,
        writer=folder.tensorboard() if options.tensorboard and main else None,
    )


def _model_spec(config: TrainConfig, num_classes: int, resume: dict[str, Any] | None):
    """(the model's spec, starting weights or None): a resumed run's own spec; a new run's
    from ``--init-from``'s weights, else the current defaults."""
    if resume is not None:  # dropout (training only) is the recipe's, as the run began
        return dataclasses.replace(ckpt_io.model_spec(resume), dropout=config.dropout), None
    if config.init_from:
        state, options = init_weights(config.init_from, config.model)
        return ModelSpec(config.model, num_classes, dropout=config.dropout, **options), state
    return ModelSpec.new(config.model, num_classes, config.dropout), None


def _check_input_size(config: TrainConfig, bundle: DataBundle) -> None:
    """The model takes the images, the regularisers fit them (checked before the run folder
    is touched)."""
    check_model_name(config.model, config.dropout)
    side, least = int(bundle.train.images.shape[1]), min_input_size(config.model)
    if config.cutout > side:
        raise UsageError(
            f"--cutout {config.cutout} is larger than the images ({side}x{side}); give a "
            f"square side up to {side} (DeVries & Taylor: 16 for 32x32 CIFAR-10)"
        )
    if side < least:
        raise UsageError(
            f"{config.model} needs images of at least {least}x{least} pixels, these are "
            f"{side}x{side}; pass --image-size {max(least, 32)} or choose another --model"
        )


def _run_state(saved: dict[str, Any]) -> RunState:
    try:
        return RunState(**saved)
    except TypeError:
        raise CheckpointError("the checkpoint's run state has unknown fields") from None


def _write_run_files(run: Run, source: str) -> None:
    if not run.main:
        return
    run.folder.write_config(run.preset, run.config)
    run.folder.write_json(
        "run.json",
        {
            **run.meta,
            "device": str(run.runtime.device),
            "precision": str(run.runtime.amp_dtype or "fp32"),
            "channels_last": run.runtime.channels_last,
            "compile": run.runtime.compile,
            "cuda_graph": run.runtime.cuda_graph,
            "train_images": len(run.splits.train),
            "val_images": 0 if run.splits.val is None else len(run.splits.val),
            "test_images": len(run.splits.test),
            "steps_per_epoch": run.steps_per_epoch,
            "total_steps": run.total_steps,
            "torch": torch.__version__,
            "data_source": source,
            "world_size": run.dist.world_size,
            "sync_bn": run.config.sync_bn and run.dist.enabled,
        },
    )


def _finish(run: Run) -> dict[str, Any]:
    state, config = run.state, run.config
    last = state.metrics[-1]
    summary = {
        "epochs": state.epoch,
        "steps": state.step,
        "model": run.meta["model_name"],
        "preset": run.preset,
        "test_loss": last.get("test_loss"),
        "test_accuracy": last.get("test_acc"),
        "best_val_accuracy": state.best_val if run.val_loader is not None else None,
        "train_seconds": sum(r["epoch_seconds"] for r in state.metrics),
        "wall_seconds": state.wall_seconds,
        "parameters": sum(p.numel() for p in run.trainer.model.parameters()),
        "weights_sha256": weights_digest(run.trainer.model),
        "seconds": time.perf_counter() - run.started,
    }
    if config.time_budget:
        summary.update(time_budget=config.time_budget, planned_steps=state.planned_steps)
    if config.target_accuracy:
        summary.update(
            target_accuracy=config.target_accuracy,
            target_split=config.target_split,
            target_seconds=state.target_seconds if state.target_seconds >= 0 else None,
        )
    if run.main:
        newest = run.last_checkpoint or ckpt_io.checkpoint_files(run.folder.path)[0]
        summary["checkpoint"] = str(newest)
        run.folder.write_json("summary.json", summary)
    return summary


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer, in state_dict order: equal digests, equal weights."""
    h = hashlib.sha256()
    for name, t in ckpt_io.unwrap(model).state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
