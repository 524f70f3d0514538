"""Checkpoints: complete, unwrapped, written atomically, loaded safely.

A checkpoint is a plain dict of tensors and plain data, read back only through
``torch.load(weights_only=True)``: a file someone hands us cannot run code.
Run folder layout::

    RUN/checkpoints/e0003-s001173.pt   the newest ``keep`` checkpoints (epoch, global step)
    RUN/best.pt                         the best by validation accuracy (with --val-split)
"""

from __future__ import annotations

import errno
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, OutputError

CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^e(\d+)-s(\d+)\.pt$")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace.

    A crash or a full disk leaves the previous file intact and no partial file behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            why = "the disk is full" if e.errno == errno.ENOSPC else e.strerror or str(e)
            raise OutputError(
                f"cannot write {path}: {why}; free space or choose another "
                "--out; the previous checkpoint is intact"
            ) from None
        raise


def write_file_atomic(path: str | os.PathLike, write) -> Path:
    """``write(tmp_path)`` into a temporary file beside ``path``, then ``os.replace``: readers
    see the old file or the new one, never half of one. OSError becomes a one-line
    OutputError and no temporary file is left behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        why = "the disk is full" if e.errno == errno.ENOSPC else e.strerror or str(e)
        raise OutputError(
            f"cannot write {path}: {why}; check the folder's permissions and free space"
        ) from None
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint safely; any problem is a one-line CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means the file is unusable
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        # Only a refused GLOBAL means "unsafe"; garbage bytes fail as "Unsupported operand".
        if "GLOBAL" in str(e) or "add_safe_globals" in str(e):
            raise CheckpointError(
                f"refusing to load {path}: it holds Python objects that "
                "could run code, not only tensors and plain data"
            ) from None
        if first.startswith("Weights only load failed"):  # torch's advice does not apply here
            first = "not a readable checkpoint"
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({first[:160]})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "cifar-resnet" or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a cifar-resnet checkpoint")
    return ckpt


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


def prune(run_dir: str | os.PathLike, keep: int) -> None:
    for old in checkpoint_files(run_dir)[keep:]:
        old.unlink(missing_ok=True)


def latest_valid(run_dir: str | os.PathLike, warn=print) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; corrupt ones are skipped with a message."""
    for path in checkpoint_files(run_dir):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            warn(f"warning: {e}; falling back to the previous checkpoint")
    return None


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
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
