"""Tests for cifar_resnet.data: image folders, CIFAR archives, download, cache and splits."""

from __future__ import annotations

import errno
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_resnet.data import (
    CIFAR_ARCHIVES,
    HALF,
    ArraySplit,
    DataBundle,
    RestrictedUnpickler,
    channel_stats,
    decode_image,
    eval_split,
    load_data,
    run_splits,
    split_validation,
    stratified_indices,
    subset,
)
from cifar_resnet.data import cifar as cifar_module
from cifar_resnet.data import decode as decode_module
from cifar_resnet.errors import DataError, UsageError

SHARED = Path(os.environ.get("CIFAR_RESNET_SHARED", Path(__file__).resolve().parents[2] / "shared"))


# --------------------------------------------------------------------------------------------
# Fixture builders


def _save(img: Image.Image, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _solid(colour: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _make_folder(root: Path, size: tuple[int, int] = (8, 8), per_class: int = 3) -> Path:
    """train/ and test/ with classes cat (red) and dog (green) as PNG files."""
    colours = {"cat": (200, 10, 10), "dog": (10, 200, 10)}
    for split in ("train", "test"):
        for name, colour in colours.items():
            for i in range(per_class):
                _save(_solid(colour, size), root / split / name / f"{i:04d}.png")
    return root


def _cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _pickle(obj: object) -> bytes:
    # Protocol 4 stores bytes as bytes; the official (Python 2) files decode to the same thing.
    return pickle.dumps(obj, protocol=4)


def _cifar10_members(n: int = 4, n_test: int = 3) -> dict[str, bytes]:
    names = [b"airplane", b"automobile", b"bird"]
    members = {"batches.meta": _pickle({b"label_names": names, b"num_vis": 3072})}
    for i in range(1, 6):
        labels = [(i + j) % 3 for j in range(n)]
        members[f"data_batch_{i}"] = _pickle({b"data": _cifar_rows(n, i), b"labels": labels})
    labels = [j % 3 for j in range(n_test)]
    members["test_batch"] = _pickle({b"data": _cifar_rows(n_test, 99), b"labels": labels})
    return members


def _cifar100_members() -> dict[str, bytes]:
    names = [f"class{i}".encode() for i in range(5)]
    return {
        "meta": _pickle({b"fine_label_names": names, b"coarse_label_names": [b"c0"]}),
        "train": _pickle(
            {
                b"data": _cifar_rows(6, 1),
                b"fine_labels": [0, 1, 2, 3, 4, 4],
                b"coarse_labels": [0] * 6,
            }
        ),
        "test": _pickle(
            {b"data": _cifar_rows(2, 2), b"fine_labels": [4, 0], b"coarse_labels": [0] * 2}
        ),
    }


def _write_tar(path: Path, folder: str, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _write_folder(path: Path, members: dict[str, bytes]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, payload in members.items():
        (path / name).write_bytes(payload)
    return path


def _expected_hwc(members: dict[str, bytes], names: list[str]) -> np.ndarray:
    rows = np.concatenate([pickle.loads(members[n], encoding="bytes")[b"data"] for n in names])
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


# --------------------------------------------------------------------------------------------
# Colour rule and decode_image


def test_decode_rgb_png_and_jpeg(tmp_path: Path) -> None:
    png = _save(_solid((1, 2, 3)), tmp_path / "a.png")
    assert decode_image(png).tolist() == np.full((8, 8, 3), (1, 2, 3)).tolist()
    jpeg = _save(_solid((120, 60, 30)), tmp_path / "a.jpg", quality=95)
    out = decode_image(jpeg)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - (120, 60, 30)).max() <= 3


def test_grayscale_replicated(tmp_path: Path) -> None:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = decode_image(_save(Image.fromarray(gray, "L"), tmp_path / "g.png"))
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)
    bilevel = Image.new("1", (4, 4), 1)
    assert (decode_image(_save(bilevel, tmp_path / "b.png")) == 255).all()


def test_palette_expanded_and_alpha_dropped(tmp_path: Path) -> None:
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.info["transparency"] = 1
    out = decode_image(_save(pal, tmp_path / "p.png", transparency=1))
    assert (out == (10, 20, 30)).all()

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[...] = (50, 100, 150, 0)  # fully transparent: the colour is still kept
    out = decode_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"))
    assert (out == (50, 100, 150)).all()

    la = Image.fromarray(
        np.dstack([np.full((4, 4), 77, np.uint8), np.zeros((4, 4), np.uint8)]), "LA"
    )
    assert (decode_image(_save(la, tmp_path / "la.png")) == 77).all()


def test_sixteen_bit_scaled_by_257(tmp_path: Path) -> None:
    values = np.array([[0, 257, 257 * 128, 65535]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    out = decode_image(_save(img, tmp_path / "w.png"))
    assert out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()


def test_cmyk_jpeg_converted(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in Pillow's conversion
    out = decode_image(_save(cmyk, tmp_path / "c.jpg", quality=100))
    assert out.shape == (8, 8, 3)
    assert np.abs(out.astype(int) - (255, 0, 0)).max() <= 8


def test_decode_bytes_and_errors(tmp_path: Path) -> None:
    buf = io.BytesIO()
    _solid((9, 8, 7)).save(buf, format="PNG")
    assert (decode_image(buf.getvalue()) == (9, 8, 7)).all()
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    with pytest.raises(DataError, match="notes.txt"):
        decode_image(junk)
    with pytest.raises(DataError, match="nothing.png"):
        decode_image(tmp_path / "nothing.png")


def test_truncated_jpeg_refused(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = _save(Image.fromarray(noise), tmp_path / "t.jpg", quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="t.jpg"):
        decode_image(path)


def test_resize_shorter_side_then_center_crop(tmp_path: Path) -> None:
    # 16 x 8: left half black, a white centre band, right half black. Shorter side 8 -> 4
    # makes it 8 x 4; the centre crop of 4 x 4 keeps the middle.
    arr = np.zeros((8, 16, 3), np.uint8)
    arr[:, 6:10] = 255
    out = decode_image(_save(Image.fromarray(arr), tmp_path / "r.png"), image_size=4)
    assert out.shape == (4, 4, 3)
    expected = Image.fromarray(arr).resize((8, 4), Image.BILINEAR).crop((2, 0, 6, 4))
    np.testing.assert_array_equal(out, np.asarray(expected))
    # An image already N x N is left alone.
    square = _save(_solid((5, 6, 7), (4, 4)), tmp_path / "s.png")
    assert (decode_image(square, image_size=4) == (5, 6, 7)).all()


@pytest.mark.skipif(not (SHARED / "data" / "cifar10-jpeg").is_dir(), reason="no shared data")
def test_decode_real_cifar_jpegs() -> None:
    root = SHARED / "data" / "cifar10-jpeg"
    for path in [root / "train" / "cat" / "0000.jpg", root / "test" / "truck" / "0001.jpg"]:
        out = decode_image(path)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        assert 0 < out.mean() < 255


# --------------------------------------------------------------------------------------------
# Image folders


def test_image_folder_loads(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "ds")
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


def test_image_folder_parallel_matches_serial(tmp_path: Path, monkeypatch) -> None:
    root = _make_folder(tmp_path / "ds", per_class=6)
    serial = load_data(str(root), cache_dir=str(tmp_path / "c1"))
    monkeypatch.setattr(decode_module, "PARALLEL_THRESHOLD", 4)
    monkeypatch.setattr(decode_module, "_worker_count", lambda: 2)
    parallel = load_data(str(root), cache_dir=str(tmp_path / "c2"))
    np.testing.assert_array_equal(serial.train.images, parallel.train.images)
    np.testing.assert_array_equal(serial.test.labels, parallel.test.labels)


def test_image_folder_errors(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    with pytest.raises(DataError, match="missing-ds"):
        load_data(str(tmp_path / "missing-ds"), cache_dir=cache)

    only_train = tmp_path / "only_train"
    _save(_solid((1, 1, 1)), only_train / "train" / "a" / "0.png")
    with pytest.raises(DataError, match=r"only_train/test"):
        load_data(str(only_train), cache_dir=cache)

    root = _make_folder(tmp_path / "empty_class")
    (root / "train" / "bird").mkdir()
    (root / "test" / "bird").mkdir()
    _save(_solid((1, 1, 1)), root / "test" / "bird" / "0.png")
    with pytest.raises(DataError, match=r"train/bird"):
        load_data(str(root), cache_dir=cache)

    root = _make_folder(tmp_path / "class_mismatch")
    _save(_solid((1, 1, 1)), root / "train" / "bird" / "0.png")
    with pytest.raises(DataError, match="bird"):
        load_data(str(root), cache_dir=cache)

    root = _make_folder(tmp_path / "junk")
    (root / "train" / "dog" / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="readme.txt"):
        load_data(str(root), cache_dir=cache)


def test_image_folder_truncated_jpeg(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "ds")
    noise = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    bad = _save(Image.fromarray(noise), root / "test" / "dog" / "9999.jpg", quality=90)
    bad.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(DataError, match="9999.jpg"):
        load_data(str(root), cache_dir=str(tmp_path / "cache"))


def test_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "ds")
    _save(_solid((1, 2, 3), (12, 10)), root / "train" / "dog" / "big.png")
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
    root = _make_folder(tmp_path / "ds")
    where = make_loop(root)
    with pytest.raises(DataError) as info:
        load_data(str(root), cache_dir=str(tmp_path / "cache"))
    message = str(info.value)
    assert os.strerror(errno.ELOOP) in message and str(where) in message
    assert "\n" not in message


_SLOW_DECODE = """
import multiprocessing, signal, sys, time
from cifar_resnet.data import decode, load_data

# As in a terminal: a job started in the background by a non-interactive shell (as CI may
# start the tests) inherits SIGINT ignored, and then Ctrl-C could not reach it at all.
signal.signal(signal.SIGINT, signal.default_int_handler)

multiprocessing.set_start_method("fork")  # the workers inherit the slow decode below
decode.PARALLEL_THRESHOLD = 100
decode._worker_count = lambda: 2
fast = decode.decode_image

def slow(path, image_size=None, **kwargs):
    time.sleep(0.005)
    return fast(path, image_size, **kwargs)

decode.decode_image = slow
load_data(sys.argv[1], cache_dir=sys.argv[2])
"""


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited


def _poll(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and fork")
@pytest.mark.parametrize(
    ("signum", "group"),
    [(signal.SIGTERM, False), (signal.SIGINT, True)],  # a service stopped; Ctrl-C in a terminal
    ids=["sigterm", "ctrl-c"],
)
def test_interrupted_parallel_decode_leaves_no_workers(
    tmp_path: Path, signum: int, group: bool
) -> None:
    png = io.BytesIO()
    _solid((1, 2, 3)).save(png, format="PNG")
    for split, n in (("train", 2600), ("test", 400)):
        folder = tmp_path / "ds" / split / "cat"
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"{i:04d}.png").write_bytes(png.getvalue())
    stderr = tmp_path / "stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SLOW_DECODE, str(tmp_path / "ds"), str(tmp_path / "cache")],
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    workers: set[int] = set()

    def pool_started() -> bool:
        workers.update(_children(proc.pid))
        return len(workers) >= 2

    try:
        # Decoding has started once the pool's two workers exist (they need ~8 s to finish).
        assert _poll(pool_started, 30), "the decoding pool never started"
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        proc.wait(timeout=30)
        assert _poll(lambda: not any(map(_running, workers)), 10), "orphaned decode workers"
    finally:
        proc.kill()
        proc.wait()
        for pid in workers:  # only on failure: the orphans this test made
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
    lines = stderr.read_bytes().splitlines()
    if signum == signal.SIGTERM:
        assert proc.returncode == -signal.SIGTERM  # dies by the signal, as without a pool
        assert lines == []
    else:
        assert proc.returncode != 0
        assert lines.count(b"KeyboardInterrupt") == 1  # the parent's: the workers ignore it


# --------------------------------------------------------------------------------------------
# Cache


def test_cache_reused_without_decoding(tmp_path: Path, monkeypatch) -> None:
    root = _make_folder(tmp_path / "ds")
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
    _save(_solid((0, 0, 0)), root / "train" / "cat" / "0000.png")
    with pytest.raises(AssertionError, match="decoded again"):
        load_data(str(root), cache_dir=str(cache))


def test_cache_default_folder_from_env(tmp_path: Path, monkeypatch) -> None:
    root = _make_folder(tmp_path / "ds")
    monkeypatch.setenv("CIFAR_RESNET_CACHE", str(tmp_path / "envcache"))
    load_data(str(root))
    assert len(list((tmp_path / "envcache").glob("*.npz"))) == 1


def test_corrupt_cache_rebuilt(tmp_path: Path, capsys) -> None:
    root = _make_folder(tmp_path / "ds")
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
    root = _make_folder(tmp_path / "ds")
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
    root = _make_folder(tmp_path / "ds")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    bundle = load_data(str(root), cache_dir=str(blocker / "cache"))
    assert bundle.test.images.shape[0] == 6
    err = capsys.readouterr().err
    assert "warning: cannot write the data cache" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# CIFAR python format


def test_cifar10_archive_layout(tmp_path: Path) -> None:
    members = _cifar10_members()
    archive = _write_tar(tmp_path / "mine.tar.gz", "cifar-10-batches-py", members)
    bundle = load_data(str(archive), cache_dir=str(tmp_path / "cache"))
    assert bundle.classes == ["airplane", "automobile", "bird"]
    assert bundle.source.startswith("cifar10 archive ")
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    np.testing.assert_array_equal(bundle.train.images, _expected_hwc(members, train_names))
    np.testing.assert_array_equal(bundle.test.images, _expected_hwc(members, ["test_batch"]))
    assert bundle.train.labels.tolist()[:4] == [1, 2, 0, 1]
    assert bundle.test.labels.tolist() == [0, 1, 2]
    assert bundle.train.images.shape == (20, 32, 32, 3) and bundle.train.images.flags.c_contiguous


def test_cifar_pixel_planes_to_hwc(tmp_path: Path) -> None:
    row = np.zeros((1, 3072), np.uint8)
    # Pixel (row 2, column 5) in each plane: R = 11, G = 22, B = 33.
    for channel, value in enumerate((11, 22, 33)):
        row[0, channel * 1024 + 2 * 32 + 5] = value
    members = _cifar10_members()
    members["test_batch"] = _pickle({b"data": row, b"labels": [2]})
    folder = _write_folder(tmp_path / "cifar-10-batches-py", members)
    bundle = load_data(str(folder), cache_dir=str(tmp_path / "cache"))
    image = bundle.test.images[0]
    assert image[2, 5].tolist() == [11, 22, 33]
    assert image.sum() == 66
    assert bundle.source.startswith("cifar10 folder ")


def test_cifar_folder_found_inside_parent(tmp_path: Path) -> None:
    _write_folder(tmp_path / "parent" / "cifar-10-batches-py", _cifar10_members())
    bundle = load_data(str(tmp_path / "parent"), cache_dir=str(tmp_path / "cache"))
    assert len(bundle.train.labels) == 20
    archive_parent = tmp_path / "withtar"
    _write_tar(archive_parent / "cifar-100-python.tar.gz", "cifar-100-python", _cifar100_members())
    with pytest.raises(DataError, match="md5"):  # official name, not the official content
        load_data(str(archive_parent), cache_dir=str(tmp_path / "cache"))


def test_cifar100_archive_and_folder(tmp_path: Path) -> None:
    members = _cifar100_members()
    archive = _write_tar(tmp_path / "c100.tar.gz", "cifar-100-python", members)
    folder = _write_folder(tmp_path / "x" / "cifar-100-python", members)
    for spec in (archive, folder):
        bundle = load_data(str(spec), cache_dir=str(tmp_path / "cache"))
        assert bundle.classes == [f"class{i}" for i in range(5)]
        assert bundle.train.labels.tolist() == [0, 1, 2, 3, 4, 4]
        assert bundle.test.labels.tolist() == [4, 0]
        np.testing.assert_array_equal(bundle.train.images, _expected_hwc(members, ["train"]))
        assert bundle.source.startswith("cifar100 ")


def test_cifar_image_size_resizes_arrays(tmp_path: Path) -> None:
    members = _cifar10_members()
    archive = _write_tar(tmp_path / "mine.tar.gz", "cifar-10-batches-py", members)
    bundle = load_data(str(archive), image_size=16, cache_dir=str(tmp_path / "cache"))
    assert bundle.train.images.shape == (20, 16, 16, 3)
    original = _expected_hwc(members, ["test_batch"])[0]
    expected = np.asarray(Image.fromarray(original).resize((16, 16), Image.BILINEAR))
    np.testing.assert_array_equal(bundle.test.images[0], expected)


def test_malicious_pickle_refused_without_running(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    members = _cifar10_members()
    members["data_batch_3"] = pickle.dumps({b"data": _Evil(target), b"labels": [0]})
    folder = _write_folder(tmp_path / "cifar-10-batches-py", members)
    with pytest.raises(DataError, match=r"refusing to unpickle .*system from .*data_batch_3"):
        load_data(str(folder), cache_dir=str(tmp_path / "cache"))
    assert not target.exists()
    archive = _write_tar(tmp_path / "evil.tar.gz", "cifar-10-batches-py", members)
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
        ("data_batch_2", {b"data": _cifar_rows(2, 0)}, "lacks the key labels"),
        ("test_batch", {b"data": _cifar_rows(2, 0), b"labels": [0, 3]}, "label 3 is outside"),
        ("test_batch", {b"data": _cifar_rows(2, 0), b"labels": [0]}, "1 labels for 2 images"),
        ("test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 0]}, "shape"),
        ("test_batch", {b"data": np.zeros((1, 3072), np.int64), b"labels": [0]}, "int64"),
        ("test_batch", {b"data": _cifar_rows(1, 0), b"labels": ["a"]}, "not a list of integers"),
        ("batches.meta", {b"nothing": 1}, "label_names"),
    ],
)
def test_bad_batch_files(tmp_path: Path, member: str, payload: object, match: str) -> None:
    members = _cifar10_members()
    if payload is None:
        members[member] = members[member][: len(members[member]) // 2]
    else:
        members[member] = _pickle(payload)
    folder = _write_folder(tmp_path / "cifar-10-batches-py", members)
    with pytest.raises(DataError, match=match) as info:
        load_data(str(folder), cache_dir=str(tmp_path / "cache"))
    assert member in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_members(tmp_path: Path) -> None:
    members = _cifar10_members()
    del members["data_batch_4"]
    folder = _write_folder(tmp_path / "cifar-10-batches-py", members)
    with pytest.raises(DataError, match="data_batch_4"):
        load_data(str(folder), cache_dir=str(tmp_path / "cache"))
    archive = _write_tar(tmp_path / "a.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(DataError, match="data_batch_4"):
        load_data(str(archive), cache_dir=str(tmp_path / "cache"))
    other = _write_tar(tmp_path / "b.tar.gz", "something-else", members)
    with pytest.raises(DataError, match="neither"):
        load_data(str(other), cache_dir=str(tmp_path / "cache"))
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataError, match="broken.tar.gz"):
        load_data(str(broken), cache_dir=str(tmp_path / "cache"))


def test_official_name_needs_official_md5(tmp_path: Path, monkeypatch) -> None:
    members = _cifar10_members()
    archive = _write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(DataError, match=r"md5 .* expected c58f30108f718f92721af3b95e74349a"):
        load_data(str(archive), cache_dir=str(tmp_path / "cache"))
    # The md5 override used for downloads applies to the official name as well.
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setenv("CIFAR_RESNET_CIFAR10_MD5", md5)
    assert load_data(str(archive), cache_dir=str(tmp_path / "cache")).classes[0] == "airplane"


def test_tar_links_are_not_followed(tmp_path: Path) -> None:
    members = _cifar10_members()
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
    members = _cifar10_members()
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
    members = _cifar100_members()
    archive = _write_tar(tmp_path / "c100.tar.gz", "cifar-100-python", members)
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
    folder = _write_folder(tmp_path / "cifar-10-batches-py", _cifar10_members())
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


# --------------------------------------------------------------------------------------------
# Download


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path, monkeypatch) -> Iterator[tuple[str, Path]]:
    """An http server on 127.0.0.1 serving tmp_path/www; yields (base URL, www folder)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", www
    finally:
        server.shutdown()
        server.server_close()


def test_download_and_load(served, tmp_path: Path, monkeypatch) -> None:
    base, www = served
    archive = _write_tar(www / "small.tar.gz", "cifar-10-batches-py", _cifar10_members())
    monkeypatch.setenv("CIFAR_RESNET_CIFAR10_URL", f"{base}/small.tar.gz")
    monkeypatch.setenv("CIFAR_RESNET_CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    data_dir = tmp_path / "data"
    bundle = load_data("cifar10", data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"))
    assert [p.name for p in data_dir.iterdir()] == ["cifar-10-python.tar.gz"]
    assert bundle.classes == ["airplane", "automobile", "bird"]
    assert bundle.train.images.shape == (20, 32, 32, 3)
    # Present now: no second download, even from a dead URL.
    monkeypatch.setenv("CIFAR_RESNET_CIFAR10_URL", f"{base}/gone.tar.gz")
    again = load_data("cifar10", data_dir=str(data_dir), cache_dir=str(tmp_path / "cache2"))
    np.testing.assert_array_equal(again.test.images, bundle.test.images)


def test_download_default_folder_from_env(served, tmp_path: Path, monkeypatch) -> None:
    base, www = served
    archive = _write_tar(www / "c100.tar.gz", "cifar-100-python", _cifar100_members())
    monkeypatch.setenv("CIFAR_RESNET_CIFAR100_URL", f"{base}/c100.tar.gz")
    monkeypatch.setenv("CIFAR_RESNET_CIFAR100_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setenv("CIFAR_RESNET_DATA", str(tmp_path / "envdata"))
    bundle = load_data("cifar100", cache_dir=str(tmp_path / "cache"))
    assert (tmp_path / "envdata" / "cifar-100-python.tar.gz").is_file()
    assert len(bundle.classes) == 5


def test_download_wrong_md5_leaves_nothing(served, tmp_path: Path, monkeypatch) -> None:
    base, www = served
    _write_tar(www / "small.tar.gz", "cifar-10-batches-py", _cifar10_members())
    monkeypatch.setenv("CIFAR_RESNET_CIFAR10_URL", f"{base}/small.tar.gz")
    monkeypatch.setenv("CIFAR_RESNET_CIFAR10_MD5", "0" * 32)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match=r"md5 .*expected 0{32}; the download is corrupt"):
        load_data("cifar10", data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"))
    assert list(data_dir.iterdir()) == []


def test_download_network_error(served, tmp_path: Path, monkeypatch) -> None:
    base, _ = served
    monkeypatch.setenv("CIFAR_RESNET_CIFAR10_URL", f"{base}/missing.tar.gz")
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match=r"cannot download .*missing.tar.gz.*by hand"):
        load_data("cifar10", data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"))
    assert list(data_dir.iterdir()) == []


@pytest.mark.parametrize(
    "url",
    ["http://example.com/cifar-10-python.tar.gz", "ftp://127.0.0.1/x.tar.gz", "file:///etc/passwd"],
)
def test_download_refuses_insecure_urls(tmp_path: Path, monkeypatch, url: str) -> None:
    monkeypatch.setenv("CIFAR_RESNET_CIFAR10_URL", url)
    with pytest.raises(DataError, match="refusing to download"):
        load_data("cifar10", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "data").exists()


def test_archive_table() -> None:
    assert CIFAR_ARCHIVES["cifar10"].md5 == "c58f30108f718f92721af3b95e74349a"
    assert CIFAR_ARCHIVES["cifar100"].md5 == "eb9058c3a382ffc7106e6d6b68e8c6a3"
    assert CIFAR_ARCHIVES["cifar10"].url.startswith("https://")
    assert CIFAR_ARCHIVES["cifar100"].folder == "cifar-100-python"


# --------------------------------------------------------------------------------------------
# Splits and statistics


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
