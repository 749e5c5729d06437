"""How much and how long the registry client puts up with: limits, and the watch on every attempt.

A registry is not trusted to be well-behaved (the "hostile registry" review). Every wait is
bounded by :class:`Limits`, each settable by an environment variable (``docs/registry.md``).
Each transfer attempt (one request and its response body) is paced by a :class:`Pace`: it is
abandoned when nothing moves for the stall timeout, or when less than the minimum rate moves
over the rate window. A read that blocks inside http.client (a peer dripping the bytes of a
header line or of the chunked framing) never reaches our loops, so a :class:`Watchdog` cuts
the socket of an attempt that stalls: the watched urllib3 connections tell it which socket
carries which attempt. The failed attempts of one operation draw on one :class:`Budget`.

What a failed attempt is worth retrying for is a :class:`Retry`; one abandoned for slowness
is a :class:`Slow`, which never counts as progress. :mod:`modelbuild.oci.registry` turns
them into the errors the user sees.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

from modelbuild.limits import env_int, env_number, raise_hint

MiB = 1 << 20
BODY_MAX = 4 * MiB  # manifests and error bodies: the spec's recommended manifest limit
MAX_WAIT = 60.0  # the longest wait between attempts, whatever a registry asks for

ENV_VARS = {  # Limits field → the environment variable that sets it
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
        """The defaults, each replaced by its environment variable when set, read through
        :mod:`modelbuild.limits`: a value that is not a number of the right kind is a usage
        error naming the variable, not a crash deep inside a transfer."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            var, zero_ok = ENV_VARS[f.name], f.name in _MAY_BE_ZERO
            if f.name in _WHOLE:
                values[f.name] = env_int(var, f.default, environ, zero_ok=zero_ok)  # type: ignore[arg-type]
            else:
                values[f.name] = env_number(var, f.default, environ, integer=False, zero_ok=zero_ok)  # type: ignore[arg-type]
        return cls(**values)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (value >= 0 if f.name in _MAY_BE_ZERO else value > 0) or value == math.inf:  # NaN fails both
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


# -- failed attempts ----------------------------------------------------------------------
class Retry(Exception):
    """One failed attempt worth retrying; *wait* is the server's Retry-After, if any; *hint*
    says which setting to change when the failure is a limit that tripped."""

    def __init__(self, detail: str, wait: float | None = None, hint: str | None = None) -> None:
        super().__init__(detail)
        self.detail, self.wait, self.hint = detail, wait, hint


class Slow(Retry):
    """An attempt abandoned for moving too slowly (a timeout, the stall timeout, the minimum
    rate): whatever it moved, it never counts as progress, so a drip cannot go on forever."""


class Budget:
    """The failed attempts one operation has left. Every retry loop of an operation (a blob's
    download; a blob's upload with its POST, PATCHes, status checks and final PUT) draws on
    one budget, so a registry that fails everything ends it after ``retries + 1`` failed
    attempts in all, never ``(retries + 1)²``; real progress gives the budget back.

    *fail* makes the error raised when the budget is spent (from a detail and a hint: the
    caller names the registry and operation); *sleep* waits before the next attempt, given
    the failures so far and the server's Retry-After."""

    __slots__ = ("retries", "fail", "sleep", "failures")

    def __init__(self, retries: int, fail: Callable[[str, str | None], Exception],
                 sleep: Callable[[int, float | None], None]) -> None:
        self.retries, self.fail, self.sleep, self.failures = retries, fail, sleep, 0

    def failed(self, exc: Retry) -> None:
        """Count a failed attempt and wait before the next; raises when none is left."""
        self.failures += 1
        if self.failures > self.retries:
            raise self.fail(f"{exc.detail}, after {self.failures} attempts", exc.hint) from None
        self.sleep(self.failures, exc.wait)

    def progressed(self) -> None:
        """Real progress (bytes past any reached before): the budget is whole again."""
        self.failures = 0


# -- pacing: every transfer attempt is watched --------------------------------------------
class Pace:
    """The progress of one attempt (one request and its response body), as the read and
    write loops report it: nothing for ``stall_timeout``, or less than ``min_rate`` over the
    last ``rate_window``, raises :class:`Slow`. The window slides: a mark of (time, bytes)
    is kept every quarter window, and the rate is taken since the newest mark at least a
    window old. Per chunk: one ``monotonic()`` and a few comparisons.

    The registry's :class:`Watchdog` reads ``last`` and cuts ``conn``'s socket when the
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
            raise Slow(f"{self.total - then} bytes moved in {now - since:.1f} s, under the minimum rate of "
                       f"{limits.min_rate:g} bytes/s", hint=f"set {ENV_VARS['min_rate']} to lower it")

    def stalled(self, now: float | None = None) -> Slow:
        idle = (time.monotonic() if now is None else now) - self.last
        return Slow(f"nothing moved for {idle:.1f} s, over the stall timeout of {self.limits.stall_timeout:g} s",
                    hint=raise_hint(ENV_VARS["stall_timeout"]))


_current = threading.local()  # the Pace of the request this thread is sending


@contextmanager
def carrying(pace: Pace) -> Iterator[None]:
    """While the block runs, the connection this thread sends a request on is *pace*'s."""
    _current.pace = pace
    try:
        yield
    finally:
        _current.pace = None


class _Watched:
    """A urllib3 connection that tells the current attempt's :class:`Pace` it carries it, so
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


class WatchedAdapter(HTTPAdapter):
    """requests' adapter with watched connections (direct connections; a proxy's are not)."""

    def init_poolmanager(self, *args: Any, **kw: Any) -> None:
        super().init_poolmanager(*args, **kw)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class Watchdog:
    """Cuts the socket of an attempt that moved nothing for the stall timeout. A blocking read
    returns whenever *a* byte arrives, so a peer dripping the bytes of a header line or of a
    chunk-size line would hold http.client for hours with every read within its timeout; the
    read loops cannot check what they never see. One daemon thread per registry, running
    only while attempts are in flight."""

    def __init__(self, stall: float) -> None:
        self.tick = min(1.0, stall / 4)
        self.paces: set[Pace] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def watch(self, pace: Pace) -> None:
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


def reader(resp: requests.Response, pace: Pace) -> Callable[[int], bytes]:
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


__all__ = ["BODY_MAX", "ENV_VARS", "MAX_WAIT", "Budget", "Limits", "Pace", "Retry", "Slow", "WatchedAdapter",
           "Watchdog", "carrying", "reader"]
