"""The training loop: :func:`train_one_epoch`, the one loop over steps (a generator: its caller
decides after each step whether to stop, save or re-plan), and :func:`train_epochs`, a run's
epoch loop: train -> evaluate -> re-plan -> record -> save.

One code path for CPU and GPU, fp32 and bf16, eager and compiled: switches, not branches.
No host synchronisation per step on a GPU: losses and counts are summed on the device and read
once per epoch (and every ``GPU_SYNC_EVERY`` steps to catch a diverged loss early).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import torch

from . import distributed
from .budget import replan_steps
from .errors import DivergedError, Interrupted
from .evaluate import evaluate
from .loader import DeviceLoader
from .progress import Progress, plural
from .run import Run, RunState, Stop, save_run
from .step import Trainer, train_step

RESUME_COMMAND = "cifar-resnet train --resume"
REPLAN_SHARE = 0.02  # with a time budget, check the plan every 2% of it ...
REPLAN_MIN_SECONDS = 1.0  # ... but not more often than every second
GPU_SYNC_EVERY = 100  # steps between divergence checks on a GPU (each one waits for it)


def train_one_epoch(t: Trainer, state: RunState, progress: Progress | None = None) -> Iterator[int]:
    """Train from ``state.epoch_step`` to the end of the epoch (or of ``t.schedule``), yielding
    the global step count after each step, ``state`` updated. The caller decides what follows
    a step (stop, save, re-plan: ``t.schedule`` may change between steps) and calls
    :func:`settle` when the loop ends or before it saves. Raises DivergedError on a non-finite
    loss; ``state.epoch_seconds`` counts the time spent in here and in the caller's loop."""
    loader = t.loader
    # Reading a device value waits for the GPU; on a CPU it costs nothing.
    sync_every = 1 if loader.device.type == "cpu" else GPU_SYNC_EVERY
    loss_sum, correct, seen = state.epoch_sums
    t.counters.set(loss_sum, int(correct), state.step)
    if progress is not None:
        progress.start_epoch(state.epoch, state.epoch_step, int(seen))
    mark = time.perf_counter()
    try:
        for x, y in loader.batches(state.epoch_step):
            if state.step >= t.schedule.total_steps:
                break
            train_step(t, x, y, state.step)
            state.step += 1
            state.epoch_step += 1
            state.epoch_sums[2] += y.shape[0]
            if state.epoch_step % sync_every == 0 or state.epoch_step == len(loader):
                check_finite(t)
            if progress is not None:
                lr = t.schedule.lr(state.step - 1)
                progress.step(state.step, state.epoch_step, lr, lambda: _running(t, state))
            now = time.perf_counter()
            state.epoch_seconds, mark = state.epoch_seconds + now - mark, now
            yield state.step
        state.epoch_seconds += time.perf_counter() - mark
    finally:
        if progress is not None:
            progress.close()


def settle(t: Trainer, state: RunState) -> None:
    """The steps trained so far, checked for a non-finite loss (DivergedError) and their
    device sums read into ``state.epoch_sums`` (what a checkpoint and the epoch row hold)."""
    check_finite(t)
    state.epoch_sums[:2] = [float(t.counters.loss_sum), float(t.counters.correct)]


def train_steps(t: Trainer, state: RunState | None = None) -> Iterator[int]:
    """:func:`train_one_epoch` epoch after epoch to the schedule's last step, without
    evaluations or files, yielding the global step count after each step: the time-budget
    probe and the benchmarks. Each epoch's figures are appended to ``state.metrics``."""
    state = state if state is not None else RunState()
    t.model.train()
    while state.step < t.schedule.total_steps:
        t.loader.set_epoch(state.epoch)
        yield from train_one_epoch(t, state)
        settle(t, state)
        loss_sum, correct, seen = state.epoch_sums
        state.metrics.append(
            {
                "epoch": state.epoch + 1,
                "step": state.step,
                "images": seen,
                "train_loss": loss_sum / max(seen, 1),
            }
        )
        state.epoch += 1
        state.epoch_step, state.epoch_sums, state.epoch_seconds = 0, [0.0, 0.0, 0.0], 0.0


def _running(t: Trainer, state: RunState) -> tuple[float, float, int]:
    """The epoch's running loss, accuracy (%) and images so far (reads the device)."""
    seen = max(state.epoch_sums[2], 1)
    c = t.counters
    return float(c.loss_sum) / seen, 100.0 * float(c.correct) / seen, int(seen)


def check_finite(t: Trainer) -> None:
    """DivergedError naming the first step whose loss was not finite, if there was one."""
    bad = int(t.counters.first_bad)
    if distributed.is_enabled():  # every rank raises together, naming the same step
        flags = distributed.all_sum(
            [float(bad >= 0), float(bad if bad >= 0 else 0)], t.runtime.device
        )
        bad = int(flags[1] / flags[0]) if flags[0] else -1
    if bad >= 0:
        per_epoch = t.schedule.steps_per_epoch
        epoch, step = bad // per_epoch + 1, bad % per_epoch + 1
        raise DivergedError(
            f"the loss became non-finite at epoch {epoch}, step {step} (global step {bad + 1}, "
            f"lr {t.schedule.lr(bad):g}); lower --lr or check the data; the last good "
            "checkpoint is kept"
        )


def _stopping(stop: Stop, epoch_step: int, device: torch.device) -> bool:
    """Whether to stop after this step; every rank of a distributed run decides together."""
    if not distributed.is_enabled():
        return stop.signum is not None
    if epoch_step % (1 if device.type == "cpu" else GPU_SYNC_EVERY):
        return False
    return distributed.any_rank(stop.signum is not None, device)


def train_epochs(run: Run, tty: bool) -> None:
    """Train ``run`` from its state to its last step (or its target accuracy), an epoch at a
    time; a signal saves and raises Interrupted. ``tty``: progress bars, else log lines."""
    state, t = run.state, run.trainer
    _log_start(run)
    progress = _progress(run, tty)
    t.model.train()
    with Stop() as stop:
        run.stop = stop
        while state.step < run.total_steps:
            wall, stopped = time.perf_counter(), False
            for _ in train_one_epoch(t, state, progress):
                stopped = _stopping(stop, state.epoch_step, t.runtime.device)
                if stopped:
                    break
                if _save_due(run):
                    settle(t, state)
                    save_run(run)
                govern_threads(run)
                if _replan_due(run):
                    _replan(run, mid_epoch=True)
            settle(t, state)
            if stopped:
                stop.signum = stop.signum or signal.SIGTERM
                _save_and_stop(run, wall)
            epoch_steps, row = state.epoch_step, _train_row(run)
            if not _evaluate_epoch(run, row):  # a signal during the evaluation: save, stop
                _save_and_stop(run, wall)
            state.wall_seconds += time.perf_counter() - wall
            if _replan_at_epoch_end(run):
                _replan(run, epoch_steps)
            reached = _target_reached(run, row)
            row["wall_seconds"] = state.wall_seconds
            state.metrics.append(row)
            state.epoch += 1
            state.epoch_step, state.epoch_sums, state.epoch_seconds = 0, [0.0, 0.0, 0.0], 0.0
            t.loader.set_epoch(state.epoch)
            _record(run, row)  # the epoch line, metrics.csv, TensorBoard, its checkpoints
            run.plan_mark = (time.perf_counter(), state.step)  # the next window: after saving
            if stop.signum is not None:  # a signal during the evaluation: the epoch is saved
                _interrupted(run, stop.signum)
            if reached:
                _log_reached(run)
                break


def _log_start(run: Run) -> None:
    total_epochs = -(-run.total_steps // run.steps_per_epoch)
    dist = f", {run.dist.world_size} processes" if run.dist.enabled else ""
    run.log(
        f"training {run.meta['model_name']} ({run.preset} preset) on {len(run.splits.train)} "
        f"images, {len(run.splits.classes)} classes, {run.runtime.describe()}{dist}; "
        f"{plural(total_epochs, 'epoch')} of {plural(run.steps_per_epoch, 'step')}; run folder "
        f"{run.folder.path}"
    )
    laid = run.trainer.schedule.laid
    late = [m for m in laid.lr_milestones if m >= run.total_steps]
    if laid.schedule == "multistep" and late:
        run.log(
            f"note: lr milestones {','.join(map(str, late))} are at or past the run's last "
            f"step ({run.total_steps}); those decays will not happen (set --lr-milestones)"
        )


def _save_due(run: Run) -> bool:
    """``save_every_steps`` within an epoch (its last step saves the epoch's checkpoint)."""
    every, state = run.config.save_every_steps, run.state
    return bool(every) and state.step % every == 0 and state.epoch_step < run.steps_per_epoch


def _save_and_stop(run: Run, wall: float) -> None:
    run.state.wall_seconds += time.perf_counter() - wall
    save_run(run)
    _interrupted(run, run.stop.signum)


def _progress(run: Run, tty: bool) -> Progress | None:
    if not run.main or run.options.quiet:
        return None
    progress = Progress(
        total_steps=lambda: run.total_steps,  # a time budget's plan, as re-planned
        steps_per_epoch=run.steps_per_epoch,
        first_step=run.state.step,
        tty=tty,
        log=run.log,
        log_every=run.options.log_every,
        writer=run.writer,
        rows=run.state.log_rows,
        announce=run.plan is None,
    )
    if tty:  # lines printed while a bar is drawn go above it
        log, run.log = run.log, lambda message: progress.write(message, log)
    run.tty = tty
    return progress


def _interrupted(run: Run, signum: int | None) -> None:
    if run.main:  # the epochs and steps logged so far (a first epoch's: metrics.csv's header)
        run.folder.write_metrics(run.state.metrics)
        run.folder.write_steps(run.state.log_rows)
    raise Interrupted(
        f"stopped by signal {signum} at epoch {run.state.epoch + 1}, step {run.state.step}; "
        f"the run is saved: continue with `{RESUME_COMMAND} {run.folder.path}`"
    )


def evaluate_model(run: Run, model: torch.nn.Module, loader: DeviceLoader) -> dict[str, Any] | None:
    """``evaluate`` as the run evaluates; None when a signal stopped it (single process)."""
    stop = run.stop
    # A signal ends a single process's evaluation at the next batch; ranks of a distributed
    # run finish it together (one alone would leave the others waiting in a reduction).
    stoppable = stop is not None and not run.dist.enabled

    def check() -> bool:
        govern_threads(run)
        return stoppable and stop.signum is not None

    return evaluate(
        model,
        loader,
        num_classes=len(run.splits.classes),
        amp_dtype=run.runtime.amp_dtype,
        tta=run.config.tta,
        should_stop=check,
    )


def _train_row(run: Run) -> dict[str, Any]:
    """The epoch's training figures, summed over ranks, with the weights made ready for its
    evaluation: the slow weights after the run's last step, rank 0's BatchNorm statistics."""
    state, t = run.state, run.trainer
    if state.step >= run.total_steps and t.lookahead is not None:
        t.lookahead.finish()  # the run ends on the slow weights
    distributed.broadcast_buffers(t.model)  # rank 0's BatchNorm statistics on all
    loss_sum, correct, seen = distributed.all_sum(state.epoch_sums, run.runtime.device)
    return {
        "epoch": state.epoch + 1,
        "step": state.step,
        "lr": t.schedule.lr(state.step - 1),
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": 100.0 * correct / max(seen, 1),
        "epoch_seconds": state.epoch_seconds,
        "images_per_s": seen / max(state.epoch_seconds, 1e-9),
    }


def _evaluate_epoch(run: Run, row: dict[str, Any]) -> bool:
    """Test (and val, and EMA) figures into ``row`` when this epoch is evaluated (every
    ``eval_every`` epochs and the last); False when a signal stopped the evaluation."""
    state, t = run.state, run.trainer
    every = run.config.eval_every
    if not (state.step >= run.total_steps or (every and (state.epoch + 1) % every == 0)):
        return True
    start = time.perf_counter()
    parts = [("test", t.model, run.test_loader), ("val", t.model, run.val_loader)]
    if t.ema is not None:
        parts.append(("ema_test", t.ema.module, run.test_loader))
    for name, model, loader in parts:
        if loader is None:
            continue
        result = evaluate_model(run, model, loader)
        if result is None:
            return False
        row.update({f"{name}_loss": result["loss"], f"{name}_acc": result["accuracy"]})
    if run.plan is not None:
        seconds = [time.perf_counter() - start]
        run.plan.measured_eval(distributed.all_mean(seconds, run.runtime.device)[0])
    return True


def _replan_at_epoch_end(run: Run) -> bool:
    """A time budget's plan is checked after every epoch but the last. A GPU's first epoch
    holds cuDNN autotuning and graph capture, not the speed of the rest: it is first checked
    after the second."""
    first_gpu_epoch = run.runtime.device.type == "cuda" and run.state.epoch == 0
    return run.plan is not None and run.state.step < run.total_steps and not first_gpu_epoch


def _target_reached(run: Run, row: dict[str, Any]) -> bool:
    target = run.config.target_accuracy
    reached = bool(target) and row.get(f"{run.config.target_split}_acc", -1) >= target
    if reached:
        run.state.target_seconds = time.perf_counter() - run.started
    return reached


def _log_reached(run: Run) -> None:
    run.log(
        f"target accuracy {run.config.target_accuracy:g}% reached on "
        f"{run.config.target_split} after epoch {run.state.epoch}, "
        f"{run.state.target_seconds:.1f}s"
    )


def govern_threads(run: Run, force: bool = False) -> None:
    """A time budget's CPU threads follow the cores other work leaves free (threads.py): the
    first change is shown, every one goes to a log."""
    governor = run.threads
    if governor is None or not governor.tick(force):
        return
    if governor.changes == 1 or not run.tty:
        run.log(
            f"CPU threads: {governor.threads} of {governor.most} (other work is keeping about "
            f"{governor.others:.1f} of the {len(governor.cpus)} cores busy)"
        )


def _replan_due(run: Run) -> bool:
    """Time to check a time budget's plan within the epoch: every ``REPLAN_SHARE`` of the
    budget (single process; a GPU's first epoch, with its autotuning, is not the speed). A
    run's last step is not re-planned."""
    if run.plan is None or run.dist.enabled or run.state.step >= run.total_steps:
        return False
    if run.runtime.device.type == "cuda" and run.state.epoch == 0:
        return False
    mark_time, mark_step = run.plan_mark
    every = max(REPLAN_MIN_SECONDS, REPLAN_SHARE * run.config.time_budget)
    return time.perf_counter() - mark_time >= every and run.state.step > mark_step


def _replan(run: Run, epoch_steps: int = 0, mid_epoch: bool = False) -> None:
    """Re-plan a time budget from the speed measured since the last check (mid-epoch) or over
    the epoch just ended; the schedule is laid over the steps that will really run (the
    recipe, and config.toml, stay as they are)."""
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
    run.trainer.schedule = run.trainer.schedule.laid_over(replanned)
    state.planned_steps = replanned


def _record(run: Run, row: dict[str, Any]) -> None:
    """The epoch line, metrics.csv, steps.csv, TensorBoard, and the epoch's checkpoints."""
    state = run.state
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
