"""Measurement worker for bench/throughput.py; each mode runs in its own process.

    python bench/_ours_steps.py train   --data DIR --steps N [--warmup 3] [--device cpu] ...
    python bench/_ours_steps.py ceiling [--device cpu] [--no-compile] [--bf16-steps 2] ...
    python bench/_ours_steps.py eval    --data DIR [--device cpu] ...
    python bench/_ours_steps.py machine [--device cpu] [--matmul-size 1024]

``train`` runs cifar-resnet's own training loop (``cifar_resnet.train.train_one_epoch`` over
the loader and ``Stepper`` that ``cifar_resnet.train.build_trainer`` makes for ``fit``, seed
preset, batch 128) for ``--warmup`` untimed steps, then ``--steps`` timed steps, and
prints ``images/s: X`` last, as the reference program does. Data comes from
``cifar_resnet.data.load_data`` (set ``CIFAR_RESNET_CACHE`` to reuse the decoded arrays);
loading is not timed, as the reference's dataset construction is not timed.

Every mode prints one line ``RESULT {json}`` before exiting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from cifar_resnet.config import preset_config
from cifar_resnet.loader import DeviceLoader
from cifar_resnet.models import create_model
from cifar_resnet.train import (
    HALF,
    RunState,
    Stepper,
    Stop,
    build_trainer,
    cpu_has_native_bf16,
    evaluate,
    make_optimizer,
    prepare_data,
    resolve_channels_last,
    resolve_compile,
    resolve_device,
    resolve_precision,
    seed_everything,
    train_one_epoch,
)

BATCH = 128


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def native_bf16(dev: torch.device) -> bool:
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def seed_config(args):
    """The seed preset (batch 128), with the precision/layout/compile switches of the run."""
    config = preset_config("seed")
    config.batch_size = BATCH
    config.precision = args.precision
    config.channels_last = args.channels_last
    config.compile = args.compile
    return config.validate()


# ----------------------------------------------------------------------------- train


def cmd_train(args) -> None:
    from cifar_resnet.data import load_data

    dev = resolve_device(args.device)
    config = seed_config(args)
    amp_dtype = resolve_precision(config.precision, dev)
    channels_last = resolve_channels_last(config.channels_last)
    use_compile = resolve_compile(config.compile)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    t0 = time.perf_counter()
    bundle = load_data(args.data)
    load_s = time.perf_counter() - t0
    seed_everything(config.seed)
    data = prepare_data(config, bundle)
    # fit()'s own set-up: the loader, model, optimizer and step (a CUDA graph on a GPU).
    trainer = build_trainer(config, data, dev, amp_dtype, channels_last, use_compile)
    loader, stepper = trainer.loader, trainer.stepper
    state = RunState()
    stop = Stop()  # never entered: no signal handlers; signum stays None
    trainer.model.train()

    def run_to(total_steps: int) -> float:
        """Train until ``state.step == total_steps`` (across epochs); returns the seconds."""
        start = time.perf_counter()
        while state.step < total_steps:
            train_one_epoch(stepper, loader, state, config, total_steps, stop)
            if state.epoch_step >= len(loader):  # epoch finished: next one, as fit() does
                state.epoch += 1
                state.epoch_step, state.epoch_sums, state.epoch_seconds = 0, [0.0, 0.0, 0.0], 0.0
                loader.set_epoch(state.epoch)
        sync(dev)
        return time.perf_counter() - start

    warm_s = run_to(args.warmup)
    timed_s = run_to(args.warmup + args.steps)
    ips = args.steps * BATCH / timed_s
    cold_ips = (args.warmup + args.steps) * BATCH / (warm_s + timed_s)
    emit(
        {
            "mode": "train",
            "device": str(dev),
            "precision": str(amp_dtype or "fp32"),
            "channels_last": channels_last,
            "compile": use_compile,
            "cuda_graph": stepper.cuda_graph,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "warmup_steps": args.warmup,
            "steps": args.steps,
            "warmup_s": warm_s,
            "timed_s": timed_s,
            "images_per_s": ips,
            "cold_images_per_s": cold_ips,
            "load_s": load_s,
            "train_loss": state.epoch_sums[0] / max(state.epoch_sums[2], 1),
        }
    )
    print(f"images/s: {ips:.1f}", flush=True)


# ----------------------------------------------------------------------------- ceiling


def time_steps(stepper: Stepper, x, y, dev, warmup: int, steps: int, repeats: int) -> dict:
    t0 = time.perf_counter()
    for _ in range(warmup):
        stepper.step(x, y, 0.1)
    sync(dev)
    warm_s = time.perf_counter() - t0
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            stepper.step(x, y, 0.1)
        sync(dev)
        rates.append(steps * x.shape[0] / (time.perf_counter() - start))
    return {
        "images_per_s": statistics.median(rates),
        "all": rates,
        "warmup_s": warm_s,
        "steps": steps,
        "repeats": repeats,
    }


def cmd_ceiling(args) -> None:
    dev = resolve_device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    config = seed_config(args)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(BATCH, 3, 32, 32, generator=g).to(dev)
    y = torch.randint(0, 10, (BATCH,), generator=g).to(dev)
    bf16_native = native_bf16(dev)
    variants = []
    for prec in ("fp32", "bf16"):
        for layout in ("contiguous", "channels_last"):
            variants.append((prec, layout, False))
    if not args.no_compile:
        for layout in args.compile_layouts:
            variants.append(("fp32", layout, True))
    rows = []
    for prec, layout, comp in variants:
        torch.manual_seed(0)
        cl = layout == "channels_last"
        model = create_model("seed", 10).to(dev)
        x = x0
        if cl:
            model = model.to(memory_format=torch.channels_last)
            x = x0.contiguous(memory_format=torch.channels_last)
        model.train()
        amp = torch.bfloat16 if prec == "bf16" else None
        stepper = Stepper(model, make_optimizer(model, config, dev), amp, dev, 0.0, comp)
        slow = prec == "bf16" and not bf16_native
        steps = args.bf16_steps if slow else args.steps
        warmup = 1 if slow else args.warmup
        r = time_steps(stepper, x, y, dev, warmup, steps, args.repeats)
        r.update(precision=prec, layout=layout, compile=comp, emulated_bf16=slow)
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
    from cifar_resnet.data import load_data

    dev = resolve_device(args.device)
    config = seed_config(args)
    amp_dtype = resolve_precision(config.precision, dev)
    channels_last = resolve_channels_last(config.channels_last)
    bundle = load_data(args.data)
    test = bundle.test
    kw = dict(device=dev, train=False, mean=HALF[0], std=HALF[1], channels_last=channels_last)
    loader = DeviceLoader(test.images, test.labels, config.eval_batch_size, **kw)
    nb = config.eval_batch_size
    warm = DeviceLoader(test.images[:nb], test.labels[:nb], nb, **kw)
    torch.manual_seed(0)
    model = create_model("seed", len(bundle.classes)).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    evaluate(model, warm, amp_dtype, len(bundle.classes))
    sync(dev)
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = evaluate(model, loader, amp_dtype, len(bundle.classes))
        sync(dev)
        rates.append(result["count"] / (time.perf_counter() - start))
    emit(
        {
            "mode": "eval",
            "device": str(dev),
            "precision": str(amp_dtype or "fp32"),
            "channels_last": channels_last,
            "eval_batch_size": config.eval_batch_size,
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
