"""The built-in ``https`` source: ``FROM https://host/path/model.gguf#sha256=<64 hex>``, one file
on a web server.

The fragment never leaves this machine; it holds ``sha256=<hex>``, the file's checksum, and
optionally ``name=<file name>`` (``#sha256=…&name=model.gguf``), the name the file gets in
the build context (else the URL path's last segment, percent-decoded). Either must be a plain
file name. ``http://`` is accepted only for this machine (``127.0.0.1``, ``::1``,
``localhost``): anywhere else a plain-text transfer could be changed on the way. A URL
carrying credentials (``https://user:pass@…``) is refused: a build file is shared, and the
URL is recorded; ``~/.netrc`` supplies credentials for a host instead (``requests`` reads it).

The three calls of :class:`modelbuild.api.RemoteSource`:

``pin``
    With ``#sha256=`` the reference pins itself, with no network: the identity is the URL and
    its checksum, and the bytes are verified against it. Without one, the server is asked
    (``HEAD``) for the file's validator, a strong ``ETag`` first, else ``Last-Modified``, else
    a weak ``ETag``, and its size; the identity is the URL with them
    (``…#etag="abc"&size=123``). That is weaker: it trusts the server to change its validator
    when the file changes, and a file fetched again (the store lost it) is compared with
    nothing but that validator (``If-Match``/``If-Unmodified-Since``, and the answer's own
    validator; a mismatch stops the build rather than mixing two files). A server with no
    validator needs the checksum.
``listing``
    One file: its path, its size (from the pin, or a ``HEAD``), its digest when pinned by
    checksum, a kind from its extension. Defaults: ``descriptor.sourceURL`` (the URL without
    its query, which may hold a signature, and without the fragment), ``revision``
    (``sha256:<hex>`` when pinned by checksum), a name from the file name.
``open``
    ``GET`` with ``Range: bytes=N-`` to resume; a server that ignores the range is read from
    the start and the bytes already held are skipped.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from modelbuild.api import (
    FetchError,
    ModelfileError,
    RemoteFile,
    SourceListing,
    SourcePin,
    artifact_path_problem,
    hookimpl,
)

CHUNK = 1 << 20
TIMEOUT = (10.0, 60.0)  # seconds to connect, and between two reads
USER_AGENT = "modelbuild-https-source/1"
MAX_FILE_SIZE = 1 << 42  # 4 TiB: a larger Content-Length is a lie
USER_KEYS = ("sha256", "name")  # what a build file's fragment may say
PIN_KEYS = ("etag", "last-modified", "size")  # what pin adds to an identity

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_WEIGHTS = (".gguf", ".safetensors", ".onnx", ".onnx_data", ".bin", ".pt", ".pth", ".ckpt", ".llamafile")
_CONFIGS = (".json", ".yaml", ".yml", ".tiktoken", ".jinja", ".model")
_DATASETS = (".parquet", ".csv", ".tsv", ".jsonl", ".arrow")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class _Url:
    """A parsed reference (or identity): the URL requested, and what its fragment says."""

    url: str  # scheme://host[:port]/path[?query], no fragment, no credentials
    public: str  # the same without its query: what sourceURL records
    file_name: str
    sha256: str = ""
    name: str = ""  # as the fragment gave it
    etag: str = ""
    last_modified: str = ""
    size: int | None = None

    def identity(self, **pinned: str | int) -> str:
        fields = [("sha256", self.sha256), ("etag", pinned.get("etag", self.etag)),
                  ("last-modified", pinned.get("last_modified", self.last_modified)),
                  ("size", pinned.get("size", self.size if self.size is not None else "")), ("name", self.name)]
        fragment = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in fields if v != "")
        return f"{self.url}#{fragment}"


def _name_problem(name: str) -> str | None:
    if not name:
        return "is empty"
    if "/" in name or "\\" in name:
        return "is not a plain file name (it holds a '/' or '\\')"
    return artifact_path_problem(name)


def _parse(reference: str, *, identity: bool = False) -> _Url:
    try:
        split = urlsplit(reference)
        port = split.port
    except ValueError as exc:
        raise ModelfileError(f"{reference}: not a URL ({exc})") from None
    scheme = split.scheme.lower()
    host = (split.hostname or "").lower()
    if scheme not in ("https", "http") or not host:
        raise ModelfileError(f"{reference}: not an https:// URL", hint="https://host/path/file#sha256=<64 hex>")
    if split.username is not None or split.password is not None:
        raise ModelfileError(f"{_shown(reference)}: credentials in a URL are refused (a build file is shared, and "
                             "the URL is recorded)", hint="put them in ~/.netrc, which is read for the host")
    if scheme == "http" and not _is_loopback(host):
        raise ModelfileError(f"{reference}: plain http:// is accepted only for this machine",
                             hint="use https:// (an unencrypted transfer can be changed on the way)")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        netloc += f":{port}"
    path = split.path or "/"
    url = urlunsplit((scheme, netloc, path, split.query, ""))
    public = urlunsplit((scheme, netloc, path, "", ""))
    fields = _fragment(reference, split.fragment, USER_KEYS + PIN_KEYS if identity else USER_KEYS)
    sha256 = fields.get("sha256", "")
    if "sha256" in fields and not _HEX64.fullmatch(sha256):
        raise ModelfileError(f"{reference}: #sha256= needs the file's SHA-256 as 64 hex digits, not {sha256!r}",
                             hint="sha256sum FILE prints it")
    name = fields.get("name", "")
    file_name = name or unquote(path.rsplit("/", 1)[-1])
    if problem := _name_problem(file_name):
        where = "#name=" if name else "the URL's last path segment"
        raise ModelfileError(f"{reference}: {where} {file_name!r} {problem}",
                             hint="end the URL with the file's name, or give one: #sha256=…&name=model.gguf")
    size = None
    if "size" in fields:
        if not fields["size"].isdigit():
            raise ModelfileError(f"{reference}: size {fields['size']!r} is not a byte count")
        size = int(fields["size"])
    return _Url(url, public, file_name, sha256.lower(), name, fields.get("etag", ""), fields.get("last-modified", ""),
                size)


def _fragment(reference: str, fragment: str, allowed: tuple[str, ...]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in fragment.split("&") if fragment else ():
        key, eq, value = item.partition("=")
        if key not in allowed or not eq:
            raise ModelfileError(f"{reference}: the fragment #{fragment} is not understood",
                                 hint="#sha256=<64 hex>, optionally &name=<file name>")
        if key in fields:
            raise ModelfileError(f"{reference}: #{key}= is given twice")
        fields[key] = unquote(value)
    return fields


def _shown(reference: str) -> str:
    """*reference* without its credentials, for a message."""
    split = urlsplit(reference)
    netloc = split.netloc.rpartition("@")[2]
    return urlunsplit((split.scheme, netloc, split.path, split.query, split.fragment))


def _kind(name: str) -> str:
    low = name.lower()
    if low.endswith(_WEIGHTS):
        return "model"
    if low.endswith(".py"):
        return "code"
    if low.endswith(_DATASETS):
        return "dataset"
    if low.endswith(_CONFIGS) or low in ("merges.txt", "vocab.txt"):
        return "config"
    return "doc"


def _tag_name(file_name: str) -> str | None:
    stem = file_name.rsplit(".", 1)[0] if "." in file_name.lstrip(".") else file_name
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).lstrip(".-")[:128]
    return name or None


# -- errors ---------------------------------------------------------------------------------------
def _transient(exc: BaseException) -> bool:
    import requests
    import urllib3

    return isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                            urllib3.exceptions.ProtocolError, urllib3.exceptions.TimeoutError,
                            ConnectionError, TimeoutError))


def _status_error(status: int, what: str, *, user: bool) -> Exception:
    """An error answer: a ModelfileError while pinning or listing (*user*, the FROM line is
    wrong), a FetchError during a transfer; 408, 429 and 5xx are worth another try."""
    if status in (408, 429) or status >= 500:
        return FetchError(f"{what}: the server answered {status}", retryable=True)
    error = ModelfileError if user else FetchError
    if status in (401, 403):
        return error(f"{what}: the server refused access ({status})",
                     hint="credentials for the host go in ~/.netrc; a signed URL may have expired")
    if status in (404, 410):
        return error(f"{what}: not found ({status})", hint="check the URL")
    return error(f"{what}: the server answered {status}")


def _detail(exc: BaseException) -> str:
    """The first line of *exc*'s message, with any URL query left out (a signed URL's
    signature is a secret)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return re.sub(r"\?[^\s'\")]*", "?…", text)[:200]


def _network_error(exc: Exception, what: str) -> FetchError | None:
    """A FetchError for a failed transfer (retryable when the network failed: not for a bad
    redirect chain, say); None for anything else."""
    import requests

    if not _transient(exc) and not isinstance(exc, requests.RequestException):
        return None
    detail = _detail(exc)
    return FetchError(f"{what}: the connection failed ({type(exc).__name__}{': ' if detail else ''}{detail})",
                      retryable=_transient(exc), hint="check the network")


def _check_final(response: Any, what: str) -> None:
    """A redirect may not lead to plain http off this machine."""
    final = urlsplit(response.url)
    if final.scheme != "https" and not _is_loopback((final.hostname or "").lower()):
        raise FetchError(f"{what}: the server redirected to plain http ({final.hostname})",
                         hint="an unencrypted transfer can be changed on the way: ask for an https:// location")


# -- the source -------------------------------------------------------------------------------------------
class HttpsSource:
    """``https://`` references (see the module docstring)."""

    name = "https"
    schemes = ("https", "http")
    version = "1"
    summary = "one file on a web server: https://host/path/file#sha256=<64 hex>"

    def pin(self, reference: str, *, network: bool) -> SourcePin | None:
        u = _parse(reference)
        if u.sha256:
            return SourcePin(identity=u.identity(), source_url=u.public, revision=f"sha256:{u.sha256}")
        if not network:
            return None
        headers = _probe(u, u.public)
        etag = headers.get("etag", "").strip()
        last_modified = headers.get("last-modified", "").strip()
        size = _size(headers, u.public)
        if etag and not etag.startswith("W/"):
            pinned = {"etag": etag}
        elif last_modified:
            pinned = {"last_modified": last_modified}
        elif etag:
            pinned = {"etag": etag}
        else:
            raise ModelfileError(f"{u.public}: the server gives no ETag or Last-Modified to pin the file by, and the "
                                 "reference has no checksum", hint="add the file's SHA-256: #sha256=<64 hex> "
                                                                   "(sha256sum FILE prints it)")
        return SourcePin(identity=u.identity(**pinned, size=size), source_url=u.public,
                         data={"validator": next(iter(pinned))})

    def listing(self, pin: SourcePin) -> SourceListing:
        u = _parse(pin.identity, identity=True)
        size = u.size if u.size is not None else _size(_probe(u, u.public), u.public)
        descriptor: dict[str, Any] = {"sourceURL": pin.source_url or u.public}
        if u.sha256:
            descriptor["revision"] = f"sha256:{u.sha256}"
        file = RemoteFile(path=u.file_name, size=size, digest=f"sha256:{u.sha256}" if u.sha256 else "",
                          kind=_kind(u.file_name), locator=u.url)
        return SourceListing(files=(file,), descriptor=descriptor, name=_tag_name(u.file_name))

    @contextlib.contextmanager
    def open(self, pin: SourcePin, file: RemoteFile, *, offset: int) -> Iterator[Iterator[bytes]]:
        import requests

        u = _parse(pin.identity, identity=True)
        what = f"{u.public}"
        headers = {"Accept-Encoding": "identity", "User-Agent": USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        if u.etag and not u.etag.startswith("W/"):
            headers["If-Match"] = u.etag
        elif u.last_modified:
            headers["If-Unmodified-Since"] = u.last_modified
        try:
            response = requests.get(u.url, headers=headers, stream=True, timeout=TIMEOUT, allow_redirects=True)
        except Exception as exc:
            error = _network_error(exc, what)
            if error is None:
                raise
            raise error from None
        with contextlib.closing(response):
            _check_final(response, what)
            status = response.status_code
            changed = FetchError(f"{what}: the file changed since it was pinned",
                                 hint="build again to pin the new file, or pin it by checksum: #sha256=<64 hex>")
            if status == 412:
                raise changed
            etag = response.headers.get("etag", u.etag).strip()
            last_modified = response.headers.get("last-modified", u.last_modified).strip()
            if status in (200, 206) and (u.etag and etag != u.etag or u.last_modified and
                                         last_modified != u.last_modified):
                raise changed
            skip = 0
            if status == 206:
                m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(?:\d+|\*)\s*", response.headers.get("content-range", ""))
                if not m or int(m.group(1)) != offset:
                    raise FetchError(f"{what}: asked for bytes from {offset}, the server sent another range")
            elif status == 200:
                skip = offset  # the server ignored the range: skip what is already here
            else:
                raise _status_error(status, what, user=False)
            yield _chunks(response, skip, what)


def _probe(u: _Url, what: str) -> Any:
    """The file's headers: a HEAD, or the first byte's GET for a server that refuses HEAD (a
    URL signed for GET only) or does not say the size there."""
    import requests

    headers = {"Accept-Encoding": "identity", "User-Agent": USER_AGENT}
    try:
        response = requests.head(u.url, headers=headers, timeout=TIMEOUT, allow_redirects=True)
        if response.status_code in (403, 405, 501) or (response.status_code == 200 and
                                                         "content-length" not in response.headers):
            with contextlib.closing(requests.get(u.url, headers={**headers, "Range": "bytes=0-0"}, stream=True,
                                                 timeout=TIMEOUT, allow_redirects=True)) as response:
                pass
    except Exception as exc:
        error = _network_error(exc, what)
        if error is None:
            raise
        raise error from None
    _check_final(response, what)
    if response.status_code not in (200, 206):
        raise _status_error(response.status_code, what, user=True)
    return response.headers


def _size(headers: Any, what: str) -> int:
    text = headers.get("content-length")
    m = re.fullmatch(r"\s*bytes\s+\d+-\d+/(\d+)\s*", headers.get("content-range", ""))
    if m:
        text = m.group(1)
    if text is None or not text.strip().isdigit() or int(text) > MAX_FILE_SIZE:
        raise FetchError(f"{what}: the server does not say how big the file is (Content-Length {text!r})",
                         hint="a file served without its size cannot be fetched and checked")
    return int(text)


def _pieces(response: Any) -> Iterator[bytes]:
    """The body as it arrives: urllib3 2's ``read1`` hands over what came before a cut (so a
    resume asks only for the rest); ``iter_content`` waits for whole chunks."""
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:
        yield from response.iter_content(CHUNK)
        return
    while piece := read1(CHUNK, decode_content=True):
        yield piece


def _chunks(response: Any, skip: int, what: str) -> Iterator[bytes]:
    it = _pieces(response)
    while True:
        try:
            chunk = next(it)
        except StopIteration:
            return
        except Exception as exc:
            error = _network_error(exc, what)
            if error is None:
                raise
            raise error from None
        if skip:
            dropped = min(skip, len(chunk))
            chunk, skip = chunk[dropped:], skip - dropped
        if chunk:
            yield chunk


@hookimpl
def modelbuild_register_sources(registry):  # noqa: ANN001, ANN201 - pluggy hook
    registry.add(HttpsSource())
