"""Never lose a run: SIGKILL at random moments, SIGINT/SIGTERM, corrupt checkpoints.

Every run here is a real ``cifar-resnet train`` subprocess on a small synthetic folder in
``--deterministic`` mode on the CPU; a run that was killed and resumed must end with weights
(and optimizer state) bitwise equal to the uninterrupted run, and the same metrics.csv apart
from its timing columns.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import time

import pytest
import torch
from conftest import cli_argv, cli_result, noise_folder, one_line_error, run_cli

from cifar_resnet.checkpoint import checkpoint_files, load_checkpoint
from cifar_resnet.errors import EXIT_CHECKPOINT, EXIT_INTERRUPTED
from cifar_resnet.rundir import read_metrics

EPOCHS, STEPS_PER_EPOCH = 4, 15  # 3 classes x 40 training images at --batch-size 8
TRAIN = [
    "--deterministic",
    "--save-every-steps",
    1,
    "--epochs",
    EPOCHS,
    "--batch-size",
    8,
    "--device",
    "cpu",
]
TIMING = {"epoch_seconds", "images_per_s", "wall_seconds"}
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def data3(tmp_path_factory):
    """3 classes x 40 training / 8 test images of 8x8: 15 steps an epoch at batch 8."""
    classes, counts = {"c0": 40, "c1": 128, "c2": 210}, {"train": 40, "test": 8}
    root = tmp_path_factory.mktemp("data3") / "three"
    return noise_folder(root, classes, counts, size=8, spread=40, seed=7)


@pytest.fixture(scope="module")
def reference(data3, tmp_path_factory, cache_dir):
    """The uninterrupted run, started with ``--resume auto`` on a folder that does not exist."""
    out = tmp_path_factory.mktemp("reference") / "run"
    r = run_cli("train", "--data", data3, "--out", out, "--resume", "auto", *TRAIN, env=ENV)
    assert r.returncode == 0, r.stderr
    return out, r


def metrics(run_dir):
    """metrics.csv without its timing columns."""
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_metrics(run_dir)]


def assert_same_run(run_dir, ref_dir):
    """Final checkpoint, metrics.csv and summary equal to the reference, bitwise."""
    newest, ref_newest = checkpoint_files(run_dir)[0], checkpoint_files(ref_dir)[0]
    assert newest.name == ref_newest.name == f"e{EPOCHS:04d}-s{EPOCHS * STEPS_PER_EPOCH:07d}.pt"
    a, b = load_checkpoint(newest), load_checkpoint(ref_newest)
    assert a["model"].keys() == b["model"].keys()
    for name in b["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), f"weights differ: {name}"
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    for i in opt_b:
        assert torch.equal(opt_a[i]["momentum_buffer"], opt_b[i]["momentum_buffer"]), i
    for key in ("epoch", "step", "epoch_step", "epoch_sums", "best_val"):
        assert a["state"][key] == b["state"][key], key
    assert metrics(run_dir) == metrics(ref_dir)
    assert len(metrics(run_dir)) == EPOCHS
    summary = json.loads((run_dir / "summary.json").read_text())
    ref_summary = json.loads((ref_dir / "summary.json").read_text())
    assert summary["weights_sha256"] == ref_summary["weights_sha256"]
    assert summary["steps"] == EPOCHS * STEPS_PER_EPOCH
    assert not list((run_dir / "checkpoints").glob(".*.tmp")), "a temp file was left behind"


def newest_name(run_dir):
    files = checkpoint_files(run_dir)
    return files[0].name if files else None


def temp_files(run_dir):
    folder = run_dir / "checkpoints"
    return list(folder.glob(".*.tmp")) if folder.is_dir() else []


def test_resume_auto_on_a_new_folder_starts_the_run(reference):
    out, r = reference
    assert "resuming" not in r.stdout and "falling back" not in r.stderr
    assert r.stdout.startswith("training seed")
    assert [int(row["epoch"]) for row in metrics(out)] == list(range(1, EPOCHS + 1))
    assert json.loads((out / "summary.json").read_text())["steps"] == EPOCHS * STEPS_PER_EPOCH


# Kill schedule: one random moment after launch (often before any checkpoint exists), then
# alternately while the k-th checkpoint of the launch is being written (its temp file is
# there) and a random delay after that (mid-step, or mid-write by chance); k is random.
KILLS = ["launch", "write", "delay", "write", "delay"]


def wait_for_writes(p, out, count, started):
    """Poll until the ``count``-th checkpoint temp file of this launch is seen."""
    seen = set()
    while p.poll() is None and time.monotonic() - started < 120:
        seen.update(f.name for f in temp_files(out))
        if len(seen) >= count:
            return
        time.sleep(0.001)


def test_sigkill_at_random_moments_then_resume_auto_is_bitwise_equal(data3, reference, tmp_path):
    ref_dir, _ = reference
    rng = random.Random(20240611)
    out = tmp_path / "run"
    out.mkdir()  # an existing, empty run folder: --resume auto starts it
    cmd = cli_argv("train", "--data", data3, "--out", out, "--resume", "auto", *TRAIN)
    log = []  # (mode, newest checkpoint after the kill, temp file left by the kill)
    for mode in KILLS:
        before = newest_name(out)
        p = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
        )
        started = time.monotonic()
        if mode == "launch":
            time.sleep(rng.uniform(0.5, 2.0))  # about the start-up: often before a save
        else:  # progress counted in saves, not seconds: the machine's load varies
            wait_for_writes(p, out, rng.randint(3, 14), started)
            if mode == "delay":
                time.sleep(rng.uniform(0.0, 0.05))
        p.kill()
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == -signal.SIGKILL, (mode, p.returncode, stdout, stderr)
        if before is not None:
            assert f"resuming from {out / 'checkpoints' / before}" in stdout, stdout
        log.append((mode, newest_name(out), bool(temp_files(out))))
    before = newest_name(out)
    r = run_cli(*cmd[3:], env=ENV)
    assert r.returncode == 0, r.stderr
    assert f"resuming from {out / 'checkpoints' / before}" in r.stdout
    print("\nkills (mode, newest checkpoint after it, temp file left):", *log, sep="\n  ")
    # The kills landed at different moments, mid-epoch and at least one mid-write.
    steps = [int(name[7:14]) for _, name, _ in log if name]
    assert len(set(steps)) >= 3 and any(s % STEPS_PER_EPOCH for s in steps), log
    assert any(left for mode, _, left in log), log
    assert_same_run(out, ref_dir)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_exits_130_and_resume_is_bitwise_equal(data3, reference, tmp_path, sig):
    ref_dir, _ = reference
    out = tmp_path / "run"
    p = subprocess.Popen(
        cli_argv("train", "--data", data3, "--out", out, *TRAIN),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    for line in p.stdout:
        if line.startswith("[1] "):
            break
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == EXIT_INTERRUPTED, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stopped by signal"), stderr  # not an error
    line = lines[0]
    assert f"stopped by signal {int(sig)}" in line
    assert f"continue with `cifar-resnet train --resume {out}`" in line
    saved = load_checkpoint(checkpoint_files(out)[0])
    # Saved at once: within epoch 2, or right after epoch 1 when the signal came while the
    # epoch's files were written (no step is trained after a signal).
    assert STEPS_PER_EPOCH <= saved["state"]["step"] < EPOCHS * STEPS_PER_EPOCH
    assert not temp_files(out)
    r = run_cli("train", "--resume", out, "--data", data3, "--quiet", env=ENV)
    assert r.returncode == 0, r.stderr
    assert_same_run(out, ref_dir)


def test_resume_falls_back_past_a_truncated_newest_checkpoint(data3, reference, tmp_path):
    ref_dir, _ = reference
    out = tmp_path / "run"
    shutil.copytree(ref_dir, out)
    for name in ("metrics.csv", "summary.json"):  # must be written again by the resumed run
        (out / name).unlink()
    newest, older = checkpoint_files(out)[:2]
    assert older.name == f"e{EPOCHS - 1:04d}-s{EPOCHS * STEPS_PER_EPOCH - 1:07d}.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    gone = subprocess.Popen(["true"])
    gone.wait()  # a killed writer's temporary file carries its pid, no longer alive
    stray = out / "checkpoints" / f".{newest.name}.{gone.pid}.x1y2z3ab.tmp"
    stray.write_bytes(data[:4096])
    r = run_cli("train", "--resume", "auto", "--out", out, "--data", data3, *TRAIN, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "falling back" in r.stderr and newest.name in r.stderr
    assert f"resuming from {older}" in r.stdout
    assert not stray.exists()
    assert_same_run(out, ref_dir)


def test_corrupt_checkpoints_are_one_line_errors_naming_the_file(
    data3, reference, tmp_path, capsys
):
    ref_dir, _ = reference
    good = checkpoint_files(ref_dir)[0].read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 3])
    garbled = tmp_path / "garbled.pt"
    garbled.write_bytes(bytes(b ^ 0x5A for b in good[:64]) + good[64:])
    for path in (truncated, garbled):
        r = cli_result(capsys, "evaluate", path, "--data", data3, "--device", "cpu")
        assert str(path) in one_line_error(r, EXIT_CHECKPOINT)
        assert "corrupt or truncated" in r.stderr and "weights_only" not in r.stderr
    # A run folder whose only checkpoint is garbage: refused, never started over.
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    only = out / "checkpoints" / "e0001-s0000015.pt"
    only.write_bytes(good[: len(good) // 2])
    for how in (["--resume", out], ["--resume", "auto", "--out", out]):
        r = cli_result(capsys, "train", *how, "--data", data3, *TRAIN)
        line = one_line_error(r, EXIT_CHECKPOINT)
        assert str(only) in line and "no older checkpoint is valid" in line, how
    assert only.read_bytes() == good[: len(good) // 2]
    assert sorted(p.name for p in out.rglob("*")) == ["checkpoints", only.name]
    # A run folder with no checkpoint at all cannot be continued by name.
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli_result(capsys, "train", "--resume", empty, "--data", data3, *TRAIN)
    assert "holds no checkpoint yet" in one_line_error(r, EXIT_CHECKPOINT)
    assert "--resume auto" in r.stderr
