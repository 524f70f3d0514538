"""A time budget's first plan: the run's own step, evaluation and checkpoint save timed on a
throwaway copy of its trainer (the probe), then :func:`budget.plan_steps` over those costs;
the run's schedule is laid over the planned steps. The loop re-plans as it goes."""

from __future__ import annotations

import copy
import dataclasses
import time

import torch

from . import checkpoint as ckpt_io
from . import distributed
from .budget import BudgetPlan, eval_note, plan_steps, short_note
from .loop import evaluate_model, govern_threads, train_steps
from .models import ModelSpec
from .optim import Schedule
from .progress import Phases
from .run import Run, make_run_checkpoint
from .step import CudaGraph, Trainer
from .trainer import build_trainer


def plan_budget(run: Run, tty: bool) -> None:
    """With a time budget (and no plan kept from before a resume): time the run's own step on
    a throwaway copy of the trainer, plan the steps, lay the schedule over them. A terminal
    shows a bar naming the part being timed."""
    config = run.config
    if not config.time_budget or run.state.planned_steps:
        return
    run.log(
        f"time budget {config.time_budget:g}s: timing the run's steps and evaluation on a copy "
        "of the model (a few seconds) ..."
    )
    govern_threads(run, force=True)  # the threads the load since the start leaves room for
    with Phases("timing", tty and run.main and not run.options.quiet) as bar:
        save_s, (step_s, early_s, eval_s) = _timed_costs(run, bar)
    step_s, early_s, eval_s = distributed.all_mean([step_s, early_s, eval_s], run.runtime.device)
    elapsed = time.perf_counter() - run.started
    costs = BudgetPlan(0, step_s, eval_s, save_s, early_s, config.early_fraction)
    run.plan = plan_steps(
        config.time_budget, elapsed, costs, run.steps_per_epoch, config.eval_every
    )
    run.state.planned_steps = run.plan.steps
    run.plan_mark = (time.perf_counter(), run.state.step)
    run.trainer.schedule = run.trainer.schedule.laid_over(run.plan.steps)
    side = run.trainer.early_size
    early = f", {early_s * 1e3:.1f} ms at {side}x{side} (early steps)" if early_s else ""
    run.log(
        f"time budget {config.time_budget:g}s: {run.plan.steps} steps planned "
        f"({run.plan.steps / run.steps_per_epoch:.1f} epochs; {step_s * 1e3:.1f} ms/step{early}, "
        f"evaluation {eval_s:.1f}s, {elapsed:.1f}s spent before)"
    )
    note = short_note(run.plan, config.time_budget, elapsed) or eval_note(
        run.plan, config.time_budget
    )
    if note:
        run.log(note)


def _timed_costs(run: Run, part: Phases) -> tuple[float, tuple[float, float, float]]:
    """Seconds per checkpoint save (the main process writes one and removes it), then
    :func:`_probe`'s step and evaluation seconds."""
    part("a checkpoint save")
    t0 = time.perf_counter()
    if run.main:
        probe_path = run.folder.path / ".budget-probe.pt"
        run.folder.record(probe_path)
        ckpt_io.save_checkpoint(make_run_checkpoint(run), probe_path)
        probe_path.unlink()
    save_s = distributed.all_sum([time.perf_counter() - t0], run.runtime.device)[0]
    return save_s, _probe(run, part)


def _probe(run: Run, part: Phases) -> tuple[float, float, float]:
    """Seconds per training step (at full size, and at the early size: 0 without one) and per
    evaluation, measured on a copy of the trainer built exactly as the run's (compile, CUDA
    graph, EMA, lookahead included) at a tiny lr: the graph's warm-up and capture untimed,
    then up to 20 steps or 1% of the budget each."""
    config = dataclasses.replace(run.config, lr=run.config.lr * 1e-3)
    with torch.random.fork_rng(devices=[]):  # the run's own random stream is untouched
        meta = run.meta
        classes, pad = len(meta["classes"]), meta.get("option_a_pad")
        spec = ModelSpec(meta["model_name"], classes, pad, config.dropout)
        probe = build_trainer(config, run.splits, run.runtime, spec)
    probe.schedule = Schedule(config, run.steps_per_epoch, 1 << 30)
    probe.early_fraction = 0.0
    part("training steps")
    step_s = _time_steps(probe, config.time_budget)
    early_s = 0.0
    if probe.early_size:
        part(f"early steps at {probe.early_size}x{probe.early_size}")
        probe.early_fraction = 1.0
        early_s = _time_steps(probe, config.time_budget)
    part("an evaluation")
    eval_s = 0.0
    for loader in (run.test_loader, run.val_loader):
        if loader is None:
            continue
        piece = _head(loader, 2000)  # timed on up to 2,000 images, scaled to the whole split
        evaluate_model(run, probe.model, _head(loader, loader.batch_size))  # one batch untimed:
        # the kernels' first-call set-up is not the evaluation's speed
        t0 = time.perf_counter()
        evaluate_model(run, probe.model, piece)
        eval_s += (time.perf_counter() - t0) * len(loader.labels) / len(piece.labels)
    return step_s, early_s, eval_s


def _head(loader, n: int):
    """``loader`` over its first ``n`` images."""
    part = copy.copy(loader)
    part.images, part.labels = loader.images[:n], loader.labels[:n]
    return part


def _time_steps(probe: Trainer, budget: float) -> float:
    """Seconds per step of ``probe``, after its warm-up steps."""
    cuda = probe.loader.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    warm, t0 = (CudaGraph.WARMUP + 1 if cuda else 1), 0.0
    for done in train_steps(probe):
        if done == warm:
            sync()
            t0 = time.perf_counter()
        elif done > warm:
            if done - warm >= 20 or time.perf_counter() - t0 > 0.01 * budget:
                break
    sync()
    return (time.perf_counter() - t0) / max(done - warm, 1)
