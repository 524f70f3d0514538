"""Data-parallel training the torchrun way: rank, local rank and world size come from the
environment (RANK, LOCAL_RANK, WORLD_SIZE), NCCL on GPUs and gloo on CPUs.

Rules (README, "Several GPUs and machines"):
- ``--batch-size`` is the global batch: each of W ranks trains on its 1/W share of every
  global batch, so the recipe (and its learning rate) means the same at any W.
- Only rank 0 prints, draws progress bars and writes metrics and checkpoints.
- Evaluation shards the split contiguously and sums losses and confusion counts across
  ranks: every image is counted exactly once.
- Collective operations time out after ``--dist-timeout`` seconds, so a dead rank ends the
  job with an error instead of a hang.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import DistributedError, UsageError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer; "
                               "launch with torchrun") from None


def from_env() -> DistInfo:
    """The process's place in the job, from torchrun's environment (1 process if unset)."""
    return DistInfo(_env_int("RANK", 0), _env_int("LOCAL_RANK", 0), _env_int("WORLD_SIZE", 1))


def setup(device: torch.device, backend: str = "auto", timeout_s: float = 600.0
          ) -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by torchrun; returns (info, this rank's device)."""
    info = from_env()
    if not info.enabled:
        return info, device
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise DistributedError(f"local rank {info.local_rank} has no GPU (only "
                                   f"{torch.cuda.device_count()} visible); lower --nproc_per_node")
        torch.cuda.set_device(info.local_rank)
        device = torch.device("cuda", info.local_rank)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise UsageError(f"unknown --dist-backend {backend!r}; valid: auto, nccl, gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                **({"device_id": device} if backend == "nccl" else {}))
    return info, device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_enabled() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (identity in a single process)."""
    if not is_enabled():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (e.g. a signal reached one rank)."""
    if not is_enabled():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
