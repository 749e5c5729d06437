"""The file-system calls under the store, and what their failures become.

Every failure of the file system under the store (read-only, full, permission denied, a
path that is a file) is a :class:`StoreError` naming the file, made here (:func:`os_failure`,
:func:`store_io`), where the store is touched: commands never catch ``OSError`` themselves.
The rest are the few primitives the store's blobs and tags are written with: an ``flock``,
a bounded read of a small file, an atomic replace, a streamed copy.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from modelbuild.digests import CHUNK
from modelbuild.errors import BuildError, StoreError
from modelbuild.oci.verify import IntegrityError, fsync_enabled, shown

Progress = Callable[[int], None]

_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EEXIST: "a file is in the way",
    errno.EISDIR: "is a directory",
}


def os_failure(exc: OSError, doing: str, path: str | Path) -> StoreError:
    """The one line a failed file-system call under the store becomes: the file it concerned,
    what modelbuild was doing, and the reason in words (``ENOSPC``, ``EROFS``, …)."""
    reason = _REASONS.get(exc.errno or 0) or (exc.strerror or str(exc)).lower()
    return StoreError(f"{shown(exc.filename or path, 240)}: cannot {doing}: {reason}")


@contextlib.contextmanager
def store_io(doing: str, path: str | Path, *, exact: bool = False) -> Iterator[None]:
    """Run a file-system call on the store; an ``OSError`` becomes :func:`os_failure`, naming
    the file the error names, or always *path* when *exact* (a temp file's name says nothing).

    Wrap only the call itself, never a ``yield`` to caller code: that code's own errors are
    its own."""
    try:
        yield
    except OSError as exc:
        if exact:
            exc.filename = None
        raise os_failure(exc, doing, path) from None


@contextlib.contextmanager
def flock(path: Path, *, exclusive: bool) -> Iterator[None]:
    """An ``flock`` on *path*, created if need be. An existing lock file of a read-only store
    is opened read-only (``flock`` does not care), so reading commands still work there."""
    with store_io("lock the store", path):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or not path.exists():
                raise
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with store_io("lock the store", path):
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # drops the lock


def read_bounded(path: Path, limit: int) -> bytes:
    """A small file read whole, refusing more than *limit* bytes (a hostile layout's index
    may be endless)."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise IntegrityError(f"{shown(path)} is larger than {limit} bytes")
    return data


def copy_stream(path: str | Path, sink: Callable[[memoryview], Any], progress: Progress | None) -> int:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    try:
        with open(path, "rb", buffering=0) as src:
            while True:
                n = src.readinto(buf)
                if not n:
                    break
                sink(view[:n])
                total += n
                if progress is not None:
                    progress(n)
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror}") from None
    return total


def sha256_file(path: str | Path, progress: Progress | None = None) -> tuple[str, int]:
    """The ``sha256:`` digest and the size of a file, read once (:func:`copy_stream`)."""
    import hashlib

    hasher = hashlib.sha256()
    size = copy_stream(path, hasher.update, progress)
    return "sha256:" + hasher.hexdigest(), size


def atomic_write(path: Path, data: bytes) -> None:
    """Write *data* to *path* so a reader sees the old or the new file, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync_enabled():
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


__all__ = ["atomic_write", "copy_stream", "flock", "os_failure", "read_bounded", "store_io"]
