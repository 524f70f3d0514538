"""The dataset sources a spec can name, and the uint8 arrays they decode to.

A dataset is named by one string (``spec``):

- an **image folder** ``ROOT`` holding ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``.
  Classes are the sorted folder names of ``train/``; ``test/`` must have the same ones. Only
  files directly inside a class folder are read; names starting with ``.`` are ignored. A
  symbolic link loop or an unreadable folder is a DataError.
- an **official CIFAR archive** in the python format (``cifar-10-python.tar.gz``,
  ``cifar-100-python.tar.gz``), its extracted folder (``cifar-10-batches-py``,
  ``cifar-100-python``) or a folder holding one of these (read by ``cifar.py``). An archive
  with the official file name must have the official md5.
- ``cifar10`` or ``cifar100``: the official archive, downloaded first (``download.py``).

Each source knows its identity (what the cache is keyed by) and how to decode itself into a
``DataBundle``. Without ``image_size`` all images of a folder must already have one size.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar_resnet.errors import DataError

from .cifar import (
    CIFAR_ARCHIVES,
    CIFAR_SIDE,
    _archive_md5,
    _check_md5,
    _parse_batch,
    _read_archive,
    _read_folder,
    _unpickle,
)
from .decode import _decode_all, _reason, _resize_array


@dataclass
class ArraySplit:
    """Images and labels of one split, ready to move to a device in one piece."""

    images: np.ndarray  # uint8, (N, H, W, 3), C-contiguous
    labels: np.ndarray  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataBundle:
    """A dataset's train and test splits, its class names and where it came from."""

    train: ArraySplit
    test: ArraySplit
    classes: list[str]
    source: str  # human-readable identity, e.g. "image folder /abs/path"


def _make_split(images: np.ndarray, labels: Sequence[int] | np.ndarray) -> ArraySplit:
    return ArraySplit(np.ascontiguousarray(images, dtype=np.uint8), np.asarray(labels, np.int64))


# --------------------------------------------------------------------------------------------
# Sources: each knows its identity (for the cache) and how to decode itself


class _ImageFolderSource:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.classes, self.files = _list_image_folder(root)

    def identity(self) -> list[str]:
        lines = [f"image folder {self.root}"]
        for split, class_files in self.files.items():
            for name, files in zip(self.classes, class_files, strict=True):
                for path, size, mtime_ns in files:
                    lines.append(f"{split}/{name}/{os.path.basename(path)} {size} {mtime_ns}")
        return lines

    def describe(self) -> str:
        return f"image folder {self.root}"

    def load(self, image_size: int | None, progress: bool) -> DataBundle:
        paths: list[str] = []
        labels: dict[str, list[int]] = {}
        for split, class_files in self.files.items():
            labels[split] = []
            for label, files in enumerate(class_files):
                paths.extend(path for path, _, _ in files)
                labels[split].extend([label] * len(files))
        images = _decode_all(paths, image_size, progress)
        n_train = len(labels["train"])
        return DataBundle(
            train=_make_split(images[:n_train], labels["train"]),
            test=_make_split(images[n_train:], labels["test"]),
            classes=self.classes,
            source=self.describe(),
        )


class _CifarFolderSource:
    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.name = name
        self.info = CIFAR_ARCHIVES[name]

    def identity(self) -> list[str]:
        lines = [f"{self.name} folder {self.folder}"]
        for member in self.info.members():
            try:
                st = (self.folder / member).stat()
            except OSError:
                continue  # reported as missing by load()
            lines.append(f"{member} {st.st_size} {st.st_mtime_ns}")
        return lines

    def describe(self) -> str:
        return f"{self.name} folder {self.folder}"

    def load(self, image_size: int | None, progress: bool) -> DataBundle:
        contents = _read_folder(self.folder, self.name)
        where = {member: str(self.folder / member) for member in contents}
        return _parse_cifar(self.name, contents, where, image_size, progress, self.describe())


class _ArchiveSource:
    def __init__(self, path: Path) -> None:
        self.path = path

    def identity(self) -> list[str]:
        st = self.path.stat()
        return [f"archive {self.path} {st.st_size} {st.st_mtime_ns}"]

    def load(self, image_size: int | None, progress: bool) -> DataBundle:
        official = {info.filename: name for name, info in CIFAR_ARCHIVES.items()}
        if self.path.name in official:
            _check_md5(self.path, _archive_md5(official[self.path.name]))
        name, contents = _read_archive(self.path)
        where = {
            member: f"{self.path}:{CIFAR_ARCHIVES[name].folder}/{member}" for member in contents
        }
        source = f"{name} archive {self.path}"
        return _parse_cifar(name, contents, where, image_size, progress, source)


_Source = _ImageFolderSource | _CifarFolderSource | _ArchiveSource


def _find_source(spec: str) -> _Source:
    path = Path(spec).expanduser().absolute()
    if not _exists(path):
        raise DataError(
            f"dataset path {path} does not exist; pass an image folder with train/ and test/, "
            "a CIFAR python-format archive or folder, or cifar10 / cifar100"
        )
    if path.is_file():
        if path.name.endswith((".tar.gz", ".tgz", ".tar")):
            return _ArchiveSource(path)
        raise DataError(
            f"{path} is a file but not a .tar.gz archive; pass an image folder with train/ and "
            "test/ or the official cifar-10-python.tar.gz / cifar-100-python.tar.gz"
        )
    if _is_dir(path / "train") or _is_dir(path / "test"):
        return _ImageFolderSource(path)
    name = _cifar_folder_kind(path)
    if name is not None:
        return _CifarFolderSource(path, name)
    for name, info in CIFAR_ARCHIVES.items():
        if (path / info.folder).is_dir():
            return _CifarFolderSource(path / info.folder, name)
    for info in CIFAR_ARCHIVES.values():
        if (path / info.filename).is_file():
            return _ArchiveSource(path / info.filename)
    raise DataError(
        f"{path} has no train/ and test/ folders and holds no CIFAR data; pass an image folder "
        "laid out as train/<class>/* and test/<class>/*, or a CIFAR archive or folder"
    )


def _cifar_folder_kind(path: Path) -> str | None:
    for name, info in CIFAR_ARCHIVES.items():
        if path.name == info.folder or (path / info.meta_member).is_file():
            return name
    return None


# --------------------------------------------------------------------------------------------
# Image folders: every stat, is_dir and listing turns an OSError (a link loop) into DataError


_FileEntry = tuple[str, int, int]  # path, size in bytes, mtime in ns


def _fs_error(path: str | os.PathLike[str], exc: OSError) -> DataError:
    return DataError(
        f"cannot read {os.fspath(path)} ({_reason(exc)}); fix or remove it (a symbolic link "
        "that points to itself, or a folder without read permission)"
    )


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise _fs_error(path, exc) from None
    return True


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise _fs_error(path, exc) from None


def _scan(folder: Path) -> list[os.DirEntry[str]]:
    """The visible entries of ``folder`` (names starting with ``.`` are left out)."""
    try:
        with os.scandir(folder) as it:
            return [entry for entry in it if not entry.name.startswith(".")]
    except OSError as exc:
        raise _fs_error(folder, exc) from None


def _file_entry(entry: os.DirEntry[str]) -> _FileEntry | None:
    """(path, size, mtime) of a file (links followed), None for anything else."""
    try:
        if not entry.is_file():  # a dangling link is not a file; a link loop raises
            return None
        st = entry.stat()
    except OSError as exc:
        raise _fs_error(entry.path, exc) from None
    return entry.path, st.st_size, st.st_mtime_ns


def _class_folders(folder: Path) -> list[str]:
    names = []
    for entry in _scan(folder):
        try:
            if entry.is_dir():
                names.append(entry.name)
        except OSError as exc:
            raise _fs_error(entry.path, exc) from None
    for name in names:  # class names go into JSON, Markdown and plots: text, not raw bytes
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(name).decode("utf-8", "backslashreplace")
            raise DataError(
                f"class folder {folder / shown} has a name that is not valid UTF-8; rename it"
            ) from None
    return sorted(names)


def _list_image_folder(root: Path) -> tuple[list[str], dict[str, list[list[_FileEntry]]]]:
    """Return the class names and, per split and class, the sorted image files."""
    for split in ("train", "test"):
        if not _is_dir(root / split):
            raise DataError(
                f"{root / split} is missing; an image folder needs train/<class>/* and "
                "test/<class>/*"
            )
    classes = _class_folders(root / "train")
    if not classes:
        raise DataError(f"{root / 'train'} has no class folders; put images in train/<class>/")
    test_classes = _class_folders(root / "test")
    if test_classes != classes:
        missing = sorted(set(classes) - set(test_classes))
        extra = sorted(set(test_classes) - set(classes))
        raise DataError(
            f"{root / 'test'} does not have the same class folders as {root / 'train'} "
            f"(missing: {', '.join(missing) or 'none'}; extra: {', '.join(extra) or 'none'}); "
            "give both splits the same classes"
        )
    files: dict[str, list[list[_FileEntry]]] = {}
    for split in ("train", "test"):
        files[split] = []
        for name in classes:
            folder = root / split / name
            entries = [e for e in map(_file_entry, _scan(folder)) if e is not None]
            if not entries:
                raise DataError(f"class folder {folder} holds no images; add images or remove it")
            entries.sort()  # by path, so by file name within the folder
            files[split].append(entries)
    return classes, files


# --------------------------------------------------------------------------------------------
# CIFAR batches to a bundle


def _parse_cifar(
    name: str,
    contents: dict[str, bytes],
    where: dict[str, str],
    image_size: int | None,
    progress: bool,
    source: str,
) -> DataBundle:
    info = CIFAR_ARCHIVES[name]
    meta = _unpickle(contents[info.meta_member], where[info.meta_member])
    raw_names = meta.get(info.names_key)
    if not isinstance(raw_names, list) or not raw_names:
        raise DataError(
            f"{where[info.meta_member]} has no {info.names_key.decode()} list of class names; "
            "use the official CIFAR files"
        )
    classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw_names]
    splits = {}
    for split, members in (("train", info.train_members), ("test", info.test_members)):
        parts = [
            _parse_batch(contents[m], where[m], info.labels_key, len(classes)) for m in members
        ]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if image_size is not None and image_size != CIFAR_SIDE:
            images = _resize_array(images, image_size, progress)
        splits[split] = _make_split(images, labels)
    return DataBundle(splits["train"], splits["test"], classes, source)
