"""Export a trained model to ONNX, TorchScript or safetensors, with what is needed to use it.

Every exported file carries the class names, the normalisation (mean and std on the 0..1
scale), the model name and the training image size, so that ``cifar-resnet predict FILE``
(and any other program) can feed it images without the checkpoint:

- ONNX: ``metadata_props`` ``format``, ``classes`` (JSON list), ``mean``, ``std`` (JSON lists),
  ``model_name``, ``image_size``; input ``images`` float32 (batch, 3, N, N), normalised;
  output ``logits`` (batch, classes); the batch axis is dynamic.
- TorchScript: the same fields as one JSON object in the extra file ``cifar_resnet.json``.
- safetensors: the weights, and the same fields as the header's string metadata.

After an ONNX export the file is checked against PyTorch with onnxruntime, on real test images
with ``--data``, otherwise on random images.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import OutputError, UsageError
from .predict import (
    METADATA_FILE,
    Predictor,
    _no_deprecation_warnings,
    checkpoint_image_size,
    from_checkpoint,
    load_predictor,
    metadata,
    require,
)

FORMATS = ("onnx", "torchscript", "safetensors")
ONNX_OPSET = 17
CHECK_IMAGES = 256  # images the ONNX file is checked on


@contextmanager
def _atomic_path(out: Path) -> Iterator[Path]:
    """A temporary path beside ``out``, moved onto it only when the block succeeds."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
    except OSError as e:
        raise OutputError(f"cannot write {out}: {e.strerror or e}; choose another --out") from None
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; an export is not
        os.replace(tmp, out)
    except OSError as e:
        raise OutputError(f"cannot write {out}: {e.strerror or e}; choose another --out") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


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
    ckpt: dict[str, Any],
    data: str | None,
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    n: int = CHECK_IMAGES,
) -> tuple[np.ndarray, str]:
    """uint8 (n, N, N, 3) images to compare exports on: the test split's, or random ones."""
    size = checkpoint_image_size(ckpt)
    if data is None:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (min(n, 64), size, size, 3), dtype=np.uint8), "random images"
    from .data import subset
    from .evaluate import load_run_data

    config = ckpt.get("config", {})
    bundle = load_run_data(ckpt, data, data_dir=data_dir, cache_dir=cache_dir)
    test = subset(bundle.test, min(n, len(bundle.test)), int(config.get("seed", 0)))
    return test.images, f"{len(test)} test images of {data}"


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


def export_model(
    target: str | os.PathLike | dict[str, Any],
    fmt: str,
    out: str | os.PathLike,
    *,
    data: str | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    check: bool = True,
) -> dict[str, Any]:
    """Export a run's newest checkpoint (or a checkpoint file or dict) to ``out``.

    ``fmt``: one of FORMATS. For ONNX with ``check``, the result holds ``check``: the
    max abs logit difference against PyTorch and whether the predictions agree, measured with
    onnxruntime on test images of ``data`` (random images without it).
    """
    from .checkpoint import resolve_checkpoint
    from .evaluate import load_model

    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if isinstance(target, dict):
        source, ckpt = "checkpoint", target
    else:
        found, ckpt = resolve_checkpoint(target)
        source = str(found)
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name such as {out}/model.{fmt}")
    if fmt == "onnx":  # fail before the work, not after
        require("onnx", "export")
        if check:
            require("onnxruntime", "export")
    elif fmt == "safetensors":
        require("safetensors", "export")
    model = load_model(ckpt, "cpu")
    size = checkpoint_image_size(ckpt)
    meta = metadata(ckpt["classes"], ckpt["mean"], ckpt["std"], ckpt["model_name"], size)
    example = torch.zeros(2, 3, size, size)
    result: dict[str, Any] = {"format": fmt, "out": str(out), "checkpoint": source}
    with _atomic_path(out) as tmp:
        writers: dict[str, Callable[[], Any]] = {
            "onnx": lambda: _export_onnx(model, example, tmp, meta),
            "torchscript": lambda: _export_torchscript(model, example, tmp, meta),
            "safetensors": lambda: _export_safetensors(model, tmp, meta),
        }
        exporter = writers[fmt]()
        if fmt == "onnx":
            result["exporter"] = exporter
            if check:
                images, where = check_images(ckpt, data, data_dir=data_dir, cache_dir=cache_dir)
                # Load the temporary file by its contents' kind: it has no .onnx suffix yet.
                onnx_file = tmp.with_name(tmp.name + ".onnx")
                os.replace(tmp, onnx_file)
                try:
                    result["check"] = {
                        "on": where,
                        **compare(from_checkpoint(ckpt, source), load_predictor(onnx_file), images),
                    }
                finally:
                    os.replace(onnx_file, tmp)
    result["bytes"] = out.stat().st_size
    return result


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="write a model as ONNX, TorchScript or safetensors, with its class names "
        "and normalisation",
        description="Export a run's newest checkpoint (or a .pt file). "
        "The file carries the class names, mean/std and image size; `cifar-resnet predict "
        "FILE` reads it. ONNX exports are checked against PyTorch with onnxruntime.",
    )
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument(
        "--format",
        dest="format",
        choices=FORMATS,
        required=True,
        help="onnx (onnxruntime, other languages), torchscript (C++ libtorch), or "
        "safetensors (weights only, safe to load from anyone)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    from .cli import add_data_flags

    add_data_flags(
        p,
        required=False,
        data_help="check the ONNX file on this dataset's test images (the one "
        "the model was trained on) instead of random images",
    )
    p.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="skip the onnxruntime comparison after an ONNX export",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    result = export_model(
        args.target,
        args.format,
        args.out,
        data=args.data,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        check=args.check,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"wrote {result['out']} ({result['format']}, {result['bytes']:,} bytes) from "
        f"{result['checkpoint']}"
    )
    if "check" in result:
        c = result["check"]
        print(
            f"onnxruntime vs PyTorch on {c['on']}: max abs logit difference "
            f"{c['max_abs_diff']:.2e}, predictions "
            f"{'equal' if c['predictions_equal'] else 'differ'} "
            f"({100 * c['agreement']:.1f}% agree)"
        )
    return 0
