"""Training images/s of the registry's nets on this machine: a fixed in-memory batch, fp32,
channels_last, fused SGD through the package's own train_step, no loader. It is what chose the
fast preset's CPU net.

    .venv/bin/python bench/net_speed.py --batch-size 256 --steps 4
"""

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cifar_resnet.config import preset_config  # noqa: E402
from cifar_resnet.models import FastNet, count_parameters, create_model  # noqa: E402
from cifar_resnet.optim import Schedule, make_optimizer  # noqa: E402
from cifar_resnet.runtime import resolve_device, resolve_runtime  # noqa: E402
from cifar_resnet.step import Trainer, train_step  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=4, help="timed steps after 2 untimed ones")
    args = p.parse_args()
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    nets = {
        "seed": create_model("seed"),
        "fastnet-s": create_model("fastnet-s"),
        "airbench widths 64/256/256": FastNet((64, 256, 256)),
        "fastnet": create_model("fastnet"),
    }
    config = preset_config("fast", "cpu")
    switches = dict(precision="fp32", channels_last="on", compile="off")
    runtime = resolve_runtime(dataclasses.replace(config, **switches), resolve_device("cpu"), False)
    dev = runtime.device
    for name, model in nets.items():
        model = model.to(memory_format=torch.channels_last).train()
        schedule = Schedule.of(dataclasses.replace(config, lr=1e-3, schedule="constant"), 1, 1000)
        trainer = Trainer(model, make_optimizer(model, config, dev), runtime, schedule)
        x = torch.randn(args.batch_size, 3, 32, 32).to(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (args.batch_size,))
        for i in range(2):  # untimed; the lr is set before each step, as training sets it
            train_step(trainer, x, y, i)
        t0 = time.perf_counter()
        for i in range(2, 2 + args.steps):
            train_step(trainer, x, y, i)
        rate = args.steps * args.batch_size / (time.perf_counter() - t0)
        print(f"{name:28s} {count_parameters(model):>10,d} params  {rate:7.1f} images/s")


if __name__ == "__main__":
    main()
