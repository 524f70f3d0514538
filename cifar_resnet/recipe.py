"""The training recipe's fields: :class:`TrainConfig`, one typed dataclass whose every field
carries its unit (in a comment), its help, its group in ``--help`` and its allowed values (the
one table validation and the command line both read), and the checks of its values.
``config`` resolves a recipe from presets, files and flags on top of it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import UsageError
from .names import check_model
from .regularisers import POLICIES, check_regularisers

SCHEDULES = ("step", "multistep", "cosine", "onecycle", "constant")
# No fp16: it needs loss scaling (a GradScaler) to train safely; bf16 has fp32's range.
PRECISIONS = ("auto", "fp32", "bf16")
NORMALIZATIONS = ("half", "dataset", "imagenet")
PAD_MODES = ("zeros", "reflect")
MAX_IMAGE_SIZE = 1024  # pixels a side: memory grows with its square (N images held at once)
MAX_PADDING = 64  # crop padding, pixels a side: each batch is held padded, (B, H+2P, W+2P, 3)
MAX_LR = 1e4  # above this every recipe diverges at once; a bigger value is a typo


def early_steps(fraction: float, total_steps: int) -> int:
    """The steps of a ``total_steps`` run trained at the early (smaller) image size."""
    return round(fraction * total_steps)


# Groups of `train --help`, in its order (timm's grouping); each field names its group.
DATA, MODEL, OPTIM, SCHEDULE, AUGMENT, RUN, RUNTIME = (
    "data",
    "model",
    "optimisation",
    "schedule and length",
    "augmentation and regularisation",
    "run and output",
    "runtime and distributed",
)
ON_OFF = ("auto", "on", "off")


def knob(default: Any, group: str, help: str, choices: tuple[Any, ...] = ()) -> Any:
    """A TrainConfig field with its one home for everything said about it: its group and
    help in ``--help`` (advice, not the name again) and its allowed values, which
    ``validate`` and the command line's flags both read."""
    metadata = {"group": group, "help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Every knob of a training run, with its unit and its help."""

    model: str = knob(
        "seed",
        MODEL,
        "network from `cifar-resnet models` (seed: the post's net; resnet20..110: He et al.)",
    )
    shortcut: str = knob(
        "",
        MODEL,
        "force He et al.'s shortcut option for resnetN: A (identity, zero-pad, no parameters) "
        "or B (1x1 projection); folded into the model's name",
        ("", "A", "B"),
    )
    init_from: str = knob(
        "",
        MODEL,
        "start from these weights with a fresh optimizer and schedule (fine-tuning): a run "
        "folder, a checkpoint, or a state-dict file such as published weights",
    )
    epochs: int = knob(
        300,
        SCHEDULE,
        "passes over the training set (ignored when --steps is set); the seed recipe needs ~50 "
        "for 85% here",
    )
    steps: int = knob(
        0,
        SCHEDULE,
        "total optimizer steps instead of epochs (the paper stops at 64000); 0: epochs x steps "
        "per epoch",
    )
    batch_size: int = knob(
        128,
        OPTIM,
        "images per optimizer step over all processes; if you change it, scale --lr linearly with "
        "it",
    )
    lr: float = knob(0.1, OPTIM, "peak learning rate (SGD) at --batch-size; 0.1 suits batch 128")
    momentum: float = knob(0.9, OPTIM, "SGD momentum (seed and paper 0.9, fast 0.85)")
    nesterov: bool = knob(False, OPTIM, "use Nesterov momentum")
    weight_decay: float = knob(
        5e-4,
        OPTIM,
        "L2 weight decay on every parameter, as torch.optim.SGD applies it (5e-4 seed, 1e-4 "
        "paper); too high underfits small nets",
    )
    norm_lr_scale: float = knob(
        1.0,
        OPTIM,
        "BatchNorm parameters learn at lr times this, with weight decay divided by it: the same "
        "decay per step (the fast preset: 64)",
    )
    label_smoothing: float = knob(
        0.0,
        AUGMENT,
        "cross-entropy label smoothing in 0..1, e.g. 0.1; 0 reproduces the seed",
    )
    ema: float = knob(
        0.0,
        OPTIM,
        "keep an exponential moving average of the weights with this decay per step (e.g. 0.999; "
        "0 = off), evaluated every epoch (ema_test_acc) and saved in checkpoints",
    )
    lookahead: int = knob(
        0,
        OPTIM,
        "every N steps move the weights to a slow average of themselves (lookahead, as airbench; "
        "the fast preset: 5; 0 = off); the run ends on the slow weights",
    )
    schedule: str = knob(
        "step",
        SCHEDULE,
        "learning-rate schedule: step (StepLR per epoch), multistep (decay at --lr-milestones "
        "steps), cosine, onecycle (warm-up then linear decay), constant",
        SCHEDULES,
    )
    lr_step: int = knob(
        50,
        SCHEDULE,
        "for --schedule step: multiply the lr by --lr-gamma every this many epochs",
    )
    lr_gamma: float = knob(0.1, SCHEDULE, "decay factor for step/multistep schedules")
    lr_milestones: list[int] = knob(
        [],
        SCHEDULE,
        "for --schedule multistep: comma-separated steps, e.g. 32000,48000",
    )
    warmup_steps: int = knob(
        0,
        SCHEDULE,
        "linear learning-rate warm-up from 0 over this many steps; helps large batches",
    )
    warmup_fraction: float = knob(
        0.2,
        SCHEDULE,
        "for --schedule onecycle without --warmup-steps: the share of the steps spent warming up",
    )
    lr_start_factor: float = knob(
        0.0,
        SCHEDULE,
        "for --schedule onecycle: the lr at the first step, as a fraction of --lr",
    )
    lr_end_factor: float = knob(
        0.0,
        SCHEDULE,
        "for --schedule onecycle: the lr at the last step, as a fraction of --lr",
    )
    whiten_bias_fraction: float = knob(
        1.0,
        OPTIM,
        "fastnet: the whitening stem's bias learns for this share of the steps, then is frozen",
    )
    padding: int = knob(
        1,
        AUGMENT,
        "random-crop padding in pixels per side (seed 1, paper 4); 0 disables cropping",
    )
    pad_mode: str = knob(
        "zeros",
        AUGMENT,
        "crop padding: zeros (the seed, the paper) or reflect (mirror the border)",
        PAD_MODES,
    )
    flip: bool = knob(
        True,
        AUGMENT,
        "random horizontal flips, p = 0.5 per image (--no-flip for data where left/right matters)",
    )
    alt_flip: bool = knob(
        False,
        AUGMENT,
        "flip each image in every other epoch instead of at random each epoch (airbench: fewer "
        "repeated views in short runs)",
    )
    cutout: int = knob(
        0,
        AUGMENT,
        "cutout (DeVries & Taylor 2017): zero one N x N square per image after normalising, at a "
        "uniform centre, clipped at the border; 16 for CIFAR-10, 8 for CIFAR-100 (0 = off)",
    )
    mixup: float = knob(
        0.0,
        AUGMENT,
        "mixup (Zhang et al. 2018): mix image pairs with lambda ~ Beta(ALPHA, ALPHA), e.g. 1.0 "
        "(0.2 for ImageNet; 0 = off); the loss mixes the two labels",
    )
    cutmix: float = knob(
        0.0,
        AUGMENT,
        "CutMix (Yun et al. 2019): paste a box of the partner image, its area from Beta(ALPHA, "
        "ALPHA), e.g. 1.0 (0 = off); with --mixup too, --switch-prob chooses per image",
    )
    mix_prob: float = knob(
        1.0, AUGMENT, "with --mixup/--cutmix: the share of images mixed (timm's mix_prob)"
    )
    switch_prob: float = knob(
        0.5, AUGMENT, "with --mixup and --cutmix: the share of mixed images that use CutMix"
    )
    autoaugment: str = knob(
        "",
        AUGMENT,
        "AutoAugment's learned policy (Cubuk et al. 2019), on the uint8 image after crop and flip",
        ("", *POLICIES),
    )
    randaugment: list[int] = knob(
        [],
        AUGMENT,
        "RandAugment (Cubuk et al. 2020) N,M: N random ops per image at magnitude M of 10, e.g. "
        "2,9 (the paper's WRN-28-10 on CIFAR-10: 3,5)",
    )
    trivialaugment: bool = knob(
        False,
        AUGMENT,
        "TrivialAugment (Mueller & Hutter 2021): one random op per image at a random magnitude, "
        "wide ranges",
    )
    dropout: float = knob(
        0.0,
        MODEL,
        "Wide ResNets: dropout probability between the two convolutions of each block (the WRN "
        "paper: 0.3)",
    )
    lr_epochs: bool = knob(
        False,
        SCHEDULE,
        "count the schedule in epochs: the lr changes once per epoch (a torch scheduler stepped "
        "per epoch, as kuangliu's and the WRN code) and --lr-milestones are epochs",
    )
    normalize: str = knob(
        "half",
        DATA,
        "half: (x-0.5)/0.5 as the seed; dataset: training-set per-channel mean/std; imagenet: "
        "ImageNet's mean/std (what published CIFAR weights were trained with)",
        NORMALIZATIONS,
    )
    mean: list[float] = knob(
        [],
        DATA,
        "per-channel mean on the 0..1 scale, e.g. 0.49,0.48,0.45 (with --std; replaces "
        "--normalize)",
    )
    std: list[float] = knob([], DATA, "per-channel standard deviation, 0..1 scale (with --mean)")
    precision: str = knob(
        "auto",
        RUNTIME,
        "auto picks bf16 on GPUs and CPUs that run it natively, else fp32",
        PRECISIONS,
    )
    channels_last: str = knob(
        "auto",
        RUNTIME,
        "NHWC memory format; auto is on (faster on CPUs and GPUs measured here)",
        ON_OFF,
    )
    compile: str = knob(
        "auto",
        RUNTIME,
        "torch.compile the model; auto is off (no gain measured on CPUs; on GPUs each step is a "
        "CUDA graph instead)",
        ON_OFF,
    )
    seed: int = knob(0, RUN, "seeds weights, data order and augmentation: same seed, same run")
    val_split: int = knob(
        0,
        DATA,
        "hold out this many training images (stratified) to choose hyper-parameters and the best "
        "checkpoint on; never tune on the test set",
    )
    limit_train: int = knob(
        0,
        DATA,
        "train on a stratified subset of this many images, for quick trials (0 = all)",
    )
    limit_test: int = knob(0, DATA, "evaluate on a stratified subset of N test images (0 = all)")
    image_size: int = knob(
        0,
        DATA,
        "resize images to N x N (shorter side to N, centre crop; 0 = keep); needed when a "
        "folder's images differ in size",
    )
    early_scale: float = knob(
        0.0,
        AUGMENT,
        "progressive resizing: train the first --early-fraction of the steps on images downscaled "
        "by this factor, e.g. 0.75 (32 -> 24 pixels; 0 = off): cheaper steps, more of them in a "
        "time budget; the rest of training and evaluation at full size",
    )
    early_fraction: float = knob(
        0.5,
        AUGMENT,
        "with --early-scale: the share of the steps trained at the smaller size",
    )
    eval_batch_size: int = knob(1000, RUN, "images per evaluation batch; less if memory is short")
    tta: int = knob(
        0,
        AUGMENT,
        "test-time augmentation for the evaluations during training: 0 none, 1 mirror, "
        "2 mirror + 1-pixel translations (6 passes)",
        (0, 1, 2),
    )
    keep: int = knob(2, RUN, "how many epoch checkpoints to keep in RUN/checkpoints")
    save_every_steps: int = knob(
        0,
        RUN,
        "also checkpoint every N steps inside an epoch (long epochs, preemption; 0 = off)",
    )
    deterministic: bool = knob(
        False,
        RUNTIME,
        "bitwise-reproducible kernels (slower on some devices): a resumed run equals an "
        "uninterrupted one",
    )
    sync_bn: bool = knob(
        False,
        RUNTIME,
        "with torchrun: BatchNorm statistics over the global batch (SyncBatchNorm); use it when "
        "the per-GPU batch is small",
    )
    eval_every: int = knob(
        1,
        RUN,
        "evaluate every N epochs (0: only after the last); evaluation is a large share of a CPU "
        "epoch",
    )
    time_budget: float = knob(
        0.0,
        SCHEDULE,
        "finish training and the final evaluation within this wall time, e.g. 5m, 90s, 1h30m (0 = "
        "none): steps are planned from measured speed and the schedule fitted to them",
    )
    target_accuracy: float = knob(
        0.0,
        SCHEDULE,
        "stop as soon as this accuracy (percent) is reached (0 = off); see --target-split",
    )
    target_split: str = knob(
        "val",
        SCHEDULE,
        "where --target-accuracy is checked: val (needs --val-split) or test",
        ("val", "test"),
    )

    def validate(self) -> TrainConfig:
        """Raise UsageError on values no run can use."""
        self._check_counts()
        self._check_numbers()
        check_regularisers(self, MAX_IMAGE_SIZE)
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
        if self.padding > MAX_PADDING:
            raise UsageError(
                f"padding {self.padding} is more than a random crop needs (at most "
                f"{MAX_PADDING} pixels a side; the presets use 1 to 4)"
            )
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
        for f in fields(self):
            valid = f.metadata.get("choices")
            if valid and getattr(self, f.name) not in valid:
                raise UsageError(
                    f"{f.name} must be one of {', '.join(map(repr, valid))}, "
                    f"got {getattr(self, f.name)!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fold_shortcut(config: TrainConfig) -> TrainConfig:
    """``shortcut`` folded into the model's name (resnet20 with shortcut B is resnet20b), so
    that ``model`` names the model built; done once, when the recipe is resolved."""
    if config.shortcut not in ("A", "B") or not config.model.startswith("resnet"):
        return config
    name = config.model.rstrip("b") + ("b" if config.shortcut == "B" else "")
    return dataclasses.replace(config, model=name, shortcut="")
