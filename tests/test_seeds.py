"""train --seeds: a run folder per seed, each bitwise the lone run of its seed; the aggregate;
--resume after a kill -9 in the middle seed; bad seed lists; the multi-seed report."""

import json
import os
import signal
import statistics
import subprocess
import time

import pytest
from conftest import cli_argv, cli_main, make_tiny_folder
from PIL import Image

import cifar_resnet
from cifar_resnet.checkpoint import checkpoint_files
from cifar_resnet.config import resolve_config
from cifar_resnet.data import load_data
from cifar_resnet.errors import UsageError
from cifar_resnet.plots import DPI, SEEDS_SIZE
from cifar_resnet.seeds import aggregate, format_table, parse_seeds

FLAGS = ["--epochs", 2, "--batch-size", 16, "--deterministic", "--precision", "fp32"]
FLAGS += ["--device", "cpu", "--no-report"]


def read(path) -> dict:
    return json.loads(path.read_text())


def lone_digests(data, tmp_path, seeds) -> dict[int, str]:
    """weights_sha256 of ``train --seed S`` for each seed, with the same flags."""
    digests = {}
    for s in seeds:
        out = tmp_path / f"lone-{s}"
        assert cli_main("train", "--data", data, "--out", out, "--seed", s, *FLAGS) == 0
        digests[s] = read(out / "summary.json")["weights_sha256"]
    return digests


@pytest.fixture(scope="module")
def lone_runs(tmp_path_factory, cache_dir):
    """The tiny folder and the lone run of each seed 0-2 in it, trained once for the module:
    (data, the folder holding lone-S, {seed: weights_sha256})."""
    root = tmp_path_factory.mktemp("lone")
    data = make_tiny_folder(root)
    return data, root, lone_digests(data, root, [0, 1, 2])


def test_three_seeds_equal_their_lone_runs_with_the_aggregate(lone_runs, tmp_path, capsys):
    data, lone_root, lone = lone_runs
    out = tmp_path / "seeds"
    assert cli_main("train", "--data", data, "--out", out, "--seeds", "0-1,2", *FLAGS) == 0
    printed = capsys.readouterr().out
    result = read(out / "summary.json")
    assert result["seeds"] == [0, 1, 2] and sorted(result["runs"]) == ["0", "1", "2"]
    assert read(out / "seeds.json")["seeds"] == [0, 1, 2]
    for s in (0, 1, 2):
        summary = read(out / f"seed-{s}" / "summary.json")
        assert summary == result["runs"][str(s)]
        assert summary["weights_sha256"] == lone[s], f"seed {s} differs from its lone run"
        assert (out / f"seed-{s}" / "config.toml").read_text() == (
            lone_root / f"lone-{s}" / "config.toml"
        ).read_text()
        assert read(out / f"seed-{s}" / "run.json")["data"] == str(data)
    assert len(set(lone.values())) == 3  # the seeds really differ

    agg = result["aggregate"]
    assert set(agg) == {"test_accuracy", "train_seconds", "wall_seconds", "seconds"}
    for key in agg:
        values = [result["runs"][str(s)][key] for s in (0, 1, 2)]
        assert agg[key] == pytest.approx(
            {
                "mean": statistics.mean(values),
                "std": statistics.stdev(values),
                "min": min(values),
                "max": max(values),
                "n": 3,
            }
        )
    from cifar_resnet.cli.train import text_table

    for line in text_table(format_table(result)):  # the table as aligned text
        assert line in printed
    assert "mean ± std" in printed and "| mean ± std |" not in printed
    assert f"summary in {out / 'summary.json'}" in printed


def wait_for_checkpoint(p, run_dir, limit=120.0):
    """Poll until ``run_dir`` has a checkpoint (or the process ends, or ``limit`` s pass)."""
    t0 = time.monotonic()
    while p.poll() is None and time.monotonic() - t0 < limit:
        if checkpoint_files(run_dir):
            return True
        time.sleep(0.001)
    return False


def test_resume_after_kill_in_the_middle_seed(lone_runs, tmp_path, capsys):
    """The resumed seeds equal their lone runs (trained without --save-every-steps: the saves
    change nothing either)."""
    data, _, lone = lone_runs
    out, extra = tmp_path / "seeds", ["--save-every-steps", 1]
    p = subprocess.Popen(
        cli_argv("train", "--data", data, "--out", out, "--seeds", "0-2", *FLAGS, *extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        found = wait_for_checkpoint(p, out / "seed-1")
        p.send_signal(signal.SIGKILL)
        _, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert found and p.returncode == -signal.SIGKILL, (p.returncode, stderr)
    assert (out / "seed-0" / "summary.json").is_file()
    assert not (out / "seed-1" / "summary.json").exists()
    assert not (out / "seed-2").exists() and not (out / "summary.json").exists()
    kept = (out / "seed-0" / "summary.json").read_bytes()

    assert cli_main("train", "--resume", out) == 0
    printed = capsys.readouterr().out
    assert "seed 0: finished (6 steps), kept as it is" in printed
    assert f"resuming from {out / 'seed-1' / 'checkpoints'}" in printed
    assert (out / "seed-0" / "summary.json").read_bytes() == kept
    result = read(out / "summary.json")
    assert (
        sorted(result["runs"]) == ["0", "1", "2"] and result["aggregate"]["test_accuracy"]["n"] == 3
    )
    for s in (0, 1, 2):
        assert read(out / f"seed-{s}" / "summary.json")["weights_sha256"] == lone[s], s
        assert result["runs"][str(s)]["steps"] == 6

    assert cli_main("train", "--resume", out) == 0  # all finished: nothing trains again
    assert capsys.readouterr().out.count("kept as it is") == 3
    assert read(out / "summary.json")["runs"] == result["runs"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", ""], "at least one seed"),
        (["--seeds", "0,a"], "'a': not a seed"),
        (["--seeds", "1.5"], "not a seed"),
        (["--seeds", "3-1"], "runs backwards"),
        (["--seeds=-1"], "whole numbers >= 0"),
        (["--seeds", "0-2,1"], "seed 1 is listed twice"),
        (["--seeds", "0-2", "--seed", "1"], "drop --seed"),
    ],
)
def test_bad_seed_lists_are_one_line_errors(tiny_folder, tmp_path, capsys, argv, message):
    out = tmp_path / "seeds"
    assert cli_main("train", "--data", tiny_folder, "--out", out, *argv, *FLAGS) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not out.exists()


def test_seeds_with_resume_of_a_single_run_is_refused(tiny_folder, tmp_path, capsys):
    out = tmp_path / "lone"
    out.mkdir()
    assert cli_main("train", "--resume", out, "--seeds", "0,1", *FLAGS) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a multi-seed folder" in err


def test_api_and_report_of_a_multi_seed_folder(tiny_folder, tmp_path, cache_dir, capsys):
    out = tmp_path / "seeds"
    flags = {"epochs": 2, "batch_size": 16, "precision": "fp32", "deterministic": True}
    _, config = resolve_config("seed", None, flags)
    bundle = load_data(str(tiny_folder), progress=False)
    result = cifar_resnet.fit_seeds(
        config, bundle, out, [0, 1], device="cpu", quiet=True, data_spec=str(tiny_folder)
    )
    assert result == read(out / "summary.json")
    with pytest.raises(UsageError, match="already holds a multi-seed run"):
        cifar_resnet.fit_seeds(config, bundle, out, [0, 1], device="cpu", quiet=True)

    assert cli_main("report", out) == 0  # the data the seeds recorded: each seed's full report
    wrote = capsys.readouterr().out.splitlines()
    assert f"wrote {out / 'seeds.png'}" in wrote and f"wrote {out / 'report.md'}" in wrote
    for s in (0, 1):
        assert f"wrote {out / f'seed-{s}' / 'confusion.png'}" in wrote
        assert (out / f"seed-{s}" / "report.md").is_file()
    with Image.open(out / "seeds.png") as img:
        assert img.size == (round(SEEDS_SIZE[0] * DPI), round(SEEDS_SIZE[1] * DPI))
    md = (out / "report.md").read_text()
    assert "![every seed's curves (thin) and their mean (thick)](seeds.png)" in md
    for line in format_table(result):
        assert line in md
    for row in ("| 0 | ", "| 1 | ", "| mean ± std | ", "| min / max | "):
        assert any(line.startswith(row) for line in md.splitlines()), row
    assert "[seed 1](seed-1/report.md)" in md


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    assert parse_seeds(" 9, 3 ") == [9, 3]  # the order given
    assert parse_seeds("4-4") == [4]
    for bad in ("", " ", ",", "1,", "a", "1.5", "3-1", "-1", "-1-2", "0,0", "0-2,1", "0-5000"):
        with pytest.raises(UsageError):
            parse_seeds(bad)


def test_aggregate():
    runs = [
        {"test_accuracy": 50.0, "best_val_accuracy": None, "seconds": 10.0},
        {"test_accuracy": 60.0, "best_val_accuracy": 61.0, "seconds": 20.0},
        {"test_accuracy": 70.0, "best_val_accuracy": 63.0, "seconds": 30.0},
    ]
    agg = aggregate(runs)
    assert set(agg) == {"test_accuracy", "best_val_accuracy", "seconds"}
    assert agg["test_accuracy"] == pytest.approx(
        {"mean": 60.0, "std": 10.0, "min": 50.0, "max": 70.0, "n": 3}
    )
    assert agg["best_val_accuracy"]["n"] == 2 and agg["best_val_accuracy"]["mean"] == 62.0
    one = aggregate([{"test_accuracy": 42.0}])["test_accuracy"]
    assert one == {"mean": 42.0, "std": 0.0, "min": 42.0, "max": 42.0, "n": 1}
    assert aggregate([]) == {}
