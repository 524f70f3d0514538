"""cifar_resnet.data.cifar: the official CIFAR python format, bounded reads, safe unpickling."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from data_builders import (
    cifar10_members,
    cifar100_members,
    cifar_rows,
    expected_hwc,
    pickled,
    write_folder,
    write_tar,
)
from PIL import Image

from cifar_resnet.data import CIFAR_ARCHIVES, RestrictedUnpickler, load_data
from cifar_resnet.data import cifar as cifar_module
from cifar_resnet.errors import DataError


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_cifar10_archive_layout(tmp_path: Path) -> None:
    members = cifar10_members()
    archive = write_tar(tmp_path / "mine.tar.gz", "cifar-10-batches-py", members)
    bundle = load_data(str(archive), cache_dir=str(tmp_path / "cache"))
    assert bundle.classes == ["airplane", "automobile", "bird"]
    assert bundle.source.startswith("cifar10 archive ")
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    np.testing.assert_array_equal(bundle.train.images, expected_hwc(members, train_names))
    np.testing.assert_array_equal(bundle.test.images, expected_hwc(members, ["test_batch"]))
    assert bundle.train.labels.tolist()[:4] == [1, 2, 0, 1]
    assert bundle.test.labels.tolist() == [0, 1, 2]
    assert bundle.train.images.shape == (20, 32, 32, 3) and bundle.train.images.flags.c_contiguous


def test_cifar_pixel_planes_to_hwc(tmp_path: Path) -> None:
    row = np.zeros((1, 3072), np.uint8)
    # Pixel (row 2, column 5) in each plane: R = 11, G = 22, B = 33.
    for channel, value in enumerate((11, 22, 33)):
        row[0, channel * 1024 + 2 * 32 + 5] = value
    members = cifar10_members()
    members["test_batch"] = pickled({b"data": row, b"labels": [2]})
    folder = write_folder(tmp_path / "cifar-10-batches-py", members)
    bundle = load_data(str(folder), cache_dir=str(tmp_path / "cache"))
    image = bundle.test.images[0]
    assert image[2, 5].tolist() == [11, 22, 33]
    assert image.sum() == 66
    assert bundle.source.startswith("cifar10 folder ")


def test_cifar100_archive_and_folder(tmp_path: Path) -> None:
    members = cifar100_members()
    archive = write_tar(tmp_path / "c100.tar.gz", "cifar-100-python", members)
    folder = write_folder(tmp_path / "x" / "cifar-100-python", members)
    for spec in (archive, folder):
        bundle = load_data(str(spec), cache_dir=str(tmp_path / "cache"))
        assert bundle.classes == [f"class{i}" for i in range(5)]
        assert bundle.train.labels.tolist() == [0, 1, 2, 3, 4, 4]
        assert bundle.test.labels.tolist() == [4, 0]
        np.testing.assert_array_equal(bundle.train.images, expected_hwc(members, ["train"]))
        assert bundle.source.startswith("cifar100 ")


def test_cifar_image_size_resizes_arrays(tmp_path: Path) -> None:
    members = cifar10_members()
    archive = write_tar(tmp_path / "mine.tar.gz", "cifar-10-batches-py", members)
    bundle = load_data(str(archive), image_size=16, cache_dir=str(tmp_path / "cache"))
    assert bundle.train.images.shape == (20, 16, 16, 3)
    original = expected_hwc(members, ["test_batch"])[0]
    expected = np.asarray(Image.fromarray(original).resize((16, 16), Image.BILINEAR))
    np.testing.assert_array_equal(bundle.test.images[0], expected)


def test_malicious_pickle_refused_without_running(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    members = cifar10_members()
    members["data_batch_3"] = pickle.dumps({b"data": _Evil(target), b"labels": [0]})
    folder = write_folder(tmp_path / "cifar-10-batches-py", members)
    with pytest.raises(DataError, match=r"refusing to unpickle .*system from .*data_batch_3"):
        load_data(str(folder), cache_dir=str(tmp_path / "cache"))
    assert not target.exists()
    archive = write_tar(tmp_path / "evil.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_data(str(archive), cache_dir=str(tmp_path / "cache"))
    assert not target.exists()


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(eval),  # builtins.eval
        pickle.dumps(functools.partial(print, 1)),
        pickle.dumps(np.arange(3, dtype=np.int64), protocol=5),  # not the allowed rebuilder
    ],
)
def test_restricted_unpickler_refuses_globals(payload: bytes) -> None:
    with pytest.raises(DataError, match="refusing to unpickle"):
        RestrictedUnpickler(io.BytesIO(payload), where="x", encoding="bytes").load()


def test_restricted_unpickler_admits_arrays() -> None:
    payload = pickle.dumps({b"data": np.arange(6, dtype=np.uint8).reshape(2, 3)}, protocol=4)
    out = RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()
    assert out[b"data"].dtype == np.uint8 and out[b"data"].tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize(
    ("member", "payload", "match"),
    [
        ("data_batch_2", None, "data_batch_2 is not a readable CIFAR batch"),  # truncated
        ("data_batch_2", {b"data": cifar_rows(2, 0)}, "lacks the key labels"),
        ("test_batch", {b"data": cifar_rows(2, 0), b"labels": [0, 3]}, "label 3 is outside"),
        ("test_batch", {b"data": cifar_rows(2, 0), b"labels": [0]}, "1 labels for 2 images"),
        ("test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 0]}, "shape"),
        ("test_batch", {b"data": np.zeros((1, 3072), np.int64), b"labels": [0]}, "int64"),
        ("test_batch", {b"data": cifar_rows(1, 0), b"labels": ["a"]}, "not a list of integers"),
        ("batches.meta", {b"nothing": 1}, "label_names"),
    ],
)
def test_bad_batch_files(tmp_path: Path, member: str, payload: object, match: str) -> None:
    members = cifar10_members()
    if payload is None:
        members[member] = members[member][: len(members[member]) // 2]
    else:
        members[member] = pickled(payload)
    folder = write_folder(tmp_path / "cifar-10-batches-py", members)
    with pytest.raises(DataError, match=match) as info:
        load_data(str(folder), cache_dir=str(tmp_path / "cache"))
    assert member in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_members(tmp_path: Path) -> None:
    members = cifar10_members()
    del members["data_batch_4"]
    folder = write_folder(tmp_path / "cifar-10-batches-py", members)
    with pytest.raises(DataError, match="data_batch_4"):
        load_data(str(folder), cache_dir=str(tmp_path / "cache"))
    archive = write_tar(tmp_path / "a.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(DataError, match="data_batch_4"):
        load_data(str(archive), cache_dir=str(tmp_path / "cache"))
    other = write_tar(tmp_path / "b.tar.gz", "something-else", members)
    with pytest.raises(DataError, match="neither"):
        load_data(str(other), cache_dir=str(tmp_path / "cache"))
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataError, match="broken.tar.gz"):
        load_data(str(broken), cache_dir=str(tmp_path / "cache"))


def test_official_name_needs_official_md5(tmp_path: Path, monkeypatch) -> None:
    members = cifar10_members()
    archive = write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(DataError, match=r"md5 .* expected c58f30108f718f92721af3b95e74349a"):
        load_data(str(archive), cache_dir=str(tmp_path / "cache"))
    # The md5 override used for downloads applies to the official name as well.
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setenv("CIFAR_RESNET_CIFAR10_MD5", md5)
    assert load_data(str(archive), cache_dir=str(tmp_path / "cache")).classes[0] == "airplane"


def test_tar_links_are_not_followed(tmp_path: Path) -> None:
    members = cifar10_members()
    archive = tmp_path / "links.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in members.items():
            if name == "test_batch":
                link = tarfile.TarInfo("cifar-10-batches-py/test_batch")
                link.type = tarfile.SYMTYPE
                link.linkname = "/etc/passwd"
                tar.addfile(link)
                continue
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(DataError, match="lacks cifar-10-batches-py/test_batch"):
        load_data(str(archive), cache_dir=str(tmp_path / "cache"))


def _zeros_member(tar: tarfile.TarFile, name: str, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    tar.addfile(info, io.BytesIO(bytes(size)))


def test_oversized_archive_member_refused_before_reading(tmp_path: Path) -> None:
    # A member 1 byte over the bound: a few kB of tar.gz that would take 40 MB to read.
    members = cifar10_members()
    archive = tmp_path / "big.tar.gz"
    size = cifar_module.BATCH_LIMIT + 1
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        _zeros_member(tar, "cifar-10-batches-py/data_batch_1", size)
        for name in members:
            if name != "data_batch_1":
                _zeros_member(tar, f"cifar-10-batches-py/{name}", 0)
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            load_data(str(archive), cache_dir=str(tmp_path / "cache"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value) == (
        f"archive {archive}: member cifar-10-batches-py/data_batch_1 is {size} bytes, more "
        f"than a CIFAR batch file can be ({cifar_module.BATCH_LIMIT}); use the official archive"
    )
    assert peak < 10_000_000


def test_archive_member_claiming_two_gib_refused(tmp_path: Path) -> None:
    # Only the header: reading the member would fail later, or take 2 GiB if it were there.
    archive = tmp_path / "claims.tar.gz"
    info = tarfile.TarInfo("cifar-100-python/train")
    info.size = 2 << 30
    with gzip.open(archive, "wb") as gz:
        gz.write(info.tobuf(format=tarfile.GNU_FORMAT) + bytes(4096))
    with pytest.raises(DataError, match=r"member cifar-100-python/train is 2147483648 bytes"):
        load_data(str(archive), cache_dir=str(tmp_path / "cache"))


def test_member_bounds_per_file(tmp_path: Path, monkeypatch) -> None:
    members = cifar100_members()
    archive = write_tar(tmp_path / "c100.tar.gz", "cifar-100-python", members)
    monkeypatch.setattr(cifar_module, "META_LIMIT", len(members["meta"]) - 1)
    with pytest.raises(DataError, match=r"member cifar-100-python/meta is \d+ bytes"):
        load_data(str(archive), cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(cifar_module, "META_LIMIT", len(members["meta"]))
    monkeypatch.setattr(cifar_module, "BATCH_LIMIT", 1)  # cifar-100's train has its own bound
    monkeypatch.setattr(cifar_module, "CIFAR100_TRAIN_LIMIT", len(members["train"]))
    with pytest.raises(DataError, match=r"member cifar-100-python/test is"):
        load_data(str(archive), cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(cifar_module, "BATCH_LIMIT", len(members["test"]))
    assert load_data(str(archive), cache_dir=str(tmp_path / "cache")).classes[0] == "class0"


def test_oversized_folder_file_refused_before_reading(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "cifar-10-batches-py", cifar10_members())
    big = folder / "data_batch_2"
    size = cifar_module.BATCH_LIMIT + 1
    with open(big, "r+b") as f:
        f.truncate(size)  # sparse: no disk space, but 40 MB to read
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=rf"data_batch_2 is {size} bytes, more than a CIFAR"):
            load_data(str(folder), cache_dir=str(tmp_path / "cache"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000


def test_archive_table() -> None:
    assert CIFAR_ARCHIVES["cifar10"].md5 == "c58f30108f718f92721af3b95e74349a"
    assert CIFAR_ARCHIVES["cifar100"].md5 == "eb9058c3a382ffc7106e6d6b68e8c6a3"
    assert CIFAR_ARCHIVES["cifar10"].url.startswith("https://")
    assert CIFAR_ARCHIVES["cifar100"].folder == "cifar-100-python"
