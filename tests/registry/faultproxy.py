"""A small threaded HTTP proxy that puts a bad network between the client and a real registry.

At configurable rates it drops connections (before forwarding, or halfway through a request
body so the registry sees a partial upload), answers 500 or 429 itself, truncates response
bodies, or corrupts one byte of a response body. It can also throttle response bodies so a
test can kill a download halfway. It counts, per request path, the body bytes it forwarded
each way, so tests can assert how much a client really transferred (HEAD-skip, resume).

It speaks just enough HTTP/1.1 for registry clients: requests with ``Content-Length``
bodies, keep-alive to the client, one upstream connection per request.
"""

from __future__ import annotations

import http.client
import random
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Iterable

FAULTS = ("drop", "drop_before", "drop_mid", "500", "429", "truncate", "corrupt")
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


class FaultProxy:
    """``FaultProxy(("127.0.0.1", 5000), drop=0.1, ...)``; ``.host`` is what clients dial."""

    def __init__(self, upstream: tuple[str, int], *, seed: int = 0, retry_after: str = "0",
                 throttle: float | None = None, **rates: float) -> None:
        self.upstream = upstream
        self.rng = random.Random(seed)
        self.retry_after = retry_after
        self.throttle = throttle  # response body bytes per second, None: as fast as it goes
        self.rates: dict[str, float] = {}
        self.set_faults(**rates)
        self.scripted: list[str | None] = []  # faults for the next requests, in order
        self.lock = threading.Lock()
        self.up: Counter[str] = Counter()  # request body bytes forwarded, per path
        self.down: Counter[str] = Counter()  # response body bytes sent to the client, per path
        self.requests: Counter[tuple[str, str]] = Counter()  # (method, path)
        self.faults: Counter[str] = Counter()
        self.queries: list[tuple[str, str]] = []  # (method, full target) of every request
        self.active = 0  # requests being served
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    while proxy._serve_one(self.rfile, self.connection):
                        pass
                except (ConnectionError, OSError):
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    # -- control ----------------------------------------------------------------------
    def set_faults(self, **rates: float) -> None:
        unknown = set(rates) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {unknown}")
        self.rates = {k: v for k, v in rates.items() if v}

    def script(self, faults: Iterable[str | None]) -> None:
        """Apply these faults (None: none) to the next requests, before the random rates."""
        with self.lock:
            self.scripted.extend(faults)

    def reset(self) -> None:
        with self.lock:
            self.up.clear()
            self.down.clear()
            self.requests.clear()
            self.faults.clear()
            self.queries.clear()

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no request is being served (a killed client's is noticed on the next
        write), so counts reset afterwards hold only what comes next."""
        deadline = time.monotonic() + timeout
        while self.active and time.monotonic() < deadline:
            time.sleep(0.01)

    def bytes_up(self, match: str = "") -> int:
        with self.lock:
            return sum(n for p, n in self.up.items() if match in p)

    def bytes_down(self, match: str = "") -> int:
        with self.lock:
            return sum(n for p, n in self.down.items() if match in p)

    def count(self, method: str, match: str = "") -> int:
        with self.lock:
            return sum(n for (m, p), n in self.requests.items() if m == method and match in p)

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one request ------------------------------------------------------------------
    def _pick(self) -> str | None:
        with self.lock:
            if self.scripted:
                return self.scripted.pop(0)
            roll = self.rng.random()
            for kind, rate in self.rates.items():
                if roll < rate:
                    return kind
                roll -= rate
            return None

    def _serve_one(self, rfile, client: socket.socket) -> bool:
        """Serve one request; False when the client connection is done."""
        line = rfile.readline(65537)
        if not line.strip():
            return False
        with self.lock:
            self.active += 1
        try:
            return self._forward(line, rfile, client)
        finally:
            with self.lock:
                self.active -= 1

    def _forward(self, line: bytes, rfile, client: socket.socket) -> bool:
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers: list[tuple[str, str]] = []
        while True:
            h = rfile.readline(65537)
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        lower = {k.lower(): v for k, v in headers}
        length = int(lower.get("content-length", "0"))
        if "chunked" in lower.get("transfer-encoding", ""):
            client.sendall(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return False
        path = target.split("?", 1)[0]
        fault = self._pick()
        with self.lock:
            self.requests[(method, path)] += 1
            self.queries.append((method, target))
            if fault:
                self.faults[fault] += 1
        keep = lower.get("connection", "").lower() != "close"

        if fault in ("500", "429"):
            _drain(rfile, length)
            body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected by faultproxy"}]}'
            extra = f"Retry-After: {self.retry_after}\r\n" if fault == "429" else ""
            reason = "Too Many Requests" if fault == "429" else "Internal Server Error"
            client.sendall(f"HTTP/1.1 {fault} {reason}\r\nContent-Type: application/json\r\n{extra}"
                           f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            return keep
        if fault == "drop":  # halfway through the body where there is one, else before anything
            fault = "drop_mid" if length and self.rng.random() < 0.5 else "drop_before"
        if fault == "drop_mid" and not length:
            fault = "drop_before"
        if fault == "drop_before":
            _abort(client)  # before anything reached the registry
            return False

        up = socket.create_connection(self.upstream)
        try:
            head = f"{method} {target} HTTP/1.1\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in headers if k.lower() not in _HOP) + "Connection: close\r\n\r\n"
            up.sendall(head.encode("latin-1"))
            limit = self.rng.randrange(length) if fault == "drop_mid" else length
            sent = 0
            while sent < limit:
                chunk = rfile.read(min(1 << 20, limit - sent))
                if not chunk:
                    return False
                up.sendall(chunk)
                sent += len(chunk)
                with self.lock:
                    self.up[path] += len(chunk)
            if fault == "drop_mid":  # the registry got part of the body: a partial upload
                _abort(up)
                _abort(client)
                return False
            resp = http.client.HTTPResponse(up, method=method)
            resp.begin()
            out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
            no_body = method == "HEAD" or resp.status in (204, 304) or resp.status < 200
            body_len = None if no_body else resp.length
            buffered = None
            if not no_body and body_len is None:  # chunked or close-delimited: buffer it (small)
                buffered = resp.read()
                body_len = len(buffered)
                out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-length"]
                out_headers.append(("Content-Length", str(body_len)))
            status = f"HTTP/1.1 {resp.status} {resp.reason}\r\n"
            if no_body and "content-length" not in {k.lower() for k, _ in out_headers}:
                out_headers.append(("Content-Length", "0"))
            client.sendall((status + "".join(f"{k}: {v}\r\n" for k, v in out_headers) + "\r\n").encode("latin-1"))
            if no_body:
                return keep
            cut = body_len
            if fault == "truncate" and body_len:
                cut = self.rng.randrange(body_len)
            corrupt_at = self.rng.randrange(body_len) if fault == "corrupt" and body_len else -1
            done = 0
            started = time.monotonic()
            while done < cut:
                if buffered is not None:
                    chunk = buffered[done:cut]
                else:
                    chunk = resp.read(min(256 * 1024, cut - done))
                if not chunk:
                    return False
                if done <= corrupt_at < done + len(chunk):
                    i = corrupt_at - done
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1:]
                client.sendall(chunk)
                done += len(chunk)
                with self.lock:
                    self.down[path] += len(chunk)
                if self.throttle:
                    ahead = done / self.throttle - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            if cut != body_len:
                _abort(client)
                return False
            return keep
        finally:
            up.close()


def _drain(rfile, length: int) -> None:
    while length > 0:
        chunk = rfile.read(min(1 << 20, length))
        if not chunk:
            return
        length -= len(chunk)


def _abort(sock: socket.socket) -> None:
    """End the connection now (``close`` alone would wait for the handler's file objects).
    A FIN, not a reset: a reset would make the peer discard bytes it has received but not
    read yet, and the byte counts would no longer say what the client got."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
