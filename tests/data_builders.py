"""Builders of small datasets for the data tests: image folders, CIFAR batch files, archives."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def save_image(img: Image.Image, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> Image.Image:
    return Image.new("RGB", size, colour)


def make_folder(root: Path, size: tuple[int, int] = (8, 8), per_class: int = 3) -> Path:
    """train/ and test/ with classes cat (red) and dog (green) as PNG files."""
    colours = {"cat": (200, 10, 10), "dog": (10, 200, 10)}
    for split in ("train", "test"):
        for name, colour in colours.items():
            for i in range(per_class):
                save_image(solid(colour, size), root / split / name / f"{i:04d}.png")
    return root


def cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def pickled(obj: object) -> bytes:
    # Protocol 4 stores bytes as bytes; the official (Python 2) files decode to the same thing.
    return pickle.dumps(obj, protocol=4)


def cifar10_members(n: int = 4, n_test: int = 3) -> dict[str, bytes]:
    names = [b"airplane", b"automobile", b"bird"]
    members = {"batches.meta": pickled({b"label_names": names, b"num_vis": 3072})}
    for i in range(1, 6):
        labels = [(i + j) % 3 for j in range(n)]
        members[f"data_batch_{i}"] = pickled({b"data": cifar_rows(n, i), b"labels": labels})
    labels = [j % 3 for j in range(n_test)]
    members["test_batch"] = pickled({b"data": cifar_rows(n_test, 99), b"labels": labels})
    return members


def cifar100_members() -> dict[str, bytes]:
    names = [f"class{i}".encode() for i in range(5)]
    return {
        "meta": pickled({b"fine_label_names": names, b"coarse_label_names": [b"c0"]}),
        "train": pickled(
            {
                b"data": cifar_rows(6, 1),
                b"fine_labels": [0, 1, 2, 3, 4, 4],
                b"coarse_labels": [0] * 6,
            }
        ),
        "test": pickled(
            {b"data": cifar_rows(2, 2), b"fine_labels": [4, 0], b"coarse_labels": [0] * 2}
        ),
    }


def write_tar(path: Path, folder: str, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def write_folder(path: Path, members: dict[str, bytes]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, payload in members.items():
        (path / name).write_bytes(payload)
    return path


def expected_hwc(members: dict[str, bytes], names: list[str]) -> np.ndarray:
    rows = np.concatenate([pickle.loads(members[n], encoding="bytes")[b"data"] for n in names])
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
