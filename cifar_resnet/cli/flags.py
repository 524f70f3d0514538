"""Flags and helpers that several commands share: the recipe flags (one per TrainConfig
field), the data flags, and loading the data a command names."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import typing
from typing import Any

from ..config import PRESETS, TrainConfig
from ..recipe import AUGMENT, DATA, MODEL, OPTIM, RUN, RUNTIME, SCHEDULE

# The groups of `train --help`, in order (as timm groups its flags).
GROUPS = (DATA, MODEL, OPTIM, SCHEDULE, AUGMENT, RUN, RUNTIME)

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


def add_groups(p: argparse.ArgumentParser) -> dict[str, Any]:
    """An argument group of ``p`` for each of :data:`GROUPS`, by name."""
    return {name: p.add_argument_group(name) for name in GROUPS}


def _preset_fields() -> set[str]:
    """The fields some preset sets: their defaults would mislead in --help."""
    names = set()
    for values in PRESETS.values():
        names |= set(values) | set(values.get("_cpu", {}))
    return names


def _default_worth_showing(name: str, default: Any, text: str, preset_fields: set) -> bool:
    """Not for a value a preset sets, an empty one, nor a 0 the help already explains."""
    if name in preset_fields or default in ("", []):
        return False
    said = type(default) in (int, float) and default == 0 and ("0 =" in text or "0:" in text)
    return not said


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def add_config_flags(
    p: argparse.ArgumentParser,
    only: tuple[str, ...] | None = None,
    help_text: dict[str, str] | None = None,
    groups: dict[str, Any] | None = None,
) -> None:
    """One flag per TrainConfig field (or the fields in ``only``), with the help and allowed
    values the field carries (``recipe.knob``), in ``groups``' group of the field when given.
    Unset flags stay unset, so that presets and config files below them keep their values;
    a default is shown only for a field no preset sets (and not an empty one)."""
    defaults = TrainConfig()
    types = typing.get_type_hints(TrainConfig)
    preset_fields = _preset_fields()
    for f in dataclasses.fields(TrainConfig):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        text = ((help_text or {}).get(f.name) or f.metadata["help"]).replace("%", "%%")
        if _default_worth_showing(f.name, default, text, preset_fields):
            text += f" (default: {_shown(default)})"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
        group = (groups or {}).get(f.metadata["group"], p)
        choices = f.metadata["choices"]
        if choices:
            shown = ",".join(str(c) for c in choices if c != "")  # "": the model's own, unsaid
            kw.update(choices=choices, type=type(choices[-1]), metavar="{" + shown + "}")
            group.add_argument(flag, **kw)
        elif types[f.name] is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.name in ("mean", "std"):
            group.add_argument(flag, type=_list_of_floats, metavar="R,G,B", **kw)
        elif isinstance(default, list):
            group.add_argument(flag, type=_list_of_ints, metavar="N,N", **kw)
        elif f.name == "time_budget":
            group.add_argument(flag, type=parse_duration, metavar="DURATION", **kw)
        else:
            metavar = {"model": "NAME", "init_from": "PATH"}.get(f.name)
            metavar = metavar or {int: "N", float: "X", str: "TEXT"}[type(default)]
            group.add_argument(flag, type=type(default), metavar=metavar, **kw)


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
