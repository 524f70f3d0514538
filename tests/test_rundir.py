"""A run folder is owned: never overwritten, never shared by two processes, never left
half-explained; every bad input is one line with its exit code (issue: "A run folder is
owned")."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli_result, make_tiny_folder, one_line_error, run_cli, train_small

from cifar_resnet import files
from cifar_resnet.checkpoint import (
    checkpoint_files,
    load_checkpoint,
    save_checkpoint,
)
from cifar_resnet.errors import (
    EXIT_CHECKPOINT,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_OUTPUT,
    EXIT_USAGE,
    Interrupted,
    OutputError,
)
from cifar_resnet.rundir import RunDir

QUICK = ["--epochs", 2, "--batch-size", 16, "--device", "cpu", "--no-report"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory, cache_dir):
    """One finished 2-epoch run on the tiny folder, trained once for the module."""
    data = make_tiny_folder(tmp_path_factory.mktemp("rundir"))
    train_small(data, data.parent / "run", *QUICK)
    return data, data.parent / "run"


@pytest.fixture
def trained(trained_once, tmp_path):
    """This test's own copy of the finished run (tests may change or break it)."""
    data, run = trained_once
    shutil.copytree(run, tmp_path / "run")
    return data, tmp_path / "run"


def test_a_new_run_into_a_run_folder_is_refused_and_touches_nothing(trained, capsys):
    data, out = trained
    before = snapshot(out)
    r = cli_result(capsys, "train", "--data", data, "--out", out, "--model", "resnet20", *QUICK)
    line = one_line_error(r, EXIT_USAGE)
    assert "already holds a run" in line and f"--resume {out}" in line and "--overwrite" in line
    assert snapshot(out) == before


def test_overwrite_replaces_the_old_run_entirely(trained, capsys):
    data, out = trained
    assert [p.name for p in checkpoint_files(out)] == ["e0002-s0000006.pt", "e0001-s0000003.pt"]
    r = cli_result(capsys, "train", "--data", data, "--out", out, "--model", "resnet20",
                   "--epochs", 1, "--batch-size", 16, "--device", "cpu", "--no-report",
                   "--overwrite")  # fmt: skip
    assert r.returncode == 0, r.stderr
    names = [p.name for p in checkpoint_files(out)]
    assert names == ["e0001-s0000003.pt"]  # the old run's e0002 is gone
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "resnet20" and summary["checkpoint"].endswith(names[0])
    assert load_checkpoint(out / "checkpoints" / names[0])["model_name"] == "resnet20"
    assert len((out / "metrics.csv").read_text().splitlines()) == 2  # header + 1 epoch


def test_a_second_process_on_a_locked_folder_is_refused_naming_the_holder(tiny_folder, tmp_path):
    out = tmp_path / "run"
    holder = RunDir(out)
    holder.lock()
    try:
        r = run_cli("train", "--data", tiny_folder, "--out", out, *QUICK)
        line = one_line_error(r, EXIT_LOCKED)
        assert f"pid {os.getpid()}" in line and "in use" in line
        assert not (out / "metrics.csv").exists()
    finally:
        holder.unlock()


def test_a_stale_lock_from_a_killed_process_never_blocks(tiny_folder, tmp_path, cache_dir, capsys):
    out = tmp_path / "run"
    code = f"from cifar_resnet.rundir import RunDir; RunDir({str(out)!r}).lock(); import os; os.kill(os.getpid(), 9)"  # noqa: E501
    done = subprocess.run([sys.executable, "-c", code])
    assert done.returncode == -signal.SIGKILL and (out / ".lock").read_text().strip()
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", out, "--resume", "auto", *QUICK)
    assert r.returncode == 0, r.stderr


def test_enospc_during_a_checkpoint_write_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    """torch.save reports a full disk as ``RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos``: it becomes the one-line full-disk error."""
    import shutil
    from collections import namedtuple

    path = tmp_path / "a.pt"
    save_checkpoint({"w": torch.ones(3)}, path)

    def full(obj, f):
        Path(f).write_bytes(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 64")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 0))
    with pytest.raises(OutputError, match="the disk is full") as e:
        save_checkpoint({"w": torch.zeros(3)}, path)
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["a.pt"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_tmpfs_as_out_is_a_one_line_error(tiny_folder, tmp_path, cache_dir):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("this machine does not let root mount a tmpfs (no CAP_SYS_ADMIN)")
    try:
        r = run_cli("train", "--data", tiny_folder, "--out", mnt / "run", *QUICK)
        line = one_line_error(r, EXIT_OUTPUT)
        assert "the disk is full" in line
        assert not [p for p in (mnt / "run").rglob("*.tmp")]
    finally:
        subprocess.run(["umount", str(mnt)])


def test_atomic_writes_fsync_before_rename_and_follow_the_umask(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1]
    )  # noqa: E501
    old = os.umask(0o027)
    try:
        files.write_text_atomic(tmp_path / "f.txt", "hello")
    finally:
        os.umask(old)
    assert events[:2] == ["fsync", "replace"]  # the data is on disk before the name moves
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize(
    "args,match",
    [
        (["--lr", "1e308"], "lr must be a positive number up to"),
        (["--seed", "-1", "--limit-train", "10"], "seed must be an integer from 0"),
        (["--seed", str(2**64)], "seed must be an integer from 0"),
        (["--device", "cuda:0"], "no CUDA GPU is visible"),
        (["--device", "cuda:abc"], "unknown device 'cuda:abc'"),
        (["--image-size", "20000"], "image_size 20000 is more than"),
        (["--preset", "fast", "--image-size", "1"], "needs images of at least"),
        (["--log-every", "-1"], "--log-every must be 0"),
    ],
)
def test_bad_values_are_one_line_errors(tiny_folder, tmp_path, cache_dir, args, match, capsys):
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", tmp_path / "run", *QUICK, *args)
    assert match in one_line_error(r, EXIT_USAGE)


def test_predict_image_size_is_bounded(trained, capsys):
    data, out = trained
    image = next((data / "test").rglob("*.png"))
    r = cli_result(capsys, "predict", out, image, "--image-size", 100000)
    assert "at most" in one_line_error(r, EXIT_USAGE)


def test_resume_with_another_batch_size_is_refused(trained, capsys):
    _, out = trained
    r = cli_result(capsys, "train", "--resume", out, "--batch-size", 7, "--epochs", 3)
    line = one_line_error(r, EXIT_USAGE)
    assert "--batch-size 7 differs from the run's 16" in line


def crafted(tmp_path: Path, good: Path, change) -> Path:
    ckpt = load_checkpoint(good)
    change(ckpt)
    path = tmp_path / "crafted.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda c: c.pop("config"), "has no 'config' field"),
        (lambda c: c.pop("model_name"), "has no 'model_name' field"),
        (lambda c: c["state"].update(extra=1), "run state has unknown fields"),
        (lambda c: c["model"].update({"linear.weight": torch.zeros(3, 3)}), "does not fit"),
        (lambda c: c.update(rng={}), "incomplete RNG state"),
        (lambda c: c.update(version=99), "version 99 checkpoint"),
        (lambda c: c["config"].update(bogus=1), "unknown option 'bogus'"),
    ],
)
def test_crafted_checkpoints_are_one_line_errors(trained, tmp_path, change, match, capsys):
    data, out = trained
    run_dir = tmp_path / "crafted-run"
    (run_dir / "checkpoints").mkdir(parents=True)
    path = crafted(tmp_path, checkpoint_files(out)[0], change)
    os.replace(path, run_dir / "checkpoints" / "e0002-s0000006.pt")
    r = cli_result(capsys, "train", "--resume", run_dir, "--data", data)
    assert match in one_line_error(r, EXIT_CHECKPOINT)


def test_a_corrupt_newest_checkpoint_stops_counting_as_the_newest(trained, capsys):
    data, out = trained
    newest = checkpoint_files(out)[0]
    newest.write_bytes(b"garbage")
    r = cli_result(capsys, "train", "--resume", out, "--epochs", 3)
    assert r.returncode == 0, r.stderr
    assert "falling back" in r.stderr and "Traceback" not in r.stderr
    assert newest.with_name(newest.name + ".bad").exists()
    names = [p.name for p in checkpoint_files(out)]
    assert names == ["e0003-s0000009.pt", "e0002-s0000006.pt"]  # e0002 trained again
    assert load_checkpoint(newest)["state"]["step"] == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"].endswith("e0003-s0000009.pt")


def test_warnings_go_to_stderr_so_json_output_parses(trained, capsys):
    _, out = trained
    checkpoint_files(out)[0].write_bytes(b"garbage")
    r = cli_result(capsys, "evaluate", out, "--json")
    assert r.returncode == 0, r.stderr
    assert "falling back" in r.stderr
    result = json.loads(r.stdout)
    assert result["checkpoint"].endswith("e0001-s0000003.pt")


def test_a_signal_during_evaluation_saves_at_once_and_resumes_exactly(
    tiny_folder, tmp_path, cache_dir, monkeypatch
):
    """SIGINT (or SIGTERM) arriving while an epoch is evaluated: the run saves that epoch's
    training and stops (exit 130), without training a further step; also in the last epoch.
    The resumed run ends bitwise where an uninterrupted run ends."""
    from cifar_resnet import loop
    from cifar_resnet.data import load_data
    from cifar_resnet.train import fit

    bundle = load_data(str(tiny_folder))
    config_kw = dict(epochs=2, batch_size=16, deterministic=True, precision="fp32")
    from cifar_resnet.config import TrainConfig

    config = TrainConfig(**config_kw)
    reference = fit(config, bundle, tmp_path / "ref", device="cpu", quiet=True)
    real = loop.evaluate
    for sig, epoch in ((signal.SIGINT, 1), (signal.SIGTERM, 2)):
        calls = []

        def evaluate_with_a_signal(*args, _sig=sig, _epoch=epoch, calls=calls, **kwargs):
            calls.append(1)
            if len(calls) == _epoch:
                os.kill(os.getpid(), _sig)
            return real(*args, **kwargs)

        monkeypatch.setattr(loop, "evaluate", evaluate_with_a_signal)
        out = tmp_path / f"run-{int(sig)}"
        resume = None if epoch == 1 else "auto"
        if epoch == 2:  # train epoch 1 first, then signal during the last epoch's evaluation
            monkeypatch.setattr(loop, "evaluate", real)
            fit(TrainConfig(**{**config_kw, "epochs": 1}), bundle, out, device="cpu", quiet=True)
            monkeypatch.setattr(loop, "evaluate", evaluate_with_a_signal)
            calls.append(1)
        with pytest.raises(Interrupted, match=f"signal {int(sig)}") as e:
            fit(config, bundle, out, device="cpu", quiet=True, resume=resume)
        assert e.value.exit_code == EXIT_INTERRUPTED
        saved = load_checkpoint(checkpoint_files(out)[0])
        assert saved["state"]["step"] == 3 * epoch  # the epoch's steps, not one more
        monkeypatch.setattr(loop, "evaluate", real)
        done = fit(config, bundle, out, device="cpu", quiet=True, resume="auto")
        assert done["weights_sha256"] == reference["weights_sha256"]
        assert done["test_accuracy"] == reference["test_accuracy"]


@pytest.mark.alone
def test_a_time_budget_holds_when_the_machine_slows_down_mid_epoch(tiny_folder, monkeypatch):
    """Steps slower than the probe measured, then twice as slow again from 40% of the budget,
    in epochs as long as 40% of the budget: re-planning within epochs keeps the run within
    5% of its budget, and the schedule is laid over the steps that really ran (the sleeps
    dominate the step time, so the machine's own speed hardly matters)."""
    import time

    from cifar_resnet import loop, probe
    from cifar_resnet.config import TrainConfig
    from cifar_resnet.data import load_data
    from cifar_resnet.optim import Schedule
    from cifar_resnet.train import fit

    budget, started = 12.0, time.perf_counter()
    real = loop.train_step

    def slow_step(*args, **kwargs):
        real(*args, **kwargs)
        time.sleep(0.1 if time.perf_counter() - started < 0.4 * budget else 0.2)

    monkeypatch.setattr(loop, "train_step", slow_step)
    real_probe = probe._probe

    def probe_at_full_speed(run, part):  # the probe shares the loop: it times the real step
        with monkeypatch.context() as m:
            m.setattr(loop, "train_step", real)
            return real_probe(run, part)

    monkeypatch.setattr(probe, "_probe", probe_at_full_speed)
    bundle = load_data(str(tiny_folder))
    config = TrainConfig(time_budget=budget, batch_size=1, schedule="onecycle", epochs=1000)
    logs = []
    out = Path(str(tiny_folder) + "-run")
    summary = fit(config, bundle, out, device="cpu", log=logs.append, started=started)
    took = time.perf_counter() - started
    assert took <= 1.05 * budget, (took, [m for m in logs if "budget" in m][-5:])
    assert took >= 0.5 * budget  # it used the budget, not a cautious fraction of it
    assert any("re-planned" in m for m in logs)
    assert summary["steps"] == summary["planned_steps"]
    from cifar_resnet.config import load_toml, resolve_config

    _, saved = resolve_config(None, load_toml(str(out / "config.toml")))
    assert saved == config  # the recipe as given: the plan lives in the run's schedule
    assert Schedule.of(saved, 48, summary["steps"]).lr(summary["steps"] - 1) < 0.2 * saved.lr
