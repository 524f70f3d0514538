"""cifar_resnet.data.cache: load_data decodes once and reads back from its cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from data_builders import make_folder, save_image, solid

from cifar_resnet.data import decode as decode_module
from cifar_resnet.data import load_data


def test_cache_reused_without_decoding(tmp_path: Path, monkeypatch) -> None:
    root = make_folder(tmp_path / "ds")
    cache = tmp_path / "cache"
    first = load_data(str(root), cache_dir=str(cache))
    assert len(list(cache.glob("*.npz"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(decode_module, "decode_image", refuse)
    second = load_data(str(root), cache_dir=str(cache))
    np.testing.assert_array_equal(first.train.images, second.train.images)
    np.testing.assert_array_equal(first.test.labels, second.test.labels)
    assert second.train.labels.dtype == np.int64 and second.classes == first.classes
    assert second.source == first.source
    # A changed file changes the key: decoding is needed again.
    save_image(solid((0, 0, 0)), root / "train" / "cat" / "0000.png")
    with pytest.raises(AssertionError, match="decoded again"):
        load_data(str(root), cache_dir=str(cache))


def test_cache_default_folder_from_env(tmp_path: Path, monkeypatch) -> None:
    root = make_folder(tmp_path / "ds")
    monkeypatch.setenv("CIFAR_RESNET_CACHE", str(tmp_path / "envcache"))
    load_data(str(root))
    assert len(list((tmp_path / "envcache").glob("*.npz"))) == 1


def test_corrupt_cache_rebuilt(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "ds")
    cache = tmp_path / "cache"
    first = load_data(str(root), cache_dir=str(cache))
    (cached,) = cache.glob("*.npz")
    cached.write_bytes(cached.read_bytes()[:100])
    second = load_data(str(root), cache_dir=str(cache))
    np.testing.assert_array_equal(first.train.images, second.train.images)
    assert "ignoring unreadable cache file" in capsys.readouterr().err
    third = load_data(str(root), cache_dir=str(cache))  # the rebuilt file is good again
    np.testing.assert_array_equal(first.test.images, third.test.images)
    assert not list(cache.glob(".tmp-*"))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores modes")
def test_unwritable_cache_warns(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "ds")
    cache = tmp_path / "ro"
    cache.mkdir()
    cache.chmod(0o500)
    try:
        bundle = load_data(str(root), cache_dir=str(cache))
    finally:
        cache.chmod(0o700)
    assert bundle.train.images.shape[0] == 6
    assert "warning: cannot write the data cache" in capsys.readouterr().err


def test_cache_file_as_folder_warns(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "ds")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    bundle = load_data(str(root), cache_dir=str(blocker / "cache"))
    assert bundle.test.images.shape[0] == 6
    err = capsys.readouterr().err
    assert "warning: cannot write the data cache" in err and len(err.strip().splitlines()) == 1
