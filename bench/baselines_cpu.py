"""The baselines on a CPU, in one command: images/s of each new model (train and eval), the
cost of each regulariser per step relative to crop + flip, and a short learning run of each
regulariser on ResNet-18 (first and last epoch's train loss, test accuracy).

    .venv/bin/python bench/baselines_cpu.py                      # everything (long on 2 cores)
    .venv/bin/python bench/baselines_cpu.py --parts models --models resnet18 --steps 2
    .venv/bin/python bench/baselines_cpu.py --parts learn --learn-images 2000 --learn-epochs 3

Models: a fixed in-memory batch through the package's own step (``step.train_step``: fp32,
channels_last, fused SGD, a constant lr of 1e-3), no loader; eval is a no-grad forward.
Regularisers: the training loader's time per batch of 128 (crop + flip, then each regulariser
on top) on the data, and that time as a share of a ResNet-18 training step measured here.
Learning: ``fit`` with ``--preset resnet18`` on a stratified subset of the data (cifar10-jpeg
from ../shared if present), a few epochs.
"""

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cifar_resnet.config import preset_config, resolve_config  # noqa: E402
from cifar_resnet.data import ArraySplit, RunSplits  # noqa: E402
from cifar_resnet.loader import train_loader  # noqa: E402
from cifar_resnet.models import count_parameters, create_model  # noqa: E402
from cifar_resnet.optim import Schedule, make_optimizer  # noqa: E402
from cifar_resnet.runtime import resolve_device, resolve_runtime  # noqa: E402
from cifar_resnet.step import Trainer, train_step  # noqa: E402

MODELS = ("resnet18", "resnet34", "preact-resnet18", "wrn-16-4", "wrn-16-8", "wrn-40-4",
          "wrn-28-10")  # fmt: skip
REGULARISERS = {
    "crop + flip": {},
    "--cutout 16": {"cutout": 16},
    "--mixup 1": {"mixup": 1.0},
    "--cutmix 1": {"cutmix": 1.0},
    "--mixup 1 --cutmix 1": {"mixup": 1.0, "cutmix": 1.0},
    "--autoaugment cifar10": {"autoaugment": "cifar10"},
    "--randaugment 2,9": {"randaugment": [2, 9]},
    "--trivialaugment": {"trivialaugment": True},
}
SHARED = Path(os.environ.get("CIFAR_RESNET_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def cpu_line() -> str:
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return (f"{model}; {os.cpu_count()} CPUs, {torch.get_num_threads()} threads; "
            f"{' '.join(isa) or 'no AVX2'}; torch {torch.__version__}")  # fmt: skip


def trainer_for(model: torch.nn.Module) -> Trainer:
    """The resnet18 preset's optimizer around ``model`` at a constant lr of 1e-3."""
    config = dataclasses.replace(
        preset_config("resnet18"),
        precision="fp32",
        channels_last="on",
        compile="off",
        lr=1e-3,
        schedule="constant",
        lr_epochs=False,
    )
    runtime = resolve_runtime(config, resolve_device("cpu"), False)
    optimizer = make_optimizer(model, config, runtime.device)
    return Trainer(model, optimizer, runtime, Schedule.of(config, 1, 1 << 30))


def step_rate(model: torch.nn.Module, batch: int, steps: int) -> tuple[float, float]:
    """(train images/s, eval images/s) on a fixed 32x32 batch."""
    model = model.to(memory_format=torch.channels_last).train()
    trainer = trainer_for(model)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    train_step(trainer, x, y, 0)  # untimed
    t0 = time.perf_counter()
    for i in range(steps):
        train_step(trainer, x, y, i + 1)
    train = steps * batch / (time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
    return train, steps * batch / (time.perf_counter() - t0)


def bench_models(args) -> None:
    print(f"\n### Models: images/s at batch {args.batch_size}, 32x32, fp32, channels_last\n")
    print("| model | parameters | train images/s | eval images/s |\n|---|---:|---:|---:|")
    for name in args.models:
        model = create_model(name)
        train, evaluate = step_rate(model, args.batch_size, args.steps)
        print(f"| {name} | {count_parameters(model):,} | {train:.1f} | {evaluate:.1f} |",
              flush=True)  # fmt: skip


def load(args):
    from cifar_resnet.data import load_data

    jpeg = SHARED / "data" / "cifar10-jpeg"
    if args.data or jpeg.is_dir():
        return load_data(args.data or str(jpeg))
    print("(no data given and no ../shared/data/cifar10-jpeg: random images)")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5000, 32, 32, 3), dtype=np.uint8)
    return images, rng.integers(0, 10, 5000)


def bench_regularisers(args) -> None:
    data = load(args)
    images, labels = (data.train.images, data.train.labels) if hasattr(data, "train") else data
    images, labels = images[: args.loader_images], labels[: args.loader_images]
    # A ResNet-18 step on 128 images, from its rate at --batch-size.
    step_s = 128 / step_rate(create_model("resnet18"), args.batch_size, args.steps)[0]
    print(f"\n### Regularisers: loader time per batch of 128 ({len(labels)} images a pass); "
          f"a ResNet-18 training step here: {step_s * 1e3:.0f} ms\n")  # fmt: skip
    print("| regulariser | ms / batch | x crop + flip | share of a ResNet-18 step |")
    print("|---|---:|---:|---:|")
    base = None
    for name, values in REGULARISERS.items():
        _, config = resolve_config("resnet18", flag_values={**values, "batch_size": 128})
        splits = RunSplits(ArraySplit(images, labels), None, ArraySplit(images, labels),
                           [str(c) for c in range(10)], tuple(config.mean),
                           tuple(config.std))  # fmt: skip
        runtime = resolve_runtime(
            dataclasses.replace(config, channels_last="on"), resolve_device("cpu"), False
        )
        loader = train_loader(splits, config, runtime)
        loader.chunk = 128  # per batch, as a step consumes them
        list(loader.batches(max(len(loader) - 2, 0)))  # warm
        t0 = time.perf_counter()
        n = sum(1 for _ in loader)
        ms = (time.perf_counter() - t0) / n * 1e3
        base = base or ms
        print(f"| {name} | {ms:.1f} | {ms / base:.2f} | {ms / 1e3 / step_s:.1%} |", flush=True)


def bench_learning(args) -> None:
    from cifar_resnet.data import load_data
    from cifar_resnet.train import fit

    data = load_data(args.data or str(SHARED / "data" / "cifar10-jpeg"))
    print(f"\n### Learning: --preset resnet18, {args.learn_images} training images, "
          f"{args.learn_epochs} epochs, batch {args.learn_batch}, "
          f"{args.learn_test} test images\n")  # fmt: skip
    print("| regulariser | train loss, first epoch | last epoch | test accuracy | seconds |")
    print("|---|---:|---:|---:|---:|")
    for name, values in REGULARISERS.items():
        if args.only and name not in args.only:
            continue
        flags = {**values, "limit_train": args.learn_images, "limit_test": args.learn_test,
                 "epochs": args.learn_epochs, "batch_size": args.learn_batch,
                 "lr": 0.1 * args.learn_batch / 128}  # fmt: skip
        _, config = resolve_config("resnet18", flag_values=flags, device_type="cpu")
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            summary = fit(config, data, Path(out) / "run", preset="resnet18", device="cpu",
                          quiet=True)  # fmt: skip
            rows = (Path(out) / "run" / "metrics.csv").read_text().splitlines()
        import csv

        metrics = list(csv.DictReader(rows))
        first, last = float(metrics[0]["train_loss"]), float(metrics[-1]["train_loss"])
        print(f"| {name} | {first:.3f} | {last:.3f} | {summary['test_accuracy']:.2f}% | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="models,regularisers,learn")
    p.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="timed steps after one untimed")
    p.add_argument("--data", help="the data (default: ../shared/data/cifar10-jpeg)")
    p.add_argument("--loader-images", type=int, default=2560)
    p.add_argument("--learn-images", type=int, default=2000)
    p.add_argument("--learn-test", type=int, default=1000)
    p.add_argument("--learn-epochs", type=int, default=3)
    p.add_argument("--learn-batch", type=int, default=64)
    p.add_argument("--only", type=lambda s: s.split(";"), default=None,
                   help="learning runs of these regularisers only, ';'-separated names as in "
                   "the table, e.g. 'crop + flip;--cutout 16'")  # fmt: skip
    args = p.parse_args()
    print(cpu_line())
    parts = args.parts.split(",")
    if "models" in parts:
        bench_models(args)
    if "regularisers" in parts:
        bench_regularisers(args)
    if "learn" in parts:
        bench_learning(args)


if __name__ == "__main__":
    main()
