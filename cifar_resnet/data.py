"""Load CIFAR-10, CIFAR-100 or any image folder as uint8 arrays, decoded once and cached.

A dataset is named by one string (``spec``):

- an **image folder** ``ROOT`` holding ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``.
  Classes are the sorted folder names of ``train/``; ``test/`` must have the same ones. Only
  files directly inside a class folder are read; names starting with ``.`` are ignored.
- an **official CIFAR archive** in the python format (``cifar-10-python.tar.gz``,
  ``cifar-100-python.tar.gz``), its extracted folder (``cifar-10-batches-py``,
  ``cifar-100-python``) or a folder holding one of these. Members are read straight from the
  tar file, nothing is extracted. An archive with the official file name must have the
  official md5.
- ``cifar10`` or ``cifar100``: the official archive in ``data_dir`` (default
  ``$CIFAR_RESNET_DATA``, else ``~/.cache/cifar-resnet/data``), downloaded there first if
  missing. ``$CIFAR_RESNET_CIFAR10_URL`` / ``$CIFAR_RESNET_CIFAR10_MD5`` (and the CIFAR100
  pair) override the address and checksum.

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
rounded like torchvision's ``CenterCrop``). The same rule applies to CIFAR arrays. Without
``image_size`` all images must already have one size.

Decoded arrays are cached in ``cache_dir`` (default ``$CIFAR_RESNET_CACHE``, else
``~/.cache/cifar-resnet/decoded``) as one uncompressed ``.npz`` per dataset, keyed by the
dataset's files (path, size, modification time) and ``image_size``; changing any file
rebuilds the cache.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import io
import os
import pickle
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from cifar_resnet.errors import DataError

# Bump when the decoding rules change, so that caches written by older code are not reused.
FORMAT_VERSION = 1
# Below this many files a process pool costs more to start than it saves.
PARALLEL_THRESHOLD = 2000
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
CIFAR_SIDE = 32


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


@dataclass(frozen=True)
class CifarArchive:
    """Where the official python-format archive lives and how its pickles are laid out."""

    url: str
    md5: str
    filename: str  # the archive's official file name
    folder: str  # the folder the archive holds
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    meta_member: str
    labels_key: bytes
    names_key: bytes


CIFAR_ARCHIVES: dict[str, CifarArchive] = {
    "cifar10": CifarArchive(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
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
        filename="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train_members=("train",),
        test_members=("test",),
        meta_member="meta",
        labels_key=b"fine_labels",
        names_key=b"fine_label_names",
    ),
}


def _reason(exc: BaseException) -> str:
    """An exception's message on one line (errors are printed as one line)."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def _archive_url(name: str) -> str:
    return os.environ.get(f"CIFAR_RESNET_{name.upper()}_URL") or CIFAR_ARCHIVES[name].url


def _archive_md5(name: str) -> str:
    return (os.environ.get(f"CIFAR_RESNET_{name.upper()}_MD5") or CIFAR_ARCHIVES[name].md5).lower()


# --------------------------------------------------------------------------------------------
# Public entry point


def load_data(
    spec: str,
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    cache_dir: str | None = None,
    progress: bool = False,
) -> DataBundle:
    """Load the dataset named by ``spec`` (see the module docstring), from the cache if there.

    Raises DataError, with one line saying what is wrong and what to do, for anything wrong
    with the data: a missing path, an unreadable image or batch file, a bad checksum.
    """
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image size must be a positive integer, got {image_size!r}")
    if spec in CIFAR_ARCHIVES:
        archive = _ensure_archive(spec, data_dir, progress)
        return _load_cached(_ArchiveSource(archive), image_size, cache_dir, progress)
    return _load_cached(_find_source(spec), image_size, cache_dir, progress)


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

    def _members(self) -> list[str]:
        info = self.info
        return [*info.train_members, *info.test_members, info.meta_member]

    def identity(self) -> list[str]:
        lines = [f"{self.name} folder {self.folder}"]
        for member in self._members():
            try:
                st = (self.folder / member).stat()
            except OSError:
                continue  # reported as missing by load()
            lines.append(f"{member} {st.st_size} {st.st_mtime_ns}")
        return lines

    def describe(self) -> str:
        return f"{self.name} folder {self.folder}"

    def load(self, image_size: int | None, progress: bool) -> DataBundle:
        contents = {}
        for member in self._members():
            path = self.folder / member
            try:
                contents[member] = path.read_bytes()
            except FileNotFoundError:
                raise DataError(
                    f"{path} is missing; the {self.info.folder} folder is incomplete, "
                    f"extract the official {self.info.filename} again"
                ) from None
            except OSError as exc:
                raise DataError(f"cannot read {path}: {_reason(exc)}") from None
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
    if not path.exists():
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
    if (path / "train").is_dir() or (path / "test").is_dir():
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
# Cache


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
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        print(
            f"warning: ignoring unreadable cache file {path} ({_reason(exc)}); rebuilding it",
            file=sys.stderr,
        )
        return None
    return DataBundle(splits["train"], splits["test"], classes, source)


def _write_cache(path: Path, bundle: DataBundle) -> None:
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=".tmp-", suffix=".npz", delete=False
        ) as tmp:
            tmp_name = tmp.name
            np.savez(
                tmp,
                train_images=bundle.train.images,
                train_labels=bundle.train.labels,
                test_images=bundle.test.images,
                test_labels=bundle.test.labels,
                classes=np.array(bundle.classes, dtype=str),
                source=np.array(bundle.source),
            )
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:
        print(
            f"warning: cannot write the data cache {path} ({_reason(exc)}); the data will "
            "be decoded again next time, set CIFAR_RESNET_CACHE to a writable folder",
            file=sys.stderr,
        )
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Image folders


_FileEntry = tuple[str, int, int]  # path, size in bytes, mtime in ns


def _list_image_folder(root: Path) -> tuple[list[str], dict[str, list[list[_FileEntry]]]]:
    """Return the class names and, per split and class, the sorted image files."""
    for split in ("train", "test"):
        if not (root / split).is_dir():
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
            entries = []
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.name.startswith(".") or not entry.is_file():
                        continue
                    st = entry.stat()
                    entries.append((entry.path, st.st_size, st.st_mtime_ns))
            if not entries:
                raise DataError(f"class folder {folder} holds no images; add images or remove it")
            entries.sort()  # by path, so by file name within the folder
            files[split].append(entries)
    return classes, files


def _class_folders(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


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
            img.load()  # decode now, so that a truncated file fails here
            rgb = _to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"cannot read image {name} ({_reason(exc)}); remove or replace the file"
        ) from None
    if image_size is not None:
        rgb = _resize(rgb, image_size)
    return np.asarray(rgb, dtype=np.uint8)


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
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def _decode_chunk(paths: list[str], image_size: int | None) -> list[np.ndarray]:
    return [decode_image(path, image_size) for path in paths]


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


def _decode_in_pool(
    names: list[str], image_size: int | None, workers: int, bar: tqdm
) -> list[np.ndarray]:
    # The platform's default start method; _decode_chunk is a top-level function, so this also
    # works where that method is spawn (macOS, Windows).
    chunk = max(64, min(1000, -(-len(names) // (workers * 8))))
    chunks = [names[i : i + chunk] for i in range(0, len(names), chunk)]
    images: list[np.ndarray] = []
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        for decoded in pool.map(_decode_chunk, chunks, [image_size] * len(chunks)):
            images.extend(decoded)
            bar.update(len(decoded))
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


def _make_split(images: np.ndarray, labels: Sequence[int] | np.ndarray) -> ArraySplit:
    return ArraySplit(np.ascontiguousarray(images, dtype=np.uint8), np.asarray(labels, np.int64))


# --------------------------------------------------------------------------------------------
# CIFAR python format


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


def _read_archive(path: Path) -> tuple[str, dict[str, bytes]]:
    """Read the CIFAR members of a tar archive without extracting it."""
    wanted: dict[str, tuple[str, str]] = {}  # member path -> (dataset, member)
    for name, info in CIFAR_ARCHIVES.items():
        for member in (*info.train_members, *info.test_members, info.meta_member):
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
            for member in (*info.train_members, *info.test_members, info.meta_member):
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


def _resize_array(images: np.ndarray, size: int, progress: bool) -> np.ndarray:
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i in tqdm(range(len(images)), desc="resizing", unit="img", disable=not progress):
        out[i] = np.asarray(_resize(Image.fromarray(images[i]), size))
    return out


# --------------------------------------------------------------------------------------------
# Download


def _default_data_dir() -> Path:
    return Path(os.environ.get("CIFAR_RESNET_DATA") or "~/.cache/cifar-resnet/data")


def _check_url(url: str) -> None:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "https" or (parsed.scheme == "http" and parsed.hostname in LOOPBACK_HOSTS):
        return
    raise DataError(
        f"refusing to download from {url}: only https URLs (or http on this machine) are "
        "allowed; use an https URL or download the archive by hand and pass its path"
    )


def _ensure_archive(name: str, data_dir: str | None, progress: bool) -> Path:
    """Return the official archive in ``data_dir``, downloading and checking it if missing."""
    info = CIFAR_ARCHIVES[name]
    folder = (Path(data_dir) if data_dir else _default_data_dir()).expanduser().absolute()
    final = folder / info.filename
    if final.is_file():
        return final
    url, md5 = _archive_url(name), _archive_md5(name)
    _check_url(url)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the data folder {folder} ({_reason(exc)}); pass a writable "
            "--data-dir or set CIFAR_RESNET_DATA"
        ) from None
    handlers = []
    if urllib.parse.urlsplit(url).hostname in LOOPBACK_HOSTS:
        handlers.append(urllib.request.ProxyHandler({}))  # never send loopback to a proxy
    opener = urllib.request.build_opener(*handlers)
    tmp_name = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=folder, prefix=f".{info.filename}.", suffix=".part", delete=False
        ) as tmp:
            tmp_name = tmp.name
            digest = hashlib.md5()
            with opener.open(url, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=total,
                    desc=f"downloading {info.filename}",
                    unit="B",
                    unit_scale=True,
                    disable=not progress,
                ) as bar:
                    while block := response.read(1 << 20):
                        tmp.write(block)
                        digest.update(block)
                        bar.update(len(block))
            tmp.flush()
            os.fsync(tmp.fileno())
        got = digest.hexdigest()
        if got != md5:
            raise DataError(
                f"downloaded {url} has md5 {got}, expected {md5}; the download is corrupt or "
                "the URL is wrong"
            )
        os.replace(tmp_name, final)
        tmp_name = None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = _reason(getattr(exc, "reason", None) or exc)
        raise DataError(
            f"cannot download {url} ({reason}); download {info.filename} by hand and pass its "
            "path as the dataset"
        ) from None
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
    return final


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
# Splits and statistics


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a subset of ``n`` examples that keeps the class proportions.

    Each class gets ``n * class_fraction`` examples rounded by the largest-remainder method,
    so the total is exactly ``n``; which examples is drawn with ``np.random.default_rng(seed)``.
    """
    labels = np.asarray(labels)
    total = len(labels)
    if not 0 <= n <= total:
        raise DataError(
            f"cannot take {n} examples from a split of {total}; choose a number from 0 to {total}"
        )
    if n == 0:
        return np.empty(0, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / total
    quota = np.floor(exact).astype(np.int64)
    # Largest remainder first; a stable sort breaks ties by class order.
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: n - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == cls), size=k, replace=False)
        for cls, k in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _take(split: ArraySplit, indices: np.ndarray) -> ArraySplit:
    return ArraySplit(np.ascontiguousarray(split.images[indices]), split.labels[indices])


def split_validation(split: ArraySplit, n: int, seed: int) -> tuple[ArraySplit, ArraySplit]:
    """Carve a stratified validation set of ``n`` examples out of ``split``.

    Returns ``(rest, val)``; both keep the original order of their examples.
    """
    val = stratified_indices(split.labels, n, seed)
    keep = np.ones(len(split.labels), dtype=bool)
    keep[val] = False
    return _take(split, np.flatnonzero(keep)), _take(split, val)


def subset(split: ArraySplit, n: int | None, seed: int) -> ArraySplit:
    """A stratified subset of ``n`` examples, or ``split`` itself if n is None or >= its size."""
    if n is None or n >= len(split.labels):
        return split
    return _take(split, stratified_indices(split.labels, n, seed))


def channel_stats(
    images: np.ndarray,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and (population) standard deviation of uint8 images, on the 0..1 scale.

    Sums are taken exactly in integers, a chunk at a time, so memory stays small.
    """
    if images.ndim != 4 or images.shape[3] != 3 or len(images) == 0:
        raise DataError(f"cannot compute channel statistics of an array of shape {images.shape}")
    sums = [0, 0, 0]
    squares = [0, 0, 0]
    for start in range(0, len(images), 4096):
        block = images[start : start + 4096].reshape(-1, 3).astype(np.int64)
        for c in range(3):
            sums[c] += int(block[:, c].sum())
            squares[c] += int(np.dot(block[:, c], block[:, c]))
    count = images.shape[0] * images.shape[1] * images.shape[2]
    means = tuple(s / count / 255 for s in sums)
    stds = tuple(
        ((q * count - s * s) / count**2) ** 0.5 / 255 for s, q in zip(sums, squares, strict=True)
    )
    return means, stds  # type: ignore[return-value]
