"""Decode image files (or bytes) to uint8 RGB arrays by the colour and resize rules.

Colour rule: every image becomes 8-bit RGB, as torchvision's ``pil_loader``
(``img.convert("RGB")``) does, with one exception for 16-bit images:

- grayscale (``L``, ``1``) is replicated to three channels: value v becomes (v, v, v);
- palette (``P``) images are expanded through their palette;
- alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency) is dropped, not composited;
- ``CMYK`` and ``YCbCr`` go through Pillow's colour conversion (no ICC colour management);
- 16-bit images (``I;16``, ``I;16B``, ..., and 32-bit ``I``) are scaled to 8 bits by
  dividing by 257 and rounding, so the full 16-bit range 0..65535 maps onto 0..255, then
  replicated to three channels (``convert("RGB")`` would clip them instead);
- EXIF orientation is not applied and only the first frame of an animation is read.

Resize rule (``image_size=N``, the command line's ``--image-size N``): an image that is not
NxN is resized so that its shorter side is N, with Pillow's antialiased bilinear resampling
(``Image.resize(..., Image.BILINEAR)``), then centre-cropped to NxN (the crop offset is
rounded like torchvision's ``CenterCrop``). The same rule applies to CIFAR arrays.

Many files are decoded in a process pool (``_decode_all``); an interrupted parent (Ctrl-C,
SIGTERM turned into an exception) terminates the pool's workers before it unwinds.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import signal
import sys
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from cifar_resnet.errors import DataError

# Below this many files a process pool costs more to start than it saves.
PARALLEL_THRESHOLD = 2000
# An image resized to --image-size N must not pass through more pixels than this on the way
# (a 1 x 1,000,000 PNG of 3 KB, its shorter side scaled to 32, would be 32 x 32,000,000).
MAX_RESIZE_PIXELS = 1 << 24
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): a signal for when the parent dies


def _reason(exc: BaseException) -> str:
    """An exception's message on one line (errors are printed as one line)."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def decode_image(
    path_or_bytes: str | os.PathLike[str] | bytes,
    image_size: int | None = None,
    *,
    name: str | None = None,
) -> np.ndarray:
    """Decode one image file (or its bytes) to an (H, W, 3) uint8 array.

    Applies the module's colour rule and, with ``image_size``, its resize rule. Raises
    DataError naming the file (``name`` names bytes) if Pillow cannot read all of it.
    """
    is_bytes = isinstance(path_or_bytes, bytes | bytearray | memoryview)
    if name is None:
        name = "<image bytes>" if is_bytes else os.fspath(path_or_bytes)
    source = io.BytesIO(path_or_bytes) if is_bytes else path_or_bytes
    try:
        with Image.open(source) as img:
            if image_size is not None:  # from the header, before any pixel is decoded
                _check_resize(img.size, image_size, name)
            img.load()  # decode now, so that a truncated file fails here
            rgb = _to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"cannot read image {name} ({_reason(exc)}); remove or replace the file"
        ) from None
    if image_size is not None:
        rgb = _resize(rgb, image_size)
    return np.asarray(rgb, dtype=np.uint8)


def _resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def _check_resize(dims: tuple[int, int], size: int, name: str) -> None:
    """Refuse an image whose resize by the rule would need more than MAX_RESIZE_PIXELS."""
    width, height = dims
    new_w, new_h = _resized_size(width, height, size) if min(dims) > 0 else (0, 0)
    if max(width * height, new_w * new_h) > MAX_RESIZE_PIXELS:
        raise DataError(
            f"cannot read image {name} ({width}x{height} pixels: resized to {size} on its "
            f"shorter side it would be {new_w}x{new_h}, too large); remove or replace the file"
        )


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "I" or img.mode.startswith("I;16"):
        # 16-bit: map 0..65535 onto 0..255 (convert("RGB") would clip at 255 instead).
        wide = np.asarray(img).astype(np.float64)
        gray = np.rint(np.clip(wide, 0, 65535) / 257).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
    return img.convert("RGB")


def _resize(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (antialiased bilinear), then centre crop to size x size."""
    width, height = img.size
    if (width, height) == (size, size):
        return img
    new_w, new_h = _resized_size(width, height, size)
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def _resize_array(images: np.ndarray, size: int, progress: bool) -> np.ndarray:
    """The resize rule applied to each of an (N, H, W, 3) uint8 array's images."""
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i in tqdm(range(len(images)), desc="resizing", unit="img", disable=not progress):
        out[i] = np.asarray(_resize(Image.fromarray(images[i]), size))
    return out


# --------------------------------------------------------------------------------------------
# Many files, in a process pool when there are many


def _decode_chunk(paths: list[str], image_size: int | None) -> list[np.ndarray]:
    return [decode_image(path, image_size) for path in paths]


def _init_worker(parent: int | None = None) -> None:
    """Pool initializer: Ctrl-C reaches the whole process group, but only the parent acts on
    it; SIGTERM (how the parent stops a worker) kills outright, whatever the parent set. A
    parent that dies without stopping its workers (SIGKILL, SIGHUP) takes them with it: the
    kernel sends each SIGKILL then (Linux's PR_SET_PDEATHSIG); one that died before this ran
    is seen by the worker's parent pid having changed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _worker_count() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(available, os.cpu_count() or 1))


def _decode_serially(names: list[str], image_size: int | None, bar: tqdm) -> list[np.ndarray]:
    images = []
    for path in names:
        images.append(decode_image(path, image_size))
        bar.update(1)
    return images


class _Terminated(BaseException):
    """SIGTERM arrived while a pool ran, in a process that SIGTERM would have killed."""


def _die_by_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
    raise SystemExit(128 + signal.SIGTERM)  # not reached: the signal ends the process


class _SignalGuard:
    """While a pool runs, turn SIGTERM and Ctrl-C into exceptions, so that the workers are
    stopped before the process ends.

    Only default dispositions are replaced. SIGTERM, which would kill the process at once and
    orphan the workers, raises ``_Terminated``; once the workers are stopped the process still
    dies by SIGTERM. SIGINT raises KeyboardInterrupt, as by default. Until ``arm()`` a signal
    is only recorded: Python would swallow an exception raised in the at-fork hooks that run
    while the workers start. ``check()`` raises for a signal recorded and not yet acted on.
    ``disarm()`` lets the clean-up run to its end; a SIGTERM seen meanwhile still ends the
    process afterwards.
    """

    def __init__(self) -> None:
        self.parent = os.getpid()
        self.seen: set[int] = set()
        self.armed = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalGuard:
        defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
        try:
            for signum, default in defaults.items():
                if signal.getsignal(signum) is default:
                    self.previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: signals are not ours to handle
            pass
        return self

    def arm(self) -> None:
        self.armed = True
        self.check()

    def _handle(self, signum: int, frame: object) -> None:
        if os.getpid() != self.parent:  # a worker, forked before its initializer ran
            if signum == signal.SIGTERM:
                _die_by_sigterm()
            return  # Ctrl-C is the parent's to act on
        self.seen.add(signum)
        self.check()

    def check(self) -> None:
        if self.armed and self.seen:
            raise _Terminated if signal.SIGTERM in self.seen else KeyboardInterrupt

    def disarm(self) -> None:
        self.armed = False

    def __exit__(self, exc_type: Any, exc: object, tb: object) -> None:
        if signal.SIGTERM in self.seen and signal.SIGTERM in self.previous:
            _die_by_sigterm()
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        # A Ctrl-C recorded while disarmed (e.g. as a worker's death broke the pool and the
        # clean-up ran) is never lost: it still interrupts, after the workers are gone.
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        if signal.SIGINT in self.seen and not interrupted:
            raise KeyboardInterrupt


def _terminate_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stop the pool now: drop queued chunks and kill the workers (they may be blocked
    writing results to a pipe that nobody reads any more)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


def _decode_in_pool(
    names: list[str], image_size: int | None, workers: int, bar: tqdm
) -> list[np.ndarray]:
    # The platform's default start method; _decode_chunk is a top-level function, so this also
    # works where that method is spawn (macOS, Windows).
    chunk = max(64, min(1000, -(-len(names) // (workers * 8))))
    chunks = [names[i : i + chunk] for i in range(0, len(names), chunk)]
    images: list[np.ndarray] = []
    with _SignalGuard() as guard:
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, initializer=_init_worker, initargs=(os.getpid(),)
        )
        try:
            results = pool.map(_decode_chunk, chunks, [image_size] * len(chunks))
            guard.arm()  # the workers are started now
            for decoded in results:
                images.extend(decoded)
                bar.update(len(decoded))
                guard.check()
            pool.shutdown(wait=True)
        except BaseException:
            # A bad image, Ctrl-C or SIGTERM: never leave workers behind (a plain shutdown
            # would first wait for every queued chunk).
            guard.disarm()
            _terminate_workers(pool)
            raise
    return images


def _decode_all(names: list[str], image_size: int | None, progress: bool) -> np.ndarray:
    """Decode every file into one (N, H, W, 3) array, in a process pool when there are many."""
    bar = tqdm(total=len(names), desc="decoding images", unit="img", disable=not progress)
    workers = _worker_count()
    with bar:
        if len(names) <= PARALLEL_THRESHOLD or workers == 1:
            images = _decode_serially(names, image_size, bar)
        else:
            try:
                images = _decode_in_pool(names, image_size, workers, bar)
            except BrokenProcessPool:
                # A worker died (out of memory, or a script without `if __name__ == "__main__"`
                # under spawn): decoding serially is slower but gives the same result.
                print("warning: the decoding processes failed; decoding serially", file=sys.stderr)
                bar.reset()
                images = _decode_serially(names, image_size, bar)
    first = images[0].shape
    for path, image in zip(names, images, strict=True):
        if image.shape != first:
            raise DataError(
                f"images have different sizes: {names[0]} is {first[1]}x{first[0]} but {path} "
                f"is {image.shape[1]}x{image.shape[0]}; pass --image-size N to resize them all"
            )
    return np.stack(images)
