"""The training recipe: one typed dataclass, presets as data, TOML files and flags on top.

Resolution order (later wins): the dataclass defaults, the preset, the ``--config`` TOML file,
then flags given on the command line. The resolved config is written into every run folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import UsageError
from .names import check_model

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

SCHEDULES = ("step", "multistep", "cosine", "onecycle", "constant")
# No fp16: it needs loss scaling (a GradScaler) to train safely; bf16 has fp32's range.
PRECISIONS = ("auto", "fp32", "bf16")
NORMALIZATIONS = ("half", "dataset", "imagenet")
FLOAT_LISTS = ("mean", "std")  # list fields of floats (the other list fields hold ints)
PAD_MODES = ("zeros", "reflect")
MAX_IMAGE_SIZE = 1024  # pixels a side: memory grows with its square (N images held at once)
MAX_LR = 1e4  # above this every recipe diverges at once; a bigger value is a typo


def early_steps(fraction: float, total_steps: int) -> int:
    """The steps of a ``total_steps`` run trained at the early (smaller) image size."""
    return round(fraction * total_steps)


@dataclass
class TrainConfig:
    """Every knob of a training run, with its unit."""

    model: str = "seed"  # a name from `cifar-resnet models`
    shortcut: str = ""  # "A" or "B" to force He et al.'s shortcut option ("" = model's own)
    epochs: int = 300  # passes over the training set (ignored when `steps` is set)
    steps: int = 0  # total optimizer steps; 0 = epochs * steps per epoch
    batch_size: int = 128  # images per optimizer step, summed over all ranks
    lr: float = 0.1  # peak learning rate at `batch_size`
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False
    weight_decay: float = 5e-4  # L2 penalty on every parameter, as torch.optim.SGD applies it
    norm_lr_scale: float = 1.0  # BatchNorm params: lr x this, weight decay / this (same decay)
    label_smoothing: float = 0.0  # cross-entropy label smoothing, 0..1
    ema: float = 0.0  # decay per step of an exponential moving average of the weights (0 = off)
    lookahead: int = 0  # every N steps pull the weights to a slow copy (0 = off)
    schedule: str = "step"  # one of SCHEDULES
    lr_step: int = 50  # "step": multiply the lr by lr_gamma every lr_step epochs
    lr_gamma: float = 0.1  # "step"/"multistep": factor at each decay
    lr_milestones: list[int] = field(default_factory=list)  # "multistep": decay at these steps
    warmup_steps: int = 0  # linear warm-up from 0 over this many steps
    warmup_fraction: float = 0.2  # "onecycle" with warmup_steps 0: warm-up share of the steps
    lr_start_factor: float = 0.0  # "onecycle": lr at step 0, as a fraction of the peak
    lr_end_factor: float = 0.0  # "onecycle": lr at the last step, as a fraction of the peak
    whiten_bias_fraction: float = 1.0  # whitening-stem nets: the stem bias learns this share
    padding: int = 1  # random-crop padding, pixels per side
    pad_mode: str = "zeros"  # crop padding: "zeros" or "reflect" (mirror the border)
    flip: bool = True  # random horizontal flip, p = 0.5 per image
    alt_flip: bool = False  # flip each image in every other epoch (random first choice)
    normalize: str = "half"  # "half": mean = std = 0.5; "dataset": training set; "imagenet"
    mean: list[float] = field(default_factory=list)  # per channel, 0..1 scale; overrides normalize
    std: list[float] = field(default_factory=list)  # per channel, with mean
    init_from: str = ""  # start from these weights (a run, a checkpoint, a state dict file)
    precision: str = "auto"  # auto: bf16 where the hardware runs it natively, else fp32
    channels_last: str = "auto"  # "auto", "on" or "off"
    compile: str = "auto"  # torch.compile: "auto", "on" or "off"
    seed: int = 0  # seeds the weights, the data order and augmentation
    val_split: int = 0  # training images held out for validation (stratified)
    limit_train: int = 0  # train on a stratified subset of this many images (0 = all)
    limit_test: int = 0  # evaluate on a stratified subset of this many images (0 = all)
    image_size: int = 0  # resize images to this square size (0 = keep)
    early_scale: float = 0.0  # train the first early_fraction of the steps at this share of
    early_fraction: float = 0.5  # the image side (progressive resizing; 0 = off)
    eval_batch_size: int = 1000  # images per evaluation batch
    tta: int = 0  # evaluation test-time augmentation: 0 none, 1 flip, 2 flip + translations
    keep: int = 2  # epoch checkpoints kept in RUN/checkpoints
    save_every_steps: int = 0  # also checkpoint every N steps within an epoch (0 = off)
    deterministic: bool = False  # bitwise-reproducible kernels (slower on some devices)
    sync_bn: bool = False  # distributed: BatchNorm statistics over the global batch
    eval_every: int = 1  # evaluate every N epochs (0 = only after the last one)
    time_budget: float = 0.0  # seconds for the whole run incl. the final evaluation (0 = none)
    target_accuracy: float = 0.0  # stop once this accuracy (percent) is reached (0 = off)
    target_split: str = "val"  # where target_accuracy is checked: "val" or "test"

    def validate(self) -> TrainConfig:
        """Raise UsageError on values no run can use."""
        self._check_counts()
        self._check_numbers()
        self._check_choices()
        check_model(self.model)  # before torch is imported: names.py knows the models
        if self.target_accuracy and self.target_split == "val" and not self.val_split:
            raise UsageError(
                "target_accuracy is checked on the validation split: add "
                "--val-split N, or --target-split test to check the test set"
            )
        if self.mean or self.std:
            stats = (*self.mean, *self.std)
            if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
                raise UsageError(
                    "mean and std are three numbers each (R,G,B on the 0..1 scale), std > 0, "
                    f"given together; got mean {self.mean}, std {self.std}"
                )
            if not all(math.isfinite(v) for v in stats):
                raise UsageError(f"mean and std must be finite, got {self.mean}, {self.std}")
        if self.schedule == "multistep" and not self.lr_milestones:
            raise UsageError(
                "schedule 'multistep' needs lr_milestones (steps), e.g. [32000, 48000]"
            )
        return self

    def _check_counts(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "keep", "lr_step"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)}")
        nonneg = (
            "steps",
            "padding",
            "val_split",
            "limit_train",
            "limit_test",
            "image_size",
            "warmup_steps",
            "save_every_steps",
            "eval_every",
            "lookahead",
        )
        for name in nonneg:
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be zero or positive, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**63:
            raise UsageError(f"seed must be an integer from 0 to 2**63-1, got {self.seed}")
        if self.image_size > MAX_IMAGE_SIZE:
            raise UsageError(
                f"image_size {self.image_size} is more than this trainer is for "
                f"(at most {MAX_IMAGE_SIZE} pixels a side: small images)"
            )

    def _check_numbers(self) -> None:
        if not (math.isfinite(self.lr) and 0 < self.lr <= MAX_LR):
            raise UsageError(f"lr must be a positive number up to {MAX_LR:g}, got {self.lr}")
        for name in ("momentum", "weight_decay", "lr_gamma", "lr_start_factor", "lr_end_factor"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise UsageError(f"{name} must be zero or positive, got {v}")
        if not (math.isfinite(self.time_budget) and self.time_budget >= 0):
            raise UsageError(
                f"time_budget must be zero or a positive number of seconds, got {self.time_budget}"
            )
        if not 0 <= self.target_accuracy <= 100:
            raise UsageError(
                f"target_accuracy is a percentage in 0..100, got {self.target_accuracy}"
            )
        if not (math.isfinite(self.norm_lr_scale) and self.norm_lr_scale > 0):
            raise UsageError(f"norm_lr_scale must be a positive number, got {self.norm_lr_scale}")
        for name in ("warmup_fraction", "whiten_bias_fraction", "early_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise UsageError(
                    f"{name} is a share of the steps in 0..1, got {getattr(self, name)}"
                )
        if not 0 <= self.early_scale < 1:
            raise UsageError(
                f"early_scale is a share of the image side in [0, 1) (0 = off), e.g. 0.75, "
                f"got {self.early_scale}"
            )
        if not 0 <= self.ema < 1:
            raise UsageError(f"ema is a decay per step in [0, 1), e.g. 0.999, got {self.ema}")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def _check_choices(self) -> None:
        choices = {
            "schedule": SCHEDULES,
            "precision": PRECISIONS,
            "normalize": NORMALIZATIONS,
            "channels_last": ("auto", "on", "off"),
            "compile": ("auto", "on", "off"),
            "shortcut": ("", "A", "B"),
            "target_split": ("val", "test"),
            "pad_mode": PAD_MODES,
            "tta": (0, 1, 2),
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise UsageError(
                    f"{name} must be one of {', '.join(map(repr, valid))}, "
                    f"got {getattr(self, name)!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Presets are data: each is a set of field values over the dataclass defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "seed": {
        "_about": "the seed post exactly: SGD 0.1, momentum 0.9, wd 5e-4, batch 128, "
        "StepLR(50, 0.1) per epoch, 300 epochs, pad-1 crop + flip, normalise with 0.5/0.5",
        "model": "seed",
        "epochs": 300,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "step",
        "lr_step": 50,
        "lr_gamma": 0.1,
        "padding": 1,
        "flip": True,
        "normalize": "half",
    },
    "paper": {
        "_about": "He et al. 2016 sec. 4.2: SGD 0.1, momentum 0.9, wd 1e-4, batch 128, lr/10 "
        "at steps 32k and 48k, stop at 64k; pad-4 crop + flip; per-channel mean/std",
        "model": "resnet20",
        "steps": 64000,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "schedule": "multistep",
        "lr_milestones": [32000, 48000],
        "lr_gamma": 0.1,
        "padding": 4,
        "flip": True,
        "normalize": "dataset",
    },
    "fast": {
        "_about": "time to accuracy, after airbench (Jordan 2024): whitened residual net, "
        "batch 1024, Nesterov SGD, label smoothing 0.2, warm-up then linear decay, "
        "lookahead, alternating flips, reflect-pad translations, flip+translate TTA; "
        "on a CPU the smaller fastnet-s at batch 128. Tuned on a validation split "
        "(bench/tune_fast.py)",
        "model": "fastnet",
        "epochs": 14,
        "batch_size": 1024,
        "lr": 1.5,  # airbench's 11.5 per 1024 examples with sum loss, for the mean loss
        "momentum": 0.85,
        "nesterov": True,
        "weight_decay": 1.33e-3,  # airbench's 0.0153 per 1024 examples, in L2 units
        "norm_lr_scale": 64.0,  # BatchNorm biases learn 64x faster, decayed no faster
        "label_smoothing": 0.2,
        "schedule": "onecycle",
        "warmup_fraction": 0.23,
        "lr_start_factor": 0.2,
        "lr_end_factor": 0.07,
        "lookahead": 5,
        "whiten_bias_fraction": 0.3,
        "padding": 2,
        "pad_mode": "reflect",
        "flip": True,
        "alt_flip": True,
        "normalize": "dataset",
        "tta": 2,
        "eval_every": 0,
        # A 2-core CPU trains fastnet at ~60 images/s: a small net gets further in minutes.
        # Small batches run faster per image on a CPU (cache-sized activations) and gave more
        # per minute on validation (5-minute budgets: batch 512 83.04%, 256 84.10%, 128
        # 84.82%, 64 84.24%). Progressive resizing (the first half of the steps at 24x24)
        # fits ~1.3x the steps into a budget: validation +0.38 points, 3 seeds, each ahead.
        # Applied when the run's device is a CPU, before --config and flags.
        "_cpu": {
            "model": "fastnet-s",
            "batch_size": 128,
            "lr": 0.5,
            "epochs": 5,
            "tta": 1,
            "early_scale": 0.75,
        },
    },
}

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


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML config file: top-level keys are TrainConfig fields (and ``preset``)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
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
    return name, config.validate()


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
