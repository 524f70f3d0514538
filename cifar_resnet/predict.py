"""Predict the classes of image files with a trained model.

The model can be a run folder (its newest valid checkpoint), a checkpoint file, or a file made
by ``cifar-resnet export``: TorchScript, ONNX or safetensors, each of which carries its class
names, normalisation and training image size (see :mod:`cifar_resnet.export`).

Images of any size and any mode Pillow reads are decoded by the training rules of
:func:`cifar_resnet.data.decode_image`: converted to RGB, then resized by the training rule:
shorter side to N, centre crop to N x N, where N is the training image size (the checkpoint's
``image_size``, or 32, CIFAR's size, when the run kept the data's own size). Logits come from
:meth:`cifar_resnet.evaluate.Predictor.logits`, the path evaluation takes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import resolve_checkpoint
from .config import MAX_IMAGE_SIZE
from .data import decode_image
from .errors import DataError, UsageError
from .evaluate import Predictor, predictor_from_checkpoint
from .export import load_exported


def load_predictor(
    target: str | os.PathLike | dict[str, Any] | Predictor, torchscript: bool = False
) -> Predictor:
    """A predictor from a :class:`Predictor` (returned as is), a loaded checkpoint dict, a run
    folder (its newest valid checkpoint), a checkpoint file, or an exported file: ``.onnx``,
    ``.safetensors``, or TorchScript with ``torchscript=True`` only (it is code; see
    :func:`cifar_resnet.export.load_exported`).
    """
    if isinstance(target, Predictor):
        return target
    if isinstance(target, dict):
        return predictor_from_checkpoint(target)
    exported = load_exported(target, torchscript)
    if exported is not None:
        return exported
    found, ckpt = resolve_checkpoint(target)
    return predictor_from_checkpoint(ckpt, str(found))


def _image_suffixes() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def expand_paths(paths: Iterable[str | os.PathLike], warn: Callable[[str], None]) -> list[Path]:
    """Files as given, folders recursively (image files only, hidden ones skipped), sorted;
    a missing path or a folder without images is reported through ``warn``."""
    suffixes = _image_suffixes()
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = [
                f
                for f in sorted(p.rglob("*"))
                if f.is_file()
                and f.suffix.lower() in suffixes
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            ]
            if not inside:
                warn(f"warning: no image files in folder {p}")
            found += inside
        elif p.is_file():
            found.append(p)
        else:
            warn(f"warning: skipping {p}: no such file or folder")
    return found


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def predict_images(
    model_or_ckpt: str | os.PathLike | dict[str, Any] | Predictor,
    paths: Iterable[str | os.PathLike],
    top_k: int = 5,
    *,
    tta: int = 0,
    image_size: int | None = None,
    warn: Callable[[str], None] = _stderr,
    torchscript: bool = False,
) -> list[dict[str, Any]]:
    """Classify image files (folders recursively); unreadable files are reported and skipped.

    ``model_or_ckpt``: anything :func:`load_predictor` takes. ``tta``: test-time
    augmentation level as ``evaluate --tta`` (0 none, 1 mirror, 2 mirror and translations).
    ``image_size`` overrides the training image size. ``torchscript``: the model is a
    TorchScript file, to be run (refused otherwise: it is code). Returns one dict per
    readable image: ``path``, ``class`` and ``probability`` of the top class, and
    ``top_k``, a list of ``{"class", "index", "probability"}`` in decreasing probability.
    """
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    if image_size is not None and not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise UsageError(
            f"--image-size must be from 1 to {MAX_IMAGE_SIZE} (at most {MAX_IMAGE_SIZE} pixels "
            f"a side: small images), got {image_size}"
        )
    predictor = load_predictor(model_or_ckpt, torchscript)
    size = image_size or predictor.image_size
    files, images = [], []
    for path in expand_paths(paths, warn):
        try:
            images.append(decode_image(path, size))
        except DataError as e:
            warn(f"warning: skipping {path}: {e}")
            continue
        files.append(path)
    if not files:
        return []
    probs = torch.from_numpy(predictor.probabilities(np.stack(images), tta=tta))
    top_p, top_i = probs.topk(min(top_k, probs.shape[1]), dim=1)
    results = []
    for path, ps, idx in zip(files, top_p.tolist(), top_i.tolist()):
        ranked = [
            {"class": predictor.classes[i], "index": i, "probability": p} for p, i in zip(ps, idx)
        ]
        results.append(
            {
                "path": str(path),
                "class": ranked[0]["class"],
                "probability": ranked[0]["probability"],
                "top_k": ranked,
            }
        )
    return results
