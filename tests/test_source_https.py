"""The ``https`` source plugin (plugins/https_source.py), driven directly against a small local
HTTP server (plain http on 127.0.0.1, which the plugin accepts for this machine only):
pinning by checksum and by the server's validators, fragments and file names, transfers
from an offset, and what a misbehaving server gets."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from modelbuild.api import FetchError, ModelfileError, RemoteFile, RemoteSource, SourcePin
from modelbuild_plugins.https_source import HttpsSource, _check_final, _kind

DATA = bytes(range(256)) * 64  # 16 KiB
SHA = hashlib.sha256(DATA).hexdigest()
LAST_MODIFIED = "Wed, 01 May 2024 12:00:00 GMT"


@dataclass
class Served:
    data: bytes
    etag: str | None = '"v1"'
    last_modified: str | None = LAST_MODIFIED


class FileServer:
    """Files at paths, with ``Range``, ``ETag``/``Last-Modified`` and the conditional headers
    (``If-Match``, ``If-Unmodified-Since``); switches for the misbehaviours tested below."""

    def __init__(self) -> None:
        self.files: dict[str, Served] = {}
        self.redirects: dict[str, str] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.head_status: int | None = None  # answer HEAD with this instead
        self.head_without_length = False
        self.ignore_range = False
        self.ignore_conditions = False
        self.fail: list[int] = []  # statuses for the next GETs
        self.drop_after: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server._serve(self)

            do_HEAD = do_GET

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _send(self, h, status: int, headers: dict[str, str], body: bytes = b"") -> None:  # noqa: ANN001
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        if "Content-Length" not in headers and not (h.command == "HEAD" and self.head_without_length):
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _serve(self, h) -> None:  # noqa: ANN001
        path = h.path.split("?", 1)[0]
        self.requests.append((h.command, h.path, {k.lower(): v for k, v in h.headers.items()}))
        if path in self.redirects:
            return self._send(h, 302, {"Location": self.redirects[path]})
        if h.command == "HEAD" and self.head_status:
            return self._send(h, self.head_status, {})
        if h.command == "GET" and self.fail:
            return self._send(h, self.fail.pop(0), {}, b"failed")
        served = self.files.get(path)
        if served is None:
            return self._send(h, 404, {}, b"not found")
        validators = {k: v for k, v in (("ETag", served.etag), ("Last-Modified", served.last_modified)) if v}
        if not self.ignore_conditions:
            if_match, since = h.headers.get("If-Match"), h.headers.get("If-Unmodified-Since")
            if if_match and if_match != served.etag or since and since != served.last_modified:
                return self._send(h, 412, validators, b"precondition failed")
        data, status, headers = served.data, 200, {**validators, "Accept-Ranges": "bytes"}
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range") or "")
        if m and not self.ignore_range:
            start = int(m.group(1))
            end = int(m.group(2)) + 1 if m.group(2) else len(data)
            if start >= len(data):
                return self._send(h, 416, {"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
            data, status = data[start:end], 206
        limit = self.drop_after.pop(path, None) if h.command == "GET" else None
        if limit is not None:
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[:limit])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(h, status, headers, data)


@pytest.fixture
def server() -> Iterator[FileServer]:
    s = FileServer()
    s.files["/files/model.gguf"] = Served(DATA)
    try:
        yield s
    finally:
        s.stop()


def _open(src: HttpsSource, pin: SourcePin, file: RemoteFile, offset: int = 0) -> bytes:
    with src.open(pin, file, offset=offset) as chunks:
        return b"".join(chunks)


def test_it_is_a_remote_source_for_https_and_http() -> None:
    from modelbuild.testing import plugin_host

    sources = plugin_host().sources
    for ref in ("https://example.com/m.gguf", "http://127.0.0.1/m.gguf"):
        src = sources.get_for_reference(ref)
        assert isinstance(src, HttpsSource) and isinstance(src, RemoteSource)
    assert (src.name, src.schemes, src.version) == ("https", ("https", "http"), "1")


# -- pinning ------------------------------------------------------------------------------------


def test_a_checksum_pins_without_the_network() -> None:
    src = HttpsSource()
    ref = f"https://Example.COM:443/models/Qwen2-0.5B-Q4_K_M.gguf?download=true#sha256={SHA.upper()}"
    for network in (False, True):
        pin = src.pin(ref, network=network)
        assert pin.identity == f"https://example.com/models/Qwen2-0.5B-Q4_K_M.gguf?download=true#sha256={SHA}"
        assert pin.source_url == "https://example.com/models/Qwen2-0.5B-Q4_K_M.gguf"  # no query: it may be a secret
        assert pin.revision == f"sha256:{SHA}"
    named = src.pin(f"https://example.com/dl?id=7#sha256={SHA}&name=model.gguf", network=False)
    assert named.identity == f"https://example.com/dl?id=7#sha256={SHA}&name=model.gguf"


def test_without_a_checksum_the_server_validators_pin_it(server: FileServer) -> None:
    src = HttpsSource()
    url = f"{server.url}/files/model.gguf"
    assert src.pin(url, network=False) is None
    assert server.requests == []
    pin = src.pin(url, network=True)
    assert pin.identity == f"{url}#etag=%22v1%22&size={len(DATA)}" and pin.revision == ""
    assert server.requests[0][0] == "HEAD"
    server.files["/files/model.gguf"] = Served(DATA, etag=None)
    assert src.pin(url, network=True).identity == \
        f"{url}#last-modified=Wed%2C%2001%20May%202024%2012%3A00%3A00%20GMT&size={len(DATA)}"
    server.files["/files/model.gguf"] = Served(DATA, etag='W/"weak"')
    assert src.pin(url, network=True).identity.startswith(f"{url}#last-modified=")  # a weak tag only without a date
    server.files["/files/model.gguf"] = Served(DATA, etag='W/"weak"', last_modified=None)
    assert src.pin(url, network=True).identity == f"{url}#etag=W%2F%22weak%22&size={len(DATA)}"
    server.files["/files/model.gguf"] = Served(DATA, etag=None, last_modified=None)
    with pytest.raises(ModelfileError) as info:
        src.pin(url, network=True)
    assert "no ETag or Last-Modified" in info.value.message and "#sha256=" in info.value.hint


def test_a_server_refusing_head_or_hiding_the_size_there_is_asked_for_one_byte(server: FileServer) -> None:
    src = HttpsSource()
    url = f"{server.url}/files/model.gguf"
    for switch in ("head_status", "head_without_length"):
        server.requests.clear()
        setattr(server, switch, 405 if switch == "head_status" else True)
        assert src.pin(url, network=True).identity.endswith(f"&size={len(DATA)}")
        assert [(m, h.get("range")) for m, _, h in server.requests] == [("HEAD", None), ("GET", "bytes=0-0")]
        setattr(server, switch, None if switch == "head_status" else False)


@pytest.mark.parametrize("ref, message", [
    ("https://example.com/m.gguf#sha256=xyz", "#sha256= needs the file's SHA-256 as 64 hex digits, not 'xyz'"),
    ("https://example.com/m.gguf#sha256=", "#sha256= needs the file's SHA-256"),
    (f"https://example.com/m.gguf#sha256={SHA}0", "as 64 hex digits"),
    ("https://example.com/m.gguf#md5=abc", "the fragment #md5=abc is not understood"),
    (f"https://example.com/m.gguf#sha256={SHA}&sha256={SHA}", "#sha256= is given twice"),
    ("https://example.com/m.gguf#etag=x", "the fragment #etag=x is not understood"),
    (f"https://example.com/m.gguf#sha256={SHA}&name=../x", "#name= '../x' is not a plain file name"),
    (f"https://example.com/m.gguf#sha256={SHA}&name=a%2Fb", "#name= 'a/b' is not a plain file name"),
    (f"https://example.com/m.gguf#sha256={SHA}&name=..", "has an empty, '.' or '..' component"),
    (f"https://example.com/m.gguf#sha256={SHA}&name=.modelbuild-x", "reserves"),
    (f"https://example.com/dir%2Fm.gguf#sha256={SHA}", "the URL's last path segment 'dir/m.gguf' is not a plain"),
    (f"https://example.com/files/#sha256={SHA}", "the URL's last path segment '' is empty"),
    (f"https://example.com/%0A.gguf#sha256={SHA}", "control character"),
    ("http://example.com/m.gguf", "plain http:// is accepted only for this machine"),
    ("http://10.0.0.1/m.gguf", "plain http:// is accepted only for this machine"),
    ("https:///m.gguf", "not an https:// URL"),
    ("https://example.com:99999/m.gguf", "not a URL"),
])
def test_bad_references_are_modelfile_errors_without_a_span(ref: str, message: str) -> None:
    with pytest.raises(ModelfileError) as info:
        HttpsSource().pin(ref, network=False)
    assert message in info.value.message and info.value.span is None


def test_credentials_in_the_url_are_refused_without_showing_them() -> None:
    with pytest.raises(ModelfileError) as info:
        HttpsSource().pin(f"https://alice:s3cret@example.com/m.gguf#sha256={SHA}", network=False)
    assert "credentials in a URL are refused" in info.value.message and "~/.netrc" in info.value.hint
    assert "s3cret" not in info.value.render()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.0.0.5"])
def test_plain_http_is_accepted_for_this_machine(host: str) -> None:
    pin = HttpsSource().pin(f"http://{host}:8080/m.gguf#sha256={SHA}", network=False)
    assert pin.identity == f"http://{host}:8080/m.gguf#sha256={SHA}"


# -- listings -----------------------------------------------------------------------------------


def test_the_listing_of_a_checksum_pin_asks_the_size(server: FileServer) -> None:
    src = HttpsSource()
    pin = src.pin(f"{server.url}/files/model.gguf?token=abc#sha256={SHA}", network=False)
    listing = src.listing(pin)
    assert listing.files == (RemoteFile("model.gguf", len(DATA), f"sha256:{SHA}", kind="model",
                                        locator=f"{server.url}/files/model.gguf?token=abc"),)
    assert dict(listing.descriptor) == {"sourceURL": f"{server.url}/files/model.gguf", "revision": f"sha256:{SHA}"}
    assert listing.name == "model"
    assert [m for m, _, _ in server.requests] == ["HEAD"]


def test_the_listing_of_a_validator_pin_needs_no_request_and_names_apply(server: FileServer) -> None:
    src = HttpsSource()
    server.files["/dl"] = Served(DATA)
    pin = src.pin(f"{server.url}/dl#name=Qwen2-0.5B-Instruct.Q4_K_M.gguf", network=True)
    server.requests.clear()
    listing = src.listing(pin)
    assert server.requests == []
    (file,) = listing.files
    assert (file.path, file.size, file.digest, file.kind) == ("Qwen2-0.5B-Instruct.Q4_K_M.gguf", len(DATA), "", "model")
    assert listing.name == "qwen2-0.5b-instruct.q4_k_m" and "revision" not in listing.descriptor


def test_a_missing_file_is_a_modelfile_error_and_a_busy_server_is_retryable(server: FileServer) -> None:
    src = HttpsSource()
    with pytest.raises(ModelfileError) as info:
        src.pin(f"{server.url}/files/nope.gguf", network=True)
    assert "not found (404)" in info.value.message
    server.head_status = 503
    with pytest.raises(FetchError) as fetch:
        src.listing(src.pin(f"{server.url}/files/model.gguf#sha256={SHA}", network=False))
    assert fetch.value.retryable and "answered 503" in fetch.value.message


@pytest.mark.parametrize("name, kind", [
    ("m.gguf", "model"), ("model.safetensors", "model"), ("m.onnx", "model"), ("pytorch_model.bin", "model"),
    ("config.json", "config"), ("tokenizer.model", "config"), ("merges.txt", "config"), ("run.py", "code"),
    ("train.parquet", "dataset"), ("README.md", "doc"), ("notes.txt", "doc"), ("LICENSE", "doc"),
])
def test_kinds_from_the_file_name(name: str, kind: str) -> None:
    assert _kind(name) == kind


# -- transfers ----------------------------------------------------------------------------------


def test_open_from_an_offset_and_through_a_redirect(server: FileServer) -> None:
    src = HttpsSource()
    server.redirects["/latest/model.gguf"] = "/files/model.gguf"
    pin = src.pin(f"{server.url}/latest/model.gguf#sha256={SHA}", network=False)
    (file,) = src.listing(pin).files
    assert _open(src, pin, file) == DATA
    assert _open(src, pin, file, 1000) == DATA[1000:]
    gets = [h.get("range") for m, p, h in server.requests if m == "GET" and p == "/files/model.gguf"]
    assert gets == [None, "bytes=1000-"]


def test_a_server_ignoring_the_range_is_skipped_forward(server: FileServer) -> None:
    src = HttpsSource()
    pin = src.pin(f"{server.url}/files/model.gguf#sha256={SHA}", network=False)
    server.ignore_range = True
    assert _open(src, pin, RemoteFile("model.gguf", len(DATA)), 5000) == DATA[5000:]


def test_a_dropped_connection_is_retryable_and_resumes(server: FileServer) -> None:
    src = HttpsSource()
    pin = src.pin(f"{server.url}/files/model.gguf#sha256={SHA}", network=False)
    file = RemoteFile("model.gguf", len(DATA))
    server.drop_after["/files/model.gguf"] = 6000
    got = bytearray()
    with pytest.raises(FetchError) as info:
        with src.open(pin, file, offset=0) as chunks:
            for chunk in chunks:
                got += chunk
    assert info.value.retryable and "connection failed" in info.value.message
    assert bytes(got) == DATA[:6000]  # all that came before the cut
    got += _open(src, pin, file, len(got))
    assert bytes(got) == DATA


@pytest.mark.parametrize("status, retryable, message", [
    (503, True, "the server answered 503"), (429, True, "the server answered 429"), (404, False, "not found (404)"),
    (403, False, "the server refused access (403)"),
])
def test_error_answers_during_a_transfer(server: FileServer, status: int, retryable: bool, message: str) -> None:
    src = HttpsSource()
    pin = src.pin(f"{server.url}/files/model.gguf#sha256={SHA}", network=False)
    server.fail.append(status)
    with pytest.raises(FetchError) as info:
        _open(src, pin, RemoteFile("model.gguf", len(DATA)))
    assert info.value.retryable is retryable
    assert info.value.message == f"{server.url}/files/model.gguf: {message}"


def test_a_file_changed_since_its_validator_pin_stops_the_transfer(server: FileServer) -> None:
    src = HttpsSource()
    url = f"{server.url}/files/model.gguf"
    pin = src.pin(url, network=True)  # by ETag
    (file,) = src.listing(pin).files
    assert _open(src, pin, file, 10) == DATA[10:]
    assert [h.get("if-match") for m, _, h in server.requests if m == "GET"] == ['"v1"']
    server.files["/files/model.gguf"] = Served(DATA[::-1], etag='"v2"')
    with pytest.raises(FetchError) as info:  # If-Match: 412
        _open(src, pin, file)
    assert "changed since it was pinned" in info.value.message and not info.value.retryable
    server.ignore_conditions = True  # a server that does not check: its new ETag gives it away
    with pytest.raises(FetchError, match="changed since it was pinned"):
        _open(src, pin, file)
    server.ignore_conditions = False
    server.files["/files/model.gguf"] = Served(DATA, etag=None)
    by_date = src.pin(url, network=True)
    server.files["/files/model.gguf"] = Served(DATA, etag=None, last_modified="Thu, 02 May 2024 12:00:00 GMT")
    with pytest.raises(FetchError, match="changed since it was pinned"):  # If-Unmodified-Since: 412
        _open(src, pin=by_date, file=file)


def test_a_server_that_is_gone_is_retryable_and_the_signature_is_not_shown(server: FileServer) -> None:
    src = HttpsSource()
    pin = src.pin(f"{server.url}/files/model.gguf?X-Amz-Signature=s3cret#sha256={SHA}", network=False)
    server.stop()
    with pytest.raises(FetchError) as info:
        _open(src, pin, RemoteFile("model.gguf", len(DATA)))
    assert info.value.retryable and "connection failed (ConnectionError: " in info.value.message
    assert "s3cret" not in info.value.render()
    with pytest.raises(FetchError) as info:
        src.listing(pin)
    assert info.value.retryable and "s3cret" not in info.value.render()


def test_a_redirect_to_plain_http_elsewhere_is_refused() -> None:
    class Response:
        url = "http://mirror.example/m.gguf"

    with pytest.raises(FetchError, match="redirected to plain http"):
        _check_final(Response(), "https://example.com/m.gguf")
    Response.url = "http://127.0.0.1:8080/m.gguf"
    _check_final(Response(), "x")


# -- end to end: modelbuild build FROM http://127.0.0.1/…#sha256=… --------------------------------


def test_a_checksum_pinned_build_then_again_with_the_server_gone(server: FileServer, build, monkeypatch,
                                                                  tmp_path) -> None:
    from support import safetensors_blob

    monkeypatch.setattr("modelbuild.fetch.BACKOFF", 0.01)
    monkeypatch.delenv("MODELBUILD_OFFLINE", raising=False)
    weights = safetensors_blob(DATA)
    server.files["/dl/Tiny-Model.safetensors"] = Served(weights)
    server.drop_after["/dl/Tiny-Model.safetensors"] = 3000
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    sha = hashlib.sha256(weights).hexdigest()
    modelfile = f"FROM {server.url}/dl/Tiny-Model.safetensors#sha256={sha}\nMODEL *.safetensors\n"
    result = build(ctx, modelfile)
    assert [layer["digest"] for layer in result["layers"]] == [f"sha256:{sha}"]
    assert result["config"]["descriptor"]["sourceURL"] == f"{server.url}/dl/Tiny-Model.safetensors"
    assert result["tags"] == ["tiny-model:latest"]
    assert [h.get("range") for m, _, h in server.requests if m == "GET"] == [None, "bytes=3000-"]  # resumed
    server.stop()
    assert build(ctx, modelfile)["digest"] == result["digest"]


def test_a_redirect_loop_is_a_fetch_error_not_worth_a_retry(server: FileServer) -> None:
    server.redirects["/loop"] = "/loop"
    with pytest.raises(FetchError) as info:
        HttpsSource().pin(f"{server.url}/loop", network=True)
    assert "TooManyRedirects" in info.value.message and not info.value.retryable
