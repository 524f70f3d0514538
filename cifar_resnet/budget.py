"""Time-budget planning: pure functions over measured times (no clock, no model in here).

``--time-budget`` fixes how many steps fit in the budget from the measured seconds per step,
per evaluation and per checkpoint save (:func:`plan_steps`), lays the recipe's schedule over
those steps (:func:`budget_schedule`), and re-plans from the run's own speed as it goes
(:func:`replan_steps`): the loop measures, this module decides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import TrainConfig
from .errors import UsageError

MARGIN = 0.02  # the plan aims at 98% of the budget
REPLAN_TOLERANCE = 0.02  # re-plan when the plan is off by more than this share


@dataclass
class BudgetPlan:
    """A time budget's plan: the steps, and the measured costs it was solved from."""

    steps: int
    step_s: float  # seconds per training step
    eval_s: float  # seconds per evaluation (every evaluated split)
    save_s: float  # seconds per checkpoint save


def solve_steps(
    time_left: float,
    step_s: float,
    eval_s: float,
    save_s: float,
    steps_per_epoch: int,
    eval_every: int,
    done_epochs: int = 0,
) -> int:
    """The most steps (from an epoch boundary after ``done_epochs``) whose training, evaluations
    and epoch checkpoints fit in ``time_left`` seconds; the last epoch is always evaluated."""
    steps = int(time_left / step_s)
    for _ in range(20):  # evaluations depend on the number of epochs, which depends on steps
        epochs = -(-steps // steps_per_epoch)
        end = done_epochs + epochs
        if eval_every:
            evals = end // eval_every - done_epochs // eval_every + (end % eval_every != 0)
        else:
            evals = 1
        fit_steps = max(int((time_left - evals * eval_s - epochs * save_s) / step_s), 0)
        if fit_steps == steps:
            break
        steps = fit_steps
    return steps


def plan_steps(
    budget: float,
    elapsed: float,
    step_s: float,
    eval_s: float,
    save_s: float,
    steps_per_epoch: int,
    eval_every: int,
) -> BudgetPlan:
    """The first plan: ``elapsed`` seconds are spent (start-up, data, the probe)."""
    steps = solve_steps(
        budget * (1 - MARGIN) - elapsed, step_s, eval_s, save_s, steps_per_epoch, eval_every
    )
    if steps < 1:
        raise UsageError(
            f"--time-budget {budget:g}s is too short: a step takes {step_s:.3f}s and an "
            f"evaluation {eval_s:.1f}s here, and {elapsed:.1f}s went on starting up; "
            "give a longer budget"
        )
    return BudgetPlan(steps, step_s, eval_s, save_s)


def replan_steps(
    plan: BudgetPlan,
    budget: float,
    elapsed: float,
    step: int,
    done_epochs: int,
    steps_per_epoch: int,
    eval_every: int,
    total_steps: int,
    epoch_step: int = 0,
) -> int | None:
    """The total steps that fit the budget at ``plan``'s (re-measured) speed from global step
    ``step``, or None when ``total_steps`` is within the tolerance of it. ``done_epochs``
    epochs are complete; ``epoch_step`` steps of the next one are done (0: at the boundary,
    where the epoch's checkpoint is about to be written). A probe timed while the machine was
    busier (or idler) than the run, or a machine that slows down mid-run, would otherwise
    miss the budget."""
    time_left = budget * (1 - MARGIN) - elapsed
    if epoch_step:  # solve from the epoch's start, as if its done steps were still to come
        time_left += epoch_step * plan.step_s
    else:
        time_left -= plan.save_s
    left = solve_steps(
        time_left, plan.step_s, plan.eval_s, plan.save_s, steps_per_epoch, eval_every, done_epochs
    )
    replanned = step + max(left - epoch_step, 1)
    if abs(replanned - total_steps) > REPLAN_TOLERANCE * (total_steps - step) + 1:
        return replanned
    return None


def budget_schedule(config: TrainConfig, planned: int, steps_per_epoch: int) -> TrainConfig:
    """Lay a schedule written for ``config``'s length over ``planned`` steps: StepLR periods
    and multistep milestones shrink in proportion, so the decays all happen."""
    full = config.steps or config.epochs * steps_per_epoch
    ratio = planned / full
    return dataclasses.replace(
        config,
        steps=planned,
        lr_step=max(1, round(config.lr_step * ratio)),
        lr_milestones=[max(1, round(m * ratio)) for m in config.lr_milestones],
        warmup_steps=round(config.warmup_steps * ratio),
    )
