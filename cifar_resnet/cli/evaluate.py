"""``cifar-resnet evaluate``: a checkpoint's loss, accuracy, per-class accuracy and confusion
matrix on the test (or validation) images its run held out."""

from __future__ import annotations

import argparse
import sys

from ..errors import UsageError
from .flags import (
    EVAL_FIELDS,
    EVAL_HELP,
    add_config_flags,
    add_data_flags,
    add_device_flag,
    add_tta_flag,
    flag_values,
    load_bundle,
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
    e.add_argument("target", nargs="?", metavar="RUN_DIR|CHECKPOINT")
    e.add_argument(
        "--weights",
        metavar="FILE",
        help="evaluate weights made elsewhere instead of a run: a state dict, or a dict with "
        "one under 'state_dict' (published weights; 'module.' prefixes are stripped); needs "
        "--model and --data",
    )
    e.add_argument(
        "--model",
        dest="weights_model",
        help="with --weights: the network they are for, e.g. resnet20",
    )
    e.add_argument(
        "--normalize",
        dest="weights_normalize",
        choices=("half", "dataset", "imagenet"),
        default="half",
        help="with --weights: the normalisation they were trained with (published CIFAR "
        "ResNets: imagenet) (default: half)",
    )
    e.add_argument(
        "--mean", dest="weights_mean", type=_floats, metavar="R,G,B", help="with --weights: mean"
    )
    e.add_argument(
        "--std", dest="weights_std", type=_floats, metavar="R,G,B", help="with --weights: std"
    )
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

    overrides = flag_values(args)
    if args.weights:
        path, ckpt, bundle = _external(args, overrides.get("image_size"))
    else:
        if args.target is None:
            raise UsageError("give a run folder or checkpoint to evaluate, or --weights FILE")
        path, ckpt = resolve_checkpoint(args.target)
        bundle = load_run_bundle(args, ckpt, overrides.get("image_size"))
    device = resolve_device(args.device)
    precision = overrides.pop("precision", ckpt["config"].get("precision", "auto"))
    bar = EvalBar(f"evaluating {path} on its {args.split} images", args.tta)
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
        on_batch=bar.tick,
    )
    bar.close()
    result["checkpoint"] = str(path)
    result["checkpoint_state"] = describe_checkpoint(ckpt)
    if args.json:
        print(to_json(result))
    else:
        print(
            f"weights {path}"
            if args.weights
            else f"checkpoint {path} ({result['checkpoint_state']})"
        )
        print(format_report(result))
    return 0


class EvalBar:
    """A long evaluation is not a silent wait: a line on stderr first (what, with which
    test-time augmentation), then a bar over the batches on a terminal."""

    def __init__(self, what: str, tta: int):
        self.what, self.tta, self.bar, self.started = what, tta, None, False

    def tick(self, batches: int) -> None:
        """Before each batch: the first (every check passed) says what starts."""
        if not self.started:
            from ..evaluate import TTA_WORDS

            self.started = True
            print(f"{self.what}, test-time augmentation: {TTA_WORDS[self.tta]} ...",
                  file=sys.stderr)  # fmt: skip
            if sys.stderr.isatty():
                from tqdm import tqdm

                self.bar = tqdm(total=batches, leave=False, unit="batch", desc="evaluating")
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _floats(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers R,G,B, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers R,G,B, got {text!r}")
    return values


def _external(args: argparse.Namespace, image_size: int | None):
    """(path, checkpoint dict, data) for ``--weights FILE --model NAME --data DIR``."""
    from ..data import HALF, IMAGENET, channel_stats
    from ..weights import weights_checkpoint

    if args.target is not None:
        raise UsageError("give either a run/checkpoint or --weights FILE, not both")
    if not args.weights_model or not args.data:
        raise UsageError("--weights needs --model NAME and --data (the images to evaluate on)")
    if (args.weights_mean is None) != (args.weights_std is None):
        raise UsageError("--mean and --std go together")
    bundle = load_bundle(args, image_size)
    if args.weights_mean is not None:
        mean, std = args.weights_mean, args.weights_std
    elif args.weights_normalize == "dataset":
        mean, std = channel_stats(bundle.train.images)
    else:
        mean, std = IMAGENET if args.weights_normalize == "imagenet" else HALF
    ckpt = weights_checkpoint(args.weights, args.weights_model, bundle.classes, mean, std)
    return args.weights, ckpt, bundle
