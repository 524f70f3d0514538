"""cifar_resnet.data.splits: stratified splits and subsets, channel statistics, run_splits."""

from __future__ import annotations

import numpy as np
import pytest

from cifar_resnet.data import (
    HALF,
    ArraySplit,
    DataBundle,
    channel_stats,
    eval_split,
    run_splits,
    split_validation,
    stratified_indices,
    subset,
)
from cifar_resnet.errors import DataError, UsageError


def _labels() -> np.ndarray:
    # 600 examples, classes of 300, 200 and 100, shuffled.
    labels = np.repeat([0, 1, 2], [300, 200, 100])
    return np.random.default_rng(7).permutation(labels)


def test_stratified_indices_proportions() -> None:
    labels = _labels()
    idx = stratified_indices(labels, 60, seed=0)
    assert len(idx) == 60 and len(np.unique(idx)) == 60
    assert (np.diff(idx) > 0).all() and idx.dtype == np.int64
    assert np.bincount(labels[idx]).tolist() == [30, 20, 10]
    # Largest remainder: 7 * (1/2, 1/3, 1/6) = (3.5, 2.33, 1.17) -> 4, 2, 1.
    assert np.bincount(labels[stratified_indices(labels, 7, seed=0)]).tolist() == [4, 2, 1]
    for n in (1, 13, 599):
        assert len(stratified_indices(labels, n, seed=3)) == n


def test_stratified_indices_seeds_and_bounds() -> None:
    labels = _labels()
    a = stratified_indices(labels, 100, seed=1)
    np.testing.assert_array_equal(a, stratified_indices(labels, 100, seed=1))
    assert not np.array_equal(a, stratified_indices(labels, 100, seed=2))
    assert len(stratified_indices(labels, 0, seed=1)) == 0
    np.testing.assert_array_equal(stratified_indices(labels, 600, seed=1), np.arange(600))
    with pytest.raises(DataError, match="601"):
        stratified_indices(labels, 601, seed=1)
    with pytest.raises(DataError):
        stratified_indices(labels, -1, seed=1)


def _split() -> ArraySplit:
    labels = _labels()
    images = np.zeros((len(labels), 2, 2, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels)) % 256
    images[:, 0, 0, 1] = np.arange(len(labels)) // 256  # (R, G) identifies the example
    return ArraySplit(images, labels.astype(np.int64))


def _ids(split: ArraySplit) -> np.ndarray:
    return split.images[:, 0, 0, 0].astype(int) + 256 * split.images[:, 0, 0, 1].astype(int)


def test_split_validation_partition() -> None:
    split = _split()
    rest, val = split_validation(split, 60, seed=5)
    assert len(val.labels) == 60 and len(rest.labels) == 540
    ids_rest, ids_val = _ids(rest), _ids(val)
    assert set(ids_rest).isdisjoint(ids_val)
    assert sorted([*ids_rest, *ids_val]) == list(range(600))
    assert (np.diff(ids_rest) > 0).all() and (np.diff(ids_val) > 0).all()  # order kept
    np.testing.assert_array_equal(rest.labels, split.labels[ids_rest])
    assert np.bincount(val.labels).tolist() == [30, 20, 10]
    assert rest.images.flags.c_contiguous and val.images.flags.c_contiguous
    _, val_again = split_validation(split, 60, seed=5)
    np.testing.assert_array_equal(_ids(val_again), ids_val)
    _, val_other = split_validation(split, 60, seed=6)
    assert not np.array_equal(_ids(val_other), ids_val)


def test_subset() -> None:
    split = _split()
    assert subset(split, None, seed=0) is split
    assert subset(split, 600, seed=0) is split
    assert subset(split, 10_000, seed=0) is split
    small = subset(split, 30, seed=0)
    assert np.bincount(small.labels).tolist() == [15, 10, 5]
    np.testing.assert_array_equal(_ids(small), stratified_indices(split.labels, 30, seed=0))


def test_channel_stats() -> None:
    images = np.zeros((2, 2, 2, 3), np.uint8)
    images[0, ..., 0] = 255  # red: half 255, half 0 -> mean 0.5, std 0.5
    images[..., 1] = 51  # green: constant 0.2, std 0
    images[:, 0, :, 2] = 255  # blue: half 255, half 0
    mean, std = channel_stats(images)
    assert mean == pytest.approx((0.5, 0.2, 0.5))
    assert std == pytest.approx((0.5, 0.0, 0.5), abs=1e-12)
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (5000, 4, 4, 3), dtype=np.uint8)
    mean, std = channel_stats(big)
    as_float = big.reshape(-1, 3) / 255
    assert mean == pytest.approx(tuple(as_float.mean(0)))
    assert std == pytest.approx(tuple(as_float.std(0)))


def _bundle() -> DataBundle:
    test = _split()
    test.images = test.images[::-1].copy()  # different ids from the training images
    return DataBundle(_split(), test, ["a", "b", "c"], "test bundle")


def test_run_splits_as_training_sees_them() -> None:
    bundle = _bundle()
    run = run_splits(
        bundle, val_split=60, limit_train=90, limit_test=30, seed=4, normalize="dataset"
    )
    rest, val = split_validation(bundle.train, 60, seed=4)
    np.testing.assert_array_equal(_ids(run.val), _ids(val))
    np.testing.assert_array_equal(_ids(run.train), _ids(subset(rest, 90, seed=4)))
    np.testing.assert_array_equal(_ids(run.test), _ids(subset(bundle.test, 30, seed=4)))
    assert set(_ids(run.train)).isdisjoint(_ids(run.val))
    assert (run.mean, run.std) == channel_stats(run.train.images)  # of the final train images
    assert run.classes == ["a", "b", "c"]
    whole = run_splits(bundle, val_split=0, limit_train=0, limit_test=0, seed=4, normalize="half")
    assert whole.val is None and whole.train is bundle.train and whole.test is bundle.test
    assert (whole.mean, whole.std) == HALF
    with pytest.raises(UsageError, match="--val-split 600 leaves no training images"):
        run_splits(bundle, val_split=600, limit_train=0, limit_test=0, seed=4, normalize="half")


def test_eval_split_matches_run_splits() -> None:
    bundle = _bundle()
    kwargs = dict(val_split=60, limit_test=30, seed=9)
    run = run_splits(bundle, limit_train=100, normalize="half", **kwargs)
    np.testing.assert_array_equal(_ids(eval_split(bundle, "test", **kwargs)), _ids(run.test))
    np.testing.assert_array_equal(_ids(eval_split(bundle, "val", **kwargs)), _ids(run.val))
    assert eval_split(bundle, "test", val_split=0, limit_test=0, seed=9) is bundle.test
    with pytest.raises(UsageError, match="trained without --val-split; evaluate --split test"):
        eval_split(bundle, "val", val_split=0, limit_test=0, seed=9)
    with pytest.raises(UsageError, match="unknown split"):
        eval_split(bundle, "train", **kwargs)
