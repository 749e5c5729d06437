"""A malicious registry for tests: answers any request with whatever a test scripted.

Per route (method and exact path) a test sets an :class:`Answer`: any status, headers and
body; the body sent with or without ``Content-Length``, chunked, padded to tens of MB without
holding them in memory, dripped one byte every N seconds, or not sent at all (a stall after
the headers). A route can also read a request body slowly, or never. The server counts what
it sent per path and notices when a client hangs up early, so tests can assert a client did
not read what it should not have.

Bounded by construction: it listens on 127.0.0.1 only; every loop in it (drip, stall, slow
read, padding) ends when the client hangs up, when the server is stopped, or after
``max_seconds``, whichever comes first; a socket write that blocks more than 5 s ends the
answer. Not a registry: nothing is stored.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

PAD = b" " * 65536  # padding (JSON whitespace) for huge bodies, sent block by block


@dataclass
class Answer:
    """What to answer to one request. ``body`` then ``pad`` bytes of whitespace form the body.

    length: the ``Content-Length`` to announce (None: the real length unless chunked; -1: none,
    the body then ends when the connection closes). chunked: send ``Transfer-Encoding:
    chunked``. stall: seconds to wait after the headers before sending anything (then the
    connection is closed). drip: seconds between body bytes, sent one at a time. read_body:
    how the request body is read: "all" (default), "never" (stall the upload), or a float, the
    seconds between single bytes read (drip the upload). close: close the connection after.
    drip_headers: seconds between the bytes of the status line and headers (a ``X-Pad``
    header of ``pad`` bytes makes them long), the body never comes.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    pad: int = 0
    length: int | None = None
    chunked: bool = False
    stall: float = 0.0
    drip: float = 0.0
    read_body: str | float = "all"
    close: bool = False
    drip_headers: float = 0.0


def json_answer(doc: object, status: int = 200, **kw: object) -> Answer:
    return Answer(status, {"Content-Type": "application/json"}, json.dumps(doc).encode(), **kw)  # type: ignore[arg-type]


class HostileRegistry:
    """``HostileRegistry()``: started on 127.0.0.1 at a free port; ``.host`` is what clients
    dial. ``route(method, path, answer)`` scripts a path (an :class:`Answer`, or a callable
    taking the request handler and returning one); anything unscripted is a 404."""

    def __init__(self, max_seconds: float = 20.0) -> None:
        self.max_seconds = max_seconds
        self.routes: dict[tuple[str, str], Answer | Callable[..., Answer]] = {}
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.sent: Counter[str] = Counter()  # body bytes sent, per path
        self.received: Counter[str] = Counter()  # request body bytes read, per path
        self.hung_up: Counter[str] = Counter()  # answers cut short because the client went away
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (ConnectionError, TimeoutError, OSError):
                    self.close_connection = True

            def do_GET(self) -> None:
                server._serve(self)

            do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def route(self, method: str, path: str, answer: Answer | Callable[..., Answer]) -> None:
        self.routes[(method, path)] = answer

    def count(self, method: str, path: str = "") -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.requests if m == method and path in p)

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- one request ------------------------------------------------------------------
    def _serve(self, h: http.server.BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        with self.lock:
            self.requests.append((h.command, path, dict(h.headers.items())))
        answer = self.routes.get((h.command, path))
        if callable(answer):
            answer = answer(h)
        if answer is None:
            answer = json_answer({"errors": [{"code": "NAME_UNKNOWN", "message": "not scripted"}]}, 404)
        deadline = time.monotonic() + self.max_seconds
        h.connection.settimeout(5)
        if not self._read_request_body(h, answer, path, deadline):
            h.close_connection = True
            return
        if answer.drip_headers:
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Pad: " + b"a" * max(answer.pad, 1000)
            self._send_body(h, Answer(body=head, drip=answer.drip_headers), path, deadline)
            h.close_connection = True
            return
        body_len = len(answer.body) + answer.pad
        h.send_response(answer.status)
        for name, value in answer.headers.items():
            h.send_header(name, value)
        if answer.chunked:
            h.send_header("Transfer-Encoding", "chunked")
        elif answer.length is None:
            h.send_header("Content-Length", str(body_len))
        elif answer.length >= 0:
            h.send_header("Content-Length", str(answer.length))
        if answer.close or answer.stall or (answer.length == -1 and not answer.chunked):
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        h.wfile.flush()
        if h.command == "HEAD":
            return
        if answer.stall:
            self._wait_for_hangup(h, min(answer.stall, self.max_seconds), path)
            h.close_connection = True
            return
        if not self._send_body(h, answer, path, deadline):
            h.close_connection = True
            with self.lock:
                self.hung_up[path] += 1

    def _read_request_body(self, h: http.server.BaseHTTPRequestHandler, answer: Answer, path: str,
                           deadline: float) -> bool:
        """Read the request body as the answer says; False when the client went away."""
        left = int(h.headers.get("Content-Length") or 0)
        if answer.read_body == "never" and left:
            self._wait_for_hangup(h, self.max_seconds, path)
            return False
        while left > 0:
            if isinstance(answer.read_body, float):
                if self.stopping.wait(answer.read_body) or time.monotonic() > deadline:
                    return False
                n = 1
            else:
                n = min(left, 1 << 20)
            try:
                data = h.rfile.read(n)
            except OSError:
                return False
            if not data:
                return False
            left -= len(data)
            with self.lock:
                self.received[path] += len(data)
        return True

    def _send_body(self, h: http.server.BaseHTTPRequestHandler, answer: Answer, path: str, deadline: float) -> bool:
        """The body, as scripted; False when the client hung up (or the server stopped)."""
        def blocks():
            yield answer.body
            left = answer.pad
            while left > 0:
                yield PAD[:min(left, len(PAD))]
                left -= len(PAD)

        for block in blocks():
            pieces = [block[i:i + 1] for i in range(len(block))] if answer.drip else [block]
            for piece in pieces:
                if not piece:
                    continue
                if answer.drip and (self.stopping.wait(answer.drip) or time.monotonic() > deadline):
                    return False
                if self.stopping.is_set() or time.monotonic() > deadline:
                    return False
                data = b"%x\r\n%s\r\n" % (len(piece), piece) if answer.chunked else piece
                try:
                    h.wfile.write(data)
                    h.wfile.flush()
                except OSError:
                    return False
                with self.lock:
                    self.sent[path] += len(piece)
        if answer.chunked:
            try:
                h.wfile.write(b"0\r\n\r\n")
                h.wfile.flush()
            except OSError:
                return False
        return True

    def _wait_for_hangup(self, h: http.server.BaseHTTPRequestHandler, seconds: float, path: str) -> None:
        """Send nothing for *seconds*, or until the client hangs up or the server stops."""
        end = time.monotonic() + seconds
        h.connection.settimeout(0.05)
        while time.monotonic() < end and not self.stopping.is_set():
            try:
                if h.connection.recv(65536, socket.MSG_PEEK) == b"":
                    with self.lock:
                        self.hung_up[path] += 1
                    return
                time.sleep(0.05)  # bytes pending (a request body we do not read): keep waiting
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                with self.lock:
                    self.hung_up[path] += 1
                return
