"""The step and the loop over steps: ``train_one_epoch`` yields after every step and its caller
decides; stopping to do something between steps changes nothing; ``fit`` takes its run
options as one object or as keywords."""

import numpy as np
import pytest
import torch

from cifar_resnet.config import TrainConfig
from cifar_resnet.data import ArraySplit, DataBundle
from cifar_resnet.loop import settle, train_one_epoch, train_steps
from cifar_resnet.models import ModelSpec
from cifar_resnet.run import RunOptions, RunState
from cifar_resnet.train import fit, weights_digest
from cifar_resnet.trainer import build_trainer, start


def _bundle(n: int = 40) -> DataBundle:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    images = (rng.integers(0, 60, (n, 8, 8, 3)) + 150 * labels[:, None, None, None]).astype(
        np.uint8
    )
    split = ArraySplit(images, labels.astype(np.int64))
    return DataBundle(split, split, ["a", "b"], "synthetic")


CONFIG = TrainConfig(steps=9, batch_size=8, schedule="onecycle", ema=0.9, lookahead=2)


def _trainer(config: TrainConfig = CONFIG):
    runtime, splits = start(config, _bundle(), torch.device("cpu"))
    return build_trainer(config, splits, runtime, ModelSpec.new("seed", 2))


def test_one_epoch_yields_after_each_step_and_a_pause_changes_nothing():
    t = _trainer()
    state = RunState()
    assert list(train_one_epoch(t, state)) == [1, 2, 3, 4, 5]  # 40 images, batch 8
    assert state.epoch_step == 5 and state.epoch_sums[2] == 40
    settle(t, state)
    assert 0 < state.epoch_sums[0] and 0 <= state.epoch_sums[1] <= 40
    straight = weights_digest(t.model)

    t, state = _trainer(), RunState()
    for done in train_one_epoch(t, state):
        if done == 2:  # the caller stops after step 2, saves what a checkpoint would ...
            break
    settle(t, state)
    assert (state.step, state.epoch_step) == (2, 2)
    for _ in train_one_epoch(t, state):  # ... and goes on where it stopped
        pass
    assert state.step == 5 and weights_digest(t.model) == straight


def test_train_steps_runs_epochs_to_the_schedules_end():
    t, state = _trainer(), RunState()
    assert list(train_steps(t, state)) == list(range(1, 10))
    assert state.epoch == 2 and [row["step"] for row in state.metrics] == [5, 9]
    assert t.schedule.lr(8) == pytest.approx(0.0, abs=0.02)  # onecycle ends near 0


def test_fit_takes_run_options_as_one_object_or_as_keywords(tmp_path):
    config = TrainConfig(steps=2, batch_size=8)
    a = fit(config, _bundle(), tmp_path / "a", RunOptions(device="cpu", quiet=True))
    b = fit(config, _bundle(), tmp_path / "b", device="cpu", quiet=True)
    assert a["weights_sha256"] == b["weights_sha256"] and a["steps"] == 2
    with pytest.raises(TypeError):
        fit(config, _bundle(), tmp_path / "c", devise="cpu")
