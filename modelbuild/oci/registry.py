"""A client for OCI distribution registries: blobs and manifests, streamed, verified, resumable.

Why our own and not oras-py (``FACTS.md`` §4): oras-py 0.2.43 re-serializes manifests (the
registry must store *our* bytes, or every digest we computed is wrong), cannot PUT an index,
reads a whole blob into memory for a monolithic upload (models are tens of GiB), does not
verify what it downloads, and has no cross-repository mount. Credentials come from
:mod:`modelbuild.oci.auth`.

* Nothing is held in memory but one read buffer: uploads stream from the file, downloads to it.
* Every download is checked against its sha256 digest; a mismatch raises and leaves nothing
  under the destination name (the ``.partial`` file is removed too).
* A dropped connection is resumed, not restarted: downloads continue from ``<dest>.partial``
  with HTTP ``Range`` (also after a kill -9); chunked uploads ask the upload URL how much
  arrived and go on from there. Where the registry has forgotten the upload (distribution
  2.x cancels one whose size no longer matches its ``_state`` token, as after a PATCH cut
  mid-body) the upload starts again; the registry verifies the digest at the end either way.
* 5xx, 429 (``Retry-After`` honoured), connection errors and truncated bodies are retried
  with exponential backoff and jitter; the failure count resets whenever an attempt makes
  real progress, so a long transfer over a flaky link still ends. When the budget is spent
  the error is a :class:`RegistryError` naming the registry, repository and operation,
  secrets masked.

A registry is not trusted to be well-behaved (the "hostile registry" review). Requests go
through :class:`~modelbuild.oci.transport.Transport` (auth, redirects, bodies kept in memory
read up to the manifest limit and no further, retries on a budget); every wait is bounded by
:class:`~modelbuild.oci.pacing.Limits` (each settable by an environment variable, see
``docs/registry.md``) and each transfer attempt is watched by :mod:`modelbuild.oci.pacing`
(stall timeout, minimum rate, a watchdog for dripped framing). Here, a blob whose
``Content-Length`` disagrees with its descriptor is refused before any byte is read, and a
manifest is checked by the one validator, :class:`~modelbuild.oci.verify.ManifestParts`:
anything that should be JSON and is not ends in a one-line :class:`RegistryError`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit

import requests

from modelbuild.digests import CHUNK, is_digest, sha256_bytes
from modelbuild.errors import BuildError, UsageError
from modelbuild.oci import mediatypes as mt
from modelbuild.oci.auth import Auth
from modelbuild.oci.pacing import Budget, Limits, Retry, Slow, reader
from modelbuild.oci.reference import Reference, parse_reference
from modelbuild.oci.transport import (
    TRANSIENT,
    DigestMismatchError,
    FileSlice,
    RegistryAuthError,
    RegistryError,
    SizeMismatchError,
    Source,
    Transport,
    error_detail,
    header_int,
)
from modelbuild.oci.verify import IntegrityError, ManifestParts, fsync_enabled, parse_json_object, shown

MiB = 1 << 20
DEFAULT_CHUNK = 32 * MiB  # per PATCH: amortises a round trip, yet little to resend
MONOLITHIC_MAX = 16 * MiB  # up to this, one PUT is cheaper than POST + PATCHes
PROGRESS = MiB  # an attempt that moved this much (or a quarter of what was left) made progress
_TAG = re.compile(r"[\w][\w.-]{0,127}")
DEFAULT_ACCEPT = (mt.OCI_MANIFEST, mt.OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json")
Progress = Callable[[int], None]
T = TypeVar("T")


def split_reference(text: str) -> tuple[str, str, Reference]:
    """``localhost:5000/team/model:1`` → ``("localhost:5000", "team/model", Reference)``;
    a reference that names no registry host is a usage error."""
    parsed = parse_reference(text)
    host, _, path = parsed.repository.partition("/")
    if not path or not ("." in host or ":" in host or host == "localhost"):
        raise UsageError(f"{text!r} names no registry", hint="write it as registry.example.com/team/model:tag")
    return host, path, parsed


class _WriteFailed(Exception):
    """Writing downloaded bytes failed (full disk, quota, I/O error): not worth retrying."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class Registry(Transport):
    """One registry host: its blobs and manifests, over a :class:`~modelbuild.oci.transport.Transport`.
    Thread-safe: transfer threads share one instance (and its pool).

    *limits* default to :meth:`Limits.from_env`; *retries* and *timeout* (connect, read),
    when given, override theirs.
    """

    def __init__(self, host: str, *, plain_http: bool = False, insecure: bool = False, auth: Auth | None = None,
                 retries: int | None = None, backoff: float = 0.2, timeout: float | tuple[float, float] | None = None,
                 chunk_size: int = DEFAULT_CHUNK, monolithic_max: int = MONOLITHIC_MAX, pool_size: int = 16,
                 limits: Limits | None = None) -> None:
        super().__init__(host, plain_http=plain_http, insecure=insecure, auth=auth, retries=retries, backoff=backoff,
                         timeout=timeout, pool_size=pool_size, limits=limits)
        self.chunk_size, self.monolithic_max = chunk_size, monolithic_max

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- registry ---------------------------------------------------------------------
    def ping(self) -> None:
        """``GET /v2/``: the registry answers and takes our credentials (what ``login`` checks)."""
        resp = self._request("GET", f"{self.base}/v2/", op="ping", repo="", scopes=[])
        if resp.status_code != 200:
            raise self._fail("ping", "", error_detail(resp))

    # -- blobs ------------------------------------------------------------------------
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

    # -- manifests --------------------------------------------------------------------
    def _check_ref(self, op: str, repo: str, ref: str) -> None:
        """A tag or a sha256 digest, nothing else: a child's digest comes from a registry's
        index, and one that is not a digest would be fetched as a tag, unverified."""
        if not (is_digest(ref) or _TAG.fullmatch(ref)):
            raise self._fail(op, repo, f"{shown(ref, 80)!r} is neither a tag nor a sha256 digest")

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """PUT these exact bytes (a manifest or an index) under a tag or digest; their digest."""
        digest = sha256_bytes(data)
        op = f"push manifest {ref}"
        if is_digest(ref) and ref != digest:
            raise UsageError(f"manifest bytes have digest {digest}, not {ref}")
        resp = self._request("PUT", self._url(repo, "manifests", ref), op=op, repo=repo,
                             scopes=self._scopes(repo, True), headers={"Content-Type": media_type}, body=data)
        if resp.status_code != 201:
            raise self._fail(op, repo, error_detail(resp),
                             hint="push its blobs and child manifests first" if resp.status_code == 400 else None)
        if (got := resp.headers.get("Docker-Content-Digest")) and got != digest:
            raise self._fail(op, repo, f"the registry stored {shown(got)}, not {digest}", DigestMismatchError)
        return digest

    def get_manifest(self, repo: str, ref: str, accept: Iterable[str] = DEFAULT_ACCEPT) -> tuple[bytes, str, str]:
        """``(bytes, media type, digest)`` of a manifest or index, verified against the digest
        asked for and the registry's ``Docker-Content-Digest``, and checked to be a JSON
        object whose fields have the types the image spec gives them (so no caller meets a
        list where a descriptor should be)."""
        op = f"pull manifest {shown(ref, 80)}"
        self._check_ref(op, repo, ref)
        resp = self._request("GET", self._url(repo, "manifests", ref), op=op, repo=repo, scopes=self._scopes(repo),
                             headers={"Accept": ", ".join(accept)})
        if resp.status_code != 200:
            raise self._fail(op, repo, error_detail(resp))
        data = resp.content  # read by _send, within the manifest limit
        digest = sha256_bytes(data)
        for expected in (ref if is_digest(ref) else None, resp.headers.get("Docker-Content-Digest")):
            if expected and expected.startswith("sha256:") and expected != digest:
                raise self._fail(op, repo, f"the manifest received has digest {digest}, not {shown(expected)}",
                                 DigestMismatchError)
        try:
            doc = parse_json_object(data, f"manifest {digest}")
            ManifestParts.parse(doc, f"manifest {digest}")
        except IntegrityError as exc:
            raise self._fail(op, repo, exc.message) from None
        media_type = shown(resp.headers.get("Content-Type", "").split(";")[0].strip(), 200)
        if media_type in ("", "application/json", "application/octet-stream"):
            media_type = doc.get("mediaType") or media_type
        return data, media_type, digest

    def head_manifest(self, repo: str, ref: str, accept: Iterable[str] = DEFAULT_ACCEPT) -> tuple[str, str, int] | None:
        """``(digest, media type, size)`` of a manifest, or None where there is none."""
        op = f"check manifest {shown(ref, 80)}"
        self._check_ref(op, repo, ref)
        resp = self._request("HEAD", self._url(repo, "manifests", ref), op=op, repo=repo, scopes=self._scopes(repo),
                             headers={"Accept": ", ".join(accept)})
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._fail(op, repo, error_detail(resp))
        digest = resp.headers.get("Docker-Content-Digest") or (ref if is_digest(ref) else "")
        if digest and not is_digest(digest):
            raise self._fail(op, repo, f"the registry answered a malformed digest {shown(digest)}")
        return digest, shown(resp.headers.get("Content-Type", ""), 200), header_int(resp.headers.get("Content-Length")) or 0


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



def _range_end(header: str | None, default: int) -> int:
    """Bytes received, from an upload's ``Range: 0-<last>`` (distribution also says ``0-0``
    for an empty upload: the ambiguous byte is re-sent, never skipped)."""
    try:
        last = int((header or "").replace("bytes=", "").split("-", 1)[1])
    except (IndexError, ValueError):
        return default
    return last + 1 if last > 0 else 0


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


def transfer_all(tasks: Iterable[Callable[[], T]], jobs: int) -> list[T]:
    """Run transfers *jobs* at a time; results in task order. The first failure cancels the
    tasks not started yet and is raised once the running ones end (no thread is orphaned)."""
    tasks = list(tasks)
    if jobs <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="transfer") as pool:
        futures = [pool.submit(task) for task in tasks]
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled() and (exc := f.exception()) is not None:
                raise exc
        return [f.result() for f in futures]


__all__ = ["DEFAULT_ACCEPT", "DigestMismatchError", "Limits", "Registry", "RegistryAuthError", "RegistryError",
           "SizeMismatchError", "Source", "split_reference", "transfer_all"]
