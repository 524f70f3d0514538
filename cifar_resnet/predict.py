"""Predict the classes of image files with a trained model.

The model can be a run folder (its newest valid checkpoint), a checkpoint file, or a file made
by ``cifar-resnet export``: TorchScript, ONNX or safetensors, each of which carries its class
names, normalisation and training image size (see :mod:`cifar_resnet.export`).

Images of any size and any mode Pillow reads are decoded by the training rules of
:func:`cifar_resnet.data.decode_image`: converted to RGB, then resized by the training rule:
shorter side to N, centre crop to N x N, where N is the training image size (the checkpoint's
``image_size``, or 32, CIFAR's size, when the run kept the data's own size).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import CIFAR_SIDE, decode_image
from .errors import CheckpointError, DataError, UsageError
from .loader import DeviceLoader

# The name of the metadata entry in exported files (a TorchScript extra file; ONNX and
# safetensors store the same fields as separate string key/value pairs).
METADATA_FILE = "cifar_resnet.json"
METADATA_FORMAT = "cifar-resnet"
BATCH_SIZE = 256  # images per forward pass


@dataclass
class Predictor:
    """A model that maps normalised images to logits, and what is needed to feed it.

    ``forward`` takes float32 (B, 3, N, N) images, normalised as in training, and returns
    float32 (B, classes) logits as a numpy array.
    """

    forward: Callable[[torch.Tensor], np.ndarray]
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    model_name: str
    source: str

    def logits(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
        """uint8 (N, H, W, 3) images -> float32 (N, classes) logits.

        With ``tta``, the average of the logits of each image and its mirror image (the same
        flip test-time augmentation as ``evaluate --tta``).
        """
        # The evaluation loader normalises, so predictions see exactly what evaluation sees.
        loader = DeviceLoader(
            images,
            np.zeros(len(images), dtype=np.int64),
            BATCH_SIZE,
            train=False,
            mean=self.mean,
            std=self.std,
        )
        out = []
        for x, _ in loader:
            logits = self.forward(x)
            if tta:
                logits = (logits + self.forward(x.flip(3).contiguous())) / 2
            out.append(logits)
        if not out:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


def metadata(
    classes: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    model_name: str,
    image_size: int,
) -> dict[str, str]:
    """The string key/value pairs every exported file carries."""
    return {
        "format": METADATA_FORMAT,
        "classes": json.dumps(list(classes)),
        "mean": json.dumps([float(v) for v in mean]),
        "std": json.dumps([float(v) for v in std]),
        "model_name": model_name,
        "image_size": str(int(image_size)),
    }


def checkpoint_image_size(ckpt: dict[str, Any]) -> int:
    """The side of the training images: --image-size, else the data's own size (recorded as
    ``input_size``), else 32 (CIFAR's)."""
    return (
        int(ckpt.get("config", {}).get("image_size") or 0)
        or int(ckpt.get("input_size", 0))
        or CIFAR_SIDE
    )


def _from_metadata(meta: dict[str, str], where: str) -> dict[str, Any]:
    if meta.get("format") != METADATA_FORMAT:
        raise CheckpointError(
            f"{where} carries no cifar-resnet metadata (class names, "
            "normalisation); export it with `cifar-resnet export`"
        )
    try:
        return {
            "classes": [str(c) for c in json.loads(meta["classes"])],
            "mean": tuple(float(v) for v in json.loads(meta["mean"])),
            "std": tuple(float(v) for v in json.loads(meta["std"])),
            "model_name": meta["model_name"],
            "image_size": int(meta.get("image_size") or CIFAR_SIDE),
        }
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{where} has damaged cifar-resnet metadata ({e})") from None


@contextmanager
def _no_deprecation_warnings() -> Iterator[None]:
    # torch.jit and the TorchScript-based ONNX exporter warn that they are deprecated; they
    # are still the ones that need no extra packages (the dynamo exporter needs onnxscript).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _torch_forward(model: torch.nn.Module) -> Callable[[torch.Tensor], np.ndarray]:
    @torch.no_grad()
    def forward(x: torch.Tensor) -> np.ndarray:
        return model(x).float().cpu().numpy()

    return forward


def from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> Predictor:
    """A predictor from a loaded checkpoint dict (fp32, on the CPU)."""
    from .evaluate import load_model

    return Predictor(
        _torch_forward(load_model(ckpt, "cpu")),
        list(ckpt["classes"]),
        tuple(ckpt["mean"]),
        tuple(ckpt["std"]),
        checkpoint_image_size(ckpt),
        ckpt["model_name"],
        source,
    )


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold ``code/`` and ``constants.pkl``; torch.save archives do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _load_torchscript(path: Path) -> Predictor:
    extra = {METADATA_FILE: ""}
    try:
        with _no_deprecation_warnings():
            model = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise CheckpointError(
            f"cannot load TorchScript file {path} ({str(e).strip()[:160]})"
        ) from None
    try:
        meta = json.loads(extra[METADATA_FILE] or "{}")
    except ValueError:
        meta = {}
    info = _from_metadata(meta, str(path))
    return Predictor(_torch_forward(model.eval()), source=str(path), **info)


def _load_onnx(path: Path) -> Predictor:
    ort = require("onnxruntime", "export")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise CheckpointError(f"cannot load ONNX file {path} ({str(e).strip()[:160]})") from None
    info = _from_metadata(session.get_modelmeta().custom_metadata_map, str(path))
    name = session.get_inputs()[0].name

    def forward(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {name: x.cpu().numpy().astype(np.float32)})[0]

    return Predictor(forward, source=str(path), **info)


def _load_safetensors(path: Path) -> Predictor:
    from .models import create_model

    st = require("safetensors.torch", "export")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        state = st.load_file(str(path))
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise CheckpointError(
            f"cannot load safetensors file {path} ({str(e).strip()[:160]})"
        ) from None
    info = _from_metadata(meta, str(path))
    model = create_model(info["model_name"], len(info["classes"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path} does not match a {info['model_name']} model "
            f"({str(e).strip().splitlines()[0][:160]})"
        ) from None
    return Predictor(_torch_forward(model.eval()), source=str(path), **info)


def load_predictor(target: str | os.PathLike | dict[str, Any] | Predictor) -> Predictor:
    """A predictor from a run folder, a checkpoint (file or dict), or an exported file.

    The file's kind is read from its contents, not its name, except ``.onnx`` and
    ``.safetensors``.
    """
    if isinstance(target, Predictor):
        return target
    if isinstance(target, dict):
        return from_checkpoint(target)
    from .checkpoint import resolve_checkpoint

    path = Path(target)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            return _load_onnx(path)
        if suffix == ".safetensors":
            return _load_safetensors(path)
        if _is_torchscript(path):
            return _load_torchscript(path)
    found, ckpt = resolve_checkpoint(path)
    return from_checkpoint(ckpt, str(found))


def require(module: str, extra: str):
    """Import an optional dependency, or fail with the pip command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise UsageError(
            f"this needs the optional package {package}; install it with "
            f"pip install 'cifar-resnet[{extra}]'"
        ) from None


def _image_suffixes() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def expand_paths(paths: Iterable[str | os.PathLike], warn: Callable[[str], None]) -> list[Path]:
    """Files as given, folders recursively (image files only, hidden ones skipped), sorted."""
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
    tta: bool = False,
    image_size: int | None = None,
    warn: Callable[[str], None] = _stderr,
) -> list[dict[str, Any]]:
    """Classify image files (folders recursively); unreadable files are reported and skipped.

    ``model_or_ckpt``: a run folder, a checkpoint (path or dict), an exported file, or a
    :class:`Predictor`. ``image_size`` overrides the training image size. Returns one dict per
    readable image: ``path``, ``class`` and ``probability`` of the top class, and ``top_k``,
    a list of ``{"class", "index", "probability"}`` in decreasing probability.
    """
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    predictor = load_predictor(model_or_ckpt)
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
    logits = torch.from_numpy(predictor.logits(np.stack(images), tta=tta))
    probs = torch.softmax(logits.double(), dim=1)
    k = min(top_k, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
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


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="classify image files with a run, a checkpoint or an exported model",
        description="Classify images of any size: each is converted to RGB and resized by the "
        "training rule (shorter side to N, centre crop to N x N; N is the training image "
        "size, 32 for CIFAR). Unreadable files are reported on stderr and skipped.",
    )
    p.add_argument(
        "target",
        metavar="RUN_DIR|CHECKPOINT|EXPORTED",
        help="a run folder, a .pt checkpoint, or a file from `cifar-resnet export` "
        "(.onnx, TorchScript .pt, .safetensors)",
    )
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE_OR_FOLDER",
        help="image files, or folders searched recursively for images",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=3,
        metavar="K",
        help="how many classes to show per image, most probable first (default: 3)",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per line, one line per image"
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="flip test-time augmentation: average the logits of each image and its mirror image",
    )
    p.add_argument(
        "--image-size",
        type=int,
        metavar="N",
        help="resize to N x N instead of the "
        "training image size; only for a model trained with another size than "
        "it records",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.image_size is not None and args.image_size < 1:
        raise UsageError(f"--image-size must be positive, got {args.image_size}")
    results = predict_images(
        args.target, args.images, args.top_k, tta=args.tta, image_size=args.image_size
    )
    if not results:
        raise DataError(
            "no readable image among the given paths; pass image files or folders holding them"
        )
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            ranked = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top_k"])
            print(f"{r['path']}: {ranked}")
    return 0
