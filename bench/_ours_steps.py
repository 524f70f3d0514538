"""Measurement worker for bench/throughput.py; each mode runs in its own process.

    python bench/_ours_steps.py train   --data DIR --steps N [--warmup 3] [--device cpu] ...
    python bench/_ours_steps.py ceiling [--device cpu] [--no-compile] [--bf16-steps 2] ...
    python bench/_ours_steps.py eval    --data DIR [--device cpu] ...
    python bench/_ours_steps.py machine [--device cpu] [--matmul-size 1024]

``train`` runs cifar-resnet's own training steps (``cifar_resnet.loop.train_steps`` over the
trainer that ``cifar_resnet.trainer.build_trainer`` makes for ``fit``: its loader, model,
optimizer and step, a CUDA graph on a GPU; seed preset, batch 128) for ``--warmup`` untimed
steps, then ``--steps`` timed steps, and prints ``images/s: X`` last, as the reference
program does. Data comes from ``cifar_resnet.data.load_data`` (set ``CIFAR_RESNET_CACHE`` to
reuse the decoded arrays) and ``run_splits``; loading is not timed, as the reference's
dataset construction is not timed.

Every mode prints one line ``RESULT {json}`` before exiting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import torch
from _device import sync

from cifar_resnet.config import TrainConfig, preset_config
from cifar_resnet.data import ArraySplit, DataBundle, load_data
from cifar_resnet.evaluate import evaluate
from cifar_resnet.loader import eval_loader
from cifar_resnet.loop import train_steps
from cifar_resnet.models import create_model
from cifar_resnet.optim import Schedule
from cifar_resnet.run import RunState
from cifar_resnet.runtime import (
    resolve_device,
    resolve_precision,
)
from cifar_resnet.step import Trainer, train_step
from cifar_resnet.trainer import build_trainer, start

BATCH = 128


def native_bf16(dev: torch.device) -> bool:
    """Whether precision ``auto`` picks bf16 here: the package's own test."""
    return resolve_precision("auto", dev) is not None


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def seed_config(args, **switches) -> TrainConfig:
    """The seed preset (batch 128), with the precision/layout/compile switches of the run."""
    config = dataclasses.replace(
        preset_config("seed"),
        batch_size=BATCH,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
    )
    return dataclasses.replace(config, **switches).validate()


def set_up(config: TrainConfig, bundle: DataBundle, dev: torch.device):
    """fit()'s own set-up: runtime, seeds, the run's images, the trainer."""
    runtime, splits = start(config, bundle, dev)
    return runtime, splits, build_trainer(config, splits, runtime)


# ----------------------------------------------------------------------------- train


def cmd_train(args) -> None:
    dev = resolve_device(args.device)
    config = seed_config(args)
    t0 = time.perf_counter()
    bundle = load_data(args.data)
    load_s = time.perf_counter() - t0
    runtime, splits, trainer = set_up(config, bundle, dev)
    trainer.model.train()
    total = args.warmup + args.steps
    start = mark = time.perf_counter()
    warm_s = 0.0
    state = RunState()
    for done in train_steps(trainer, state):  # fit's steps, epoch after epoch
        if done == args.warmup:
            sync(dev)
            mark = time.perf_counter()
            warm_s = mark - start
        if done >= total:
            break
    sync(dev)
    timed_s = time.perf_counter() - mark
    ips = args.steps * BATCH / timed_s
    cold_ips = total * BATCH / (warm_s + timed_s)
    emit(
        {
            "mode": "train",
            "device": str(dev),
            "precision": str(runtime.amp_dtype or "fp32"),
            "channels_last": runtime.channels_last,
            "compile": runtime.compile,
            "cuda_graph": trainer.graph.enabled,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "warmup_steps": args.warmup,
            "steps": args.steps,
            "warmup_s": warm_s,
            "timed_s": timed_s,
            "images_per_s": ips,
            "cold_images_per_s": cold_ips,
            "load_s": load_s,
            "train_images": len(splits.train),
            "train_loss": train_loss_sum(trainer, state) / (total * BATCH),
        }
    )
    print(f"images/s: {ips:.1f}", flush=True)


def train_loss_sum(trainer: Trainer, state: RunState) -> float:
    """The loss summed over every image trained: the finished epochs' and this one's."""
    done = sum(row["train_loss"] * row["images"] for row in state.metrics)
    return done + float(trainer.counters.loss_sum)


# ----------------------------------------------------------------------------- ceiling


def synthetic_bundle(n: int, classes: int = 10) -> DataBundle:
    """``n`` random 32x32 images per split, for the fixed in-memory batch of the ceiling."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8).numpy()
    labels = torch.arange(n) % classes
    split = ArraySplit(images, labels.numpy())
    return DataBundle(split, split, [str(c) for c in range(classes)], "synthetic")


def time_steps(trainer: Trainer, x, y, dev, warmup: int, steps: int, repeats: int) -> dict:
    """``train_step`` on one fixed batch: warm-up, then ``repeats`` timings of ``steps``."""
    total = warmup + steps * repeats
    constant = dataclasses.replace(trainer.schedule.recipe, schedule="constant", lr=0.1)
    trainer.schedule = Schedule.of(constant, 1, total)
    t0 = time.perf_counter()
    for i in range(warmup):
        train_step(trainer, x, y, i)
    sync(dev)
    warm_s = time.perf_counter() - t0
    rates = []
    for r in range(repeats):
        start = time.perf_counter()
        for i in range(steps):
            train_step(trainer, x, y, warmup + r * steps + i)
        sync(dev)
        rates.append(steps * x.shape[0] / (time.perf_counter() - start))
    return {
        "images_per_s": statistics.median(rates),
        "all": rates,
        "warmup_s": warm_s,
        "steps": steps,
        "repeats": repeats,
    }


def ceiling_variants(args) -> list[tuple[str, str, bool]]:
    layouts = ("contiguous", "channels_last")
    variants = [(prec, layout, False) for prec in ("fp32", "bf16") for layout in layouts]
    if not args.no_compile:
        variants += [("fp32", layout, True) for layout in args.compile_layouts]
    return variants


def cmd_ceiling(args) -> None:
    dev = resolve_device(args.device)
    bundle = synthetic_bundle(BATCH)
    bf16_native = native_bf16(dev)
    rows = []
    for prec, layout, comp in ceiling_variants(args):
        config = seed_config(
            args,
            precision=prec,
            channels_last="on" if layout == "channels_last" else "off",
            compile="on" if comp else "off",
        )
        _, _, trainer = set_up(config, bundle, dev)
        trainer.model.train()
        x, y = next(iter(trainer.loader))  # one batch, made once: no loader in the timing
        slow = prec == "bf16" and not bf16_native
        steps = args.bf16_steps if slow else args.steps
        warmup = 1 if slow else args.warmup
        r = time_steps(trainer, x, y, dev, warmup, steps, args.repeats)
        graph = trainer.graph.graph is not None
        r.update(precision=prec, layout=layout, compile=comp, emulated_bf16=slow, cuda_graph=graph)
        rows.append(r)
        print(
            f"  ceiling {prec} {layout} compile={'on' if comp else 'off'}: "
            f"{r['images_per_s']:.1f} images/s",
            file=sys.stderr,
            flush=True,
        )
    emit(
        {
            "mode": "ceiling",
            "device": str(dev),
            "threads": torch.get_num_threads(),
            "native_bf16": bf16_native,
            "rows": rows,
        }
    )


# ----------------------------------------------------------------------------- eval


def cmd_eval(args) -> None:
    dev = resolve_device(args.device)
    config = seed_config(args)
    runtime, splits, trainer = set_up(config, load_data(args.data), dev)
    model, test, nb = trainer.model, splits.test, config.eval_batch_size
    kw = dict(mean=splits.mean, std=splits.std, device=dev, channels_last=runtime.channels_last)
    loader = eval_loader(test.images, test.labels, nb, **kw)
    warm = eval_loader(test.images[:nb], test.labels[:nb], nb, **kw)
    figures = dict(num_classes=len(splits.classes), amp_dtype=runtime.amp_dtype)
    evaluate(model, warm, **figures)
    sync(dev)
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = evaluate(model, loader, **figures)
        sync(dev)
        rates.append(result["count"] / (time.perf_counter() - start))
    emit(
        {
            "mode": "eval",
            "device": str(dev),
            "precision": str(runtime.amp_dtype or "fp32"),
            "channels_last": runtime.channels_last,
            "eval_batch_size": nb,
            "images": len(test.labels),
            "images_per_s": statistics.median(rates),
            "all": rates,
            "threads": torch.get_num_threads(),
        }
    )


# ----------------------------------------------------------------------------- machine


def training_flops_per_image(dev: torch.device) -> tuple[int, int]:
    """(forward conv+linear MACs per image, training FLOPs per image = 2 * MACs * 3)."""
    model = create_model("seed", 10).to(dev).eval()
    macs = [0]

    def hook(mod, inp, out):
        per_out = out.shape[1:].numel()  # outputs per image
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        else:
            k = mod.in_features
        macs[0] += per_out * k

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32, device=dev))
    for h in handles:
        h.remove()
    return macs[0], 2 * macs[0] * 3


def matmul_gflops(dev: torch.device, dtype: torch.dtype, n: int, min_seconds: float) -> float:
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    for _ in range(2):
        a @ b
    sync(dev)
    reps, rates = 1, []
    while True:  # grow until one timing lasts min_seconds / 3, then take the best of 3
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(dev)
        el = time.perf_counter() - start
        if el >= min_seconds / 3 or reps >= 1 << 16:
            break
        reps *= 2
    rates.append(2 * n**3 * reps / el)
    for _ in range(2):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(dev)
        rates.append(2 * n**3 * reps / (time.perf_counter() - start))
    return max(rates) / 1e9


def cmd_machine(args) -> None:
    dev = resolve_device(args.device)
    macs, flops = training_flops_per_image(dev)
    fp32 = matmul_gflops(dev, torch.float32, args.matmul_size, 1.5)
    bf16 = matmul_gflops(dev, torch.bfloat16, args.matmul_size, 1.5)
    emit(
        {
            "mode": "machine",
            "device": str(dev),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "native_bf16": native_bf16(dev),
            "cuda_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "forward_macs_per_image": macs,
            "train_flops_per_image": flops,
            "matmul_size": args.matmul_size,
            "matmul_fp32_gflops": fp32,
            "matmul_bf16_gflops": bf16,
        }
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["train", "ceiling", "eval", "machine"])
    p.add_argument("--data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default="auto")
    p.add_argument("--channels-last", default="auto")
    p.add_argument("--compile", default="auto")
    p.add_argument("--no-compile", action="store_true", help="ceiling: skip torch.compile rows")
    p.add_argument(
        "--compile-layouts",
        nargs="+",
        default=["contiguous", "channels_last"],
        choices=["contiguous", "channels_last"],
    )
    p.add_argument(
        "--bf16-steps",
        type=int,
        default=2,
        help="ceiling: steps per timing for bf16 where the CPU emulates it",
    )
    p.add_argument("--matmul-size", type=int, default=1024)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    {"train": cmd_train, "ceiling": cmd_ceiling, "eval": cmd_eval, "machine": cmd_machine}[
        args.mode
    ](args)


if __name__ == "__main__":
    main()
