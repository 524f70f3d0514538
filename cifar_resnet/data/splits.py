"""Which images a run trains, validates and tests on: seeded stratified splits and subsets,
and the normalisation statistics.

``run_splits`` (training) and ``eval_split`` (evaluating, reporting, exporting a trained run)
are the only place that decides this, so every command sees the same images for one config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cifar_resnet.errors import DataError, UsageError

from .sources import ArraySplit, DataBundle

Stats = tuple[float, float, float]
HALF: tuple[Stats, Stats] = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# ImageNet's statistics, which published CIFAR weights (akamaster's) were trained with.
IMAGENET: tuple[Stats, Stats] = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a subset of ``n`` examples that keeps the class proportions.

    Each class gets ``n * class_fraction`` examples rounded by the largest-remainder method,
    so the total is exactly ``n``; which examples is drawn with ``np.random.default_rng(seed)``.
    """
    labels = np.asarray(labels)
    total = len(labels)
    if not 0 <= n <= total:
        raise DataError(
            f"cannot take {n} examples from a split of {total}; choose a number from 0 to {total}"
        )
    if n == 0:
        return np.empty(0, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / total
    quota = np.floor(exact).astype(np.int64)
    # Largest remainder first; a stable sort breaks ties by class order.
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: n - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == cls), size=k, replace=False)
        for cls, k in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _take(split: ArraySplit, indices: np.ndarray) -> ArraySplit:
    return ArraySplit(np.ascontiguousarray(split.images[indices]), split.labels[indices])


def split_validation(split: ArraySplit, n: int, seed: int) -> tuple[ArraySplit, ArraySplit]:
    """Carve a stratified validation set of ``n`` examples out of ``split``.

    Returns ``(rest, val)``; both keep the original order of their examples.
    """
    val = stratified_indices(split.labels, n, seed)
    keep = np.ones(len(split.labels), dtype=bool)
    keep[val] = False
    return _take(split, np.flatnonzero(keep)), _take(split, val)


def subset(split: ArraySplit, n: int | None, seed: int) -> ArraySplit:
    """A stratified subset of ``n`` examples, or ``split`` itself if n is None or >= its size."""
    if n is None or n >= len(split.labels):
        return split
    return _take(split, stratified_indices(split.labels, n, seed))


def channel_stats(images: np.ndarray) -> tuple[Stats, Stats]:
    """Per-channel mean and (population) standard deviation of uint8 images, on the 0..1 scale.

    Sums are taken exactly in integers, a chunk at a time, so memory stays small.
    """
    if images.ndim != 4 or images.shape[3] != 3 or len(images) == 0:
        raise DataError(f"cannot compute channel statistics of an array of shape {images.shape}")
    sums = [0, 0, 0]
    squares = [0, 0, 0]
    for start in range(0, len(images), 4096):
        block = images[start : start + 4096].reshape(-1, 3).astype(np.int64)
        for c in range(3):
            sums[c] += int(block[:, c].sum())
            squares[c] += int(np.dot(block[:, c], block[:, c]))
    count = images.shape[0] * images.shape[1] * images.shape[2]
    means = tuple(s / count / 255 for s in sums)
    stds = tuple(
        ((q * count - s * s) / count**2) ** 0.5 / 255 for s, q in zip(sums, squares, strict=True)
    )
    return means, stds  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# One run's images


@dataclass
class RunSplits:
    """The images one run trains, validates and tests on, and its normalisation."""

    train: ArraySplit
    val: ArraySplit | None
    test: ArraySplit
    classes: list[str]
    mean: Stats
    std: Stats


def run_splits(
    bundle: DataBundle,
    *,
    val_split: int,
    limit_train: int,
    limit_test: int,
    seed: int,
    normalize: str,
) -> RunSplits:
    """The run's splits, all seeded by ``seed``: first ``val_split`` validation images are
    carved out of the training set, then the training and test sets are cut to
    ``limit_train`` / ``limit_test`` images (0: all). ``normalize`` is "dataset" (the
    channel statistics of the final training images), "half" (``HALF``) or "imagenet"."""
    train, val = bundle.train, None
    if val_split:
        if val_split >= len(train.labels):
            raise UsageError(
                f"--val-split {val_split} leaves no training images "
                f"(the training set has {len(train.labels)})"
            )
        train, val = split_validation(train, val_split, seed)
    train = subset(train, limit_train or None, seed)
    test = subset(bundle.test, limit_test or None, seed)
    if normalize == "dataset":
        mean, std = channel_stats(train.images)
    else:
        mean, std = IMAGENET if normalize == "imagenet" else HALF
    return RunSplits(train, val, test, list(bundle.classes), tuple(mean), tuple(std))


def splits_for(bundle: DataBundle, config: Any) -> RunSplits:
    """:func:`run_splits` with the selection fields of a run's recipe (a ``TrainConfig``);
    its explicit ``mean``/``std``, when given, replace the ``normalize`` rule."""
    splits = run_splits(
        bundle,
        val_split=config.val_split,
        limit_train=config.limit_train,
        limit_test=config.limit_test,
        seed=config.seed,
        normalize="half" if config.mean else config.normalize,
    )
    if config.mean:
        splits.mean, splits.std = tuple(config.mean), tuple(config.std)
    return splits


def eval_split(
    bundle: DataBundle, split: str, *, val_split: int, limit_test: int, seed: int
) -> ArraySplit:
    """The images a trained run is evaluated on: its test images (``split="test"``) or the
    validation images it held out (``split="val"``), exactly as ``run_splits`` chose them."""
    if split not in ("test", "val"):
        raise UsageError(f"unknown split {split!r}; evaluate --split test or --split val")
    if split == "val":
        if not val_split:
            raise UsageError("this run was trained without --val-split; evaluate --split test")
        return split_validation(bundle.train, val_split, seed)[1]
    return subset(bundle.test, limit_test or None, seed)
