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

A registry is not trusted to be well-behaved (the "hostile registry" review): every wait is
bounded by :class:`Limits` (each settable by an environment variable, see ``docs/registry.md``).
A body kept in memory (manifest, error, token answer) is read up to the manifest limit and no
further, whatever its transfer encoding claims; each transfer attempt is abandoned when nothing
moves for the stall timeout (a watchdog cuts the socket, so a peer dripping header or chunk
framing bytes is cut too) or when less than the minimum rate moves over the rate window; a
blob whose ``Content-Length`` disagrees with its descriptor is refused before any byte is
read; anything that should be JSON and is not ends in a one-line :class:`RegistryError`.
"""

from __future__ import annotations

import email.utils
import errno
import fcntl
import hashlib
import json
import math
import os
import random
import re
import socket
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from modelbuild.digests import CHUNK, is_digest, sha256_bytes
from modelbuild.errors import EXIT_BUILD_FAILED, BuildError, ModelbuildError, UsageError
from modelbuild.oci import mediatypes as mt
from modelbuild.oci.auth import Auth, AuthError, TokenServiceUnavailable
from modelbuild.oci.reference import Reference, parse_reference

MiB = 1 << 20
DEFAULT_CHUNK = 32 * MiB  # per PATCH: amortises a round trip, yet little to resend
MONOLITHIC_MAX = 16 * MiB  # up to this, one PUT is cheaper than POST + PATCHes
BODY_MAX = 4 * MiB  # manifests and error bodies: the spec's recommended manifest limit
MAX_WAIT = 60.0
MAX_REDIRECTS = 10
PROGRESS = MiB  # an attempt that moved this much (or a quarter of what was left) made progress
MAX_SIZE = (1 << 63) - 1  # the largest size a registry (Go's int64) can state
_TAG = re.compile(r"[\w][\w.-]{0,127}")
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


class SizeMismatchError(DigestMismatchError):
    """The registry announced a blob size other than its descriptor's: refused before reading."""


def split_reference(text: str) -> tuple[str, str, Reference]:
    """``localhost:5000/team/model:1`` → ``("localhost:5000", "team/model", Reference)``;
    a reference that names no registry host is a usage error."""
    parsed = parse_reference(text)
    host, _, path = parsed.repository.partition("/")
    if not path or not ("." in host or ":" in host or host == "localhost"):
        raise UsageError(f"{text!r} names no registry", hint="write it as registry.example.com/team/model:tag")
    return host, path, parsed


# -- limits -------------------------------------------------------------------------------
_ENV = {  # Limits field → the environment variable that sets it
    "max_manifest": "MODELBUILD_MAX_MANIFEST_BYTES",
    "connect_timeout": "MODELBUILD_REGISTRY_CONNECT_TIMEOUT",
    "read_timeout": "MODELBUILD_REGISTRY_READ_TIMEOUT",
    "stall_timeout": "MODELBUILD_REGISTRY_STALL_TIMEOUT",
    "min_rate": "MODELBUILD_REGISTRY_MIN_RATE",
    "rate_window": "MODELBUILD_REGISTRY_RATE_WINDOW",
    "retries": "MODELBUILD_REGISTRY_RETRIES",
}
_WHOLE = ("max_manifest", "retries")  # integers; the others are seconds or bytes/s
_MAY_BE_ZERO = ("min_rate", "retries")  # 0 turns the rate check off / never retries


@dataclass(frozen=True, slots=True)
class Limits:
    """How much and how long the client puts up with from a registry.

    The defaults let any usable link through (a 56 kbit/s modem moves 7 KiB/s, seven times
    the minimum rate) while a registry that stalls or drips is given up on in minutes, not
    never: :meth:`operation_bound` is the worst case (``docs/registry.md`` works it out).
    """

    max_manifest: int = BODY_MAX  # bytes of a body kept in memory: manifest, index, error, token
    connect_timeout: float = 15.0  # seconds to set up TCP (and TLS)
    read_timeout: float = 30.0  # seconds any single read from the registry may wait
    stall_timeout: float = 60.0  # seconds an attempt may move no byte (watchdog-enforced)
    min_rate: float = 1024.0  # bytes/s averaged over rate_window, below which an attempt is abandoned
    rate_window: float = 30.0  # seconds the minimum rate is averaged over
    retries: int = 5  # failed attempts retried before an operation fails

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """The defaults, each replaced by its environment variable when set. A value that is
        not a number of the right kind is a usage error naming the variable, not a crash
        deep inside a transfer."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            text = environ.get(_ENV[f.name], "").strip()
            if text:
                values[f.name] = _parse_limit(f.name, text)
        return cls(**values)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or value < 0 or (value == 0 and f.name not in _MAY_BE_ZERO):
                raise ValueError(f"Limits.{f.name} = {value!r} is out of range")

    def attempt_bound(self) -> float:
        """Seconds one attempt can last without moving ``min_rate``: connecting, the stall
        timeout for the headers, the rate window, and the stall timeout for the chunk that
        shows the window short (the watchdog cuts any wait longer than that)."""
        return self.connect_timeout + self.rate_window + 2 * self.stall_timeout

    def operation_bound(self, retries: int | None = None) -> float:
        """Seconds an operation (one manifest, one blob) can take against a registry that
        stalls or drips, before it fails: every attempt at its bound, every wait between
        them as long as any wait may be (the stall timeout caps Retry-After and backoff)."""
        retries = self.retries if retries is None else retries
        return (retries + 1) * self.attempt_bound() + retries * min(self.stall_timeout, MAX_WAIT)


def _parse_limit(name: str, text: str) -> int | float:
    var = _ENV[name]
    try:
        value: int | float = int(text) if name in _WHOLE else float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and name not in _MAY_BE_ZERO):
        kind = "a whole number" if name in _WHOLE else "a number"
        raise UsageError(f"{var}={_clip(text, 40)!r}: expected {kind} "
                         f"{'of at least 0' if name in _MAY_BE_ZERO else 'above 0'}")
    return value


# -- pacing: every transfer attempt is watched --------------------------------------------
class _Retry(Exception):
    """One failed attempt worth retrying; *wait* is the server's Retry-After, if any; *hint*
    says which setting to change when the failure is a limit that tripped."""

    def __init__(self, detail: str, wait: float | None = None, hint: str | None = None) -> None:
        super().__init__(detail)
        self.detail, self.wait, self.hint = detail, wait, hint


class _Slow(_Retry):
    """An attempt abandoned for moving too slowly (a timeout, the stall timeout, the minimum
    rate): whatever it moved, it never counts as progress, so a drip cannot go on forever."""


class _TooLarge(Exception):
    """A body kept in memory would pass the manifest limit."""


class _WriteFailed(Exception):
    """Writing downloaded bytes failed (full disk, quota, I/O error): not worth retrying."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _Pace:
    """The progress of one attempt (one request and its response body), as the read and
    write loops report it: nothing for ``stall_timeout``, or less than ``min_rate`` over the
    last ``rate_window``, raises :class:`_Slow`. The window slides: a mark of (time, bytes)
    is kept every quarter window, and the rate is taken since the newest mark at least a
    window old. Per chunk: one ``monotonic()`` and a few comparisons.

    The registry's :class:`_Watchdog` reads ``last`` and cuts ``conn``'s socket when the
    attempt stalls inside a read we do not control (header or chunk framing dripped)."""

    __slots__ = ("limits", "wait", "last", "total", "marks", "conn", "done", "cut")

    def __init__(self, limits: Limits, wait: float | None = None) -> None:
        now = time.monotonic()
        self.limits = limits
        self.wait = wait if wait is not None else min(limits.read_timeout, limits.stall_timeout)  # per socket op
        self.last = now
        self.total = 0
        self.marks: deque[tuple[float, int]] = deque([(now, 0)])
        self.conn: Any = None  # the urllib3 connection carrying the attempt
        self.done = False
        self.cut = False

    def moved(self, n: int) -> None:
        now = time.monotonic()
        limits = self.limits
        if self.cut or now - self.last > limits.stall_timeout:
            raise self.stalled(now)
        self.total += n
        if n:
            self.last = now
        marks = self.marks
        if now - marks[-1][0] >= limits.rate_window / 4:
            marks.append((now, self.total))
            while len(marks) > 2 and now - marks[1][0] >= limits.rate_window:
                marks.popleft()
        since, then = marks[0]
        if now - since >= limits.rate_window and self.total - then < limits.min_rate * (now - since):
            raise _Slow(f"{self.total - then} bytes moved in {now - since:.1f} s, under the minimum rate of "
                        f"{limits.min_rate:g} bytes/s", hint=f"set {_ENV['min_rate']} to lower it")

    def stalled(self, now: float | None = None) -> _Slow:
        idle = (time.monotonic() if now is None else now) - self.last
        return _Slow(f"nothing moved for {idle:.1f} s, over the stall timeout of {self.limits.stall_timeout:g} s",
                     hint=f"set {_ENV['stall_timeout']} to raise it")


_current = threading.local()  # the _Pace of the request this thread is sending


class _Watched:
    """A urllib3 connection that tells the current attempt's :class:`_Pace` it carries it, so
    the watchdog knows which socket to cut; and that sends with the read timeout (urllib3
    sends a request body under the *connect* timeout, so a registry that stops reading an
    upload would be reported as a connect timeout)."""

    timeout: Any
    sock: Any

    def request(self, *args: Any, **kw: Any) -> Any:
        pace = getattr(_current, "pace", None)
        self.modelbuild_pace = pace
        if pace is not None:
            pace.conn = self
            self.modelbuild_connect_timeout, self.timeout = self.timeout, pace.wait
        return super().request(*args, **kw)  # type: ignore[misc]

    def connect(self) -> None:
        wait = self.timeout
        self.timeout = getattr(self, "modelbuild_connect_timeout", wait)
        super().connect()  # type: ignore[misc]
        self.timeout = wait
        self.sock.settimeout(wait)


class _HTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(HTTPAdapter):
    """requests' adapter with watched connections (direct connections; a proxy's are not)."""

    def init_poolmanager(self, *args: Any, **kw: Any) -> None:
        super().init_poolmanager(*args, **kw)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class _Watchdog:
    """Cuts the socket of an attempt that moved nothing for the stall timeout. A blocking read
    returns whenever *a* byte arrives, so a peer dripping the bytes of a header line or of a
    chunk-size line would hold http.client for hours with every read within its timeout; the
    read loops cannot check what they never see. One daemon thread per registry, running
    only while attempts are in flight."""

    def __init__(self, stall: float) -> None:
        self.tick = min(1.0, stall / 4)
        self.paces: set[_Pace] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def watch(self, pace: _Pace) -> None:
        with self.lock:
            self.paces.add(pace)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="registry-watchdog", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.tick)
            now = time.monotonic()
            with self.lock:
                for pace in list(self.paces):
                    conn = pace.conn
                    if pace.done or (conn is not None and getattr(conn, "modelbuild_pace", None) is not pace):
                        self.paces.discard(pace)  # over, or its connection carries another attempt now
                    elif conn is not None and now - pace.last > pace.limits.stall_timeout:
                        pace.cut = True
                        self.paces.discard(pace)
                        _cut(conn)
                if not self.paces:
                    self.thread = None
                    return


def _cut(conn: Any) -> None:
    """Shut the socket down under the thread blocked on it: its read returns at once. The
    plain socket's shutdown, also for TLS (SSLSocket.shutdown would drop the TLS state under
    the reading thread)."""
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


class _Budget:
    """The failed attempts one operation has left. Every retry loop of an operation (a blob's
    download; a blob's upload with its POST, PATCHes, status checks and final PUT) draws on
    one budget, so a registry that fails everything ends it after ``retries + 1`` failed
    attempts in all, never ``(retries + 1)²``; real progress gives the budget back."""

    __slots__ = ("registry", "op", "repo", "failures")

    def __init__(self, registry: Registry, op: str, repo: str) -> None:
        self.registry, self.op, self.repo, self.failures = registry, op, repo, 0

    def failed(self, exc: _Retry) -> None:
        """Count a failed attempt and wait before the next; raises when none is left."""
        self.failures += 1
        if self.failures > self.registry.retries:
            raise self.registry._fail(self.op, self.repo, f"{exc.detail}, after {self.failures} attempts",
                                      hint=exc.hint) from None
        self.registry._sleep(self.failures, exc.wait)

    def progressed(self) -> None:
        """Real progress (bytes past any reached before): the budget is whole again."""
        self.failures = 0


class _FileSlice:
    """*length* bytes of a file from *offset*: a request body that streams, never loads. Each
    read reports the block before it as sent to *pace* (http.client reads the next block once
    the last one is on the wire), so an upload to a registry that reads slowly is abandoned."""

    def __init__(self, source: Source, offset: int, length: int) -> None:
        try:
            self._file = open(source, "rb") if isinstance(source, (str, Path)) else source()  # noqa: SIM115
            self._file.seek(offset)
        except OSError as exc:
            raise RegistryError(f"cannot read the blob to push from {source}: {exc.strerror or exc}") from None
        self._left = length
        self._handed = 0
        self.pace: _Pace | None = None

    def read(self, n: int = -1) -> bytes:
        if self.pace is not None:
            self.pace.moved(self._handed)
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._file.read(n) if n else b""
        if n and not data:
            raise RegistryError("the file being pushed got shorter while it was read")
        self._left -= len(data)
        self._handed = len(data)
        if not self._left:
            self._file.close()
        return data

    def __len__(self) -> int:
        return self._left


class Registry:
    """One registry host. Thread-safe: transfer threads share one instance (and its pool).

    *limits* default to :meth:`Limits.from_env`; *retries* and *timeout* (connect, read),
    when given, override theirs.
    """

    def __init__(self, host: str, *, plain_http: bool = False, insecure: bool = False, auth: Auth | None = None,
                 retries: int | None = None, backoff: float = 0.2, timeout: float | tuple[float, float] | None = None,
                 chunk_size: int = DEFAULT_CHUNK, monolithic_max: int = MONOLITHIC_MAX, pool_size: int = 16,
                 limits: Limits | None = None) -> None:
        self.host = host
        self.base = f"{'http' if plain_http else 'https'}://{host}"
        self.verify = not insecure
        if insecure:  # asked for: do not warn about it on every request
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        self.auth = auth or Auth()
        self.limits = limits or Limits.from_env()
        self.retries = self.limits.retries if retries is None else retries
        # One socket wait lasts the read timeout, or the stall timeout where a user set that lower.
        self._read_limit = "read_timeout" if self.limits.read_timeout <= self.limits.stall_timeout else "stall_timeout"
        self.timeout = timeout if timeout is not None else (
            self.limits.connect_timeout, getattr(self.limits, self._read_limit))
        self.backoff = backoff
        self.chunk_size, self.monolithic_max = chunk_size, monolithic_max
        self.session = requests.Session()
        adapter = _Adapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "modelbuild"
        # Nothing compressed: a manifest's digest is of its bytes, and a gzip bomb is no risk.
        self.session.headers["Accept-Encoding"] = "identity"
        self._watchdog = _Watchdog(self.limits.stall_timeout)

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
        """Back off before the next attempt; a Retry-After is honoured up to the stall timeout
        (a registry asking for an hour is treated as stalled, not obeyed)."""
        if wait is None:
            wait = self.backoff * (2 ** (failures - 1)) * random.uniform(0.5, 1.5)
        time.sleep(min(wait, MAX_WAIT, self.limits.stall_timeout))

    def _timed_out(self, exc: Exception) -> _Slow:
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            seconds = self.timeout[0] if isinstance(self.timeout, tuple) else self.timeout
            return _Slow(f"no connection within {seconds:g} s (the connect timeout)",
                         hint=f"set {_ENV['connect_timeout']} to raise it")
        seconds = self.timeout[1] if isinstance(self.timeout, tuple) else self.timeout
        name = self._read_limit.replace("_", " ")
        return _Slow(f"nothing moved for {seconds:g} s (the {name})", hint=f"set {_ENV[self._read_limit]} to raise it")

    def _watch(self) -> _Pace:
        pace = _Pace(self.limits, self.timeout[1] if isinstance(self.timeout, tuple) else self.timeout)
        self._watchdog.watch(pace)
        return pace

    def _exchange(self, method: str, url: str, headers: dict[str, str], body: Any, op: str, repo: str,
                  pace: _Pace) -> requests.Response:
        """One request and its response headers, following a GET's or HEAD's redirects
        ourselves (at most ``MAX_REDIRECTS``; credentials only to the registry's own origin;
        a redirect's body is never read: requests would read it whole, however large)."""
        origin = urlsplit(url)[:2]
        for _ in range(MAX_REDIRECTS + 1):
            data = body() if callable(body) else body
            if isinstance(data, _FileSlice):
                data.pace = pace
            _current.pace = pace
            try:
                resp = self.session.request(method, url, headers=headers, data=data, stream=True, verify=self.verify,
                                            timeout=self.timeout, allow_redirects=False)
            except requests.exceptions.SSLError as exc:
                if pace.cut:
                    raise pace.stalled() from None
                raise self._fail(op, repo, f"TLS error ({type(exc).__name__})",
                                 hint="for a registry without a valid certificate use insecure, without TLS plain-http") from None
            except (requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout) as exc:
                raise self._timed_out(exc) from None
            except _TRANSIENT as exc:
                if pace.cut:
                    raise pace.stalled() from None
                if _timed_out_sending(exc):
                    raise self._timed_out(requests.exceptions.ReadTimeout()) from None
                raise _Retry(f"connection error ({type(exc).__name__})") from None
            except (requests.RequestException, ValueError) as exc:  # a URL or header no request can carry
                raise self._fail(op, repo, f"cannot send the request: {type(exc).__name__}: {_clip(exc)}") from None
            finally:
                _current.pace = None
            pace.last = time.monotonic()  # the headers came: progress
            if method not in ("GET", "HEAD") or resp.status_code not in (301, 302, 303, 307, 308) \
                    or "Location" not in resp.headers:
                return resp
            resp.close()
            url = urljoin(url, resp.headers["Location"])
            if urlsplit(url).scheme not in ("http", "https"):
                raise self._fail(op, repo, f"redirected to {_clip(url)}, which is not an HTTP URL")
            if urlsplit(url)[:2] != origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        raise self._fail(op, repo, f"more than {MAX_REDIRECTS} redirects")

    def _send(self, method: str, url: str, *, op: str, repo: str, scopes: list[str],
              headers: dict[str, str] | None = None, body: Callable[[], Any] | bytes | None = None,
              stream: bool = False, pace: _Pace | None = None) -> requests.Response:
        """One request, answering the registry's auth challenge once. Raises :class:`_Retry`
        for what is worth retrying, returns any other response. Its body has been read (at
        most the manifest limit), so a truncated one is retried here too, unless *stream*
        and the status is 200 or 206: then the caller reads it, pacing it with *pace* (the
        caller's, to mark done when it is through; else one of our own)."""
        own = pace is None
        pace = pace or self._watch()
        try:
            answered: str | None = None
            while True:
                h = dict(headers or {})
                if authz := answered or self.auth.header(scopes):
                    h["Authorization"] = authz
                resp = self._exchange(method, url, h, body, op, repo, pace)
                if resp.status_code != 401 or answered is not None or "WWW-Authenticate" not in resp.headers:
                    break
                resp.close()
                answered = self._answer(resp.headers["WWW-Authenticate"], scopes, op, repo, pace)
            if not stream or resp.status_code not in (200, 206):
                self._read_whole(resp, op, repo, pace, strict=200 <= resp.status_code < 300)
        finally:
            if own:
                pace.done = True
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

    def _answer(self, challenge: str, scopes: list[str], op: str, repo: str, pace: _Pace) -> str:
        """The Authorization header answering *challenge*; the token answer is read like any
        body kept in memory (bounded, paced, on a watched connection)."""
        limit = self.limits.max_manifest

        def read_token(resp: requests.Response) -> bytes:
            try:
                return _read_limited(resp, limit, pace)
            except _TooLarge:
                raise AuthError(f"the token service of {self.host} answered with more than {limit} bytes",
                                hint=f"set {_ENV['max_manifest']} to raise the limit") from None
            except _Slow as exc:
                raise TokenServiceUnavailable(f"the token service of {self.host} is too slow: {exc.detail}",
                                              hint=exc.hint) from None

        _current.pace = pace
        try:
            return self.auth.answer(self.session, self.host, challenge, scopes, verify=self.verify,
                                    timeout=self.timeout, read_body=read_token)
        except TokenServiceUnavailable as exc:
            raise _Retry(exc.message, hint=exc.hint) from None
        except AuthError as exc:
            raise self._fail(op, repo, exc.message, RegistryAuthError, exc.hint) from None
        finally:
            _current.pace = None
            pace.last = time.monotonic()

    def _read_whole(self, resp: requests.Response, op: str, repo: str, pace: _Pace, *, strict: bool) -> None:
        """Read a body kept in memory into *resp* (``resp.content`` then works as usual).
        Past the manifest limit a success (*strict*) is an error and an error's body is
        dropped; the client stops at limit + 1 bytes whatever the transfer encoding."""
        limit = self.limits.max_manifest
        try:
            data = _read_limited(resp, limit, pace)
        except _TooLarge:
            resp.close()
            if strict:
                raise self._fail(op, repo, f"the registry's answer is larger than {limit} bytes, the manifest limit",
                                 hint=f"set {_ENV['max_manifest']} to raise it") from None
            data = b""
        except _Slow:
            resp.close()
            raise
        except _TRANSIENT as exc:
            resp.close()
            if pace.cut:
                raise pace.stalled() from None
            if isinstance(exc, requests.exceptions.ReadTimeout):
                raise self._timed_out(exc) from None
            raise _Retry(f"connection error while reading the answer ({type(exc).__name__})") from None
        resp._content = data  # what requests' own .content would hold, read within bounds
        resp._content_consumed = True

    def _request(self, method: str, url: str, *, op: str, repo: str, scopes: list[str],
                 budget: _Budget | None = None, **kw: Any) -> requests.Response:
        """:meth:`_send` with retries drawn on *budget* (a fresh one if none); raises
        :class:`RegistryError` when it is spent."""
        budget = budget or _Budget(self, op, repo)
        while True:
            try:
                return self._send(method, url, op=op, repo=repo, scopes=scopes, **kw)
            except _Retry as exc:
                budget.failed(exc)

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
    def has_blob(self, repo: str, digest: str, *, budget: _Budget | None = None) -> bool:
        """HEAD the blob: True when the registry has it in *repo*."""
        op = f"check blob {digest}"
        resp = self._request("HEAD", self._url(repo, "blobs", digest), op=op, repo=repo, scopes=self._scopes(repo),
                             budget=budget)
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
        budget = _Budget(self, op, repo)
        restarts, reported = 0, [0]

        def advance(offset: int) -> None:  # progress in bytes, never counting a byte twice
            offset = min(offset, size)
            if progress and offset > reported[0]:
                progress(offset - reported[0])
                reported[0] = offset

        while True:
            try:
                location = self._start_upload(repo, op, budget)
                if size > self.monolithic_max:
                    location = self._push_chunks(repo, size, source, op, location, advance, budget)
                self._complete(repo, digest, size, source, op, location, monolithic=size <= self.monolithic_max)
                advance(size)
                return True
            except _Retry as exc:
                if self.has_blob(repo, digest, budget=budget):  # only the answer to the final PUT was lost
                    advance(size)
                    return True
                restarts += 1  # never given back: a registry losing every upload at the end is given up on
                if restarts > self.retries:
                    raise self._fail(op, repo, f"{exc.detail}; gave up after {restarts} upload attempts",
                                     hint=exc.hint) from None
                budget.failed(exc)

    def _start_upload(self, repo: str, op: str, budget: _Budget) -> str:
        resp = self._request("POST", self._url(repo, "blobs", "uploads/"), op=op, repo=repo,
                             scopes=self._scopes(repo, True), budget=budget)
        if resp.status_code != 202 or "Location" not in resp.headers:
            raise self._fail(op, repo, f"starting the upload: {_error_detail(resp)}")
        return self._location(resp.headers["Location"], self.base + "/", op, repo)

    def _location(self, value: str, base: str, op: str, repo: str) -> str:
        """An upload URL the registry named, resolved; one that is not HTTP is refused here,
        not as a crash inside requests."""
        url = urljoin(base, value)
        if urlsplit(url).scheme not in ("http", "https"):
            raise self._fail(op, repo, f"the registry named an upload URL that is not HTTP: {_clip(url)}")
        return url

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
            raise self._fail(op, repo, f"the registry stored {_clip(got)}", DigestMismatchError)

    def _push_chunks(self, repo: str, size: int, source: Source, op: str, location: str,
                     advance: Callable[[int], None], budget: _Budget) -> str:
        """PATCH the blob in chunks; after a failure ask the upload URL how much arrived.
        Returns the upload URL for the final PUT; raises :class:`_Retry` to start over. A
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
                                  body=lambda start=start, n=n: _FileSlice(source, start, n))
                if resp.status_code in (400, 404) and "BLOB_UPLOAD" in _error_detail(resp):
                    raise _Retry(_error_detail(resp), 0)
                if resp.status_code == 416:
                    raise _Retry("416 Range Not Satisfiable")
                if resp.status_code != 202:
                    raise self._fail(op, repo, f"uploading bytes {offset}-{offset + n - 1}: {_error_detail(resp)}")
                new = _range_end(resp.headers.get("Range"), offset + n)
                if new > best:
                    budget.progressed()
                else:
                    budget.failed(_Retry("the registry acknowledged a chunk but no byte past what it had"))
            except _Retry as exc:
                budget.failed(exc)
                resp = self._request("GET", location, op=op, repo=repo, scopes=scopes, budget=budget)
                if resp.status_code != 204:
                    raise _Retry(f"resuming the upload: {_error_detail(resp)}", 0) from None
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
                if os.environ.get("MODELBUILD_FSYNC", "1") != "0":
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
        budget, best = _Budget(self, op, repo), offset
        while offset < size:
            headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
            pace = self._watch()
            try:
                resp = self._send("GET", url, op=op, repo=repo, scopes=self._scopes(repo), headers=headers,
                                  stream=True, pace=pace)
                try:
                    offset, hasher = self._start_body(resp, op, repo, digest, size, offset, hasher, rewind)
                    read = _reader(resp, pace)
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
                        raise _Retry(f"the body ended at byte {offset} of {size}")
                finally:
                    resp.close()
            except (_Retry, *_TRANSIENT) as exc:
                failure = exc if isinstance(exc, _Retry) else pace.stalled() if pace.cut else (
                    self._timed_out(exc) if isinstance(exc, requests.exceptions.ReadTimeout) else
                    _Retry(f"connection error ({type(exc).__name__})"))
                if not isinstance(failure, _Slow) and offset >= best + max(1, min(PROGRESS, (size - best) // 4)):
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
            raise self._fail(op, repo, _error_detail(resp))
        start, total = _content_range(resp.headers.get("Content-Range"), offset) if resp.status_code == 206 else (0, None)
        if resp.status_code == 200 and offset:
            if rewind is None:
                raise self._fail(op, repo, "the registry ignored the Range of a resumed download")
            hasher, offset = rewind(), 0
        elif start != offset:
            raise self._fail(op, repo, f"asked for bytes from {offset}, got others")
        announced = _header_int(resp.headers.get("Content-Length"))
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
            raise self._fail(op, repo, f"{_clip(ref, 80)!r} is neither a tag nor a sha256 digest")

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
            raise self._fail(op, repo, f"the registry stored {_clip(got)}, not {digest}", DigestMismatchError)
        return digest

    def get_manifest(self, repo: str, ref: str, accept: Iterable[str] = DEFAULT_ACCEPT) -> tuple[bytes, str, str]:
        """``(bytes, media type, digest)`` of a manifest or index, verified against the digest
        asked for and the registry's ``Docker-Content-Digest``, and checked to be a JSON
        object whose fields have the types the image spec gives them (so no caller meets a
        list where a descriptor should be)."""
        op = f"pull manifest {_clip(ref, 80)}"
        self._check_ref(op, repo, ref)
        resp = self._request("GET", self._url(repo, "manifests", ref), op=op, repo=repo, scopes=self._scopes(repo),
                             headers={"Accept": ", ".join(accept)})
        if resp.status_code != 200:
            raise self._fail(op, repo, _error_detail(resp))
        data = resp.content  # read by _send, within the manifest limit
        digest = sha256_bytes(data)
        for expected in (ref if is_digest(ref) else None, resp.headers.get("Docker-Content-Digest")):
            if expected and expected.startswith("sha256:") and expected != digest:
                raise self._fail(op, repo, f"the manifest received has digest {digest}, not {_clip(expected)}",
                                 DigestMismatchError)
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise self._fail(op, repo, f"manifest {digest} is not JSON ({_clip(exc, 80)})") from None
        if problem := _manifest_problem(doc):
            raise self._fail(op, repo, f"manifest {digest} {problem}")
        media_type = _clip(resp.headers.get("Content-Type", "").split(";")[0].strip(), 200)
        if media_type in ("", "application/json", "application/octet-stream"):
            media_type = doc.get("mediaType") or media_type
        return data, media_type, digest

    def head_manifest(self, repo: str, ref: str, accept: Iterable[str] = DEFAULT_ACCEPT) -> tuple[str, str, int] | None:
        """``(digest, media type, size)`` of a manifest, or None where there is none."""
        op = f"check manifest {_clip(ref, 80)}"
        self._check_ref(op, repo, ref)
        resp = self._request("HEAD", self._url(repo, "manifests", ref), op=op, repo=repo, scopes=self._scopes(repo),
                             headers={"Accept": ", ".join(accept)})
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._fail(op, repo, _error_detail(resp))
        digest = resp.headers.get("Docker-Content-Digest") or (ref if is_digest(ref) else "")
        if digest and not is_digest(digest):
            raise self._fail(op, repo, f"the registry answered a malformed digest {_clip(digest)}")
        return digest, _clip(resp.headers.get("Content-Type", ""), 200), _header_int(resp.headers.get("Content-Length")) or 0


def _error_detail(resp: requests.Response) -> str:
    """``404 Not Found (MANIFEST_UNKNOWN: manifest unknown)`` from a registry error body; the
    body is the registry's, so any JSON shape is tolerated and what is shown is clipped."""
    text = f"{resp.status_code} {_clip(resp.reason or '', 80)}".strip()
    try:
        doc = json.loads(resp.content) if resp.content else None
    except (ValueError, RecursionError, RuntimeError, requests.RequestException):
        return text
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        text += f" ({_clip(errors[0].get('code', '?'), 60)}: {_clip(errors[0].get('message', ''), 200)})"
    return text


def _reader(resp: requests.Response, pace: _Pace) -> Callable[[int], bytes]:
    """``read(n)``: the body as it arrives, up to *n* bytes a call. ``iter_content`` fills each
    chunk before handing it over and loses the filled part when the connection drops;
    ``read1`` hands over what came, so a resumed download asks only for the bytes really
    missing. urllib3's errors become requests' (what the retry loops catch); any error or
    end of body after the watchdog cut the socket is the stall it was."""
    raw = resp.raw
    read = getattr(raw, "read1", None) or raw.read

    def read_some(n: int) -> bytes:
        try:
            chunk = read(n)
        except urllib3.exceptions.ReadTimeoutError as exc:
            if pace.cut:
                raise pace.stalled() from None
            raise requests.exceptions.ReadTimeout(exc) from None
        except urllib3.exceptions.ProtocolError as exc:
            if pace.cut:
                raise pace.stalled() from None
            raise requests.exceptions.ChunkedEncodingError(exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if pace.cut:
                raise pace.stalled() from None
            raise requests.ConnectionError(exc) from None
        if not chunk and pace.cut:
            raise pace.stalled()
        return chunk

    return read_some


def _read_limited(resp: requests.Response, limit: int, pace: _Pace) -> bytes:
    """A body kept in memory, never past *limit* + 1 bytes whatever ``Content-Length`` or the
    chunked encoding say (:class:`_TooLarge` then); paced like any transfer."""
    announced = _header_int(resp.headers.get("Content-Length"))
    if announced is not None and announced > limit and resp.request.method != "HEAD":  # a HEAD's is the GET's
        raise _TooLarge
    read = _reader(resp, pace)
    buf = bytearray()
    while chunk := read(min(CHUNK, limit + 1 - len(buf))):
        pace.moved(len(chunk))
        buf += chunk
        if len(buf) > limit:
            raise _TooLarge
    return bytes(buf)


def _timed_out_sending(exc: BaseException) -> bool:
    """Whether a requests ConnectionError is a socket timeout while sending (urllib3 reports
    it as a connection aborted by a ``TimeoutError``)."""
    cause = exc.args[0] if exc.args else None
    return any(isinstance(arg, TimeoutError) for arg in getattr(cause, "args", ()))


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


def _clip(value: object, width: int = 120) -> str:
    """Text a registry sent, fit for a one-line message: escaped when it holds anything not
    printable (a newline, a terminal escape), cut when long."""
    text = str(value)
    if not text.isprintable():
        text = ascii(text)[1:-1]
    return text if len(text) <= width else f"{text[:width]}… ({len(text)} characters)"


def _header_int(value: str | None) -> int | None:
    """A non-negative integer header (``Content-Length``), or None where it is absent or not one."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _descriptor_problem(desc: Any) -> str | None:
    """What makes *desc* unusable as a content descriptor, or None."""
    if not isinstance(desc, dict):
        return f"is {_json_kind(desc)}, not a descriptor object"
    if not isinstance(desc.get("digest"), str):
        return "has no digest string"
    size = desc.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_SIZE:
        return f"has a size that is not an integer from 0 to {MAX_SIZE}"
    if not isinstance(desc.get("mediaType", ""), str):
        return "has a mediaType that is not a string"
    if not isinstance(desc.get("platform", {}), dict):
        return "has a platform that is not an object"
    return _annotations_problem(desc.get("annotations"))


def _annotations_problem(annotations: Any) -> str | None:
    if annotations is None:
        return None
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        return "has annotations that are not an object of strings"
    return None


def _manifest_problem(doc: Any) -> str | None:
    """What makes *doc* unusable as an image manifest or index (a field of the wrong JSON
    type), or None: what callers index into is checked here, once."""
    if not isinstance(doc, dict):
        return f"is {_json_kind(doc)}, not a JSON object"
    for key in ("mediaType", "artifactType"):
        if not isinstance(doc.get(key, ""), str):
            return f"has a {key} that is not a string"
    version = doc.get("schemaVersion", 2)
    if not isinstance(version, int) or isinstance(version, bool):
        return "has a schemaVersion that is not an integer"
    for key in ("config", "subject"):
        if doc.get(key) is not None and (problem := _descriptor_problem(doc[key])):
            return f"has a {key} that {problem}"
    for key in ("layers", "manifests"):
        items = doc.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            return f"has {key} that is {_json_kind(items)}, not a list"
        for i, desc in enumerate(items):
            if problem := _descriptor_problem(desc):
                return f"has {key}[{i}] that {problem}"
    if problem := _annotations_problem(doc.get("annotations")):
        return problem
    return None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


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
