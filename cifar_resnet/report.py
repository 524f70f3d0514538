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
from collections.abc import Callable
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
from .files import remove_stale_temps, write_text_atomic
from .models import count_parameters, create_model
from .plots import (
    plot_confusion,
    plot_curves,
    plot_per_class,
    plot_seeds,
    plot_wrong,
)
from .rundir import RunDir, read_csv, read_json, read_metrics
from .seeds import collect, format_table, is_multi_seed, seed_dir


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


def _test_section(
    run_dir: Path, bundle: DataBundle, written: list[Path], part: Callable[[str], None]
) -> list[str]:
    """Evaluate the newest checkpoint on the run's test images, draw its three plots (added
    to ``written``) and return the report's section about them."""
    part(f"{run_dir.name}: evaluating the test images")
    t = split_predictions(run_dir, bundle)
    r, classes = t["result"], t["classes"]
    confusion, per_class = np.array(r["confusion"]), r["per_class_accuracy"]
    part(f"{run_dir.name}: confusion matrix, per-class accuracy")
    written.append(plot_confusion(confusion, classes, run_dir / "confusion.png"))
    written.append(plot_per_class(per_class, classes, r["accuracy"], run_dir / "per_class.png"))
    part(f"{run_dir.name}: the most confidently wrong images")
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
        # exit 4, as evaluate, predict and export give for a run that is not there
        raise CheckpointError(
            f"run folder {run_dir} does not exist; pass the folder given as train --out"
        )
    require("matplotlib", "report")
    return read_metrics(run_dir)


def write_report(
    run_dir: str | os.PathLike,
    bundle: DataBundle | None = None,
    part: Callable[[str], None] = lambda name: None,
) -> list[Path]:
    """Write the run's plots and ``report.md`` into ``run_dir``; returns the files written.

    Without ``bundle``, only the training curves; with the data the run was trained on
    (decoded at the run's image size), also the confusion matrix, per-class accuracy and the
    most confidently wrong test images. A multi-seed folder gets :func:`write_seeds_report`.
    ``part(name)`` is called as each part starts (``progress.Phases`` draws it).
    Needs matplotlib (``pip install 'cifar-resnet[report]'``).
    """
    if is_multi_seed(run_dir):
        return write_seeds_report(run_dir, bundle, part)
    run_dir = Path(run_dir)
    rows = check_run(run_dir)
    remove_stale_temps(run_dir)  # left by a report that was killed while writing
    steps_per_epoch = read_json(run_dir / "run.json").get("steps_per_epoch")
    steps = read_csv(run_dir / "steps.csv")
    part(f"{run_dir.name}: curves")
    written = [plot_curves(rows, run_dir / "curves.png", steps, steps_per_epoch)]
    lines = _summary_lines(run_dir, rows)
    if bundle is not None:
        lines += _test_section(run_dir, bundle, written, part)
    else:
        lines += [
            "Run `cifar-resnet report RUN --data DATA` for the confusion matrix, "
            "per-class accuracy and the misclassified images.",
            "",
        ]
    written.append(write_text_atomic(run_dir / "report.md", "\n".join(lines)))
    RunDir(run_dir).record(*written)  # the run's files: --overwrite may remove them
    return written


def write_seeds_report(
    out_dir: str | os.PathLike,
    bundle: DataBundle | None = None,
    part: Callable[[str], None] = lambda name: None,
) -> list[Path]:
    """A multi-seed folder's report: each seed's own (:func:`write_report`, into its folder),
    ``seeds.png`` (:func:`plot_seeds`) and ``report.md`` with the table of every seed's figures
    and their spread; seeds that have not finished an epoch are left out."""
    out = Path(out_dir)
    require("matplotlib", "report")
    result = collect(out)
    runs, written = {}, []
    for seed in result["seeds"]:
        folder = seed_dir(out, seed)
        rows = read_csv(folder / "metrics.csv")  # none: no epoch finished (or none started)
        if rows:
            written += write_report(folder, bundle, part)
            runs[str(seed)] = rows
    if not runs:
        raise UsageError(f"no seed in {out} has finished an epoch yet; report after the first")
    written.append(plot_seeds(runs, out / "seeds.png"))
    lines = [
        f"# Seeds report: {_markdown_text(out.name)}",
        "",
        f"{len(result['runs'])} of {len(result['seeds'])} seeds finished; "
        "the spread is over those (std: sample, n-1).",
        "",
        "![every seed's curves (thin) and their mean (thick)](seeds.png)",
        "",
        *format_table(result),
        "",
        "Each seed's own report: " + ", ".join(f"[seed {s}](seed-{s}/report.md)" for s in runs),
        "",
    ]
    written.append(write_text_atomic(out / "report.md", "\n".join(lines)))
    remove_stale_temps(out)
    RunDir(out).record(out / "seeds.png", out / "report.md")
    return written
