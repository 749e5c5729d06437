"""The store's tags: ``index.json``, the OCI layout's list of what it holds.

``index.json`` holds the tags (``org.opencontainers.image.ref.name``); it is rewritten
atomically under an exclusive ``flock``, so concurrent builds never lose each other's tags,
and every entry read back goes through :meth:`~modelbuild.oci.verify.Descriptor.parse`: a
damaged or hostile index is an error naming it, never a crash. Kept apart from the blobs
(:mod:`modelbuild.store`) because it is the one mutable file of the layout: everything else
is written once, under its digest.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from modelbuild.digests import is_digest
from modelbuild.errors import NotFoundError
from modelbuild.oci import mediatypes as mt
from modelbuild.oci.verify import Descriptor, IntegrityError, parse_json_object, shown
from modelbuild.storage.files import atomic_write, flock, os_failure, read_bounded, store_io

REF_ANNOTATION = "org.opencontainers.image.ref.name"
MAX_INDEX = 64 << 20  # index.json lists every tag: far more than a manifest, still not endless


def tag_entry(ref: str, descriptor: Mapping[str, Any]) -> dict[str, Any]:
    """The ``index.json`` entry that tags *descriptor* as *ref*."""
    entry = dict(descriptor)
    entry["annotations"] = {**(descriptor.get("annotations") or {}), REF_ANNOTATION: ref}
    return entry


def ref_of(entry: Mapping[str, Any]) -> str | None:
    return (entry.get("annotations") or {}).get(REF_ANNOTATION)


class TagIndex:
    """The tag half of :class:`~modelbuild.store.Store` (a mixin: it needs the store's root
    and its blob reads, for :meth:`resolve`)."""

    root: Path
    index_path: Path

    def has_blob(self, digest: str) -> bool:
        raise NotImplementedError

    def read_blob(self, digest: str, size: int | None = None) -> bytes:
        raise NotImplementedError

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        with flock(self.root / "index.json.lock", exclusive=True):
            yield

    def manifests(self) -> list[dict[str, Any]]:
        """The entries of ``index.json``, each a validated descriptor; a damaged file is an
        error naming it (an empty store has none)."""
        try:
            data = read_bounded(self.index_path, MAX_INDEX)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise os_failure(exc, "read the index", self.index_path) from None
        where = shown(self.index_path)
        doc = parse_json_object(data, where)
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise IntegrityError(f"{where}: has no 'manifests' list")
        out = []
        for i, item in enumerate(entries):
            descriptor = Descriptor.parse(item, f"{where} manifests[{i}]")
            entry = dict(descriptor.raw)
            entry.pop("annotations", None)
            if descriptor.annotations:
                entry["annotations"] = dict(descriptor.annotations)
            out.append(entry)
        return out

    def tags(self) -> dict[str, dict[str, Any]]:
        return {ref: m for m in self.manifests() if (ref := ref_of(m)) is not None}

    def tag(self, ref: str, descriptor: Mapping[str, Any]) -> bool:
        """Point *ref* at *descriptor*; return False when it already did."""
        return self.set_tags([(ref, descriptor)])

    def set_tags(self, tags: Sequence[tuple[str, Mapping[str, Any]]]) -> bool:
        """Point each ref at its descriptor in one rewrite of ``index.json``: a reader (or a
        failure) sees all of them moved or none. Returns False when nothing changed."""
        if not tags:
            return False
        with self._index_lock():
            entries = self.manifests()
            wanted = {ref: tag_entry(ref, descriptor) for ref, descriptor in tags}
            if all(entry in entries for entry in wanted.values()):
                return False
            kept = [m for m in entries if ref_of(m) not in wanted]
            kept.extend(wanted.values())
            kept.sort(key=lambda m: (ref_of(m) or "", m["digest"]))
            self._write_index(kept)
            return True

    def untag(self, ref: str) -> dict[str, Any] | None:
        if ref not in self.tags():
            ref = _normalised(ref)
        with self._index_lock():
            entries = self.manifests()
            gone = [m for m in entries if ref_of(m) == ref]
            if not gone:
                return None
            self._write_index([m for m in entries if m not in gone])
            return gone[0]

    def add_untagged(self, descriptor: Mapping[str, Any]) -> bool:
        """List *descriptor* in ``index.json`` without a tag (an ``--output`` layout of an
        untagged build); False when it is there already."""
        with self._index_lock():
            entries = self.manifests()
            if any(m["digest"] == descriptor["digest"] for m in entries):
                return False
            self._write_index([*entries, dict(descriptor)])
            return True

    def _write_index(self, entries: list[dict[str, Any]]) -> None:
        with store_io("write the index", self.index_path, exact=True):
            atomic_write(self.index_path, _index_bytes(entries))

    def resolve(self, ref: str) -> dict[str, Any]:
        """A tag or a manifest digest → its descriptor."""
        if is_digest(ref):
            if not self.has_blob(ref):
                raise NotFoundError(f"{ref} is not in {shown(self.root)}")
            data = self.read_blob(ref)
            doc = parse_json_object(data, f"blob {ref} in {shown(self.root)}")
            media = doc.get("mediaType")
            return {"mediaType": media if isinstance(media, str) else mt.OCI_MANIFEST, "digest": ref,
                    "size": len(data)}
        tags = self.tags()
        if ref in tags:
            return tags[ref]
        normalised = _normalised(ref)
        if normalised in tags:
            return tags[normalised]
        raise NotFoundError(f"no such model: {shown(ref)}", hint="`modelbuild ls` lists what is stored")


def _normalised(ref: str) -> str:
    """``name`` → ``name:latest``, as a user typing a bare name means."""
    from modelbuild.errors import UsageError
    from modelbuild.oci.reference import parse_reference

    try:
        return str(parse_reference(ref))
    except UsageError:
        return ref


def _index_bytes(manifests: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}, indent=2
    ).encode() + b"\n"


__all__ = ["MAX_INDEX", "REF_ANNOTATION", "TagIndex", "ref_of", "tag_entry"]
