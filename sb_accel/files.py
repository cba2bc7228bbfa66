"""Atomic file writes: every file a run must not lose goes through :func:`atomic_write`.

A reader (or a run resumed after a crash) sees either the old file or the complete new one, never
a torn one: the data goes to a temporary file beside the target, is flushed and fsynced, renamed
over the target, and the directory is fsynced so the rename itself survives a power loss. A failed
write (a full disk, a vanished directory) removes the temporary file and raises
:class:`StorageError`, which names the file and what to do.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

__all__ = ["StorageError", "atomic_write", "atomic_write_json", "fsync_directory", "storage_error"]

PathLike = Union[str, os.PathLike]


class StorageError(OSError):
    """A file could not be written; the message names the file and the fix."""


def fsync_directory(directory: PathLike) -> None:
    """Make a rename or a new file in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, content: Union[bytes, Callable[[BinaryIO], None]]) -> Path:
    """Replace ``path`` with ``content`` (bytes, or a function writing to a binary file) atomically."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise storage_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, (bytes, bytearray, memoryview)):
                f.write(content)
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, StorageError):
            raise storage_error(path, exc) from exc
        raise
    fsync_directory(path.parent)
    return path


def atomic_write_json(path: PathLike, value: Any, **dump_options: Any) -> Path:
    """Write ``value`` as strict JSON (NaN/Infinity refused: they are not JSON)."""
    text = json.dumps(value, indent=2, allow_nan=False, **dump_options) + "\n"
    return atomic_write(path, text.encode("utf-8"))


def storage_error(path: Path, exc: OSError) -> StorageError:
    """A :class:`StorageError` for a failed write of ``path``: what failed and what to do."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space on that disk or choose another directory; the previous file is unchanged"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the directory writable or choose another one"
    else:
        fix = "check that the directory exists and is writable"
    return StorageError(exc.errno or 0, f"could not write {path}: {reason} ({fix})")
