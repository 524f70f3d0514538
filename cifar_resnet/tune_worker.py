"""A tuning worker: one process that takes the study's next trial, trains it as a
``cifar-resnet train`` subprocess into ``STUDY/trials/NNNN``, reports each evaluated epoch's
validation accuracy to Optuna (which may prune it), and goes on until the study has its
trials. ``tune --jobs N`` starts N of them; other machines' workers join through the storage.

The trial's training process dies with its worker (Linux: PR_SET_PDEATHSIG) and saves first,
as on any SIGTERM; the worker's trial is then marked failed by Optuna's heartbeat. A signal to
the worker is passed once to its training process, which saves and exits 130: the trial is
recorded as failed ("interrupted") and its values are queued again, so the continued study
trains them first.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import config_to_toml
from .errors import EXIT_DIVERGED, EXIT_INTERRUPTED, CifarResnetError, Interrupted, UsageError
from .files import write_text_atomic
from .tune_study import (
    counts,
    has_heartbeat,
    join_study,
    load_study,
    open_storage,
    optuna,
    params_of,
    study_storage,
    trial_config,
)

POLL_SECONDS = 0.3  # how often a worker reads its trial's metrics.csv


class TrialFailed(Exception):
    """This trial failed (e.g. it diverged); the study goes on."""


class TrialStopped(Exception):
    """The worker was stopped by a signal; the trial's run is saved."""


class StudyError(CifarResnetError):
    """A trial failed in a way every trial would (bad data, a bug): the study stops."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.exit_code = code


@dataclass
class Worker:
    """What one worker process knows and holds."""

    study_dir: Path
    spec: dict[str, Any]
    index: int
    cpus: list[int]
    quiet: bool
    signum: int | None = None
    child: subprocess.Popen | None = None
    lock_fd: int | None = None
    params: list = field(default_factory=list)

    def release(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # closing the descriptor drops its flock
            self.lock_fd = None

    def on_signal(self, signum, frame) -> None:
        self.signum = signum
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)  # once per signal: a second one stops it at once


def cpu_share(index: int, jobs: int) -> list[int]:
    """The cores of worker ``index`` of ``jobs``: an equal, disjoint share of this process's."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cores:
        return []
    per = max(1, len(cores) // jobs)
    start = (index * per) % len(cores)
    return cores[start : start + per]


def worker_main(study_dir: str, index: int, jobs: int, quiet: bool, conn) -> None:
    """A worker process (multiprocessing target): its outcome goes back through ``conn`` as
    (kind, exit code, message)."""
    os.setsid()  # the terminal's Ctrl-C reaches the tune process, which passes it on once
    die_with_parent()
    from .tune_study import read_spec

    w = Worker(Path(study_dir), read_spec(study_dir), index, cpu_share(index, jobs), quiet)
    signal.signal(signal.SIGINT, w.on_signal)
    signal.signal(signal.SIGTERM, w.on_signal)
    try:
        run_worker(w)
        conn.send(("done", 0, ""))
    except (TrialStopped, Interrupted):
        conn.send(("stopped", EXIT_INTERRUPTED, f"stopped by signal {w.signum}"))
    except CifarResnetError as e:
        conn.send(("error", e.exit_code, str(e)))
    finally:
        conn.close()


def die_with_parent() -> None:
    """Linux: get one SIGTERM when the parent process dies, even by kill -9. The kernel sends
    its parent-death signal each time a thread of the parent that holds the child exits (the
    child passes from thread to thread), so it comes as SIGUSR1, turned here into one SIGTERM:
    a second SIGTERM would stop a training at once, without saving."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    fired: list[bool] = []

    def once(signum, frame):
        if not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGUSR1, once)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGUSR1)  # PR_SET_PDEATHSIG


def run_worker(w: Worker) -> None:
    """Take trials until the study has its total (finished or pruned, and running ones)."""
    spec = w.spec
    url = study_storage(spec, w.study_dir)
    storage = open_storage(url, spec["heartbeat"], spec["retry_failed"])
    study = load_study(spec, storage)
    join_study(study, spec)
    w.params = params_of(spec)
    op = optuna()
    heartbeat = has_heartbeat(storage)
    while w.signum is None:
        _take_slot(w)
        if w.signum is not None:  # came while this worker waited for the slot
            break
        if heartbeat:
            op.storages.fail_stale_trials(study)
        c = counts(study)
        _check_failures(c.get("fail", 0), spec["trials"])
        taken = c.get("complete", 0) + c.get("pruned", 0) + c.get("running", 0)
        if taken >= spec["trials"]:
            w.release()
            if not (heartbeat and c.get("running")):
                return
            time.sleep(min(spec["heartbeat"], 2))  # a dead worker's trial may free its slot
            continue
        try:
            study.optimize(lambda t: objective(t, w), n_trials=1, catch=(TrialFailed,))
        finally:
            w.release()
    raise TrialStopped


def _check_failures(failed: int, trials: int) -> None:
    """A study whose trials keep failing (diverging) would sample for ever: stop it."""
    if failed >= 2 * trials + 5:
        raise StudyError(
            f"{failed} trials have failed (diverged or stopped; see their train.log); narrow "
            "the search space (a lower lr range?) and continue with tune --resume",
            EXIT_DIVERGED,
        )


def _take_slot(w: Worker) -> None:
    """Hold the study folder's slot lock from counting the trials until the new trial exists
    (the objective releases it), so that this machine's workers start exactly the total."""
    fd = os.open(w.study_dir / ".slot.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    w.lock_fd = fd


def side(folder: Path, name: str) -> Path:
    """A trial's own file beside its run folder (``trials/0003.trial.json``): the run folder
    holds only what the run writes, as `train` requires of an --out."""
    return folder.parent / f"{folder.name}.{name}"


def objective(trial, w: Worker) -> float:
    w.release()
    values = {p.name: p.suggest(trial) for p in w.params}
    folder = w.study_dir / "trials" / f"{trial.number:04d}"
    trial.set_user_attr("run", str(folder))
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("worker_pid", os.getpid())
    try:
        config = trial_config(w.spec, values)
    except UsageError as e:  # a combination of values the recipe refuses
        trial.set_user_attr("error", str(e))
        raise TrialFailed(str(e)) from None
    folder.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(side(folder, "trial.toml"), config_to_toml(w.spec["preset"], config))
    command = trial_command(w.spec, folder)
    record = {
        "study": w.spec["study_name"],
        "trial": trial.number,
        "params": values,
        "command": command,
        "host": socket.gethostname(),
        "worker_pid": os.getpid(),
    }
    write_text_atomic(side(folder, "trial.json"), json.dumps(record, indent=2) + "\n")
    return _train(trial, w, folder, command, values)


def trial_command(spec: dict[str, Any], folder: Path) -> list[str]:
    """``cifar-resnet train`` of the trial's recipe into its folder, as a child that dies with
    its worker (``cifar_resnet.cli.trial``)."""
    cmd = [sys.executable, "-m", "cifar_resnet.cli.trial", "train", "--data", spec["data"]]
    cmd += ["--out", str(folder), "--config", str(side(folder, "trial.toml"))]
    cmd += ["--device", spec["device"], "--no-report"]
    for flag in ("data_dir", "cache_dir"):
        if spec.get(flag):
            cmd += ["--" + flag.replace("_", "-"), spec[flag]]
    return cmd


def _child_env(w: Worker) -> dict[str, str]:
    env = dict(os.environ, CIFAR_RESNET_TUNE_PARENT=str(os.getpid()))
    if w.cpus:
        given = os.environ.get("OMP_NUM_THREADS", "")  # the user's limit, if lower, holds
        threads = str(min(len(w.cpus), int(given) if given.isdigit() and int(given) else 9999))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        env["CIFAR_RESNET_TRIAL_CPUS"] = ",".join(map(str, w.cpus))
    return env


def _train(trial, w: Worker, folder: Path, command: list[str], values: dict) -> float:
    started = time.perf_counter()
    with open(side(folder, "train.log"), "ab") as log:
        w.child = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=_child_env(w), start_new_session=True
        )
        if w.signum is not None:  # a signal came while it started
            w.child.send_signal(w.signum)
        try:
            last, pruned = _watch(trial, w, folder)
        finally:
            code = w.child.wait()
            w.child = None
    seconds = time.perf_counter() - started
    trial.set_user_attr("seconds", round(seconds, 1))
    trial.set_user_attr("epochs", len(_rows(folder)))
    if pruned is not None:
        trial.set_user_attr("pruned_at_epoch", pruned)
        _say(w, f"trial {trial.number} pruned after epoch {pruned} ({_show(values)})")
        raise optuna().TrialPruned()
    return _outcome(trial, w, folder, code, last, values, seconds)


def _watch(trial, w: Worker, folder: Path) -> tuple[float | None, int | None]:
    """Report each new evaluated epoch; prune when the pruner says so. Returns (the last
    validation accuracy, the epoch it was pruned after or None) once the child has ended."""
    reported: set[int] = set()
    last = None
    while True:
        ended = w.child.poll() is not None
        for epoch, acc in _val_rows(folder):
            if epoch in reported:
                continue
            reported.add(epoch)
            last = acc
            trial.report(acc, epoch)
            if not ended and w.signum is None and trial.should_prune():
                w.child.send_signal(signal.SIGTERM)  # saves its epoch and exits 130
                return last, epoch
        if ended:
            return last, None
        time.sleep(POLL_SECONDS)


def _rows(folder: Path) -> list[dict[str, str]]:
    """The run's metrics.csv (written atomically: never half a file), a row per epoch."""
    try:
        text = (folder / "metrics.csv").read_text()
    except FileNotFoundError:
        return []
    return list(csv.DictReader(text.splitlines()))


def _val_rows(folder: Path) -> list[tuple[int, float]]:
    """(epoch, val_acc) of every evaluated epoch."""
    return [(int(r["epoch"]), float(r["val_acc"])) for r in _rows(folder) if r.get("val_acc")]


def _outcome(trial, w, folder, code, last, values, seconds) -> float:
    if code == 0 and last is not None:
        _say(w, f"trial {trial.number}: val {last:.2f}% in {seconds:.0f}s ({_show(values)})")
        return last
    line = _error_line(side(folder, "train.log")) or f"exit code {code}"
    trial.set_user_attr("error", line)
    if code == EXIT_INTERRUPTED and w.signum is not None:
        trial.set_user_attr("interrupted", True)
        trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        raise TrialStopped
    if code in (EXIT_DIVERGED, EXIT_INTERRUPTED, -signal.SIGKILL):
        _say(w, f"trial {trial.number} failed: {line}")
        raise TrialFailed(line)  # this point of the space fails; the study goes on
    log = side(folder, "train.log")
    raise StudyError(
        f"trial {trial.number} failed: {line.removeprefix('error: ')} (see {log})",
        code if code > 0 else 1,
    )


def _error_line(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return errors[-1] if errors else (lines[-1][:300] if lines else "")


def _show(values: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )


def _say(w: Worker, text: str) -> None:
    if not w.quiet:
        print(text, flush=True)
