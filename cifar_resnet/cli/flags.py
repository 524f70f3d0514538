"""Flags and helpers that several commands share: the recipe flags (one per TrainConfig
field), the data flags, and loading the data a command names."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import typing
from typing import Any

from ..config import (
    NORMALIZATIONS,
    PAD_MODES,
    PRECISIONS,
    SCHEDULES,
    TrainConfig,
)

# Help for every recipe field: advice, not the flag's name again.
FIELD_HELP = {
    "model": "network from `cifar-resnet models` (seed: the post's net; resnet20..110: He et al.)",
    "shortcut": "force He et al.'s shortcut option for resnetN: A (identity, zero-pad, no "
    "parameters) or B (1x1 projection)",
    "epochs": "passes over the training set; the seed recipe needs ~50 for 85%% here",
    "steps": "total optimizer steps instead of epochs (the paper stops at 64000)",
    "batch_size": "images per optimizer step over all processes; if you change it, scale --lr "
    "linearly with it",
    "lr": "peak learning rate (SGD); 0.1 suits batch 128",
    "momentum": "SGD momentum",
    "nesterov": "use Nesterov momentum",
    "weight_decay": "L2 weight decay (5e-4 seed, 1e-4 paper); too high underfits small nets",
    "label_smoothing": "cross-entropy label smoothing, e.g. 0.1; 0 reproduces the seed",
    "ema": "keep an exponential moving average of the weights with this decay per step "
    "(e.g. 0.999), evaluated every epoch (ema_test_acc) and saved in checkpoints",
    "schedule": "learning-rate schedule: step (StepLR per epoch), multistep (decay at "
    "--lr-milestones steps), cosine, onecycle (warm-up then linear decay), constant",
    "lr_step": "for --schedule step: decay every this many epochs",
    "lr_gamma": "decay factor for step/multistep schedules",
    "lr_milestones": "for --schedule multistep: comma-separated steps, e.g. 32000,48000",
    "warmup_steps": "linear learning-rate warm-up over this many steps; helps large batches",
    "warmup_fraction": "for --schedule onecycle without --warmup-steps: the share of the run "
    "spent warming up",
    "lr_start_factor": "for --schedule onecycle: the lr at the first step, as a fraction of --lr",
    "lr_end_factor": "for --schedule onecycle: the lr at the last step, as a fraction of --lr",
    "norm_lr_scale": "BatchNorm parameters learn at lr times this, with weight decay divided by "
    "it (the fast preset: 64)",
    "lookahead": "every N steps move the weights to a slow average of themselves (lookahead, "
    "as airbench; the fast preset: 5); the run ends on the slow weights",
    "whiten_bias_fraction": "fastnet: the whitening stem's bias learns for this share of the "
    "steps, then is frozen",
    "pad_mode": "crop padding: zeros (the seed, the paper) or reflect (mirror the border)",
    "alt_flip": "flip each image in every other epoch instead of at random each epoch "
    "(airbench: fewer repeated views in short runs)",
    "tta": "test-time augmentation for the evaluations during training: 0 none, 1 mirror, "
    "2 mirror + 1-pixel translations (6 passes)",
    "padding": "random-crop zero padding in pixels (seed 1, paper 4); 0 disables cropping",
    "flip": "random horizontal flips (--no-flip for data where left/right matters)",
    "normalize": "half: (x-0.5)/0.5 as the seed; dataset: training-set per-channel mean/std; "
    "imagenet: ImageNet's mean/std (what published CIFAR weights were trained with)",
    "mean": "per-channel mean on the 0..1 scale, e.g. 0.49,0.48,0.45 (with --std; replaces "
    "--normalize)",
    "std": "per-channel standard deviation on the 0..1 scale (with --mean)",
    "init_from": "start from these weights with a fresh optimizer and schedule (fine-tuning): "
    "a run folder, a checkpoint, or a state-dict file such as published weights",
    "precision": "auto picks bf16 on GPUs and CPUs that run it natively, else fp32",
    "channels_last": "NHWC memory format; auto is on (faster on CPUs and GPUs measured here)",
    "compile": "torch.compile the model; auto is off (no gain measured on CPUs; on GPUs each "
    "step is a CUDA graph instead)",
    "seed": "seeds the weights, the data order and augmentation; same seed, same run",
    "val_split": "hold out this many training images (stratified) to choose hyper-parameters "
    "and the best checkpoint on; never tune on the test set",
    "limit_train": "train on a stratified subset of this many images, for quick trials",
    "limit_test": "evaluate on a stratified subset of this many test images",
    "image_size": "resize images to N x N (shorter side to N, centre crop); needed when "
    "a folder's images differ in size",
    "early_scale": "progressive resizing: train the first --early-fraction of the steps on "
    "images downscaled by this factor, e.g. 0.75 (32 -> 24 pixels): cheaper steps, more of "
    "them in a time budget; the rest of training and evaluation at full size",
    "early_fraction": "with --early-scale: the share of the steps trained at the smaller size",
    "eval_batch_size": "images per evaluation batch; lower it if memory is short",
    "keep": "how many checkpoints to keep in RUN/checkpoints",
    "save_every_steps": "also checkpoint every N steps inside an epoch (long epochs, preemption)",
    "deterministic": "bitwise-reproducible kernels: a resumed run equals an uninterrupted one",
    "eval_every": "evaluate every N epochs (0: only after the last); evaluation is a large share "
    "of a CPU epoch",
    "time_budget": "finish training and the final evaluation within this wall time, e.g. 5m, "
    "90s, 1h30m: steps are planned from measured speed and the schedule fitted to them",
    "target_accuracy": "stop as soon as this accuracy (percent) is reached; see --target-split",
    "target_split": "where --target-accuracy is checked: val (needs --val-split) or test",
    "sync_bn": "with torchrun: BatchNorm statistics over the global batch (SyncBatchNorm); "
    "use it when the per-GPU batch is small",
}
# Fields with a fixed set of values: their flags list them in --help and refuse others.
CHOICES: dict[str, tuple[Any, ...]] = {
    "schedule": SCHEDULES,
    "precision": PRECISIONS,
    "normalize": NORMALIZATIONS,
    "pad_mode": PAD_MODES,
    "channels_last": ("auto", "on", "off"),
    "compile": ("auto", "on", "off"),
    "shortcut": ("A", "B"),
    "target_split": ("val", "test"),
    "tta": (0, 1, 2),
}
# The recipe fields `evaluate` takes: which images and how to run the model.
EVAL_FIELDS = ("val_split", "limit_test", "image_size", "eval_batch_size", "precision")
EVAL_HELP = {
    "val_split": "the run's --val-split, if you evaluate --split val on other data",
    "limit_test": "evaluate on a stratified subset of this many test images (quicker)",
}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def _comma_separated(kind: type, what: str):
    """An argparse type: comma-separated values of ``kind`` (``what`` names them in errors)."""

    def parse(text: str) -> list:
        try:
            return [kind(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}"
            ) from None

    return parse


_list_of_ints = _comma_separated(int, "integers")
_list_of_floats = _comma_separated(float, "numbers such as 0.5,0.5,0.5")


def parse_duration(text: str) -> float:
    """'90s', '5m', '1h30m', '2.5m' or plain seconds -> seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 5m or 1h30m, got {text!r}")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def add_config_flags(
    p: argparse.ArgumentParser,
    only: tuple[str, ...] | None = None,
    help_text: dict[str, str] | None = None,
) -> None:
    """One flag per TrainConfig field (or the fields in ``only``); unset flags stay unset, so
    that presets and config files below them keep their values."""
    defaults = TrainConfig()
    types = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        text = (help_text or {}).get(f.name) or FIELD_HELP.get(f.name, "")
        kw: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": text + f" (default: {default!r})",
        }
        if f.name in CHOICES:
            kw.update(choices=CHOICES[f.name], type=type(CHOICES[f.name][0]))
            p.add_argument(flag, **kw)
        elif types[f.name] is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.name in ("mean", "std"):
            p.add_argument(flag, type=_list_of_floats, metavar="R,G,B", **kw)
        elif isinstance(default, list):
            p.add_argument(flag, type=_list_of_ints, metavar="N,N", **kw)
        elif f.name == "time_budget":
            p.add_argument(flag, type=parse_duration, metavar="DURATION", **kw)
        else:
            metavar = {int: "N", float: "X", str: "TEXT"}[type(default)]
            p.add_argument(flag, type=type(default), metavar=metavar, **kw)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe fields given on the command line (and only those)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def add_data_flags(
    p: argparse.ArgumentParser, required: bool = True, data_help: str | None = None
) -> None:
    """--data, --data-dir and --cache-dir, shared by every command that reads a dataset."""
    p.add_argument(
        "--data",
        required=required,
        help=data_help
        or "an image folder (DIR/train/<class>/*, "
        "DIR/test/<class>/*), a CIFAR python archive or its folder, or cifar10 / "
        "cifar100 to download the official archive",
    )
    p.add_argument(
        "--data-dir",
        help="where cifar10/cifar100 are downloaded (default: "
        "$CIFAR_RESNET_DATA or ~/.cache/cifar-resnet/data)",
    )
    p.add_argument(
        "--cache-dir",
        help="where decoded images are cached (default: "
        "$CIFAR_RESNET_CACHE or ~/.cache/cifar-resnet/decoded)",
    )


def add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help="auto (a GPU if one is visible), cpu, cuda or cuda:N (default: auto)",
    )


def to_json(obj: Any) -> str:
    """One line of JSON whose floats carry 10 significant digits (35.1, not
    35.099999999999994)."""

    def tidy(value: Any) -> Any:
        if isinstance(value, float):
            return float(f"{value:.10g}")
        if isinstance(value, dict):
            return {k: tidy(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [tidy(v) for v in value]
        return value

    return json.dumps(tidy(obj))


def add_tta_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tta",
        nargs="?",
        type=int,
        choices=(0, 1, 2),
        const=1,
        default=0,
        metavar="LEVEL",
        help="test-time augmentation: --tta (or 1) averages the logits of each image and its "
        "mirror image (usually a few tenths of a point); 2 adds two 1-pixel translations (6 "
        "passes), as the fast preset's evaluations",
    )


def load_bundle(args: argparse.Namespace, image_size: int | None, progress: bool = False):
    """The dataset ``--data`` names, decoded at ``image_size`` (None: as stored); None when
    the command was given no --data."""
    if args.data is None:
        return None
    from ..data import load_data  # torch-free, but imported when used: --help stays fast

    return load_data(
        args.data,
        data_dir=args.data_dir,
        image_size=image_size or None,
        cache_dir=args.cache_dir,
        progress=progress,
    )


def load_run_bundle(
    args: argparse.Namespace,
    ckpt: dict[str, Any],
    image_size: int | None = None,
    required: bool = True,
):
    """The data of the run ``ckpt`` belongs to: ``--data`` if given, else the data the run
    recorded; decoded at the run's image size (or ``image_size``). None when there is none
    and it is not ``required``."""
    from ..errors import UsageError

    if args.data is None:
        args.data = ckpt.get("data")
        if args.data is None and not required:
            return None
        if args.data is None:
            raise UsageError(
                "this checkpoint does not record its data (trained by an older version); "
                "pass --data"
            )
    return load_bundle(args, image_size or ckpt["config"].get("image_size") or None)
