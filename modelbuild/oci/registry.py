"""A client for OCI distribution registries: blobs and manifests, streamed, verified, resumable.

Why our own and not oras-py (``FACTS.md`` §4): oras-py 0.2.43 re-serializes manifests (the
registry must store *our* bytes, or every digest we computed is wrong), cannot PUT an index,
reads a whole blob into memory for a monolithic upload (models are tens of GiB), does not
verify what it downloads, and has no cross-repository mount. Credentials come from
:mod:`modelbuild.oci.auth` (docker's config, as oras-py would, plus credential helpers).

Guarantees:

* nothing is held in memory but one read buffer: uploads stream from the file, downloads
  stream to it;
* every download is checked against its sha256 digest; a mismatch raises and leaves nothing
  under the destination name (``<dest>.partial`` is removed too);
* a dropped connection is resumed, not restarted: downloads continue from ``<dest>.partial``
  with an HTTP ``Range`` (also after the process was killed), chunked uploads ask the
  upload URL how much arrived and go on from there; where the registry forgot the upload
  (distribution 2.x cancels an upload whose size no longer matches its ``_state``), the
  upload starts again;
* 5xx, 429 (``Retry-After`` honoured), connection errors and truncated bodies are retried
  with exponential backoff and jitter; the failure count resets whenever bytes get through,
  so a long transfer over a flaky link still ends. When the budget is spent the error is a
  :class:`RegistryError` naming the registry, repository and operation, with secrets masked.
"""

from __future__ import annotations

import email.utils
import fcntl
import hashlib
import json
import os
import random
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, TypeVar, Union
from urllib.parse import urlencode, urljoin

import requests
import urllib3
from requests.adapters import HTTPAdapter

from modelbuild.digests import CHUNK, hex_of, is_digest, sha256_bytes
from modelbuild.errors import EXIT_BUILD_FAILED, ModelbuildError, UsageError
from modelbuild.oci import mediatypes as mt
from modelbuild.oci.auth import Auth, AuthError
from modelbuild.oci.reference import Reference, parse_reference

MiB = 1 << 20
DEFAULT_CHUNK = 32 * MiB  # per PATCH: large enough to amortise a round trip, small to resend
MONOLITHIC_MAX = 16 * MiB  # below this one PUT is cheaper than POST + PATCHes
MANIFEST_MAX = 4 * MiB  # the distribution spec's recommended manifest size limit
MAX_RETRY_AFTER = 60.0
DEFAULT_ACCEPT = (mt.OCI_MANIFEST, mt.OCI_INDEX,
                  "application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json")
_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
              requests.exceptions.ContentDecodingError)

Source = Union[str, Path, Callable[[], BinaryIO]]
T = TypeVar("T")


class RegistryError(ModelbuildError):
    """A registry operation failed after its retries (or cannot succeed: 404, denied)."""

    exit_code = EXIT_BUILD_FAILED


class RegistryAuthError(RegistryError):
    """No credentials, or the registry refused them."""


class DigestMismatchError(RegistryError):
    """The bytes received do not have the digest asked for; nothing was kept."""


@dataclass(frozen=True)
class RemoteReference:
    """``host[:port]/repo/path[:tag][@digest]`` split into the parts a registry call needs."""

    host: str
    repository: str  # without the host
    tag: str | None
    digest: str | None

    @property
    def ref(self) -> str:
        """What to put after ``/manifests/``: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"


def remote_reference(text: str) -> RemoteReference:
    """Parse a reference that must name a registry host (``localhost:5000/x:1``)."""
    parsed: Reference = parse_reference(text)
    host, _, path = parsed.repository.partition("/")
    if not path or not ("." in host or ":" in host or host == "localhost"):
        raise UsageError(f"{text!r} names no registry", hint="write it as registry.example.com/team/model:tag")
    return RemoteReference(host, path, parsed.tag, parsed.digest)


class _FileSlice:
    """``length`` bytes of a file from ``offset``: a request body that streams, never loads."""

    def __init__(self, source: Source, offset: int, length: int) -> None:
        self._file = _open_source(source)
        self._file.seek(offset)
        self._left = length

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._file.read(n) if n else b""
        if n and not data:
            raise RegistryError("the file being pushed got shorter while it was read")
        self._left -= len(data)
        if self._left == 0:
            self._file.close()
        return data

    def __len__(self) -> int:
        return self._left

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK):
            yield chunk


def _open_source(source: Source) -> BinaryIO:
    return open(source, "rb") if isinstance(source, (str, Path)) else source()


def _error_detail(resp: requests.Response) -> str:
    """``404 Not Found (MANIFEST_UNKNOWN: manifest unknown)`` from a registry error body."""
    text = f"{resp.status_code} {resp.reason or ''}".strip()
    try:
        errors = resp.json().get("errors") or []
        if errors:
            text += f" ({errors[0].get('code', '?')}: {errors[0].get('message', '')})"
    except (ValueError, AttributeError, RuntimeError):
        pass
    return text


class _Retry(Exception):
    """One failed attempt worth retrying; *wait* is the server's Retry-After, if any."""

    def __init__(self, detail: str, wait: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.wait = wait


class Registry:
    """One registry host. Thread-safe: share one instance between transfer threads."""

    def __init__(self, host: str, *, plain_http: bool = False, insecure: bool = False, auth: Auth | None = None,
                 retries: int = 5, backoff: float = 0.2, timeout: float | tuple[float, float] = (15.0, 120.0),
                 chunk_size: int = DEFAULT_CHUNK, monolithic_max: int = MONOLITHIC_MAX, pool_size: int = 16) -> None:
        self.host = host
        self.base = f"{'http' if plain_http else 'https'}://{host}"
        self.verify = not insecure
        self.auth = auth or Auth()
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.chunk_size = chunk_size
        self.monolithic_max = monolithic_max
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "modelbuild"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------
    def _fail(self, op: str, repo: str, detail: str, cls: type[RegistryError] = RegistryError,
              hint: str | None = None) -> RegistryError:
        where = f"repository {repo} on {self.host}" if repo else self.host
        return cls(self.auth.mask(f"registry {self.host}: {op} ({where}) failed: {detail}"), hint=hint)

    def _sleep(self, failures: int, wait: float | None = None) -> None:
        if wait is None:
            wait = self.backoff * (2 ** (failures - 1)) * random.uniform(0.5, 1.5)
        time.sleep(min(wait, MAX_RETRY_AFTER))

    def _send(self, method: str, url: str, *, op: str, repo: str, scopes: Iterable[str],
              headers: dict[str, str] | None = None, body: Callable[[], Any] | bytes | None = None,
              stream: bool = False) -> requests.Response:
        """One request, answering the registry's auth challenge once; raises :class:`_Retry`
        for what is worth retrying and returns any other response."""
        scopes = list(scopes)
        answered: str | None = None
        for _ in range(2):
            h = dict(headers or {})
            authz = answered or self.auth.header(scopes)
            if authz:
                h["Authorization"] = authz
            data = body() if callable(body) else body
            try:
                resp = self.session.request(method, url, headers=h, data=data, stream=stream,
                                            verify=self.verify, timeout=self.timeout, allow_redirects=True)
            except requests.exceptions.SSLError as exc:
                raise self._fail(op, repo, f"TLS error: {exc.__class__.__name__}",
                                 hint="for a registry without valid TLS pass --insecure, without TLS --plain-http") from None
            except _TRANSIENT as exc:
                raise _Retry(f"connection error ({type(exc).__name__})") from None
            if resp.status_code == 401 and answered is None and "WWW-Authenticate" in resp.headers:
                resp.close()
                try:
                    answered = self.auth.answer(self.session, self.host, resp.headers["WWW-Authenticate"], scopes,
                                                verify=self.verify, timeout=self.timeout)
                except AuthError as exc:
                    raise self._fail(op, repo, exc.message, RegistryAuthError, exc.hint) from None
                continue
            break
        if resp.status_code == 401:
            creds = self.auth.credentials(self.host)
            raise self._fail(op, repo, "the registry refused the credentials" + (f" of user {creds.username!r}" if creds else ""),
                             RegistryAuthError, hint=f"log in again with `docker login {self.host}`")
        if resp.status_code == 429 or (resp.status_code >= 500 and resp.status_code not in (501, 505)):
            detail = _error_detail(resp)
            resp.close()
            raise _Retry(detail, _retry_after(resp.headers.get("Retry-After")) if resp.status_code == 429 else None)
        return resp

    def _request(self, method: str, url: str, *, op: str, repo: str, scopes: Iterable[str], **kw: Any) -> requests.Response:
        """:meth:`_send` with retries; raises :class:`RegistryError` when the budget is spent."""
        failures = 0
        while True:
            try:
                return self._send(method, url, op=op, repo=repo, scopes=scopes, **kw)
            except _Retry as exc:
                failures += 1
                if failures > self.retries:
                    raise self._fail(op, repo, f"{exc.detail}, after {failures} attempts") from None
                self._sleep(failures, exc.wait)

    def _url(self, repo: str, kind: str, ref: str = "") -> str:
        return f"{self.base}/v2/{repo}/{kind}/{ref}"

    @staticmethod
    def _scopes(repo: str, push: bool = False) -> list[str]:
        return [f"repository:{repo}:{'pull,push' if push else 'pull'}"]

    # -- registry ---------------------------------------------------------------------
    def ping(self) -> None:
        """``GET /v2/``: the registry answers and accepts our credentials (for ``login``)."""
        resp = self._request("GET", f"{self.base}/v2/", op="ping", repo="", scopes=[])
        resp.close()
        if resp.status_code != 200:
            raise self._fail("ping", "", _error_detail(resp))

    def tags(self, repo: str) -> list[str]:
        """Every tag of *repo*, following ``Link`` pagination."""
        out: list[str] = []
        url: str | None = f"{self.base}/v2/{repo}/tags/list"
        while url:
            resp = self._request("GET", url, op="list tags", repo=repo, scopes=self._scopes(repo))
            if resp.status_code == 404:
                return out
            if resp.status_code != 200:
                raise self._fail("list tags", repo, _error_detail(resp))
            out.extend(resp.json().get("tags") or [])
            url = urljoin(url, resp.links["next"]["url"]) if "next" in resp.links else None
        return out

    # -- blobs ------------------------------------------------------------------------
    def has_blob(self, repo: str, digest: str) -> bool:
        """HEAD the blob: True when the registry has it in *repo*."""
        resp = self._request("HEAD", self._url(repo, "blobs", digest), op=f"check blob {digest}", repo=repo,
                             scopes=self._scopes(repo))
        if resp.status_code in (200, 404):
            return resp.status_code == 200
        raise self._fail(f"check blob {digest}", repo, _error_detail(resp))

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount: True when the registry linked the blob (201); False when it
        opened an upload instead (202, the blob is not readable in *from_repo*)."""
        op = f"mount blob {digest} from {from_repo}"
        query = urlencode({"mount": digest, "from": from_repo})
        resp = self._request("POST", f"{self._url(repo, 'blobs', 'uploads/')}?{query}", op=op, repo=repo,
                             scopes=self._scopes(repo, True) + self._scopes(from_repo))
        resp.close()
        if resp.status_code == 201:
            return True
        if resp.status_code == 202:
            return False
        raise self._fail(op, repo, _error_detail(resp))

    def push_blob(self, repo: str, digest: str, size: int, source: Source, *, mount_from: str | None = None,
                  progress: Callable[[int], None] | None = None) -> bool:
        """Upload a blob unless the registry has it; True when bytes were sent.

        *source* is a path or an opener returning a fresh, seekable binary file (called once
        per attempt). Blobs up to ``monolithic_max`` go in one PUT; larger ones in PATCH
        chunks of ``chunk_size`` bytes, resumed where the registry says it got to.
        """
        if not is_digest(digest):
            raise UsageError(f"not a sha256 digest: {digest!r}")
        if self.has_blob(repo, digest):
            return False
        if mount_from and mount_from != repo and self.mount_blob(repo, digest, mount_from):
            return False
        op = f"push blob {digest}"
        restarts = 0
        while True:
            try:
                if size <= self.monolithic_max:
                    self._push_monolithic(repo, digest, size, source, op)
                else:
                    self._push_chunked(repo, digest, size, source, op, progress)
                    return True
                if progress:
                    progress(size)
                return True
            except _Retry as exc:
                # The upload session is lost (or the final PUT's answer was): the blob may be
                # there all the same.
                if self.has_blob(repo, digest):
                    if progress and size <= self.monolithic_max:
                        progress(size)
                    return True
                restarts += 1
                if restarts > self.retries:
                    raise self._fail(op, repo, f"{exc.detail}; gave up after {restarts} upload attempts") from None
                self._sleep(restarts, exc.wait)

    def _start_upload(self, repo: str, op: str) -> str:
        resp = self._request("POST", self._url(repo, "blobs", "uploads/"), op=op, repo=repo,
                             scopes=self._scopes(repo, True))
        resp.close()
        if resp.status_code != 202 or "Location" not in resp.headers:
            raise self._fail(op, repo, f"starting the upload: {_error_detail(resp)}")
        return urljoin(self.base + "/", resp.headers["Location"])

    def _finish_url(self, location: str, digest: str) -> str:
        return location + ("&" if "?" in location else "?") + urlencode({"digest": digest})

    def _check_created(self, resp: requests.Response, repo: str, digest: str, op: str) -> None:
        resp.close()
        if resp.status_code in (400, 404) and "BLOB_UPLOAD" in _error_detail(resp):
            raise _Retry(_error_detail(resp))  # the registry lost the upload: start again
        if resp.status_code == 400 and "DIGEST_INVALID" in _error_detail(resp):
            raise _Retry("the registry received different bytes (digest mismatch)")
        if resp.status_code != 201:
            raise self._fail(op, repo, _error_detail(resp))
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise self._fail(op, repo, f"the registry stored {got}", DigestMismatchError)

    def _push_monolithic(self, repo: str, digest: str, size: int, source: Source, op: str) -> None:
        location = self._start_upload(repo, op)
        resp = self._send("PUT", self._finish_url(location, digest), op=op, repo=repo, scopes=self._scopes(repo, True),
                          headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                          body=lambda: _FileSlice(source, 0, size))
        self._check_created(resp, repo, digest, op)

    def _push_chunked(self, repo: str, digest: str, size: int, source: Source, op: str,
                      progress: Callable[[int], None] | None) -> None:
        location = self._start_upload(repo, op)
        offset = failures = 0
        scopes = self._scopes(repo, True)
        while offset < size:
            n = min(self.chunk_size, size - offset)
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(n),
                       "Content-Range": f"{offset}-{offset + n - 1}"}
            try:
                start = offset
                resp = self._send("PATCH", location, op=op, repo=repo, scopes=scopes, headers=headers,
                                  body=lambda: _FileSlice(source, start, n))
                resp.close()
                if resp.status_code != 202:
                    if resp.status_code in (404, 400) and "BLOB_UPLOAD" in _error_detail(resp):
                        raise _Retry(_error_detail(resp), 0)
                    if resp.status_code != 416:
                        raise self._fail(op, repo, f"uploading bytes {offset}-{offset + n - 1}: {_error_detail(resp)}")
                    raise _Retry("416 Range Not Satisfiable")
                location = urljoin(location, resp.headers.get("Location", location))
                new = _range_end(resp.headers.get("Range"), offset + n)
                if progress and new > offset:
                    progress(new - offset)
                offset, failures = new, 0
            except _Retry as exc:
                failures += 1
                if failures > self.retries:
                    raise
                self._sleep(failures, exc.wait)
                # Ask the registry how much arrived and go on from there.
                status = self._request("GET", location, op=op, repo=repo, scopes=scopes)
                status.close()
                if status.status_code != 204:
                    raise _Retry(f"resuming the upload: {_error_detail(status)}", 0) from None
                location = urljoin(location, status.headers.get("Location", location))
                new = _range_end(status.headers.get("Range"), 0)
                if progress and new > offset:
                    progress(new - offset)
                offset = new
        resp = self._send("PUT", self._finish_url(location, digest), op=op, repo=repo, scopes=scopes,
                          headers={"Content-Length": "0"}, body=b"")
        self._check_created(resp, repo, digest, op)

    def pull_blob(self, repo: str, digest: str, size: int, dest: str | Path | Any, *, partial: str | Path | None = None,
                  mode: int | None = None, progress: Callable[[int], None] | None = None) -> str | Path | Any:
        """Download a blob, verify its digest, and return *dest*.

        *dest* is a path (written as ``<dest>.partial``, or *partial*, then renamed, with
        *mode* applied; a partial file left by an earlier run is resumed) or a writer with
        ``write()``; a writer that has ``commit()``/``abort()`` (a store ``BlobWriter``) is
        committed on success and aborted on a mismatch.
        """
        if not is_digest(digest):
            raise UsageError(f"not a sha256 digest: {digest!r}")
        if isinstance(dest, (str, Path)):
            self._pull_to_path(repo, digest, size, Path(dest), Path(partial) if partial else None, mode, progress)
            return dest
        try:
            self._download(repo, digest, size, 0, dest.write, hashlib.sha256(), progress)
        except BaseException:
            if hasattr(dest, "abort"):
                dest.abort()
            raise
        if hasattr(dest, "commit"):
            dest.commit()
        return dest

    def _pull_to_path(self, repo: str, digest: str, size: int, dest: Path, partial: Path | None, mode: int | None,
                      progress: Callable[[int], None] | None) -> None:
        partial = partial or dest.with_name(dest.name + ".partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # two pulls of one blob take turns, never interleave
            try:
                current = os.stat(partial).st_ino
            except FileNotFoundError:
                current = None
            if current != os.fstat(fh.fileno()).st_ino:  # another pull finished (renamed it) meanwhile
                if dest.exists():
                    return
                return self._pull_to_path(repo, digest, size, dest, partial, mode, progress)
            for attempt in (1, 2):
                hasher = hashlib.sha256()
                fh.seek(0)
                have = 0
                if os.fstat(fh.fileno()).st_size <= size:
                    while chunk := fh.read(CHUNK):
                        hasher.update(chunk)
                        have += len(chunk)
                fh.truncate(have)
                try:
                    self._download(repo, digest, size, have, fh.write, hasher, progress)
                except DigestMismatchError:
                    fh.truncate(0)
                    if attempt == 1 and have:
                        continue  # the resumed prefix was damaged (a crash?): once more, from zero
                    partial.unlink(missing_ok=True)
                    raise
                break
            fh.flush()
            if os.environ.get("MODELBUILD_FSYNC", "1") != "0":
                os.fsync(fh.fileno())
            if mode is not None:
                os.chmod(partial, mode)
            os.replace(partial, dest)

    def _download(self, repo: str, digest: str, size: int, offset: int, sink: Callable[[bytes], Any],
                  hasher: Any, progress: Callable[[int], None] | None) -> None:
        """GET the blob from *offset* into *sink*, resuming with Range after drops."""
        op = f"pull blob {digest}"
        url = self._url(repo, "blobs", digest)
        failures = 0
        while offset < size:
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            resp = self._request("GET", url, op=op, repo=repo, scopes=self._scopes(repo), headers=headers, stream=True)
            try:
                if resp.status_code == 404:
                    raise self._fail(op, repo, _error_detail(resp))
                if resp.status_code == 200 and offset:
                    raise self._fail(op, repo, "the registry ignored the Range header of a resumed download",
                                     hint="remove the .partial file to download from the start")
                if resp.status_code not in (200, 206):
                    raise self._fail(op, repo, _error_detail(resp))
                start = _content_range_start(resp.headers.get("Content-Range"), offset)
                if start != offset:
                    raise self._fail(op, repo, f"asked for bytes from {offset}, got them from {start}")
                for chunk in _body(resp):
                    if offset + len(chunk) > size:
                        raise self._fail(op, repo, f"the blob is larger than {size} bytes", DigestMismatchError)
                    sink(chunk)
                    hasher.update(chunk)
                    offset += len(chunk)
                    failures = 0
                    if progress:
                        progress(len(chunk))
                if offset < size:
                    raise _Retry(f"the body ended at byte {offset} of {size}")
            except (_Retry, *_TRANSIENT) as exc:
                failures += 1
                if failures > self.retries:
                    detail = exc.detail if isinstance(exc, _Retry) else f"connection error ({type(exc).__name__})"
                    raise self._fail(op, repo, f"{detail}, after {failures} attempts") from None
                self._sleep(failures)
            finally:
                resp.close()
        got = "sha256:" + hasher.hexdigest()
        if got != digest:
            raise self._fail(op, repo, f"the downloaded bytes have digest {got}", DigestMismatchError)

    # -- manifests --------------------------------------------------------------------
    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """PUT these exact bytes (a manifest or an index) under a tag or digest; return their digest."""
        digest = sha256_bytes(data)
        op = f"push manifest {ref}"
        if is_digest(ref) and ref != digest:
            raise UsageError(f"manifest bytes have digest {digest}, not {ref}")
        resp = self._request("PUT", self._url(repo, "manifests", ref), op=op, repo=repo,
                             scopes=self._scopes(repo, True), headers={"Content-Type": media_type}, body=data)
        resp.close()
        if resp.status_code != 201:
            raise self._fail(op, repo, _error_detail(resp),
                             hint="push every blob and child manifest first" if resp.status_code == 400 else None)
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise self._fail(op, repo, f"the registry stored {got}, not {digest}", DigestMismatchError)
        return digest

    def get_manifest(self, repo: str, ref: str, accept: Iterable[str] = DEFAULT_ACCEPT) -> tuple[bytes, str, str]:
        """``(bytes, media type, digest)`` of a manifest or index, verified against the digest
        asked for and against ``Docker-Content-Digest``."""
        op = f"pull manifest {ref}"
        failures = 0
        while True:
            resp = self._request("GET", self._url(repo, "manifests", ref), op=op, repo=repo, scopes=self._scopes(repo),
                                 headers={"Accept": ", ".join(accept)}, stream=True)
            try:
                if resp.status_code != 200:
                    raise self._fail(op, repo, _error_detail(resp))
                body = bytearray()
                for chunk in resp.iter_content(64 * 1024):
                    body += chunk
                    if len(body) > MANIFEST_MAX:
                        raise self._fail(op, repo, f"the manifest is larger than {MANIFEST_MAX} bytes")
                length = resp.headers.get("Content-Length")
                if length is not None and int(length) != len(body):
                    raise _Retry(f"the body ended at byte {len(body)} of {length}")
                break
            except (_Retry, *_TRANSIENT) as exc:
                failures += 1
                if failures > self.retries:
                    raise self._fail(op, repo, f"truncated response ({type(exc).__name__}), after {failures} attempts") from None
                self._sleep(failures)
            finally:
                resp.close()
        data = bytes(body)
        digest = sha256_bytes(data)
        for expected in (ref if is_digest(ref) else None, resp.headers.get("Docker-Content-Digest")):
            if expected and expected.startswith("sha256:") and expected != digest:
                raise self._fail(op, repo, f"the manifest received has digest {digest}, not {expected}",
                                 DigestMismatchError)
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if not media_type or media_type in ("application/json", "application/octet-stream"):
            try:
                media_type = json.loads(data).get("mediaType") or media_type
            except (ValueError, AttributeError):
                pass
        return data, media_type, digest

    def head_manifest(self, repo: str, ref: str, accept: Iterable[str] = DEFAULT_ACCEPT) -> tuple[str, str, int] | None:
        """``(digest, media type, size)`` of a manifest, or None where there is none."""
        op = f"check manifest {ref}"
        resp = self._request("HEAD", self._url(repo, "manifests", ref), op=op, repo=repo, scopes=self._scopes(repo),
                             headers={"Accept": ", ".join(accept)})
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._fail(op, repo, _error_detail(resp))
        digest = resp.headers.get("Docker-Content-Digest") or (ref if is_digest(ref) else "")
        return digest, resp.headers.get("Content-Type", ""), int(resp.headers.get("Content-Length") or 0)


def _body(resp: requests.Response) -> Iterator[bytes]:
    """The body as it arrives. ``iter_content`` fills each chunk before handing it over and
    loses the filled part when the connection drops; ``read1`` hands over what came, so a
    resumed download asks only for the bytes really missing."""
    raw = resp.raw
    read = getattr(raw, "read1", None) or raw.read
    while True:
        try:
            chunk = read(CHUNK)
        except urllib3.exceptions.ProtocolError as exc:
            raise requests.exceptions.ChunkedEncodingError(exc) from None
        except (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.HTTPError) as exc:
            raise requests.ConnectionError(exc) from None
        if not chunk:
            return
        yield chunk


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _range_end(header: str | None, default: int) -> int:
    """Bytes received, from an upload ``Range: 0-<last>`` header (distribution says ``0-0``
    for an empty upload too: an ambiguous byte is re-sent, never skipped)."""
    if not header:
        return default
    try:
        last = int(header.replace("bytes=", "").split("-", 1)[1])
    except (IndexError, ValueError):
        return default
    return last + 1 if last > 0 else 0


def _content_range_start(header: str | None, default: int) -> int:
    """The first byte of a 206 body, from ``Content-Range: bytes 100-199/200``."""
    if not header:
        return default
    try:
        return int(header.split()[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return -1


def transfer_all(tasks: Iterable[Callable[[], T]], jobs: int) -> list[T]:
    """Run transfers *jobs* at a time; results in task order. The first failure cancels the
    tasks not started yet and is raised once the running ones end (no thread is orphaned)."""
    tasks = list(tasks)
    if jobs <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="transfer") as pool:
        futures = [pool.submit(task) for task in tasks]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
        return [f.result() for f in futures]
