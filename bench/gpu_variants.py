"""On a GPU: time the training step of the seed net (batch 128) in each mode, and list the
kernels an eager step spends its time in. Prints ms/step and images/s per variant.

    python bench/gpu_variants.py [--steps 400] [--warmup 20]

Each variant is the package's own step (``cifar_resnet.step.train_step`` at a constant lr)
under the Runtime that ``runtime.resolve_runtime`` makes
from the seed recipe with that precision, layout and compile switch; the eager variants
turn the resolved Runtime's CUDA graph off. ``--device cpu`` runs only what a CPU can (the
eager variant and the profile), to check the script without a GPU.
"""

import argparse
import dataclasses
import time

import torch
from _device import sync

from cifar_resnet.config import TrainConfig
from cifar_resnet.models import create_model
from cifar_resnet.optim import Schedule, make_optimizer
from cifar_resnet.runtime import resolve_device, resolve_runtime
from cifar_resnet.step import Trainer, train_step

# (bf16, channels_last, compile, CUDA graph)
VARIANTS = [
    (True, True, False, True),
    (True, False, False, True),
    (False, True, False, True),
    (True, True, False, False),
    (True, True, True, True),
]


def stepper(dev: torch.device, bf16: bool, cl: bool, comp: bool, graph: bool) -> Trainer:
    config = dataclasses.replace(
        TrainConfig(schedule="constant", steps=1),
        precision="bf16" if bf16 else "fp32",
        channels_last="on" if cl else "off",
        compile="on" if comp else "off",
    )
    runtime = resolve_runtime(config, dev, distributed=False)
    runtime = dataclasses.replace(runtime, cuda_graph=runtime.cuda_graph and graph)
    torch.manual_seed(0)
    model = create_model("seed").to(dev)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Trainer(model, make_optimizer(model, config, dev), runtime, Schedule.of(config, 1))


def step(s: Trainer, x: torch.Tensor, y: torch.Tensor) -> None:
    train_step(s, x, y, 0)


def time_variant(dev, x, y, variant, args) -> float | None:
    """Print the variant's ms/step; return its seconds per step (None: failed or skipped)."""
    bf16, cl, comp, graph = variant
    name = (
        f"{'bf16' if bf16 else 'fp32'} {'channels_last' if cl else 'contiguous'}"
        f"{' compile' if comp else ''}{' graph' if graph else ' eager'}"
    )
    if graph and dev.type != "cuda":
        print(f"{name:<40} skipped: CUDA graphs need a GPU", flush=True)
        return None
    try:
        s = stepper(dev, bf16, cl, comp, graph)
        xx = x.contiguous(memory_format=torch.channels_last) if cl else x
        t = time.perf_counter()
        for _ in range(args.warmup):
            step(s, xx, y)
        sync(dev)
        warm = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(args.steps):
            step(s, xx, y)
        sync(dev)
        dt = (time.perf_counter() - t) / args.steps
    except Exception as e:  # noqa: BLE001 - report and go on to the next variant
        print(f"{name:<40} failed: {str(e).splitlines()[0][:150]}", flush=True)
        return None
    print(
        f"{name:<40} {dt * 1e3:7.3f} ms/step {128 / dt:9.0f} img/s (warm-up {warm:.1f}s, "
        f"graph={s.graph is not None})",
        flush=True,
    )
    return dt


def report_best(results: dict) -> None:
    """The fastest bf16 graph variant against the default; its flags for gpu_check.sh."""
    (cl, comp), best = min(results.items(), key=lambda kv: kv[1])
    default = results.get((True, False), best)
    print(
        f"best bf16 graph variant: channels_last={cl} compile={comp}, "
        f"{default / best:.2f}x the default"
    )
    with open("/tmp/best_flags", "w") as f:
        f.write(f"--channels-last {'on' if cl else 'off'} --compile {'on' if comp else 'off'}\n")
    with open("/tmp/best_speedup", "w") as f:
        f.write(f"{default / best:.3f}\n")


def profile_eager(dev, x, y) -> None:
    """The kernels of 10 eager bf16 channels_last steps, by total time."""
    s = stepper(dev, True, True, False, False)
    xx = x.contiguous(memory_format=torch.channels_last)
    for _ in range(5):
        step(s, xx, y)
    cuda = dev.type == "cuda"
    activity = torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[activity]) as prof:
        for _ in range(10):
            step(s, xx, y)
        sync(dev)
    sort_by = "cuda_time_total" if cuda else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=18, max_name_column_width=60))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (graph capture)")
    p.add_argument("--device", default="cuda", help="cuda (cpu: only the eager variant)")
    args = p.parse_args()
    dev = resolve_device(args.device)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print(name, "torch", torch.__version__)
    x = torch.randn(128, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (128,), device=dev)
    results = {}
    for variant in VARIANTS:
        dt = time_variant(dev, x, y, variant, args)
        bf16, cl, comp, graph = variant
        if dt is not None and graph and bf16:
            results[(cl, comp)] = dt
    if results:
        report_best(results)
    profile_eager(dev, x, y)


if __name__ == "__main__":
    main()
