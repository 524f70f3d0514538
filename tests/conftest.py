import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Under pytest-xdist every worker process has one core's share: torch's intra-op threads (and
# those of every command a test starts, which inherits this) are one, so that workers do not
# spin against each other. The digest guard (test_digests.py) records this kind (threads: 1).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"


def session_tmp(tmp_path_factory) -> Path:
    """The session's temporary folder, the one its pytest-xdist workers share (theirs sit side
    by side in it)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture(autouse=True)
def alone_or_beside(request, tmp_path_factory):
    """Under pytest-xdist a test marked ``alone`` (its bound is on the wall clock, beside a load
    it sets itself) runs with no other test beside it: it takes an exclusive lock on a file
    the workers share, every other test a shared one."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    alone = request.node.get_closest_marker("alone") is not None
    with open(session_tmp(tmp_path_factory) / "alone.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        yield  # closing the file releases the lock


SHARED = Path(os.environ.get("CIFAR_RESNET_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CIFAR_JPEG = SHARED / "data" / "cifar10-jpeg"


@contextmanager
def busy_loops(n: int) -> Iterator[list[subprocess.Popen]]:
    """``n`` busy-looping Python processes (real CPU load), killed on leaving."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def torch_threads_env() -> dict[str, str]:
    """This environment without OMP_NUM_THREADS (which pytest-xdist's workers set): a command
    started with it has torch's own thread count, one per core."""
    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


def one_line_error(result, code):
    """A finished command failed with exit ``code`` and one ``error:`` line on stderr, no
    traceback; returns that line."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def cli_argv(*args) -> list[str]:
    """The argv that runs ``cifar-resnet ARGS`` as a new Python process."""
    return [sys.executable, "-m", "cifar_resnet", *map(str, args)]


def run_cli(*args, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """``cifar-resnet ARGS`` as a subprocess, its output captured as text; ``env`` is the
    whole environment (default: this process's). For what the process itself shows: exit
    codes, signals, start-up, output streams."""
    return subprocess.run(cli_argv(*args), capture_output=True, text=True, timeout=timeout, env=env)


def cli_main(*args) -> int:
    """``cifar-resnet ARGS`` in this process (errors: one line on stderr); its exit code."""
    from cifar_resnet.cli import main

    return main([str(a) for a in args])


def cli_result(capsys, *args) -> subprocess.CompletedProcess:
    """``cifar-resnet ARGS`` in this process, as a finished process: the exit code the
    command would exit with (argparse's usage errors included) and what it printed, for
    ``one_line_error``. For commands whose subject is not the process itself (its signals,
    its start-up, a time budget counted from its start: those take ``run_cli``)."""
    capsys.readouterr()  # only this command's output
    try:
        code = cli_main(*args)
    except SystemExit as e:  # argparse: `error: ...` on stderr, exit 2
        code = e.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


SMALL_RUN = ["--epochs", 1, "--batch-size", 16, "--precision", "fp32", "--device", "cpu"]


def train_small(data, out, *flags) -> dict:
    """A small training run in this process (``cifar-resnet train``: the seed net, 1 epoch of
    batch 16 in fp32 on the CPU, unless ``flags`` say otherwise); returns its summary."""
    code = cli_main(
        "train", "--data", data, "--out", out, *SMALL_RUN, *flags, "--quiet", "--no-report"
    )
    assert code == 0, f"train exited {code}"
    return json.loads((Path(out) / "summary.json").read_text())


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One decode cache for the whole session, shared by its pytest-xdist workers (their
    temporary folders sit side by side), so the real data is decoded once."""
    path = session_tmp(tmp_path_factory) / "decoded"
    path.mkdir(exist_ok=True)
    os.environ["CIFAR_RESNET_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def cifar_jpeg(cache_dir):
    """The shared CIFAR-10 copy (skipped without it), decoded into the session's cache by the
    first worker that asks; another waits on the lock and reads the cache."""
    if not CIFAR_JPEG.is_dir():
        pytest.skip(f"needs {CIFAR_JPEG}")
    from filelock import FileLock

    from cifar_resnet.data import load_data

    with FileLock(cache_dir / "cifar10-jpeg.lock"):
        load_data(str(CIFAR_JPEG), cache_dir=str(cache_dir), progress=False)
    return CIFAR_JPEG


def noise_folder(
    root: Path, classes: dict[str, int], counts: dict[str, int], size: int, spread: int, seed: int
) -> Path:
    """An image folder at ``root`` of ``size`` x ``size`` PNGs: for each split in ``counts``
    (its number of images per class) and each class, pixels of the class's base brightness
    plus seeded uniform noise in [-spread, spread); the same bytes on every machine."""
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for cls, base in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(base + rng.integers(-spread, spread, (size, size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def make_tiny_folder(parent: Path) -> Path:
    """A 2-class image folder of 8x8 PNGs in ``parent/tiny``: class 'bright' and class 'dark',
    24 training and 8 test images each."""
    classes, counts = {"bright": 200, "dark": 40}, {"train": 24, "test": 8}
    return noise_folder(parent / "tiny", classes, counts, size=8, spread=30, seed=0)


@pytest.fixture
def tiny_folder(tmp_path):
    """The tiny 2-class folder (``make_tiny_folder``), this test's own copy."""
    return make_tiny_folder(tmp_path)


SUBSET_PER_CLASS = {"train": 50, "test": 10}  # 500 training and 100 test images


def make_subset(root: Path) -> Path:
    """Real CIFAR-10 JPEGs (the first of each class) when the shared copy is here, else 3
    classes of coloured noise."""
    for split, n in SUBSET_PER_CLASS.items():
        if CIFAR_JPEG.is_dir():
            for cls in sorted(p.name for p in (CIFAR_JPEG / split).iterdir() if p.is_dir()):
                (root / split / cls).mkdir(parents=True)
                for f in sorted((CIFAR_JPEG / split / cls).iterdir())[:n]:
                    shutil.copy(f, root / split / cls / f.name)
        else:
            rng = np.random.default_rng(0)
            for c, cls in enumerate(("red", "green", "blue")):
                (root / split / cls).mkdir(parents=True)
                for i in range(n):
                    px = rng.integers(0, 120, (32, 32, 3))
                    px[:, :, c] += 120
                    Image.fromarray(px.astype(np.uint8)).save(root / split / cls / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def subset_run(tmp_path_factory, cache_dir):
    """The seed net trained for 2 epochs on the CIFAR-10 subset (``make_subset``), once for
    the session: (run folder, data folder, decode cache). Trained through the API without a
    data spec, so the run does not remember its data (export and report without --data have
    none). Tests only read it or write report files into it (predict, export, report)."""
    from cifar_resnet.config import resolve_config
    from cifar_resnet.train import fit

    root = tmp_path_factory.mktemp("subset-run")
    data = make_subset(root / "data")
    recipe = {"model": "seed", "epochs": 2, "batch_size": 64, "precision": "fp32", "compile": "off"}
    _, config = resolve_config(None, None, recipe)
    fit(
        config, load_subset(data, cache_dir), root / "run", device="cpu", quiet=True, progress=False
    )
    return root / "run", data, cache_dir


def load_subset(data: Path, cache: Path):
    """The subset's DataBundle, from the session's decode cache."""
    from cifar_resnet.data import load_data

    return load_data(str(data), cache_dir=str(cache), progress=False)
