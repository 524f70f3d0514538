"""The run folder as one object: who owns it, and every file in it but the checkpoints
(whose format is :mod:`cifar_resnet.checkpoint`'s).

    RUN/.lock           held (flock) by the one process training into RUN
    RUN/manifest.json   every file a run of ours wrote here: all --overwrite ever removes
    RUN/config.toml     the resolved recipe; ``--config`` reads it back
    RUN/run.json        classes, normalisation, data source, device, sizes
    RUN/metrics.csv     a row per epoch
    RUN/steps.csv       loss and lr per logged step
    RUN/summary.json    the final figures and the checkpoint they came from
    RUN/tensorboard/    with --tensorboard
    RUN/checkpoints/    see checkpoint.py

Every file here is written through :func:`cifar_resnet.files.write_atomic` (never through a
symlink in its own name, replaced by rename) and recorded in ``manifest.json``. A folder is
ours when it is empty or holds a run of ours; anything else is refused before it is touched.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .config import TrainConfig, config_to_toml
from .errors import OutputError, RunLockedError, UsageError, require
from .files import is_temp_name, remove_stale_temps, write_text_atomic

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
MANIFEST = "manifest.json"
# Files that show a folder holds a run (one written before manifests, too).
RUN_FILES = ("config.toml", "run.json", "metrics.csv", "steps.csv", "summary.json", "best.pt")
_OWN = {".lock", MANIFEST, "checkpoints"}  # never foreign, never removed by --overwrite


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
        """True when a run has written here (files in its manifest, any run file, or a
        checkpoint)."""
        if self.written() or any((self.path / name).exists() for name in RUN_FILES):
            return True
        return self.checkpoints.is_dir() and any(self.checkpoints.glob("*.pt"))

    def written(self) -> set[str]:
        """The files (relative to the folder) that runs of ours recorded writing here."""
        names = read_json(self.path / MANIFEST).get("files")
        if not isinstance(names, list):
            return set()
        return {
            n
            for n in names
            if isinstance(n, str) and n and not Path(n).is_absolute() and ".." not in Path(n).parts
        }

    def record(self, *paths: str | os.PathLike) -> None:
        """Add files written into the folder to its manifest (what --overwrite may remove)."""
        known = self.written()
        names = {Path(os.path.relpath(p, self.path)).as_posix() for p in paths}
        if names <= known and (self.path / MANIFEST).is_file():
            return
        files = sorted(known | names)
        write_text_atomic(self.path / MANIFEST, json.dumps({"files": files}, indent=1) + "\n")

    def foreign(self) -> list[str]:
        """Names in the folder (and in checkpoints/) that no run of ours recorded writing,
        leaving out our lock, manifest and temporary files."""
        written = self.written()
        found = []
        for folder in (self.path, self.checkpoints):
            if not folder.is_dir():
                continue
            for entry in sorted(folder.iterdir()):
                name = entry.relative_to(self.path).as_posix()
                ours = name in written or name.removesuffix(".bad") in written
                if not (ours or name in _OWN or is_temp_name(entry.name)):
                    found.append(name)
        return found

    def check_ours(self) -> None:
        """Refuse a folder that is neither empty (or missing) nor a run of ours."""
        if self.path.is_dir() and not self.holds_run() and self.foreign():
            raise UsageError(
                f"--out {self.path} holds files that no cifar-resnet run wrote (e.g. "
                f"{self.foreign()[0]}); cifar-resnet trains only into an empty folder or its "
                "own run: choose a new --out"
            )

    def create(self) -> None:
        """Make the folder (and checkpoints/) and check that it can be written; a folder that
        is neither empty nor a run of ours is refused before anything is written into it."""
        self.check_ours()
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=f".write-test.{os.getpid()}.", dir=self.path)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise OutputError(
                f"cannot write to the output folder {self.path}: {e.strerror or e}; "
                "choose a writable --out"
            ) from None
        if not (self.path / MANIFEST).exists():
            self.record()

    def lock(self) -> None:
        """Take the folder's lock or fail at once naming the process that holds it. flock is
        released by the kernel when its holder dies, so a killed run never blocks the next."""
        path = self.path / ".lock"
        own = (path, self.path / MANIFEST, self.checkpoints, self.path)
        made = [p for p in own if not p.exists()]
        self.create()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as e:
            raise OutputError(
                f"{path} is not a lock file of ours ({e.strerror or e}: a symlink or a "
                "folder); remove it"
            ) from None
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
        for folder in (self.path, self.checkpoints):  # left by killed writers
            remove_stale_temps(folder)

    def unlock(self, tidy: bool = False) -> None:
        """Release the folder; ``tidy``: a run refused before it wrote anything leaves nothing
        behind (the lock file, checkpoints/ and the folder, if this process made them)."""
        if self._lock_fd is None:
            return
        if tidy and not self.holds_run():
            for made in self._made:  # the lock file, the empty manifest, then the folders
                try:
                    made.unlink() if made.name in (".lock", MANIFEST) else made.rmdir()
                except OSError:
                    pass
        os.close(self._lock_fd)  # closing releases the flock
        self._lock_fd = None

    def clear(self) -> None:
        """Remove a previous run's files (``--overwrite``): only those a run of ours recorded
        writing; a folder that holds anything else is refused, and nothing is removed."""
        foreign = self.foreign()
        if foreign:
            raise UsageError(
                f"{self.path} holds files that no cifar-resnet run recorded writing (e.g. "
                f"{foreign[0]}); --overwrite removes only a run's own files: move them away "
                "or choose a new --out"
            )
        for name in sorted(self.written(), reverse=True):
            path = self.path / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
                Path(f"{path}.bad").unlink(missing_ok=True)
        write_text_atomic(self.path / MANIFEST, json.dumps({"files": []}) + "\n")
        self.checkpoints.mkdir(exist_ok=True)

    def write_text(self, name: str, text: str) -> Path:
        """Write (atomically) and record one of the run's files."""
        self.record(self.path / name)
        return write_text_atomic(self.path / name, text)

    def write_config(self, preset: str, config: TrainConfig) -> None:
        self.write_text("config.toml", config_to_toml(preset, config))

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        self.write_text(name, json.dumps(data, indent=2) + "\n")

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        self.write_text("metrics.csv", _csv(METRIC_FIELDS, rows))

    def write_steps(self, rows: list[dict[str, Any]]) -> None:
        self.write_text("steps.csv", _csv(STEP_FIELDS, rows))

    def tensorboard(self):
        """A TensorBoard SummaryWriter logging into RUN/tensorboard."""
        require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.record(self.path / "tensorboard")
        return SummaryWriter(str(self.path / "tensorboard"))


def _csv(fields: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in fields})
    return buf.getvalue()


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _text(v: Any) -> bool:
    return isinstance(v, str)


# What each field of summary.json and run.json must be: a field of another type (a damaged or
# hand-edited file) reads as missing, never as a value that crashes a report or a resume.
_SUMMARY = {
    **dict.fromkeys(("epochs", "steps", "parameters", "planned_steps"), _count),
    **dict.fromkeys(("model", "preset", "weights_sha256", "target_split", "checkpoint"), _text),
    **dict.fromkeys(
        (
            "test_loss",
            "test_accuracy",
            "best_val_accuracy",
            "train_seconds",
            "wall_seconds",
            "seconds",
            "time_budget",
            "target_accuracy",
            "target_seconds",
        ),
        _number,
    ),
}
_RUN = {
    "classes": _names,
    **dict.fromkeys(("model_name", "preset", "device", "precision", "torch", "data"), _text),
    **dict.fromkeys(("data_source", "option_a_pad"), _text),
    **dict.fromkeys(
        ("input_size", "train_images", "val_images", "test_images", "steps_per_epoch"), _count
    ),
    **dict.fromkeys(("total_steps", "world_size"), _count),
}
FIELD_CHECKS = {"summary.json": _SUMMARY, "run.json": _RUN}


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A run's JSON file, or {} when it is missing or unreadable; in summary.json and run.json
    a field of the wrong type is left out (:data:`FIELD_CHECKS`; null is kept: not measured)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    checks = FIELD_CHECKS.get(Path(path).name, {})
    return {k: v for k, v in data.items() if k not in checks or v is None or checks[k](v)}


def _cell(value: Any) -> float | None:
    if isinstance(value, list):  # more cells than the header has names
        raise ValueError("more cells than columns")
    return float(value) if value not in ("", None) else None


def read_csv(path: str | os.PathLike) -> list[dict[str, float | None]]:
    """A run's CSV file as dicts of floats; an empty cell (not measured then) is None. A row
    that is not numbers, or has no epoch or step, is a one-line UsageError."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.DictReader(f), 2):
                cells = {k: _cell(v) for k, v in row.items()}
                if cells.get("epoch") is None or cells.get("step") is None:
                    raise ValueError(f"line {line} has no epoch or step")
                cells.pop(None, None)
                rows.append(cells)
    except (ValueError, csv.Error, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        raise UsageError(
            f"{path} is damaged ({first}); it is rewritten by the run: restore it or delete it"
        ) from None
    return rows


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, float | None]]:
    """RUN/metrics.csv; a folder without one is a UsageError."""
    path = Path(run_dir) / "metrics.csv"
    rows = read_csv(path)  # [] without the file
    if rows:
        return rows
    if RunDir(run_dir).holds_run():  # stopped in its first epoch: metrics.csv's header, or none
        raise UsageError(
            f"{run_dir} has no finished epoch yet (it was stopped in its first); report after "
            f"an epoch: continue it with `cifar-resnet train --resume {run_dir}`"
        )
    if not path.is_file():
        raise UsageError(
            f"no metrics.csv in {run_dir}; pass a run folder written by `cifar-resnet train --out`"
        )
    raise UsageError(f"{path} has no epochs yet; report after the first epoch")
