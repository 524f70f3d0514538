"""The one atomic file writer: every file cifar-resnet writes (checkpoints, run files, plots,
exports, caches) goes through :func:`write_atomic`.

The content is written to a temporary file beside the target, flushed and fsynced, renamed
onto the target with ``os.replace`` and the folder fsynced: after a crash or a power loss a
reader finds the old file or the new one, never an empty or half-written one. The file gets
the usual mode for the process umask (``mkstemp`` alone would make it private).

No file is written through a symlink in its own name: a symlink where the target should be
is refused (a folder on the way may be a symlink, e.g. ``checkpoints/`` on a bigger disk).
The temporary file's name carries the writer's pid (``.NAME.PID.XXXXXXXX.tmp``): one left
by a killed writer is removed by :func:`remove_stale_temps` when the next command starts,
and nothing else ever is.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import OutputError

# .NAME.PID.XXXXXXXX.tmp: mkstemp's 8 random characters, the writer's pid before them.
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]{8}\.tmp$")


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
    refuse_symlink(path)
    tmp = None
    try:
        prefix = f".{path.name}.{os.getpid()}."
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
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


def refuse_symlink(path: str | os.PathLike) -> None:
    """A one-line OutputError when ``path`` itself is a symlink: our files are never reached
    through one (a symlinked folder above them is fine)."""
    if os.path.islink(path):
        raise OutputError(
            f"{path} is a symlink where cifar-resnet keeps its own file; it never writes "
            "through one: remove the link"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's live process (or not a pid): never ours to judge
    return True


def is_temp_name(name: str) -> bool:
    """True for a name :func:`write_atomic` gives its temporary files."""
    return _TEMP_NAME.match(name) is not None


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`write_atomic` left in ``folder`` when its writer was
    killed: only regular files named by its pattern whose writer's pid is not alive."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if m is None or _alive(int(m.group(1))):
            continue
        try:
            if stat.S_ISREG(os.lstat(entry.path).st_mode):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


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
