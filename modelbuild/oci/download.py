"""Downloading one blob from a registry: streamed, verified against its digest, resumed.

The half of :class:`~modelbuild.oci.registry.Registry` that reads blobs, kept apart because
resuming is most of it: a dropped connection goes on with HTTP ``Range`` from what arrived,
into a ``.partial`` file that also survives a kill -9; a server that ignores ``Range`` is
restarted, not trusted; every byte is hashed on its way, and the sizes a registry announces
must be the descriptor's before any byte is read. Where the verified bytes go (a path the
caller names, or a writer such as the store's :class:`~modelbuild.store.BlobWriter`) is the
caller's choice: this module never decides where a store keeps its blobs.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from modelbuild.digests import CHUNK, is_digest
from modelbuild.errors import BuildError, UsageError
from modelbuild.oci.pacing import Retry, Slow, reader
from modelbuild.oci.transport import (
    TRANSIENT,
    DigestMismatchError,
    SizeMismatchError,
    Transport,
    error_detail,
    header_int,
)
from modelbuild.oci.verify import fsync_enabled

MiB = 1 << 20
PROGRESS = MiB  # an attempt that moved this much (or a quarter of what was left) made progress
Progress = Callable[[int], None]


class _WriteFailed(Exception):
    """Writing downloaded bytes failed (full disk, quota, I/O error): not worth retrying."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class BlobDownloads(Transport):
    """``pull_blob`` and what it needs, mixed into :class:`~modelbuild.oci.registry.Registry`."""

    def pull_blob(self, repo: str, digest: str, size: int, dest: str | Path | Any, *, partial: str | Path | None = None,
                  mode: int | None = None, progress: Progress | None = None) -> Any:
        """Download a blob, verify its digest, and return *dest*.

        *dest* is a path: written as *partial* (default ``<dest>.partial``, resumed if an
        earlier run left one), given *mode*, renamed into place once verified. Or a writer
        with ``write()``; one with ``commit()``/``abort()`` (a store ``BlobWriter``) is
        committed on success and aborted on any failure. A failure to write (a full disk) is
        a :class:`BuildError`, not a registry's fault.
        """
        if not is_digest(digest):
            raise UsageError(f"not a sha256 digest: {digest!r}")
        if isinstance(dest, (str, Path)):
            self._pull_to_path(repo, digest, size, Path(dest), Path(partial or f"{dest}.partial"), mode, progress)
            return dest

        def write(chunk: bytes) -> None:
            try:
                dest.write(chunk)
            except OSError as exc:
                raise _WriteFailed(exc) from None

        try:
            self._download(repo, digest, size, 0, write, hashlib.sha256(), None, progress)
        except BaseException as exc:
            if hasattr(dest, "abort"):
                dest.abort()
            if isinstance(exc, _WriteFailed):
                raise _write_error(exc.error, f"blob {digest}") from None
            raise
        if hasattr(dest, "commit"):
            dest.commit()
        return dest

    def _pull_to_path(self, repo: str, digest: str, size: int, dest: Path, partial: Path, mode: int | None,
                      progress: Progress | None) -> None:
        try:
            partial.parent.mkdir(parents=True, exist_ok=True)
            # Unbuffered: what reached the file is exactly what write() returned for, so after
            # a failed write the file is a sound prefix of the blob, fit to resume from.
            fh = open(partial, "a+b", buffering=0)  # noqa: SIM115
        except OSError as exc:
            raise _write_error(exc, str(partial)) from None
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # two pulls of one blob take turns, never interleave
            try:
                same = os.stat(partial).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the pull we waited for finished and renamed it
                if not dest.exists():
                    self._pull_to_path(repo, digest, size, dest, partial, mode, progress)
                return

            def write(chunk: bytes) -> None:
                try:
                    _write_all(fh, chunk)
                except OSError as exc:
                    raise _WriteFailed(exc) from None

            def rewind() -> Any:
                try:
                    fh.truncate(0)
                except OSError as exc:
                    raise _WriteFailed(exc) from None
                return hashlib.sha256()

            hasher, have = hashlib.sha256(), 0
            try:
                fh.seek(0)
                if os.fstat(fh.fileno()).st_size <= size:
                    while chunk := fh.read(CHUNK):
                        hasher.update(chunk)
                        have += len(chunk)
                fh.truncate(have)
            except OSError as exc:
                raise _write_error(exc, str(partial)) from None
            if progress and have:
                progress(have)  # already here from an earlier run
            try:
                try:
                    self._download(repo, digest, size, have, write, hasher, rewind, progress)
                except SizeMismatchError:
                    raise  # the registry's size is wrong, not our prefix
                except DigestMismatchError:
                    if not have:
                        raise
                    # The resumed prefix was damaged (a crash before it reached the disk?).
                    self._download(repo, digest, size, 0, write, rewind(), rewind, progress)
            except DigestMismatchError:
                partial.unlink(missing_ok=True)
                raise
            except _WriteFailed as exc:  # the file holds a sound prefix: kept, a later pull resumes
                raise _write_error(exc.error, str(partial), resumable=True) from None
            try:
                if fsync_enabled():
                    os.fsync(fh.fileno())
            except OSError as exc:  # the kernel may have dropped the pages it could not write
                partial.unlink(missing_ok=True)
                raise _write_error(exc, str(partial)) from None
            try:
                if mode is not None:
                    os.chmod(partial, mode)
                os.replace(partial, dest)
            except OSError as exc:
                raise BuildError(f"cannot move the verified download {partial} to {dest}: {exc.strerror or exc}") from None

    def _download(self, repo: str, digest: str, size: int, offset: int, sink: Callable[[bytes], Any], hasher: Any,
                  rewind: Callable[[], Any] | None, progress: Progress | None) -> None:
        """GET the blob from *offset* into *sink*, resuming with ``Range`` after drops.
        *rewind* empties the sink and returns a fresh hasher, for a server that ignores Range.

        One retry budget for the whole download. It is given back only by an attempt that
        reached further into the blob than any before by ``PROGRESS`` bytes (or a quarter of
        what was left) and was not abandoned for slowness: a registry that sends one byte per
        connection, or the same prefix again and again, runs out of it."""
        op, url = f"pull blob {digest}", self._url(repo, "blobs", digest)
        budget, best = self._budget(op, repo), offset
        while offset < size:
            headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
            pace = self._watch()
            try:
                resp = self._send("GET", url, op=op, repo=repo, scopes=self._scopes(repo), headers=headers,
                                  stream=True, pace=pace)
                try:
                    offset, hasher = self._start_body(resp, op, repo, digest, size, offset, hasher, rewind)
                    read = reader(resp, pace)
                    while chunk := read(CHUNK):
                        if offset + len(chunk) > size:
                            raise self._fail(op, repo, f"blob {digest} is larger than the {size} bytes its "
                                             "descriptor says", SizeMismatchError)
                        pace.moved(len(chunk))
                        sink(chunk)
                        hasher.update(chunk)
                        offset += len(chunk)
                        if progress:
                            progress(len(chunk))
                    if offset < size:
                        raise Retry(f"the body ended at byte {offset} of {size}")
                finally:
                    resp.close()
            except (Retry, *TRANSIENT) as exc:
                failure = exc if isinstance(exc, Retry) else pace.stalled() if pace.cut else (
                    self._timed_out(exc) if isinstance(exc, requests.exceptions.ReadTimeout) else
                    Retry(f"connection error ({type(exc).__name__})"))
                if not isinstance(failure, Slow) and offset >= best + max(1, min(PROGRESS, (size - best) // 4)):
                    budget.progressed()
                best = max(best, offset)
                budget.failed(failure)
            finally:
                pace.done = True
        if (got := "sha256:" + hasher.hexdigest()) != digest:
            raise self._fail(op, repo, f"the bytes received have digest {got}", DigestMismatchError)

    def _start_body(self, resp: requests.Response, op: str, repo: str, digest: str, size: int, offset: int,
                    hasher: Any, rewind: Callable[[], Any] | None) -> tuple[int, Any]:
        """Check a response before its body is read: the offset and hasher to go on with. The
        sizes the registry announces must be the descriptor's: a lie is refused before any
        byte is read (a descriptor of 2**62 bytes costs one request, not a loop)."""
        if resp.status_code not in (200, 206):
            raise self._fail(op, repo, error_detail(resp))
        start, total = _content_range(resp.headers.get("Content-Range"), offset) if resp.status_code == 206 else (0, None)
        if resp.status_code == 200 and offset:
            if rewind is None:
                raise self._fail(op, repo, "the registry ignored the Range of a resumed download")
            hasher, offset = rewind(), 0
        elif start != offset:
            raise self._fail(op, repo, f"asked for bytes from {offset}, got others")
        announced = header_int(resp.headers.get("Content-Length"))
        if (announced is not None and announced != size - offset) or (total is not None and total != size):
            said = total if total is not None and total != size else offset + (announced or 0)
            raise self._fail(op, repo, f"the registry says blob {digest} has {said} bytes, its descriptor says {size}",
                             SizeMismatchError)
        return offset, hasher


def _write_all(fh: Any, data: bytes) -> None:
    """Write all of *data* to an unbuffered file (a raw write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[fh.write(view):]


def _write_error(exc: OSError, what: str, *, resumable: bool = False) -> BuildError:
    """One line for a failed write: the disk is full, or what else the system said;
    *resumable* when what was written is kept for the next pull to go on from."""
    again = "pull again: the download resumes where it stopped" if resumable else "pull again"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        full = "no space left on device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        return BuildError(f"{full} while writing {what}", hint=f"free some space and {again}")
    return BuildError(f"cannot write {what}: {exc.strerror or exc}", hint=again if resumable else None)


def _content_range(header: str | None, default: int) -> tuple[int, int | None]:
    """The first byte of a 206 body and the blob's total size (None if ``*``), from
    ``Content-Range: bytes 100-199/200``; ``(-1, None)`` where the header makes no sense."""
    if not header:
        return default, None
    try:
        unit, spec = header.split(None, 1)
        span, _, total = spec.partition("/")
        start = int(span.split("-", 1)[0])
        return start, (None if total.strip() in ("", "*") else int(total))
    except ValueError:
        return -1, None

