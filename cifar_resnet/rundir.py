"""The run folder as one object: who owns it, and every file in it but the checkpoints
(whose format is :mod:`cifar_resnet.checkpoint`'s).

    RUN/.lock           held (flock) by the one process training into RUN
    RUN/config.toml     the resolved recipe; ``--config`` reads it back
    RUN/run.json        classes, normalisation, data source, device, sizes
    RUN/metrics.csv     a row per epoch
    RUN/steps.csv       loss and lr per logged step
    RUN/summary.json    the final figures and the checkpoint they came from
    RUN/tensorboard/    with --tensorboard
    RUN/checkpoints/    see checkpoint.py
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .config import TrainConfig, config_to_toml
from .errors import OutputError, RunLockedError, UsageError, require
from .files import write_text_atomic

METRIC_FIELDS = [
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "ema_test_loss",
    "ema_test_acc",
    "epoch_seconds",
    "images_per_s",
    "wall_seconds",
]
STEP_FIELDS = ["step", "epoch", "lr", "loss", "acc", "images_per_s"]
# Files that show a folder holds a run, and what --overwrite removes.
RUN_FILES = ("config.toml", "run.json", "metrics.csv", "steps.csv", "summary.json", "best.pt")
RUN_FOLDERS = ("checkpoints", "tensorboard")
REPORT_FILES = (
    "report.md",
    "curves.png",
    "confusion.png",
    "per_class.png",
    "wrong.png",
)


class RunDir:
    """A run folder. ``lock()`` makes this process its only writer until ``unlock()``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._made: list[Path] = []  # what lock() created, for unlock(tidy=True)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def holds_run(self) -> bool:
        """True when a run has written here (any run file, or a checkpoint)."""
        if any((self.path / name).exists() for name in RUN_FILES):
            return True
        return self.checkpoints.is_dir() and any(self.checkpoints.glob("*.pt"))

    def create(self) -> None:
        """Make the folder (and checkpoints/) and check that it can be written."""
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise OutputError(
                f"cannot write to the output folder {self.path}: {e.strerror or e}; "
                "choose a writable --out"
            ) from None

    def lock(self) -> None:
        """Take the folder's lock or fail at once naming the process that holds it. flock is
        released by the kernel when its holder dies, so a killed run never blocks the next."""
        path = self.path / ".lock"
        made = [p for p in (path, self.checkpoints, self.path) if not p.exists()]
        self.create()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(
                f"{self.path} is in use by a running training (pid {holder}); wait for it, "
                "stop it, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd, self._made = fd, made
        for stale in self.checkpoints.glob(".*.tmp"):  # left by a killed writer
            stale.unlink(missing_ok=True)

    def unlock(self, tidy: bool = False) -> None:
        """Release the folder; ``tidy``: a run refused before it wrote anything leaves nothing
        behind (the lock file, checkpoints/ and the folder, if this process made them)."""
        if self._lock_fd is None:
            return
        if tidy and not self.holds_run():
            for made in self._made:  # the lock file, then the folders, each only if empty
                try:
                    made.unlink() if made.name == ".lock" else made.rmdir()
                except OSError:
                    pass
        os.close(self._lock_fd)  # closing releases the flock
        self._lock_fd = None

    def clear(self) -> None:
        """Remove a previous run's files (``--overwrite``); other files are left alone."""
        for name in (*RUN_FILES, *REPORT_FILES):
            (self.path / name).unlink(missing_ok=True)
        for name in RUN_FOLDERS:
            shutil.rmtree(self.path / name, ignore_errors=True)
        self.checkpoints.mkdir(exist_ok=True)

    def write_config(self, preset: str, config: TrainConfig) -> None:
        write_text_atomic(self.path / "config.toml", config_to_toml(preset, config))

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        write_text_atomic(self.path / name, json.dumps(data, indent=2) + "\n")

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        write_text_atomic(self.path / "metrics.csv", _csv(METRIC_FIELDS, rows))

    def write_steps(self, rows: list[dict[str, Any]]) -> None:
        write_text_atomic(self.path / "steps.csv", _csv(STEP_FIELDS, rows))

    def tensorboard(self):
        """A TensorBoard SummaryWriter logging into RUN/tensorboard."""
        require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.path / "tensorboard"))


def _csv(fields: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in fields})
    return buf.getvalue()


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A run's JSON file, or {} when it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_csv(path: str | os.PathLike) -> list[dict[str, float | None]]:
    """A run's CSV file as dicts of floats; an empty cell (not measured then) is None."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [
            {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, float | None]]:
    """RUN/metrics.csv; a folder without one is a UsageError."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file() and RunDir(run_dir).holds_run():
        raise UsageError(
            f"{run_dir} has no finished epoch yet (it was stopped in its first); report after "
            f"an epoch: continue it with `cifar-resnet train --resume {run_dir}`"
        )
    if not path.is_file():
        raise UsageError(
            f"no metrics.csv in {run_dir}; pass a run folder written by `cifar-resnet train --out`"
        )
    rows = read_csv(path)
    if not rows:
        raise UsageError(f"{path} has no epochs yet; report after the first epoch")
    return rows
