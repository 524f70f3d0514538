"""``cifar-resnet export``: write a model as ONNX, TorchScript or safetensors."""

from __future__ import annotations

import argparse

from .flags import add_data_flags, load_run_bundle, to_json

FORMATS = ("onnx", "torchscript", "safetensors")  # cifar_resnet.export.FORMATS, without torch


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
    add_data_flags(
        p,
        required=False,
        data_help="check the ONNX file on this dataset's test images (default: the data the "
        "run recorded; random images when there is none)",
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
    # Imported here: the parser is built before torch is imported, and these import torch.
    from ..checkpoint import resolve_checkpoint
    from ..export import export_model, require_packages

    path, ckpt = resolve_checkpoint(args.target)
    require_packages(args.format, args.check)  # before the data is decoded
    bundle = None
    if args.format == "onnx" and args.check:  # the data is only for the ONNX check
        bundle = load_run_bundle(args, ckpt, required=False)  # as it trained; None: random
    result = export_model(path, args.format, args.out, bundle=bundle, check=args.check)
    if args.json:
        print(to_json(result))
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
