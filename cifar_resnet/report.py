"""A run's report: PNG plots and a ``report.md`` that shows them with the key figures.

From ``RUN/metrics.csv`` alone: ``curves.png`` (loss, accuracy and learning rate per epoch).
With the data the run was trained on, the newest checkpoint is evaluated on the run's test
images (the ones ``cifar-resnet evaluate`` uses, through :mod:`cifar_resnet.evaluate`) for
``confusion.png``, ``per_class.png`` and ``wrong.png`` (the test images the model got wrong
with the highest confidence).

Plots are drawn with matplotlib's Agg renderer through ``Figure`` objects, never pyplot, so
nothing changes the caller's backend. Class names are shown as plain text, never as mathtext
or TeX (a folder may be named ``$x^2$``). Every file is written through
:func:`cifar_resnet.files.write_atomic`: a report file is either the old one or the new one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import (
    checkpoint_config,
    checkpoint_path,
    describe_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
)
from .data import DataBundle, eval_split
from .errors import CheckpointError, UsageError, require
from .evaluate import check_classes, predictor_from_checkpoint, summarize
from .files import write_atomic, write_text_atomic
from .models import count_parameters, create_model
from .rundir import read_csv, read_json, read_metrics

DPI = 100
CURVES_SIZE = (15, 4.5)  # inches: 1500 x 450 pixels at DPI
CONFUSION_SIZE = (8, 8)
PER_CLASS_SIZE = (10, 4.5)
WRONG_SIZE = (10, 11)
WRONG_COUNT = 16  # images in the most-confidently-wrong grid
CONFUSION_TITLE = "confusion matrix (cells: image counts; colour: share of the true class)"
# Text properties for anything that shows a class name: the string as it is, never parsed as
# mathtext ($...$) or handed to TeX (whatever rcParams["text.usetex"] says).
PLAIN = {"parse_math": False, "usetex": False}


def _save(fig, path: Path) -> Path:
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def _series(rows: list[dict[str, float | None]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(
    rows: list[dict[str, float | None]],
    path: Path,
    steps: list[dict[str, float | None]] | None = None,
    steps_per_epoch: int | None = None,
) -> Path:
    """Loss and accuracy per epoch for train, val (if any) and test, and the learning rate
    per step: at every logged step (RUN/steps.csv) and every epoch's last step, on an axis
    in epochs, so warm-up and one-cycle shapes show."""
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
    x, y = _lr_points(rows, steps or [], steps_per_epoch)
    lr_ax.plot(x, y, color="tab:purple", marker="o" if len(y) < 30 else None, markersize=3)
    lr_ax.set(title="learning rate per step", xlabel="epoch", ylim=(0, 1.1 * max(y)))
    lr_ax.grid(alpha=0.3)
    last = max(r["epoch"] for r in rows)
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_xlim(0 if ax is lr_ax else 0.5, last + 0.5)  # one epoch: not 0.95..1.05
    return _save(fig, path)


def _lr_points(rows, steps, steps_per_epoch) -> tuple[list[float], list[float]]:
    """(epoch, lr) of every logged step and every epoch's last step, in step order."""
    points = [(r["epoch"], r["step"], r["lr"]) for r in rows if r.get("lr") is not None]
    if steps_per_epoch:
        points += [(s["step"] / steps_per_epoch, s["step"], s["lr"]) for s in steps]
    points.sort(key=lambda p: p[1])
    return [p[0] for p in points], [p[2] for p in points]


def plot_confusion(confusion: np.ndarray, classes: list[str], path: Path) -> Path:
    """Rows: true class, columns: predicted; each cell shows its image count (up to 20
    classes), its colour the count's share of the true class's images."""
    from matplotlib.figure import Figure

    confusion = np.asarray(confusion)
    fig = Figure(figsize=CONFUSION_SIZE, layout="constrained")
    ax = fig.subplots()
    shares = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    n = len(classes)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", **PLAIN)
    ax.set_yticks(range(n), classes, **PLAIN)
    ax.set(xlabel="predicted", ylabel="true", title=CONFUSION_TITLE)
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
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class")
    return _save(fig, path)


def plot_per_class(per_class: np.ndarray, classes: list[str], overall: float, path: Path) -> Path:
    """Test accuracy (percent) of each class as bars, the overall accuracy as a line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=PER_CLASS_SIZE, layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(range(len(classes)), per_class, color="tab:blue")
    ax.axhline(overall, color="tab:red", linestyle="--", label=f"overall {overall:.1f}%")
    if len(classes) <= 20:
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", **PLAIN)
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
    """A grid of the ``count`` wrong predictions with the highest predicted probability;
    returns the file and how many images it shows."""
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
            **PLAIN,
        )
    fig.suptitle(
        "most confidently wrong test images" if len(wrong) else "no test image was misclassified"
    )
    return _save(fig, path), len(wrong)


def report_checkpoint(run_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The checkpoint the report's figures come from: the one written at the end of the last
    epoch in metrics.csv (so the report agrees with its own table even when a Ctrl-C saved a
    newer, mid-epoch one), else the newest valid one."""
    rows = read_csv(Path(run_dir) / "metrics.csv")
    if rows:
        path = checkpoint_path(run_dir, int(rows[-1]["epoch"]), int(rows[-1]["step"]))
        if path.is_file():
            try:
                return path, load_checkpoint(path)
            except CheckpointError:
                pass
    return resolve_checkpoint(run_dir)


def split_predictions(run_dir: str | os.PathLike, bundle: DataBundle) -> dict[str, Any]:
    """The final checkpoint's (:func:`report_checkpoint`) class probabilities on the run's
    test images, and the figures of that evaluation.

    The same images as ``cifar-resnet evaluate``: the test split under the run's
    ``limit_test``, ``val_split`` and ``seed``, with the run's test-time augmentation, in
    fp32 on the CPU. ``bundle``: the data the run was trained on, decoded at its image size.
    Returns ``checkpoint``, ``state`` (where in the run it was taken), ``tta``, ``classes``,
    ``images``, ``labels``, ``probs`` (float64, N x classes) and ``result``
    (:func:`cifar_resnet.evaluate.summarize`'s loss, accuracy, per-class accuracy and
    confusion matrix).
    """
    path, ckpt = report_checkpoint(run_dir)
    check_classes(bundle, ckpt, str(path))
    config = checkpoint_config(ckpt, path)
    test = eval_split(
        bundle, "test", val_split=config.val_split, limit_test=config.limit_test, seed=config.seed
    )
    predictor = predictor_from_checkpoint(ckpt, str(path))
    probs = predictor.probabilities(test.images, tta=config.tta)
    labels = torch.from_numpy(np.asarray(test.labels, dtype=np.int64))
    n = len(ckpt["classes"])
    pred = torch.from_numpy(probs.argmax(1))
    confusion = torch.bincount(labels * n + pred, minlength=n * n).view(n, n)
    picked = torch.from_numpy(probs)[torch.arange(len(labels)), labels]
    loss_sum = float(-torch.log(picked.clamp(min=1e-300)).sum())
    return {
        "checkpoint": str(path),
        "state": describe_checkpoint(ckpt),
        "tta": config.tta,
        "classes": list(ckpt["classes"]),
        "images": test.images,
        "labels": test.labels,
        "probs": probs,
        "result": summarize(loss_sum, confusion),
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
        return count_parameters(create_model(run["model_name"], len(run["classes"])))
    return None


def _markdown_text(text: str) -> str:
    """``text`` as literal Markdown: a class name is never markup (math, emphasis, a table
    cell's end)."""
    return "".join("\\" + c if c in "\\`*_[]<>|$#" else c for c in text)


def _summary_lines(run_dir: Path, rows: list[dict[str, float | None]]) -> list[str]:
    """The report's heading, its table of key figures and the training curves' section."""
    run = read_json(run_dir / "run.json")
    summary = read_json(run_dir / "summary.json")
    tested = [r for r in rows if r.get("test_acc") is not None]
    final = tested[-1]["test_acc"] if tested else None  # the last epoch that was tested
    params = _parameters(run, summary)
    wall = summary.get("wall_seconds", rows[-1].get("wall_seconds"))
    lines = [
        f"# Run report: {run_dir.name}",
        "",
        "| | |",
        "|---|---|",
        f"| model | {summary.get('model') or run.get('model_name', '?')} |",
        f"| preset | {summary.get('preset') or run.get('preset', '?')} |",
        f"| parameters | {params:,} |" if params else "| parameters | n/a |",
        f"| epochs | {int(rows[-1]['epoch'])} ({int(rows[-1]['step'])} steps) |",
        f"| final test accuracy | {final:.2f}% (epoch {int(tested[-1]['epoch'])}) |"
        if final is not None
        else "| final test accuracy | n/a |",
    ]  # no "best test accuracy": models are chosen on validation images, never on the test
    val = [r for r in rows if r.get("val_acc") is not None]
    if val:
        best_val = max(val, key=lambda r: r["val_acc"])
        lines.append(
            f"| best val accuracy | {best_val['val_acc']:.2f}% (epoch {int(best_val['epoch'])}) |"
        )
    return lines + [
        f"| wall time | {_fmt_seconds(wall)} |",
        f"| train / test images | {run.get('train_images', '?')} / {run.get('test_images', '?')} |",
        f"| device, precision | {run.get('device', '?')}, {run.get('precision', '?')} |",
        "",
        "## Training curves",
        "",
        "![loss, accuracy and learning rate per epoch](curves.png)",
        "",
    ]


def _test_section(run_dir: Path, bundle: DataBundle, written: list[Path]) -> list[str]:
    """Evaluate the newest checkpoint on the run's test images, draw its three plots (added
    to ``written``) and return the report's section about them."""
    t = split_predictions(run_dir, bundle)
    r, classes = t["result"], t["classes"]
    confusion, per_class = np.array(r["confusion"]), r["per_class_accuracy"]
    written.append(plot_confusion(confusion, classes, run_dir / "confusion.png"))
    written.append(plot_per_class(per_class, classes, r["accuracy"], run_dir / "per_class.png"))
    wrong_png, shown = plot_wrong(
        t["images"], t["labels"], t["probs"], classes, run_dir / "wrong.png"
    )
    written.append(wrong_png)
    checkpoint = Path(t["checkpoint"])
    if checkpoint.is_relative_to(run_dir):
        checkpoint = checkpoint.relative_to(run_dir)
    return [
        f"## Test set: {r['accuracy']:.2f}% of {r['count']} images",
        "",
        f"Checkpoint `{checkpoint}` ({t['state']}), fp32 on the CPU"
        + (f", test-time augmentation level {t['tta']}." if t["tta"] else "."),
        "",
        "![confusion matrix](confusion.png)",
        "",
        "![per-class accuracy](per_class.png)",
        "",
        "| class | accuracy | correct / images |",
        "|---|---|---|",
        *[
            f"| {_markdown_text(c)} | {a:.1f}% | {confusion[i, i]} / {confusion[i].sum()} |"
            for i, (c, a) in enumerate(zip(classes, per_class))
        ],
        "",
        f"## The {shown} most confidently wrong test images",
        "",
        "![most confidently wrong test images](wrong.png)",
        "",
    ]


def check_run(run_dir: str | os.PathLike) -> list[dict[str, float | None]]:
    """What a report needs before any work (a caller runs it before loading the data): the
    run folder, its metrics (returned, as :func:`read_metrics`) and matplotlib."""
    if not Path(run_dir).is_dir():
        raise UsageError(f"run folder {run_dir} does not exist")
    require("matplotlib", "report")
    return read_metrics(run_dir)


def write_report(run_dir: str | os.PathLike, bundle: DataBundle | None = None) -> list[Path]:
    """Write the run's plots and ``report.md`` into ``run_dir``; returns the files written.

    Without ``bundle``, only the training curves; with the data the run was trained on
    (decoded at the run's image size), also the confusion matrix, per-class accuracy and the
    most confidently wrong test images. Needs matplotlib (``pip install
    'cifar-resnet[report]'``).
    """
    run_dir = Path(run_dir)
    rows = check_run(run_dir)
    steps_per_epoch = read_json(run_dir / "run.json").get("steps_per_epoch")
    steps = read_csv(run_dir / "steps.csv")
    written = [plot_curves(rows, run_dir / "curves.png", steps, steps_per_epoch)]
    lines = _summary_lines(run_dir, rows)
    if bundle is not None:
        lines += _test_section(run_dir, bundle, written)
    else:
        lines += [
            "Run `cifar-resnet report RUN --data DATA` for the confusion matrix, "
            "per-class accuracy and the misclassified images.",
            "",
        ]
    written.append(write_text_atomic(run_dir / "report.md", "\n".join(lines)))
    return written
