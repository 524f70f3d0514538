"""The checkpoint format, in one place: what a checkpoint holds, how it is written and read,
and which one a run continues from.

A checkpoint is a plain dict of tensors and plain data, read back only through
``torch.load(weights_only=True)``: a file someone hands us cannot run code. Every field is
checked on load, and a file that does not fit is a one-line CheckpointError naming it.

Format (``version`` 2; version 1 files, written before the schema was checked, hold the same
fields and load as they are; their option A models pad at the end, see ``model_options``)::

    format "cifar-resnet", version      what this is
    model                               the unwrapped model's state_dict
    optimizer, state, rng               to continue exactly: optimizer state, RunState
                                        fields, every RNG's state
    config                              the resolved TrainConfig as a dict
    model_name, classes, mean, std,     what the model needs to be used
    preset, input_size, option_a_pad    (option_a_pad: He et al. option A models only)
    data                                the --data the run was trained on
    lookahead; ema, ema_n_averaged      only when the run uses them

Run folder layout::

    RUN/checkpoints/e0003-s0001173.pt   the newest ``keep`` checkpoints (epoch, global step)
    RUN/best.pt                         the best by validation accuracy (with --val-split)
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import MAX_IMAGE_SIZE, TrainConfig, apply_overrides, resolve_config
from .errors import CheckpointError, UsageError
from .files import write_atomic
from .models import ModelSpec, has_option_a
from .tensorcheck import (
    check_finite,
    check_normalisation,
    check_rng,
    check_state,
    check_tensors,
)
from .tensorcheck import validate_resume as validate_resume  # resuming's check, before loading

FORMAT = "cifar-resnet"
CHECKPOINT_VERSION = 2
READABLE_VERSIONS = (1, 2)
FULL_DISK_BYTES = 64 << 20  # a failed write with less free space than this: the disk is full
_NAME = re.compile(r"^e(\d+)-s(\d+)\.pt$")
# Fields every checkpoint has, with their types; resuming needs RESUME_FIELDS as well.
FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": dict,
    "config": dict,
    "model_name": str,
    "classes": list,
    "mean": (list, tuple),
    "std": (list, tuple),
}
RESUME_FIELDS: dict[str, type | tuple[type, ...]] = {"optimizer": dict, "state": dict, "rng": dict}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def make_checkpoint(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    config: TrainConfig,
    meta: dict[str, Any],
    lookahead: dict[str, torch.Tensor] | None = None,
    ema: torch.nn.Module | None = None,
    ema_n_averaged: int = 0,
) -> dict[str, Any]:
    """A checkpoint dict of the current format (the RNG states are taken now)."""
    ckpt = {
        "format": FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": state,
        "rng": rng_state(),
        "config": config.to_dict(),
        **meta,
    }
    if lookahead is not None:
        ckpt["lookahead"] = lookahead
    if ema is not None:
        ckpt.update(ema=ema.state_dict(), ema_n_averaged=int(ema_n_averaged))
    return ckpt


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically (a temporary file, fsync, rename): a crash or a full disk leaves the
    previous file intact and no partial one; either is a one-line OutputError. A checkpoint
    holding a non-finite tensor (a diverged run) is never written: DivergedError."""
    check_finite(ckpt)

    def write(tmp: Path) -> None:
        try:
            torch.save(ckpt, tmp)
        except RuntimeError as e:  # torch reports a failed write (ENOSPC) as RuntimeError
            full = shutil.disk_usage(tmp.parent).free < FULL_DISK_BYTES
            first = (str(e).strip().splitlines() or ["write failed"])[0][:120]
            raise OSError(errno.ENOSPC if full else errno.EIO, first) from None

    return write_atomic(
        path, write, "free space or choose another --out; the previous checkpoint is intact"
    )


def load_error(
    path: Path,
    e: BaseException,
    what: str = "checkpoint",
    safe: str = "tensors and plain data",
    damaged: str = "corrupt or truncated",
) -> CheckpointError:
    """The one-line error for a file ``torch.load(weights_only=True)`` refused: unsafe (it
    needs a Python global beyond ``safe``) or ``damaged`` (corrupt, truncated, no pickle)."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    # Only a refused GLOBAL means "unsafe"; garbage bytes fail as "Unsupported operand".
    if "GLOBAL" in str(e) or "safe_globals" in str(e):
        return CheckpointError(
            f"refusing to load {path}: it holds Python objects that could run code, not only {safe}"
        )
    if first.startswith("Weights only load failed") and what == "checkpoint":
        first = "not a readable checkpoint"  # torch's advice (weights_only=False) does not apply
    return CheckpointError(f"{what} {path} is {damaged} ({first[:160]})")


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means the file is unusable
        raise load_error(path, e) from None


def _check_fields(ckpt: dict[str, Any], fields: dict[str, Any], path: Path) -> None:
    for key, kind in fields.items():
        if not isinstance(ckpt.get(key), kind):
            found = "no" if key not in ckpt else f"a {type(ckpt[key]).__name__} as"
            raise CheckpointError(
                f"{path} has {found} {key!r} field; it is not a complete cifar-resnet "
                "checkpoint (written by another program, or damaged)"
            )


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a checkpoint; any problem is a one-line CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cifar-resnet checkpoint")
    version = ckpt.get("version", 1)
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} is a version {version!r} checkpoint; this cifar-resnet reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: upgrade cifar-resnet to use it"
        )
    _check_fields(ckpt, FIELDS, path)
    check_normalisation(ckpt["mean"], ckpt["std"], str(path))
    if not ckpt["classes"] or not all(isinstance(c, str) for c in ckpt["classes"]):
        raise CheckpointError(f"{path} has a damaged class list (not a list of names)")
    size = ckpt.get("input_size", 0)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_IMAGE_SIZE:
        raise CheckpointError(
            f"{path} has an input_size of {size!r:.20}, not 1 to {MAX_IMAGE_SIZE}; it is damaged"
        )
    return ckpt


def checkpoint_config(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint") -> TrainConfig:
    """The run's TrainConfig; unknown or mistyped fields are a one-line CheckpointError."""
    try:
        return apply_overrides(TrainConfig(), ckpt["config"], str(path)).validate()
    except UsageError as e:
        raise CheckpointError(f"{e} (in the checkpoint's config)") from None


def resumed_config(
    ckpt: dict[str, Any], path: str | os.PathLike, changes: dict[str, Any], preset: str = "seed"
) -> tuple[str, TrainConfig]:
    """(preset, recipe) of a run continued from ``ckpt``: its saved recipe (a damaged one is a
    CheckpointError) with ``changes`` (flags given with ``--resume``) on top."""
    preset = ckpt.get("preset", preset)
    saved = checkpoint_config(ckpt, path).to_dict()
    return preset, resolve_config(preset, saved, changes)[1]


def check_resumable(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Raise CheckpointError unless ``ckpt`` holds what continuing a run needs."""
    _check_fields(ckpt, RESUME_FIELDS, Path(path))
    rng = ckpt["rng"]
    if not all(k in rng for k in ("python", "numpy", "torch")):
        raise CheckpointError(f"{path} has an incomplete RNG state; it cannot be resumed exactly")
    check_rng(rng, str(path))
    check_state(ckpt["state"], str(path))


def load_weights(module: torch.nn.Module, state: dict[str, Any], what: str) -> None:
    """``load_state_dict`` strictly, every tensor checked first (shape, dtype, layout,
    finite: :func:`tensorcheck.check_tensors`); a mismatch is one line naming the first keys
    concerned."""
    template = module.state_dict()
    # BatchNorm fills a num_batches_tracked that state dicts of older torch versions lack.
    needed = {k for k in template if not k.endswith("num_batches_tracked")}
    if isinstance(state, dict) and not needed <= set(state) <= set(template):  # names first
        missing = [k for k in template if k not in state][:3]
        unexpected = [str(k) for k in state if k not in template][:3]
        raise CheckpointError(
            f"{what} does not fit the model (missing keys: {', '.join(missing) or 'none'}; "
            f"unexpected keys: {', '.join(unexpected) or 'none'})"
        )
    check_tensors(state, template, what, exact_dtype=False)
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError, AttributeError) as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        detail = " ".join(lines[1:3] if len(lines) > 1 else lines[:1])
        raise CheckpointError(f"{what} does not fit the model ({detail[:200]})") from None


def model_options(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What building the checkpoint's model needs besides its name and class count: for He et
    al. option A models, where the shortcut's zero channels go ("end" in version 1 files,
    written before cifar-resnet matched the published weights, so they compute as before)."""
    if not has_option_a(ckpt["model_name"]):
        return {}
    default = "end" if ckpt.get("version", 1) == 1 else "both"
    return {"option_a_pad": ckpt.get("option_a_pad", default)}


def model_spec(ckpt: dict[str, Any]) -> ModelSpec:
    """The spec of the checkpoint's model (name, class count, options)."""
    return ModelSpec(ckpt["model_name"], len(ckpt["classes"]), **model_options(ckpt))


def build_model(
    ckpt: dict[str, Any], device: str | torch.device = "cpu", ema: bool = False, where: str = ""
) -> torch.nn.Module:
    """The checkpoint's model (its EMA weights if ``ema``) on ``device``, in eval mode."""
    if ema and "ema" not in ckpt:
        raise UsageError("this checkpoint holds no EMA weights: train with --ema DECAY")
    model = model_spec(ckpt).build()
    load_weights(model, ckpt["ema" if ema else "model"], where or "the checkpoint")
    return model.to(device).eval()


def load_model(
    ckpt: dict[str, Any] | str | os.PathLike, device: str | torch.device = "cpu", ema: bool = False
) -> torch.nn.Module:
    """A trained model in eval mode from a checkpoint dict or file (its EMA weights if ema)."""
    where = "checkpoint"
    if not isinstance(ckpt, dict):
        where, ckpt = str(ckpt), load_checkpoint(ckpt)
    return build_model(ckpt, device, ema=ema, where=where)


def describe_checkpoint(ckpt: dict[str, Any]) -> str:
    """Where in its run a checkpoint was taken, e.g. ``epoch 3 complete, step 1173`` or
    ``interrupted in epoch 4 at step 1300``."""
    if "state" not in ckpt:
        return f"weights from {ckpt.get('source', 'elsewhere')}"
    state = ckpt["state"]
    epoch, step, within = state.get("epoch", "?"), state.get("step", "?"), state.get("epoch_step")
    if within:
        return f"interrupted in epoch {epoch + 1} at step {step}"
    return f"epoch {epoch} complete, step {step}"


def checkpoint_files(run_dir: str | os.PathLike) -> list[Path]:
    """The run's step checkpoints, newest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append(((int(m.group(1)), int(m.group(2))), p))
    return [p for _, p in sorted(found, reverse=True)]


def checkpoint_path(run_dir: str | os.PathLike, epoch: int, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"e{epoch:04d}-s{step:07d}.pt"


def checkpoint_position(path: Path) -> tuple[int, int]:
    """(epoch, step) from a checkpoint's file name."""
    m = _NAME.match(path.name)
    if not m:
        raise ValueError(f"not a checkpoint name: {path.name}")
    return int(m.group(1)), int(m.group(2))


def prune(run_dir: str | os.PathLike, keep: int, protect: list[Path] | tuple = ()) -> None:
    """Delete all but the newest ``keep`` checkpoints, never one in ``protect``."""
    for old in checkpoint_files(run_dir)[keep:]:
        if old not in protect:
            old.unlink(missing_ok=True)


def _warn_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def latest_valid(
    run_dir: str | os.PathLike, warn: Callable[[str], None] = _warn_stderr
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; corrupt ones are skipped with a message."""
    for path in checkpoint_files(run_dir):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            warn(f"warning: {e}; falling back to the previous checkpoint")
    return None


def find_resume(
    run_dir: str | os.PathLike,
    *,
    required: bool,
    quarantine: bool = True,
    warn: Callable[[str], None] = _warn_stderr,
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint a run in ``run_dir`` continues from, by the one policy the command line
    and the Python API share: the newest checkpoint that loads, skipping damaged ones with a
    warning; damaged ones newer than it are renamed ``*.pt.bad`` so that they never count as
    the newest again. Checkpoints that all fail to load are an error (a run never silently
    starts over); none at all is an error when ``required``, else None (start the run)."""
    run_dir = Path(run_dir)
    files = checkpoint_files(run_dir)
    warnings: list[str] = []
    found = latest_valid(run_dir, warnings.append)
    if found is None and files:  # checkpoints there but none loads: never start over
        try:
            load_checkpoint(files[0])
        except CheckpointError as e:
            raise CheckpointError(
                f"{e}, and no older checkpoint is valid; move the bad "
                f"files out of {run_dir}/checkpoints to start over"
            ) from None
    if found is None:
        if required:
            raise CheckpointError(
                f"--resume {run_dir}: the folder holds no checkpoint yet; start "
                f"the run with --out {run_dir} --resume auto"
            )
        return None
    for message in warnings:
        warn(message)
    for bad in files[: files.index(found[0])] if quarantine else []:
        bad.rename(bad.with_name(bad.name + ".bad"))
    check_resumable(found[1], found[0])
    return found


def resolve_checkpoint(target: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """A checkpoint file, or a run folder (its newest valid checkpoint)."""
    target = Path(target)
    if target.is_dir():
        found = latest_valid(target)
        if found is None:
            raise CheckpointError(f"no checkpoint in {target}; train first or pass a .pt file")
        return found
    return target, load_checkpoint(target)


def rng_state() -> dict[str, Any]:
    """Every global RNG's state as tensors and plain data (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`; a damaged state is a one-line CheckpointError."""
    try:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        kind, key, *rest = state["numpy"]
        np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))
        torch.set_rng_state(state["torch"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise CheckpointError(
            f"the checkpoint's RNG state is damaged ({type(e).__name__}); it cannot be resumed"
        ) from None
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
