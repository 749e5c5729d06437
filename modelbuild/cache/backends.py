"""Where a remote cache lives: a registry repository, or an OCI image layout directory.

The importer and the exporter see one interface (:class:`Backend`): the cache manifest under
the spec's tag, a small blob read whole, whether a blob is there, a blob fetched into the
store. Every blob fetched is verified against its digest on its way into the store, through
the store's own writer; nothing is kept otherwise. A layout is the user's directory: it is
read without ever being healed (:class:`~modelbuild.store.Store` with ``owned=False``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from modelbuild.cache.errors import CacheError
from modelbuild.cache.record import RECORD_MAX
from modelbuild.cache.spec import CacheSpec
from modelbuild.oci import mediatypes as mt


class Backend:
    spec: CacheSpec

    @property
    def where(self) -> str:
        return self.spec.where

    def manifest(self) -> dict[str, Any] | None:
        """The cache manifest under the spec's tag; None when there is none."""
        raise NotImplementedError

    def read_small(self, digest: str, size: int) -> bytes:
        raise NotImplementedError

    def has_blob(self, digest: str, size: int) -> bool:
        raise NotImplementedError

    def fetch(self, digest: str, size: int, store: Any) -> None:
        """Copy a blob into *store*, verified against its digest (nothing kept otherwise)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class RegistryBackend(Backend):
    def __init__(self, spec: CacheSpec) -> None:
        from modelbuild.oci.registry import Registry, split_reference

        self.spec = spec
        self.host, self.repo, parsed = split_reference(spec.ref or "")
        self.ref = parsed.digest or parsed.tag or "latest"
        self.registry = Registry(self.host, plain_http=spec.plain_http, insecure=spec.insecure)

    def manifest(self) -> dict[str, Any] | None:
        if self.registry.head_manifest(self.repo, self.ref, accept=[mt.OCI_MANIFEST]) is None:
            return None
        data, _, _ = self.registry.get_manifest(self.repo, self.ref, accept=[mt.OCI_MANIFEST])
        return json.loads(data)

    def read_small(self, digest: str, size: int) -> bytes:
        buf = io.BytesIO()
        self.registry.pull_blob(self.repo, digest, size, buf)
        return buf.getvalue()

    def has_blob(self, digest: str, size: int) -> bool:
        return self.registry.has_blob(self.repo, digest)

    def fetch(self, digest: str, size: int, store: Any) -> None:
        self.registry.pull_blob(self.repo, digest, size, store.writer())

    def push_bytes(self, digest: str, data: bytes) -> bool:
        """Upload a blob held in memory (the record) unless it is there; whether bytes went."""
        return self.registry.push_blob(self.repo, digest, len(data), lambda: io.BytesIO(data))

    def put_manifest(self, data: bytes) -> None:
        self.registry.put_manifest(self.repo, self.ref, data, mt.OCI_MANIFEST)

    def close(self) -> None:
        self.registry.close()


class LocalBackend(Backend):
    def __init__(self, spec: CacheSpec) -> None:
        from modelbuild.store import Store

        self.spec = spec
        self.layout = Store(spec.path or Path("."), owned=False)  # the user's directory: never heal it

    def manifest(self) -> dict[str, Any] | None:
        if not self.layout.index_path.exists():
            return None
        entry = self.layout.tags().get(self.spec.tag)
        if entry is None:
            return None
        return json.loads(self.read_small(entry["digest"], entry["size"]))

    def read_small(self, digest: str, size: int) -> bytes:
        return self.layout.read_blob(digest, size, limit=RECORD_MAX)  # verified against digest and size

    def has_blob(self, digest: str, size: int) -> bool:
        path = self.layout.blob_path(digest)
        return path.is_file() and path.stat().st_size == size

    def fetch(self, digest: str, size: int, store: Any) -> None:
        from modelbuild.storage.files import copy_stream

        with store.writer() as w:
            copy_stream(self.layout.blob_path(digest), w.write, None)
            got = "sha256:" + w.hasher.hexdigest()
            if got != digest or w.size != size:
                raise CacheError(f"{self.layout.blob_path(digest)} is corrupt (its content is {got}, not {digest})")
            w.commit()


def open_backend(spec: CacheSpec) -> Backend:
    return RegistryBackend(spec) if spec.type == "registry" else LocalBackend(spec)


__all__ = ["Backend", "LocalBackend", "RegistryBackend", "open_backend"]
