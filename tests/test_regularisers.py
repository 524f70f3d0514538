"""The regularisers keep the run's guarantees: per-image parameters drawn from the ``(seed,
epoch)`` generator, so ``--deterministic`` runs repeat bitwise, a run killed with SIGKILL
mid-epoch resumes bitwise, and any number of processes sees the same global batches."""

import json
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from conftest import cli_argv, noise_folder, run_cli
from test_distributed import STEPS_PER_EPOCH as DDP_STEPS
from test_distributed import bundle, folder, train  # noqa: F401 - fixtures
from test_resume import ENV, newest_name, wait_for_writes

from cifar_resnet.checkpoint import checkpoint_files, load_checkpoint
from cifar_resnet.loader import DeviceLoader
from cifar_resnet.mixing import BatchAugment
from cifar_resnet.rundir import read_metrics

POLICIES = {
    "autoaugment": dict(policy="cifar10"),
    "randaugment": dict(randaugment=(2, 9)),
    "trivialaugment": dict(trivial=True),
}
EVERYTHING = dict(cutout=4, mixup=0.8, cutmix=1.0, mix_prob=0.9, num_classes=10)


def images(n=50, side=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8), np.arange(n) % 10


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("world", [2, 3])
def test_every_process_count_sees_the_same_global_batches(policy, world):
    x, y = images()
    extra = BatchAugment(**EVERYTHING, **POLICIES[policy])
    kw = dict(padding=2, seed=7, extra=extra)
    one = DeviceLoader(x, y, 16, **kw)
    ranks = [DeviceLoader(x, y, 16, rank=r, world_size=world, **kw) for r in range(world)]
    for epoch in (0, 1):
        for loader in (one, *ranks):
            loader.set_epoch(epoch)
        for (bx, by), *parts in zip(one, *ranks, strict=True):
            assert by.shape == (len(bx), 10)  # soft targets
            assert torch.equal(torch.cat([p[0] for p in parts]), bx)
            assert torch.equal(torch.cat([p[1] for p in parts]), by)


@pytest.mark.parametrize("policy", POLICIES)
def test_batches_are_a_function_of_seed_epoch_and_step(policy):
    x, y = images()
    extra = BatchAugment(**EVERYTHING, **POLICIES[policy])
    a, b = (DeviceLoader(x, y, 16, padding=2, seed=3, extra=extra) for _ in range(2))
    full = list(a)
    assert all(torch.equal(u[0], v[0]) and torch.equal(u[1], v[1]) for u, v in zip(full, b))
    tail = list(a.batches(2))  # a resumed epoch
    assert all(torch.equal(u[0], v[0]) for u, v in zip(full[2:], tail))
    a.set_epoch(1)
    assert not torch.equal(next(iter(a))[0], full[0][0])  # each epoch its own draws
    plain = DeviceLoader(x, y, 16, padding=2, seed=3)
    assert not torch.equal(next(iter(plain))[0], full[0][0])  # the regularisers did something


def test_crops_and_flips_do_not_change_when_regularisers_are_added():
    x, y = images()
    plain = DeviceLoader(x, y, 16, padding=2, seed=3)
    cut = DeviceLoader(x, y, 16, padding=2, seed=3, extra=BatchAugment(cutout=3))
    for (px, py), (cx, cy) in zip(plain, cut):
        assert torch.equal(py, cy)
        keep = (cx != 0).all(1, keepdim=True)  # outside each square: the same pixels
        assert torch.equal(torch.where(keep, px, 0.0), torch.where(keep, cx, 0.0))


# Every new flag at once, on test_resume's 3 classes x 40 images of 8x8, batch 8.
ALL_FLAGS = ["--cutout", 4, "--mixup", 0.8, "--cutmix", 1.0, "--label-smoothing", 0.1,
             "--randaugment", "2,9", "--model", "wrn-10-1", "--dropout", 0.2]  # fmt: skip
TRAIN = ["--deterministic", "--save-every-steps", 3, "--epochs", 2, "--batch-size", 8,
         "--device", "cpu", *ALL_FLAGS]  # fmt: skip


@pytest.fixture(scope="module")
def data3(tmp_path_factory):
    """3 classes x 40 training / 8 test images of 8x8: 15 steps an epoch at batch 8."""
    root = tmp_path_factory.mktemp("data3") / "three"
    classes = {"c0": 40, "c1": 128, "c2": 210}
    return noise_folder(root, classes, {"train": 40, "test": 8}, 8, 40, seed=7)


@pytest.fixture(scope="module")
def reference(data3, tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = run_cli("train", "--data", data3, "--out", out, *TRAIN, env=ENV)
    assert r.returncode == 0, r.stderr
    return out


def test_deterministic_runs_with_every_regulariser_repeat_bitwise(data3, reference, tmp_path):
    r = run_cli("train", "--data", data3, "--out", tmp_path / "again", *TRAIN, env=ENV)
    assert r.returncode == 0, r.stderr
    digest = json.loads((reference / "summary.json").read_text())["weights_sha256"]
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["weights_sha256"] == digest
    config = json.loads((reference / "summary.json").read_text())
    assert config["steps"] == 30


def test_sigkill_mid_epoch_resumes_bitwise_with_every_regulariser(data3, reference, tmp_path):
    out = tmp_path / "run"
    cmd = cli_argv("train", "--data", data3, "--out", out, "--resume", "auto", *TRAIN)
    for _ in range(2):  # each launch killed at its second save: steps 6 and 12 of 15
        pipe = subprocess.PIPE
        p = subprocess.Popen(cmd, stdout=pipe, stderr=pipe, text=True, env=ENV)
        wait_for_writes(p, out, 2, time.monotonic())
        p.kill()
        p.communicate(timeout=60)
        assert p.returncode == -signal.SIGKILL
    killed_at = int(newest_name(out)[7:14])
    assert killed_at % 15, "the kills should land mid-epoch"
    r = run_cli(*cmd[3:], env=ENV)
    assert r.returncode == 0, r.stderr
    a = load_checkpoint(checkpoint_files(out)[0])
    b = load_checkpoint(checkpoint_files(reference)[0])
    for name in b["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert a["state"]["epoch_sums"] == b["state"]["epoch_sums"]


def test_two_processes_train_like_one_with_every_regulariser(bundle, tmp_path):  # noqa: F811
    """test_distributed's recipe (2 x 64 with SyncBatchNorm against 1 x 128) with cutout,
    mixup, CutMix and AutoAugment on: the ranks agree bitwise and train like one process."""
    extra = dict(cutout=8, mixup=0.8, cutmix=1.0, autoaugment="cifar10", epochs=1)
    two = train(2, tmp_path / "two", bundle, **extra)
    one = train(1, tmp_path / "one", bundle, **extra)
    assert two[0]["weights_sha256"] == two[1]["weights_sha256"]
    assert two[0]["steps"] == one[0]["steps"] == DDP_STEPS
    (a,), (b,) = read_metrics(tmp_path / "two"), read_metrics(tmp_path / "one")
    assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-2)
    assert float(a["train_acc"]) == pytest.approx(float(b["train_acc"]), abs=1.0)
