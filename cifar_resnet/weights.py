"""Weights made elsewhere: published state dicts (e.g. the He et al. ResNets of
akamaster/pytorch_resnet_cifar10) for ``evaluate --weights`` and the starting weights of a
fine-tuning run (``train --init-from``). Loaded safely: ``torch.load(weights_only=True)``,
and for old-style pickles that need them, numpy scalar types and nothing else."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import (
    CHECKPOINT_VERSION,
    FORMAT,
    load_checkpoint,
    load_error,
    model_options,
    resolve_checkpoint,
)
from .config import TrainConfig
from .errors import CheckpointError
from .models import has_option_a

# Globals an old-style weights pickle may need beyond what weights_only admits: numpy scalars
# (a saved accuracy such as ``best_prec1``) and their dtypes. Nothing that can run code.
_SCALAR_GLOBALS = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype")


def _allowed_globals() -> list[Any]:
    import numpy.dtypes

    scalar = np.float64(0).__reduce__()[0]  # numpy's scalar rebuilder, wherever it lives
    return [scalar, np.dtype, *(getattr(numpy.dtypes, n) for n in numpy.dtypes.__all__)]


def _load_allowing(path: Path) -> Any:
    """``torch.load(weights_only=True)``; where that refuses a global, once more with only the
    numpy scalar types admitted. Anything else a file would need is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means the file is unusable
        message = str(e)
        if not any(name in message for name in _SCALAR_GLOBALS):
            raise
    with torch.serialization.safe_globals(_allowed_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights in a file made elsewhere: a bare state dict, or a dict holding one under
    ``state_dict`` (or ``net``, as kuangliu/pytorch-cifar saves it); ``module.`` prefixes
    (DataParallel, DDP) are stripped.
    Loaded safely; a file that needs anything but tensors, plain data and numpy scalars, or
    holds no state dict, is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        obj = _load_allowing(path)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means the file is unusable
        safe = "tensors, plain data and numpy numbers"
        raise load_error(path, e, "weights file", safe, "corrupt or unreadable") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = obj.get("model")
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("net"), dict):
        obj = obj["net"]  # kuangliu/pytorch-cifar's {'net': ..., 'acc': ..., 'epoch': ...}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path} holds no state dict (a dict of tensors, or one under 'state_dict')"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def weights_checkpoint(
    path: str | os.PathLike, model_name: str, classes: list[str], mean, std
) -> dict[str, Any]:
    """A checkpoint dict around weights made elsewhere (:func:`load_weights_file`), so that
    evaluation, prediction and export take them like a run's. Published option A weights pad
    on both sides."""
    ckpt = {
        "format": FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": load_weights_file(path),
        "config": TrainConfig(model=model_name).to_dict(),
        "model_name": model_name,
        "classes": list(classes),
        "mean": list(mean),
        "std": list(std),
        "preset": "external",
        "source": str(path),
    }
    if has_option_a(model_name):
        ckpt["option_a_pad"] = "both"
    return ckpt


def init_weights(source: str | os.PathLike, model_name: str) -> tuple[dict[str, Any], dict]:
    """The weights a fine-tuning run starts from (``--init-from``) and the model options they
    need: a run folder (its newest valid checkpoint), a cifar-resnet checkpoint, or weights
    made elsewhere (published option A weights pad on both sides)."""
    source = Path(source)
    if source.is_dir():
        _, ckpt = resolve_checkpoint(source)
    else:
        try:
            ckpt = load_checkpoint(source)
        except CheckpointError:
            ckpt = None
    if ckpt is not None:
        if ckpt["model_name"] != model_name:
            raise CheckpointError(
                f"--init-from {source} holds a {ckpt['model_name']} model, the run trains "
                f"{model_name}; pass --model {ckpt['model_name']}"
            )
        return ckpt["model"], model_options(ckpt)
    options = {"option_a_pad": "both"} if has_option_a(model_name) else {}
    return load_weights_file(source), options
