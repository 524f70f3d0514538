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

import gc
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
        raise DistributedError(
            f"environment variable {name}={value!r} is not an integer; launch with torchrun"
        ) from None


def from_env() -> DistInfo:
    """The process's place in the job, from torchrun's environment (1 process if unset)."""
    return DistInfo(_env_int("RANK", 0), _env_int("LOCAL_RANK", 0), _env_int("WORLD_SIZE", 1))


def setup(
    device: torch.device, backend: str = "auto", timeout_s: float = 600.0
) -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by torchrun; returns (info, this rank's device)."""
    info = from_env()
    if not info.enabled:
        return info, device
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"local rank {info.local_rank} has no GPU (only "
                f"{torch.cuda.device_count()} visible); lower --nproc_per_node"
            )
        torch.cuda.set_device(info.local_rank)
        device = torch.device("cuda", info.local_rank)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise UsageError(f"unknown --dist-backend {backend!r}; valid: auto, nccl, gloo")
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            timeout=timedelta(seconds=timeout_s),
            **({"device_id": device} if backend == "nccl" else {}),
        )
    return info, device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # objects still holding the group (a DDP model in a cycle) go first
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (nothing in a single process)."""
    if is_enabled():
        dist.barrier()


def is_enabled() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (identity in a single process)."""
    if not is_enabled():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_(t: torch.Tensor) -> None:
    """Sum a tensor over all ranks in place (nothing in a single process)."""
    if is_enabled():
        dist.all_reduce(t)


def all_mean(values: list[float], device: torch.device) -> list[float]:
    """Average a few numbers over all ranks (identity in a single process)."""
    world = dist.get_world_size() if is_enabled() else 1
    return [v / world for v in all_sum(values, device)]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (e.g. a signal reached one rank)."""
    if not is_enabled():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them
    before each forward, so after an epoch's last step every rank still holds the statistics
    of its own share; evaluation and the weights digest need the same model on all ranks."""
    if is_enabled():
        for buf in model.buffers():
            dist.broadcast(buf, 0)


class _AllReduce(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of the output gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch (all ranks).

    PyTorch's SyncBatchNorm runs only on GPUs (DDP refuses it on CPU modules), so on CPUs
    (gloo) ``--sync-bn`` swaps BatchNorm2d layers to this class: the same parameters and
    buffers, so checkpoints are unchanged. Mean and variance are all-reduced with the
    autograd-aware ``_AllReduce``, whose backward sums the statistics' gradients over ranks,
    as SyncBatchNorm's backward does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_enabled()):
            return super().forward(x)
        c = x.shape[1]
        count = torch.full((1,), x.numel() // c, dtype=x.dtype, device=x.device)
        sums = _AllReduce.apply(torch.cat([x.sum((0, 2, 3)), count]))
        n = sums[c]
        mean = sums[:c] / n
        centred = x - mean.view(1, c, 1, 1)
        var = _AllReduce.apply(centred.square().sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp(min=1), m)
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


def convert_sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """BatchNorm over the global batch: SyncBatchNorm on GPUs, ``_GlobalBatchNorm2d`` on CPUs
    (converted in place; the parameters, buffers and state_dict keys stay the same)."""
    if device.type != "cpu":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) is torch.nn.BatchNorm2d:
            module.__class__ = _GlobalBatchNorm2d
    return model
