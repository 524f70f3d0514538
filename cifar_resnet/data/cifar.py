"""The official CIFAR python format: the archives, their files' size bounds, safe unpickling.

Members are read straight from the tar file (nothing is extracted) or from the extracted
folder; a member larger than an official batch file can be is refused before it is read.
Batch files are unpickled by ``RestrictedUnpickler``, which rebuilds only dicts, lists,
strings, numbers and numpy arrays. ``_parse_batch`` turns one batch into (N, 32, 32, 3)
uint8 images and int64 labels.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifar_resnet.errors import DataError

from .decode import _reason

CIFAR_SIDE = 32

# The largest file each member can be. The official files: a cifar-10 batch and cifar-100's
# test file ~31 MB, cifar-100's train file ~155 MB, the meta files under 2 KB.
BATCH_LIMIT = 40_000_000
CIFAR100_TRAIN_LIMIT = 200_000_000
META_LIMIT = 1_000_000


@dataclass(frozen=True)
class CifarArchive:
    """Where the official python-format archive lives and how its pickles are laid out."""

    url: str
    md5: str
    size: int  # the official archive's bytes (a download is cut off a little above this)
    filename: str  # the archive's official file name
    folder: str  # the folder the archive holds
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    meta_member: str
    labels_key: bytes
    names_key: bytes

    def members(self) -> tuple[str, ...]:
        return (*self.train_members, *self.test_members, self.meta_member)


CIFAR_ARCHIVES: dict[str, CifarArchive] = {
    "cifar10": CifarArchive(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        size=170_498_071,
        filename="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_members=("test_batch",),
        meta_member="batches.meta",
        labels_key=b"labels",
        names_key=b"label_names",
    ),
    "cifar100": CifarArchive(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e6d6b68e8c6a3",
        size=169_001_437,
        filename="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train_members=("train",),
        test_members=("test",),
        meta_member="meta",
        labels_key=b"fine_labels",
        names_key=b"fine_label_names",
    ),
}


def _archive_url(name: str) -> str:
    return os.environ.get(f"CIFAR_RESNET_{name.upper()}_URL") or CIFAR_ARCHIVES[name].url


def _archive_md5(name: str) -> str:
    return (os.environ.get(f"CIFAR_RESNET_{name.upper()}_MD5") or CIFAR_ARCHIVES[name].md5).lower()


def _check_md5(path: Path, expected: str) -> None:
    digest = hashlib.md5()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"cannot read archive {path} ({_reason(exc)})") from None
    if digest.hexdigest() != expected:
        raise DataError(
            f"archive {path} has md5 {digest.hexdigest()}, expected {expected}; it is corrupt or "
            "incomplete, delete it and download it again"
        )


# --------------------------------------------------------------------------------------------
# Reading the members, bounded


def _member_limit(name: str, member: str) -> int:
    """The most bytes the official ``member`` of dataset ``name`` can hold, with margin."""
    if member == CIFAR_ARCHIVES[name].meta_member:
        return META_LIMIT
    if name == "cifar100" and member == "train":
        return CIFAR100_TRAIN_LIMIT
    return BATCH_LIMIT


def _read_archive(path: Path) -> tuple[str, dict[str, bytes]]:
    """Read the CIFAR members of a tar archive without extracting it."""
    wanted: dict[str, tuple[str, str]] = {}  # member path -> (dataset, member)
    for name, info in CIFAR_ARCHIVES.items():
        for member in info.members():
            wanted[f"{info.folder}/{member}"] = (name, member)
    found: dict[str, dict[str, bytes]] = {name: {} for name in CIFAR_ARCHIVES}
    try:
        with tarfile.open(path, "r:*") as tar:
            for entry in tar:
                # Only regular files, by their expected names: links and anything else are
                # never followed and nothing is written to disk.
                key = entry.name.removeprefix("./")
                if key in wanted and entry.isfile():
                    name, member = wanted[key]
                    limit = _member_limit(name, member)
                    if entry.size > limit:  # refused before a byte of it is read
                        raise DataError(
                            f"archive {path}: member {entry.name} is {entry.size} bytes, more "
                            f"than a CIFAR batch file can be ({limit}); use the official archive"
                        )
                    stream = tar.extractfile(entry)
                    if stream is not None:
                        found[name][member] = stream.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(
            f"cannot read archive {path} ({_reason(exc)}); it is truncated or not a tar.gz, "
            "download it again"
        ) from None
    for name, contents in found.items():
        if contents:
            info = CIFAR_ARCHIVES[name]
            for member in info.members():
                if member not in contents:
                    raise DataError(
                        f"archive {path} lacks {info.folder}/{member}; it is incomplete, "
                        f"download the official {info.filename} again"
                    )
            return name, contents
    raise DataError(
        f"archive {path} holds neither cifar-10-batches-py/ nor cifar-100-python/; pass the "
        "official cifar-10-python.tar.gz or cifar-100-python.tar.gz"
    )


def _read_folder(folder: Path, name: str) -> dict[str, bytes]:
    """Read the CIFAR files of an extracted folder of dataset ``name``."""
    info = CIFAR_ARCHIVES[name]
    contents = {}
    for member in info.members():
        path = folder / member
        try:
            size, limit = path.stat().st_size, _member_limit(name, member)
            if size > limit:  # refused before a byte of it is read
                raise DataError(
                    f"{path} is {size} bytes, more than a CIFAR batch file can be ({limit}); "
                    f"use the official {info.filename}"
                )
            contents[member] = path.read_bytes()
        except FileNotFoundError:
            raise DataError(
                f"{path} is missing; the {info.folder} folder is incomplete, "
                f"extract the official {info.filename} again"
            ) from None
        except OSError as exc:
            raise DataError(f"cannot read {path}: {_reason(exc)}") from None
    return contents


# --------------------------------------------------------------------------------------------
# Unpickling and parsing


# numpy's array rebuilder, found without importing numpy.core (deprecated in numpy 2).
_RECONSTRUCT = np.zeros(0).__reduce__()[0]


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only what CIFAR batch files hold: dicts, lists, strings,
    numbers and numpy arrays.

    Any other global (``os.system``, ``builtins.eval``, ...) raises DataError before it is
    called, so a crafted file cannot run code. ``where`` names the file in that error.
    """

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def __init__(self, file: io.IOBase, *, where: str = "<pickle>", **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        allowed = self._ALLOWED.get((module, name))
        if allowed is None:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self.where}: CIFAR batch files "
                "hold only arrays, lists and strings; use the official CIFAR files"
            )
        return allowed


def _unpickle(data: bytes, where: str) -> dict[bytes, Any]:
    try:
        result = RestrictedUnpickler(io.BytesIO(data), where=where, encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:  # any failure inside pickle means a corrupt or truncated file
        raise DataError(
            f"{where} is not a readable CIFAR batch file ({type(exc).__name__}: {_reason(exc)}); "
            "it is "
            "truncated or corrupt, get the official archive again"
        ) from None
    if not isinstance(result, dict):
        raise DataError(f"{where} holds a {type(result).__name__}, not a CIFAR batch dict")
    for key, value in result.items():
        if isinstance(value, np.ndarray) and value.dtype != np.uint8:
            raise DataError(
                f"{where}: {key!r} is an array of {value.dtype}, CIFAR files hold only uint8 "
                "arrays; use the official CIFAR files"
            )
    return result


def _parse_batch(
    data: bytes, where: str, labels_key: bytes, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(data, where)
    pixels = batch.get(b"data")
    labels = batch.get(labels_key)
    if pixels is None or labels is None:
        missing = b" and ".join(k for k in (b"data", labels_key) if batch.get(k) is None)
        raise DataError(f"{where} lacks the key {missing.decode()}; use the official CIFAR files")
    size = 3 * CIFAR_SIDE * CIFAR_SIDE
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 2 or pixels.shape[1] != size:
        shape = getattr(pixels, "shape", type(pixels).__name__)
        raise DataError(
            f"{where}: data has shape {shape}, expected (N, {size}); use the official CIFAR files"
        )
    if not isinstance(labels, list | tuple) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in labels
    ):
        raise DataError(f"{where}: labels are not a list of integers; use the official CIFAR files")
    if len(labels) != len(pixels):
        raise DataError(
            f"{where}: {len(labels)} labels for {len(pixels)} images; use the official CIFAR files"
        )
    labels_array = np.asarray(labels, dtype=np.int64)
    bad = (labels_array < 0) | (labels_array >= n_classes)
    if bad.any():
        raise DataError(
            f"{where}: label {labels_array[bad][0]} is outside 0..{n_classes - 1} (the class "
            f"list has {n_classes} names); use the official CIFAR files"
        )
    # Each row is three channel planes (R, G, B) of 32x32, row-major: to (N, H, W, C).
    images = pixels.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels_array
