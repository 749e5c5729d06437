"""The store's referrers: which artifacts name a manifest as their ``subject`` (OCI 1.1).

A registry answers ``GET /v2/<name>/referrers/<digest>`` with an OCI index of the manifests
whose ``subject`` is that digest; the store keeps the same answer, one small file per subject::

    <store>/referrers/sha256/<hex of the subject>   an OCI image index: {"schemaVersion": 2,
                                                    "mediaType": "…image.index.v1+json",
                                                    "manifests": [referrer descriptors]}

Each descriptor has the referrer's ``mediaType``, ``artifactType``, ``digest`` and ``size``:
what a reader filters on without opening the referrer. The referrer's own blobs are ordinary
store blobs. A record is rewritten atomically under an ``flock`` (two builds recording at once
lose nothing), holds each referrer once, in the order they were recorded (the latest last), and
at most :data:`MAX_REFERRERS` of them; reading one back checks it as hostile input, since
anyone can write to the store's directory: bounded in size, every descriptor validated.

Kept apart from the blobs (:mod:`modelbuild.store`) because, like ``index.json``, it is
mutable: a record changes whenever a build or a pull attaches something to a manifest.
``prune`` keeps the referrers of every manifest a tag reaches, and forgets the rest
(:meth:`modelbuild.store.Store.reachable`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from modelbuild.digests import canonical_json, hex_of, is_digest
from modelbuild.errors import StoreError
from modelbuild.oci import mediatypes as mt
from modelbuild.oci.verify import Descriptor, IntegrityError, ManifestParts, parse_json_object, shown
from modelbuild.storage.files import atomic_write, flock, os_failure, read_bounded, store_io

MAX_REFERRERS = 64  # per subject: a description and a few signatures, not an unbounded list
MAX_RECORD = 1 << 20  # bytes of one record: 64 descriptors are a few KiB
_KEPT = ("mediaType", "artifactType", "digest", "size", "annotations")


def referrer_entry(descriptor: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a referrer descriptor a record (and a referrers index) keeps."""
    return {k: descriptor[k] for k in _KEPT if descriptor.get(k) is not None}


def referrers_index(descriptors: Sequence[Mapping[str, Any]]) -> bytes:
    """An OCI index listing *descriptors*: a record's bytes, and the body of the referrers
    tag a push writes for a registry without the referrers API."""
    return canonical_json({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                           "manifests": [referrer_entry(d) for d in descriptors]})


def parse_referrers(data: bytes, where: str, *, limit: int | None = MAX_REFERRERS) -> list[dict[str, Any]]:
    """The referrer descriptors of an index (a record, a registry's answer), validated: at
    most *limit* (None: any number; a registry's answer is bounded by the manifest limit),
    each a descriptor. An :class:`IntegrityError` names *where*."""
    doc = parse_json_object(data, where)
    parts = ManifestParts.parse(doc, where)
    if limit is not None and len(parts.manifests) > limit:
        raise IntegrityError(f"{where}: lists {len(parts.manifests)} referrers, more than {limit}")
    out = []
    for d in parts.manifests:
        entry = referrer_entry(d.raw)
        if not isinstance(entry.get("artifactType", ""), str):
            raise IntegrityError(f"{where}: the artifactType of {d.digest} is not a string")
        out.append(entry)
    return out


class ReferrerIndex:
    """The referrer half of :class:`~modelbuild.store.Store` (a mixin, as
    :class:`~modelbuild.storage.tags.TagIndex` is: it needs only the store's root)."""

    root: Path

    @property
    def referrers_dir(self) -> Path:
        return self.root / "referrers" / "sha256"

    def _record_path(self, subject: str) -> Path:
        try:
            return self.referrers_dir / hex_of(subject)
        except ValueError as exc:
            raise StoreError(shown(exc)) from None

    @contextlib.contextmanager
    def _referrers_lock(self) -> Iterator[None]:
        with store_io("record a referrer", self.referrers_dir):
            self.referrers_dir.mkdir(parents=True, exist_ok=True)
        with flock(self.root / "referrers" / "lock", exclusive=True):
            yield

    def list_referrers(self, subject: str) -> list[dict[str, Any]]:
        """The referrers recorded for the manifest *subject*, oldest first (none: ``[]``). A
        damaged record is an :class:`IntegrityError` naming its file."""
        path = self._record_path(subject)
        try:
            data = read_bounded(path, MAX_RECORD)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise os_failure(exc, "read the referrers", path) from None
        return parse_referrers(data, f"{shown(path)} (the referrers of {subject})")

    def record_referrers(self, subject: str, descriptors: Sequence[Mapping[str, Any]], *,
                         replace: bool = False) -> bool:
        """Record *descriptors* as referrers of *subject*, each once, after those already
        there (moved last if they were: the latest recorded is the current one). With
        *replace*, the recorded referrers of the same ``artifactType`` as one of
        *descriptors* are forgotten (a rebuild's runtime description replaces the previous
        build's, where a pull adds a registry's beside them). Beyond :data:`MAX_REFERRERS`
        the oldest are forgotten. Returns whether the record changed."""
        wanted = [referrer_entry(d) for d in descriptors]
        for entry in wanted:
            Descriptor.parse(entry, f"a referrer of {subject}")  # never record what a reader would refuse
        path = self._record_path(subject)
        with self._referrers_lock():
            try:
                current = self.list_referrers(subject)
            except IntegrityError:  # a damaged record is rewritten whole: the store keeps no garbage
                current = []
            new = {e["digest"] for e in wanted}
            kinds = {e.get("artifactType") for e in wanted} if replace else set()
            kept = [e for e in current if e["digest"] not in new and e.get("artifactType") not in kinds]
            entries = (kept + wanted)[-MAX_REFERRERS:]
            if entries == current:
                return False
            with store_io("record a referrer", path, exact=True):
                if entries:
                    atomic_write(path, referrers_index(entries))
                else:
                    path.unlink(missing_ok=True)
            return True

    def referrer_subjects(self) -> list[str]:
        """Every subject with a record (what ``prune`` walks from and tidies)."""
        if not self.referrers_dir.is_dir():
            return []
        with store_io("list the referrers", self.referrers_dir):
            return sorted("sha256:" + p.name for p in self.referrers_dir.iterdir() if is_digest("sha256:" + p.name))

    def forget_referrers(self, subject: str, keep: Sequence[str] | None = None) -> None:
        """Forget *subject*'s record (``prune``: no tag reaches it), or, given *keep*, every
        referrer of it whose digest is not in *keep* (its blob is gone)."""
        path = self._record_path(subject)
        with self._referrers_lock():
            if keep is None:
                with store_io("forget the referrers", path, exact=True):
                    path.unlink(missing_ok=True)
                return
            try:
                current = self.list_referrers(subject)
            except IntegrityError:
                current = []
            entries = [e for e in current if e["digest"] in keep]
            if entries != current:
                with store_io("forget the referrers", path, exact=True):
                    if entries:
                        atomic_write(path, referrers_index(entries))
                    else:
                        path.unlink(missing_ok=True)


__all__ = ["MAX_REFERRERS", "ReferrerIndex", "parse_referrers", "referrer_entry", "referrers_index"]
