"""``cifar-resnet report STUDY``: a study's report.md with its optimisation history, the
parameters' importances (Optuna's default evaluator) and a slice plot per parameter, drawn
as :mod:`.plots` draws (matplotlib ``Figure`` objects, never pyplot)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from .errors import require
from .files import write_atomic, write_text_atomic
from .tune_study import (
    load_study,
    open_storage,
    optuna,
    params_of,
    read_spec,
    study_storage,
    top_table,
)

DPI = 100
SIZE = (7, 4)  # inches


def _save(fig, path: Path) -> Path:
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def _figure():
    require("matplotlib", "report")
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE, layout="constrained")
    return fig, fig.add_subplot()


def plot_history(trials: list, path: Path) -> Path:
    """Each finished trial's validation accuracy by trial number, and the best so far."""
    fig, ax = _figure()
    numbers = [t.number for t in trials]
    values = [t.value for t in trials]
    best, running = [], float("-inf")
    for v in values:
        running = max(running, v)
        best.append(running)
    ax.scatter(numbers, values, s=18, label="trial")
    ax.step(numbers, best, where="post", color="C1", label="best so far")
    ax.set(xlabel="trial", ylabel="validation accuracy (%)", title="optimisation history")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_importances(importances: dict[str, float], path: Path) -> Path:
    fig, ax = _figure()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set(xlabel="importance (share of the variation in validation accuracy)")
    ax.set_title("parameter importances")
    return _save(fig, path)


def plot_slice(trials: list, param, path: Path) -> Path:
    """Validation accuracy against one parameter's sampled value, coloured by trial number."""
    fig, ax = _figure()
    points = [(t.params[param.name], t.value, t.number) for t in trials if param.name in t.params]
    xs = [p[0] if not isinstance(p[0], (bool, str)) else str(p[0]) for p in points]
    shown = ax.scatter(xs, [p[1] for p in points], c=[p[2] for p in points], s=18, cmap="viridis")
    if param.log:
        ax.set_xscale("log")
    ax.set(xlabel=param.name, ylabel="validation accuracy (%)", title=f"slice: {param.name}")
    fig.colorbar(shown, ax=ax, label="trial")
    return _save(fig, path)


def importances(study) -> dict[str, float] | None:
    """Optuna's parameter importances over the finished trials; None with too few of them."""
    op = optuna()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return op.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError):
        return None


def write_study_report(study_dir: str | os.PathLike) -> list[Path]:
    """report.md and its plots in the study folder; returns the files written."""
    require("matplotlib", "report")
    study_dir = Path(study_dir)
    spec = read_spec(study_dir)
    study = load_study(spec, open_storage(study_storage(spec, study_dir)))
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    written: list[Path] = []
    head, *table = top_table(study, spec)
    lines = [f"# Study {spec['study_name']}", "", *_about(spec), "", head, "", *table, ""]
    if not trials:
        lines.append("No trial has finished yet.")
    else:
        written.append(plot_history(trials, study_dir / "history.png"))
        lines += ["## Optimisation history", "", "![history](history.png)", ""]
        found = importances(study) if len(trials) > 1 else None
        if found:
            written.append(plot_importances(found, study_dir / "importances.png"))
            lines += ["## Parameter importances", "", "![importances](importances.png)", ""]
        else:
            lines += ["Parameter importances need at least two finished trials that differ.", ""]
        lines += ["## Slices", ""]
        for p in params_of(spec):
            name = f"slice-{p.name}.png"
            written.append(plot_slice(trials, p, study_dir / name))
            lines += [f"![{p.name}]({name})", ""]
    lines += _final(study_dir)
    written.append(write_text_atomic(study_dir / "report.md", "\n".join(lines) + "\n"))
    return written


def _about(spec: dict[str, Any]) -> list[str]:
    space = ", ".join(f"`{name}` {_describe(s)}" for name, s in spec["space"].items())
    return [
        f"- data: `{spec['data']}`; recipe: the `{spec['preset']}` preset with the study's "
        f"flags; device `{spec['device']}`",
        f"- judged on {spec['val_split']} validation images held out of the training set "
        "(never the test set)",
        f"- searched: {space}",
        f"- sampler `{spec['sampler']}`, pruner `{spec['pruner']}`, {spec['jobs']} worker(s); "
        "the best recipe is in [best.toml](best.toml)",
    ]


def _describe(s: dict[str, Any]) -> str:
    if "choices" in s:
        return "|".join(map(str, s["choices"]))
    return f"{s['low']:g}..{s['high']:g}" + (" (log)" if s["log"] else "")


def _final(study_dir: Path) -> list[str]:
    path = study_dir / "final" / "summary.json"
    if not path.is_file():
        return []
    acc = json.loads(path.read_text())["aggregate"]["test_accuracy"]
    return [
        "## The best recipe on the test set",
        "",
        f"Trained on all training images with {acc['n']} seeds: test accuracy "
        f"{acc['mean']:.2f}% ± {acc['std']:.2f} (min {acc['min']:.2f}, max {acc['max']:.2f}).",
        "",
    ]
