"""One request to a registry, sent within limits: the half of :class:`~modelbuild.oci.registry.Registry`
that talks HTTP, apart from the half that knows blobs and manifests.

A :class:`Transport` holds the session (watched connections, see :mod:`modelbuild.oci.pacing`)
and sends one request at a time: it answers the registry's auth challenge once, follows a
GET's or HEAD's redirects itself (credentials only to the registry's own origin), reads a body
kept in memory (manifest, error, token answer) up to the manifest limit and no further, turns
what is worth retrying (5xx, 429, a dropped or timed-out connection, a truncated body) into a
:class:`~modelbuild.oci.pacing.Retry` drawn on the operation's budget, and names the registry,
repository and operation, secrets masked, in the :class:`RegistryError` raised when it fails.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from modelbuild.digests import CHUNK
from modelbuild.errors import EXIT_BUILD_FAILED, ModelbuildError
from modelbuild.limits import raise_hint
from modelbuild.oci.auth import Auth, AuthError, TokenServiceUnavailable
from modelbuild.oci.pacing import (
    ENV_VARS,
    MAX_WAIT,
    Budget,
    Limits,
    Pace,
    Retry,
    Slow,
    Watchdog,
    WatchedAdapter,
    carrying,
    reader,
)
from modelbuild.oci.verify import shown

MAX_REDIRECTS = 10
TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
             requests.exceptions.ContentDecodingError)  # failures of an attempt, worth another
Source = str | Path | Callable[[], BinaryIO]


class RegistryError(ModelbuildError):
    """A registry operation failed after its retries, or cannot succeed (404, denied)."""

    exit_code = EXIT_BUILD_FAILED


class RegistryAuthError(RegistryError):
    """No credentials, or the registry refused them."""


class DigestMismatchError(RegistryError):
    """The bytes received do not have the digest asked for; nothing was kept."""


class SizeMismatchError(DigestMismatchError):
    """The registry announced a blob size other than its descriptor's: refused before reading."""


class _TooLarge(Exception):
    """A body kept in memory would pass the manifest limit."""


class FileSlice:
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
        self.pace: Pace | None = None

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


class Transport:
    """Requests to one registry host within :class:`~modelbuild.oci.pacing.Limits`. Thread-safe:
    transfer threads share one instance (and its connection pool).

    *limits* default to :meth:`Limits.from_env`; *retries* and *timeout* (connect, read),
    when given, override theirs.
    """

    def __init__(self, host: str, *, plain_http: bool = False, insecure: bool = False, auth: Auth | None = None,
                 retries: int | None = None, backoff: float = 0.2, timeout: float | tuple[float, float] | None = None,
                 pool_size: int = 16, limits: Limits | None = None) -> None:
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
        self.session = requests.Session()
        adapter = WatchedAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "modelbuild"
        # Nothing compressed: a manifest's digest is of its bytes, and a gzip bomb is no risk.
        self.session.headers["Accept-Encoding"] = "identity"
        self._watchdog = Watchdog(self.limits.stall_timeout)

    def close(self) -> None:
        self.session.close()

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

    def _budget(self, op: str, repo: str) -> Budget:
        """A fresh retry budget for one operation; spent, it fails naming *op* and *repo*."""
        return Budget(self.retries, lambda detail, hint: self._fail(op, repo, detail, hint=hint), self._sleep)

    def _timed_out(self, exc: Exception) -> Slow:
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            seconds = self.timeout[0] if isinstance(self.timeout, tuple) else self.timeout
            return Slow(f"no connection within {seconds:g} s (the connect timeout)",
                        hint=raise_hint(ENV_VARS["connect_timeout"]))
        seconds = self.timeout[1] if isinstance(self.timeout, tuple) else self.timeout
        name = self._read_limit.replace("_", " ")
        return Slow(f"nothing moved for {seconds:g} s (the {name})", hint=raise_hint(ENV_VARS[self._read_limit]))

    def _watch(self) -> Pace:
        pace = Pace(self.limits, self.timeout[1] if isinstance(self.timeout, tuple) else self.timeout)
        self._watchdog.watch(pace)
        return pace

    def _exchange(self, method: str, url: str, headers: dict[str, str], body: Any, op: str, repo: str,
                  pace: Pace) -> requests.Response:
        """One request and its response headers, following a GET's or HEAD's redirects
        ourselves (at most ``MAX_REDIRECTS``; credentials only to the registry's own origin;
        a redirect's body is never read: requests would read it whole, however large)."""
        origin = urlsplit(url)[:2]
        for _ in range(MAX_REDIRECTS + 1):
            data = body() if callable(body) else body
            if isinstance(data, FileSlice):
                data.pace = pace
            try:
                with carrying(pace):
                    resp = self.session.request(method, url, headers=headers, data=data, stream=True,
                                                verify=self.verify, timeout=self.timeout, allow_redirects=False)
            except requests.exceptions.SSLError as exc:
                if pace.cut:
                    raise pace.stalled() from None
                raise self._fail(op, repo, f"TLS error ({type(exc).__name__})",
                                 hint="for a registry without a valid certificate use insecure, without TLS plain-http") from None
            except (requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout) as exc:
                raise self._timed_out(exc) from None
            except TRANSIENT as exc:
                if pace.cut:
                    raise pace.stalled() from None
                if _timed_out_sending(exc):
                    raise self._timed_out(requests.exceptions.ReadTimeout()) from None
                raise Retry(f"connection error ({type(exc).__name__})") from None
            except (requests.RequestException, ValueError) as exc:  # a URL or header no request can carry
                raise self._fail(op, repo, f"cannot send the request: {type(exc).__name__}: {shown(exc)}") from None
            pace.last = time.monotonic()  # the headers came: progress
            if method not in ("GET", "HEAD") or resp.status_code not in (301, 302, 303, 307, 308) \
                    or "Location" not in resp.headers:
                return resp
            resp.close()
            url = urljoin(url, resp.headers["Location"])
            if urlsplit(url).scheme not in ("http", "https"):
                raise self._fail(op, repo, f"redirected to {shown(url)}, which is not an HTTP URL")
            if urlsplit(url)[:2] != origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        raise self._fail(op, repo, f"more than {MAX_REDIRECTS} redirects")

    def _send(self, method: str, url: str, *, op: str, repo: str, scopes: list[str],
              headers: dict[str, str] | None = None, body: Callable[[], Any] | bytes | None = None,
              stream: bool = False, pace: Pace | None = None) -> requests.Response:
        """One request, answering the registry's auth challenge once. Raises :class:`Retry`
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
                      "the registry requires credentials and none were found for it") + f" [{error_detail(resp)}]"
            raise self._fail(op, repo, detail, RegistryAuthError, hint=f"log in with `docker login {self.host}`")
        if resp.status_code == 429 or (resp.status_code >= 500 and resp.status_code not in (501, 505)):
            detail = error_detail(resp)
            resp.close()
            raise Retry(detail, _retry_after(resp.headers.get("Retry-After")))
        return resp

    def _answer(self, challenge: str, scopes: list[str], op: str, repo: str, pace: Pace) -> str:
        """The Authorization header answering *challenge*; the token answer is read like any
        body kept in memory (bounded, paced, on a watched connection)."""
        limit = self.limits.max_manifest

        def read_token(resp: requests.Response) -> bytes:
            try:
                return _read_limited(resp, limit, pace)
            except _TooLarge:
                raise AuthError(f"the token service of {self.host} answered with more than {limit} bytes",
                                hint=raise_hint(ENV_VARS["max_manifest"])) from None
            except Slow as exc:
                raise TokenServiceUnavailable(f"the token service of {self.host} is too slow: {exc.detail}",
                                              hint=exc.hint) from None

        try:
            with carrying(pace):
                return self.auth.answer(self.session, self.host, challenge, scopes, verify=self.verify,
                                        timeout=self.timeout, read_body=read_token)
        except TokenServiceUnavailable as exc:
            raise Retry(exc.message, hint=exc.hint) from None
        except AuthError as exc:
            raise self._fail(op, repo, exc.message, RegistryAuthError, exc.hint) from None
        finally:
            pace.last = time.monotonic()

    def _read_whole(self, resp: requests.Response, op: str, repo: str, pace: Pace, *, strict: bool) -> None:
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
                                 hint=raise_hint(ENV_VARS["max_manifest"])) from None
            data = b""
        except Slow:
            resp.close()
            raise
        except TRANSIENT as exc:
            resp.close()
            if pace.cut:
                raise pace.stalled() from None
            if isinstance(exc, requests.exceptions.ReadTimeout):
                raise self._timed_out(exc) from None
            raise Retry(f"connection error while reading the answer ({type(exc).__name__})") from None
        resp._content = data  # what requests' own .content would hold, read within bounds
        resp._content_consumed = True

    def _request(self, method: str, url: str, *, op: str, repo: str, scopes: list[str],
                 budget: Budget | None = None, **kw: Any) -> requests.Response:
        """:meth:`_send` with retries drawn on *budget* (a fresh one if none); raises
        :class:`RegistryError` when it is spent."""
        budget = budget or self._budget(op, repo)
        while True:
            try:
                return self._send(method, url, op=op, repo=repo, scopes=scopes, **kw)
            except Retry as exc:
                budget.failed(exc)

    def _url(self, repo: str, kind: str, ref: str = "") -> str:
        return f"{self.base}/v2/{repo}/{kind}/{ref}"

    @staticmethod
    def _scopes(repo: str, push: bool = False) -> list[str]:
        return [f"repository:{repo}:{'pull,push' if push else 'pull'}"]


def error_detail(resp: requests.Response) -> str:
    """``404 Not Found (MANIFEST_UNKNOWN: manifest unknown)`` from a registry error body; the
    body is the registry's, so any JSON shape is tolerated and what is shown is clipped."""
    text = f"{resp.status_code} {shown(resp.reason or '', 80)}".strip()
    try:
        doc = json.loads(resp.content) if resp.content else None
    except (ValueError, RecursionError, RuntimeError, requests.RequestException):
        return text
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        text += f" ({shown(errors[0].get('code', '?'), 60)}: {shown(errors[0].get('message', ''), 200)})"
    return text


def _read_limited(resp: requests.Response, limit: int, pace: Pace) -> bytes:
    """A body kept in memory, never past *limit* + 1 bytes whatever ``Content-Length`` or the
    chunked encoding say (:class:`_TooLarge` then); paced like any transfer."""
    announced = header_int(resp.headers.get("Content-Length"))
    if announced is not None and announced > limit and resp.request.method != "HEAD":  # a HEAD's is the GET's
        raise _TooLarge
    read = reader(resp, pace)
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


def header_int(value: str | None) -> int | None:
    """A non-negative integer header (``Content-Length``), or None where it is absent or not one."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


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


__all__ = ["DigestMismatchError", "FileSlice", "MAX_REDIRECTS", "RegistryAuthError", "RegistryError",
           "SizeMismatchError", "Source", "TRANSIENT", "Transport", "error_detail", "header_int"]
