"""``tune``: an Optuna study whose trials are ordinary cifar-resnet runs, judged on a
validation split of the training images, never on the test set.

The tune process checks everything before any trial runs (the data, the recipe, every bound of
the search space, the storage), records the study's spec in ``STUDY/tune.json``, then starts
``jobs`` worker processes (:mod:`.tune_worker`), each with an equal share of the cores, and
waits for them. The same command again, or ``tune --resume STUDY``, continues the study to
its total; other machines join it through the same ``--storage``. At the end it writes
``STUDY/best.toml`` and prints the best trials; ``final_seeds`` then trains the best recipe on
all training images with that many seeds and evaluates it on the test set, once.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .config import TrainConfig, resolve_config
from .errors import EXIT_INTERRUPTED, CifarResnetError, Interrupted, UsageError
from .tune_space import build_space, check_space
from .tune_study import (
    SPEC_VERSION,
    check_choices,
    done,
    grid_size,
    is_study,
    join_study,
    load_study,
    open_storage,
    read_spec,
    same_study,
    storage_url,
    study_storage,
    top_table,
    write_best,
    write_spec,
)
from .tune_worker import worker_main

RESUME_COMMAND = "cifar-resnet tune --resume"
MAX_TRIALS = 100_000
MAX_JOBS = 256


def tune(
    data: str | None = None,
    out: str | os.PathLike = "study",
    params: list[str] | None = None,
    *,
    trials: int | None = None,
    preset: str | None = None,
    config_values: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    space: str | None = None,
    val_split: int = 5000,
    sampler: str = "tpe",
    pruner: str = "auto",
    pruner_startup: int = 5,
    storage: str | None = None,
    study_name: str | None = None,
    jobs: int | None = None,
    heartbeat: int = 60,
    retry_failed: int = 0,
    device: str = "auto",
    data_dir: str | None = None,
    cache_dir: str | None = None,
    resume: bool = False,
    final_seeds: int = 0,
    quiet: bool = False,
):
    """Run (or continue) the study in ``out`` to ``trials`` finished or pruned trials; returns
    the ``optuna.Study``. ``params``: ``NAME=LOW..HIGH[:log]`` or ``NAME=A|B|C`` strings over
    ``TrainConfig`` fields; the recipe is ``preset``, then ``config_values`` (a config file's
    values), then ``overrides`` (the train flags' values), as ``train`` resolves it."""
    study_dir = Path(out)
    if resume or (is_study(study_dir) and data is None):
        spec = read_spec(study_dir)
        spec.update(_changes(trials, jobs, final_seeds))
    else:
        spec = new_spec(
            data, study_dir, params or [], space, trials or 20, preset, config_values,
            overrides, val_split, sampler, pruner, storage, study_name, jobs or 1, heartbeat,
            retry_failed, device, data_dir, cache_dir, final_seeds,
        )  # fmt: skip
        spec["pruner_startup"] = pruner_startup
        if is_study(study_dir):
            _check_same(read_spec(study_dir), spec, study_dir)
    _check_counts(spec)
    study = _open(study_dir, spec)
    run_workers(study_dir, spec, quiet)
    return finish(study_dir, spec, study, quiet)


def _changes(trials, jobs, final_seeds) -> dict[str, Any]:
    given = {"trials": trials, "jobs": jobs, "final_seeds": final_seeds or None}
    return {k: v for k, v in given.items() if v is not None}


def _check_counts(spec: dict[str, Any]) -> None:
    limits = (("trials", MAX_TRIALS), ("jobs", MAX_JOBS), ("final_seeds", 1000))
    for name, top in (*limits, ("pruner_startup", MAX_TRIALS), ("retry_failed", 1000)):
        value = spec.get(name, 0)
        least = 1 if name in ("trials", "jobs") else 0
        if not isinstance(value, int) or not least <= value <= top:
            raise UsageError(
                f"--{name.replace('_', '-')} must be from {least} to {top}, got {value}"
            )
    if spec["sampler"] == "grid" and spec["trials"] > spec["grid_size"]:
        spec["trials"] = spec["grid_size"]  # each point once


def _check_same(old: dict[str, Any], new: dict[str, Any], study_dir: Path) -> None:
    differ = same_study(old, new)
    if differ:
        raise UsageError(
            f"{study_dir} holds a study of another recipe or search ({', '.join(differ)} "
            f"differ); continue it with `{RESUME_COMMAND} {study_dir}`, or choose a new --out"
        )


def new_spec(
    data, study_dir, params, space, trials, preset, config_values, overrides, val_split,
    sampler, pruner, storage, study_name, jobs, heartbeat, retry_failed, device, data_dir,
    cache_dir, final_seeds,
) -> dict[str, Any]:  # fmt: skip
    """Check a new study's every input (before any trial runs) and return its spec."""
    if data is None:
        raise UsageError("--data is required for a new study: an image folder, an archive, cifar10")
    overrides = dict(overrides or {})
    searched = build_space(params, space)
    device_type = _device_type(device)

    def recipe(values: dict[str, Any]) -> tuple[str, TrainConfig]:
        return resolve_config(
            preset, config_values, {**overrides, **values}, device_type=device_type
        )

    name, base = recipe({})
    check_space(searched, overrides, recipe)
    if base.target_accuracy and base.target_split == "test":
        raise UsageError("trials are judged on the validation split; drop --target-split test")
    chosen_pruner = check_choices(sampler, pruner, searched, base)
    if not 0 < val_split <= 10**7:
        raise UsageError(f"--val-split must be a positive number of images, got {val_split}")
    if heartbeat < 1:
        raise UsageError(f"--heartbeat must be a number of seconds from 1, got {heartbeat}")
    classes = _check_data(data, data_dir, cache_dir, base, val_split)
    return {
        "version": SPEC_VERSION,
        "study_name": study_name or study_dir.resolve().name,
        "storage": storage_url(storage),
        "data": _data_spec(data),
        "data_dir": data_dir,
        "cache_dir": cache_dir,
        "device": device,
        "preset": name,
        "recipe": base.to_dict(),
        "space": {p.name: p.to_dict() for p in searched},
        "grid_size": grid_size(searched) if sampler == "grid" else 0,
        "val_split": val_split,
        "test_images": classes,
        "sampler": sampler,
        "pruner": chosen_pruner,
        "heartbeat": heartbeat,
        "retry_failed": retry_failed,
        "trials": trials,
        "jobs": jobs,
        "final_seeds": final_seeds,
    }


def _device_type(device: str) -> str:
    if device == "cpu":  # without importing torch
        return "cpu"
    from .runtime import resolve_device

    return resolve_device(device).type


def _data_spec(data: str) -> str:
    path = Path(data).expanduser()
    return str(path.absolute()) if path.exists() else data


def _check_data(data, data_dir, cache_dir, base: TrainConfig, val_split: int) -> int:
    """Decode (or load from the cache) the data once, so trials find it cached and a time
    budget does not pay for decoding; returns the number of classes."""
    from .data import load_data

    bundle = load_data(
        data, data_dir=data_dir, image_size=base.image_size or None, cache_dir=cache_dir
    )
    if val_split >= len(bundle.train.labels):
        raise UsageError(
            f"--val-split {val_split} leaves no training images (the training set has "
            f"{len(bundle.train.labels)}); give a smaller --val-split"
        )
    return len(bundle.classes)


def _open(study_dir: Path, spec: dict[str, Any]):
    """The study's storage reached (before the study folder is made, unless the storage is the
    folder's own SQLite file) and the study created or joined; then the spec written."""
    url = study_storage(spec, study_dir)
    storage = None if spec["storage"] is None else open_storage(url)
    try:
        (study_dir / "trials").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from .errors import OutputError

        raise OutputError(f"cannot create the study folder {study_dir}: {e.strerror}") from None
    study = load_study(spec, storage or open_storage(url))
    join_study(study, spec)
    write_spec(study_dir, spec)
    return study


# --------------------------------------------------------------------------------------------
# Workers


def run_workers(study_dir: Path, spec: dict[str, Any], quiet: bool) -> None:
    """Start ``jobs`` workers and wait for them; a signal is passed on to each once."""
    ctx = multiprocessing.get_context("spawn")
    workers = []
    for i in range(spec["jobs"]):
        mine, theirs = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=worker_main, args=(str(study_dir), i, spec["jobs"], quiet, theirs), daemon=False
        )
        p.start()
        theirs.close()
        workers.append((p, mine))
    stopped: list[int] = []

    def forward(signum, frame):
        stopped.append(signum)
        for p, _ in workers:
            if p.is_alive():
                os.kill(p.pid, signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        results = [_result(p, conn) for p, conn in workers]
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    _raise_outcome(results, stopped, study_dir)


def _result(p, conn) -> tuple[str, int, str]:
    p.join()
    try:
        if conn.poll():
            return conn.recv()
    except (EOFError, OSError):
        pass
    return ("killed", p.exitcode, f"a worker (pid {p.pid}) ended with exit code {p.exitcode}")


def _raise_outcome(results, stopped: list[int], study_dir: Path) -> None:
    kinds = [r[0] for r in results]
    errors = [r for r in results if r[0] == "error"]
    if errors:
        _, code, message = errors[0]
        raise _Failed(message, code)
    if stopped or "stopped" in kinds:
        signum = stopped[0] if stopped else signal.SIGTERM
        raise Interrupted(
            f"stopped by signal {signum}; every trial's run is saved and the study is kept: "
            f"continue with `{RESUME_COMMAND} {study_dir}`"
        )
    killed = [r for r in results if r[0] == "killed"]
    if killed:
        raise Interrupted(
            f"{killed[0][2]}; its trial is marked failed once its heartbeat is stale; "
            f"continue with `{RESUME_COMMAND} {study_dir}`"
        )


class _Failed(CifarResnetError):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.exit_code = code


# --------------------------------------------------------------------------------------------
# The result


def finish(study_dir: Path, spec: dict[str, Any], study, quiet: bool):
    """best.toml, the table of the best trials, and the final seeds on the test set."""
    best = write_best(study_dir, spec, study)
    if not quiet:
        print("\n".join(["", *top_table(study, spec), ""]))
        print(f"best recipe: {best}" if best else "no trial has finished yet: no best recipe")
    if done(study) < spec["trials"]:
        raise Interrupted(
            f"the study has {done(study)} of {spec['trials']} trials (others are running or "
            f"were stopped); continue with `{RESUME_COMMAND} {study_dir}`"
        )
    if spec.get("final_seeds") and best is not None:
        final_seeds(study_dir, spec, spec["final_seeds"], quiet)
    return study


def final_seeds(study_dir: Path, spec: dict[str, Any], seeds: int, quiet: bool) -> dict:
    """Train ``best.toml`` on all training images (no validation split) with ``seeds`` seeds
    (``train --seeds``), evaluate on the test set once, print mean ± std."""
    out = study_dir / "final"
    cmd = [sys.executable, "-m", "cifar_resnet", "train", "--data", spec["data"]]
    cmd += ["--config", str(study_dir / "best.toml"), "--val-split", "0"]
    cmd += ["--device", spec["device"], "--seeds", f"0-{seeds - 1}"]
    cmd += ["--resume", str(out)] if (out / "seeds.json").exists() else ["--out", str(out)]
    for flag in ("data_dir", "cache_dir"):
        if spec.get(flag):
            cmd += ["--" + flag.replace("_", "-"), spec[flag]]
    cmd += ["--quiet"] if quiet else []
    code = subprocess.run(cmd, stdout=subprocess.DEVNULL if quiet else None).returncode
    if code == EXIT_INTERRUPTED:
        raise Interrupted(f"final seeds stopped; continue with `{RESUME_COMMAND} {study_dir}`")
    if code:
        raise _Failed(f"the final seeds failed (exit {code}); see {out}", code)
    result = json.loads((out / "summary.json").read_text())
    acc = result["aggregate"]["test_accuracy"]
    print(
        f"final: the best recipe on all training images, {seeds} seeds: test accuracy "
        f"{acc['mean']:.2f}% ± {acc['std']:.2f} (the test set's only use in this study)"
    )
    return result
