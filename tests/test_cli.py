"""The command line end to end: real subprocesses where the process is the subject (its start,
its signals, a time budget counted from its start, a first run and its resume), in process
elsewhere; real data where it matters."""

import json
import subprocess
import sys

import pytest
from conftest import CIFAR_JPEG, cli_argv, cli_result, one_line_error, run_cli

from cifar_resnet.rundir import read_metrics

QUICK = ["--epochs", 2, "--batch-size", 16, "--device", "cpu", "--quiet"]


def test_train_evaluate_resume_on_tiny_folder(tiny_folder, tmp_path, cache_dir):
    out = tmp_path / "run"
    r = run_cli("train", "--data", tiny_folder, "--out", out, *QUICK)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 2 and summary["steps"] == 2 * 3
    for name in ("config.toml", "metrics.csv", "summary.json", "run.json"):
        assert (out / name).is_file()
    assert [int(r["epoch"]) for r in read_metrics(out)] == [1, 2]
    run_meta = json.loads((out / "run.json").read_text())
    assert run_meta["classes"] == ["bright", "dark"]
    r = run_cli("train", "--resume", out, "--data", tiny_folder, "--epochs", 3, "--quiet")
    assert r.returncode == 0, r.stderr
    assert [int(r["epoch"]) for r in read_metrics(out)] == [1, 2, 3]
    r = run_cli("train", "--resume", out, "--data", tiny_folder, "--model", "resnet20", "--quiet")
    assert "holds a seed model but the run asks for resnet20" in one_line_error(r, 4)


def test_config_file_and_flags(tiny_folder, tmp_path, cache_dir, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('preset = "paper"\nsteps = 4\nlr = 0.05\n')
    out = tmp_path / "run"
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", out,
                   "--config", cfg, "--lr", 0.02, "--batch-size", 16, "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    text = (out / "config.toml").read_text()
    assert 'preset = "paper"' in text and "lr = 0.02" in text and "steps = 4" in text
    assert 'model = "resnet20"' in text and "padding = 4" in text


@pytest.mark.parametrize(
    "args,code,match",
    [
        (["--model", "resnet19"], 2, "unknown model 'resnet19'; did you mean 'resnet18'? valid"),
        (["--preset", "turbo"], 2, "invalid choice: 'turbo' (choose from 'seed', 'paper', 'fast'"),
        (["--epochs", 0], 2, "epochs must be positive"),
        (["--batch-size", -4], 2, "batch_size must be positive"),
        (["--lr", 0], 2, "lr must be a positive number"),
        (["--bogus", 1], 2, "unrecognized arguments: --bogus"),
        (["--lr", "1e4", "--epochs", 60], 6, "the loss became non-finite at epoch"),
    ],
)
def test_bad_input_is_one_line_with_exit_code(
    tiny_folder, tmp_path, cache_dir, args, code, match, capsys
):
    out = tmp_path / "run"
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", out, "--epochs", 1,
                   "--batch-size", 16, *args)  # fmt: skip
    assert match in one_line_error(r, code)


def test_divergence_keeps_last_good_checkpoint(tiny_folder, tmp_path, cache_dir, capsys):
    import torch

    from cifar_resnet.checkpoint import latest_valid

    out = tmp_path / "run"
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", out, *QUICK[:-1],
                   "--epochs", 60, "--lr", "1e4", "--keep", 60)  # fmt: skip
    line = one_line_error(r, 6)
    bad_epoch = int(line.split("non-finite at epoch ")[1].split(",")[0])
    _, ckpt = latest_valid(out)
    assert ckpt["state"]["epoch"] == bad_epoch - 1  # nothing saved from the diverged epoch
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert len(read_metrics(out)) == bad_epoch - 1


def test_missing_data_and_unwritable_out(tiny_folder, tmp_path, cache_dir, capsys):
    r = cli_result(capsys, "train", "--data", tmp_path / "nope", "--out", tmp_path / "run")
    assert "nope" in one_line_error(r, 3)
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", blocker / "run", *QUICK)
    assert "cannot write to the output folder" in one_line_error(r, 5)


def test_models_and_presets_commands():
    r = run_cli("models")
    assert r.returncode == 0 and "resnet110" in r.stdout and "175,258" in r.stdout
    r = run_cli("presets")
    assert r.returncode == 0 and "paper" in r.stdout and "lr_milestones=[32000, 48000]" in r.stdout


@pytest.mark.skipif(not CIFAR_JPEG.is_dir(), reason="needs ../shared/data/cifar10-jpeg")
def test_real_cifar10_subset_train_evaluate_resume(tmp_path, cifar_jpeg):
    """5,000 training / 1,000 test images of the real data, the seed net: 3 epochs (evaluated
    after the last), then resumed for a fourth."""
    out = tmp_path / "run"
    common = ["--data", CIFAR_JPEG, "--limit-train", 5000, "--limit-test", 1000]
    r = run_cli("train", *common, "--out", out, "--epochs", 3, "--batch-size", 64, "--lr", 0.05,
                "--schedule", "onecycle", "--eval-every", 0, "--device", "cpu")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "[2] Test Loss:" not in r.stdout  # --eval-every 0: only the last epoch
    last = [line for line in r.stdout.splitlines() if line.startswith("[3] Test Loss:")]
    assert last, r.stdout
    printed = float(last[0].split("Accuracy: ")[1].split("%")[0])
    assert printed >= 40.0
    r = run_cli("evaluate", out, "--json")  # the run remembers its data and its test subset
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert round(result["accuracy"], 2) == printed
    assert result["count"] == 1000 and len(result["confusion"]) == 10
    r = run_cli("train", "--resume", out, "--epochs", 4)  # and --resume needs no --data
    assert r.returncode == 0, r.stderr
    assert "[4] Test Loss:" in r.stdout and "[3] Test Loss" not in r.stdout
    assert [int(r["epoch"]) for r in read_metrics(out)] == [1, 2, 3, 4]


def test_time_budget_plans_steps_and_completes_the_schedule(tiny_folder, tmp_path, cache_dir):
    out = tmp_path / "run"
    r = run_cli("train", "--data", tiny_folder, "--out", out, "--time-budget", "12s",
                "--schedule", "onecycle", "--batch-size", 16, "--device", "cpu")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "time budget 12s:" in r.stdout and "steps planned" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["planned_steps"] == summary["steps"] > 0
    # config.toml keeps the recipe; the schedule is laid over the steps that ran: the last
    # one had the schedule's last lr (onecycle's decay ran to its end, not cut off).
    from cifar_resnet.config import load_toml, resolve_config
    from cifar_resnet.optim import Schedule

    _, saved = resolve_config(None, load_toml(str(out / "config.toml")))
    assert saved.steps == 0 and saved.time_budget == 12
    steps, last = summary["steps"], read_metrics(out)[-1]
    assert float(last["lr"]) == pytest.approx(Schedule.of(saved, 3, steps).lr(steps - 1))
    assert float(last["lr"]) < 0.5 * saved.lr


def test_budget_schedule_shrinks_decays_in_proportion():
    from cifar_resnet.config import TrainConfig
    from cifar_resnet.optim import Schedule

    recipe = TrainConfig(epochs=300, lr_step=50)
    c = Schedule.of(recipe, 10).laid_over(30 * 10).laid
    assert (c.steps, c.lr_step) == (300, 5)
    assert Schedule.of(recipe, 10).laid is recipe  # its own length: the recipe as it is
    paper = TrainConfig(steps=64000, schedule="multistep", lr_milestones=[32000, 48000])
    schedule = Schedule.of(paper, 391).laid_over(6400)
    assert schedule.laid.lr_milestones == [3200, 4800]
    assert [schedule.lr(s) for s in (3199, 3200, 4800)] == pytest.approx([0.1, 0.01, 0.001])
    assert schedule.recipe is paper  # re-planning leaves the recipe as it was


def test_target_accuracy_stops_early(tiny_folder, tmp_path, cache_dir, capsys):
    out = tmp_path / "run"
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", out, "--epochs", 40,
                   "--batch-size", 16, "--target-accuracy", 90, "--target-split", "test",
                   "--device", "cpu")  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] >= 90 and summary["epochs"] < 40
    assert summary["target_seconds"] > 0 and "target accuracy 90% reached" in r.stdout
    r = cli_result(
        capsys, "train", "--data", tiny_folder, "--out", tmp_path / "r2", "--target-accuracy", 90
    )
    assert "add --val-split N" in one_line_error(r, 2)


def test_batch_larger_than_the_dataset_trains_one_batch_per_epoch(
    tiny_folder, tmp_path, cache_dir, capsys
):
    out = tmp_path / "run"
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", out, "--epochs", 2,
                   "--batch-size", 1000, "--device", "cpu", "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["steps"] == 2


def test_resume_with_another_class_list_is_refused(tiny_folder, tmp_path, cache_dir, capsys):
    from PIL import Image

    out = tmp_path / "run"
    assert cli_result(capsys, "train", "--data", tiny_folder, "--out", out, *QUICK).returncode == 0
    other = tmp_path / "other"
    for split in ("train", "test"):
        for cls in ("cats", "dogs"):
            (other / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(other / split / cls / f"{i}.png")
    r = cli_result(capsys, "train", "--resume", out, "--data", other, "--epochs", 3)
    assert "differ from the checkpoint's ['bright', 'dark']" in one_line_error(r, 3)


def test_second_sigint_exits_at_once_and_leaves_checkpoints_valid(tiny_folder, tmp_path, cache_dir):
    import signal
    import time

    from cifar_resnet.checkpoint import checkpoint_files, load_checkpoint

    out = tmp_path / "run"
    args = ["train", "--data", tiny_folder, "--out", out, "--epochs", 500, "--batch-size", 4,
            "--save-every-steps", 1, "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(
        cli_argv(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("[1]"):
            break
    proc.send_signal(signal.SIGINT)
    time.sleep(0.001)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 130
    for path in checkpoint_files(out):
        load_checkpoint(path)  # every checkpoint left behind is whole


def test_ema_tensorboard_report_predict_export(tiny_folder, tmp_path, cache_dir, capsys):
    from cifar_resnet.checkpoint import latest_valid

    out = tmp_path / "run"
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", out, "--epochs", 2,
                   "--batch-size", 16, "--ema", 0.9, "--tensorboard",
                   "--device", "cpu")  # fmt: skip
    assert r.returncode == 0, r.stderr
    last = read_metrics(out)[-1]
    assert last["ema_test_acc"] is not None
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "ema" in latest_valid(out)[1]
    for png in ("curves.png", "confusion.png", "per_class.png", "wrong.png"):
        assert (out / png).stat().st_size > 1000
    assert "curves.png" in (out / "report.md").read_text()
    r = cli_result(capsys, "evaluate", out, "--data", tiny_folder, "--ema", "--json")
    assert round(json.loads(r.stdout)["accuracy"], 6) == round(float(last["ema_test_acc"]), 6)

    image = next((tiny_folder / "test" / "dark").iterdir())
    r = cli_result(capsys, "predict", out, image, "--json", "--top-k", 2)
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout.splitlines()[0])
    assert first["class"] in ("bright", "dark") and len(first["top_k"]) == 2
    exported = tmp_path / "model.onnx"
    r = cli_result(
        capsys, "export", out, "--format", "onnx", "--out", exported, "--data", tiny_folder
    )
    assert r.returncode == 0, r.stderr
    r2 = cli_result(capsys, "predict", exported, image, "--json")
    assert json.loads(r2.stdout.splitlines()[0])["class"] == first["class"]


def test_tensorboard_missing_is_a_one_line_install_hint(tmp_path, monkeypatch):
    from cifar_resnet.errors import UsageError
    from cifar_resnet.rundir import RunDir

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    with pytest.raises(UsageError, match=r"pip install 'cifar-resnet\[tensorboard\]'"):
        RunDir(tmp_path).tensorboard()


def test_no_progress_bar_in_logs_when_stdout_is_not_a_terminal(
    tiny_folder, tmp_path, cache_dir, capsys
):
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", tmp_path / "run",
                   "--epochs", 2, "--batch-size", 16, "--device", "cpu")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "[2] Test Loss:" in r.stdout
    for stream in (r.stdout, r.stderr):
        assert "\r" not in stream and "step/s" not in stream and "it/s" not in stream
