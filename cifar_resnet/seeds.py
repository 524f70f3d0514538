"""Many seeds of one recipe: a run folder per seed under one folder, and their spread.

    OUT/seeds.json      written first: the seeds and the resolved recipe (what ``--resume OUT``
                        continues)
    OUT/seed-S/         a normal run folder, exactly what ``train --seed S --out OUT/seed-S``
                        makes (``evaluate``, ``report``, ``export``, ``--resume`` take it)
    OUT/summary.json    {"seeds", "runs": {seed: its summary}, "aggregate": {metric: spread}}

The seeds run one after another, each through :func:`cifar_resnet.train.fit`. Resuming keeps
finished seeds as they are, continues unfinished ones from their newest valid checkpoint and
starts missing ones.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt_io
from . import distributed
from .config import TrainConfig
from .data import DataBundle
from .errors import UsageError
from .rundir import RunDir, read_json
from .train import fit

__all__ = ["parse_seeds", "fit_seeds", "aggregate", "is_multi_seed", "seed_dir", "collect"]

MARKER = "seeds.json"
MAX_SEEDS = 1000
# The summary figures whose spread over the seeds is aggregated (when some seed has them).
AGGREGATED = ("test_accuracy", "best_val_accuracy", "train_seconds", "wall_seconds", "seconds")
_TOKEN = re.compile(r"(\d+)(?:-(\d+))?")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"``, ``"0-9"`` or ``"0-2,7"`` -> the seeds in the order given; a bad list (empty,
    not whole numbers, a backwards range, negative, a seed twice) is a one-line UsageError."""
    if not text.strip():
        raise UsageError("--seeds needs at least one seed, e.g. 0,1,2 or 0-4")
    seeds: list[int] = []
    for token in (t.strip() for t in text.split(",")):
        m = _TOKEN.fullmatch(token)
        if m is None:
            why = "seeds are whole numbers >= 0" if token.startswith("-") else "not a seed"
            raise UsageError(
                f"--seeds: {token!r}: {why}; give e.g. 0,1,2, a range 0-4, or both: 0-2,7"
            )
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if last < first:
            raise UsageError(f"--seeds: the range {token} runs backwards; write {last}-{first}")
        if last - first + len(seeds) >= MAX_SEEDS:
            raise UsageError(f"--seeds {text}: more than {MAX_SEEDS} seeds in one command")
        seeds += range(first, last + 1)
    return check_seeds(seeds)


def check_seeds(seeds: Iterable[int]) -> list[int]:
    """The seeds as a list, refused when empty, repeated or not integers in TrainConfig's range."""
    seeds = list(seeds)
    if not seeds:
        raise UsageError("--seeds needs at least one seed, e.g. 0,1,2 or 0-4")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63:
            raise UsageError(f"--seeds: seeds are whole numbers from 0 to 2**63-1, got {s!r}")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise UsageError(f"--seeds: seed {twice[0]} is listed twice; each seed runs once")
    return seeds


def spread(values: Sequence[float]) -> dict[str, float | int]:
    """mean, sample standard deviation (n-1; 0 for one value), min, max and n."""
    n = len(values)
    return {
        "mean": math.fsum(values) / n,
        "std": statistics.stdev(values) if n > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": n,
    }


def aggregate(summaries: Iterable[dict[str, Any]]) -> dict[str, dict[str, float | int]]:
    """The spread (:func:`spread`) of each :data:`AGGREGATED` figure over the run summaries
    that have it; a figure no summary has is left out."""
    summaries = list(summaries)
    out = {}
    for key in AGGREGATED:
        values = [float(s[key]) for s in summaries if s.get(key) is not None]
        if values:
            out[key] = spread(values)
    return out


def seed_dir(out_dir: str | os.PathLike, seed: int) -> Path:
    return Path(out_dir) / f"seed-{seed}"


def is_multi_seed(path: str | os.PathLike) -> bool:
    """True for a folder written by :func:`fit_seeds` (it holds ``seeds.json``)."""
    return (Path(path) / MARKER).is_file()


def read_plan(out_dir: str | os.PathLike) -> dict[str, Any]:
    """OUT/seeds.json: ``seeds``, ``preset``, ``config`` (the recipe without its seed) and
    ``data``; a damaged one is a UsageError."""
    plan = read_json(Path(out_dir) / MARKER)
    seeds, config = plan.get("seeds"), plan.get("config")
    if not isinstance(seeds, list) or not seeds or not isinstance(config, dict):
        raise UsageError(f"{Path(out_dir) / MARKER} is damaged (no seeds or recipe)")
    try:  # seed folders are named from these: only whole numbers, never a path
        check_seeds(seeds)
    except UsageError as e:
        raise UsageError(f"{Path(out_dir) / MARKER} is damaged ({e}); fix or remove it") from None
    if not isinstance(plan.get("preset", "seed"), str):
        raise UsageError(f"{Path(out_dir) / MARKER} is damaged (its preset is not a name)")
    return plan


def collect(out_dir: str | os.PathLike) -> dict[str, Any]:
    """A multi-seed folder's result as OUT/summary.json holds it, from the seeds' own
    summaries (finished seeds only; the aggregate is over those)."""
    seeds = read_plan(out_dir)["seeds"]
    runs = {str(s): read_json(seed_dir(out_dir, s) / "summary.json") for s in seeds}
    runs = {s: summary for s, summary in runs.items() if summary}
    return {"seeds": seeds, "runs": runs, "aggregate": aggregate(runs.values())}


def fit_seeds(
    config: TrainConfig,
    bundle: DataBundle,
    out_dir: str | os.PathLike,
    seeds: Sequence[int] | str | None = None,
    *,
    preset: str = "seed",
    resume: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    started: float | None = None,
    data_spec: str | None = None,
    **fit_kwargs: Any,
) -> dict[str, Any]:
    """Train ``config`` once per seed into ``out_dir/seed-S``, one after another; write and
    return OUT/summary.json's dict: ``seeds``, ``runs`` (seed as a string -> that run's
    summary) and ``aggregate`` (:func:`aggregate`).

    ``seeds``: a list, or text for :func:`parse_seeds`; None (with ``resume``) the seeds OUT
    recorded; given with ``resume``, they are added to those. ``resume``: None starts a new
    folder (refused where one is, unless ``overwrite``); ``"auto"`` continues OUT if it is a
    multi-seed folder, else starts it;
    ``"required"`` continues it or fails. Continuing keeps finished seeds as they are,
    resumes unfinished ones from their newest valid checkpoint and starts missing ones;
    recipe fields of ``config`` that differ from the recorded recipe apply on top of each
    checkpoint's, as flags given with ``--resume`` do. ``started``: the first seed's clock
    (for ``time_budget``); each later seed's starts with it. Other keywords go to ``fit``.
    """
    if distributed.from_env().enabled:
        raise UsageError("several seeds run in one process; under torchrun train one --seed")
    out = Path(out_dir)
    recorded = _recorded(out, resume, overwrite)
    if isinstance(seeds, str):
        seeds = parse_seeds(seeds)
    elif seeds is None and recorded is None:
        raise UsageError("give the seeds to train, e.g. --seeds 0-4")
    if recorded is not None and seeds is not None:  # --resume OUT --seeds: added to OUT's
        seeds = [*recorded["seeds"], *(s for s in seeds if s not in recorded["seeds"])]
    seeds = check_seeds(recorded["seeds"] if seeds is None else seeds)
    if recorded is None:
        _check_new(out, seeds, overwrite)
    data = data_spec or (recorded or {}).get("data")
    _write_plan(out, seeds, preset, config, data)
    runs: dict[str, dict[str, Any]] = {}
    for i, seed in enumerate(seeds):
        if not quiet:
            log(f"seed {seed} ({i + 1} of {len(seeds)}): {seed_dir(out, seed)}")
        kwargs = {**fit_kwargs, "quiet": quiet, "log": log, "started": started, "data_spec": data}
        runs[str(seed)] = _fit_seed(
            config, bundle, seed_dir(out, seed), seed, preset, recorded, overwrite, kwargs
        )
        started = time.perf_counter()  # the next seed's clock
    result = {"seeds": seeds, "runs": runs, "aggregate": aggregate(runs.values())}
    RunDir(out).write_json("summary.json", result)
    return result


def _recorded(out: Path, resume: str | None, overwrite: bool) -> dict[str, Any] | None:
    """The plan OUT recorded when it is to be continued, else None (a new folder)."""
    if resume not in (None, "auto", "required"):
        raise UsageError(f"resume must be None, 'auto' or 'required', got {resume!r}")
    if is_multi_seed(out):
        if resume is not None:
            return read_plan(out)
        if not overwrite:
            raise UsageError(
                f"{out} already holds a multi-seed run; continue it with --resume {out}, "
                "replace it with --overwrite, or choose a new --out"
            )
    elif resume == "required":
        raise UsageError(
            f"--resume {out}: not a multi-seed folder (no {MARKER}); start it with "
            f"--out {out} --seeds LIST, or continue a single run without --seeds"
        )
    return None


def _check_new(out: Path, seeds: list[int], overwrite: bool) -> None:
    """A new multi-seed run: refuse a single run in OUT, and seed folders that hold runs
    (unless ``overwrite``), before any seed trains."""
    RunDir(out).check_ours()
    if not is_multi_seed(out) and RunDir(out).holds_run():
        raise UsageError(f"{out} holds a single run; choose a new --out for several seeds")
    taken = [s for s in seeds if RunDir(seed_dir(out, s)).holds_run()]
    if taken and not overwrite:
        raise UsageError(
            f"{seed_dir(out, taken[0])} already holds a run; replace it with --overwrite, "
            "or choose a new --out"
        )


def _write_plan(out: Path, seeds, preset: str, config: TrainConfig, data: str | None) -> None:
    recipe = {k: v for k, v in config.to_dict().items() if k != "seed"}
    folder = RunDir(out)
    folder.path.mkdir(parents=True, exist_ok=True)
    plan = {"seeds": seeds, "preset": preset, "config": recipe, "data": data}
    folder.write_json(MARKER, plan)


def _fit_seed(config, bundle, run_dir: Path, seed: int, preset, recorded, overwrite, kwargs):
    """One seed's run: new, kept as it is (finished), continued, or started."""
    config = dataclasses.replace(config, seed=seed).validate()
    log = kwargs["log"] if not kwargs["quiet"] else (lambda message: None)
    if recorded is None:
        return fit(config, bundle, run_dir, preset=preset, overwrite=overwrite, **kwargs)
    summary = finished_summary(run_dir, config)
    if summary is not None:
        log(f"seed {seed}: finished ({summary.get('steps')} steps), kept as it is")
        return summary
    found = ckpt_io.find_resume(run_dir, required=False) if run_dir.is_dir() else None
    if found is None:
        return fit(config, bundle, run_dir, preset=preset, resume="auto", **kwargs)
    path, ckpt = found
    log(f"resuming from {path}")
    changes = {
        k: v
        for k, v in config.to_dict().items()
        if k != "seed" and recorded["config"].get(k, v) != v
    }
    preset, config = ckpt_io.resumed_config(ckpt, path, changes, preset)
    return fit(config, bundle, run_dir, preset=preset, resume=ckpt, **kwargs)


def finished_summary(run_dir: str | os.PathLike, config: TrainConfig) -> dict[str, Any] | None:
    """The seed's summary when its run is finished: summary.json is there and its steps reached
    the plan (the time budget's planned steps, else ``config``'s length) or its target."""
    summary = read_json(Path(run_dir) / "summary.json")
    if not summary:
        return None
    if summary.get("target_seconds") is not None:
        return summary
    per_epoch = read_json(Path(run_dir) / "run.json").get("steps_per_epoch")
    plan = summary.get("planned_steps") or config.steps or config.epochs * (per_epoch or 0)
    return summary if plan and summary.get("steps", 0) >= plan else None


def format_table(result: dict[str, Any]) -> list[str]:
    """Markdown lines: each seed's figures, then mean ± std and min / max of each column."""
    cols = [
        ("test_accuracy", "test accuracy (%)", 2),
        ("best_val_accuracy", "best val accuracy (%)", 2),
        ("train_seconds", "train s", 1),
        ("wall_seconds", "wall s", 1),
        ("seconds", "command s", 1),
    ]
    agg = result["aggregate"]
    cols = [c for c in cols if c[0] in agg]
    lines = [
        "| seed | " + " | ".join(c[1] for c in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for seed in result["seeds"]:
        run = result["runs"].get(str(seed))
        cells = [f"{run[k]:.{d}f}" if run and run.get(k) is not None else "" for k, _, d in cols]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    mean = [f"{agg[k]['mean']:.{d}f} ± {agg[k]['std']:.{d}f}" for k, _, d in cols]
    low_high = [f"{agg[k]['min']:.{d}f} / {agg[k]['max']:.{d}f}" for k, _, d in cols]
    lines.append("| mean ± std | " + " | ".join(mean) + " |")
    lines.append("| min / max | " + " | ".join(low_high) + " |")
    return lines
