"""cifar_resnet.data.decode: the colour and resize rules, decoding in a process pool."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED
from data_builders import make_folder, save_image, solid
from PIL import Image

from cifar_resnet.data import decode as decode_module
from cifar_resnet.data import decode_image, load_data
from cifar_resnet.errors import DataError


def test_decode_rgb_png_and_jpeg(tmp_path: Path) -> None:
    png = save_image(solid((1, 2, 3)), tmp_path / "a.png")
    assert decode_image(png).tolist() == np.full((8, 8, 3), (1, 2, 3)).tolist()
    jpeg = save_image(solid((120, 60, 30)), tmp_path / "a.jpg", quality=95)
    out = decode_image(jpeg)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - (120, 60, 30)).max() <= 3


def test_grayscale_replicated(tmp_path: Path) -> None:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = decode_image(save_image(Image.fromarray(gray, "L"), tmp_path / "g.png"))
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)
    bilevel = Image.new("1", (4, 4), 1)
    assert (decode_image(save_image(bilevel, tmp_path / "b.png")) == 255).all()


def test_palette_expanded_and_alpha_dropped(tmp_path: Path) -> None:
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.info["transparency"] = 1
    out = decode_image(save_image(pal, tmp_path / "p.png", transparency=1))
    assert (out == (10, 20, 30)).all()

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[...] = (50, 100, 150, 0)  # fully transparent: the colour is still kept
    out = decode_image(save_image(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"))
    assert (out == (50, 100, 150)).all()

    la = Image.fromarray(
        np.dstack([np.full((4, 4), 77, np.uint8), np.zeros((4, 4), np.uint8)]), "LA"
    )
    assert (decode_image(save_image(la, tmp_path / "la.png")) == 77).all()


def test_sixteen_bit_scaled_by_257(tmp_path: Path) -> None:
    values = np.array([[0, 257, 257 * 128, 65535]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    out = decode_image(save_image(img, tmp_path / "w.png"))
    assert out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()


def test_cmyk_jpeg_converted(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in Pillow's conversion
    out = decode_image(save_image(cmyk, tmp_path / "c.jpg", quality=100))
    assert out.shape == (8, 8, 3)
    assert np.abs(out.astype(int) - (255, 0, 0)).max() <= 8


def test_decode_bytes_and_errors(tmp_path: Path) -> None:
    buf = io.BytesIO()
    solid((9, 8, 7)).save(buf, format="PNG")
    assert (decode_image(buf.getvalue()) == (9, 8, 7)).all()
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    with pytest.raises(DataError, match="notes.txt"):
        decode_image(junk)
    with pytest.raises(DataError, match="nothing.png"):
        decode_image(tmp_path / "nothing.png")


def test_truncated_jpeg_refused(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = save_image(Image.fromarray(noise), tmp_path / "t.jpg", quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="t.jpg"):
        decode_image(path)


def test_resize_shorter_side_then_center_crop(tmp_path: Path) -> None:
    # 16 x 8: left half black, a white centre band, right half black. Shorter side 8 -> 4
    # makes it 8 x 4; the centre crop of 4 x 4 keeps the middle.
    arr = np.zeros((8, 16, 3), np.uint8)
    arr[:, 6:10] = 255
    out = decode_image(save_image(Image.fromarray(arr), tmp_path / "r.png"), image_size=4)
    assert out.shape == (4, 4, 3)
    expected = Image.fromarray(arr).resize((8, 4), Image.BILINEAR).crop((2, 0, 6, 4))
    np.testing.assert_array_equal(out, np.asarray(expected))
    # An image already N x N is left alone.
    square = save_image(solid((5, 6, 7), (4, 4)), tmp_path / "s.png")
    assert (decode_image(square, image_size=4) == (5, 6, 7)).all()


@pytest.mark.skipif(not (SHARED / "data" / "cifar10-jpeg").is_dir(), reason="no shared data")
def test_decode_real_cifar_jpegs() -> None:
    root = SHARED / "data" / "cifar10-jpeg"
    for path in [root / "train" / "cat" / "0000.jpg", root / "test" / "truck" / "0001.jpg"]:
        out = decode_image(path)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        assert 0 < out.mean() < 255


def test_image_folder_parallel_matches_serial(tmp_path: Path, monkeypatch) -> None:
    root = make_folder(tmp_path / "ds", per_class=6)
    serial = load_data(str(root), cache_dir=str(tmp_path / "c1"))
    monkeypatch.setattr(decode_module, "PARALLEL_THRESHOLD", 4)
    monkeypatch.setattr(decode_module, "_worker_count", lambda: 2)
    parallel = load_data(str(root), cache_dir=str(tmp_path / "c2"))
    np.testing.assert_array_equal(serial.train.images, parallel.train.images)
    np.testing.assert_array_equal(serial.test.labels, parallel.test.labels)


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
    solid((1, 2, 3)).save(png, format="PNG")
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
