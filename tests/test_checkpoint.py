import os

import pytest
import torch

from cifar_resnet.checkpoint import (
    checkpoint_path,
    latest_valid,
    load_checkpoint,
    prune,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap,
)
from cifar_resnet.errors import CheckpointError, OutputError

META = {"config": {}, "model_name": "seed", "classes": ["a", "b"], "mean": [0.5] * 3,
        "std": [0.5] * 3}  # fmt: skip


def ckpt(v=1.0):
    return {
        "format": "cifar-resnet",
        "model": {"w": torch.full((3,), v)},
        "state": {"epoch": 1},
        **META,
    }


def test_round_trip_and_no_temp_files(tmp_path):
    save_checkpoint(ckpt(), tmp_path / "a.pt")
    assert torch.equal(load_checkpoint(tmp_path / "a.pt")["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["a.pt"]


def test_truncated_checkpoint_is_a_one_line_error_naming_the_file(tmp_path):
    p = tmp_path / "a.pt"
    save_checkpoint(ckpt(), p)
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"a\.pt is corrupt or truncated") as e:
        load_checkpoint(p)
    assert "\n" not in str(e.value)


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Evil.marker}",))


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    Evil.marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save({"format": "cifar-resnet", "model": Evil()}, p)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(p)
    assert not Evil.marker.exists()


def test_latest_valid_falls_back_past_a_corrupt_one(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    save_checkpoint(ckpt(1.0), checkpoint_path(tmp_path, 1, 10))
    save_checkpoint(ckpt(2.0), checkpoint_path(tmp_path, 2, 20))
    checkpoint_path(tmp_path, 2, 20).write_bytes(b"garbage")
    path, c = latest_valid(tmp_path)
    assert path.name == "e0001-s0000010.pt" and c["model"]["w"][0] == 1.0
    assert "falling back" in capsys.readouterr().err


def test_prune_keeps_newest(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for e in range(1, 5):
        save_checkpoint(ckpt(), checkpoint_path(tmp_path, e, e * 10))
    prune(tmp_path, 2)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "e0003-s0000030.pt",
        "e0004-s0000040.pt",
    ]


def test_full_disk_leaves_previous_file_intact(tmp_path, monkeypatch):
    p = tmp_path / "a.pt"
    save_checkpoint(ckpt(1.0), p)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match="the disk is full"):
        save_checkpoint(ckpt(2.0), p)
    monkeypatch.undo()
    assert load_checkpoint(p)["model"]["w"][0] == 1.0
    assert os.listdir(tmp_path) == ["a.pt"]


def test_rng_state_round_trips_through_weights_only(tmp_path):
    import random

    import numpy as np

    save_checkpoint(
        {"format": "cifar-resnet", "model": {}, "rng": rng_state(), **META}, tmp_path / "r.pt"
    )
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_unwrap_compiled_model():
    m = torch.nn.Linear(2, 2)
    assert unwrap(torch.compile(m)) is m
