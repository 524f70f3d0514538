"""report: plots and report.md for a run trained for two epochs on a real CIFAR-10 subset."""

import argparse
import re
import sys

import matplotlib  # noqa: E402,F401 - a test dependency
import pytest
from PIL import Image
from test_predict_export import train_tiny_run

from cifar_resnet import report
from cifar_resnet.errors import CifarResnetError, UsageError
from cifar_resnet.report import DPI, write_report


def pixels(size: tuple[float, float]) -> tuple[int, int]:
    return round(size[0] * DPI), round(size[1] * DPI)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    run, data = train_tiny_run(tmp_path_factory.mktemp("report"), cache_dir, epochs=2)
    return run, data, cache_dir


def check_png(path, size) -> None:
    assert path.stat().st_size > 5000
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == pixels(size)
        lo, hi = img.convert("L").getextrema()
        assert hi - lo > 100  # something is drawn, not a blank canvas


def cli(*argv) -> int:
    parser = argparse.ArgumentParser(prog="cifar-resnet")
    report.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    try:
        return report.run(args)
    except CifarResnetError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


def images_in(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def test_curves_only_without_data(trained, capsys):
    run, _, _ = trained
    assert cli("report", run) == 0
    assert "wrote" in capsys.readouterr().out
    check_png(run / "curves.png", report.CURVES_SIZE)
    md = (run / "report.md").read_text()
    assert images_in(md) == ["curves.png"]
    assert "| model | seed |" in md and "| epochs | 2 " in md and "| parameters | 175,258 |" in md
    assert re.search(r"final test accuracy \| \d+\.\d\d%", md)
    assert not list(run.glob(".*.tmp"))


def test_full_report_with_data(trained):
    run, data, cache = trained
    written = write_report(run, str(data), cache_dir=str(cache))
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


def test_errors_are_one_line(trained, tmp_path, monkeypatch, capsys):
    run, _, _ = trained
    with pytest.raises(UsageError, match="no metrics.csv"):
        write_report(tmp_path)
    assert cli("report", tmp_path / "nope") == 2
    assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli("report", run) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'cifar-resnet[report]'" in err
