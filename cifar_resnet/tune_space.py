"""The search space of ``cifar-resnet tune``: which recipe fields a study samples, and how.

``NAME=LOW..HIGH`` is a float range (an int range where the ``TrainConfig`` field is an int),
``NAME=LOW..HIGH:log`` the same sampled on a log scale, ``NAME=A|B|C`` a choice. A space file
(``--space FILE.toml``) holds the same, one key per field:

    lr = "0.05..2:log"                       # the flag's syntax
    batch_size = [128, 256, 512]             # a choice
    [weight_decay]                           # or a table
    low = 1e-4
    high = 1e-2
    log = true

Every bound and choice is checked through the recipe's own validation before a trial runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .config import TrainConfig, load_toml
from .errors import UsageError

# Fields a study decides itself, or that are no hyper-parameter.
NOT_TUNABLE = {
    "val_split": "the study's own --val-split",
    "limit_test": "trials do not look at the test set",
    "seed": "every trial trains with the same seed; tune hyper-parameters, not luck",
    "init_from": "a path, not a hyper-parameter",
    "target_split": "trials are judged on the validation split",
}
_FIELD_TYPES = {
    f.name: type(getattr(TrainConfig(), f.name)) for f in dataclasses.fields(TrainConfig)
}


@dataclass(frozen=True)
class Param:
    """One searched field: a range (``low``..``high``, ``log`` scale) or ``choices``."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def kind(self) -> type:
        return _FIELD_TYPES[self.name]

    def to_dict(self) -> dict[str, Any]:
        if self.choices:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log}

    def describe(self) -> str:
        if self.choices:
            return "|".join(map(str, self.choices))
        return f"{self.low:g}..{self.high:g}" + (":log" if self.log else "")

    def suggest(self, trial) -> Any:
        """The value an Optuna trial samples (or its enqueued value)."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)


def _field(key: str, where: str) -> str:
    name = key.strip().replace("-", "_")
    if name not in _FIELD_TYPES:
        raise UsageError(
            f"{where}: unknown field {key!r}; the recipe's fields are {', '.join(_FIELD_TYPES)}"
        )
    if name in NOT_TUNABLE:
        raise UsageError(f"{where}: {name} cannot be searched ({NOT_TUNABLE[name]})")
    if _FIELD_TYPES[name] is list:
        raise UsageError(f"{where}: {name} is a list; search a number or a choice instead")
    return name


def _number(text: Any, kind: type, name: str, where: str) -> Any:
    """A bound or choice as the field's type (bool: true/false)."""
    if isinstance(text, str):
        text = text.strip()
        if kind is bool:
            if text.lower() not in ("true", "false"):
                raise UsageError(f"{where}: {name} is true or false, got {text!r}")
            return text.lower() == "true"
        if kind is str:
            return text
        try:
            value = int(text) if kind is int else float(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise UsageError(f"{where}: {name} needs {what}, got {text!r}") from None
    else:
        value = text
    ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
    if isinstance(value, bool) and kind is not bool or not ok:
        raise UsageError(f"{where}: {name} is a {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise UsageError(f"{where}: {name} needs a finite number, got {value!r}")
    return float(value) if kind is float else value


def _range(name: str, low: Any, high: Any, log: bool, where: str) -> Param:
    kind = _FIELD_TYPES[name]
    if kind not in (int, float):
        raise UsageError(f"{where}: {name} is a {kind.__name__}: give a choice A|B, not a range")
    low, high = (_number(v, kind, name, where) for v in (low, high))
    if not low < high:
        raise UsageError(
            f"{where}: the range of {name} is empty ({low:g}..{high:g}); give LOW..HIGH with "
            "LOW below HIGH, or fix the value with the train flag instead"
        )
    if log and low <= 0:
        raise UsageError(f"{where}: a :log range of {name} must start above 0, got {low:g}")
    return Param(name, low, high, log)


def _choices(name: str, values: Iterable[Any], where: str) -> Param:
    kind = _FIELD_TYPES[name]
    choices = tuple(_number(v, kind, name, where) for v in values)
    if not choices:
        raise UsageError(f"{where}: {name} has no choices; give A|B|C")
    if len(set(choices)) != len(choices):
        raise UsageError(f"{where}: {name} lists a choice twice: {list(choices)}")
    return Param(name, choices=choices)


def parse_param(text: str, where: str = "--param") -> Param:
    """``NAME=LOW..HIGH[:log]`` or ``NAME=A|B|C``."""
    key, sep, spec = text.partition("=")
    if not sep or not spec.strip():
        raise UsageError(
            f"{where} {text!r}: expected NAME=LOW..HIGH, NAME=LOW..HIGH:log or NAME=A|B|C"
        )
    name = _field(key, f"{where} {text!r}")
    return _parse_spec(name, spec.strip(), f"{where} {text!r}")


def _parse_spec(name: str, spec: str, where: str) -> Param:
    if ".." in spec:
        bounds, _, scale = spec.partition(":")
        if scale not in ("", "log"):
            raise UsageError(f"{where}: the scale after ':' is 'log', got {scale!r}")
        low, _, high = bounds.partition("..")
        return _range(name, low, high, scale == "log", where)
    return _choices(name, spec.split("|"), where)


def load_space(path: str) -> list[Param]:
    """A space file: each key a field, its value a spec string, a list of choices, or a table
    with ``low``, ``high`` and ``log`` (or ``choices``)."""
    params = []
    for key, value in load_toml(path).items():
        where = f"{path}: {key}"
        name = _field(key, path)
        if isinstance(value, str):
            params.append(_parse_spec(name, value, where))
        elif isinstance(value, list):
            params.append(_choices(name, value, where))
        elif isinstance(value, dict) and "choices" in value:
            params.append(_choices(name, value["choices"], where))
        elif isinstance(value, dict) and {"low", "high"} <= set(value):
            unknown = set(value) - {"low", "high", "log"}
            if unknown:
                raise UsageError(f"{where}: unknown keys {sorted(unknown)}; use low, high, log")
            params.append(_range(name, value["low"], value["high"], bool(value.get("log")), where))
        else:
            raise UsageError(
                f'{where}: give "LOW..HIGH[:log]", a list of choices, or a table with low and high'
            )
    return params


def build_space(param_texts: list[str], space_file: str | None) -> list[Param]:
    """The study's parameters from ``--param`` flags and a ``--space`` file; each field once."""
    params = load_space(space_file) if space_file else []
    params += [parse_param(t) for t in param_texts]
    if not params:
        raise UsageError("nothing to search: give --param NAME=LOW..HIGH (or A|B|C), or --space")
    names = [p.name for p in params]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"{', '.join(twice)} is searched twice; give each field once")
    return params


def check_space(params: list[Param], fixed: dict[str, Any], recipe: Callable) -> None:
    """Refuse a searched field that is also fixed by a flag, and any bound or choice the recipe
    refuses: ``recipe(values)`` resolves and validates the trial's config with ``values``."""
    for p in params:
        if p.name in fixed:
            flag = "--" + p.name.replace("_", "-")
            raise UsageError(f"{p.name} is both fixed ({flag}) and searched; drop one of them")
        for value in p.choices or (p.low, p.high):
            try:
                recipe({p.name: value})
            except UsageError as e:
                raise UsageError(
                    f"--param {p.name}={p.describe()}: the recipe refuses {p.name} = {value!r} "
                    f"({e})"
                ) from None


def space_from_dict(data: dict[str, Any]) -> list[Param]:
    """The parameters a study recorded (``Param.to_dict`` per name)."""
    params = []
    for name, spec in data.items():
        if "choices" in spec:
            params.append(Param(name, choices=tuple(spec["choices"])))
        else:
            params.append(Param(name, spec["low"], spec["high"], bool(spec["log"])))
    return params


def param_flags(values: dict[str, Any]) -> list[str]:
    """Sampled values as ``train`` flags."""
    flags = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, repr(value) if isinstance(value, float) else str(value)]
    return flags
