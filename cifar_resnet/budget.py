"""Time-budget planning: pure functions over measured times (no clock, no model in here).

``--time-budget`` fixes how many steps fit in the budget from the measured seconds per step,
per evaluation and per checkpoint save (:func:`plan_steps`) and re-plans from the run's own
speed as it goes (:func:`replan_steps`): the loop measures, this module decides; the run lays
its schedule over the planned steps (``optim.Schedule.laid_over``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import early_steps
from .errors import UsageError

MARGIN = 0.02  # the plan aims at 98% of the budget
REPLAN_TOLERANCE = 0.02  # re-plan when the plan is off by more than this share


@dataclass
class BudgetPlan:
    """A time budget's plan: the steps, and the measured costs it was solved from."""

    steps: int
    step_s: float  # seconds per training step (at the full image size)
    eval_s: float  # seconds per evaluation (every evaluated split)
    save_s: float  # seconds per checkpoint save
    early_step_s: float = 0.0  # seconds per early (downscaled) step (0: no early phase)
    early_fraction: float = 0.0  # the share of a run's steps that are early steps

    def seconds(self, start: int, stop: int, total: int) -> float:
        """Training seconds of global steps ``start..stop-1`` of a run of ``total`` steps."""
        early = 0
        if self.early_step_s:
            early = max(0, min(stop, early_steps(self.early_fraction, total)) - start)
        return early * self.early_step_s + (stop - start - early) * self.step_s

    def steps_within(self, seconds: float, start: int) -> int:
        """The most steps after global step ``start`` (the run ending after them) that train
        in ``seconds``: bisection, since each more step costs more time."""
        fastest = min(self.step_s, self.early_step_s or self.step_s)
        lo, hi = 0, max(int(seconds / fastest) + 1, 0)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.seconds(start, start + mid, start + mid) <= seconds:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def rescale(self, start: int, stop: int, total: int, measured: float) -> None:
        """Both step costs scaled so that steps ``start..stop-1`` cost ``measured`` seconds."""
        factor = measured / max(self.seconds(start, stop, total), 1e-12)
        self.step_s *= factor
        self.early_step_s *= factor


def solve_steps(
    time_left: float,
    plan: BudgetPlan,
    steps_per_epoch: int,
    eval_every: int,
    done_epochs: int = 0,
) -> int:
    """The most steps (from an epoch boundary after ``done_epochs``) whose training, evaluations
    and epoch checkpoints fit in ``time_left`` seconds; the last epoch is always evaluated."""
    start = done_epochs * steps_per_epoch
    steps = plan.steps_within(time_left, start)
    for _ in range(20):  # evaluations depend on the number of epochs, which depends on steps
        epochs = -(-steps // steps_per_epoch)
        end = done_epochs + epochs
        if eval_every:
            evals = end // eval_every - done_epochs // eval_every + (end % eval_every != 0)
        else:
            evals = 1
        spare = time_left - evals * plan.eval_s - epochs * plan.save_s
        fit_steps = plan.steps_within(spare, start)
        if fit_steps == steps:
            break
        steps = fit_steps
    return steps


def plan_steps(
    budget: float,
    elapsed: float,
    costs: BudgetPlan,
    steps_per_epoch: int,
    eval_every: int,
) -> BudgetPlan:
    """The first plan from the measured ``costs`` (its ``steps`` unused): ``elapsed`` seconds
    are spent (start-up, data, the probe)."""
    plan = dataclasses.replace(costs, steps=0)
    plan.steps = solve_steps(budget * (1 - MARGIN) - elapsed, plan, steps_per_epoch, eval_every)
    if plan.steps < 1:
        raise UsageError(
            f"--time-budget {budget:g}s is too short: a step takes {plan.step_s:.3f}s and an "
            f"evaluation {plan.eval_s:.1f}s here, and {elapsed:.1f}s went on starting up; "
            "give a longer budget"
        )
    return plan


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
        time_left += plan.seconds(step - epoch_step, step, total_steps)
    else:
        time_left -= plan.save_s
    left = solve_steps(time_left, plan, steps_per_epoch, eval_every, done_epochs)
    replanned = step + max(left - epoch_step, 1)
    if abs(replanned - total_steps) > REPLAN_TOLERANCE * (total_steps - step) + 1:
        return replanned
    return None
