"""The one atomic file writer: every file cifar-resnet writes (checkpoints, run files, plots,
exports, caches) goes through :func:`write_atomic`.

The content is written to a temporary file beside the target, flushed and fsynced, renamed
onto the target with ``os.replace`` and the folder fsynced: after a crash or a power loss a
reader finds the old file or the new one, never an empty or half-written one. The file gets
the usual mode for the process umask (``mkstemp`` alone would make it private).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None], what: str = "") -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then move it onto ``path``.

    Any OSError (a full disk, no permission) becomes a one-line OutputError and leaves no
    temporary file; the previous ``path``, if any, is untouched. ``what`` is added to the
    message (e.g. "the previous checkpoint is intact").
    """
    path = Path(path)
    tmp = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        with open(tmp, "rb+") as f:  # the data is on disk before the name points at it
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as e:
        why = "the disk is full" if e.errno == errno.ENOSPC else e.strerror or str(e)
        advice = what or "check the folder's permissions and free space"
        raise OutputError(f"cannot write {path}: {why}; {advice}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes, what: str = "") -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data), what)


def write_text_atomic(path: str | os.PathLike, text: str, what: str = "") -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), what)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
