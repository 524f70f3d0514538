"""Data-parallel training as real multi-process runs on this CPU (gloo backend).

Ranks are started by ``torch.multiprocessing.spawn`` (each sets torchrun's environment,
RANK / LOCAL_RANK / WORLD_SIZE with MASTER_ADDR / MASTER_PORT, and calls ``train.fit``) or by
``torchrun`` itself running the command line. Every job gets its own free port, so tests never
collide with each other or with other jobs on the machine. Each rank uses one thread: two
ranks fit on two cores.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import cli_argv, noise_folder
from torch.nn.parallel import DistributedDataParallel as DDP

from cifar_resnet.checkpoint import checkpoint_files, latest_valid, load_checkpoint
from cifar_resnet.config import TrainConfig
from cifar_resnet.data import load_data
from cifar_resnet.rundir import read_metrics

# 3 classes x 86 training images of 16x16: 258 images, so batch 128 makes 3 global steps an
# epoch (the last one of 2 images, 1 per rank). 3 x 25 test images: 75, split 38/37 over ranks.
CLASSES, N_TRAIN, N_TEST, SIZE = 3, 86, 25, 16
STEPS_PER_EPOCH = -(-CLASSES * N_TRAIN // 128)

# 2 ranks x 64 with SyncBatchNorm against 1 process x 128, fp32, deterministic kernels: the same
# images per step and the same BatchNorm statistics; only the order of floating-point sums
# differs (gradients averaged over ranks, statistics all-reduced). Training this tiny net on
# noise images amplifies rounding quickly, so the tolerance is per epoch (3 steps at lr 0.02).
# Measured maximum absolute difference over all parameters and buffers: 1.5e-3 after epoch 1,
# 1.9e-2 after epoch 2; without SyncBatchNorm the same comparison gives 3.8e-2 and 0.21, so the
# tolerances below still catch unsynchronised BatchNorm or a wrong data order.
SYNC_BN_ATOL = {1: 5e-3, 2: 5e-2}

RECIPE = dict(
    epochs=2,
    batch_size=128,
    lr=0.02,
    precision="fp32",
    sync_bn=True,
    deterministic=True,
    eval_batch_size=16,
    seed=3,
    keep=5,
)
RANK_ENV = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_env(rank: int, world: int, port: int) -> None:
    for name in RANK_ENV:
        os.environ.pop(name, None)
    if world > 1:
        os.environ.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )


def _worker(rank: int, world: int, port: int, job: dict) -> None:
    """One rank: train (``fit``) or evaluate a checkpoint; writes its result as JSON."""
    _rank_env(rank, world, port)
    torch.set_num_threads(1)
    from cifar_resnet.train import fit

    bundle = job["bundle"]
    if job["mode"] == "evaluate":
        result = _evaluate_sharded(job["checkpoint"], bundle, rank, world)
    else:
        _count_models_alive_at_teardown(job["results"], rank)
        resume = None
        if job.get("resume"):
            resume = latest_valid(job["out"])[1]
        result = fit(
            TrainConfig(**job["config"]).validate(),
            bundle,
            job["out"],
            device="cpu",
            quiet=True,
            resume=resume,
            dist_backend="gloo",
            dist_timeout=60,
        )
    Path(job["results"], f"rank{rank}.json").write_text(json.dumps(result))


def _count_models_alive_at_teardown(results: str, rank: int) -> None:
    """Record how many DDP models are still alive when the process group is destroyed
    (a gloo group destroyed under a live DDP model can abort the process at exit: SIGABRT,
    'terminate called without an active exception', in about one run in five here)."""
    import gc

    import torch.distributed as dist

    destroy = dist.destroy_process_group

    def counting_destroy(*args, **kwargs):
        alive = sum(isinstance(o, DDP) for o in gc.get_objects())
        Path(results, f"rank{rank}.teardown").write_text(str(alive))
        return destroy(*args, **kwargs)

    dist.destroy_process_group = counting_destroy


def _evaluate_sharded(checkpoint: str, bundle, rank: int, world: int) -> dict:
    from cifar_resnet import distributed
    from cifar_resnet.checkpoint import load_model
    from cifar_resnet.evaluate import evaluate
    from cifar_resnet.loader import DeviceLoader

    distributed.setup(torch.device("cpu"), "gloo", 60)
    try:
        ckpt = load_checkpoint(checkpoint)
        loader = DeviceLoader(
            bundle.test.images,
            bundle.test.labels,
            16,
            train=False,
            mean=ckpt["mean"],
            std=ckpt["std"],
            rank=rank,
            world_size=world,
        )
        shard = len(loader._eval_shard())
        result = evaluate(load_model(ckpt), loader, num_classes=len(ckpt["classes"]))
        return {**result, "shard": shard}
    finally:
        distributed.cleanup()


def spawn(world: int, job: dict, results: Path) -> list[dict]:
    """Run ``job`` on ``world`` processes; every rank's result, by rank."""
    results.mkdir(parents=True)
    mp.spawn(
        _worker,
        args=(world, free_port(), {**job, "results": str(results)}),
        nprocs=world,
        join=True,
    )
    return [json.loads((results / f"rank{r}.json").read_text()) for r in range(world)]


def train(world: int, out: Path, bundle, resume: bool = False, **overrides) -> list[dict]:
    job = {
        "mode": "fit",
        "config": {**RECIPE, **overrides},
        "bundle": bundle,
        "out": str(out),
        "resume": resume,
    }
    return spawn(world, job, out.parent / f"{out.name}-results-{time.monotonic_ns()}")


def weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def torchrun(nproc: int, *args):
    port = free_port()
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--max-restarts",
        "0",
        "-m",
        "cifar_resnet",
        *map(str, args),
    ]


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in RANK_ENV}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    classes = {f"c{c}": base for c, base in enumerate((50, 128, 200))}
    counts = {"train": N_TRAIN, "test": N_TEST}
    root = tmp_path_factory.mktemp("ddp") / "three"
    return noise_folder(root, classes, counts, size=SIZE, spread=60, seed=11)


@pytest.fixture(scope="module")
def bundle(folder, tmp_path_factory):
    return load_data(str(folder), cache_dir=str(tmp_path_factory.mktemp("decoded")))


@pytest.fixture(scope="module")
def runs(bundle, tmp_path_factory):
    """The same recipe on 2 ranks x 64 (SyncBatchNorm) and on 1 process x 128, 2 epochs."""
    root = tmp_path_factory.mktemp("runs")
    two = train(2, root / "two", bundle)
    one = train(1, root / "one", bundle)
    return {"root": root, "two": (root / "two", two), "one": (root / "one", one)}


# ----------------------------------------------------------------------------- tests


def test_every_rank_holds_bitwise_identical_weights(runs):
    run_dir, summaries = runs["two"]
    assert [s["steps"] for s in summaries] == [2 * STEPS_PER_EPOCH] * 2
    digests = {s["weights_sha256"] for s in summaries}
    assert len(digests) == 1, digests
    # Only rank 0 writes; its checkpoint is the unwrapped model every rank holds.
    assert "checkpoint" in summaries[0] and "checkpoint" not in summaries[1]
    from cifar_resnet.checkpoint import load_model
    from cifar_resnet.train import weights_digest

    newest = checkpoint_files(run_dir)[0]
    assert newest.name == f"e0002-s{2 * STEPS_PER_EPOCH:07d}.pt"
    assert weights_digest(load_model(str(newest))) == summaries[0]["weights_sha256"]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["world_size"] == 2 and run["sync_bn"] is True


def test_no_model_holds_the_process_group_when_it_is_destroyed(runs):
    teardown = sorted(runs["root"].glob("two-results-*/rank*.teardown"))
    assert [int(p.read_text()) for p in teardown] == [0, 0]


def test_without_sync_bn_ranks_still_agree(bundle, tmp_path):
    """DDP broadcasts rank 0's BatchNorm buffers: weights and buffers agree bitwise anyway."""
    summaries = train(2, tmp_path / "plain", bundle, sync_bn=False, epochs=1)
    assert summaries[0]["weights_sha256"] == summaries[1]["weights_sha256"]


def test_sync_bn_two_by_64_matches_one_by_128(runs):
    (two_dir, two), (one_dir, one) = runs["two"], runs["one"]
    assert two[0]["steps"] == one[0]["steps"] == 2 * STEPS_PER_EPOCH
    for epoch in (1, 2):
        name = f"e{epoch:04d}-s{epoch * STEPS_PER_EPOCH:07d}.pt"
        diff = max_diff(
            weights(two_dir / "checkpoints" / name), weights(one_dir / "checkpoints" / name)
        )
        print(f"SyncBN 2x64 vs 1x128 after epoch {epoch}: max abs difference {diff:.3g}")
        assert diff <= SYNC_BN_ATOL[epoch]
    # The recorded losses agree as closely; the metrics describe the same training.
    for a, b in zip(read_metrics(two_dir), read_metrics(one_dir), strict=True):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-2)
        assert a["step"] == b["step"]


def test_distributed_evaluation_equals_single_process_evaluation(runs, folder, bundle, tmp_path):
    run_dir, summaries = runs["two"]
    newest = checkpoint_files(run_dir)[0]
    r = subprocess.run(
        cli_argv(
            "evaluate",
            newest,
            "--data",
            folder,
            "--device",
            "cpu",
            "--json",
            "--eval-batch-size",
            1000,
        ),
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert r.returncode == 0, r.stderr
    single = json.loads(r.stdout)
    assert single["count"] == CLASSES * N_TEST
    # The DDP run's own final evaluation (sharded 38/37, batches of 16) ...
    # (JSON output carries 10 significant digits; the counts below are compared exactly)
    assert summaries[0]["test_accuracy"] == pytest.approx(single["accuracy"], abs=1e-7)
    assert read_metrics(run_dir)[-1]["test_acc"] == pytest.approx(single["accuracy"], abs=1e-7)
    assert summaries[0]["test_loss"] == pytest.approx(single["loss"], rel=1e-5)
    # ... and a 2-rank evaluation of the same checkpoint: every image counted exactly once.
    ranks = spawn(
        2, {"mode": "evaluate", "checkpoint": str(newest), "bundle": bundle}, tmp_path / "eval"
    )
    assert [r["shard"] for r in ranks] == [38, 37]
    for result in ranks:
        assert result["count"] == single["count"]
        assert result["correct"] == single["correct"]
        assert result["accuracy"] == pytest.approx(single["accuracy"], abs=1e-7)
        assert result["confusion"] == single["confusion"]
        assert result["loss"] == pytest.approx(single["loss"], rel=1e-5)


def _continue(src: Path, dst: Path, epoch: int) -> None:
    """A copy of run ``src`` as it was after ``epoch`` epochs (newer checkpoints dropped)."""
    shutil.copytree(src, dst)
    for path in checkpoint_files(dst):
        if int(path.name[1:5]) > epoch:
            path.unlink()


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2), (2, 2)])
def test_resume_with_another_number_of_processes(runs, bundle, first, then):
    """Epoch 1 on ``first`` processes, epoch 2 on ``then``: the checkpoint loads either way,
    the run continues at epoch 2 with epoch 2's data order, and ends where the uninterrupted
    run on ``first`` processes ends (within the SyncBN tolerance)."""
    name = {2: "two", 1: "one"}
    src = runs[name[first]][0]
    out = runs["root"] / f"resumed-{first}-then-{then}"
    _continue(src, out, 1)
    summaries = train(then, out, bundle, resume=True)
    assert {s["epochs"] for s in summaries} == {2}
    assert {s["steps"] for s in summaries} == {2 * STEPS_PER_EPOCH}
    rows = read_metrics(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["step"]) for r in rows] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert json.loads((out / "run.json").read_text())["world_size"] == then
    assert [p.name for p in checkpoint_files(out)][0] == f"e0002-s{2 * STEPS_PER_EPOCH:07d}.pt"
    final = weights(checkpoint_files(out)[0])
    for ref in ("two", "one"):
        diff = max_diff(final, weights(checkpoint_files(runs[ref][0])[0]))
        print(f"{first} then {then} processes vs uninterrupted {ref}: max abs diff {diff:.3g}")
        assert diff <= SYNC_BN_ATOL[2]
    # The same process count on both sides reproduces the uninterrupted run bitwise.
    if then == first:
        assert summaries[0]["weights_sha256"] == runs[name[first]][1][0]["weights_sha256"]


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *_descendants(child)]
    return found


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(e[5:]) for e in env if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def test_killed_rank_fails_the_job_and_resume_auto_continues(folder, tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        folder,
        "--out",
        out,
        "--epochs",
        4,
        "--batch-size",
        16,
        "--lr",
        0.02,
        "--device",
        "cpu",
        "--dist-backend",
        "gloo",
        "--dist-timeout",
        30,
        "--resume",
        "auto",
        "--quiet",
    ]
    log = (tmp_path / "torchrun.log").open("w+")
    job = subprocess.Popen(
        torchrun(2, *args),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=clean_env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((out / "checkpoints").glob("e0001-*.pt")):
            assert job.poll() is None, "the job ended before its first epoch"
            assert time.monotonic() < deadline, "no first-epoch checkpoint within 120 s"
            time.sleep(0.05)
        victims = [p for p in _descendants(job.pid) if _rank_of(p) == 1]
        assert victims, "rank 1's process not found"
        killed_at = time.monotonic()
        os.kill(victims[0], signal.SIGKILL)
        code = job.wait(timeout=60)
        took = time.monotonic() - killed_at
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    log.seek(0)
    text = log.read()
    assert code != 0, text
    assert took < 60
    assert "ChildFailedError" in text and "rank      : 1" in text, text
    assert not (out / "summary.json").exists()
    done_before = len(read_metrics(out))
    assert 1 <= done_before < 4, text
    # Restart the same command (--resume auto): it continues from the newest checkpoint.
    r = subprocess.run(
        torchrun(2, *args), capture_output=True, text=True, timeout=180, env=clean_env()
    )
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 4
    rows = read_metrics(out)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    steps = -(-CLASSES * N_TRAIN // 16)
    assert [int(row["step"]) for row in rows] == [steps * e for e in (1, 2, 3, 4)]
