import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(os.environ.get("CIFAR_RESNET_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CIFAR_JPEG = SHARED / "data" / "cifar10-jpeg"


def one_line_error(result, code):
    """A finished command failed with exit ``code`` and one ``error:`` line on stderr, no
    traceback; returns that line."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One decode cache for the whole session, so the real data is decoded once."""
    path = tmp_path_factory.mktemp("decoded")
    os.environ["CIFAR_RESNET_CACHE"] = str(path)
    return path


@pytest.fixture
def tiny_folder(tmp_path):
    """A 2-class image folder of 8x8 PNGs: class 'bright' and class 'dark'."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tiny"
    for split, n in (("train", 24), ("test", 8)):
        for cls, base in (("bright", 200), ("dark", 40)):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(base + rng.integers(-30, 30, (8, 8, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root
