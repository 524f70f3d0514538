"""``load_data``: a dataset decoded once, then read back from a cache of uint8 arrays.

Decoded arrays are cached in ``cache_dir`` (default ``$CIFAR_RESNET_CACHE``, else
``~/.cache/cifar-resnet/decoded``) as one uncompressed ``.npz`` per dataset, keyed by the
dataset's files (path, size, modification time), ``image_size`` and ``FORMAT_VERSION``;
changing any file rebuilds the cache. An unreadable cache file is rebuilt, an unwritable
cache folder only warns.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

from cifar_resnet.config import MAX_IMAGE_SIZE
from cifar_resnet.errors import DataError, OutputError, UsageError
from cifar_resnet.files import remove_stale_temps, write_atomic

from .cifar import CIFAR_ARCHIVES
from .decode import _reason
from .download import _ensure_archive
from .sources import ArraySplit, DataBundle, _ArchiveSource, _find_source, _Source

# Bump when the decoding rules change, so that caches written by older code are not reused.
FORMAT_VERSION = 1


def load_data(
    spec: str,
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    cache_dir: str | None = None,
    progress: bool = False,
) -> DataBundle:
    """Load the dataset named by ``spec`` (see ``sources``), from the cache if there.

    ``cifar10`` / ``cifar100`` are downloaded into ``data_dir`` first if missing. Raises
    DataError, with one line saying what is wrong and what to do, for anything wrong with the
    data: a missing path, an unreadable image or batch file, a bad checksum.
    """
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image size must be a positive integer, got {image_size!r}")
    if image_size is not None and image_size > MAX_IMAGE_SIZE:  # before any image is decoded
        raise UsageError(
            f"--image-size {image_size} is more than this trainer is for (at most "
            f"{MAX_IMAGE_SIZE} pixels a side: small images)"
        )
    if spec in CIFAR_ARCHIVES:
        archive = _ensure_archive(spec, data_dir, progress)
        return _load_cached(_ArchiveSource(archive), image_size, cache_dir, progress)
    return _load_cached(_find_source(spec), image_size, cache_dir, progress)


def _default_cache_dir() -> Path:
    return Path(os.environ.get("CIFAR_RESNET_CACHE") or "~/.cache/cifar-resnet/decoded")


def _load_cached(
    source: _Source, image_size: int | None, cache_dir: str | None, progress: bool
) -> DataBundle:
    folder = Path(cache_dir) if cache_dir else _default_cache_dir()
    folder = folder.expanduser()
    digest = hashlib.sha256()
    for line in [f"format {FORMAT_VERSION}", f"image_size {image_size}", *source.identity()]:
        digest.update(line.encode("utf-8", "surrogateescape") + b"\n")
    path = folder / f"{digest.hexdigest()}.npz"
    remove_stale_temps(folder)  # left by a writer killed mid-write
    bundle = _read_cache(path)
    if bundle is None:
        bundle = source.load(image_size, progress)
        _write_cache(path, bundle)
    if image_size is not None:
        bundle.source += f", resized to {image_size}x{image_size}"
    return bundle


def _read_cache(path: Path) -> DataBundle | None:
    if not path.is_file():
        return None
    try:
        _check_headers(path)
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        splits = {}
        for split in ("train", "test"):
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
                raise ValueError(f"{split} images have dtype {images.dtype}, shape {images.shape}")
            if labels.dtype != np.int64 or labels.shape != images.shape[:1]:
                raise ValueError(f"{split} labels have dtype {labels.dtype}, shape {labels.shape}")
            splits[split] = ArraySplit(np.ascontiguousarray(images), labels)
        classes = [str(name) for name in arrays["classes"].tolist()]
        source = str(arrays["source"])
        for split in splits.values():
            if len(split.labels) and not 0 <= split.labels.min() <= split.labels.max() < len(
                classes
            ):
                raise ValueError(f"labels outside the {len(classes)} class names")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        print(
            f"warning: ignoring unreadable cache file {path} ({_reason(exc)}); rebuilding it",
            file=sys.stderr,
        )
        return None
    return DataBundle(splits["train"], splits["test"], classes, source)


def _check_headers(path: Path) -> None:
    """Each array's .npy header against the bytes stored for it, before numpy allocates what
    the header declares (a crafted header can declare terabytes): ValueError if they differ."""
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            with z.open(info) as f:
                fmt = np.lib.format
                major, _ = fmt.read_magic(f)
                read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
                shape, _, dtype = read(f)
                if dtype.hasobject:
                    raise ValueError(f"{info.filename} holds Python objects")
                size = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if size > info.file_size:
                    raise ValueError(f"{info.filename} declares {size} bytes, holds fewer")


def _write_cache(path: Path, bundle: DataBundle) -> None:
    """Write the cache file through the package's atomic writer; a failure is a warning (the
    data is decoded again next time), never an error."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(
                f,
                train_images=bundle.train.images,
                train_labels=bundle.train.labels,
                test_images=bundle.test.images,
                test_labels=bundle.test.labels,
                classes=np.array(bundle.classes, dtype=str),
                source=np.array(bundle.source),
            )

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, write)
    except (OSError, OutputError) as exc:
        reason = _reason(exc) if isinstance(exc, OSError) else str(exc).split(": ", 1)[-1]
        print(
            f"warning: cannot write the data cache {path} ({reason.split(';')[0]}); the data "
            "will be decoded again next time, set CIFAR_RESNET_CACHE to a writable folder",
            file=sys.stderr,
        )
