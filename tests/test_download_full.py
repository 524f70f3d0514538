"""``--data cifar10`` at full size: the official archive's layout (about 170 MB, packed from the
JPEG copy beside the checkout), served over HTTP on this machine, downloaded, md5-checked,
extracted, unpickled through the restricted unpickler, and trained on for an epoch."""

import functools
import hashlib
import http.server
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import threading

import pytest
from conftest import CIFAR_JPEG

ARCHIVE = "cifar-10-python.tar.gz"


def pack_official(bundle, path):
    """The official layout: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta},
    each a pickled dict with bytes keys, images as rows of 3072 uint8 (R, G, B planes)."""
    rows = {
        name: (split.images.transpose(0, 3, 1, 2).reshape(len(split.labels), -1), split.labels)
        for name, split in (("train", bundle.train), ("test", bundle.test))
    }
    members = {"batches.meta": {b"label_names": bundle.classes, b"num_vis": 3072}}
    images, labels = rows["train"]
    for i in range(5):
        part = slice(i * 10000, (i + 1) * 10000)
        members[f"data_batch_{i + 1}"] = {b"data": images[part], b"labels": labels[part].tolist()}
    members["test_batch"] = {b"data": rows["test"][0], b"labels": rows["test"][1].tolist()}
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, batch in members.items():
            data = pickle.dumps(batch, protocol=4)  # 31 MB a batch, as the official files
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def served(tmp_path, cifar_jpeg):
    """The full-size archive on http://127.0.0.1:PORT/, and its md5 (packed from the copy:
    skipped without it)."""
    from cifar_resnet.data import load_data

    bundle = load_data(str(CIFAR_JPEG))  # decoded through the package's cache
    assert len(bundle.train.labels) == 50000 and len(bundle.test.labels) == 10000
    root = tmp_path / "served"
    root.mkdir()
    pack_official(bundle, root / ARCHIVE)
    md5 = hashlib.md5((root / ARCHIVE).read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{ARCHIVE}", md5, bundle
    server.shutdown()
    server.server_close()


def test_cifar10_downloaded_at_full_size_trains_an_epoch(served, tmp_path):
    url, md5, bundle = served
    out, data_dir = tmp_path / "run", tmp_path / "data"
    env = {**os.environ, "CIFAR_RESNET_CIFAR10_URL": url, "CIFAR_RESNET_CIFAR10_MD5": md5,
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "cifar_resnet", "train", "--data", "cifar10", "--data-dir",
           data_dir, "--cache-dir", tmp_path / "cache", "--out", out, "--epochs", 1,
           "--limit-train", 512, "--limit-test", 256, "--batch-size", 128, "--device", "cpu",
           "--no-report", "--quiet"]  # fmt: skip
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    archive = data_dir / ARCHIVE
    assert archive.stat().st_size > 150e6  # the full archive, in place under its own name
    assert not list(data_dir.glob(".*.part"))
    summary = json.loads(r.stdout)
    assert summary["steps"] == 4 and summary["test_accuracy"] is not None
    run = json.loads((out / "run.json").read_text())
    assert run["classes"] == bundle.classes and run["data"] == "cifar10"
    assert "official CIFAR archive" in run["data_source"] or ARCHIVE in run["data_source"]
