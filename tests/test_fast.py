"""The fast preset's parts: schedule, augmentation, lookahead, parameter groups, TTA, presets,
and an exact resume with all of them on."""

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import cli_result, noise_folder, one_line_error

from cifar_resnet.checkpoint import checkpoint_files
from cifar_resnet.config import TrainConfig, preset_config, resolve_config
from cifar_resnet.evaluate import tta_logits
from cifar_resnet.loader import DeviceLoader
from cifar_resnet.models import create_model
from cifar_resnet.optim import Lookahead, Schedule, lr_at, make_optimizer
from cifar_resnet.rundir import read_metrics
from cifar_resnet.runtime import Runtime
from cifar_resnet.step import CudaGraph, Trainer, train_step


def test_onecycle_start_and_end_factors_follow_airbench():
    c = TrainConfig(
        schedule="onecycle", lr=2.0, warmup_fraction=0.25, lr_start_factor=0.2, lr_end_factor=0.07
    )
    total = 100
    lrs = [lr_at(c, s, 10, total) for s in range(total)]
    assert lrs[0] == pytest.approx(2.0 * (0.2 + 0.8 / 25))
    assert max(lrs) == pytest.approx(2.0) and lrs.index(max(lrs)) == 24  # peak ends warm-up
    assert lrs[-1] == pytest.approx(2.0 * (0.07 + 0.93 / 75))
    assert all(a >= b for a, b in zip(lrs[24:], lrs[25:]))  # then falls linearly
    assert lr_at(c, total, 10, total) == pytest.approx(2.0 * 0.07)


def test_reflect_crop_equals_reflect_padding_then_crop():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 8, 8, 3), dtype=torch.uint8, generator=g)
    loader = DeviceLoader(
        images,
        torch.zeros(16),
        16,
        padding=2,
        pad_mode="reflect",
        mean=(0, 0, 0),
        std=(1 / 255,) * 3,
    )
    offsets = torch.randint(0, 5, (16, 2), generator=g)
    got = loader.augment(images, offsets, None)
    padded = F.pad(images.permute(0, 3, 1, 2).float(), (2, 2, 2, 2), mode="reflect")
    want = torch.stack([padded[i, :, r : r + 8, c : c + 8] for i, (r, c) in enumerate(offsets)])
    assert torch.equal(got, want)


def test_alternating_flips_invert_every_epoch_and_start_random():
    loader = DeviceLoader(
        torch.zeros(200, 4, 4, 3, dtype=torch.uint8), torch.zeros(200), 10, alt_flip=True, seed=3
    )
    f0, f1, f2 = (loader.epoch_plan(e)[2] for e in range(3))
    assert torch.equal(f1, ~f0) and torch.equal(f2, f0)
    assert 60 < int(f0.sum()) < 140  # a random half, not all or none
    other = DeviceLoader(
        torch.zeros(200, 4, 4, 3, dtype=torch.uint8), torch.zeros(200), 10, alt_flip=True, seed=4
    )
    assert not torch.equal(other.epoch_plan(0)[2], f0)


def test_lookahead_moves_slow_weights_on_schedule_and_ends_on_them():
    model = torch.nn.Linear(3, 2)
    la = Lookahead(model, every=5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    la.after_step(4, 100)  # not a multiple of 5: nothing happens
    assert torch.equal(model.weight, start + 1)
    la.after_step(50, 100)
    decay = 0.95**5 * 0.5**3
    want = start + (1 - decay) * 1.0
    assert torch.allclose(model.weight, want) and torch.allclose(la.slow[0], want)
    with torch.no_grad():
        model.weight.add_(5.0)
    la.finish()
    assert torch.allclose(model.weight, want)


def test_optimizer_groups_scale_norm_lr_and_freeze_the_stem_bias():
    config = preset_config("fast", "cpu")
    model = create_model("fastnet-s")
    opt = make_optimizer(model, config, torch.device("cpu"))
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"norm", "stem", "other"}
    assert groups["norm"]["lr_scale"] == 64 and groups["norm"]["weight_decay"] == pytest.approx(
        config.weight_decay / 64
    )
    assert [p is model.whiten.bias for p in groups["stem"]["params"]] == [True]
    n_trainable = sum(p.requires_grad for p in model.parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == n_trainable
    # The seed recipe keeps one group: old checkpoints and the seed's numerics are unchanged.
    assert len(make_optimizer(create_model("seed"), TrainConfig(), "cpu").param_groups) == 1

    constant = Schedule.of(TrainConfig(schedule="constant", lr=0.5, steps=100), 1)
    runtime = Runtime(torch.device("cpu"), None, False, False, False)
    trainer = Trainer(model, opt, runtime, constant)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    train_step(trainer, x, y, step=10)  # within the first 30%: all learn
    assert float(groups["norm"]["lr"]) == 32.0 and float(groups["stem"]["lr"]) == 0.5
    bias = model.whiten.bias.detach().clone()
    train_step(trainer, x, y, step=30)  # after: the stem bias is frozen
    assert float(groups["stem"]["lr"]) == 0.0 and torch.equal(model.whiten.bias, bias)


def test_tta_levels():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)
    )
    x = torch.randn(2, 3, 8, 8)
    model(x)
    assert torch.equal(tta_logits(model, x, 0), model(x))
    mirror = (model(x) + model(x.flip(3))) / 2
    assert torch.allclose(tta_logits(model, x, 1), mirror)
    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [p[:, :, :8, :8], p[:, :, 2:, 2:]]
    both = sum((model(v) + model(v.flip(3))) / 2 for v in shifted) / 2
    assert torch.allclose(tta_logits(model, x, 2), (mirror + both) / 2, atol=1e-6)


def test_fast_preset_has_cpu_values_that_flags_still_override():
    gpu, cpu = preset_config("fast", "cuda"), preset_config("fast", "cpu")
    assert (gpu.model, gpu.batch_size, gpu.tta) == ("fastnet", 1024, 2)
    assert (cpu.model, cpu.batch_size, cpu.tta) == ("fastnet-s", 256, 1)
    assert (cpu.lr, cpu.weight_decay, cpu.label_smoothing) == (0.65, 1.43e-3, 0.07)
    assert gpu.label_smoothing == 0.2 and gpu.lr == 1.5  # the GPU recipe keeps airbench's
    _, c = resolve_config("fast", {"epochs": 7}, {"model": "fastnet"}, device_type="cpu")
    assert (c.model, c.epochs, c.batch_size) == ("fastnet", 7, 256)
    assert preset_config("seed", "cpu") == preset_config("seed")


@pytest.mark.parametrize(
    "bad",
    [
        dict(tta=3),
        dict(lookahead=-1),
        dict(pad_mode="wrap"),
        dict(norm_lr_scale=0.0),
        dict(warmup_fraction=1.5),
    ],
)
def test_bad_fast_options_are_usage_errors(bad):
    from cifar_resnet.errors import UsageError

    with pytest.raises(UsageError):
        TrainConfig(**bad).validate()


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    """3 classes x 16 training / 4 test images of 16x16 (fastnet pools 16 -> 1)."""
    classes, counts = {"c0": 50, "c1": 128, "c2": 200}, {"train": 16, "test": 4}
    root = tmp_path_factory.mktemp("data16") / "d"
    return noise_folder(root, classes, counts, size=16, spread=50, seed=1)


def test_fast_preset_resumes_bitwise_mid_lookahead(data16, tmp_path, cache_dir, capsys):
    """Lookahead's slow weights, the stem-bias freeze and alternating flips survive a resume:
    a run continued from step 7 (between lookahead updates, before the freeze) ends equal."""
    args = [
        "--preset",
        "fast",
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--epochs",
        "4",
        "--deterministic",
        "--save-every-steps",
        "1",
        "--keep",
        "100",
        "--quiet",
        "--no-report",
    ]

    def train(*extra):
        r = cli_result(capsys, "train", "--data", data16, *extra)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    full = tmp_path / "full"
    done = train("--out", str(full), *args)
    assert done["steps"] == 24  # 6 steps an epoch
    part = tmp_path / "part"
    shutil.copytree(full, part)
    for path in checkpoint_files(part):
        if int(path.stem.split("-s")[-1]) > 7:
            path.unlink()
    resumed = train("--resume", str(part), "--quiet", "--no-report")
    assert resumed["weights_sha256"] == done["weights_sha256"]
    assert math.isclose(resumed["test_accuracy"], done["test_accuracy"])

    # `evaluate --tta 1` reproduces the run's own (mirror-TTA, the CPU preset's) figure.
    def evaluate(*extra):
        r = cli_result(
            capsys, "evaluate", full, "--data", data16, "--device", "cpu", "--json", *extra
        )
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    assert math.isclose(evaluate("--tta", "1")["accuracy"], done["test_accuracy"])
    assert evaluate("--tta", "2")["count"] == 12


def test_solve_steps_counts_evaluations_and_saves():
    from cifar_resnet.budget import BudgetPlan, solve_steps

    # 100 s, 1 s/step, 10 steps/epoch, a 5 s evaluation every epoch: 65 steps (7 epochs, 7
    # evaluations) take exactly 100 s; one more step would not fit.
    steps = solve_steps(100.0, BudgetPlan(0, 1.0, 5.0, 0.0), 10, 1)
    assert steps == 65
    epochs = -(-steps // 10)
    assert steps + 5.0 * epochs <= 100.0 < (steps + 1) + 5.0 * (-(-(steps + 1) // 10))
    assert solve_steps(100.0, BudgetPlan(0, 1.0, 5.0, 0.0), 10, 0) == 95  # one evaluation
    # After epoch 3, evaluating every 2nd: 50 steps are epochs 4-8, evaluated after 4, 6, 8.
    assert solve_steps(53.0, BudgetPlan(0, 1.0, 1.0, 0.0), 10, 2, done_epochs=3) == 50


def test_budget_counts_the_cheaper_early_steps():
    from cifar_resnet.budget import BudgetPlan, solve_steps

    """Progressive resizing: the first 40% of the steps cost 0.5 s, the rest 1 s. 100 steps
    cost 40 x 0.5 + 60 x 1 = 80 s; the plan is the most steps within the time."""
    plan = BudgetPlan(0, 1.0, 0.0, 0.0, early_step_s=0.5, early_fraction=0.4)
    assert plan.seconds(0, 100, 100) == 80.0
    assert plan.seconds(30, 50, 100) == 10 * 0.5 + 10 * 1.0  # early ends at step 40
    n = solve_steps(80.0, plan, 1000, 0)
    assert n == 100 and plan.seconds(0, n + 1, n + 1) > 80.0
    # From global step 10: 34 more steps make a 44-step run, early up to step 18, so steps
    # 10..43 cost 8 x 0.5 + 26 x 1 = 30 s; a 35th would make it 45 steps and 31 s.
    assert plan.steps_within(30.0, 10) == 34
    # A run re-measured 1.5x slower over early steps is 1.5x slower at both sizes.
    plan.rescale(0, 10, 100, 7.5)
    assert (plan.early_step_s, plan.step_s) == (0.75, 1.5)


def test_a_wrong_plan_is_corrected_by_the_runs_own_speed(
    tiny_folder, tmp_path, monkeypatch, cache_dir
):
    """A probe that saw a 10x slower machine plans a tenth of the steps; the run re-plans from
    its measured speed, ends on the new plan and completes the decay (10x: a margin that a
    loaded machine's own slowdown does not close)."""
    from cifar_resnet import probe, train
    from cifar_resnet.data import load_data

    real = probe.plan_steps

    def slow_probe(*args, **kwargs):
        plan = real(*args, **kwargs)
        plan.steps = max(plan.steps // 10, 1)
        return plan

    monkeypatch.setattr(probe, "plan_steps", slow_probe)
    config = TrainConfig(time_budget=12.0, batch_size=8, schedule="onecycle", epochs=1000)
    logs = []
    summary = train.fit(
        config,
        load_data(str(tiny_folder), progress=False),
        tmp_path / "run",
        device="cpu",
        log=logs.append,
    )
    first = next(m for m in logs if "steps planned" in m)
    planned = int(first.split(": ")[1].split()[0]) // 10
    assert any("re-planned" in m for m in logs)
    assert summary["steps"] == summary["planned_steps"] > planned
    assert "steps = 0\n" in (tmp_path / "run" / "config.toml").read_text()  # the recipe


def test_early_scale_trains_the_first_steps_smaller(tiny_folder, tmp_path, monkeypatch):
    """Progressive resizing: the first round(0.3 x 10) steps see 4x4 images (scale 0.5 of
    8x8), the rest 8x8, and the evaluation full size; a time budget times both sizes and
    plans over them."""
    from cifar_resnet import evaluate
    from cifar_resnet.data import load_data
    from cifar_resnet.train import fit

    sides, evaluated = [], []
    step, logits = CudaGraph.run, evaluate.tta_logits

    def recording_step(self, fn, x, y):
        sides.append(tuple(x.shape[2:]))
        return step(self, fn, x, y)

    def recording_logits(model, x, tta=0):
        evaluated.append(tuple(x.shape[2:]))
        return logits(model, x, tta)

    monkeypatch.setattr(CudaGraph, "run", recording_step)
    monkeypatch.setattr(evaluate, "tta_logits", recording_logits)
    bundle = load_data(str(tiny_folder), progress=False)
    config = TrainConfig(steps=10, batch_size=8, early_scale=0.5, early_fraction=0.3)
    fit(config, bundle, tmp_path / "run", device="cpu", quiet=True)
    assert sides == [(4, 4)] * 3 + [(8, 8)] * 7
    assert evaluated and set(evaluated) == {(8, 8)}

    logs = []
    budget = TrainConfig(time_budget=8.0, batch_size=8, early_scale=0.5, schedule="onecycle")
    summary = fit(budget, bundle, tmp_path / "budget", device="cpu", log=logs.append)
    assert any("ms/step" in m and "ms at 4x4 (early steps)" in m for m in logs), logs
    assert summary["steps"] == summary["planned_steps"]
    ran = sides[10:]  # the probe's steps at each size, then the run's
    assert (4, 4) in ran and (8, 8) in ran


def test_early_side_is_a_share_of_the_images_the_model_can_take():
    from cifar_resnet.trainer import early_side

    fast = TrainConfig(model="fastnet-s", early_scale=0.75)
    assert early_side(fast, 32) == 24
    assert early_side(TrainConfig(model="fastnet-s", early_scale=0.1), 32) == 9  # its least
    assert early_side(TrainConfig(model="fastnet-s", early_scale=0.95), 10) == 0  # none smaller
    assert early_side(TrainConfig(model="fastnet-s"), 32) == 0  # off


def test_early_scale_out_of_range_is_a_one_line_error(tiny_folder, tmp_path, capsys):
    r = cli_result(capsys, "train", "--data", tiny_folder, "--out", tmp_path / "r", "--steps", 1,
                "--early-scale", 1.5)  # fmt: skip
    assert "early_scale is a share of the image side in [0, 1)" in one_line_error(r, 2)
    assert not (tmp_path / "r").exists()


def test_a_replan_check_on_the_last_step_still_ends_with_the_evaluation(
    tiny_folder, tmp_path, monkeypatch
):
    """A time-budget run that checks its plan after every step (and keeps it) ends on the
    planned step with the final evaluation done, its summary complete."""
    from cifar_resnet import loop, train
    from cifar_resnet.data import load_data

    monkeypatch.setattr(loop, "_replan_due", lambda run: True)
    monkeypatch.setattr(loop, "replan_steps", lambda *args, **kwargs: None)
    config = TrainConfig(
        time_budget=6.0, batch_size=8, schedule="onecycle", epochs=1000, eval_every=0
    )
    bundle = load_data(str(tiny_folder), progress=False)
    summary = train.fit(config, bundle, tmp_path / "run", device="cpu", quiet=True)
    assert summary["steps"] == summary["planned_steps"]
    assert summary["test_accuracy"] is not None  # evaluated at the end (only then)
    last = read_metrics(tmp_path / "run")[-1]
    assert int(last["step"]) == summary["steps"] and last["test_acc"] is not None
