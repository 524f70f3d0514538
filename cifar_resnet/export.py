"""Exported models: writing them as ONNX, TorchScript or safetensors, and reading them back.

Every exported file carries the class names, the normalisation (mean and std on the 0..1
scale), the model name and the training image size (:func:`metadata`), so that
``cifar-resnet predict FILE`` (and any other program) can feed it images without the
checkpoint:

- ONNX: ``metadata_props`` ``format``, ``classes`` (JSON list), ``mean``, ``std`` (JSON lists),
  ``model_name``, ``image_size``; input ``images`` float32 (batch, 3, N, N), normalised;
  output ``logits`` (batch, classes); the batch axis is dynamic.
- TorchScript: the same fields as one JSON object in the extra file ``cifar_resnet.json``.
- safetensors: the weights, and the same fields as the header's string metadata.

:func:`load_exported` reads any of them back as an :class:`~cifar_resnet.evaluate.Predictor`.
After an ONNX export the temporary file is checked against PyTorch with onnxruntime before it
is moved into place, on the run's test images when the data is given, otherwise on random
images.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import build_model, checkpoint_config, model_options, resolve_checkpoint
from .config import MAX_IMAGE_SIZE
from .data import CIFAR_SIDE, DataBundle, eval_split, subset
from .errors import CheckpointError, OutputError, UsageError, require
from .evaluate import (
    Predictor,
    check_classes,
    checkpoint_image_size,
    module_forward,
    predictor_from_checkpoint,
)
from .files import remove_stale_temps, write_atomic
from .tensorcheck import check_normalisation

FORMATS = ("onnx", "torchscript", "safetensors")
ONNX_OPSET = 17
CHECK_IMAGES = 256  # images the ONNX file is checked on
# The name of the metadata entry in exported files (a TorchScript extra file; ONNX and
# safetensors store the same fields as separate string key/value pairs).
METADATA_FILE = "cifar_resnet.json"
METADATA_FORMAT = "cifar-resnet"


def metadata(
    classes: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    model_name: str,
    image_size: int,
    options: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The string key/value pairs every exported file carries; ``options``: the model's
    build options (``checkpoint.model_options``: option A's padding), which a safetensors
    file needs to be rebuilt (files without them pad at the end, as cifar-resnet once did)."""
    return {
        "format": METADATA_FORMAT,
        "classes": json.dumps(list(classes)),
        "mean": json.dumps([float(v) for v in mean]),
        "std": json.dumps([float(v) for v in std]),
        "model_name": model_name,
        "image_size": str(int(image_size)),
        **{k: str(v) for k, v in (options or {}).items()},
    }


def _from_metadata(meta: dict[str, str], where: str) -> dict[str, Any]:
    """:func:`metadata`'s pairs back as Predictor fields; missing or damaged ones are a
    one-line CheckpointError naming ``where``."""
    if meta.get("format") != METADATA_FORMAT:
        raise CheckpointError(
            f"{where} carries no cifar-resnet metadata (class names, "
            "normalisation); export it with `cifar-resnet export`"
        )
    try:
        info = {
            "classes": [str(c) for c in json.loads(meta["classes"])],
            "mean": tuple(json.loads(meta["mean"])),
            "std": tuple(json.loads(meta["std"])),
            "model_name": str(meta["model_name"]),
            "image_size": int(meta.get("image_size") or CIFAR_SIDE),
        }
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{where} has damaged cifar-resnet metadata ({e})") from None
    check_normalisation(info["mean"], info["std"], f"{where}'s metadata")
    if not 1 <= info["image_size"] <= MAX_IMAGE_SIZE or not info["classes"]:
        raise CheckpointError(
            f"{where} has damaged cifar-resnet metadata (image_size {info['image_size']}, not 1 "
            f"to {MAX_IMAGE_SIZE}, or no class names)"
        )
    return info


@contextmanager
def _no_deprecation_warnings() -> Iterator[None]:
    # torch.jit and the TorchScript-based ONNX exporter warn that they are deprecated; they
    # are still the ones that need no extra packages (the dynamo exporter needs onnxscript).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


# Reading exported files.


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return []


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold ``code/`` and ``constants.pkl``; torch.save archives do not."""
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in _zip_names(path))


def _is_our_export(path: Path) -> bool:
    """True for a file :func:`export_model` wrote (read without running or loading it whole)."""
    if any(n.endswith(f"/extra/{METADATA_FILE}") for n in _zip_names(path)):
        return True
    try:
        with open(path, "rb") as f:
            if path.suffix.lower() == ".safetensors":
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(min(n, 1 << 24)))
                return header.get("__metadata__", {}).get("format") == METADATA_FORMAT
            if path.suffix.lower() == ".onnx":
                onnx = require("onnx", "export")
                proto = onnx.load(str(path), load_external_data=False)
                return any(
                    p.key == "format" and p.value == METADATA_FORMAT for p in proto.metadata_props
                )
    except Exception:  # noqa: BLE001 - unreadable as an export: not one of ours
        return False
    return False


def check_out(out: Path) -> None:
    """``export --out``: never inside a run's checkpoints/ (it would count as a checkpoint),
    never onto an existing file that export did not write (a checkpoint, anything else)."""
    if out.parent.name == "checkpoints":
        raise OutputError(f"--out {out} is in a run's checkpoints/ folder; write exports elsewhere")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name such as {out}/model.onnx")
    if (out.exists() or out.is_symlink()) and (out.is_symlink() or not _is_our_export(out)):
        raise OutputError(
            f"--out {out} exists and is not a file `cifar-resnet export` wrote; export never "
            "replaces other files: choose another --out or remove it"
        )


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
    return Predictor(module_forward(model), source=str(path), **info)


def _load_onnx(path: Path) -> Predictor:
    ort = require("onnxruntime", "export")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise CheckpointError(f"cannot load ONNX file {path} ({str(e).strip()[:160]})") from None
    info = _from_metadata(session.get_modelmeta().custom_metadata_map, str(path))
    name = session.get_inputs()[0].name

    def forward(x: torch.Tensor) -> torch.Tensor:
        # astype copies: onnxruntime gets a contiguous array even for a flipped view
        return torch.from_numpy(session.run(None, {name: x.cpu().numpy().astype(np.float32)})[0])

    return Predictor(forward, source=str(path), **info)


def _load_safetensors(path: Path) -> Predictor:
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
    weights = {"model_name": info["model_name"], "classes": info["classes"], "model": state}
    if "option_a_pad" in meta:
        weights["option_a_pad"] = meta["option_a_pad"]
    model = build_model(weights, "cpu", where=f"safetensors file {path}")
    return Predictor(module_forward(model), source=str(path), **info)


def load_exported(path: str | os.PathLike, torchscript: bool = False) -> Predictor | None:
    """A predictor from a file written by :func:`export_model`, or None when ``path`` is not
    one (not a file, or neither ``.onnx``, ``.safetensors`` nor a TorchScript archive).

    ONNX and safetensors files are told by their suffix. TorchScript is code: it is loaded
    (and so run) only with ``torchscript=True`` (``predict --torchscript``); without it, a
    TorchScript file is refused, never tried as weights or run as a fallback. A damaged
    exported file is a one-line CheckpointError.
    """
    path = Path(path)
    if not path.is_file():
        if torchscript:
            raise CheckpointError(f"--torchscript {path}: no such file")
        return None
    suffix = path.suffix.lower()
    is_torchscript = _is_torchscript(path)
    if torchscript != is_torchscript:
        raise CheckpointError(
            f"{path} is a TorchScript file: it holds code, which predict runs only when asked; "
            "pass --torchscript if you trust it"
            if is_torchscript
            else f"--torchscript: {path} is not a TorchScript file; drop --torchscript"
        )
    if torchscript:
        return _load_torchscript(path)
    if suffix == ".onnx":
        return _load_onnx(path)
    if suffix == ".safetensors":
        return _load_safetensors(path)
    return None


# Writing them.


def _export_onnx(
    model: torch.nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str]
) -> str:
    onnx = require("onnx", "export")
    import importlib.util

    dynamo = importlib.util.find_spec("onnxscript") is not None
    # Both exporters name the batch dimension dynamic, each in its own terms.
    if dynamo:
        batch = {"dynamic_shapes": ({0: torch.export.Dim("batch", min=1)},), "external_data": False}
    else:
        batch = {"dynamic_axes": {"images": {0: "batch"}, "logits": {0: "batch"}}}
    with _no_deprecation_warnings():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            opset_version=ONNX_OPSET,
            dynamo=dynamo,
            **batch,
        )
    proto = onnx.load(str(path))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return "dynamo" if dynamo else "torchscript"


def _export_torchscript(
    model: torch.nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str]
) -> None:
    with _no_deprecation_warnings():
        traced = torch.jit.trace(model, example)  # the models have no data-dependent branches
        torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: json.dumps(meta)})


def _export_safetensors(model: torch.nn.Module, path: Path, meta: dict[str, str]) -> None:
    st = require("safetensors.torch", "export")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    st.save_file(state, str(path), metadata=meta)


def check_images(
    ckpt: dict[str, Any], bundle: DataBundle | None, *, n: int = CHECK_IMAGES
) -> tuple[np.ndarray, str]:
    """uint8 (n, N, N, 3) images to compare exports on, and what they are.

    With ``bundle`` (the data the run was trained on, decoded at its image size): a
    stratified subset of at most ``n`` of the test images the run evaluates on (its
    ``limit_test`` and ``seed``). Without: 64 (at most ``n``) random images.
    """
    if bundle is None:
        size = checkpoint_image_size(ckpt)
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (min(n, 64), size, size, 3), dtype=np.uint8), "random images"
    check_classes(bundle, ckpt)
    config = checkpoint_config(ckpt)
    test = eval_split(
        bundle, "test", val_split=config.val_split, limit_test=config.limit_test, seed=config.seed
    )
    test = subset(test, min(n, len(test)), config.seed)
    return test.images, f"{len(test)} test images of {bundle.source}"


def compare(reference: Predictor, other: Predictor, images: np.ndarray) -> dict[str, Any]:
    """Max abs difference of the logits, and whether the top-1 predictions agree."""
    a, b = reference.logits(images), other.logits(images)
    agree = a.argmax(1) == b.argmax(1)
    return {
        "images": len(images),
        "max_abs_diff": float(np.abs(a - b).max()),
        "predictions_equal": bool(agree.all()),
        "agreement": float(agree.mean()),
    }


def require_packages(fmt: str, check: bool = True) -> None:
    """Fail on a missing optional package for exporting to ``fmt`` (and checking it) before
    any work, not after."""
    if fmt == "onnx":
        require("onnx", "export")
        if check:
            require("onnxruntime", "export")
    elif fmt == "safetensors":
        require("safetensors", "export")


def export_model(
    target: str | os.PathLike | dict[str, Any],
    fmt: str,
    out: str | os.PathLike,
    *,
    bundle: DataBundle | None = None,
    check: bool = True,
) -> dict[str, Any]:
    """Export a run's newest checkpoint (or a checkpoint file or dict) to the file ``out``.

    ``fmt``: one of FORMATS. Returns ``format``, ``out``, ``checkpoint`` (where it came from)
    and ``bytes``; for ONNX also ``exporter`` and, with ``check``, ``check``: the max abs
    logit difference against PyTorch and whether the predictions agree, measured with
    onnxruntime on :func:`check_images` of ``bundle`` before the file is moved into place.
    ``out`` is written atomically: on any failure no partial or temporary file is left.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if isinstance(target, dict):
        source, ckpt = "checkpoint", target
    else:
        found, ckpt = resolve_checkpoint(target)
        source = str(found)
    out = Path(out)
    check_out(out)
    require_packages(fmt, check)
    model = build_model(ckpt, "cpu", where=source)
    size = checkpoint_image_size(ckpt)
    meta = metadata(
        ckpt["classes"], ckpt["mean"], ckpt["std"], ckpt["model_name"], size, model_options(ckpt)
    )
    example = torch.zeros(2, 3, size, size)
    result: dict[str, Any] = {"format": fmt, "out": str(out), "checkpoint": source}
    images, where = check_images(ckpt, bundle) if fmt == "onnx" and check else (None, "")

    def write(tmp: Path) -> None:
        if fmt == "torchscript":
            _export_torchscript(model, example, tmp, meta)
        elif fmt == "safetensors":
            _export_safetensors(model, tmp, meta)
        else:
            result["exporter"] = _export_onnx(model, example, tmp, meta)
            if images is not None:  # on the temporary file, before it is moved onto ``out``
                reference = predictor_from_checkpoint(ckpt, source)
                result["check"] = {"on": where, **compare(reference, _load_onnx(tmp), images)}

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write {out}: {e.strerror or e}; choose another --out") from None
    remove_stale_temps(out.parent)  # an earlier export killed while writing
    write_atomic(out, write, "choose another --out")
    result["bytes"] = out.stat().st_size
    return result
