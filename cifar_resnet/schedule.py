"""Learning-rate schedules as plain functions of the global step."""

from __future__ import annotations

import math

from .config import TrainConfig


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of a ``total_steps`` run.

    "step" reproduces torch's StepLR stepped once after every epoch: the lr of every step of
    epoch ``e`` (0-based) is ``lr * gamma ** (e // lr_step)``. "multistep" counts milestones in
    steps (He et al. decay at iterations 32k and 48k). "onecycle" rises linearly from
    ``lr_start_factor * lr`` over ``warmup_steps`` (``warmup_fraction`` of the run when 0) and
    falls linearly to ``lr_end_factor * lr`` at the last step (airbench: 0.2, 23%, 0.07);
    "cosine" decays to zero on a half cosine. Other schedules scale linearly from 0 over the
    first ``warmup_steps`` steps.
    """
    base = config.lr
    if config.schedule == "onecycle":
        warm = config.warmup_steps or max(1, round(config.warmup_fraction * total_steps))
        lo, hi = config.lr_start_factor, config.lr_end_factor
        if step < warm:
            return base * (lo + (1 - lo) * (step + 1) / warm)
        frac = max(0.0, (total_steps - step) / max(1, total_steps - warm))
        return base * (hi + (1 - hi) * frac)
    if config.schedule == "step":
        lr = base * config.lr_gamma ** ((step // steps_per_epoch) // config.lr_step)
    elif config.schedule == "multistep":
        lr = base * config.lr_gamma ** sum(step >= m for m in config.lr_milestones)
    elif config.schedule == "cosine":
        lr = 0.5 * base * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    else:
        lr = base
    if step < config.warmup_steps:
        lr *= (step + 1) / config.warmup_steps
    return lr
