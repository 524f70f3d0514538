"""cifar_resnet.data.download: fetching the official archives over https, md5-checked."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from data_builders import cifar10_members, cifar100_members, write_tar

from cifar_resnet.data import load_data
from cifar_resnet.errors import DataError


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path, monkeypatch) -> Iterator[tuple[str, Path]]:
    """An http server on 127.0.0.1 serving tmp_path/www; yields (base URL, www folder)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", www
    finally:
        server.shutdown()
        server.server_close()


def test_download_and_load(served, tmp_path: Path, monkeypatch) -> None:
    base, www = served
    archive = write_tar(www / "small.tar.gz", "cifar-10-batches-py", cifar10_members())
    monkeypatch.setenv("CIFAR_RESNET_CIFAR10_URL", f"{base}/small.tar.gz")
    monkeypatch.setenv("CIFAR_RESNET_CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    data_dir = tmp_path / "data"
    bundle = load_data("cifar10", data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"))
    assert [p.name for p in data_dir.iterdir()] == ["cifar-10-python.tar.gz"]
    assert bundle.classes == ["airplane", "automobile", "bird"]
    assert bundle.train.images.shape == (20, 32, 32, 3)
    # Present now: no second download, even from a dead URL.
    monkeypatch.setenv("CIFAR_RESNET_CIFAR10_URL", f"{base}/gone.tar.gz")
    again = load_data("cifar10", data_dir=str(data_dir), cache_dir=str(tmp_path / "cache2"))
    np.testing.assert_array_equal(again.test.images, bundle.test.images)


def test_download_default_folder_from_env(served, tmp_path: Path, monkeypatch) -> None:
    base, www = served
    archive = write_tar(www / "c100.tar.gz", "cifar-100-python", cifar100_members())
    monkeypatch.setenv("CIFAR_RESNET_CIFAR100_URL", f"{base}/c100.tar.gz")
    monkeypatch.setenv("CIFAR_RESNET_CIFAR100_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setenv("CIFAR_RESNET_DATA", str(tmp_path / "envdata"))
    bundle = load_data("cifar100", cache_dir=str(tmp_path / "cache"))
    assert (tmp_path / "envdata" / "cifar-100-python.tar.gz").is_file()
    assert len(bundle.classes) == 5


def test_download_wrong_md5_leaves_nothing(served, tmp_path: Path, monkeypatch) -> None:
    base, www = served
    write_tar(www / "small.tar.gz", "cifar-10-batches-py", cifar10_members())
    monkeypatch.setenv("CIFAR_RESNET_CIFAR10_URL", f"{base}/small.tar.gz")
    monkeypatch.setenv("CIFAR_RESNET_CIFAR10_MD5", "0" * 32)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match=r"md5 .*expected 0{32}; the download is corrupt"):
        load_data("cifar10", data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"))
    assert list(data_dir.iterdir()) == []


def test_download_network_error(served, tmp_path: Path, monkeypatch) -> None:
    base, _ = served
    monkeypatch.setenv("CIFAR_RESNET_CIFAR10_URL", f"{base}/missing.tar.gz")
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match=r"cannot download .*missing.tar.gz.*by hand"):
        load_data("cifar10", data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"))
    assert list(data_dir.iterdir()) == []


@pytest.mark.parametrize(
    "url",
    ["http://example.com/cifar-10-python.tar.gz", "ftp://127.0.0.1/x.tar.gz", "file:///etc/passwd"],
)
def test_download_refuses_insecure_urls(tmp_path: Path, monkeypatch, url: str) -> None:
    monkeypatch.setenv("CIFAR_RESNET_CIFAR10_URL", url)
    with pytest.raises(DataError, match="refusing to download"):
        load_data("cifar10", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "data").exists()
