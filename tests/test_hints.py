"""What a user is told: a run killed before its first checkpoint can be started again, every
hint is a command or call that works as printed, one mistake has one exit code, a misspelt
name is refused before torch is imported and leaves nothing behind."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import cli_result, noise_folder, one_line_error, run_cli

from cifar_resnet.errors import EXIT_CHECKPOINT, EXIT_USAGE

# One intra-op thread: on a shared 2-core machine two threads per process spin against each
# other and a batch-1 step takes 30x longer.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, timeout=300):
    return run_cli(*args, env=ENV, timeout=timeout)


@pytest.fixture
def slow_folder(tmp_path):
    """2 classes x 150 8x8 images: at --batch-size 1 an epoch is 300 steps, seconds long."""
    counts = {"train": 150, "test": 4}
    return noise_folder(tmp_path / "slow", {"bright": 200, "dark": 40}, counts, 8, 30, seed=0)


def kill_before_first_checkpoint(args, out):
    """Start ``cifar-resnet train ARGS``, SIGKILL it once OUT/run.json exists (after config.toml;
    before the first epoch ends), and check that no checkpoint was written."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cifar_resnet", "train", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    deadline = time.monotonic() + 120
    while not (out / "run.json").is_file() and proc.poll() is None:
        assert time.monotonic() < deadline, "the run never wrote run.json"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "config.toml").is_file() and (out / "run.json").is_file()
    assert not list((out / "checkpoints").glob("*.pt")), "killed too late for this test"


def test_a_run_killed_before_its_first_checkpoint_starts_again(slow_folder, tmp_path, cache_dir):
    out = tmp_path / "R"
    train = ["--data", slow_folder, "--out", out, "--resume", "auto", "--batch-size", 1]
    train += ["--epochs", 1, "--device", "cpu", "--no-report", "--quiet"]
    kill_before_first_checkpoint(train, out)
    # The same command again (torchrun --max-restarts, a SLURM requeue) starts the run.
    r = cli("train", *train)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["steps"] == 300
    # --resume R does the same: the recipe and data the folder recorded, from step 0.
    shutil.rmtree(out)
    kill_before_first_checkpoint(train, out)
    r = cli("train", "--resume", out, "--no-report")
    assert r.returncode == 0, r.stderr
    assert "holds no checkpoint yet" in r.stdout and "starting it again" in r.stdout
    assert json.loads((out / "summary.json").read_text())["steps"] == 300


def test_every_hint_is_a_command_that_works(tiny_folder, tmp_path, cache_dir, capsys):
    """(In this process: the commands' output, not the process, is the subject.)"""
    runs = tmp_path / "runs"
    seed = runs / "seed"
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", seed, "--epochs", 1,
                   "--batch-size", 16, "--device", "cpu", "--no-report", "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    # The parent folder of runs: the hint names a run in it, and that command works.
    line = one_line_error(cli_result(capsys, "train", "--resume", runs), EXIT_USAGE)
    assert f"`cifar-resnet train --resume {seed}`" in line
    # A checkpoint file: the hint names its run folder.
    ckpt = next((seed / "checkpoints").glob("*.pt"))
    line = one_line_error(cli_result(capsys, "train", "--resume", ckpt), EXIT_USAGE)
    assert f"`cifar-resnet train --resume {seed}`" in line
    # A new run into it: the hint's command continues it.
    line = one_line_error(
        cli_result(capsys, "train", "--data", tiny_folder, "--out", seed), EXIT_USAGE
    )
    hint = line.split("`")[1]
    assert hint == f"cifar-resnet train --resume {seed}"
    r = cli_result(capsys, *hint.split()[1:], "--epochs", 2, "--quiet", "--no-report")
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["epochs"] == 2, r.stderr
    # A run with no finished epoch: report's hint names the folder, and it is a command.
    stopped = runs / "stopped"
    (stopped / "checkpoints").mkdir(parents=True)
    (stopped / "config.toml").write_text((seed / "config.toml").read_text())
    line = one_line_error(cli_result(capsys, "report", stopped), EXIT_USAGE)
    assert f"`cifar-resnet train --resume {stopped}`" in line


def test_the_python_api_hint_is_a_call(tiny_folder, tmp_path, cache_dir):
    from cifar_resnet import fit, load_data, resolve_config
    from cifar_resnet.errors import UsageError

    bundle = load_data(str(tiny_folder))
    _, config = resolve_config("seed", None, {"epochs": 1, "batch_size": 16})
    out = tmp_path / "api"
    fit(config, bundle, out, device="cpu", quiet=True)
    with pytest.raises(UsageError) as e:
        fit(config, bundle, out, device="cpu", quiet=True)
    assert "fit(..., overwrite=True)" in str(e.value) and "--" not in str(e.value)
    assert fit(config, bundle, out, device="cpu", quiet=True, overwrite=True)["epochs"] == 1


def test_a_missing_run_folder_has_one_exit_code(tmp_path):
    nope = tmp_path / "nope"
    for command in ("report", "evaluate"):
        line = one_line_error(cli(command, nope), EXIT_CHECKPOINT)
        assert str(nope) in line, command


@pytest.mark.parametrize("name,nearest", [("ResNet20", "resnet20"), ("resnet-20", "resnet20")])
def test_a_misspelt_model_is_refused_before_torch_is_imported(tmp_path, name, nearest):
    out = tmp_path / "R"
    code = (
        "import sys\nfrom cifar_resnet.cli import main\n"
        f"rc = main(['train', '--data', 'cifar10', '--out', {str(out)!r}, '--model', {name!r}])\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert r.stdout.split() == ["2", "False"], (r.stdout, r.stderr)
    assert f"unknown model {name!r}; did you mean {nearest!r}?" in r.stderr
    assert not out.exists()


def test_a_run_refused_after_taking_its_folder_leaves_nothing_behind(tiny_folder, tmp_path):
    out = tmp_path / "R"
    r = cli("train", "--data", tiny_folder, "--out", out, "--init-from", tmp_path / "no.pt",
            "--device", "cpu")  # fmt: skip
    assert "no.pt" in one_line_error(r, EXIT_CHECKPOINT)
    assert not out.exists()
    out.mkdir()  # a folder the user made: kept, and left empty
    r = cli("train", "--data", tiny_folder, "--out", out, "--init-from", tmp_path / "no.pt",
            "--device", "cpu")  # fmt: skip
    assert r.returncode == EXIT_CHECKPOINT and out.is_dir() and not list(out.iterdir())
