"""A registry client for source plugins (``modelbuild.api.open_registry``, since 1.2).

Sources that read an OCI distribution registry (``oci://``, ``ollama://``, a third party's)
get the core's transport, not a copy of it: authentication from docker's config and
``modelbuild login``, token exchange, TLS, bounded and paced reads, manifests verified
against their digest. They see three calls:

* ``manifest(repo, ref)``: ``(bytes, media type, digest)``, verified;
* ``blob(repo, digest, size)``: a small blob's bytes (a config, a template), bounded and
  verified;
* ``stream(repo, digest, size, offset=n)``: one ``GET`` from byte *n*, as a context manager
  over chunks, for :meth:`modelbuild.api.RemoteSource.open`. The core's fetch retries and
  resumes: a dropped connection, a timeout, 429 or 5xx is a retryable
  :class:`~modelbuild.api.FetchError`; anything else is not.

Plain HTTP is used for loopback hosts (``localhost``, ``127.0.0.0/8``, ``::1``), as docker
treats them, and for the hosts listed in ``MODELBUILD_INSECURE_REGISTRIES`` (comma
separated); every other host is HTTPS.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
from collections.abc import Iterable, Iterator
from typing import Any

from modelbuild.api._sources import FetchError
from modelbuild.digests import CHUNK
from modelbuild.oci.verify import shown

INSECURE_VAR = "MODELBUILD_INSECURE_REGISTRIES"
SMALL_BLOB = 4 << 20


def plain_http(host: str) -> bool:
    """Whether *host* (``name[:port]``) is reached over plain HTTP; see the module docstring."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    listed = {h.strip() for h in os.environ.get(INSECURE_VAR, "").split(",") if h.strip()}
    if host in listed or name in listed or name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RegistryClient:
    """One registry host, for a source plugin; see the module docstring."""

    def __init__(self, host: str) -> None:
        from modelbuild.oci.registry import Registry

        self.host = host
        self._registry = Registry(host, plain_http=plain_http(host))

    def manifest(self, repo: str, ref: str, *, accept: Iterable[str] | None = None) -> tuple[bytes, str, str]:
        with _as_fetch_error():
            if accept is None:
                return self._registry.get_manifest(repo, ref)
            return self._registry.get_manifest(repo, ref, accept=tuple(accept))

    def blob(self, repo: str, digest: str, size: int, *, limit: int = SMALL_BLOB) -> bytes:
        if size > limit:
            raise FetchError(f"{self.host}/{repo}: blob {digest} is {size} bytes, more than {limit} for a "
                             "metadata blob")
        out = bytearray()
        sha = hashlib.sha256()
        with self.stream(repo, digest, size) as chunks:
            for chunk in chunks:
                out += chunk
                sha.update(chunk)
        if len(out) != size or "sha256:" + sha.hexdigest() != digest:
            raise FetchError(f"{self.host}/{repo}: blob {digest} does not match its digest and size")
        return bytes(out)

    @contextlib.contextmanager
    def stream(self, repo: str, digest: str, size: int, *, offset: int = 0) -> Iterator[Iterable[bytes]]:
        """One attempt at the blob from *offset*; chunks as they arrive."""
        import requests

        from modelbuild.oci.pacing import Retry, reader
        from modelbuild.oci.transport import TRANSIENT, RegistryError

        reg = self._registry
        op = f"pull blob {digest}"
        headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
        pace = reg._watch()
        try:
            resp = reg._send("GET", reg._url(repo, "blobs", digest), op=op, repo=repo, scopes=reg._scopes(repo),
                             headers=headers, stream=True, pace=pace)
        except (Retry, *TRANSIENT) as exc:
            raise FetchError(f"{self.host}/{repo}: {op}: {exc or type(exc).__name__}", retryable=True) from None
        except RegistryError as exc:
            raise FetchError(exc.message, hint=exc.hint) from None
        try:
            status = resp.status_code
            if status == 429 or status >= 500:
                raise FetchError(f"{self.host}/{repo}: {op}: HTTP {status}", retryable=True)
            if status not in (200, 206) or (offset and status != 206):
                from modelbuild.oci.transport import error_detail

                raise FetchError(f"{self.host}/{repo}: {op}: {error_detail(resp)}"
                                 + (" (the registry ignored the Range of a resumed download)"
                                    if status == 200 and offset else ""))

            def chunks() -> Iterator[bytes]:
                read = reader(resp, pace)
                try:
                    while chunk := read(CHUNK):
                        pace.moved(len(chunk))
                        yield chunk
                except (Retry, requests.exceptions.RequestException, ConnectionError, TimeoutError) as exc:
                    raise FetchError(f"{self.host}/{repo}: {op}: {exc or type(exc).__name__}",
                                     retryable=True) from None

            yield chunks()
        finally:
            pace.done = True
            resp.close()

    def close(self) -> None:
        self._registry.close()


@contextlib.contextmanager
def _as_fetch_error() -> Iterator[None]:
    from modelbuild.oci.transport import TRANSIENT, RegistryAuthError, RegistryError

    try:
        yield
    except RegistryAuthError as exc:
        raise FetchError(exc.message, hint=exc.hint or "log in with `modelbuild login HOST`") from None
    except RegistryError as exc:
        raise FetchError(exc.message, hint=exc.hint) from None
    except TRANSIENT as exc:
        raise FetchError(f"registry unreachable: {type(exc).__name__}", retryable=True) from None


def open_registry(host: str) -> Any:
    """A :class:`RegistryClient` for *host* (``name[:port]``); see the module docstring."""
    if not host or "/" in host or any(c.isspace() for c in host):
        raise FetchError(f"not a registry host: {shown(host)}")
    return RegistryClient(host)
