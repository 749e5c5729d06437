"""The one blob upload path: a store's blob into a registry repository.

Push (:func:`modelbuild.oci.push.push_artifact`) and cache export
(:class:`modelbuild.cache.exporter.CacheExporter`) send blobs the same way, through
:func:`upload_blobs`: a blob known to be in the repository is skipped without a request;
otherwise the registry is asked (HEAD) and skipped when it has the blob, a cross-repository
mount is tried where the caller knows a repository of the same registry that has it, and
only then are bytes sent: in one PUT up to ``monolithic_max``, else in PATCH chunks, resumed
from what the registry says arrived. The bytes come from the store's file, opened afresh for
each request body; when an upload must start over from the first byte, the file is hashed
once (:class:`VerifyOnRetry`): a corrupt local blob fails the transfer after one upload,
named, and is removed, instead of being retried until the budget is spent. A build streaming
to a registry (:mod:`modelbuild.oci.stream`) sends a blob the store lacks from its file in the
build context, hashed as it is read; and uploads a file whose digest is not known yet while
hashing it (:meth:`BlobUploads.push_blob_hashing`).

:class:`BlobUploads` is the HTTP half, mixed into :class:`~modelbuild.oci.registry.Registry`
(``has_blob``, ``mount_blob``, ``push_blob``), kept here because it is the same path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode, urljoin, urlsplit

from modelbuild.digests import is_digest
from modelbuild.errors import StoreError, UsageError
from modelbuild.oci.pacing import Budget, Retry
from modelbuild.oci.transport import (
    DigestMismatchError,
    FileSlice,
    RegistryError,
    Source,
    Transport,
    error_detail,
)
from modelbuild.oci.verify import shown

if TYPE_CHECKING:
    from modelbuild.oci.registry import Registry
    from modelbuild.store import Store

Progress = Callable[[int], None]


class BlobUploads(Transport):
    """HEAD, mount and upload of one blob, mixed into :class:`~modelbuild.oci.registry.Registry`."""

    chunk_size: int
    monolithic_max: int

    def has_blob(self, repo: str, digest: str, *, budget: Budget | None = None) -> bool:
        """HEAD the blob: True when the registry has it in *repo*."""
        op = f"check blob {digest}"
        resp = self._request("HEAD", self._url(repo, "blobs", digest), op=op, repo=repo, scopes=self._scopes(repo),
                             budget=budget)
        if resp.status_code not in (200, 404):
            raise self._fail(op, repo, error_detail(resp))
        return resp.status_code == 200

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount: True when the registry linked the blob (201); False when it
        opened an upload instead (202: *from_repo* lacks it, or we may not read it)."""
        op = f"mount blob {digest} from {from_repo}"
        url = f"{self._url(repo, 'blobs', 'uploads/')}?{urlencode({'mount': digest, 'from': from_repo})}"
        resp = self._request("POST", url, op=op, repo=repo, scopes=self._scopes(repo, True) + self._scopes(from_repo))
        if resp.status_code not in (201, 202):
            raise self._fail(op, repo, error_detail(resp))
        return resp.status_code == 201

    def push_blob(self, repo: str, digest: str, size: int, source: Source, *, mount_from: str | None = None,
                  progress: Progress | None = None) -> bool:
        """Upload a blob unless the registry has it (HEAD) or can mount it from *mount_from*;
        True when bytes were sent.

        *source* is a path, or an opener returning a fresh seekable binary file (called for
        each request body). Blobs up to ``monolithic_max`` go in one PUT, larger ones in
        PATCH chunks of ``chunk_size`` bytes. Every request of one upload draws on one retry
        budget, given back whenever a chunk takes it further; the upload is started afresh at
        most ``retries`` times.
        """
        if not is_digest(digest):
            raise UsageError(f"not a sha256 digest: {digest!r}")
        if isinstance(source, (str, Path)) and os.path.exists(source) and os.path.getsize(source) != size:
            raise UsageError(f"{source} has {os.path.getsize(source)} bytes, not the {size} its descriptor says")
        if self.has_blob(repo, digest):
            return False
        if mount_from and mount_from != repo and self.mount_blob(repo, digest, mount_from):
            return False
        op = f"push blob {digest}"
        budget = self._budget(op, repo)
        restarts, reported = 0, [0]

        def advance(offset: int) -> None:  # progress in bytes, never counting a byte twice
            offset = min(offset, size)
            if progress and offset > reported[0]:
                progress(offset - reported[0])
                reported[0] = offset

        while True:
            try:
                location = self._start_upload(repo, op, budget)
                budget.progressed()  # a step done; the starts are counted below, so this is finite
                if size > self.monolithic_max:
                    location = self._push_chunks(repo, size, source, op, location, advance, budget)
                self._complete(repo, digest, size, source, op, location, monolithic=size <= self.monolithic_max)
                advance(size)
                return True
            except Retry as exc:
                if self.has_blob(repo, digest, budget=budget):  # only the answer to the final PUT was lost
                    advance(size)
                    return True
                restarts += 1  # never given back: a registry losing every upload at the end is given up on
                if restarts > self.retries:
                    raise self._fail(op, repo, f"{exc.detail}; gave up after {restarts} upload attempts",
                                     hint=exc.hint) from None
                budget.failed(exc)

    def push_blob_hashing(self, repo: str, size: int, source: Callable[[], Any], digest_of: Callable[[], str], *,
                          label: str, progress: Progress | None = None) -> str:
        """Upload *size* bytes whose digest is not known yet, and return it: the reads of the
        upload hash them (*source* opens the file for each request body, *digest_of* gives the
        digest once every byte was read), so a file is read and hashed once, and the final
        PUT names the digest the registry must find. Always chunked (a monolithic PUT names
        the digest before the first byte); no HEAD first: nothing to ask about yet. Retries
        and restarts as :meth:`push_blob`."""
        op = f"push {label}"
        budget = self._budget(op, repo)
        restarts, reported = 0, [0]

        def advance(offset: int) -> None:
            offset = min(offset, size)
            if progress and offset > reported[0]:
                progress(offset - reported[0])
                reported[0] = offset

        while True:
            digest = None
            try:
                location = self._start_upload(repo, op, budget)
                budget.progressed()
                location = self._push_chunks(repo, size, source, op, location, advance, budget)
                digest = digest_of()
                self._complete(repo, digest, size, source, op, location, monolithic=False)
                advance(size)
                return digest
            except Retry as exc:
                if digest is not None and self.has_blob(repo, digest, budget=budget):  # the PUT's answer was lost
                    advance(size)
                    return digest
                restarts += 1
                if restarts > self.retries:
                    raise self._fail(op, repo, f"{exc.detail}; gave up after {restarts} upload attempts",
                                     hint=exc.hint) from None
                budget.failed(exc)

    def _start_upload(self, repo: str, op: str, budget: Budget) -> str:
        resp = self._request("POST", self._url(repo, "blobs", "uploads/"), op=op, repo=repo,
                             scopes=self._scopes(repo, True), budget=budget)
        if resp.status_code != 202 or "Location" not in resp.headers:
            raise self._fail(op, repo, f"starting the upload: {error_detail(resp)}")
        return self._location(resp.headers["Location"], self.base + "/", op, repo)

    def _location(self, value: str, base: str, op: str, repo: str) -> str:
        """An upload URL the registry named, resolved; one that is not HTTP is refused here,
        not as a crash inside requests."""
        url = urljoin(base, value)
        if urlsplit(url).scheme not in ("http", "https"):
            raise self._fail(op, repo, f"the registry named an upload URL that is not HTTP: {shown(url)}")
        return url

    def _complete(self, repo: str, digest: str, size: int, source: Source, op: str, location: str, *,
                  monolithic: bool) -> None:
        """The final PUT: with the whole blob (monolithic) or none (after the chunks)."""
        url = location + ("&" if "?" in location else "?") + urlencode({"digest": digest})
        n = size if monolithic else 0
        resp = self._send("PUT", url, op=op, repo=repo, scopes=self._scopes(repo, True),
                          body=(lambda: FileSlice(source, 0, n)) if n else b"",
                          headers={"Content-Type": "application/octet-stream", "Content-Length": str(n)})
        detail = error_detail(resp)
        if resp.status_code in (400, 404) and ("BLOB_UPLOAD" in detail or "DIGEST_INVALID" in detail):
            raise Retry(detail)  # the upload was lost or received wrong bytes: start again
        if resp.status_code != 201:
            raise self._fail(op, repo, detail)
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise self._fail(op, repo, f"the registry stored {shown(got)}", DigestMismatchError)

    def _push_chunks(self, repo: str, size: int, source: Source, op: str, location: str,
                     advance: Callable[[int], None], budget: Budget) -> str:
        """PATCH the blob in chunks; after a failure ask the upload URL how much arrived.
        Returns the upload URL for the final PUT; raises :class:`Retry` to start over. A
        chunk taking this upload further than ever gives the budget back; one that does not is
        a failure (a registry answering ``Range: 0-0`` forever would keep us uploading forever)."""
        offset = best = 0
        scopes = self._scopes(repo, True)
        while offset < size:
            n, start = min(self.chunk_size, size - offset), offset
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(n),
                       "Content-Range": f"{offset}-{offset + n - 1}"}
            try:
                resp = self._send("PATCH", location, op=op, repo=repo, scopes=scopes, headers=headers,
                                  body=lambda start=start, n=n: FileSlice(source, start, n))
                if resp.status_code in (400, 404) and "BLOB_UPLOAD" in error_detail(resp):
                    raise Retry(error_detail(resp), 0)
                if resp.status_code == 416:
                    raise Retry("416 Range Not Satisfiable")
                if resp.status_code != 202:
                    raise self._fail(op, repo, f"uploading bytes {offset}-{offset + n - 1}: {error_detail(resp)}")
                new = _range_end(resp.headers.get("Range"), offset + n)
                if new > best:
                    budget.progressed()
                else:
                    budget.failed(Retry("the registry acknowledged a chunk but no byte past what it had"))
            except Retry as exc:
                budget.failed(exc)
                resp = self._request("GET", location, op=op, repo=repo, scopes=scopes, budget=budget)
                if resp.status_code != 204:
                    raise Retry(f"resuming the upload: {error_detail(resp)}", 0) from None
                new = _range_end(resp.headers.get("Range"), 0)
                if new > best:
                    budget.progressed()
            best = max(best, new)
            location = self._location(resp.headers.get("Location", location), location, op, repo)
            advance(new)
            offset = new
        return location


def _range_end(header: str | None, default: int) -> int:
    """Bytes received, from an upload's ``Range: 0-<last>`` (distribution also says ``0-0``
    for an empty upload: the ambiguous byte is re-sent, never skipped)."""
    try:
        last = int((header or "").replace("bytes=", "").split("-", 1)[1])
    except (IndexError, ValueError):
        return default
    return last + 1 if last > 0 else 0


# -- a store's blobs to a repository ------------------------------------------------------------
@dataclass(frozen=True)
class Blob:
    """A blob of an artifact, named for progress lines."""

    digest: str
    size: int
    label: str = "blob"  # the file path, or "config"


class Step(Protocol):
    def advance(self, n: int) -> None: ...

    def finish(self, moved: bool) -> None: ...


def upload_blobs(store: Store, registry: Registry, repo: str, blobs: Sequence[Blob], *, jobs: int,
                 present: set[str], mount_from: str | None = None,
                 step: Callable[[Blob], Step] | None = None, sources: Any = None) -> list[int]:
    """Send each of the store's *blobs* to *repo* unless it is there, *jobs* at a time.

    *present* is the digests known to be in *repo* (skipped without a request); it is
    updated with every blob once all are through. *mount_from* is another repository of
    the registry to mount from. *step* makes the progress step of a blob. *sources* (a
    :class:`~modelbuild.oci.stream.SourceBlobs`) sends a blob the store lacks from the file
    of the build context it is. Returns, per blob in order, the bytes sent, or -1 where none
    were (present, found, mounted).
    """
    from modelbuild.oci.registry import transfer_all

    def one(blob: Blob) -> int:
        blob_step = step(blob) if step is not None else None
        if blob.digest in present:
            if blob_step is not None:
                blob_step.finish(False)
            return -1
        progress = blob_step.advance if blob_step is not None else None
        if sources is not None and sources.has(blob.digest, blob.size) and not store.check_blob(blob.digest,
                                                                                                  blob.size):
            sent = sources.upload(registry, repo, blob, mount_from=mount_from, progress=progress)
        else:
            sent = upload_blob(store, registry, repo, blob, mount_from=mount_from, progress=progress)
        if blob_step is not None:
            blob_step.finish(sent)
        return blob.size if sent else -1

    results = transfer_all([lambda b=b: one(b) for b in blobs], max(1, jobs))
    present.update(b.digest for b in blobs)
    return results


def upload_blob(store: Store, registry: Registry, repo: str, blob: Blob, *, mount_from: str | None = None,
                progress: Progress | None = None) -> bool:
    """One blob of the store to *repo* (:meth:`BlobUploads.push_blob`); True when bytes were
    sent. A blob the registry refuses for its digest is re-hashed: when the local copy is
    the one at fault, it is removed and the error says so."""
    try:
        return registry.push_blob(repo, blob.digest, blob.size, VerifyOnRetry(store, blob), mount_from=mount_from,
                                  progress=progress)
    except RegistryError as exc:
        if isinstance(exc, DigestMismatchError) or "DIGEST_INVALID" in exc.message:
            fail_if_corrupt(store, blob)
        raise


class VerifyOnRetry:
    """The source of a blob upload: opens the store's file for each request body. When the
    client asks for the blob from its first byte a second time, the first upload was lost
    or refused (the registry answers DIGEST_INVALID to bytes that are not their digest), so
    the local copy is hashed then, once: a corrupt blob fails the push after one upload,
    not after every retry the client would make."""

    def __init__(self, store: Store, blob: Blob) -> None:
        self.store, self.blob = store, blob
        self.starts = 0
        self.verified = False
        self.lock = threading.Lock()

    def __call__(self) -> Any:
        try:
            return _Watched(open(self.store.blob_path(self.blob.digest), "rb"), self)  # noqa: SIM115
        except OSError as exc:
            raise StoreError(f"cannot read blob {self.blob.digest} to push it: {exc.strerror}",
                             hint="rebuild it, or pull it again") from None

    def starting(self) -> None:
        with self.lock:
            self.starts += 1
            if self.starts < 2 or self.verified:
                return
            self.verified = True
        fail_if_corrupt(self.store, self.blob)


class _Watched:
    """A blob file that tells its :class:`VerifyOnRetry` when it is read from the start."""

    def __init__(self, fh: Any, owner: VerifyOnRetry) -> None:
        self.fh, self.owner = fh, owner

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset == 0 and whence == 0:
            try:
                self.owner.starting()
            except BaseException:
                self.fh.close()
                raise
        return self.fh.seek(offset, whence)

    def read(self, n: int = -1) -> bytes:
        return self.fh.read(n)

    def close(self) -> None:
        self.fh.close()


def fail_if_corrupt(store: Store, blob: Blob) -> None:
    """The registry refused *blob*'s bytes for its digest: hash the local copy once, and when
    it is the one at fault, remove it and say so (pushing it again cannot help)."""
    if not store.verify_blob(blob.digest):
        raise StoreError(store.damaged(blob.digest, "its content does not match its digest"),
                         hint="rebuild it, or pull it again") from None


__all__ = ["Blob", "BlobUploads", "VerifyOnRetry", "fail_if_corrupt", "upload_blob", "upload_blobs"]
