"""A newcomer's first minutes: no silent waits, words and tables that read right, plots that
show what a short run did, files written when a first epoch is stopped."""

import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time

import numpy as np
import pytest
from conftest import noise_folder, one_line_error, run_cli

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, timeout=300):
    return run_cli(*args, env=ENV, timeout=timeout)


@pytest.fixture
def one_epoch(tiny_folder, tmp_path, cache_dir):
    """A one-epoch run of the tiny folder, into a path given as ``./…//run/``."""
    out = tmp_path / "run"
    given = f"{tmp_path}//./run/"
    r = cli("train", "--data", tiny_folder, "--out", given, "--epochs", 1, "--batch-size", 16,
            "--device", "cpu", "--no-report")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return tiny_folder, out, r.stdout


def test_one_epoch_is_one_epoch_and_paths_are_printed_normalised(one_epoch):
    _, out, stdout = one_epoch
    assert "1 epoch of 3 steps; run folder " in stdout
    assert "after 1 epoch (" in stdout and f"summary in {out}/summary.json" in stdout
    assert "//" not in stdout and "/./" not in stdout


def test_evaluate_says_what_it_evaluates_and_with_which_tta(one_epoch):
    _, out, _ = one_epoch
    r = cli("evaluate", out, "--tta", 2)
    assert r.returncode == 0, r.stderr
    assert "test-time augmentation: level 2 (mirror and two 1-pixel translations" in r.stdout
    assert f"evaluating {out}" in r.stderr and "level 2" in r.stderr  # before the wait
    r = cli("evaluate", out)
    assert "test-time augmentation: none" in r.stdout


def test_evaluate_draws_a_bar_on_a_terminal(one_epoch):
    _, out, _ = one_epoch
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80 columns
    cmd = [sys.executable, "-m", "cifar_resnet", "evaluate", str(out), "--eval-batch-size", 2]
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.DEVNULL, stderr=follower,
                            env=ENV)  # fmt: skip
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the command ended and closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=120)
    os.close(leader)
    assert proc.returncode == 0, seen
    assert b"evaluating" in seen and b"batch" in seen and b"\r" in seen, seen


def test_tta_without_a_level_leaves_the_positionals_alone(one_epoch):
    data, out, _ = one_epoch
    image = next((data / "test" / "dark").glob("*.png"))
    r = cli("predict", "--tta", out, image)
    assert r.returncode == 0, r.stderr
    assert "dark" in r.stdout


def test_the_seeds_table_is_aligned_text_with_its_columns_explained():
    from cifar_resnet.cli.train import text_table
    from cifar_resnet.seeds import format_table

    runs = {"0": {"test_accuracy": 84.1234, "train_seconds": 290.12},
            "1": {"test_accuracy": 85.5, "train_seconds": 1290.5}}  # fmt: skip
    agg = {k: {"mean": 1.0, "std": 0.5, "min": 0.0, "max": 2.0}
           for k in ("test_accuracy", "train_seconds")}  # fmt: skip
    lines = text_table(format_table({"seeds": [0, 1], "runs": runs, "aggregate": agg}))
    assert not any("|" in line for line in lines)
    header, rule, *rows, legend = lines
    assert header.split("  ")[0].strip() == "seed" and set(rule) == {"-", " "}
    ends = {len(line) for line in (header, rule, *rows)}
    assert len(ends) == 1  # right-aligned figures: every line ends at one column
    assert "train s: seconds in training steps" in legend


def test_per_class_plot_has_no_legend_over_the_bars():
    from cifar_resnet.plots import per_class_figure

    fig = per_class_figure(np.full(10, 99.0), [f"class{i}" for i in range(10)], 99.0)
    ax = fig.axes[0]
    assert ax.get_legend() is None and "overall 99.0%" in ax.get_title()


def test_a_one_epoch_curve_is_a_line_not_a_dot():
    from cifar_resnet.plots import curves_figure

    rows = [{"epoch": 1, "step": 40, "lr": 0.1, "train_loss": 1.5, "train_acc": 40.0,
             "test_loss": 1.3, "test_acc": 50.0}]  # fmt: skip
    steps = [{"step": s, "epoch": 1, "lr": 0.1, "loss": 2.3 - s / 40, "acc": s} for s in (4, 8, 12)]
    fig = curves_figure(rows, steps, 40)
    loss_ax = fig.axes[0]
    assert max(len(line.get_xdata()) for line in loss_ax.get_lines()) >= 3


@pytest.fixture
def slow_folder(tmp_path):
    """2 classes x 150 8x8 images: at --batch-size 1 an epoch is 300 steps, seconds long."""
    counts = {"train": 150, "test": 4}
    return noise_folder(tmp_path / "slow", {"bright": 200, "dark": 40}, counts, 8, 30, seed=0)


def test_a_stopped_first_epoch_leaves_its_steps_and_the_expected_length_is_said(
    slow_folder, tmp_path, cache_dir
):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cifar_resnet", "train", "--data", slow_folder, "--out", out,
           "--batch-size", 1, "--epochs", 3, "--log-every", 5, "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, text=True, env=ENV)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("expected length: about"):
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    assert proc.returncode == 130, "".join(lines)
    assert any("steps left" in line and "ms/step" in line for line in lines)
    steps = (out / "steps.csv").read_text().splitlines()
    assert steps[0].startswith("step,epoch,lr") and len(steps) >= 5
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("epoch,") and len(metrics) == 1  # no epoch finished yet
    # report on it: the hint is a command that works as printed
    line = one_line_error(cli("report", out), 2)
    assert f"`cifar-resnet train --resume {out}`" in line
