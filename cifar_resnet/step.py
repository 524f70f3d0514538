"""The training step, and nothing else: forward under autocast, fp32 loss, backward, the
optimizer's step, device-side counters and, on a GPU, the whole step as one CUDA graph."""

from __future__ import annotations

import sys

import torch

from .mixing import hard_labels, mixed_loss
from .runtime import Runtime


class Stepper:
    """One optimisation step, identical in every mode: autocast forward, fp32 loss, backward,
    the optimizer's step (its learning rates are device tensors set by ``optim.set_lr``).

    The loss sum, the correct count and the first step with a non-finite loss are accumulated
    on the device, so a step never waits for the GPU. With ``cuda_graph`` the whole step
    (forward, backward, optimizer) is captured once into a CUDA graph after ``WARMUP`` eager
    steps and replayed for every full-size batch: one launch per step instead of hundreds.
    The eager steps and the replays are the same computation; the last partial batch of an
    epoch runs eagerly.
    """

    WARMUP = 3

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        runtime: Runtime,
        label_smoothing: float = 0.0,
    ):
        self.model = model  # possibly wrapped (DDP); checkpoints unwrap it
        self.optimizer = optimizer
        self.runtime = runtime
        self.device = device = runtime.device
        self.label_smoothing = label_smoothing
        self.forward = torch.compile(model) if runtime.compile else model
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.first_bad = torch.full((), -1, device=device, dtype=torch.int64)
        self.counter = torch.zeros((), device=device, dtype=torch.int64)  # global step
        self.cuda_graph = runtime.cuda_graph
        self.graph = None
        self.eager_steps = 0

    def set_counters(self, loss_sum: float, correct: int, step: int) -> None:
        self.loss_sum.fill_(loss_sum)
        self.correct.fill_(correct)
        self.counter.fill_(step)
        self.first_bad.fill_(-1)

    def _compute(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with self.runtime.autocast():
            out = self.forward(x)
        # BatchNorm runs in fp32 under autocast; the loss is computed in fp32 as well. ``y``
        # is class indices, or soft targets (B, C) under mixup / CutMix: static shapes either
        # way, no host sync (graph-safe).
        loss = mixed_loss(out.float(), y, self.label_smoothing)
        loss.backward()
        self.optimizer.step()
        loss = loss.detach()
        self.loss_sum.add_(loss.double() * y.shape[0])
        self.correct.add_((out.detach().argmax(1) == hard_labels(y)).sum())
        bad = (self.first_bad < 0) & ~torch.isfinite(loss)
        self.first_bad.copy_(torch.where(bad, self.counter, self.first_bad))
        self.counter.add_(1)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step on the batch ``(x, y)``."""
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
        if self.cuda_graph and self.graph is None and self.eager_steps >= self.WARMUP:
            try:
                self._capture(x, y)
            except RuntimeError as e:  # an op that cannot be captured: stay eager, say so
                print(
                    f"warning: CUDA graph capture failed ({str(e).splitlines()[0][:120]}); "
                    "continuing without it",
                    file=sys.stderr,
                )
                self.cuda_graph = False
                torch.cuda.synchronize()
            return self.step(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.cuda_graph:
            # Warm-up steps run on a side stream, as CUDA graph capture requires.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._compute(x, y)
            torch.cuda.current_stream().wait_stream(side)
        else:
            self._compute(x, y)
        self.eager_steps += 1

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.static_x, self.static_y = x.clone(), y.clone()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._compute(self.static_x, self.static_y)
        self.graph = graph
