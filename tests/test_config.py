import pytest
import torch

from cifar_resnet.config import PRESETS, TrainConfig, config_to_toml, resolve_config, tomllib
from cifar_resnet.errors import UsageError
from cifar_resnet.optim import lr_at


def test_seed_preset_is_the_post():
    name, c = resolve_config()
    assert name == "seed"
    assert (c.model, c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay) == (
        "seed",
        300,
        128,
        0.1,
        0.9,
        5e-4,
    )
    assert (c.schedule, c.lr_step, c.lr_gamma, c.padding, c.flip, c.normalize) == (
        "step",
        50,
        0.1,
        1,
        True,
        "half",
    )


def test_paper_preset_is_he_et_al():
    _, c = resolve_config("paper")
    assert (c.steps, c.lr_milestones, c.weight_decay, c.padding, c.normalize) == (
        64000,
        [32000, 48000],
        1e-4,
        4,
        "dataset",
    )


def test_flags_override_file_override_preset():
    _, c = resolve_config("paper", {"lr": 0.05, "weight_decay": 3e-4}, {"lr": 0.01})
    assert (c.lr, c.weight_decay, c.model) == (0.01, 3e-4, "resnet20")


def test_a_length_flag_is_honoured_or_refused_never_ignored():
    """--epochs over a recipe defined in steps is refused (it used to be ignored: --preset
    paper --epochs 2 trained 64000 steps); --steps moves the lr milestones in proportion."""
    with pytest.raises(UsageError, match="--epochs has no effect here.*steps = 64000"):
        resolve_config("paper", None, {"epochs": 2})
    _, c = resolve_config("paper", None, {"steps": 800})
    assert (c.steps, c.lr_milestones) == (800, [400, 600])
    _, c = resolve_config("paper", None, {"steps": 0, "epochs": 2})
    assert (c.steps, c.epochs) == (0, 2)
    _, c = resolve_config("paper", None, {"steps": 800, "lr_milestones": [100]})
    assert c.lr_milestones == [100]  # given milestones are kept as given
    _, c = resolve_config("seed", None, {"epochs": 2})
    assert c.epochs == 2


def test_toml_round_trip():
    for preset in PRESETS:
        name, c = resolve_config(preset, None, {"seed": 3, "flip": False})
        name2, c2 = resolve_config(None, tomllib.loads(config_to_toml(name, c)))
        assert (name2, c2) == (name, c)


@pytest.mark.parametrize(
    "values,match",
    [
        ({"lrr": 0.1}, "unknown option 'lrr'; valid options: model"),
        ({"epochs": 0}, "epochs must be positive"),
        ({"batch_size": -1}, "batch_size must be positive"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"lr": "fast"}, "lr must be float"),
        ({"epochs": 2.5}, "epochs must be int"),
        ({"flip": 1}, "flip must be bool"),
        ({"schedule": "wavy"}, "schedule must be one of"),
    ],
)
def test_bad_values_are_usage_errors(values, match):
    with pytest.raises(UsageError, match=match):
        resolve_config(None, values)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(UsageError, match="valid presets: seed, paper"):
        resolve_config("turbo")


def test_step_schedule_matches_steplr_stepped_after_each_epoch():
    c = TrainConfig(lr=0.1, lr_step=3, lr_gamma=0.1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.1)
    spe = 5
    for epoch in range(10):
        for i in range(spe):
            assert lr_at(c, epoch * spe + i, spe, 50) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


def test_multistep_in_steps_and_onecycle_shape():
    c = TrainConfig(schedule="multistep", lr_milestones=[10, 20], lr=1.0)
    assert [lr_at(c, s, 7, 30) for s in (9, 10, 19, 20)] == pytest.approx([1, 0.1, 0.1, 0.01])
    c = TrainConfig(schedule="onecycle", lr=1.0, warmup_steps=4)
    lrs = [lr_at(c, s, 7, 20) for s in range(20)]
    assert lrs[3] == 1.0 and lrs[0] == 0.25 and lrs[-1] > 0
    assert max(lrs) == 1.0 and all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
