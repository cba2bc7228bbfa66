"""Atomic file writes: every file a run must not lose goes through :func:`atomic_write`.

A reader (or a run resumed after a crash) sees either the old file or the complete new one, never
a torn one: the data goes to a temporary file beside the target, is flushed and fsynced, renamed
over the target, and the directory is fsynced so the rename itself survives a power loss. A failed
write (a full disk, a vanished directory) removes the temporary file and raises
:class:`StorageError`, which names the file and what to do.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Union

__all__ = ["StorageError", "atomic_write", "atomic_write_json", "fsync_directory", "storage_error", "os_error_fix",
           "staged_directory"]

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
        raise storage_error(path, exc, kept="the previous file is unchanged") from exc
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
            raise storage_error(path, exc, kept="the previous file is unchanged") from exc
        raise
    fsync_directory(path.parent)
    return path


def atomic_write_json(path: PathLike, value: Any, **dump_options: Any) -> Path:
    """Write ``value`` as strict JSON (NaN/Infinity refused: they are not JSON)."""
    text = json.dumps(value, indent=2, allow_nan=False, **dump_options) + "\n"
    return atomic_write(path, text.encode("utf-8"))


def storage_error(path: Path, exc: OSError, kept: str = "") -> StorageError:
    """A :class:`StorageError` for a failed write of ``path``: what failed, what to do and (``kept``)
    what is left as it was."""
    reason = exc.strerror or str(exc)
    note = f"; {kept}" if kept else ""
    return StorageError(exc.errno or 0, f"could not write {path}: {reason} ({os_error_fix(exc)}{note})")


def os_error_fix(exc: OSError) -> str:
    """What to do about ``exc`` (an error of the file system), in a few words."""
    if exc.errno == errno.ENOTDIR and exc.filename is not None:
        blocker = next((p for p in Path(exc.filename).parents if p.is_file()), None)
        if blocker is not None:
            return f"{blocker} is a file, not a directory: move it away or choose another path"
    return {errno.ENOSPC: "free some space on that disk or choose another directory",
            errno.EDQUOT: "free some space on that disk or choose another directory",
            errno.EACCES: "make it writable or choose another directory",
            errno.EPERM: "make it writable or choose another directory",
            errno.EROFS: "it is on a read-only file system: choose another directory",
            errno.ENOTDIR: "a part of that path is a file, not a directory: choose another path",
            errno.EEXIST: "a file of that name is in the way: choose another path",
            errno.EISDIR: "that is a directory: name a file"}.get(exc.errno or 0,
                                                                  "check that the directory exists and is writable")


@contextlib.contextmanager
def staged_directory(directory: PathLike) -> Iterator[Path]:
    """Write several files into ``directory`` as one: they are written into a hidden directory
    inside it and renamed into place only once every one of them is complete. A failed write (a full
    disk) removes them and raises :class:`StorageError`: ``directory`` is left as it was."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=directory, prefix=".staged-"))
    except OSError as exc:
        raise storage_error(directory, exc) from exc
    try:
        yield stage
        for path in sorted(stage.iterdir()):
            os.replace(path, directory / path.name)
    except OSError as exc:  # named after the directory: the staged file's name would only confuse
        plain = OSError(exc.errno, os.strerror(exc.errno)) if exc.errno else exc
        raise storage_error(directory, plain, kept="nothing in it was changed") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    fsync_directory(directory)
