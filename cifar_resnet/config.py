"""The training recipe: :class:`TrainConfig` (its fields, help and checks live in
:mod:`.recipe`), presets as data (:mod:`.presets`), TOML files and flags on top.

Resolution order (later wins): the dataclass defaults, the preset, the ``--config`` TOML file,
then flags given on the command line. The resolved config is written into every run folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import fields
from typing import Any

from .errors import UsageError
from .presets import PRESETS
from .recipe import (
    MAX_IMAGE_SIZE,
    MAX_LR,
    NORMALIZATIONS,
    PAD_MODES,
    PRECISIONS,
    SCHEDULES,
    TrainConfig,
    early_steps,
    fold_shortcut,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "MAX_IMAGE_SIZE",
    "MAX_LR",
    "NORMALIZATIONS",
    "PAD_MODES",
    "PRECISIONS",
    "PRESETS",
    "SCHEDULES",
    "TrainConfig",
    "apply_overrides",
    "config_to_toml",
    "early_steps",
    "fold_shortcut",
    "load_toml",
    "preset_config",
    "resolve_config",
    "tomllib",
]

FLOAT_LISTS = ("mean", "std")  # list fields of floats (the other list fields hold ints)

_FIELDS = {f.name: f for f in fields(TrainConfig)}


def _coerce(name: str, value: Any, where: str) -> Any:
    """Check a value's type against the dataclass field; ints are accepted for floats."""
    default = getattr(TrainConfig(), name)
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise UsageError(f"{where}: {name} is too large, got {value!r}") from None
    elif kind is str:
        if isinstance(value, str):
            return value
    elif kind is list:
        number = (int, float) if name in FLOAT_LISTS else (int,)
        if isinstance(value, list) and all(
            isinstance(v, number) and not isinstance(v, bool) for v in value
        ):
            return [float(v) for v in value] if name in FLOAT_LISTS else list(value)
        kind = list  # for the message
    raise UsageError(f"{where}: {name} must be {kind.__name__}, got {value!r}")


def apply_overrides(config: TrainConfig, values: dict[str, Any], where: str) -> TrainConfig:
    """Return ``config`` with ``values`` set; unknown keys are an error listing the valid ones."""
    changes = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name.startswith("_"):
            continue
        if name not in _FIELDS:
            raise UsageError(
                f"{where}: unknown option {key!r}; valid options: {', '.join(_FIELDS)}"
            )
        changes[name] = _coerce(name, value, where)
    return dataclasses.replace(config, **changes)


def preset_config(name: str, device_type: str | None = None) -> TrainConfig:
    """The preset's config; ``device_type`` "cpu" applies its ``_cpu`` values on top."""
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    config = apply_overrides(TrainConfig(), PRESETS[name], f"preset {name!r}")
    if device_type == "cpu":
        config = apply_overrides(config, PRESETS[name].get("_cpu", {}), f"preset {name!r}")
    return config


MAX_CONFIG_BYTES = 1 << 20  # a --config file is read up to this size, never further


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML config file: top-level keys are TrainConfig fields (and ``preset``)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)  # bounded: --config /dev/zero ends here
        if len(data) > MAX_CONFIG_BYTES:
            raise UsageError(
                f"config file {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; a recipe is a "
                "few lines of TOML: pass the right file"
            )
        return tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read config file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config file {path} is not valid TOML: {e}") from None


def resolve_config(
    preset: str | None = None,
    file_values: dict[str, Any] | None = None,
    flag_values: dict[str, Any] | None = None,
    file_name: str = "config file",
    device_type: str | None = None,
) -> tuple[str, TrainConfig]:
    """Preset (with its values for ``device_type``), then file, then flags.
    Returns (preset name, validated config)."""
    file_values = dict(file_values or {})
    file_preset = file_values.pop("preset", None)
    if file_preset is not None and not isinstance(file_preset, str):
        raise UsageError(f"{file_name}: preset must be a string, got {file_preset!r}")
    name = preset or file_preset or "seed"
    config = preset_config(name, device_type)
    config = _override_length(config, file_values, file_name)
    config = _override_length(config, flag_values or {}, "command line")
    return name, fold_shortcut(config.validate())


def _override_length(config: TrainConfig, values: dict[str, Any], where: str) -> TrainConfig:
    """``apply_overrides``, with the run's length honoured or refused, never silently ignored:
    ``epochs`` over a recipe defined in steps is an error (say ``steps``), and a new ``steps``
    moves the recipe's lr milestones in proportion."""
    given = {k.replace("-", "_") for k in values}
    if "epochs" in given and "steps" not in given and config.steps:
        flag = "--epochs" if where == "command line" else "epochs"
        raise UsageError(
            f"{where}: {flag} has no effect here: the recipe is defined in steps "
            f"(steps = {config.steps}); give --steps N instead (its lr milestones move in "
            "proportion), or --steps 0 to count in epochs"
        )
    new = apply_overrides(config, values, where)
    if "steps" in given and "lr_milestones" not in given and config.steps and new.steps:
        ratio = new.steps / config.steps
        milestones = [max(1, round(m * ratio)) for m in config.lr_milestones]
        new = dataclasses.replace(new, lr_milestones=milestones)
    return new


def config_to_toml(preset: str, config: TrainConfig) -> str:
    """A TOML document that ``--config`` reads back to the same config."""
    lines = [f"preset = {json.dumps(preset)}"]
    for key, value in config.to_dict().items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = json.dumps(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"
