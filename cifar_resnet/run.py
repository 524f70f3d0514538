"""A run in progress: what its checkpoints hold (:class:`RunState`), what the phases of
``fit`` share (:class:`Run`), the signals that stop it (:class:`Stop`), and writing its
checkpoints."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt_io
from . import distributed
from .budget import BudgetPlan
from .config import TrainConfig
from .data import RunSplits
from .loader import DeviceLoader
from .rundir import RunDir
from .runtime import Runtime
from .step import Trainer
from .threads import ThreadGovernor


@dataclass
class RunState:
    """What a checkpoint needs beyond the model and optimizer to continue exactly."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimizer steps, all epochs
    epoch_step: int = 0  # completed steps within the current epoch (mid-epoch checkpoints)
    epoch_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss, correct, n
    epoch_seconds: float = 0.0  # training time spent in the current epoch so far
    best_val: float = -1.0
    wall_seconds: float = 0.0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    planned_steps: int = 0  # with a time budget: the steps the plan fixed (kept on resume)
    target_seconds: float = -1.0  # wall time at which target_accuracy was reached
    log_rows: list[dict[str, Any]] = field(default_factory=list)  # RUN/steps.csv


class Stop:
    """SIGINT/SIGTERM: finish the step, save, exit. A second SIGINT exits at once; the atomic
    writes mean that no file is left half-written either way."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            os._exit(130)
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


@dataclass
class RunOptions:
    """How ``fit`` runs a recipe, apart from the recipe itself (see ``fit``)."""

    device: str = "auto"  # auto, cpu, cuda, cuda:N
    resume: dict[str, Any] | str | None = None  # None, "auto", "required" or a checkpoint
    overwrite: bool = False  # a new run may replace one in its folder
    quiet: bool = False  # no log and no progress
    progress: bool | None = None  # a bar per epoch (None: when stdout is a terminal)
    log: Callable[[str], None] = print
    log_every: int = 0  # steps between progress lines (0: 10% of an epoch, or 30 s)
    dist_backend: str = "auto"  # torchrun: auto, nccl or gloo
    dist_timeout: float = 600.0  # torchrun: seconds a rank waits for the others
    started: float | None = None  # time.perf_counter() when the run's clock started
    tensorboard: bool = False  # log to RUN/tensorboard
    data_spec: str | None = None  # the --data value, recorded for the run's later commands


@dataclass
class Run:
    """What the phases of ``fit`` share."""

    config: TrainConfig
    preset: str
    splits: RunSplits
    runtime: Runtime
    dist: distributed.DistInfo
    trainer: Trainer
    state: RunState
    folder: RunDir
    test_loader: DeviceLoader
    val_loader: DeviceLoader | None
    meta: dict[str, Any]
    options: RunOptions  # started resolved; quiet on every rank but 0
    log: Callable[[str], None]  # options.log, or nothing when quiet
    stop: Stop | None = None
    plan: BudgetPlan | None = None
    plan_mark: tuple[float, int] = (0.0, 0)  # (time, step) of the last re-plan check
    writer: Any = None  # TensorBoard SummaryWriter
    last_checkpoint: Path | None = None
    tty: bool = False  # progress drawn as bars on a terminal (else lines in a log)
    threads: ThreadGovernor | None = None  # a time budget's CPU threads, beside other work

    @property
    def steps_per_epoch(self) -> int:
        return len(self.trainer.loader)

    @property
    def total_steps(self) -> int:
        return self.trainer.schedule.total_steps

    @property
    def started(self) -> float:
        return self.options.started

    @property
    def main(self) -> bool:
        return self.dist.is_main


def make_run_checkpoint(run: Run) -> dict[str, Any]:
    t = run.trainer
    return ckpt_io.make_checkpoint(
        model=t.model,
        optimizer=t.optimizer,
        state=dataclasses.asdict(run.state),
        config=run.config,
        meta=run.meta,
        lookahead=t.lookahead.state_dict() if t.lookahead else None,
        ema=t.ema.module if t.ema is not None else None,
        ema_n_averaged=int(t.ema.n_averaged) if t.ema is not None else 0,
    )


def save_run(run: Run, path: Path | None = None) -> None:
    """Rank 0 writes a checkpoint: ``path``, or the next in checkpoints/ (older ones pruned)."""
    if not run.main:
        return
    if path is not None:
        run.folder.record(path)
        ckpt_io.save_checkpoint(make_run_checkpoint(run), path)
        return
    path = ckpt_io.checkpoint_path(run.folder.path, run.state.epoch, run.state.step)
    run.folder.record(path)
    ckpt_io.save_checkpoint(make_run_checkpoint(run), path)
    run.last_checkpoint = path
    # Saves on a signal or every N steps never push out the newest end-of-epoch checkpoint.
    ends = [p for p in ckpt_io.checkpoint_files(run.folder.path) if _epoch_end(run, p)]
    ckpt_io.prune(run.folder.path, run.config.keep, protect=ends[:1])


def _epoch_end(run: Run, path: Path) -> bool:
    epoch, step = ckpt_io.checkpoint_position(path)
    return step >= min(epoch * run.steps_per_epoch, run.total_steps)
