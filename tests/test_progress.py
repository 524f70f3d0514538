"""What a user sees: progress inside an epoch, flags honoured or refused, runs that remember
their data, interrupted runs explained, plots that show the real schedule."""

import io
import json
import re
import subprocess

import pytest
import torch
from conftest import cli_argv, cli_result, run_cli

from cifar_resnet import __version__
from cifar_resnet.checkpoint import checkpoint_files, load_checkpoint, prune, save_checkpoint
from cifar_resnet.progress import Progress, format_seconds

QUICK = ["--batch-size", 16, "--device", "cpu", "--no-report"]


def test_a_log_file_gets_progress_lines_inside_an_epoch(tiny_folder, tmp_path, cache_dir, capsys):
    out = tmp_path / "run"
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", out, "--epochs", 1, *QUICK)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("[1] "))
    inside = [line for line in lines[:first_epoch] if line.startswith("epoch 1/1 step ")]
    assert inside, r.stdout
    assert all(k in inside[0] for k in ("loss ", "acc ", "lr 0.1", "img/s", "run ETA"))
    assert "\r" not in r.stdout and "\r" not in r.stderr  # no bar redraws in a log
    steps = (out / "steps.csv").read_text().splitlines()
    assert steps[0] == "step,epoch,lr,loss,acc,images_per_s" and len(steps) == 1 + len(inside)


def test_log_every_sets_the_interval(tiny_folder, tmp_path, cache_dir, capsys):
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", tmp_path / "r", "--epochs", 1,
            "--batch-size", 4, "--device", "cpu", "--no-report", "--log-every", 5)  # fmt: skip
    assert r.returncode == 0, r.stderr
    logged = [line.split()[3] for line in r.stdout.splitlines() if line.startswith("epoch 1/1")]
    assert logged == ["5/12", "10/12"]


def test_a_terminal_bar_carries_the_running_figures(capsys):
    progress = Progress(total_steps=20, steps_per_epoch=10, first_step=0, tty=True, log=None,
                        log_every=5)  # fmt: skip
    progress.start_epoch(0, 0)
    progress.step(1, 1, 0.05, lambda: (1.25, 40.0, 8))
    # Figures from the first step, speed and run ETA first (never cut at 80 columns).
    assert progress.bar.desc == "ep 1/2"
    assert re.match(r"\d+im/s ETA \d+s ", progress.bar.postfix), progress.bar.postfix
    assert progress.bar.postfix.endswith("loss 1.25 acc 40.0% lr 0.05")
    for step in range(2, 6):
        progress.step(step, step, 0.05, lambda: (1.25, 40.0, 80))
    progress.close()
    assert progress.rows[0]["step"] == 5 and progress.rows[0]["loss"] == 1.25


class Terminal(io.StringIO):
    """What an 80-column terminal is sent: tqdm draws to it as to a tty."""

    def isatty(self):
        return True

    def lines(self):
        return [part for part in re.split(r"[\r\n]", self.getvalue()) if part.strip()]


def onto_a_terminal(monkeypatch) -> Terminal:
    """Every tqdm bar made from here on draws onto the returned 80-column Terminal, at every
    update (mininterval 0)."""
    import tqdm as tqdm_module

    screen, real = Terminal(), tqdm_module.tqdm.__init__

    def draw_there(self, *args, **kwargs):
        real(self, *args, **{**kwargs, "file": screen, "ncols": 80, "mininterval": 0})

    monkeypatch.setattr(tqdm_module.tqdm, "__init__", draw_there)
    return screen


def test_the_bar_refreshes_every_step_fits_80_columns_and_follows_a_replan(monkeypatch):
    """Every step redraws (tqdm's mininterval 0 here), every drawn line fits 80 columns with
    images/s and the ETA whole, and a re-plan mid-epoch changes the bar's total without a new
    bar (its elapsed time goes on; the loop is not paused)."""
    screen = onto_a_terminal(monkeypatch)
    plan = {"total": 391 * 5}
    progress = Progress(total_steps=lambda: plan["total"], steps_per_epoch=391, first_step=0,
                        tty=True, log=None)  # fmt: skip
    progress.start_epoch(0, 0)
    bar = progress.bar
    figures = iter(range(1, 1000))
    for step in range(1, 41):
        progress.step(step, step, 0.1, lambda: (12.3456, 99.5, 128 * next(figures)))
    assert bar.total == 391
    plan["total"] = 120  # re-planned under a time budget: this epoch is the run's last
    for step in range(41, 46):
        progress.step(step, step, 0.1, lambda: (12.3456, 99.5, 128 * next(figures)))
    assert progress.bar is bar and bar.total == 120 and bar.n == 45
    progress.close()
    drawn = [line for line in screen.lines() if "im/s" in line]
    assert len(drawn) >= 44  # every step but the bar's first draw
    assert all(len(line) <= 80 and re.search(r"\d+im/s ETA \d+[smh]", line) for line in drawn)
    assert drawn[-1].split("|")[2].split()[0] == "45/120", drawn[-1]


def test_format_seconds():
    assert [format_seconds(s) for s in (5, 425, 11520)] == ["5s", "7m05s", "3h12m"]


def test_flags_show_their_choices_and_the_version(tmp_path):
    r = run_cli("train", "--help")
    assert "{step,multistep,cosine,onecycle,constant}" in r.stdout
    assert "{seed,paper,fast,resnet18,wrn}" in r.stdout and "STR" not in r.stdout
    r = run_cli("evaluate", "--help")
    assert "--limit-train" not in r.stdout and "a GPU if one is visible" in r.stdout
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"cifar-resnet {__version__}"


def test_paper_with_epochs_is_refused_and_steps_move_the_milestones(tiny_folder, tmp_path, capsys):
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", tmp_path / "a",
                   "--preset", "paper", "--epochs", 2, *QUICK)  # fmt: skip
    assert r.returncode == 2 and "--epochs has no effect here" in r.stderr, r.stderr
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", tmp_path / "b",
                   "--preset", "paper", "--steps", 6, *QUICK)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "lr_milestones = [3, 4]" in (tmp_path / "b" / "config.toml").read_text()
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", tmp_path / "c",
                   "--preset", "paper", "--steps", 6, "--lr-milestones", "100",
                   *QUICK)  # fmt: skip
    assert "note: lr milestones 100 are at or past the run's last step (6)" in r.stdout


def test_a_run_remembers_its_data_and_an_interrupted_checkpoint_is_named(
    tiny_folder, tmp_path, cache_dir, capsys
):
    """evaluate, report and --resume without --data; evaluate names the (newer, interrupted)
    checkpoint it used; the report's test figure is the final epoch's, as its table says."""
    out = tmp_path / "run"
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", out, "--epochs", 2,
                   "--batch-size", 16, "--device", "cpu", "--tta", 1)  # fmt: skip
    assert r.returncode == 0, r.stderr
    final = json.loads((out / "summary.json").read_text())["test_accuracy"]
    # A Ctrl-C in epoch 3 would save a newer, mid-epoch checkpoint: one with other weights.
    ckpt = load_checkpoint(checkpoint_files(out)[0])
    ckpt["state"].update(epoch_step=1, step=7)
    ckpt["model"] = {k: v.float().neg() if v.is_floating_point() else v
                     for k, v in ckpt["model"].items()}  # fmt: skip
    save_checkpoint(ckpt, out / "checkpoints" / "e0002-s0000007.pt")
    r = cli_result(capsys, "evaluate", out)
    assert r.returncode == 0, r.stderr
    assert "e0002-s0000007.pt (interrupted in epoch 3 at step 7)" in r.stdout.splitlines()[0]
    r = cli_result(capsys, "report", out)
    assert r.returncode == 0, r.stderr
    report = (out / "report.md").read_text()
    assert f"| final test accuracy | {final:.2f}% (epoch 2) |" in report
    assert f"## Test set: {final:.2f}% of 16 images" in report
    assert "`checkpoints/e0002-s0000006.pt` (epoch 2 complete, step 6)" in report
    assert "test-time augmentation level 1" in report and "best test" not in report
    r = cli_result(capsys, "train", "--resume", out, "--epochs", 3, "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["epochs"] == 3


def test_json_floats_are_tidy(tiny_folder, tmp_path, cache_dir, capsys):
    out = tmp_path / "run"
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", out, "--epochs", 1, *QUICK)
    assert r.returncode == 0, r.stderr
    r = cli_result(capsys, "evaluate", out, "--json")
    text = r.stdout
    assert json.loads(text)["count"] == 16
    numbers = [t for t in text.replace(",", " ").replace("]", " ").split() if "." in t]
    assert all(len(t.strip('"').split(".")[1]) <= 10 for t in numbers if t[0].isdigit())


def test_saves_on_a_signal_never_push_out_the_last_end_of_epoch_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for epoch, step in ((1, 3), (1, 4), (1, 5)):  # end of epoch 1, then two Ctrl-C saves
        save_checkpoint(
            {"w": torch.zeros(1)}, tmp_path / "checkpoints" / f"e{epoch:04d}-s{step:07d}.pt"
        )  # noqa: E501
    end = tmp_path / "checkpoints" / "e0001-s0000003.pt"
    prune(tmp_path, 1, protect=[end])
    assert sorted(p.name for p in checkpoint_files(tmp_path)) == [
        "e0001-s0000003.pt",
        "e0001-s0000005.pt",
    ]


def test_the_first_epoch_line_of_an_unevaluated_epoch_reads_cleanly():
    from cifar_resnet.loop import epoch_line

    row = {"epoch": 1, "train_loss": 1.5, "train_acc": 40.0, "lr": 0.1, "epoch_seconds": 2.0,
           "images_per_s": 100.0}  # fmt: skip
    assert epoch_line(row).startswith("[1] train loss 1.5000 acc 40.00% | lr 0.1")


@pytest.mark.filterwarnings("ignore")
def test_the_lr_plot_has_every_logged_step(tmp_path):
    from cifar_resnet.plots import _lr_points

    rows = [{"epoch": 1.0, "step": 10.0, "lr": 0.5}, {"epoch": 2.0, "step": 20.0, "lr": 0.1}]
    steps = [{"step": float(s), "lr": s / 10} for s in range(1, 10)]
    x, y = _lr_points(rows, steps, 10)
    assert len(x) == 11 and x[:3] == [0.1, 0.2, 0.3] and y[-1] == 0.1


def test_a_closed_pipe_is_not_a_traceback():
    """`cifar-resnet ... | head`: the reader goes away; exit 141 like a program SIGPIPE ends,
    nothing on stderr."""
    p = subprocess.Popen(cli_argv("presets"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    p.stdout.close()  # before the command writes its first line
    _, err = p.communicate(timeout=120)
    assert p.returncode == 141 and b"Traceback" not in err, err


def test_speed_counts_only_the_images_since_the_epoch_went_on(monkeypatch):
    """An epoch resumed at 400 images: 80 more in 2 s is 40 img/s."""
    from cifar_resnet import progress as progress_module

    clock = iter([100.0, 100.0, 102.0])
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    progress = Progress(total_steps=20, steps_per_epoch=10, first_step=5, tty=False,
                        log=None, log_every=6)  # fmt: skip
    progress.start_epoch(0, 5, images=400)
    progress.step(6, 6, 0.05, lambda: (1.0, 50.0, 480))
    assert progress.rows[0]["images_per_s"] == 40.0


def test_the_budget_probe_and_the_report_show_a_bar_naming_their_part(
    monkeypatch, tiny_folder, tmp_path, subset_run
):
    """Long waits outside the epochs are not silent on a terminal: the time budget's probe and
    the report draw a bar naming the part under way (and nothing when not a terminal)."""
    from conftest import load_subset

    from cifar_resnet.config import TrainConfig
    from cifar_resnet.data import load_data
    from cifar_resnet.progress import Phases
    from cifar_resnet.report import write_report
    from cifar_resnet.train import fit

    screen = onto_a_terminal(monkeypatch)
    config = TrainConfig(time_budget=4.0, batch_size=8, epochs=1000, precision="fp32")
    bundle = load_data(str(tiny_folder), progress=False)
    fit(config, bundle, tmp_path / "run", device="cpu", progress=True, log=lambda m: None)

    def parts(name):  # the part each drawn line names ("NAME: 1 done, 00:03, PART")
        drawn = [re.match(rf"{name}: \d+ done, [\d:]+, (.*)", line) for line in screen.lines()]
        return [m[1].strip() for m in drawn if m]

    probe = parts("timing")
    assert {"a checkpoint save", "training steps", "an evaluation"} <= set(probe), screen.lines()
    screen.seek(0), screen.truncate()
    run, data, cache = subset_run
    bar = Phases("report", True)
    write_report(run, load_subset(data, cache), bar)
    bar.close()
    report = parts("report")
    assert "run: evaluating the test images" in report, screen.lines()
    assert report[-1] == "run: the most confidently wrong images"
    assert Phases("report", False).bar is None  # a log: the caller's line alone
