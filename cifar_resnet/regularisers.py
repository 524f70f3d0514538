"""The checks of the recipe's regularisers beyond crop and flip (cutout, mixup / CutMix, the
augmentation policies, dropout): :mod:`.recipe` declares the fields, with their help and
choices, and ``TrainConfig.validate`` calls :func:`check_regularisers`."""

from __future__ import annotations

import math
from typing import Any

from .errors import UsageError

POLICIES = ("cifar10",)  # --autoaugment: Cubuk et al. 2019's learned policies we have
MAX_BETA = 100.0  # mixup/CutMix alpha: beyond this lambda is 0.5 for every image anyway


def check_regularisers(config: Any, max_side: int) -> None:
    """A UsageError for a regulariser value no run can use (``max_side``: the largest image
    side there can be; the run's own side is checked once the images are known)."""
    for name in ("mixup", "cutmix"):
        v = getattr(config, name)
        if not (math.isfinite(v) and 0 <= v <= MAX_BETA):
            raise UsageError(
                f"{name} is a Beta distribution's alpha in 0..{MAX_BETA:g} (0 = off), "
                f"e.g. 1.0, got {v}"
            )
    for name in ("mix_prob", "switch_prob"):
        if not 0 <= getattr(config, name) <= 1:
            raise UsageError(f"{name} is a probability in 0..1, got {getattr(config, name)}")
    if not 0 <= config.dropout < 1:
        raise UsageError(f"dropout is a probability in [0, 1), got {config.dropout}")
    if not 0 <= config.cutout <= max_side:
        raise UsageError(
            f"cutout is the side of the square in pixels, 0 (off) up to the image side, "
            f"got {config.cutout}"
        )
    if config.randaugment:
        n_m = config.randaugment
        if len(n_m) != 2 or not (1 <= n_m[0] <= 10 and 0 <= n_m[1] <= 10):
            raise UsageError(
                "randaugment is N,M: N ops per image (1..10) at magnitude M (0..10), "
                f"e.g. 2,9; got {','.join(map(str, n_m))}"
            )
    policies = [bool(config.autoaugment), bool(config.randaugment), config.trivialaugment]
    if sum(policies) > 1:
        raise UsageError("autoaugment, randaugment and trivialaugment are alternatives: choose one")
