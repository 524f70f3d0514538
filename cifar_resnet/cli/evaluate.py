"""``cifar-resnet evaluate``: a checkpoint's loss, accuracy, per-class accuracy and confusion
matrix on the test (or validation) images its run held out."""

from __future__ import annotations

import argparse

from .flags import (
    EVAL_FIELDS,
    EVAL_HELP,
    add_config_flags,
    add_data_flags,
    add_device_flag,
    add_tta_flag,
    flag_values,
    load_run_bundle,
    to_json,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    e = subparsers.add_parser(
        "evaluate",
        help="loss, accuracy, per-class accuracy, confusion matrix",
        description="Evaluate a run's newest checkpoint (or a .pt file) on the test images "
        "its run held out (or its validation images).",
    )
    e.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    add_data_flags(
        e,
        required=False,
        data_help="the data the run was trained on (default: the data the run recorded)",
    )
    e.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="val needs a run trained with --val-split (the same images are held out)",
    )
    add_device_flag(e)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument(
        "--ema",
        dest="use_ema",
        action="store_true",
        help="evaluate the EMA weights of a run trained with --ema",
    )
    add_tta_flag(e)
    add_config_flags(e, only=EVAL_FIELDS, help_text=EVAL_HELP)
    e.set_defaults(func=run)
    return e


def run(args: argparse.Namespace) -> int:
    # The library (and torch) is imported only now, so that --help answers at once.
    from ..checkpoint import describe_checkpoint, resolve_checkpoint
    from ..evaluate import evaluate_checkpoint, format_report
    from ..runtime import resolve_device, resolve_precision

    path, ckpt = resolve_checkpoint(args.target)
    overrides = flag_values(args)
    bundle = load_run_bundle(args, ckpt, overrides.get("image_size"))
    device = resolve_device(args.device)
    precision = overrides.pop("precision", ckpt["config"].get("precision", "auto"))
    result = evaluate_checkpoint(
        ckpt,
        bundle,
        split=args.split,
        device=device,
        amp_dtype=resolve_precision(precision, device),
        tta=args.tta,
        ema=args.use_ema,
        where=str(path),
        overrides=overrides,
    )
    result["checkpoint"] = str(path)
    result["checkpoint_state"] = describe_checkpoint(ckpt)
    if args.json:
        print(to_json(result))
    else:
        print(f"checkpoint {path} ({describe_checkpoint(ckpt)})")
        print(format_report(result))
    return 0
