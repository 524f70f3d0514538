"""The training step, and nothing else: :func:`train_step` reads straight through (lr, the
early steps' downscaling, autocast forward, fp32 loss, backward, the optimizer's step, EMA and
lookahead, device counters). :class:`Trainer` is what a step needs; :class:`CudaGraph` runs
the device part of a step eagerly or, on a GPU, captured once and replayed."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import early_steps
from .loader import DeviceLoader, downscale
from .mixing import hard_labels, mixed_loss
from .optim import Lookahead, Schedule, set_lr, update_ema
from .runtime import Runtime


class StepCounters:
    """The epoch's loss sum, correct count and the first step with a non-finite loss, summed
    on the device, so that a step never waits for the GPU; ``step`` counts global steps."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.first_bad = torch.full((), -1, device=device, dtype=torch.int64)
        self.step = torch.zeros((), device=device, dtype=torch.int64)

    def set(self, loss_sum: float, correct: int, step: int) -> None:
        self.loss_sum.fill_(loss_sum)
        self.correct.fill_(correct)
        self.step.fill_(step)
        self.first_bad.fill_(-1)

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum.add_(loss.double() * y.shape[0])
        self.correct.add_((out.argmax(1) == hard_labels(y)).sum())
        bad = (self.first_bad < 0) & ~torch.isfinite(loss)
        self.first_bad.copy_(torch.where(bad, self.step, self.first_bad))
        self.step.add_(1)


class CudaGraph:
    """Runs a step's device part ``fn(x, y)`` (forward, backward, the optimizer's step, the
    counters): eagerly, or with ``enabled`` captured once into a CUDA graph after ``WARMUP``
    eager steps and replayed for every batch of that shape: one launch per step instead of
    hundreds. The eager steps and the replays are the same computation; the last partial
    batch of an epoch runs eagerly. The gradients are cleared here (set to None) before each
    eager step and before the capture; a replay overwrites the graph's own."""

    WARMUP = 3

    def __init__(self, optimizer: torch.optim.Optimizer, enabled: bool):
        self.optimizer = optimizer
        self.enabled = enabled
        self.graph = None
        self.eager_steps = 0

    def run(self, fn: Callable[[torch.Tensor, torch.Tensor], None], x, y) -> None:
        graph_shape = None if self.graph is None else self.static_x.shape
        if graph_shape is not None and x.shape != graph_shape and x.shape[0] == graph_shape[0]:
            # A full batch of another image size (progressive resizing): warm up and capture
            # again at this size.
            self.graph, self.eager_steps = None, 0
        if self.graph is not None and x.shape == self.static_x.shape:
            self.static_x.copy_(x)
            self.static_y.copy_(y)
            self.graph.replay()
            return
        if self.enabled and self.graph is None and self.eager_steps >= self.WARMUP:
            try:
                self._capture(fn, x, y)
            except RuntimeError as e:  # an op that cannot be captured: stay eager, say so
                print(
                    f"warning: CUDA graph capture failed ({str(e).splitlines()[0][:120]}); "
                    "continuing without it",
                    file=sys.stderr,
                )
                self.enabled = False
                torch.cuda.synchronize()
            return self.run(fn, x, y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.enabled:
            # Warm-up steps run on a side stream, as CUDA graph capture requires.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn(x, y)
            torch.cuda.current_stream().wait_stream(side)
        else:
            fn(x, y)
        self.eager_steps += 1

    def _capture(self, fn, x: torch.Tensor, y: torch.Tensor) -> None:
        self.static_x, self.static_y = x.clone(), y.clone()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(self.static_x, self.static_y)
        self.graph = graph


@dataclass(eq=False)
class Trainer:
    """What a training step needs: the model (unwrapped: checkpoints save it), the module that
    trains it (``wrapped``: DDP or SyncBN around it, else the model itself), its optimizer,
    the schedule, the runtime's switches, and the optional weight averages and progressive
    resizing. ``loader`` feeds :func:`loop.train_one_epoch` (None for a bare step)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    runtime: Runtime
    schedule: Schedule
    loader: DeviceLoader | None = None
    wrapped: torch.nn.Module | None = None
    label_smoothing: float = 0.0
    lookahead: Lookahead | None = None
    ema: Any = None  # torch.optim.swa_utils.AveragedModel
    early_size: int = 0  # progressive resizing: the side of the early steps' images (0 = off)
    early_fraction: float = 0.0  # the share of the steps trained at early_size
    forward: Callable = field(init=False)  # the wrapped model, compiled with runtime.compile
    counters: StepCounters = field(init=False)
    graph: CudaGraph = field(init=False)

    def __post_init__(self):
        wrapped = self.wrapped if self.wrapped is not None else self.model
        self.forward = torch.compile(wrapped) if self.runtime.compile else wrapped
        self.counters = StepCounters(self.runtime.device)
        self.graph = CudaGraph(self.optimizer, self.runtime.cuda_graph)


def train_step(t: Trainer, x: torch.Tensor, y: torch.Tensor, step: int) -> None:
    """Optimizer step number ``step`` (0-based) of ``t.schedule`` on the batch ``(x, y)``."""
    total = t.schedule.total_steps
    set_lr(t.optimizer, t.schedule.lr(step), step, total)  # fills the lr tensors in place
    if t.early_size and step < early_steps(t.early_fraction, total):
        x = downscale(x, t.early_size)

    def device_part(x: torch.Tensor, y: torch.Tensor) -> None:  # what a CUDA graph replays
        with t.runtime.autocast():
            out = t.forward(x)
        # BatchNorm runs in fp32 under autocast; the loss is computed in fp32 as well. ``y``
        # is class indices, or soft targets (B, C) under mixup / CutMix: static shapes either
        # way, no host sync (graph-safe).
        loss = mixed_loss(out.float(), y, t.label_smoothing)
        loss.backward()
        t.optimizer.step()
        t.counters.add(loss.detach(), out.detach(), y)

    t.graph.run(device_part, x, y)
    if t.ema is not None:
        update_ema(t.ema, t.model)
    if t.lookahead is not None:
        t.lookahead.after_step(step + 1, total)
