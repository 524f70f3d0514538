"""``cifar-resnet predict``: classify image files with a run, a checkpoint or an exported file."""

from __future__ import annotations

import argparse
import os

from .flags import add_tta_flag, to_json


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
        "(.onnx, .safetensors; TorchScript with --torchscript)",
    )
    p.add_argument(
        "--torchscript",
        action="store_true",
        help="the model is a TorchScript file (export --format torchscript): TorchScript is "
        "code, run only with this flag and only for a file you trust; never tried otherwise",
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
    add_tta_flag(p)
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
    # Imported here: the parser is built before torch is imported, and predict imports torch.
    from ..errors import DataError
    from ..predict import predict_images

    results = predict_images(
        args.target,
        args.images,
        args.top_k,
        tta=args.tta,
        image_size=args.image_size,
        torchscript=args.torchscript,
    )
    if not results:
        raise DataError(
            "no readable image among the given paths; pass image files or folders holding them"
        )
    for r in results:
        r["path"] = _shown(r["path"])
        if args.json:
            print(to_json(r))
        else:
            ranked = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top_k"])
            print(f"{r['path']}: {ranked}")
    return 0


def _shown(path: str) -> str:
    """A file name as printable text: bytes that are not UTF-8 (a name from another system)
    as \\xNN escapes, so that printing never fails, whatever stdout's encoding."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
