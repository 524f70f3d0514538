"""report: plots and report.md for a run trained for two epochs on a real CIFAR-10 subset."""

import re
import sys

import matplotlib  # noqa: E402,F401 - a test dependency
import numpy as np
import pytest
from conftest import cli_main
from matplotlib.text import Text
from PIL import Image
from test_predict_export import load_subset

from cifar_resnet import plots as report  # the figures (sizes, plot_*) live in plots
from cifar_resnet.errors import UsageError
from cifar_resnet.plots import DPI
from cifar_resnet.report import write_report


def pixels(size: tuple[float, float]) -> tuple[int, int]:
    return round(size[0] * DPI), round(size[1] * DPI)


def check_png(path, size) -> None:
    assert path.stat().st_size > 5000
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == pixels(size)
        lo, hi = img.convert("L").getextrema()
        assert hi - lo > 100  # something is drawn, not a blank canvas


def images_in(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def test_curves_only_without_data(subset_run, capsys):
    run, _, _ = subset_run
    assert cli_main("report", run) == 0
    assert "wrote" in capsys.readouterr().out
    check_png(run / "curves.png", report.CURVES_SIZE)
    md = (run / "report.md").read_text()
    assert images_in(md) == ["curves.png"]
    assert "| model | seed |" in md and "| epochs | 2 " in md and "| parameters | 175,258 |" in md
    assert re.search(r"final test accuracy \| \d+\.\d\d%", md)
    assert not list(run.glob(".*.tmp"))


def test_full_report_with_data(subset_run, capsys):
    run, data, cache = subset_run
    written = write_report(run, load_subset(data, cache))
    names = [p.name for p in written]
    assert names == ["curves.png", "confusion.png", "per_class.png", "wrong.png", "report.md"]
    check_png(run / "curves.png", report.CURVES_SIZE)
    check_png(run / "confusion.png", report.CONFUSION_SIZE)
    check_png(run / "per_class.png", report.PER_CLASS_SIZE)
    check_png(run / "wrong.png", report.WRONG_SIZE)
    md = (run / "report.md").read_text()
    assert images_in(md) == names[:4]
    # The report's test accuracy is the one training measured on the same images.
    final = re.search(r"final test accuracy \| (\d+\.\d\d)%", md).group(1)
    assert f"## Test set: {final}% of 100 images" in md
    assert "most confidently wrong" in md

    # The command line loads the data itself and writes the same files.
    assert cli_main("report", run, "--data", data, "--cache-dir", cache) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {p}" for p in written]
    assert (run / "report.md").read_text() == md


def test_errors_are_one_line(subset_run, tmp_path, monkeypatch, capsys):
    run, _, _ = subset_run
    with pytest.raises(UsageError, match="no metrics.csv"):
        write_report(tmp_path)
    assert cli_main("report", tmp_path / "nope") == 4  # as evaluate: a missing run
    assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli_main("report", run) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'cifar-resnet[report]'" in err


# Class folders may hold any name; these are not valid mathtext (matplotlib's $...$ markup).
ODD_CLASSES = ["$x^2$", "a_$b$", "$x^$", r"c\$d$", "plain"]


def draw_plots(tmp_path, monkeypatch, classes):
    """The three test-set plots of a made-up evaluation; returns the figures drawn."""
    drawn = []
    save = report._save
    monkeypatch.setattr(report, "_save", lambda fig, path: drawn.append(fig) or save(fig, path))
    n = len(classes)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(n), 4)
    probs = rng.dirichlet(np.ones(n), len(labels))
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, probs.argmax(1)), 1)
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    report.plot_confusion(confusion, classes, tmp_path / "confusion.png")
    report.plot_per_class(np.full(n, 50.0), classes, 50.0, tmp_path / "per_class.png")
    _, shown = report.plot_wrong(images, labels, probs, classes, tmp_path / "wrong.png")
    assert shown > 0
    return drawn, confusion


def test_class_names_are_text_not_markup(tmp_path, monkeypatch):
    drawn, _ = draw_plots(tmp_path, monkeypatch, ODD_CLASSES)  # the old code raised here
    check_png(tmp_path / "confusion.png", report.CONFUSION_SIZE)
    check_png(tmp_path / "per_class.png", report.PER_CLASS_SIZE)
    confusion_ax, per_class_ax = drawn[0].axes[0], drawn[1].axes[0]
    for labels in (
        confusion_ax.get_xticklabels(),
        confusion_ax.get_yticklabels(),
        per_class_ax.get_xticklabels(),
    ):
        assert [t.get_text() for t in labels] == ODD_CLASSES  # shown as they are, unescaped
    # Every text that shows a class name is drawn literally: no mathtext, no TeX.
    shown = [
        t
        for fig in drawn
        for t in fig.findobj(Text)
        if any(name in t.get_text() for name in ODD_CLASSES[:4])
    ]
    assert len(shown) > 3 * 4  # the ticks of both plots, and titles of the wrong grid
    assert all(not t.get_parse_math() and not t.get_usetex() for t in shown)


def test_confusion_title_says_what_cells_and_colours_show(tmp_path, monkeypatch):
    drawn, confusion = draw_plots(tmp_path, monkeypatch, ["cat", "dog", "frog"])
    ax = drawn[0].axes[0]
    assert ax.get_title() == (
        "confusion matrix (cells: image counts; colour: share of the true class)"
    )
    cells = [int(t.get_text()) for t in ax.texts]  # the cells show counts, row by row
    assert cells == confusion.ravel().tolist()
