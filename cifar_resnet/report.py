"""A run's report: PNG plots and a ``report.md`` that shows them with the key figures.

From ``RUN/metrics.csv`` alone: ``curves.png`` (loss, accuracy and learning rate per epoch).
With the data the run was trained on, the newest checkpoint is evaluated on the test split
(the same images ``cifar-resnet evaluate`` uses) for ``confusion.png``, ``per_class.png``
and ``wrong.png`` (the test images the model got wrong with the highest confidence).

Plots are drawn with matplotlib's Agg renderer through ``Figure`` objects, never pyplot, so
nothing changes the caller's backend. Every file is written to a temporary name and moved
into place with ``os.replace``: a report is either the old one or the new one.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .checkpoint import write_file_atomic
from .errors import UsageError
from .predict import require

if TYPE_CHECKING:
    from .data import DataBundle

DPI = 100
CURVES_SIZE = (15, 4.5)  # inches: 1500 x 450 pixels at DPI
CONFUSION_SIZE = (8, 8)
PER_CLASS_SIZE = (10, 4.5)
WRONG_SIZE = (10, 11)
WRONG_COUNT = 16  # images in the most-confidently-wrong grid


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, float | None]]:
    """RUN/metrics.csv as dicts of floats; an empty cell (not evaluated that epoch) is None."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise UsageError(
            f"no metrics.csv in {run_dir}; pass a run folder written by `cifar-resnet train --out`"
        )
    with path.open(newline="") as f:
        rows = [
            {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]
    if not rows:
        raise UsageError(f"{path} has no epochs yet; report after the first epoch")
    return rows


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save(fig, path: Path) -> Path:
    return write_file_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def _write_text(path: Path, text: str) -> Path:
    return write_file_atomic(path, lambda tmp: tmp.write_text(text))


def _series(rows: list[dict[str, float | None]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(rows: list[dict[str, float | None]], path: Path) -> Path:
    """Loss and accuracy per epoch for train, val (if any) and test, and the learning rate."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=CURVES_SIZE, layout="constrained")
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    styles = {"train": "-", "val": "--", "test": "-."}
    for split, style in styles.items():
        for ax, what in ((loss_ax, "loss"), (acc_ax, "acc")):
            x, y = _series(rows, f"{split}_{what}")
            if y:
                ax.plot(x, y, style, marker="o" if len(y) < 30 else None, markersize=3, label=split)
    loss_ax.set(title="loss (cross-entropy)", xlabel="epoch")
    acc_ax.set(title="accuracy (%)", xlabel="epoch")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    x, y = _series(rows, "lr")
    lr_ax.plot(x, y, color="tab:purple", marker="o" if len(y) < 30 else None, markersize=3)
    lr_ax.set(title="learning rate (last step of each epoch)", xlabel="epoch")
    lr_ax.grid(alpha=0.3)
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    return _save(fig, path)


def plot_confusion(confusion: np.ndarray, classes: list[str], path: Path) -> Path:
    """Rows: true class, columns: predicted; each cell shows its count."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=CONFUSION_SIZE, layout="constrained")
    ax = fig.subplots()
    shares = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    n = len(classes)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (colour: share of row)")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(int(confusion[i, j])),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if shares[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, path)


def plot_per_class(per_class: np.ndarray, classes: list[str], overall: float, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=PER_CLASS_SIZE, layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(range(len(classes)), per_class, color="tab:blue")
    ax.axhline(overall, color="tab:red", linestyle="--", label=f"overall {overall:.1f}%")
    if len(classes) <= 20:
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set(ylim=(0, 105), ylabel="accuracy (%)", title="per-class test accuracy")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_wrong(
    images: np.ndarray,
    true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    path: Path,
    count: int = WRONG_COUNT,
) -> tuple[Path, int]:
    """A grid of the ``count`` wrong predictions with the highest predicted probability."""
    from matplotlib.figure import Figure

    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != true)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:count]
    cols = 4
    rows = max(1, -(-count // cols))
    fig = Figure(figsize=WRONG_SIZE, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, wrong):
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(
            f"true: {classes[true[i]]}\npredicted: {classes[pred[i]]} "
            f"{100 * probs[i, pred[i]]:.0f}%",
            fontsize=9,
            color="tab:red",
        )
    fig.suptitle(
        "most confidently wrong test images" if len(wrong) else "no test image was misclassified"
    )
    return _save(fig, path), len(wrong)


def split_predictions(
    run_dir: str | os.PathLike,
    data: str | DataBundle,
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """The newest checkpoint's class probabilities on the run's test images.

    The same images as ``cifar-resnet evaluate``: the test split, subset by the run's
    ``limit_test`` and ``seed``. Evaluated in fp32 on the CPU. ``data`` is a dataset spec
    or, straight after training, the run's already loaded ``DataBundle``.
    """
    from .checkpoint import resolve_checkpoint
    from .data import subset
    from .errors import DataError
    from .evaluate import load_run_data
    from .predict import from_checkpoint

    path, ckpt = resolve_checkpoint(run_dir)
    config = ckpt.get("config", {})
    bundle = (
        load_run_data(ckpt, data, data_dir=data_dir, cache_dir=cache_dir)
        if isinstance(data, str)
        else data
    )
    if list(bundle.classes) != list(ckpt["classes"]):
        raise DataError(
            f"the data's classes {bundle.classes[:4]}... differ from the "
            f"checkpoint's {ckpt['classes'][:4]}...; pass the --data it was "
            "trained on"
        )
    test = subset(bundle.test, config.get("limit_test") or None, int(config.get("seed", 0)))
    logits = from_checkpoint(ckpt, str(path)).logits(test.images).astype(np.float64)
    logits -= logits.max(1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(1, keepdims=True)
    n = len(ckpt["classes"])
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (test.labels, probs.argmax(1)), 1)
    return {
        "checkpoint": str(path),
        "classes": list(ckpt["classes"]),
        "images": test.images,
        "labels": test.labels,
        "probs": probs,
        "confusion": confusion,
    }


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    s = float(s)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min ({s:.0f} s)"


def _parameters(run: dict[str, Any], summary: dict[str, Any]) -> int | None:
    if summary.get("parameters"):
        return int(summary["parameters"])
    if run.get("model_name") and run.get("classes"):
        from .models import count_parameters, create_model

        return count_parameters(create_model(run["model_name"], len(run["classes"])))
    return None


def write_report(
    run_dir: str | os.PathLike,
    data: str | DataBundle | None = None,
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
) -> list[Path]:
    """Write the run's plots and ``report.md`` into ``run_dir``; returns the files written.

    Without ``data``, only the training curves; with the data the run was trained on, also
    the confusion matrix, per-class accuracy and the most confidently wrong test images.
    Needs matplotlib (``pip install 'cifar-resnet[report]'``).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir} does not exist")
    require("matplotlib", "report")
    rows = read_metrics(run_dir)
    run = _read_json(run_dir / "run.json")
    summary = _read_json(run_dir / "summary.json")
    written = [plot_curves(rows, run_dir / "curves.png")]

    tested = [r for r in rows if r.get("test_acc") is not None]
    best = max(tested, key=lambda r: r["test_acc"]) if tested else None
    final = summary.get("test_accuracy", tested[-1]["test_acc"] if tested else None)
    params = _parameters(run, summary)
    model = summary.get("model") or run.get("model_name", "?")
    preset = summary.get("preset") or run.get("preset", "?")
    wall = summary.get("wall_seconds", rows[-1].get("wall_seconds"))
    lines = [
        f"# Run report: {run_dir.name}",
        "",
        "| | |",
        "|---|---|",
        f"| model | {model} |",
        f"| preset | {preset} |",
        f"| parameters | {params:,} |" if params else "| parameters | n/a |",
        f"| epochs | {int(rows[-1]['epoch'])} ({int(rows[-1]['step'])} steps) |",
        f"| final test accuracy | {final:.2f}% |"
        if final is not None
        else "| final test accuracy | n/a |",
        f"| best test accuracy | {best['test_acc']:.2f}% (epoch {int(best['epoch'])}) |"
        if best
        else "| best test accuracy | n/a |",
    ]
    val = [r for r in rows if r.get("val_acc") is not None]
    if val:
        best_val = max(val, key=lambda r: r["val_acc"])
        lines.append(
            f"| best val accuracy | {best_val['val_acc']:.2f}% (epoch {int(best_val['epoch'])}) |"
        )
    lines += [
        f"| wall time | {_fmt_seconds(wall)} |",
        f"| train / test images | {run.get('train_images', '?')} / {run.get('test_images', '?')} |",
        f"| device, precision | {run.get('device', '?')}, {run.get('precision', '?')} |",
        "",
        "## Training curves",
        "",
        "![loss, accuracy and learning rate per epoch](curves.png)",
        "",
    ]
    if data is not None:
        t = split_predictions(run_dir, data, data_dir=data_dir, cache_dir=cache_dir)
        confusion, classes = t["confusion"], t["classes"]
        per_class = 100 * np.diag(confusion) / np.maximum(confusion.sum(1), 1)
        overall = 100 * np.trace(confusion) / max(int(confusion.sum()), 1)
        written.append(plot_confusion(confusion, classes, run_dir / "confusion.png"))
        written.append(plot_per_class(per_class, classes, overall, run_dir / "per_class.png"))
        wrong_png, shown = plot_wrong(
            t["images"], t["labels"], t["probs"], classes, run_dir / "wrong.png"
        )
        written.append(wrong_png)
        lines += [
            f"## Test set: {overall:.2f}% of {int(confusion.sum())} images",
            "",
            f"Checkpoint `{Path(t['checkpoint']).relative_to(run_dir)}`, fp32 on the CPU.",
            "",
            "![confusion matrix](confusion.png)",
            "",
            "![per-class accuracy](per_class.png)",
            "",
            "| class | accuracy | correct / images |",
            "|---|---|---|",
            *[
                f"| {c} | {a:.1f}% | {confusion[i, i]} / {confusion[i].sum()} |"
                for i, (c, a) in enumerate(zip(classes, per_class))
            ],
            "",
            f"## The {shown} most confidently wrong test images",
            "",
            "![most confidently wrong test images](wrong.png)",
            "",
        ]
    else:
        lines += [
            "Run `cifar-resnet report RUN --data DATA` for the confusion matrix, "
            "per-class accuracy and the misclassified images.",
            "",
        ]
    written.append(_write_text(run_dir / "report.md", "\n".join(lines)))
    return written


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report",
        help="plots and report.md for a run (needs matplotlib)",
        description="Write curves.png and report.md into a run folder; with --data also the "
        "confusion matrix, per-class accuracy and the most confidently wrong test images.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    # Without --data, curves only.
    from .cli import add_data_flags

    add_data_flags(
        p,
        required=False,
        data_help="the data the run was trained on, to evaluate its newest "
        "checkpoint on the test split for the confusion matrix and error plots",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    written = write_report(
        args.run_dir, args.data, data_dir=args.data_dir, cache_dir=args.cache_dir
    )
    for path in written:
        print(f"wrote {path}")
    return 0
