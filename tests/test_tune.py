"""tune: a study of real `train` runs on tiny data. Six trials with --jobs 2 on the default
SQLite storage whose best.toml re-trains to the recorded accuracy; two tune commands joining
one study on a real PostgreSQL server; kill -9 of a worker and Ctrl-C, then --resume; a trial
pruned, then the final seeds; bad input as one line before any trial runs."""

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from conftest import noise_folder, one_line_error

import cifar_resnet
from cifar_resnet.cli import main

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# Every trial: 2 epochs on 80 training images of 8x8 pixels, bitwise reproducible.
TRAIN = ["--epochs", "2", "--batch-size", "16", "--precision", "fp32", "--deterministic"]
SPACE = ["--param", "lr=0.005..0.5:log", "--param", "label_smoothing=0..0.2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two classes of noisy 8x8 images whose brightness overlaps: trials reach different
    validation accuracies."""
    root = tmp_path_factory.mktemp("tune") / "data"
    counts = {"train": 56, "test": 8}
    return noise_folder(root, {"a": 150, "b": 110}, counts, 8, 60, seed=1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tune-cache")
    return dict(os.environ, CIFAR_RESNET_CACHE=str(cache))


def tune_cmd(data, out, *extra) -> list[str]:
    cmd = [sys.executable, "-m", "cifar_resnet", "tune", "--data", str(data), "--out", str(out)]
    return cmd + ["--device", "cpu", "--val-split", "32", *TRAIN, *SPACE, *map(str, extra)]


def run(cmd, env, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def load(out, storage=None, name=None) -> optuna.Study:
    url = storage or f"sqlite:///{Path(out).absolute() / 'study.db'}"
    return optuna.load_study(study_name=name or Path(out).name, storage=url)


def states(study) -> dict[int, str]:
    return {t.number: t.state.name for t in study.get_trials()}


def final_val(run_dir: Path) -> float:
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    return float(rows[-1].split(",")[header.index("val_acc")])


def test_six_trials_two_jobs_sqlite_best_recipe_retrains(data, env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CIFAR_RESNET_CACHE", env["CIFAR_RESNET_CACHE"])
    out = tmp_path / "study"
    done = run(tune_cmd(data, out, "--trials", 6, "--jobs", 2), env)
    assert done.returncode == 0, done.stderr
    study = load(out)
    trials = study.get_trials()
    assert len(trials) == 6 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert len({t.params["lr"] for t in trials}) == 6  # distinct sampled values
    assert len({t.params["label_smoothing"] for t in trials}) == 6
    for t in trials:  # each trial a normal run folder, recorded with its number
        folder = out / "trials" / f"{t.number:04d}"
        record = json.loads((folder.parent / f"{folder.name}.trial.json").read_text())
        assert record["trial"] == t.number and record["params"] == t.params
        run_json = json.loads((folder / "run.json").read_text())
        assert run_json["val_images"] == 32 and run_json["test_images"] == 2  # no test to judge
        assert t.intermediate_values and max(t.intermediate_values) <= 2
        if t.state.name == "COMPLETE":
            assert t.value == pytest.approx(final_val(folder))
    best = study.best_trial
    assert f"| 1 | {best.number} | {best.value:.2f} |" in done.stdout
    assert (out / "best.toml").is_file() and str(out / "best.toml") in done.stdout

    # best.toml is the whole recipe: train --config re-trains the best trial bitwise, on the
    # same share of the cores (threads) as its trial had.
    threads, again = torch.get_num_threads(), tmp_path / "again"
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    given = os.environ.get("OMP_NUM_THREADS", "")  # a lower limit holds for trials too
    torch.set_num_threads(min(share, int(given)) if given.isdigit() and int(given) else share)
    try:
        assert cli(capsys, "train", "--data", data, "--out", again, "--config", out / "best.toml",
                   "--device", "cpu", "--no-report").returncode == 0  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert final_val(again) == pytest.approx(best.value)
    trial_dir = out / "trials" / f"{best.number:04d}"
    summary = json.loads((trial_dir / "summary.json").read_text())
    assert (
        json.loads((again / "summary.json").read_text())["weights_sha256"]
        == (summary["weights_sha256"])
    )

    # report STUDY: history, importances, a slice per parameter
    assert cli(capsys, "report", out).returncode == 0
    report = (out / "report.md").read_text()
    for name in ("history.png", "importances.png", "slice-lr.png", "slice-label_smoothing.png"):
        assert (out / name).stat().st_size > 1000 and f"({name})" in report


def _fail_or_skip(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI: cannot start PostgreSQL: {reason}")
    pytest.skip(reason)


@pytest.fixture
def postgres():
    """A PostgreSQL 15 server of its own, on a Unix socket in a temporary folder, started as
    the postgres user when we are root (the server refuses to run as root); stopped after."""
    if not (PG_BIN / "initdb").is_file():
        _fail_or_skip(f"PostgreSQL 15 is not installed ({PG_BIN / 'initdb'} is missing)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _fail_or_skip("psycopg is not installed (pip install 'psycopg[binary]')")
    root = Path(tempfile.mkdtemp(prefix="tune-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            _fail_or_skip("running as root without runuser to start the server as postgres")
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    steps = [
        [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
        [str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l", str(root / "log")]
        + ["-o", f"-k {root} -c listen_addresses='' -p 5432 -F", "start"],
    ]
    for step in steps:
        done = subprocess.run(as_user + step, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            _fail_or_skip(f"{Path(step[0]).name} failed: {done.stderr.strip()[-300:]}")
    try:
        yield f"postgresql://postgres@/postgres?host={root}&port=5432"
    finally:
        stop = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
        subprocess.run(as_user + stop, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_commands_join_one_study_on_postgresql(data, env, tmp_path, postgres):
    out = tmp_path / "shared-study"  # as a SLURM array on a shared file system
    env = dict(env, OMP_NUM_THREADS="1")  # two commands on one machine: a core each
    cmd = tune_cmd(data, out, "--trials", 4, "--storage", postgres, "--study-name", "pg")
    first = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    time.sleep(1.0)
    second = run(cmd, env)
    first_out, first_err = first.communicate(timeout=240)
    assert first.returncode == 0 and second.returncode == 0, (first_err, second.stderr)
    study = load(out, postgres, "pg")
    trials = study.get_trials()
    assert len(trials) == 4 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert len({t.params["lr"] for t in trials}) == 4
    workers = {t.user_attrs["worker_pid"] for t in trials}
    assert len(workers) == 2  # both commands ran trials
    runs = sorted(p.name for p in (out / "trials").iterdir() if p.is_dir())
    assert runs == [f"{n:04d}" for n in range(4)]
    assert "study.db" not in os.listdir(out)  # the study lives in PostgreSQL


def _running_trial(out: Path, skip=()) -> tuple[int, int] | None:
    """(trial number, worker pid) of a trial whose first epoch is recorded."""
    for record in sorted((out / "trials").glob("*.trial.json")):
        folder = record.parent / record.name.removesuffix(".trial.json")
        info = json.loads(record.read_text())
        if info["trial"] in skip or (folder / "summary.json").exists():
            continue
        if (folder / "metrics.csv").is_file():
            return info["trial"], info["worker_pid"]
    return None


def _unlocked(run_dir: Path) -> bool:
    """No training process holds the run folder (its .lock)."""
    with open(run_dir / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def _wait_for(what, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = what()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_kill_9_and_ctrl_c_then_resume(data, env, tmp_path, monkeypatch):
    out = tmp_path / "study"
    # Long trials (20 epochs), so that a worker can be killed mid-trial.
    cmd = tune_cmd(data, out, "--trials", 3, "--jobs", 2, "--heartbeat", 1, "--epochs", 20)
    cmd += ["--retry-failed", "1"]  # a trial whose worker dies is run again, once
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    killed, pid = _wait_for(lambda: _running_trial(out))
    os.kill(pid, signal.SIGKILL)
    before = {t.number: (t.state.name, t.params, t.value) for t in load(out).get_trials()}
    stopped, _ = _wait_for(lambda: _running_trial(out, skip={killed}))
    proc.send_signal(signal.SIGINT)  # Ctrl-C: the trial under way saves, the study is kept
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"cifar-resnet tune --resume {out}" in err.strip().splitlines()[-1]
    study = load(out)
    trials = {t.number: t for t in study.get_trials()}
    assert trials[killed].state.name in ("RUNNING", "FAIL")  # FAIL once its heartbeat is stale
    assert trials[stopped].state.name == "FAIL" and trials[stopped].user_attrs["interrupted"]
    for number in (killed, stopped):  # both runs saved by their SIGTERM / SIGINT
        folder = out / "trials" / f"{number:04d}"
        assert list((folder / "checkpoints").glob("*.pt")), number
        _wait_for(lambda f=folder: _unlocked(f))  # the killed worker's child ends on its own
        log = (folder.parent / f"{folder.name}.train.log").read_text()
        assert "stopped by signal" in log, (number, killed, stopped, log[-300:])
    waiting = [t for t in trials.values() if t.state.name == "WAITING"]
    assert [t.user_attrs["retry_of"] for t in waiting] == [stopped]  # queued to run again

    # Continue through the API.
    monkeypatch.setenv("CIFAR_RESNET_CACHE", env["CIFAR_RESNET_CACHE"])
    resumed = cifar_resnet.tune(out=out, resume=True)
    after = {t.number: t for t in resumed.get_trials()}
    finished = [t for t in after.values() if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3
    assert after[killed].state.name == "FAIL" and after[stopped].state.name == "FAIL"
    assert not after[killed].user_attrs.get("interrupted")  # the heartbeat's verdict
    assert any(t.params == trials[stopped].params for t in finished)  # the stopped point
    assert any(t.params == trials[killed].params for t in finished)  # --retry-failed 1
    for number, (state, params, value) in before.items():
        if number not in (killed, stopped) and state in ("COMPLETE", "PRUNED"):
            assert (after[number].state.name, after[number].params, after[number].value) == (
                state,
                params,
                value,
            )
    assert (out / "best.toml").is_file()


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


@pytest.mark.parametrize(
    "flags, code, message",
    [
        (["--param", "lrr=0.1..1"], 2, "unknown field 'lrr'"),
        (["--param", "lr=0.5..0.1"], 2, "the range of lr is empty"),
        (["--param", "label_smoothing=0..1"], 2, "the recipe refuses label_smoothing = 1.0"),
        (["--param", "batch_size=16|0"], 2, "the recipe refuses batch_size = 0"),
        (["--param", "lr=0.1..1", "--lr", "0.2"], 2, "lr is both fixed (--lr) and searched"),
        (["--param", "lr=0.1..1", "--sampler", "grid"], 2, "the grid sampler takes choices"),
        (
            ["--param", "lr=0.1..1", "--preset", "fast", "--pruner", "median"],
            2,
            "--pruner median judges a trial after each evaluated epoch",
        ),
        (["--param", "lr=0.1..1", "--epochs", "0"], 2, "epochs must be positive"),
    ],
)
def test_bad_search_is_one_line_before_any_trial(data, tmp_path, capsys, flags, code, message):
    out = tmp_path / "study"
    result = cli(capsys, "tune", "--data", data, "--out", out, "--device", "cpu", *flags)
    assert message in one_line_error(result, code)
    assert not out.exists()


def test_unreachable_storage_is_one_line_within_seconds(data, tmp_path, capsys, env, monkeypatch):
    monkeypatch.setenv("CIFAR_RESNET_CACHE", env["CIFAR_RESNET_CACHE"])
    out = tmp_path / "study"
    silent = socket.socket()  # accepts connections and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    port = silent.getsockname()[1]
    for url in (
        "postgresql://tuner:secret@127.0.0.1:1/study",  # nothing listens: refused at once
        f"postgresql://tuner:secret@127.0.0.1:{port}/study",  # a server that never answers
    ):
        t0 = time.monotonic()
        result = cli(capsys, "tune", "--data", data, "--out", out, "--device", "cpu",
                     "--val-split", 32, "--param", "lr=0.1..1", "--storage", url)  # fmt: skip
        line = one_line_error(result, 5)
        assert time.monotonic() - t0 < 30
        assert "cannot reach the study's storage" in line and "secret" not in line
        assert not out.exists()
    silent.close()


def test_resume_refuses_flags_that_would_change_the_study(tmp_path, capsys):
    result = cli(capsys, "tune", "--resume", tmp_path, "--lr", "0.2", "--param", "lr=0.1..1")
    line = one_line_error(result, 2)
    assert "drop --param, --lr" in line and "--trials" in line


def test_a_trial_behind_the_median_is_pruned_then_final_seeds(
    tiny_folder, tmp_path, env, monkeypatch, capsys
):
    """Two trials queued in order: lr 0.05 reaches 100% validation after epoch 1 on these
    images, lr 1e-9 stays at 50% (bitwise reproducible runs, checked); with --pruner-startup 1
    the second is behind the first's median and is stopped after its first epoch. Then the
    best recipe on all training images with 2 seeds, evaluated on the test set once."""
    monkeypatch.setenv("CIFAR_RESNET_CACHE", env["CIFAR_RESNET_CACHE"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "study"
    out.mkdir()
    queued = optuna.create_study(
        study_name="study", storage=f"sqlite:///{out / 'study.db'}", direction="maximize"
    )
    queued.enqueue_trial({"lr": 0.05, "epochs": 2})
    queued.enqueue_trial({"lr": 1e-9, "epochs": 100})  # long: it is still running when judged
    recipe = {"batch_size": 4, "precision": "fp32", "deterministic": True}
    space = ["lr=1e-9..0.1:log", "epochs=2|100"]
    study = cifar_resnet.tune(tiny_folder, out, space, trials=2, val_split=16,
                              pruner="median", pruner_startup=1, overrides=recipe, device="cpu",
                              final_seeds=2)  # fmt: skip
    printed = capsys.readouterr().out
    first, second = study.get_trials()
    assert first.state.name == "COMPLETE" and first.intermediate_values[1] == 100.0
    assert second.state.name == "PRUNED" and second.user_attrs["pruned_at_epoch"] == 1
    assert second.intermediate_values == {1: 50.0}
    folder = out / "trials" / "0001"
    assert (
        "stopped by signal 15" in (folder.parent / f"{folder.name}.train.log").read_text()
    )  # saved, then stopped
    assert list((folder / "checkpoints").glob("*.pt"))
    assert not (folder / "summary.json").exists()

    final = json.loads((out / "final" / "summary.json").read_text())
    assert final["seeds"] == [0, 1]
    assert json.loads((out / "final" / "seed-0" / "run.json").read_text())["val_images"] == 0
    acc = final["aggregate"]["test_accuracy"]
    assert f"test accuracy {acc['mean']:.2f}% ± {acc['std']:.2f}" in printed
