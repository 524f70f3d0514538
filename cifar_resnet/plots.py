"""The report's figures, drawn with matplotlib's Agg renderer through ``Figure`` objects,
never pyplot, so nothing changes the caller's backend. Class names are plain text, never
mathtext or TeX (a folder may be named ``$x^2$``). Each figure is written through
:func:`cifar_resnet.files.write_atomic`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .files import write_atomic

DPI = 100
CURVES_SIZE = (15, 4.5)  # inches: 1500 x 450 pixels at DPI
CONFUSION_SIZE = (8, 8)
PER_CLASS_SIZE = (10, 4.5)
WRONG_SIZE = (10, 11)
SEEDS_SIZE = (15, 4.5)
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
    return _save(curves_figure(rows, steps, steps_per_epoch), path)


def curves_figure(rows, steps=None, steps_per_epoch=None):
    """:func:`plot_curves`'s figure. The logged steps' running training loss and accuracy are
    drawn as a thin line inside the epochs, so that even one epoch is a curve, not a dot."""
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
    if steps and steps_per_epoch:
        x = [st["step"] / steps_per_epoch for st in steps]
        for ax, what in ((loss_ax, "loss"), (acc_ax, "acc")):
            y = [st[what] for st in steps]
            ax.plot(x, y, "-", color="tab:blue", alpha=0.4, lw=1, label="train, in the epoch")
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
        ax.set_xlim(0 if ax is lr_ax or steps else 0.5, last + 0.5)  # not 0.95..1.05
    return fig


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
    return _save(per_class_figure(per_class, classes, overall), path)


def per_class_figure(per_class: np.ndarray, classes: list[str], overall: float):
    """:func:`plot_per_class`'s figure; the dashed line is explained in the title, where no
    legend box can cover a bar or its label."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=PER_CLASS_SIZE, layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(range(len(classes)), per_class, color="tab:blue")
    ax.axhline(overall, color="tab:red", linestyle="--")
    if len(classes) <= 20:
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", **PLAIN)
    title = f"per-class test accuracy (dashed red line: overall {overall:.1f}%)"
    ax.set(ylim=(0, 105), ylabel="accuracy (%)", title=title)
    return fig


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


def plot_seeds(runs: dict[str, list[dict[str, float | None]]], path: Path) -> Path:
    """Train loss, test loss and test accuracy per epoch of every seed (``runs``: seed ->
    metrics rows; thin lines) and their mean over the seeds (thick) at the epochs all have."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=SEEDS_SIZE, layout="constrained")
    panels = {"train_loss": "train loss", "test_loss": "test loss", "test_acc": "test accuracy (%)"}
    for ax, (key, title) in zip(fig.subplots(1, 3), panels.items()):
        curves = {f"seed {s}": dict(zip(*_series(rows, key))) for s, rows in runs.items()}
        common = sorted(set.intersection(*(set(c) for c in curves.values())))
        mean = {e: float(np.mean([c[e] for c in curves.values()])) for e in common}
        for label, curve in [*curves.items(), (f"mean of {len(curves)} seeds", mean)]:
            thick = label.startswith("mean")
            x = sorted(curve)
            ax.plot(
                x,
                [curve[e] for e in x],
                lw=2.5 if thick else 0.8,
                alpha=1 if thick else 0.6,
                color="black" if thick else None,
                marker="o" if len(x) < 30 else None,
                markersize=4 if thick else 2,
                label=label,
            )
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=1 + len(runs) // 12)
    return _save(fig, path)
