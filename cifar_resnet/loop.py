"""The training loop: ``train_one_epoch``, and ``train_epochs`` that runs a set-up run's epochs:
evaluation, re-planning a time budget, metrics, checkpoints.

One code path for CPU and GPU, fp32 and bf16, eager and compiled: switches, not branches.
No host synchronisation per step on a GPU: losses and counts are summed on the device and read
once per epoch (and every ``GPU_SYNC_EVERY`` steps to catch a diverged loss early).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import torch

from . import distributed
from .budget import budget_schedule, replan_steps
from .config import TrainConfig
from .errors import DivergedError, Interrupted
from .evaluate import evaluate
from .loader import DeviceLoader
from .optim import lr_at
from .progress import Progress, plural
from .run import Run, RunState, Stop, save_run
from .step import Stepper
from .trainer import Trainer, train_step

RESUME_COMMAND = "cifar-resnet train --resume"
REPLAN_SHARE = 0.02  # with a time budget, check the plan every 2% of it ...
REPLAN_MIN_SECONDS = 1.0  # ... but not more often than every second
GPU_SYNC_EVERY = 100  # steps between divergence checks on a GPU (each one waits for it)


def train_one_epoch(
    trainer: Trainer,
    state: RunState,
    config: TrainConfig,
    total_steps: int,
    stop: Stop,
    on_step: Callable[[], bool] | None = None,
    progress: Progress | None = None,
) -> str:
    """Train from ``state.epoch_step`` to the end of the epoch (or ``total_steps``).

    Returns "done", "stopped" (a signal) or "paused" (``on_step()`` asked for a pause, e.g.
    to re-plan a time budget; the epoch continues with the next call). Raises DivergedError
    on a non-finite loss.
    """
    loader, stepper = trainer.loader, trainer.stepper
    steps_per_epoch = len(loader)
    # Reading a device value waits for the GPU; on a CPU it costs nothing.
    sync_every = 1 if loader.device.type == "cpu" else GPU_SYNC_EVERY
    loss_sum, correct, seen = state.epoch_sums
    stepper.set_counters(loss_sum, int(correct), state.step)
    if progress is not None:
        progress.start_epoch(state.epoch, state.epoch_step, int(seen))
    start, outcome = time.perf_counter(), "done"
    try:
        for x, y in loader.batches(state.epoch_step):
            if state.step >= total_steps:
                break
            lr = lr_at(config, state.step, steps_per_epoch, total_steps)
            train_step(trainer, x, y, lr, state.step, total_steps)
            seen += y.shape[0]
            state.step += 1
            state.epoch_step += 1
            if state.epoch_step % sync_every == 0 or state.epoch_step == steps_per_epoch:
                _check_finite(stepper, config, steps_per_epoch, total_steps)
            if progress is not None:
                progress.step(state.step, state.epoch_step, lr, lambda n=seen: _running(stepper, n))
            stopping = _stopping(stop, state.epoch_step, sync_every, loader.device)
            if on_step is not None or stopping:
                state.epoch_sums = [float(stepper.loss_sum), float(stepper.correct), seen]
            if stopping:
                stop.signum = stop.signum or signal.SIGTERM
                outcome = "stopped"
                break
            # A pause is for re-planning the steps to come: none at the run's last step.
            if on_step is not None and on_step() and state.step < total_steps:
                outcome = "paused"
                break
    finally:
        if progress is not None:
            progress.close(paused=outcome == "paused")
    _check_finite(stepper, config, steps_per_epoch, total_steps)
    state.epoch_sums = [float(stepper.loss_sum), float(stepper.correct), seen]
    state.epoch_seconds += time.perf_counter() - start
    return outcome


def _running(stepper: Stepper, seen: float) -> tuple[float, float, int]:
    """The epoch's running loss, accuracy (%) and images so far (reads the device)."""
    seen = max(seen, 1)
    return float(stepper.loss_sum) / seen, 100.0 * float(stepper.correct) / seen, int(seen)


def _stopping(stop: Stop, epoch_step: int, sync_every: int, device: torch.device) -> bool:
    """Whether to stop after this step; every rank of a distributed run decides together."""
    if not distributed.is_enabled():
        return stop.signum is not None
    if epoch_step % sync_every:
        return False
    return distributed.any_rank(stop.signum is not None, device)


def _check_finite(stepper, config, steps_per_epoch, total_steps) -> None:
    bad = int(stepper.first_bad)
    if distributed.is_enabled():  # every rank raises together, naming the same step
        flags = distributed.all_sum(
            [float(bad >= 0), float(bad if bad >= 0 else 0)], stepper.device
        )
        bad = int(flags[1] / flags[0]) if flags[0] else -1
    if bad >= 0:
        epoch, step = bad // steps_per_epoch + 1, bad % steps_per_epoch + 1
        raise DivergedError(
            f"the loss became non-finite at epoch {epoch}, step {step} (global step {bad + 1}, "
            f"lr {lr_at(config, bad, steps_per_epoch, total_steps):g}); lower --lr or check "
            "the data; the last good checkpoint is kept"
        )


def train_epochs(run: Run, tty: bool) -> None:
    """Train ``run`` from its state to its last step (or its target accuracy); a signal saves
    and raises Interrupted. ``tty``: progress bars, else progress lines in the log."""
    state = run.state
    total_epochs = -(-run.total_steps // run.steps_per_epoch)
    dist = f", {run.dist.world_size} processes" if run.dist.enabled else ""
    run.log(
        f"training {run.meta['model_name']} ({run.preset} preset) on {len(run.splits.train)} "
        f"images, {len(run.splits.classes)} classes, {run.runtime.describe()}{dist}; "
        f"{plural(total_epochs, 'epoch')} of {plural(run.steps_per_epoch, 'step')}; run folder "
        f"{run.folder.path}"
    )
    late = [m for m in run.config.lr_milestones if m >= run.total_steps]
    if run.config.schedule == "multistep" and late:
        run.log(
            f"note: lr milestones {','.join(map(str, late))} are at or past the run's last "
            f"step ({run.total_steps}); those decays will not happen (set --lr-milestones)"
        )

    def on_step() -> bool:
        every = run.config.save_every_steps
        if every and state.step % every == 0 and state.epoch_step < run.steps_per_epoch:
            save_run(run)
        return _replan_due(run)

    progress = _progress(run, tty)
    run.trainer.model.train()
    with Stop() as stop:
        run.stop = stop
        while state.step < run.total_steps:
            wall = time.perf_counter()
            outcome = train_one_epoch(
                run.trainer, state, run.config, run.total_steps, stop, on_step, progress
            )
            if outcome != "done":
                state.wall_seconds += time.perf_counter() - wall
            if outcome == "stopped":
                save_run(run)
                _interrupted(run, stop.signum)
            if outcome == "paused":
                _replan(run, mid_epoch=True)
                continue
            try:
                reached = _end_epoch(run, wall)
            except _EvaluationStopped:  # the epoch is trained: saved before its evaluation
                state.wall_seconds += time.perf_counter() - wall
                save_run(run)
                _interrupted(run, stop.signum)
            if stop.signum is not None:  # a signal during the evaluation: the epoch is saved
                _interrupted(run, stop.signum)
            if reached:
                break


def _progress(run: Run, tty: bool) -> Progress | None:
    if not run.main or run.quiet:
        return None
    progress = Progress(
        total_steps=lambda: run.total_steps,  # a time budget's plan, as re-planned
        steps_per_epoch=run.steps_per_epoch,
        first_step=run.state.step,
        tty=tty,
        log=run.log,
        log_every=run.log_every,
        writer=run.writer,
        rows=run.state.log_rows,
    )
    if tty:  # lines printed while a bar is drawn go above it
        log, run.log = run.log, lambda message: progress.write(message, log)
    run.tty = tty
    return progress


def _interrupted(run: Run, signum: int | None) -> None:
    if run.main:  # the steps logged so far, an unfinished first epoch's too
        run.folder.write_steps(run.state.log_rows)
    raise Interrupted(
        f"stopped by signal {signum} at epoch {run.state.epoch + 1}, step {run.state.step}; "
        f"the run is saved: continue with `{RESUME_COMMAND} {run.folder.path}`"
    )


class _EvaluationStopped(Exception):
    """A signal arrived during an end-of-epoch evaluation (single process only)."""


def evaluate_model(run: Run, model: torch.nn.Module, loader: DeviceLoader) -> dict[str, Any]:
    stop = run.stop
    # A signal ends a single process's evaluation at the next batch; ranks of a distributed
    # run finish it together (one alone would leave the others waiting in a reduction).
    check = None if stop is None or run.dist.enabled else (lambda: stop.signum is not None)
    result = evaluate(
        model,
        loader,
        num_classes=len(run.splits.classes),
        amp_dtype=run.runtime.amp_dtype,
        tta=run.config.tta,
        should_stop=check,
    )
    if result is None:
        raise _EvaluationStopped
    return result


def _evaluate_epoch(run: Run, row: dict[str, Any]) -> None:
    """Test (and val, and EMA) figures into ``row``."""
    t = run.trainer
    test = evaluate_model(run, t.model, run.test_loader)
    row.update(test_loss=test["loss"], test_acc=test["accuracy"])
    if run.val_loader is not None:
        val = evaluate_model(run, t.model, run.val_loader)
        row.update(val_loss=val["loss"], val_acc=val["accuracy"])
    if t.ema is not None:
        ema = evaluate_model(run, t.ema.module, run.test_loader)
        row.update(ema_test_loss=ema["loss"], ema_test_acc=ema["accuracy"])


def _end_epoch(run: Run, wall: float) -> bool:
    """After a complete epoch: evaluate, re-plan, record, save. True when the run stops early
    (target accuracy reached)."""
    state, dev = run.state, run.runtime.device
    epoch_steps, last = state.epoch_step, state.step >= run.total_steps
    if last and run.trainer.lookahead is not None:
        run.trainer.lookahead.finish()  # the run ends on the slow weights
    distributed.broadcast_buffers(run.trainer.model)  # rank 0's BatchNorm statistics on all
    loss_sum, correct, seen = distributed.all_sum(state.epoch_sums, dev)
    row = {
        "epoch": state.epoch + 1,
        "step": state.step,
        "lr": lr_at(run.config, state.step - 1, run.steps_per_epoch, run.total_steps),
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": 100.0 * correct / max(seen, 1),
        "epoch_seconds": state.epoch_seconds,
        "images_per_s": seen / max(state.epoch_seconds, 1e-9),
    }
    eval_start = time.perf_counter()
    every = run.config.eval_every
    evaluated = last or (every and (state.epoch + 1) % every == 0)
    if evaluated:
        _evaluate_epoch(run, row)
        if run.plan is not None:
            run.plan.measured_eval(distributed.all_mean([time.perf_counter() - eval_start], dev)[0])
    state.wall_seconds += time.perf_counter() - wall
    # A GPU's first epoch holds cuDNN autotuning and graph capture: not the speed of the rest,
    # so its plan is first checked after the second.
    if run.plan is not None and not last and not (dev.type == "cuda" and state.epoch == 0):
        _replan(run, epoch_steps)
    reached = run.config.target_accuracy and (
        row.get(f"{run.config.target_split}_acc", -1) >= run.config.target_accuracy
    )
    if reached:
        state.target_seconds = time.perf_counter() - run.started
    row["wall_seconds"] = state.wall_seconds
    _record_epoch(run, row)
    run.plan_mark = (time.perf_counter(), state.step)  # the next window starts after the save
    if reached:
        run.log(
            f"target accuracy {run.config.target_accuracy:g}% reached on "
            f"{run.config.target_split} after epoch {state.epoch}, {state.target_seconds:.1f}s"
        )
    return bool(reached)


def _replan_due(run: Run) -> bool:
    """Time to check a time budget's plan within the epoch: every ``REPLAN_SHARE`` of the
    budget (single process; a GPU's first epoch, with its autotuning, is not the speed)."""
    if run.plan is None or run.dist.enabled:
        return False
    if run.runtime.device.type == "cuda" and run.state.epoch == 0:
        return False
    mark_time, mark_step = run.plan_mark
    every = max(REPLAN_MIN_SECONDS, REPLAN_SHARE * run.config.time_budget)
    return time.perf_counter() - mark_time >= every and run.state.step > mark_step


def _replan(run: Run, epoch_steps: int = 0, mid_epoch: bool = False) -> None:
    """Re-plan a time budget from the speed measured since the last check (mid-epoch) or over
    the epoch just ended; the schedule is laid over the steps that will really run."""
    state, plan, now = run.state, run.plan, time.perf_counter()
    if mid_epoch:
        mark_time, mark_step = run.plan_mark
        start, seconds = mark_step, now - mark_time
    else:
        start, seconds = state.step - epoch_steps, state.epoch_seconds
    seconds = distributed.all_mean([seconds], run.runtime.device)[0]
    plan.rescale(start, max(state.step, start + 1), run.total_steps, seconds)
    run.plan_mark = (now, state.step)
    replanned = replan_steps(
        plan,
        run.config.time_budget,
        now - run.started,
        state.step,
        state.epoch + (0 if mid_epoch else 1),
        run.steps_per_epoch,
        run.config.eval_every,
        run.total_steps,
        epoch_step=state.epoch_step if mid_epoch else 0,
    )
    if replanned is None:
        return
    if plan.material(replanned) or not run.tty:  # a terminal shows its bar's total follow
        run.log(
            f"time budget: {replanned} steps re-planned (was {run.total_steps}; "
            f"{plan.step_s * 1e3:.1f} ms/step estimated in epoch {state.epoch + 1})"
        )
    run.config = budget_schedule(run.config, replanned, run.steps_per_epoch)
    state.planned_steps = replanned
    if run.main:
        run.folder.write_config(run.preset, run.config)


def _record_epoch(run: Run, row: dict[str, Any]) -> None:
    """Metrics, the epoch line, TensorBoard and the epoch's checkpoints."""
    state = run.state
    state.metrics.append(row)
    state.epoch += 1
    state.epoch_step, state.epoch_sums, state.epoch_seconds = 0, [0.0, 0.0, 0.0], 0.0
    run.trainer.loader.set_epoch(state.epoch)
    run.log(epoch_line(row))
    is_best = "val_acc" in row and row["val_acc"] > state.best_val
    if is_best:
        state.best_val = row["val_acc"]
    if run.main:
        run.folder.write_metrics(state.metrics)
        run.folder.write_steps(state.log_rows)
    if run.writer is not None:
        for key, value in row.items():
            if key not in ("epoch", "step") and value != "":
                run.writer.add_scalar(key, value, state.epoch)
        run.writer.flush()
    save_run(run)
    if is_best:
        save_run(run, run.folder.path / "best.pt")


def epoch_line(row: dict[str, Any]) -> str:
    """The seed post's line, then the rest of the epoch's figures."""
    parts = []
    if "test_acc" in row:
        parts.append(f"Test Loss: {row['test_loss']:.4f}, Accuracy: {row['test_acc']:.2f}%")
    if "val_acc" in row:
        parts.append(f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2f}%")
    if "ema_test_acc" in row:
        parts.append(f"EMA test acc {row['ema_test_acc']:.2f}%")
    parts += [
        f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}%",
        f"lr {row['lr']:.4g}",
        f"{row['epoch_seconds']:.1f}s {row['images_per_s']:.0f} img/s",
    ]
    return f"[{row['epoch']}] " + " | ".join(parts)
