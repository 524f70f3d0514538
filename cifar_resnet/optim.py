"""What the optimizer does: SGD with its parameter groups, the learning-rate rules (schedules
as plain functions of the step), airbench's Lookahead and an EMA of the weights."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property

import torch

from .config import TrainConfig
from .errors import CheckpointError


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of a ``total_steps`` run.

    "step" reproduces torch's StepLR stepped once after every epoch: the lr of every step of
    epoch ``e`` (0-based) is ``lr * gamma ** (e // lr_step)``. "multistep" counts milestones in
    steps (He et al. decay at iterations 32k and 48k). "onecycle" rises linearly from
    ``lr_start_factor * lr`` over ``warmup_steps`` (``warmup_fraction`` of the run when 0) and
    falls linearly to ``lr_end_factor * lr`` at the last step (airbench: 0.2, 23%, 0.07);
    "cosine" decays to zero on a half cosine. Other schedules scale linearly from 0 over the
    first ``warmup_steps`` steps. With ``lr_epochs`` the schedule counts epochs, as a torch
    scheduler stepped after every epoch (kuangliu's CosineAnnealingLR, the WRN MultiStepLR):
    the lr is constant within an epoch and ``lr_milestones`` are epochs.
    """
    base = config.lr
    warm_step = step
    if config.lr_epochs:
        step, total_steps = step // steps_per_epoch, -(-total_steps // steps_per_epoch)
    if config.schedule == "onecycle":
        warm = config.warmup_steps or max(1, round(config.warmup_fraction * total_steps))
        lo, hi = config.lr_start_factor, config.lr_end_factor
        if step < warm:
            return base * (lo + (1 - lo) * (step + 1) / warm)
        frac = max(0.0, (total_steps - step) / max(1, total_steps - warm))
        return base * (hi + (1 - hi) * frac)
    if config.schedule == "step":
        epoch = step if config.lr_epochs else step // steps_per_epoch
        lr = base * config.lr_gamma ** (epoch // config.lr_step)
    elif config.schedule == "multistep":
        lr = base * config.lr_gamma ** sum(step >= m for m in config.lr_milestones)
    elif config.schedule == "cosine":
        lr = 0.5 * base * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    else:
        lr = base
    if warm_step < config.warmup_steps:
        lr *= (warm_step + 1) / config.warmup_steps
    return lr


@dataclass(frozen=True)
class Schedule:
    """The learning rate of every step of a run: the recipe's schedule laid over
    ``total_steps`` steps. A run's schedule is :meth:`of` its recipe; a time budget re-plans
    it with :meth:`laid_over`, which leaves the recipe as it is (and config.toml with it).

    Laid over another length than the recipe's own, StepLR periods, multistep milestones and
    warm-up steps shrink or grow in proportion, so that every decay still happens."""

    recipe: TrainConfig
    steps_per_epoch: int
    total_steps: int

    @classmethod
    def of(cls, recipe: TrainConfig, steps_per_epoch: int, planned: int = 0) -> Schedule:
        """``recipe``'s schedule over its own length, or over ``planned`` steps when given."""
        own = recipe.steps or recipe.epochs * steps_per_epoch
        return cls(recipe, steps_per_epoch, planned or own)

    def laid_over(self, steps: int) -> Schedule:
        return dataclasses.replace(self, total_steps=steps)

    @cached_property
    def laid(self) -> TrainConfig:
        """The recipe's schedule fields as they apply over ``total_steps``."""
        recipe = self.recipe
        own = recipe.steps or recipe.epochs * self.steps_per_epoch
        if self.total_steps == own:
            return recipe
        ratio = self.total_steps / own
        return dataclasses.replace(
            recipe,
            steps=self.total_steps,
            lr_step=max(1, round(recipe.lr_step * ratio)),
            lr_milestones=[max(1, round(m * ratio)) for m in recipe.lr_milestones],
            warmup_steps=round(recipe.warmup_steps * ratio),
        )

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        return lr_at(self.laid, step, self.steps_per_epoch, self.total_steps)


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device):
    """SGD over the trainable parameters, in groups only where the recipe treats them apart:
    BatchNorm parameters with ``norm_lr_scale`` (lr x s, weight decay / s: the same decay per
    step) and a whitening stem's bias, which stops after ``whiten_bias_fraction`` of the run.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    norm = {id(p) for m in model.modules() if isinstance(m, _BatchNorm) for p in m.parameters()}
    whiten = getattr(model, "whiten", None)
    stem = {id(whiten.bias)} if whiten is not None and whiten.bias is not None else set()
    split_norm = config.norm_lr_scale != 1.0
    split_stem = config.whiten_bias_fraction < 1.0
    groups: dict[str, list[torch.nn.Parameter]] = {"norm": [], "stem": [], "other": []}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if split_stem and id(p) in stem:
            groups["stem"].append(p)
        elif split_norm and id(p) in norm:
            groups["norm"].append(p)
        else:
            groups["other"].append(p)
    options = {
        "norm": {
            "lr_scale": config.norm_lr_scale,
            "weight_decay": config.weight_decay / config.norm_lr_scale,
        },
        "stem": {"until": config.whiten_bias_fraction},
        "other": {},
    }
    param_groups = [
        {"params": params, "name": name, **options[name]}
        for name, params in groups.items()
        if params
    ]
    # The fused kernel updates every parameter in one launch and takes the lr as a tensor, so
    # a changing lr needs no recompile and no host sync (and can live inside a CUDA graph).
    optimizer = torch.optim.SGD(
        param_groups,
        lr=torch.tensor(config.lr, device=device),
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        fused=True,
    )
    for group in optimizer.param_groups:  # one lr tensor per group, refilled by set_lr
        group["lr"] = torch.tensor(float(group["lr"]), device=device)
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float, step: int, total_steps: int) -> None:
    """Set every group's lr tensor for optimizer step ``step`` (0-based) of ``total_steps``:
    ``lr`` times the group's ``lr_scale``; a group with ``until`` (the whitening bias) gets 0
    once that share of the run has passed. Filling tensors in place keeps the CUDA graph valid.
    """
    for group in optimizer.param_groups:
        on = step < group.get("until", 1.0) * total_steps
        group["lr"].fill_(lr * group.get("lr_scale", 1.0) if on else 0.0)


def make_ema(model: torch.nn.Module, decay: float):
    """torch's AveragedModel with an EMA of the parameters and the BatchNorm buffers."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def update_ema(ema, model: torch.nn.Module) -> None:
    """``ema.update_parameters(model)`` without its per-step host sync (it reads n_averaged):
    the first update copies, later ones call the EMA's own foreach lerp directly."""
    if not getattr(ema, "_started", False):
        ema.update_parameters(model)
        ema._started = True
        return
    ema_tensors = [*ema.module.parameters(), *ema.module.buffers()]
    tensors = [*model.parameters(), *model.buffers()]
    floats = [(e, t) for e, t in zip(ema_tensors, tensors) if e.is_floating_point()]
    ema.multi_avg_fn([e for e, _ in floats], [t.detach() for _, t in floats], ema.n_averaged)
    ema.n_averaged += 1
    with torch.no_grad():  # integer buffers (BatchNorm's num_batches_tracked) are copied
        for e, t in zip(ema_tensors, tensors):
            if not e.is_floating_point():
                e.copy_(t)


class Lookahead:
    """airbench's lookahead (Zhang et al. 2019, with a schedule): every ``every`` steps the slow
    weights move toward the fast ones by ``1 - decay`` and the fast weights jump to them;
    ``decay`` grows as the cube of the run's progress, to 0.95**every at the end. The run
    ends on the slow weights (:meth:`finish`). Float parameters and buffers take part."""

    def __init__(self, model: torch.nn.Module, every: int):
        self.every = every
        self.fast = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.slow = [t.detach().clone() for t in self.fast]

    @torch.no_grad()
    def after_step(self, done: int, total_steps: int) -> None:
        if done % self.every == 0:
            decay = 0.95**self.every * (done / total_steps) ** 3
            torch._foreach_lerp_(self.slow, self.fast, 1 - decay)
            torch._foreach_copy_(self.fast, self.slow)

    @torch.no_grad()
    def finish(self) -> None:
        torch._foreach_copy_(self.fast, self.slow)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {str(i): t for i, t in enumerate(self.slow)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if len(state) != len(self.slow):
            raise CheckpointError("the checkpoint's lookahead weights do not match the model")
        torch._foreach_copy_(self.slow, [state[str(i)] for i in range(len(self.slow))])
