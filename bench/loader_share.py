"""The loader's share of a training epoch of the seed preset on the CPU.

Times one pass of the training loader (``cifar_resnet.loader.train_loader``: crop with the
recipe's padding and pad mode, flip or alternating flip, normalise: everything a training step
asks of it) over the run's training images (``run_splits``) and one real epoch of training
(``fit``, seed preset), in one process, and prints the share.

    python bench/loader_share.py --data ../shared/data/cifar10-jpeg [--repeats 3]
"""

import argparse
import statistics
import tempfile
import time

import torch

from cifar_resnet.config import resolve_config
from cifar_resnet.data import load_data, splits_for
from cifar_resnet.loader import train_loader
from cifar_resnet.runtime import resolve_device, resolve_runtime
from cifar_resnet.train import fit


def loader_passes(config, bundle, repeats: int) -> tuple[list[float], int]:
    """Seconds of each full pass of the run's training loader, and its image count."""
    runtime = resolve_runtime(config, resolve_device("cpu"), distributed=False)
    splits = splits_for(bundle, config)
    loader = train_loader(splits, config, runtime)
    passes = []
    for epoch in range(repeats):
        loader.set_epoch(epoch)
        t = time.perf_counter()
        for _batch in loader:
            pass
        passes.append(time.perf_counter() - t)
    return passes, len(splits.train)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    flags = {"epochs": 1, "eval_every": 0, "limit_test": 1000}
    _, config = resolve_config("seed", None, flags, device_type="cpu")
    bundle = load_data(args.data)
    passes, images = loader_passes(config, bundle, args.repeats)
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
        f"training epoch (seed preset, {images} images): {epoch_s:.1f} s, "
        f"{images / epoch_s:.0f} images/s"
    )
    print(f"loader share of the epoch: {100 * loader_s / epoch_s:.1f}%")


if __name__ == "__main__":
    main()
