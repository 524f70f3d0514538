"""Time-budget planning: pure functions over measured times (no clock, no model in here).

``--time-budget`` fixes how many steps fit in the budget from the measured seconds per step,
per evaluation and per checkpoint save (:func:`plan_steps`) and re-plans from the run's own
speed as it goes (:func:`replan_steps`): the loop measures, this module decides; the run lays
its schedule over the planned steps (``optim.Schedule.laid_over``).

Under a changing load (other work on the machine) one window's speed is noise: a re-plan
steers by the time actually left and a smoothed speed (:class:`SpeedEstimate`: the median of
the recent windows and the whole run's average, moving at most ``MAX_MOVE`` per re-plan).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field

from .config import early_steps
from .errors import UsageError

MARGIN = 0.01  # the plan aims at 99% of the budget
REPLAN_TOLERANCE = 0.02  # re-plan when the plan is off by more than this share
MATERIAL = 0.1  # a re-plan that moves the plan by more than this share is shown on a terminal
WINDOWS = 3  # the speed estimate is the median of this many recent windows (the run's average
MAX_MOVE = 0.5  # in place of those not yet measured), moving by at most this share per re-plan
MIN_STEPS = 20  # ... and over at least this many steps
SHORT = 0.25  # a plan that trains for less than this share of the budget says so
EVAL_SHARE = 0.1  # ... and one whose final evaluation takes more than this share


class SpeedEstimate:
    """How much slower (>1) or faster (<1) steps run than the probe measured: the median, per
    step, of the recent windows (at least ``WINDOWS`` of them and ``MIN_STEPS`` steps), the
    whole run's average standing in for windows not yet measured (the prior), moved by at most
    ``MAX_MOVE`` per measurement. One window slowed by a burst of other work (or a checkpoint,
    or the page cache) does not move the median, nor does a window of one slow step among
    many; a load that lasts (or ends) moves it within two windows, soon enough for the time
    left."""

    def __init__(self) -> None:
        self.factor = 1.0
        self.windows: deque[tuple[float, int]] = deque(maxlen=64)  # (factor, steps)
        self.seconds = self.base = 0.0  # the whole run's measured and probe-predicted seconds
        self.covered = 0  # the last step measured (a window reaching back before it overlaps)

    def update(self, start: int, stop: int, seconds: float, base: float) -> float:
        """Add a window: steps ``start..stop-1`` took ``seconds``, the probe said ``base``."""
        if stop <= start or base <= 0:
            return self.factor
        self.windows.append((seconds / base, stop - start))
        share = (stop - max(start, min(self.covered, stop))) / (stop - start)
        self.seconds += seconds * share
        self.base += base * share
        self.covered = max(self.covered, stop)
        recent: list[tuple[float, int]] = []
        for window in reversed(self.windows):
            recent.append(window)
            if len(recent) >= WINDOWS and sum(n for _, n in recent) >= MIN_STEPS:
                break
        typical = max(1, round(sum(n for _, n in recent) / len(recent)))
        recent += [(self.seconds / self.base, typical)] * (WINDOWS - len(recent))
        target = _weighted_median(recent)
        low, high = self.factor * (1 - MAX_MOVE), self.factor * (1 + MAX_MOVE)
        self.factor = min(max(target, low), high)
        return self.factor


def _weighted_median(values: list[tuple[float, int]]) -> float:
    """The median of ``values`` (value, weight), each counted ``weight`` times."""
    ordered = sorted(values)
    half, seen = sum(w for _, w in ordered) / 2, 0
    for i, (value, weight) in enumerate(ordered):
        seen += weight
        if seen > half:
            return value
        if seen == half:  # between this value and the next, as statistics.median
            return (value + ordered[i + 1][0]) / 2
    return ordered[-1][0]


@dataclass
class BudgetPlan:
    """A time budget's plan: the steps, and the measured costs it was solved from."""

    steps: int
    step_s: float  # seconds per training step (at the full image size)
    eval_s: float  # seconds per evaluation (every evaluated split)
    save_s: float  # seconds per checkpoint save
    early_step_s: float = 0.0  # seconds per early (downscaled) step (0: no early phase)
    early_fraction: float = 0.0  # the share of a run's steps that are early steps
    speed: SpeedEstimate = field(default_factory=SpeedEstimate, repr=False, compare=False)
    base: tuple[float, float, float, float] | None = None  # the probe's (step, early, eval, save)
    announced: int = 0  # the plan last shown to the user

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
        """Steps ``start..stop-1`` took ``measured`` seconds: every cost (steps, evaluation,
        saves) follows the smoothed speed (:class:`SpeedEstimate`), not this window alone."""
        if self.base is None:
            self.base = (self.step_s, self.early_step_s, self.eval_s, self.save_s)
        step_s, early_s, eval_s, save_s = self.base
        probe = dataclasses.replace(self, step_s=step_s, early_step_s=early_s)
        factor = self.speed.update(start, stop, measured, probe.seconds(start, stop, total))
        self.step_s, self.early_step_s = step_s * factor, early_s * factor
        self.eval_s, self.save_s = eval_s * factor, save_s * factor

    def measured_eval(self, seconds: float) -> None:
        """An evaluation took ``seconds`` at the current speed."""
        self.eval_s = seconds
        if self.base is not None:
            self.base = (*self.base[:2], seconds / self.speed.factor, self.base[3])

    def material(self, total: int) -> bool:
        """Whether a plan of ``total`` steps differs enough from the one last shown to be shown
        (on a terminal; a log gets every re-plan); marks it shown if so."""
        if abs(total - self.announced) > MATERIAL * max(self.announced, 1):
            self.announced = total
            return True
        return False


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
    plan = dataclasses.replace(costs, steps=0, speed=SpeedEstimate(), base=None)
    plan.steps = solve_steps(budget * (1 - MARGIN) - elapsed, plan, steps_per_epoch, eval_every)
    plan.announced = plan.steps
    if plan.steps < 1:
        raise UsageError(
            f"--time-budget {budget:g}s is too short: a step takes {plan.step_s:.3f}s and an "
            f"evaluation {plan.eval_s:.1f}s here, and {elapsed:.1f}s went on starting up; "
            "give a longer budget"
        )
    return plan


def short_note(plan: BudgetPlan, budget: float, elapsed: float) -> str | None:
    """A line for a first plan that leaves less than ``SHORT`` of the budget to training (the
    start-up and the final evaluation took the rest), else None."""
    train_s = plan.seconds(0, plan.steps, plan.steps)
    if train_s >= SHORT * budget:
        return None
    return (
        f"note: only {train_s:.0f}s of the {budget:g}s budget are left to train "
        f"({elapsed:.0f}s went on starting up and timing, the final evaluation takes about "
        f"{plan.eval_s:.0f}s): a model trained this briefly is little better than chance; "
        "give a longer --time-budget"
    )


def eval_note(plan: BudgetPlan, budget: float) -> str | None:
    """A line for a plan whose final evaluation takes more than ``EVAL_SHARE`` of the budget,
    else None. It is one piece of work after the plan's last check, and a load that starts or
    stops during it moves the end: beside an on-and-off load its time was measured 35-85% off
    the estimate made just before it (BENCHMARKS.md), a share of the budget that can exceed
    the promised 5%."""
    if plan.eval_s <= EVAL_SHARE * budget:
        return None
    return (
        f"note: the final evaluation (about {plan.eval_s:.0f}s) is "
        f"{plan.eval_s / budget:.0%} of the {budget:g}s budget and runs after the plan's last "
        "check: if other work on this machine starts or stops during it, the run can end more "
        "than 5% off the budget; a longer --time-budget makes it a smaller share"
    )


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
