"""The loader's share of a training epoch of the seed preset on the CPU.

Times one pass of the DeviceLoader over the training set (crop, flip, normalise: everything
a training step asks of it) and one real epoch of training (``fit``, seed preset), in one
process, and prints the share.

    python bench/loader_share.py --data ../shared/data/cifar10-jpeg [--repeats 3]
"""

import argparse
import statistics
import tempfile
import time

import torch

from cifar_resnet.config import resolve_config
from cifar_resnet.data import load_data
from cifar_resnet.loader import DeviceLoader
from cifar_resnet.train import fit, prepare_data, resolve_channels_last

p = argparse.ArgumentParser()
p.add_argument("--data", required=True)
p.add_argument("--repeats", type=int, default=3)
args = p.parse_args()

_, config = resolve_config("seed", None, {"epochs": 1, "eval_every": 0, "limit_test": 1000})
bundle = load_data(args.data)
data = prepare_data(config, bundle)
loader = DeviceLoader(
    data.train.images,
    data.train.labels,
    config.batch_size,
    train=True,
    padding=config.padding,
    mean=data.mean,
    std=data.std,
    seed=config.seed,
    channels_last=resolve_channels_last(config.channels_last),
)
passes = []
for epoch in range(args.repeats):
    loader.set_epoch(epoch)
    t = time.perf_counter()
    for _batch in loader:
        pass
    passes.append(time.perf_counter() - t)
loader_s = statistics.median(passes)
with tempfile.TemporaryDirectory() as out:
    summary = fit(config, bundle, out, device="cpu", quiet=True)
epoch_s = summary["train_seconds"]
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
print(
    f"loader alone: {loader_s:.2f} s per epoch (median of {args.repeats}: "
    f"{', '.join(f'{t:.2f}' for t in passes)})"
)
print(
    f"training epoch (seed preset, {len(data.train.labels)} images): {epoch_s:.1f} s, "
    f"{len(data.train.labels) / epoch_s:.0f} images/s"
)
print(f"loader share of the epoch: {100 * loader_s / epoch_s:.1f}%")
