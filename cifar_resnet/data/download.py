"""Download an official CIFAR archive into the data folder, once, over https, md5-checked.

``cifar10`` / ``cifar100`` name the archive in ``data_dir`` (default ``$CIFAR_RESNET_DATA``,
else ``~/.cache/cifar-resnet/data``), downloaded there first if missing.
``$CIFAR_RESNET_CIFAR10_URL`` / ``$CIFAR_RESNET_CIFAR10_MD5`` (and the CIFAR100 pair) override
the address and checksum. Only https URLs (or http to this machine) are fetched; the file
appears under its final name only once complete and with the expected md5. A download has an
overall deadline (``$CIFAR_RESNET_DOWNLOAD_TIMEOUT`` seconds, default an hour: a server that
trickles is cut off) and a size limit 5% above the official archive's (an endless body never
fills the disk).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO

from tqdm import tqdm

from cifar_resnet.errors import DataError

from .cifar import CIFAR_ARCHIVES, _archive_md5, _archive_url
from .decode import _reason

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DOWNLOAD_TIMEOUT = 3600.0  # seconds for a whole download (~47 kB/s for CIFAR's 170 MB)
READ_TIMEOUT = 60.0  # seconds one read may wait


class _Cutoff(OSError):
    """A download ran past its deadline or its size limit."""


def _deadline_seconds() -> float:
    text = os.environ.get("CIFAR_RESNET_DOWNLOAD_TIMEOUT")
    try:
        value = float(text) if text else DOWNLOAD_TIMEOUT
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise DataError(f"CIFAR_RESNET_DOWNLOAD_TIMEOUT={text!r} is not a number of seconds > 0")
    return value


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
    tmp_name = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=folder, prefix=f".{info.filename}.", suffix=".part", delete=False
        ) as tmp:
            tmp_name = tmp.name
            limit = info.size + info.size // 20
            deadline = time.monotonic() + _deadline_seconds()
            got = _fetch(url, tmp, f"downloading {info.filename}", progress, deadline, limit)
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


def _fetch(url: str, out: IO[bytes], desc: str, progress: bool, deadline: float, limit: int) -> str:
    """Write ``url``'s body to ``out`` (flushed to disk) and return its md5; past the
    ``time.monotonic()`` ``deadline`` or beyond ``limit`` bytes it stops (_Cutoff)."""
    handlers = []
    if urllib.parse.urlsplit(url).hostname in LOOPBACK_HOSTS:
        handlers.append(urllib.request.ProxyHandler({}))  # never send loopback to a proxy
    opener = urllib.request.build_opener(*handlers)
    digest = hashlib.md5()
    done = 0
    with opener.open(url, timeout=min(READ_TIMEOUT, _left(deadline))) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        if total and total > limit:
            raise _Cutoff(f"the server announces {total:,} bytes, more than the {limit:,} expected")
        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not progress) as bar:
            while block := response.read1(1 << 20):  # what has arrived: a trickle is seen
                done += len(block)
                if done > limit:
                    raise _Cutoff(f"more than the {limit:,} bytes expected")
                out.write(block)
                digest.update(block)
                bar.update(len(block))
                _left(deadline)
    out.flush()
    os.fsync(out.fileno())
    return digest.hexdigest()


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Cutoff(
            "the download did not finish within its deadline (CIFAR_RESNET_DOWNLOAD_TIMEOUT)"
        )
    return left
