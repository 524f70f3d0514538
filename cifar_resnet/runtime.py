"""Where and how a run computes: device, precision, memory layout, compile and CUDA graphs,
determinism and seeding, resolved once from the recipe into one :class:`Runtime`."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from .config import TrainConfig
from .errors import UsageError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype; None is fp32
    channels_last: bool
    compile: bool
    cuda_graph: bool  # the whole training step replayed as one CUDA graph
    rank: int = 0  # this process's shard of the data (torchrun's RANK) ...
    world_size: int = 1  # ... of this many

    def autocast(self):
        return torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.bfloat16,
            enabled=self.amp_dtype is not None,
        )

    def describe(self) -> str:
        """e.g. ``cuda:0, torch.bfloat16, channels_last, CUDA graph``."""
        parts = [str(self.device), str(self.amp_dtype or "fp32")]
        parts += ["channels_last"] * self.channels_last + ["compiled"] * self.compile
        return ", ".join(parts + ["CUDA graph"] * self.cuda_graph)


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU if one is visible), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unknown = f"unknown device {name!r}; valid devices: auto, cpu, cuda, cuda:N"
    if name != "cpu" and name != "cuda" and not name.startswith("cuda:"):
        raise UsageError(unknown)
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(unknown) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {name} was asked for but no CUDA GPU is visible; "
                "use --device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {name}: only {torch.cuda.device_count()} GPU(s) are visible"
            )
    return device


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and far slower than fp32 (measured ~100x on an AVX2-only EPYC)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (auto, fp32, bf16) on ``device``; None is fp32."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return {"fp32": None, "bf16": torch.bfloat16}[precision]


def resolve_runtime(
    config: TrainConfig,
    device: torch.device,
    distributed: bool,
    rank: int = 0,
    world_size: int = 1,
) -> Runtime:
    """The run's Runtime; also sets torch's global determinism and cuDNN autotuning flags.

    channels_last ``auto`` is on: NHWC was 1.3x faster per fp32 step on the 2-core AVX2 CPU
    (oneDNN) and is what cuDNN's bf16 kernels want. compile ``auto`` is off: on the CPU
    torch.compile gave no gain after 20-45 s of compiling, and on a GPU the whole step is a
    CUDA graph instead (BENCHMARKS.md). The graph is single-process (DDP's all-reduce is not
    captured) and off with ``deterministic``.
    """
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return Runtime(
        device=device,
        amp_dtype=resolve_precision(config.precision, device),
        channels_last=config.channels_last != "off",
        compile=config.compile == "on",
        cuda_graph=device.type == "cuda" and not config.deterministic and not distributed,
        rank=rank,
        world_size=world_size,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
