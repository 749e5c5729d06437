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
  with exponential backoff and jitter; the failure count resets whenever bytes get through,
  so a long transfer over a flaky link still ends. When the budget is spent the error is a
  :class:`RegistryError` naming the registry, repository and operation, secrets masked.
"""

from __future__ import annotations

import email.utils
import fcntl
import hashlib
import json
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlencode, urljoin

import requests
import urllib3
from requests.adapters import HTTPAdapter

from modelbuild.digests import CHUNK, is_digest, sha256_bytes
from modelbuild.errors import EXIT_BUILD_FAILED, ModelbuildError, UsageError
from modelbuild.oci import mediatypes as mt
from modelbuild.oci.auth import Auth, AuthError, TokenServiceUnavailable
from modelbuild.oci.reference import Reference, parse_reference

MiB = 1 << 20
DEFAULT_CHUNK = 32 * MiB  # per PATCH: amortises a round trip, yet little to resend
MONOLITHIC_MAX = 16 * MiB  # up to this, one PUT is cheaper than POST + PATCHes
BODY_MAX = 4 * MiB  # manifests and error bodies: the spec's recommended manifest limit
MAX_WAIT = 60.0
DEFAULT_ACCEPT = (mt.OCI_MANIFEST, mt.OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json")
_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
              requests.exceptions.ContentDecodingError)
Source = str | Path | Callable[[], BinaryIO]
Progress = Callable[[int], None]
T = TypeVar("T")


class RegistryError(ModelbuildError):
    """A registry operation failed after its retries, or cannot succeed (404, denied)."""

    exit_code = EXIT_BUILD_FAILED


class RegistryAuthError(RegistryError):
    """No credentials, or the registry refused them."""


class DigestMismatchError(RegistryError):
    """The bytes received do not have the digest asked for; nothing was kept."""


def split_reference(text: str) -> tuple[str, str, Reference]:
    """``localhost:5000/team/model:1`` → ``("localhost:5000", "team/model", Reference)``;
    a reference that names no registry host is a usage error."""
    parsed = parse_reference(text)
    host, _, path = parsed.repository.partition("/")
    if not path or not ("." in host or ":" in host or host == "localhost"):
        raise UsageError(f"{text!r} names no registry", hint="write it as registry.example.com/team/model:tag")
    return host, path, parsed


class _FileSlice:
    """*length* bytes of a file from *offset*: a request body that streams, never loads."""

    def __init__(self, source: Source, offset: int, length: int) -> None:
        try:
            self._file = open(source, "rb") if isinstance(source, (str, Path)) else source()  # noqa: SIM115
            self._file.seek(offset)
        except OSError as exc:
            raise RegistryError(f"cannot read the blob to push from {source}: {exc.strerror or exc}") from None
        self._left = length

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._file.read(n) if n else b""
        if n and not data:
            raise RegistryError("the file being pushed got shorter while it was read")
        self._left -= len(data)
        if not self._left:
            self._file.close()
        return data

    def __len__(self) -> int:
        return self._left


class _Retry(Exception):
    """One failed attempt worth retrying; *wait* is the server's Retry-After, if any."""

    def __init__(self, detail: str, wait: float | None = None) -> None:
        super().__init__(detail)
        self.detail, self.wait = detail, wait


class Registry:
    """One registry host. Thread-safe: transfer threads share one instance (and its pool)."""

    def __init__(self, host: str, *, plain_http: bool = False, insecure: bool = False, auth: Auth | None = None,
                 retries: int = 5, backoff: float = 0.2, timeout: float | tuple[float, float] = (15.0, 120.0),
                 chunk_size: int = DEFAULT_CHUNK, monolithic_max: int = MONOLITHIC_MAX, pool_size: int = 16) -> None:
        self.host = host
        self.base = f"{'http' if plain_http else 'https'}://{host}"
        self.verify = not insecure
        if insecure:  # asked for: do not warn about it on every request
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        self.auth = auth or Auth()
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.chunk_size, self.monolithic_max = chunk_size, monolithic_max
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "modelbuild"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Registry:
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
        time.sleep(min(wait, MAX_WAIT))

    def _send(self, method: str, url: str, *, op: str, repo: str, scopes: list[str],
              headers: dict[str, str] | None = None, body: Callable[[], Any] | bytes | None = None,
              stream: bool = False) -> requests.Response:
        """One request, answering the registry's auth challenge once. Raises :class:`_Retry`
        for what is worth retrying, returns any other response; unless *stream*, the body
        (at most ``BODY_MAX``) has been read, so a truncated one is retried here too."""
        answered: str | None = None
        while True:
            h = dict(headers or {})
            if authz := answered or self.auth.header(scopes):
                h["Authorization"] = authz
            try:
                resp = self.session.request(method, url, headers=h, data=body() if callable(body) else body,
                                            stream=True, verify=self.verify, timeout=self.timeout)
                if not stream and (method == "HEAD" or int(resp.headers.get("Content-Length") or 0) <= BODY_MAX):
                    resp.content  # noqa: B018 -- read it now, inside the retry
            except requests.exceptions.SSLError as exc:
                raise self._fail(op, repo, f"TLS error ({type(exc).__name__})",
                                 hint="for a registry without a valid certificate use insecure, without TLS plain-http") from None
            except _TRANSIENT as exc:
                raise _Retry(f"connection error ({type(exc).__name__})") from None
            if resp.status_code != 401 or answered is not None or "WWW-Authenticate" not in resp.headers:
                break
            resp.close()
            try:
                answered = self.auth.answer(self.session, self.host, resp.headers["WWW-Authenticate"], scopes,
                                            verify=self.verify, timeout=self.timeout)
            except TokenServiceUnavailable as exc:
                raise _Retry(exc.message) from None
            except AuthError as exc:
                raise self._fail(op, repo, exc.message, RegistryAuthError, exc.hint) from None
        if resp.status_code == 401:
            creds = self.auth.credentials(self.host)
            detail = (f"the registry refused the credentials of user {creds.username!r}" if creds else
                      "the registry requires credentials and none were found for it") + f" [{_error_detail(resp)}]"
            raise self._fail(op, repo, detail, RegistryAuthError, hint=f"log in with `docker login {self.host}`")
        if resp.status_code == 429 or (resp.status_code >= 500 and resp.status_code not in (501, 505)):
            detail = _error_detail(resp)
            resp.close()
            raise _Retry(detail, _retry_after(resp.headers.get("Retry-After")))
        return resp

    def _request(self, method: str, url: str, *, op: str, repo: str, scopes: list[str], **kw: Any) -> requests.Response:
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
        """``GET /v2/``: the registry answers and takes our credentials (what ``login`` checks)."""
        resp = self._request("GET", f"{self.base}/v2/", op="ping", repo="", scopes=[])
        if resp.status_code != 200:
            raise self._fail("ping", "", _error_detail(resp))

    # -- blobs ------------------------------------------------------------------------
    def has_blob(self, repo: str, digest: str) -> bool:
        """HEAD the blob: True when the registry has it in *repo*."""
        op = f"check blob {digest}"
        resp = self._request("HEAD", self._url(repo, "blobs", digest), op=op, repo=repo, scopes=self._scopes(repo))
        if resp.status_code not in (200, 404):
            raise self._fail(op, repo, _error_detail(resp))
        return resp.status_code == 200

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount: True when the registry linked the blob (201); False when it
        opened an upload instead (202: *from_repo* lacks it, or we may not read it)."""
        op = f"mount blob {digest} from {from_repo}"
        url = f"{self._url(repo, 'blobs', 'uploads/')}?{urlencode({'mount': digest, 'from': from_repo})}"
        resp = self._request("POST", url, op=op, repo=repo, scopes=self._scopes(repo, True) + self._scopes(from_repo))
        if resp.status_code not in (201, 202):
            raise self._fail(op, repo, _error_detail(resp))
        return resp.status_code == 201

    def push_blob(self, repo: str, digest: str, size: int, source: Source, *, mount_from: str | None = None,
                  progress: Progress | None = None) -> bool:
        """Upload a blob unless the registry has it (HEAD) or can mount it from *mount_from*;
        True when bytes were sent.

        *source* is a path, or an opener returning a fresh seekable binary file (called for
        each request body). Blobs up to ``monolithic_max`` go in one PUT, larger ones in
        PATCH chunks of ``chunk_size`` bytes.
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
        restarts, reported = 0, [0]

        def advance(offset: int) -> None:  # progress in bytes, never counting a byte twice
            if progress and offset > reported[0]:
                progress(offset - reported[0])
                reported[0] = offset

        while True:
            try:
                location = self._start_upload(repo, op)
                if size > self.monolithic_max:
                    location = self._push_chunks(repo, size, source, op, location, advance)
                self._complete(repo, digest, size, source, op, location, monolithic=size <= self.monolithic_max)
                advance(size)
                return True
            except _Retry as exc:
                if self.has_blob(repo, digest):  # only the answer to the final PUT was lost
                    advance(size)
                    return True
                restarts += 1
                if restarts > self.retries:
                    raise self._fail(op, repo, f"{exc.detail}; gave up after {restarts} upload attempts") from None
                self._sleep(restarts, exc.wait)

    def _start_upload(self, repo: str, op: str) -> str:
        resp = self._request("POST", self._url(repo, "blobs", "uploads/"), op=op, repo=repo, scopes=self._scopes(repo, True))
        if resp.status_code != 202 or "Location" not in resp.headers:
            raise self._fail(op, repo, f"starting the upload: {_error_detail(resp)}")
        return urljoin(self.base + "/", resp.headers["Location"])

    def _complete(self, repo: str, digest: str, size: int, source: Source, op: str, location: str, *,
                  monolithic: bool) -> None:
        """The final PUT: with the whole blob (monolithic) or none (after the chunks)."""
        url = location + ("&" if "?" in location else "?") + urlencode({"digest": digest})
        n = size if monolithic else 0
        resp = self._send("PUT", url, op=op, repo=repo, scopes=self._scopes(repo, True),
                          body=(lambda: _FileSlice(source, 0, n)) if n else b"",
                          headers={"Content-Type": "application/octet-stream", "Content-Length": str(n)})
        detail = _error_detail(resp)
        if resp.status_code in (400, 404) and ("BLOB_UPLOAD" in detail or "DIGEST_INVALID" in detail):
            raise _Retry(detail)  # the upload was lost or received wrong bytes: start again
        if resp.status_code != 201:
            raise self._fail(op, repo, detail)
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise self._fail(op, repo, f"the registry stored {got}", DigestMismatchError)

    def _push_chunks(self, repo: str, size: int, source: Source, op: str, location: str,
                     advance: Callable[[int], None]) -> str:
        """PATCH the blob in chunks; after a failure ask the upload URL how much arrived.
        Returns the upload URL for the final PUT; raises :class:`_Retry` to start over."""
        offset = failures = 0
        scopes = self._scopes(repo, True)
        while offset < size:
            n, start = min(self.chunk_size, size - offset), offset
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(n),
                       "Content-Range": f"{offset}-{offset + n - 1}"}
            try:
                resp = self._send("PATCH", location, op=op, repo=repo, scopes=scopes, headers=headers,
                                  body=lambda start=start, n=n: _FileSlice(source, start, n))
                if resp.status_code in (400, 404) and "BLOB_UPLOAD" in _error_detail(resp):
                    raise _Retry(_error_detail(resp), 0)
                if resp.status_code == 416:
                    raise _Retry("416 Range Not Satisfiable")
                if resp.status_code != 202:
                    raise self._fail(op, repo, f"uploading bytes {offset}-{offset + n - 1}: {_error_detail(resp)}")
                new, failures = _range_end(resp.headers.get("Range"), offset + n), 0
            except _Retry as exc:
                failures += 1
                if failures > self.retries:
                    raise
                self._sleep(failures, exc.wait)
                resp = self._request("GET", location, op=op, repo=repo, scopes=scopes)
                if resp.status_code != 204:
                    raise _Retry(f"resuming the upload: {_error_detail(resp)}", 0) from None
                new = _range_end(resp.headers.get("Range"), 0)
            location = urljoin(location, resp.headers.get("Location", location))
            advance(new)
            offset = new
        return location

    def pull_blob(self, repo: str, digest: str, size: int, dest: str | Path | Any, *, partial: str | Path | None = None,
                  mode: int | None = None, progress: Progress | None = None) -> Any:
        """Download a blob, verify its digest, and return *dest*.

        *dest* is a path: written as *partial* (default ``<dest>.partial``, resumed if an
        earlier run left one), given *mode*, renamed into place once verified. Or a writer
        with ``write()``; one with ``commit()``/``abort()`` (a store ``BlobWriter``) is
        committed on success and aborted on any failure.
        """
        if not is_digest(digest):
            raise UsageError(f"not a sha256 digest: {digest!r}")
        if isinstance(dest, (str, Path)):
            self._pull_to_path(repo, digest, size, Path(dest), Path(partial or f"{dest}.partial"), mode, progress)
            return dest
        try:
            self._download(repo, digest, size, 0, dest.write, hashlib.sha256(), None, progress)
        except BaseException:
            if hasattr(dest, "abort"):
                dest.abort()
            raise
        if hasattr(dest, "commit"):
            dest.commit()
        return dest

    def _pull_to_path(self, repo: str, digest: str, size: int, dest: Path, partial: Path, mode: int | None,
                      progress: Progress | None) -> None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # two pulls of one blob take turns, never interleave
            try:
                same = os.stat(partial).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the pull we waited for finished and renamed it
                if not dest.exists():
                    self._pull_to_path(repo, digest, size, dest, partial, mode, progress)
                return

            def rewind() -> Any:
                fh.truncate(0)
                return hashlib.sha256()

            hasher, have = hashlib.sha256(), 0
            fh.seek(0)
            if os.fstat(fh.fileno()).st_size <= size:
                while chunk := fh.read(CHUNK):
                    hasher.update(chunk)
                    have += len(chunk)
            fh.truncate(have)
            if progress and have:
                progress(have)  # already here from an earlier run
            try:
                try:
                    self._download(repo, digest, size, have, fh.write, hasher, rewind, progress)
                except DigestMismatchError:
                    if not have:
                        raise
                    # The resumed prefix was damaged (a crash before it reached the disk?).
                    self._download(repo, digest, size, 0, fh.write, rewind(), rewind, progress)
            except DigestMismatchError:
                partial.unlink(missing_ok=True)
                raise
            fh.flush()
            if os.environ.get("MODELBUILD_FSYNC", "1") != "0":
                os.fsync(fh.fileno())
            if mode is not None:
                os.chmod(partial, mode)
            os.replace(partial, dest)

    def _download(self, repo: str, digest: str, size: int, offset: int, sink: Callable[[bytes], Any], hasher: Any,
                  rewind: Callable[[], Any] | None, progress: Progress | None) -> None:
        """GET the blob from *offset* into *sink*, resuming with ``Range`` after drops.
        *rewind* empties the sink and returns a fresh hasher, for a server that ignores Range."""
        op, url = f"pull blob {digest}", self._url(repo, "blobs", digest)
        failures = 0
        while offset < size:
            headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
            resp = self._request("GET", url, op=op, repo=repo, scopes=self._scopes(repo), headers=headers, stream=True)
            try:
                if resp.status_code not in (200, 206):
                    raise self._fail(op, repo, _error_detail(resp))
                if resp.status_code == 200 and offset:
                    if rewind is None:
                        raise self._fail(op, repo, "the registry ignored the Range of a resumed download")
                    hasher, offset = rewind(), 0
                elif _content_range_start(resp.headers.get("Content-Range"), offset) != offset:
                    raise self._fail(op, repo, f"asked for bytes from {offset}, got others")
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
        if (got := "sha256:" + hasher.hexdigest()) != digest:
            raise self._fail(op, repo, f"the bytes received have digest {got}", DigestMismatchError)

    # -- manifests --------------------------------------------------------------------
    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """PUT these exact bytes (a manifest or an index) under a tag or digest; their digest."""
        digest = sha256_bytes(data)
        op = f"push manifest {ref}"
        if is_digest(ref) and ref != digest:
            raise UsageError(f"manifest bytes have digest {digest}, not {ref}")
        resp = self._request("PUT", self._url(repo, "manifests", ref), op=op, repo=repo,
                             scopes=self._scopes(repo, True), headers={"Content-Type": media_type}, body=data)
        if resp.status_code != 201:
            raise self._fail(op, repo, _error_detail(resp),
                             hint="push its blobs and child manifests first" if resp.status_code == 400 else None)
        if (got := resp.headers.get("Docker-Content-Digest")) and got != digest:
            raise self._fail(op, repo, f"the registry stored {got}, not {digest}", DigestMismatchError)
        return digest

    def get_manifest(self, repo: str, ref: str, accept: Iterable[str] = DEFAULT_ACCEPT) -> tuple[bytes, str, str]:
        """``(bytes, media type, digest)`` of a manifest or index, verified against the digest
        asked for and the registry's ``Docker-Content-Digest``."""
        op = f"pull manifest {ref}"
        resp = self._request("GET", self._url(repo, "manifests", ref), op=op, repo=repo, scopes=self._scopes(repo),
                             headers={"Accept": ", ".join(accept)})
        if resp.status_code != 200:
            raise self._fail(op, repo, _error_detail(resp))
        if int(resp.headers.get("Content-Length") or 0) > BODY_MAX:
            resp.close()
            raise self._fail(op, repo, f"the manifest is larger than {BODY_MAX} bytes")
        data, digest = resp.content, sha256_bytes(resp.content)
        for expected in (ref if is_digest(ref) else None, resp.headers.get("Docker-Content-Digest")):
            if expected and expected.startswith("sha256:") and expected != digest:
                raise self._fail(op, repo, f"the manifest received has digest {digest}, not {expected}",
                                 DigestMismatchError)
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type in ("", "application/json", "application/octet-stream"):
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


def _error_detail(resp: requests.Response) -> str:
    """``404 Not Found (MANIFEST_UNKNOWN: manifest unknown)`` from a registry error body."""
    text = f"{resp.status_code} {resp.reason or ''}".strip()
    try:
        if errors := resp.json().get("errors"):
            text += f" ({errors[0].get('code', '?')}: {errors[0].get('message', '')})"
    except (ValueError, AttributeError, RuntimeError, requests.RequestException):
        pass
    return text


def _body(resp: requests.Response) -> Iterator[bytes]:
    """The body as it arrives. ``iter_content`` fills each chunk before handing it over and
    loses the filled part when the connection drops; ``read1`` hands over what came, so a
    resumed download asks only for the bytes really missing."""
    read = getattr(resp.raw, "read1", None) or resp.raw.read
    while True:
        try:
            chunk = read(CHUNK)
        except urllib3.exceptions.ProtocolError as exc:
            raise requests.exceptions.ChunkedEncodingError(exc) from None
        except urllib3.exceptions.HTTPError as exc:
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
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _range_end(header: str | None, default: int) -> int:
    """Bytes received, from an upload's ``Range: 0-<last>`` (distribution also says ``0-0``
    for an empty upload: the ambiguous byte is re-sent, never skipped)."""
    try:
        last = int((header or "").replace("bytes=", "").split("-", 1)[1])
    except (IndexError, ValueError):
        return default
    return last + 1 if last > 0 else 0


def _content_range_start(header: str | None, default: int) -> int:
    """The first byte of a 206 body, from ``Content-Range: bytes 100-199/200``."""
    try:
        return int(header.split()[1].split("-", 1)[0]) if header else default
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
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled() and (exc := f.exception()) is not None:
                raise exc
        return [f.result() for f in futures]
