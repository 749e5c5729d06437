"""The cache record: what a remote cache holds, and the OCI manifest that carries it.

A *cache record* is a small JSON document linking step keys to their results, the very
results the local step index stores::

    {"schemaVersion": 1, "mediaType": "application/vnd.modelbuild.cache.v1+json", "mode": "max",
     "steps": [{"key": "sha256:…", "op": "transform", "step": "transform:2", "result": {…}}, …]}

It is stored as an OCI artifact: an image manifest whose ``artifactType`` and ``config`` are
the record (``config.mediaType`` = the cache media type) and whose ``layers`` are every blob
the recorded results reference (layers, config and manifest blobs, transform outputs), by
digest. The blobs are the model artifact's own: pushing the cache next to the model uploads
nothing twice (every push HEADs first), and the registry keeps them as long as the cache
manifest is tagged. ``type=local`` writes the same manifest into an OCI image layout
directory, tagged ``tag=`` (default ``latest``, as BuildKit). Both bytes are canonical JSON,
so one build's record and manifest always have one digest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from modelbuild.cache.errors import CacheError
from modelbuild.digests import canonical_json, is_digest, sha256_bytes
from modelbuild.oci import mediatypes as mt

CACHE_MEDIA_TYPE = "application/vnd.modelbuild.cache.v1+json"
BLOB_MEDIA_TYPE = "application/octet-stream"
RECORD_MAX = 64 << 20  # a record is kilobytes; refuse to read anything absurd into memory


@dataclass
class Entry:
    """A keyed step of a finished build, as an export records it."""

    step: str
    op: Any
    key: str
    result: dict[str, Any]


def record_of(entries: Sequence[Entry], mode: str) -> bytes:
    steps = [{"key": e.key, "op": e.op.name, "step": e.step, "result": e.result}
             for e in sorted(entries, key=lambda e: (e.key, e.step))]
    # one entry per key (two stages can share a step's key)
    steps = list({s["key"]: s for s in steps}.values())
    return canonical_json({"schemaVersion": 1, "mediaType": CACHE_MEDIA_TYPE, "mode": mode, "steps": steps})


def manifest_of(record: bytes, blobs: Sequence[dict[str, Any]]) -> tuple[bytes, dict[str, Any]]:
    """The cache manifest for *record* and *blobs*, and its descriptor."""
    layers = []
    for b in sorted({b["digest"]: b for b in blobs}.values(), key=lambda b: b["digest"]):
        media_type = b.get("mediaType") or BLOB_MEDIA_TYPE
        if media_type in (mt.OCI_MANIFEST, mt.OCI_INDEX):
            # a registry checks that a layer typed as a manifest *is* a manifest of the
            # repository; here the model's manifest is only a blob the cache carries
            media_type = BLOB_MEDIA_TYPE
        layers.append({"mediaType": media_type, "digest": b["digest"], "size": int(b["size"])})
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": CACHE_MEDIA_TYPE,
        "config": {"mediaType": CACHE_MEDIA_TYPE, "digest": sha256_bytes(record), "size": len(record)},
        "layers": layers,
    }
    data = canonical_json(manifest)
    return data, {"mediaType": mt.OCI_MANIFEST, "artifactType": CACHE_MEDIA_TYPE, "digest": sha256_bytes(data),
                  "size": len(data)}


class RecordSource(Protocol):
    """Where a record is read from (a backend of :mod:`modelbuild.cache.backends`)."""

    @property
    def where(self) -> str: ...

    def manifest(self) -> dict[str, Any] | None: ...

    def read_small(self, digest: str, size: int) -> bytes: ...


def read_record(source: RecordSource) -> dict[str, dict[str, Any]] | None:
    """The entries of the record under *source*'s tag, by key; None when there is none. A
    manifest that is not a modelbuild cache, or a record of another version, is a
    :class:`CacheError`; a malformed entry is skipped."""
    manifest = source.manifest()
    if manifest is None:
        return None
    config = manifest.get("config") or {}
    if CACHE_MEDIA_TYPE not in (manifest.get("artifactType"), config.get("mediaType")):
        raise CacheError(f"{source.where} is not a modelbuild cache (artifactType "
                         f"{manifest.get('artifactType') or config.get('mediaType')!r})")
    size = int(config.get("size", 0))
    if not is_digest(config.get("digest", "")) or not 0 < size <= RECORD_MAX:
        raise CacheError(f"{source.where}: the cache manifest's record descriptor is invalid")
    record = json.loads(source.read_small(config["digest"], size))
    if record.get("mediaType") != CACHE_MEDIA_TYPE or record.get("schemaVersion") != 1:
        raise CacheError(f"{source.where}: unsupported cache record (schemaVersion "
                         f"{record.get('schemaVersion')!r})")
    entries = {}
    for step in record.get("steps", []):
        if (isinstance(step, dict) and isinstance(step.get("key"), str) and isinstance(step.get("op"), str)
                and isinstance(step.get("result"), dict)):
            entries[step["key"]] = step
    return entries


__all__ = ["BLOB_MEDIA_TYPE", "CACHE_MEDIA_TYPE", "RECORD_MAX", "Entry", "manifest_of", "read_record", "record_of"]
