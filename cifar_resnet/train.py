"""The training loop: ``train_one_epoch``, ``evaluate`` and ``fit`` that ties them together.

One code path for CPU and GPU, fp32 and bf16, eager and compiled: switches, not branches.
No host synchronisation per step on a GPU: losses and counts are summed on the device and read
once per epoch (and every ``SYNC_EVERY`` steps to catch a diverged loss early).
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint as ckpt_io
from . import distributed
from .config import TrainConfig, config_to_toml
from .data import ArraySplit, DataBundle, channel_stats
from .errors import (
    CheckpointError,
    DistributedError,
    DivergedError,
    Interrupted,
    OutputError,
    UsageError,
)
from .loader import DeviceLoader
from .models import create_model
from .schedule import lr_at

HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
METRIC_FIELDS = [
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "ema_test_loss",
    "ema_test_acc",
    "epoch_seconds",
    "images_per_s",
    "wall_seconds",
]


# ----------------------------------------------------------------------------- runtime


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto"
        )
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UsageError(f"unknown device {name!r}; valid devices: auto, cpu, cuda")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and far slower than fp32 (measured ~100x on an AVX2-only EPYC)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return {"fp32": None, "bf16": torch.bfloat16}[precision]


def resolve_channels_last(value: str) -> bool:
    """'auto' is on: NHWC was 1.3x faster per fp32 step on the 2-core AVX2 CPU (oneDNN) and is
    what cuDNN's bf16 kernels want (BENCHMARKS.md)."""
    return value != "off"


def resolve_compile(value: str) -> bool:
    """'auto' is off: on the CPU torch.compile gave no gain over channels_last after 20-45 s of
    compiling; on a GPU the whole step is a CUDA graph instead (BENCHMARKS.md)."""
    return value == "on"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- run state


@dataclass
class RunState:
    """What a checkpoint needs beyond the model and optimizer to continue exactly."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimizer steps, all epochs
    epoch_step: int = 0  # completed steps within the current epoch (mid-epoch checkpoints)
    epoch_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss, correct, n
    epoch_seconds: float = 0.0  # training time spent in the current epoch so far
    best_val: float = -1.0
    wall_seconds: float = 0.0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    planned_steps: int = 0  # with a time budget: the steps the plan fixed (kept on resume)
    target_seconds: float = -1.0  # wall time at which target_accuracy was reached


class Stop:
    """SIGINT/SIGTERM: finish the step, save, exit. A second SIGINT exits at once; the atomic
    writes mean that no file is left half-written either way."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            os._exit(130)
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------- steps


class Stepper:
    """One optimisation step, identical in every mode: autocast forward, fp32 loss, backward,
    SGD with the learning rate held in a device tensor.

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
        model,
        optimizer,
        amp_dtype,
        device,
        label_smoothing=0.0,
        compile=False,
        cuda_graph=False,
    ):
        self.model = model
        self.optimizer = optimizer
        self.amp_dtype = amp_dtype
        self.device = device
        self.label_smoothing = label_smoothing
        self.forward = torch.compile(model) if compile else model
        # One lr tensor per parameter group, refilled before every step (see make_optimizer).
        for group in optimizer.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.first_bad = torch.full((), -1, device=device, dtype=torch.int64)
        self.counter = torch.zeros((), device=device, dtype=torch.int64)  # global step
        self.cuda_graph = cuda_graph and device.type == "cuda"
        self.graph = None
        self.eager_steps = 0
        self.ema = None  # a torch.optim.swa_utils.AveragedModel, updated after every step
        self.lookahead = None  # a Lookahead, updated after every step

    def autocast(self):
        return torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.bfloat16,
            enabled=self.amp_dtype is not None,
        )

    def set_counters(self, loss_sum: float, correct: int, step: int) -> None:
        self.loss_sum.fill_(loss_sum)
        self.correct.fill_(correct)
        self.counter.fill_(step)
        self.first_bad.fill_(-1)

    def _compute(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with self.autocast():
            out = self.forward(x)
        # BatchNorm runs in fp32 under autocast; the loss is computed in fp32 as well.
        loss = F.cross_entropy(out.float(), y, label_smoothing=self.label_smoothing)
        loss.backward()
        self.optimizer.step()
        loss = loss.detach()
        self.loss_sum.add_(loss.double() * y.shape[0])
        self.correct.add_((out.detach().argmax(1) == y).sum())
        bad = (self.first_bad < 0) & ~torch.isfinite(loss)
        self.first_bad.copy_(torch.where(bad, self.counter, self.first_bad))
        self.counter.add_(1)

    def step(
        self, x: torch.Tensor, y: torch.Tensor, lr: float, step: int = 0, total_steps: int = 1
    ) -> None:
        """Optimizer step number ``step`` (0-based) of ``total_steps`` at learning rate ``lr``."""
        for group in self.optimizer.param_groups:
            # A group with "until" (the whitening bias) stops learning after that share.
            on = step < group.get("until", 1.0) * total_steps
            group["lr"].fill_(lr * group.get("lr_scale", 1.0) if on else 0.0)
        self._step(x, y)
        if self.ema is not None:
            update_ema(self.ema, ckpt_io.unwrap(self.model))
        if self.lookahead is not None:
            self.lookahead.after_step(step + 1, total_steps)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
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
            return self._step(x, y)
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


def make_ema(model: torch.nn.Module, decay: float):
    """torch's AveragedModel with an EMA of the parameters and the BatchNorm buffers."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def update_ema(ema, model: torch.nn.Module) -> None:
    """``ema.update_parameters(model)`` without its per-step host sync (it reads n_averaged):
    the first update copies, later ones call the EMA's own foreach lerp directly."""
    if not getattr(ema, "_started", False):
        ema.update_parameters(model)
        ema._started = True
        return
    ema_tensors = [*ema.module.parameters(), *ema.module.buffers()]
    tensors = [*model.parameters(), *model.buffers()]
    floats = [(e, t) for e, t in zip(ema_tensors, tensors) if e.is_floating_point()]
    ema.multi_avg_fn([e for e, _ in floats], [t.detach() for _, t in floats], ema.n_averaged)
    ema.n_averaged += 1
    with torch.no_grad():  # integer buffers (BatchNorm's num_batches_tracked) are copied
        for e, t in zip(ema_tensors, tensors):
            if not e.is_floating_point():
                e.copy_(t)


class Lookahead:
    """airbench's lookahead (Zhang et al. 2019, with a schedule): every ``every`` steps the slow
    weights move toward the fast ones by ``1 - decay`` and the fast weights jump to them;
    ``decay`` grows as the cube of the run's progress, to 0.95**every at the end. The run
    ends on the slow weights (:meth:`finish`). Float parameters and buffers take part."""

    def __init__(self, model: torch.nn.Module, every: int):
        self.every = every
        self.fast = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.slow = [t.detach().clone() for t in self.fast]

    @torch.no_grad()
    def after_step(self, done: int, total_steps: int) -> None:
        if done % self.every == 0:
            decay = 0.95**self.every * (done / total_steps) ** 3
            torch._foreach_lerp_(self.slow, self.fast, 1 - decay)
            torch._foreach_copy_(self.fast, self.slow)

    @torch.no_grad()
    def finish(self) -> None:
        torch._foreach_copy_(self.fast, self.slow)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {str(i): t for i, t in enumerate(self.slow)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if len(state) != len(self.slow):
            raise CheckpointError("the checkpoint's lookahead weights do not match the model")
        torch._foreach_copy_(self.slow, [state[str(i)] for i in range(len(self.slow))])


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device):
    """SGD over the trainable parameters, in groups only where the recipe treats them apart:
    BatchNorm parameters with ``norm_lr_scale`` (lr x s, weight decay / s: the same decay per
    step) and a whitening stem's bias, which stops after ``whiten_bias_fraction`` of the run.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    norm = {id(p) for m in model.modules() if isinstance(m, _BatchNorm) for p in m.parameters()}
    whiten = getattr(model, "whiten", None)
    stem = {id(whiten.bias)} if whiten is not None and whiten.bias is not None else set()
    split_norm = config.norm_lr_scale != 1.0
    split_stem = config.whiten_bias_fraction < 1.0
    groups: dict[str, list[torch.nn.Parameter]] = {"norm": [], "stem": [], "other": []}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if split_stem and id(p) in stem:
            groups["stem"].append(p)
        elif split_norm and id(p) in norm:
            groups["norm"].append(p)
        else:
            groups["other"].append(p)
    options = {
        "norm": {
            "lr_scale": config.norm_lr_scale,
            "weight_decay": config.weight_decay / config.norm_lr_scale,
        },
        "stem": {"until": config.whiten_bias_fraction},
        "other": {},
    }
    param_groups = [
        {"params": params, "name": name, **options[name]}
        for name, params in groups.items()
        if params
    ]
    # The fused kernel updates every parameter in one launch and takes the lr as a tensor, so
    # a changing lr needs no recompile and no host sync (and can live inside a CUDA graph).
    return torch.optim.SGD(
        param_groups,
        lr=torch.tensor(config.lr, device=device),
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        fused=True,
    )


def tta_logits(model, x: torch.Tensor, tta: int = 0) -> torch.Tensor:
    """fp32 logits of ``x`` with test-time augmentation: 0 none, 1 the mean over the image and
    its mirror, 2 (airbench) half that plus half the mirror-mean of two 1-pixel diagonal
    translations with mirrored borders: 6 forward passes."""

    def mirrored(v):
        out = model(v).float()
        return out if tta == 0 else (out + model(v.flip(3)).float()) / 2

    logits = mirrored(x)
    if tta >= 2:
        h, w = x.shape[2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = [padded[:, :, :h, :w], padded[:, :, 2 : h + 2, 2 : w + 2]]
        logits = (logits + sum(mirrored(v) for v in shifted) / 2) / 2
    return logits


@torch.no_grad()
def evaluate(
    model, loader: DeviceLoader, amp_dtype=None, num_classes: int | None = None, tta: int = 0
) -> dict[str, Any]:
    """Loss, accuracy (percent) and the confusion matrix (rows: true, cols: predicted),
    with test-time augmentation level ``tta`` (see :func:`tta_logits`; True means 1)."""
    was_training = model.training
    model.eval()
    device = loader.device
    n_cls = num_classes or int(loader.labels.max()) + 1
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros(n_cls * n_cls, device=device, dtype=torch.int64)
    with torch.autocast(
        device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None
    ):
        for x, y in loader:
            logits = tta_logits(model, x, int(tta))
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            confusion += torch.bincount(y * n_cls + logits.argmax(1), minlength=n_cls * n_cls)
    model.train(was_training)
    return _eval_result(loss_sum, confusion.view(n_cls, n_cls))


def _eval_result(loss_sum: torch.Tensor, confusion: torch.Tensor) -> dict[str, Any]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(loss_sum)
        torch.distributed.all_reduce(confusion)
    confusion = confusion.cpu()
    count = int(confusion.sum())
    correct = int(confusion.diag().sum())
    per_class = confusion.diag().double() / confusion.sum(1).clamp(min=1).double()
    return {
        "loss": float(loss_sum) / max(count, 1),
        "accuracy": 100.0 * correct / max(count, 1),
        "correct": correct,
        "count": count,
        "per_class_accuracy": (100.0 * per_class).tolist(),
        "confusion": confusion.tolist(),
    }


def train_one_epoch(
    stepper: Stepper,
    loader: DeviceLoader,
    state: RunState,
    config: TrainConfig,
    total_steps: int,
    stop: Stop,
    on_step=None,
    progress: bool = False,
) -> bool:
    """Train from ``state.epoch_step`` to the end of the epoch (or ``total_steps``).

    Returns False when stopped early by a signal; raises DivergedError on a non-finite loss.
    """
    steps_per_epoch = len(loader)
    # Reading a device value waits for the GPU; on a CPU it costs nothing.
    sync_every = 1 if loader.device.type == "cpu" else 100
    loss_sum, correct, seen = state.epoch_sums
    stepper.set_counters(loss_sum, int(correct), state.step)
    bar = tqdm(
        total=steps_per_epoch,
        initial=state.epoch_step,
        disable=not progress,
        leave=False,
        unit="step",
        dynamic_ncols=True,
        desc=f"epoch {state.epoch + 1}",
    )
    start = time.perf_counter()
    completed = True
    for x, y in loader.batches(state.epoch_step):
        if state.step >= total_steps:
            break
        lr = lr_at(config, state.step, steps_per_epoch, total_steps)
        stepper.step(x, y, lr, state.step, total_steps)
        seen += y.shape[0]
        state.step += 1
        state.epoch_step += 1
        bar.update(1)
        if state.epoch_step % sync_every == 0 or state.epoch_step == steps_per_epoch:
            _check_finite(stepper, state, config, steps_per_epoch, total_steps, bar)
        stopping = stop.signum is not None
        if distributed.is_enabled() and state.epoch_step % sync_every == 0:
            stopping = distributed.any_rank(stopping, loader.device)  # all ranks stop together
        elif distributed.is_enabled():
            stopping = False
        if on_step is not None or stopping:
            state.epoch_sums = [float(stepper.loss_sum), float(stepper.correct), seen]
        if on_step is not None:
            on_step()
        if stopping:
            stop.signum = stop.signum or signal.SIGTERM
            completed = False
            break
    bar.close()
    _check_finite(stepper, state, config, steps_per_epoch, total_steps, bar)
    state.epoch_sums = [float(stepper.loss_sum), float(stepper.correct), seen]
    state.epoch_seconds += time.perf_counter() - start
    return completed and (state.epoch_step >= steps_per_epoch or state.step >= total_steps)


def _check_finite(stepper, state, config, steps_per_epoch, total_steps, bar) -> None:
    bad = int(stepper.first_bad)
    if distributed.is_enabled():  # every rank raises together, naming the same step
        flags = distributed.all_sum(
            [float(bad >= 0), float(bad if bad >= 0 else 0)], stepper.device
        )
        bad = int(flags[1] / flags[0]) if flags[0] else -1
    if bad >= 0:
        bar.close()
        epoch, step = bad // steps_per_epoch + 1, bad % steps_per_epoch + 1
        raise DivergedError(
            f"the loss became non-finite at epoch {epoch}, step {step} (global step {bad + 1}, "
            f"lr {lr_at(config, bad, steps_per_epoch, total_steps):g}); lower --lr or check "
            "the data; the last good checkpoint is kept"
        )


@dataclass
class BudgetPlan:
    """A time budget's plan: the steps, and the measured costs it was solved from."""

    steps: int
    step_s: float
    eval_s: float
    save_s: float


def solve_steps(time_left, step_s, eval_s, save_s, spe, eval_every, done_epochs=0) -> int:
    """The most steps (from an epoch boundary after ``done_epochs``) whose training, evaluations
    and epoch checkpoints fit in ``time_left`` seconds; the last epoch is always evaluated."""
    steps = int(time_left / step_s)
    for _ in range(20):  # evaluations depend on the number of epochs, which depends on steps
        epochs = -(-steps // spe)
        end = done_epochs + epochs
        if eval_every:
            evals = end // eval_every - done_epochs // eval_every + (end % eval_every != 0)
        else:
            evals = 1
        fit_steps = max(int((time_left - evals * eval_s - epochs * save_s) / step_s), 0)
        if fit_steps == steps:
            break
        steps = fit_steps
    return steps


def plan_time_budget(
    config: TrainConfig,
    stepper: Stepper,
    loader: DeviceLoader,
    eval_loaders: list[DeviceLoader],
    started: float,
    save_seconds: float,
    num_classes: int,
    log=print,
) -> BudgetPlan:
    """How many steps fit in ``config.time_budget`` seconds from ``started``, evaluations and
    saves included.

    Times a few steps and one evaluation pass on a throwaway copy of the model (the run itself
    starts from step 0, so its schedule is laid over exactly the planned steps), then solves
    ``now + steps * step_s + evals(steps) * eval_s + saves(steps) * save_s <= budget``
    with a 2% margin. ``fit`` checks the plan against the run's own speed after every epoch.
    """
    import copy

    model = copy.deepcopy(ckpt_io.unwrap(stepper.model))
    probe = Stepper(
        model,
        make_optimizer(model, config, stepper.device),
        stepper.amp_dtype,
        stepper.device,
        config.label_smoothing,
        cuda_graph=stepper.cuda_graph,
    )
    cuda = stepper.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    batches = loader.batches(0)
    # The probe is short (the run re-checks the plan every epoch): the graph's warm-up and
    # capture untimed on a GPU, then up to 20 steps or 1% of the budget.
    warm, timed = (Stepper.WARMUP + 1 if cuda else 1), 0
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(batches):
        if i == warm:
            sync()
            t0 = time.perf_counter()
        probe.step(x, y, config.lr * 1e-3, i, 1 << 30)
        if i >= warm:
            timed += 1
            if timed >= 20 or time.perf_counter() - t0 > 0.01 * config.time_budget:
                break
    sync()
    step_s = (time.perf_counter() - t0) / max(timed, 1)
    eval_s = 0.0
    for ev in eval_loaders:  # timed on up to 2,000 images each, scaled to the whole split
        part = copy.copy(ev)
        part.images, part.labels = ev.images[:2000], ev.labels[:2000]
        t0 = time.perf_counter()
        evaluate(model, part, stepper.amp_dtype, num_classes, config.tta)
        eval_s += (time.perf_counter() - t0) * len(ev.labels) / len(part.labels)
    step_s, eval_s = distributed.all_mean([step_s, eval_s], stepper.device)
    spe = len(loader)
    elapsed = time.perf_counter() - started
    steps = solve_steps(
        config.time_budget * 0.98 - elapsed, step_s, eval_s, save_seconds, spe, config.eval_every
    )
    if steps < 1:
        raise UsageError(
            f"--time-budget {config.time_budget:g}s is too short: a step takes "
            f"{step_s:.3f}s and an evaluation {eval_s:.1f}s here"
        )
    log(
        f"time budget {config.time_budget:g}s: {steps} steps planned ({steps / spe:.1f} epochs; "
        f"{step_s * 1e3:.1f} ms/step, evaluation {eval_s:.1f}s, {elapsed:.1f}s spent before)"
    )
    return BudgetPlan(steps, step_s, eval_s, save_seconds)


def replan_time_budget(
    config: TrainConfig,
    plan: BudgetPlan,
    state: RunState,
    epoch_steps: int,
    spe: int,
    total_steps: int,
    started: float,
    device: torch.device,
) -> int | None:
    """At the end of an epoch, the total steps that fit the budget at the speed this run
    measured in that epoch, or None when the current plan is within 2% of it.

    A probe timed while the machine was busier (or idler) than during the run would otherwise
    miss the budget; the run's own step and evaluation times are the better estimate.
    """
    plan.step_s = distributed.all_mean([state.epoch_seconds / max(epoch_steps, 1)], device)[0]
    left = solve_steps(
        config.time_budget * 0.98 - (time.perf_counter() - started) - plan.save_s,
        plan.step_s,
        plan.eval_s,
        plan.save_s,
        spe,
        config.eval_every,
        state.epoch + 1,
    )
    replanned = state.step + max(left, 1)
    if abs(replanned - total_steps) > 0.02 * (total_steps - state.step) + 1:
        return replanned
    return None


def budget_schedule(config: TrainConfig, planned: int, spe: int) -> TrainConfig:
    """Lay a schedule written for ``config``'s length over ``planned`` steps: StepLR periods
    and multistep milestones shrink in proportion, so the decays all happen."""
    import dataclasses

    full = config.steps or config.epochs * spe
    ratio = planned / full
    return dataclasses.replace(
        config,
        steps=planned,
        lr_step=max(1, round(config.lr_step * ratio)),
        lr_milestones=[max(1, round(m * ratio)) for m in config.lr_milestones],
        warmup_steps=round(config.warmup_steps * ratio),
    )


# ----------------------------------------------------------------------------- fit


@dataclass
class Prepared:
    """Everything built from the data and the config before the first step."""

    train: ArraySplit
    val: ArraySplit | None
    test: ArraySplit
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def prepare_data(config: TrainConfig, bundle: DataBundle) -> Prepared:
    """Validation split, subsets and normalisation statistics, all seeded by config.seed."""
    from .data import split_validation, subset

    train, val = bundle.train, None
    if config.val_split:
        if config.val_split >= len(train.labels):
            raise UsageError(
                f"--val-split {config.val_split} leaves no training images "
                f"(the training set has {len(train.labels)})"
            )
        train, val = split_validation(train, config.val_split, config.seed)
    train = subset(train, config.limit_train or None, config.seed)
    test = subset(bundle.test, config.limit_test or None, config.seed)
    if config.normalize == "dataset":
        mean, std = channel_stats(train.images)
    else:
        mean, std = HALF
    return Prepared(train, val, test, list(bundle.classes), tuple(mean), tuple(std))


class Trainer(NamedTuple):
    """What one training step needs: the loader, the model, its optimizer, the step."""

    loader: DeviceLoader
    model: torch.nn.Module  # unwrapped (the stepper may hold a DDP or SyncBN wrapper)
    optimizer: torch.optim.Optimizer
    stepper: Stepper


def build_trainer(
    config: TrainConfig,
    data: Prepared,
    dev: torch.device,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
    use_compile: bool,
    dist_info: distributed.DistInfo | None = None,
    resume: dict[str, Any] | None = None,
) -> Trainer:
    """The training loader, model, optimizer and ``Stepper`` as ``fit`` trains them, with
    ``resume``'s weights, optimizer, lookahead and EMA state loaded (not its RNG or counters)."""
    from torch.nn.parallel import DistributedDataParallel

    dist_info = dist_info or distributed.DistInfo()  # single process
    loader = DeviceLoader(
        data.train.images,
        data.train.labels,
        config.batch_size,
        device=dev,
        train=True,
        padding=config.padding,
        pad_mode=config.pad_mode,
        flip=config.flip,
        alt_flip=config.alt_flip,
        mean=data.mean,
        std=data.std,
        seed=config.seed,
        channels_last=channels_last,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
    )
    model = create_model(model_name(config), len(data.classes)).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if hasattr(model, "init_whitening") and resume is None:
        # The stem whitens 2x2 patches of (up to) 5000 unaugmented training images.
        model.init_whitening(loader.augment(loader.images[:5000]))
    optimizer = make_optimizer(model, config, dev)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
    train_model = model
    if dist_info.enabled:
        if config.sync_bn:
            train_model = distributed.convert_sync_batchnorm(train_model, dev)
        train_model = DistributedDataParallel(
            train_model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    # DDP's gradient all-reduce is not captured into the graph here: graphs are single-process.
    use_graph = dev.type == "cuda" and not config.deterministic and not dist_info.enabled
    stepper = Stepper(
        train_model,
        optimizer,
        amp_dtype,
        dev,
        config.label_smoothing,
        use_compile,
        cuda_graph=use_graph,
    )
    if config.lookahead:
        stepper.lookahead = Lookahead(model, config.lookahead)
        if resume is not None:
            stepper.lookahead.load_state_dict(resume["lookahead"])
    if config.ema:
        stepper.ema = make_ema(model, config.ema)
        if resume is not None and "ema" in resume:
            stepper.ema.module.load_state_dict(resume["ema"])
            stepper.ema.n_averaged.fill_(resume["ema_n_averaged"])
            stepper.ema._started = True
    return Trainer(loader, model, optimizer, stepper)


def _write_text_atomic(path: Path, text: str) -> None:
    ckpt_io.write_file_atomic(path, lambda tmp: tmp.write_text(text))


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in METRIC_FIELDS})
    _write_text_atomic(path, buf.getvalue())


def epoch_line(row: dict[str, Any]) -> str:
    """The seed post's line, then the rest of the epoch's figures."""
    line = f"[{row['epoch']}]"
    if "test_acc" in row:
        line += f" Test Loss: {row['test_loss']:.4f}, Accuracy: {row['test_acc']:.2f}%"
    if "val_acc" in row:
        line += f" | val loss {row['val_loss']:.4f} acc {row['val_acc']:.2f}%"
    if "ema_test_acc" in row:
        line += f" | EMA test acc {row['ema_test_acc']:.2f}%"
    return (
        line + f" | train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}%"
        f" | lr {row['lr']:.4g} | {row['epoch_seconds']:.1f}s {row['images_per_s']:.0f} img/s"
    )


def fit(
    config: TrainConfig,
    bundle: DataBundle,
    out_dir: str | os.PathLike,
    *,
    preset: str = "seed",
    device: str = "auto",
    resume: dict[str, Any] | None = None,
    quiet: bool = False,
    progress: bool | None = None,
    log=print,
    dist_backend: str = "auto",
    dist_timeout: float = 600.0,
    started: float | None = None,
    tensorboard: bool = False,
) -> dict[str, Any]:
    """Train ``config`` on ``bundle``, writing the run folder ``out_dir``; returns the summary.

    ``resume`` is a loaded checkpoint of this run to continue from. Launched by torchrun,
    every rank calls ``fit`` with the same arguments; only rank 0 writes and prints.
    ``started`` (a ``time.perf_counter()`` value) is when the run's clock started, for
    ``time_budget``; by default, now.
    """
    dist_info, dev = distributed.setup(resolve_device(device), dist_backend, dist_timeout)
    try:
        return _fit(
            config,
            bundle,
            Path(out_dir),
            preset,
            dev,
            resume,
            quiet or not dist_info.is_main,
            progress,
            log,
            dist_info,
            time.perf_counter() if started is None else started,
            tensorboard,
        )
    except RuntimeError as e:
        if not dist_info.enabled:
            raise
        # A peer died or timed out: say which rank noticed; torchrun names the one that failed.
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DistributedError(
            f"rank {dist_info.rank} of {dist_info.world_size} lost the other "
            f"ranks ({first}); continue with --resume auto"
        ) from None
    finally:
        distributed.cleanup()


def _fit(
    config, bundle, out, preset, dev, resume, quiet, progress, log, dist_info, started, tensorboard
):
    amp_dtype = resolve_precision(config.precision, dev)
    channels_last = resolve_channels_last(config.channels_last)
    use_compile = resolve_compile(config.compile)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    main = dist_info.is_main
    if main:
        _prepare_out_dir(out)
    seed_everything(config.seed)
    if dist_info.enabled and config.batch_size < dist_info.world_size:
        raise UsageError(
            f"--batch-size {config.batch_size} is the global batch and must be at "
            f"least the number of processes ({dist_info.world_size})"
        )

    data = prepare_data(config, bundle)
    if resume is not None:
        data.mean, data.std = tuple(resume["mean"]), tuple(resume["std"])
    n_train = len(data.train.labels)
    eval_kw = dict(
        device=dev,
        train=False,
        mean=data.mean,
        std=data.std,
        channels_last=channels_last,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
    )
    test_loader = DeviceLoader(
        data.test.images, data.test.labels, config.eval_batch_size, **eval_kw
    )
    val_loader = None
    if data.val is not None:
        val_loader = DeviceLoader(
            data.val.images, data.val.labels, config.eval_batch_size, **eval_kw
        )
    loader, model, optimizer, stepper = build_trainer(
        config, data, dev, amp_dtype, channels_last, use_compile, dist_info, resume
    )
    state = RunState()
    if resume is not None:
        state = RunState(**resume["state"])
        ckpt_io.set_rng_state(resume["rng"])
        loader.set_epoch(state.epoch)  # the resumed epoch's order, crops and flips
    use_graph = stepper.cuda_graph
    writer = _tensorboard_writer(out) if tensorboard and main else None

    steps_per_epoch = len(loader)
    eval_loaders = [test_loader] + ([val_loader] if val_loader is not None else [])
    plan = None  # a plan made by this process (a resumed run keeps its plan as it was)
    if config.time_budget and not state.planned_steps:
        probe_path = out / ".budget-probe.pt"
        t0 = time.perf_counter()
        if main:
            ckpt_io.save_atomic(
                {"model": model.state_dict(), "opt": optimizer.state_dict()}, probe_path
            )
            probe_path.unlink()
        save_s = distributed.all_sum([time.perf_counter() - t0], dev)[0]
        plan = plan_time_budget(
            config,
            stepper,
            loader,
            eval_loaders,
            started,
            save_s,
            len(data.classes),
            log=(lambda m: None) if quiet else log,
        )
        state.planned_steps = plan.steps
        config = budget_schedule(config, state.planned_steps, steps_per_epoch)
    total_steps = config.steps or config.epochs * steps_per_epoch
    total_epochs = -(-total_steps // steps_per_epoch)
    meta = {
        "classes": data.classes,
        "mean": list(data.mean),
        "std": list(data.std),
        "model_name": model_name(config),
        "preset": preset,
        "input_size": int(data.train.images.shape[1]),
    }
    if main:
        _write_run_files(
            out,
            preset,
            config,
            {
                **meta,
                "device": str(dev),
                "precision": str(amp_dtype or "fp32"),
                "channels_last": channels_last,
                "compile": use_compile,
                "cuda_graph": use_graph,
                "train_images": n_train,
                "val_images": 0 if data.val is None else len(data.val.labels),
                "test_images": len(data.test.labels),
                "steps_per_epoch": steps_per_epoch,
                "total_steps": total_steps,
                "torch": torch.__version__,
                "data_source": bundle.source,
                "world_size": dist_info.world_size,
                "sync_bn": config.sync_bn and dist_info.enabled,
            },
        )

    def save(path: Path) -> None:
        if not main:
            return
        ckpt_io.save_atomic(
            {
                "format": "cifar-resnet",
                "version": ckpt_io.CHECKPOINT_VERSION,
                "model": ckpt_io.unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": vars(state).copy(),
                "rng": ckpt_io.rng_state(),
                "config": config.to_dict(),
                **meta,
                **({"lookahead": stepper.lookahead.state_dict()} if stepper.lookahead else {}),
                **(
                    {
                        "ema": stepper.ema.module.state_dict(),
                        "ema_n_averaged": int(stepper.ema.n_averaged),
                    }
                    if stepper.ema
                    else {}
                ),
            },
            path,
        )

    def save_step() -> None:
        if main:
            save(ckpt_io.checkpoint_path(out, state.epoch, state.step))
            ckpt_io.prune(out, config.keep)

    def on_step() -> None:
        if (
            config.save_every_steps
            and state.step % config.save_every_steps == 0
            and state.epoch_step < steps_per_epoch
        ):
            save_step()

    show_bar = (sys.stdout.isatty() and not quiet) if progress is None else progress
    if not quiet:
        log(
            f"training {meta['model_name']} ({preset} preset) on {n_train} images, "
            f"{len(data.classes)} classes, {dev}, {amp_dtype or 'fp32'}"
            f"{', channels_last' if channels_last else ''}{', compiled' if use_compile else ''}"
            f"{', CUDA graph' if use_graph else ''}"
            f"{f', {dist_info.world_size} processes' if dist_info.enabled else ''}; "
            f"{total_epochs} epochs of {steps_per_epoch} steps; run folder {out}"
        )
    model.train()
    with Stop() as stop:
        while state.step < total_steps:
            wall = time.perf_counter()
            done = train_one_epoch(
                stepper, loader, state, config, total_steps, stop, on_step, show_bar
            )
            if not done:
                state.wall_seconds += time.perf_counter() - wall
                save_step()
                where = f"epoch {state.epoch + 1}, step {state.step}"
                raise Interrupted(
                    f"stopped by signal {stop.signum} at {where}; the run is saved: "
                    f"continue with `cifar-resnet train --resume {out}`"
                )
            epoch_steps = state.epoch_step
            last = state.step >= total_steps
            if last and stepper.lookahead is not None:
                stepper.lookahead.finish()  # the run ends on the slow weights
            distributed.broadcast_buffers(model)  # rank 0's BatchNorm statistics on all ranks
            loss_sum, correct, seen = distributed.all_sum(state.epoch_sums, dev)
            row = {
                "epoch": state.epoch + 1,
                "step": state.step,
                "lr": lr_at(config, state.step - 1, steps_per_epoch, total_steps),
                "train_loss": loss_sum / max(seen, 1),
                "train_acc": 100.0 * correct / max(seen, 1),
                "epoch_seconds": state.epoch_seconds,
                "images_per_s": seen / max(state.epoch_seconds, 1e-9),
            }
            eval_start = time.perf_counter()
            evaluated = last or (config.eval_every and (state.epoch + 1) % config.eval_every == 0)
            if evaluated:
                test = evaluate(model, test_loader, amp_dtype, len(data.classes), config.tta)
                row.update(test_loss=test["loss"], test_acc=test["accuracy"])
                if val_loader is not None:
                    val = evaluate(model, val_loader, amp_dtype, len(data.classes), config.tta)
                    row.update(val_loss=val["loss"], val_acc=val["accuracy"])
                if stepper.ema is not None:
                    ema = evaluate(
                        stepper.ema.module, test_loader, amp_dtype, len(data.classes), config.tta
                    )
                    row.update(ema_test_loss=ema["loss"], ema_test_acc=ema["accuracy"])
            if plan is not None and evaluated:
                plan.eval_s = distributed.all_mean([time.perf_counter() - eval_start], dev)[0]
            state.wall_seconds += time.perf_counter() - wall
            # A GPU's first epoch holds cuDNN autotuning and graph capture: not the speed of
            # the rest, so its plan is first checked after the second.
            if plan is not None and not last and not (dev.type == "cuda" and state.epoch == 0):
                replanned = replan_time_budget(
                    config, plan, state, epoch_steps, steps_per_epoch, total_steps, started, dev
                )
                if replanned is not None:
                    if not quiet:
                        log(
                            f"time budget: {replanned} steps re-planned (was {total_steps}; "
                            f"{plan.step_s * 1e3:.1f} ms/step measured in epoch "
                            f"{state.epoch + 1})"
                        )
                    config = budget_schedule(config, replanned, steps_per_epoch)
                    total_steps = state.planned_steps = replanned
                    if main:
                        _write_text_atomic(out / "config.toml", config_to_toml(preset, config))
            reached = (
                config.target_accuracy
                and row.get(f"{config.target_split}_acc", -1) >= config.target_accuracy
            )
            if reached:
                state.target_seconds = time.perf_counter() - started
            row["wall_seconds"] = state.wall_seconds
            state.metrics.append(row)
            state.epoch += 1
            state.epoch_step, state.epoch_sums, state.epoch_seconds = 0, [0.0, 0.0, 0.0], 0.0
            loader.set_epoch(state.epoch)
            if not quiet:
                log(epoch_line(row))
            is_best = "val_acc" in row and row["val_acc"] > state.best_val
            if is_best:
                state.best_val = row["val_acc"]
            if main:
                _write_metrics(out / "metrics.csv", state.metrics)
            if writer is not None:
                for key, value in row.items():
                    if key not in ("epoch", "step") and value != "":
                        writer.add_scalar(key, value, state.epoch)
                writer.flush()
            save_step()
            if is_best:
                save(out / "best.pt")
            if reached:
                if not quiet:
                    log(
                        f"target accuracy {config.target_accuracy:g}% reached on "
                        f"{config.target_split} after epoch {state.epoch}, "
                        f"{state.target_seconds:.1f}s"
                    )
                break
    summary = {
        "epochs": state.epoch,
        "steps": state.step,
        "model": meta["model_name"],
        "preset": preset,
        "test_loss": state.metrics[-1].get("test_loss"),
        "test_accuracy": state.metrics[-1].get("test_acc"),
        "best_val_accuracy": state.best_val if val_loader is not None else None,
        "train_seconds": sum(r["epoch_seconds"] for r in state.metrics),
        "wall_seconds": state.wall_seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_sha256": weights_digest(model),
        "seconds": time.perf_counter() - started,
    }
    if config.time_budget:
        summary.update(time_budget=config.time_budget, planned_steps=state.planned_steps)
    if config.target_accuracy:
        summary.update(
            target_accuracy=config.target_accuracy,
            target_split=config.target_split,
            target_seconds=state.target_seconds if state.target_seconds >= 0 else None,
        )
    if main:
        summary["checkpoint"] = str(ckpt_io.checkpoint_files(out)[0])
        _write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _tensorboard_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError(
            "--tensorboard needs the tensorboard package: pip install 'cifar-resnet[tensorboard]'"
        ) from None
    return SummaryWriter(str(out / "tensorboard"))


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer, in state_dict order: equal digests, equal weights."""
    import hashlib

    h = hashlib.sha256()
    for name, t in ckpt_io.unwrap(model).state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _write_run_files(out: Path, preset: str, config: TrainConfig, run: dict[str, Any]) -> None:
    _write_text_atomic(out / "config.toml", config_to_toml(preset, config))
    _write_text_atomic(out / "run.json", json.dumps(run, indent=2) + "\n")


def model_name(config: TrainConfig) -> str:
    """The registry name, with ``shortcut`` applied to He et al. ResNets."""
    name = config.model
    if config.shortcut and name.startswith("resnet"):
        name = name.rstrip("b") + ("b" if config.shortcut == "B" else "")
    return name


def _prepare_out_dir(out: Path) -> None:
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
        for stale in (out / "checkpoints").glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    except OSError as e:
        raise OutputError(
            f"cannot write to the output folder {out}: {e.strerror or e}; choose a writable --out"
        ) from None


def check_resume(
    resume: dict[str, Any], config: TrainConfig, classes: list[str], path: Path
) -> None:
    """Refuse to continue a checkpoint with another model or class list."""
    if resume["model_name"] != model_name(config):
        raise CheckpointError(
            f"{path} holds a {resume['model_name']} model but the run asks for "
            f"{model_name(config)}; drop --model or start a new --out"
        )
    if list(resume["classes"]) != list(classes):
        raise CheckpointError(
            f"{path} was trained on classes {resume['classes'][:5]}... but the "
            f"data has {classes[:5]}...; resume with the same --data"
        )
