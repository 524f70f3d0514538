"""cifar_resnet.data.sources: what a dataset spec names; image folders and their errors."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from data_builders import (
    cifar10_members,
    cifar100_members,
    make_folder,
    save_image,
    solid,
    write_folder,
    write_tar,
)
from PIL import Image

from cifar_resnet.data import load_data
from cifar_resnet.errors import DataError


def test_image_folder_loads(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    bundle = load_data(str(root), cache_dir=str(tmp_path / "cache"))
    assert bundle.classes == ["cat", "dog"]
    assert bundle.source == f"image folder {root.absolute()}"
    for split in (bundle.train, bundle.test):
        assert split.images.shape == (6, 8, 8, 3) and split.images.dtype == np.uint8
        assert split.images.flags["C_CONTIGUOUS"]
        assert split.labels.dtype == np.int64
        assert split.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert (bundle.train.images[0] == (200, 10, 10)).all()
    assert (bundle.train.images[5] == (10, 200, 10)).all()


def test_image_folder_errors(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    with pytest.raises(DataError, match="missing-ds"):
        load_data(str(tmp_path / "missing-ds"), cache_dir=cache)

    only_train = tmp_path / "only_train"
    save_image(solid((1, 1, 1)), only_train / "train" / "a" / "0.png")
    with pytest.raises(DataError, match=r"only_train/test"):
        load_data(str(only_train), cache_dir=cache)

    root = make_folder(tmp_path / "empty_class")
    (root / "train" / "bird").mkdir()
    (root / "test" / "bird").mkdir()
    save_image(solid((1, 1, 1)), root / "test" / "bird" / "0.png")
    with pytest.raises(DataError, match=r"train/bird"):
        load_data(str(root), cache_dir=cache)

    root = make_folder(tmp_path / "class_mismatch")
    save_image(solid((1, 1, 1)), root / "train" / "bird" / "0.png")
    with pytest.raises(DataError, match="bird"):
        load_data(str(root), cache_dir=cache)

    root = make_folder(tmp_path / "junk")
    (root / "train" / "dog" / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="readme.txt"):
        load_data(str(root), cache_dir=cache)


def test_image_folder_truncated_jpeg(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds")
    noise = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    bad = save_image(Image.fromarray(noise), root / "test" / "dog" / "9999.jpg", quality=90)
    bad.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(DataError, match="9999.jpg"):
        load_data(str(root), cache_dir=str(tmp_path / "cache"))


def test_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds")
    save_image(solid((1, 2, 3), (12, 10)), root / "train" / "dog" / "big.png")
    with pytest.raises(DataError, match="--image-size") as info:
        load_data(str(root), cache_dir=str(tmp_path / "cache"))
    assert "big.png" in str(info.value) and "0000.png" in str(info.value)
    bundle = load_data(str(root), image_size=8, cache_dir=str(tmp_path / "cache"))
    assert bundle.train.images.shape == (7, 8, 8, 3)
    assert (bundle.train.images[-1] == (1, 2, 3)).all()
    assert "resized to 8x8" in bundle.source
    with pytest.raises(DataError, match="image size"):
        load_data(str(root), image_size=0, cache_dir=str(tmp_path / "cache"))


def _loop_in_file(root: Path) -> Path:
    (root / "train" / "cat" / "loop").symlink_to("loop")
    return root / "train" / "cat" / "loop"


def _loop_in_pair(root: Path) -> Path:
    (root / "test" / "dog" / "a.png").symlink_to("b.png")
    (root / "test" / "dog" / "b.png").symlink_to("a.png")
    return root / "test" / "dog"


def _loop_as_class(root: Path) -> Path:
    (root / "train" / "bird").symlink_to("bird")
    return root / "train" / "bird"


def _loop_as_split(root: Path) -> Path:
    for path in sorted((root / "test").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (root / "test").rmdir()
    (root / "test").symlink_to("test")
    return root / "test"


@pytest.mark.parametrize(
    "make_loop", [_loop_in_file, _loop_in_pair, _loop_as_class, _loop_as_split]
)
def test_symlink_loop_is_one_line_error(tmp_path: Path, make_loop) -> None:
    root = make_folder(tmp_path / "ds")
    where = make_loop(root)
    with pytest.raises(DataError) as info:
        load_data(str(root), cache_dir=str(tmp_path / "cache"))
    message = str(info.value)
    assert os.strerror(errno.ELOOP) in message and str(where) in message
    assert "\n" not in message


def test_cifar_folder_found_inside_parent(tmp_path: Path) -> None:
    write_folder(tmp_path / "parent" / "cifar-10-batches-py", cifar10_members())
    bundle = load_data(str(tmp_path / "parent"), cache_dir=str(tmp_path / "cache"))
    assert len(bundle.train.labels) == 20
    archive_parent = tmp_path / "withtar"
    write_tar(archive_parent / "cifar-100-python.tar.gz", "cifar-100-python", cifar100_members())
    with pytest.raises(DataError, match="md5"):  # official name, not the official content
        load_data(str(archive_parent), cache_dir=str(tmp_path / "cache"))
