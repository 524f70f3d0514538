"""The recipe's one table: each TrainConfig field's help, group and allowed values, read by
validation and by the command line alike; `train --help` grouped; `presets` and `models`
described (all in process: building the parser imports no torch)."""

import dataclasses

import pytest

from cifar_resnet.cli import build_parser
from cifar_resnet.cli.flags import GROUPS
from cifar_resnet.config import TrainConfig, resolve_config
from cifar_resnet.errors import UsageError

CHOICE_FIELDS = [f for f in dataclasses.fields(TrainConfig) if f.metadata["choices"]]


def _train_actions():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest: a for a in sub.choices["train"]._actions}, sub.choices


def test_every_field_has_its_help_and_group_next_to_it():
    for f in dataclasses.fields(TrainConfig):
        assert len(f.metadata["help"]) > 15, f.name  # advice, not the name again
        assert f.metadata["group"] in GROUPS, f.name


@pytest.mark.parametrize("f", CHOICE_FIELDS, ids=lambda f: f.name)
def test_validation_and_flags_read_the_same_choices(f):
    actions, _ = _train_actions()
    assert tuple(actions[f.name].choices) == f.metadata["choices"]
    for value in f.metadata["choices"]:  # every listed value is valid ...
        TrainConfig(**{f.name: value}, lr_milestones=[10]).validate()  # (multistep's)
    bad = 7 if isinstance(f.metadata["choices"][-1], int) else "nonsense"
    with pytest.raises(UsageError, match=f"{f.name} must be one of"):  # ... and no other
        TrainConfig(**{f.name: bad}).validate()


def test_shortcut_is_folded_into_the_model_name_once():
    _, config = resolve_config(None, None, {"model": "resnet20", "shortcut": "B"})
    assert (config.model, config.shortcut) == ("resnet20b", "")
    _, config = resolve_config(None, None, {"model": "resnet56b", "shortcut": "A"})
    assert (config.model, config.shortcut) == ("resnet56", "")
    _, config = resolve_config(None, None, {"model": "resnet20"})
    assert config.model == "resnet20"


def test_train_help_is_grouped_and_shows_only_meaningful_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    positions = [text.index(f"\n{group}:\n") for group in GROUPS]
    assert positions == sorted(positions)  # data, model, ..., runtime and distributed
    assert "(default: '')" not in text and "(default: [])" not in text
    flat = " ".join(text.split())
    # A value some preset sets is the preset's, not the seed's: no default shown.
    assert "0.1 suits batch 128 --momentum" in flat and "(default: 0.1)" not in flat
    assert "--keep N how many epoch checkpoints to keep in RUN/checkpoints (default: 2)" in flat
    assert "--shortcut {A,B}" in flat and "keeps the preset's value" in flat
    schedule = text[text.index("\nschedule and length:\n") :]
    assert schedule.index("--lr-milestones") < schedule.index("\naugmentation")


def test_models_and_presets_say_what_they_list(capsys):
    _, commands = _train_actions()
    for name in ("models", "presets"):
        assert len(commands[name].description) > 60
    args = build_parser().parse_args(["presets"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "seed: for reproducing the seed post" in text
    assert "about 9 h on a 2-core CPU, about 4 min on an H100" in text
    assert "64,000 steps" in text and "--time-budget 5m" in text
