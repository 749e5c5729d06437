"""Cache export in BuildKit's manner: ``--cache-to``.

Export runs after a successful build; a failure is a warning and the build still succeeds
(``ignore-error=false`` makes it an error). Modes: ``mode=min`` (the default, as BuildKit)
records only the steps whose results are part of the artifact (layers, config, manifest,
index): a rebuild from it still converts and quantizes, then finds every layer and the
config cached. ``mode=max`` records every keyed step, transforms included: a rebuild on an
empty machine runs no CONVERT, QUANTIZE, SHARD or MERGE whose inputs did not change; it
downloads their results instead.

Blobs go to a registry through the one upload path (:func:`modelbuild.oci.upload.upload_blobs`,
as a push: skipped where the registry has them, mounted from a repository this build pushed
to); into a local layout they are hard-linked or copied by the layout's own
:class:`~modelbuild.store.Store`. The record format is :mod:`modelbuild.cache.record`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from modelbuild.cache.backends import LocalBackend, RegistryBackend, open_backend
from modelbuild.cache.errors import CacheError, human, message, plural
from modelbuild.cache.importer import TRANSFER_JOBS, CacheImporter
from modelbuild.cache.record import Entry, manifest_of, record_of
from modelbuild.cache.spec import CacheSpec
from modelbuild.digests import sha256_bytes
from modelbuild.errors import UsageError
from modelbuild.progress import Event


class CacheExporter:
    """Writes the keyed results of a finished build to each ``--cache-to``."""

    def __init__(self, specs: Sequence[CacheSpec], env: Any, *, first_number: int,
                 importer: CacheImporter | None = None, mount_from: Sequence[str] = ()) -> None:
        self.specs = list(specs)
        self.env = env
        self.first_number = first_number
        self.importer = importer
        self.mount_from = list(mount_from)  # other references pushed to (cross-repository mounts)

    def export(self, keyed: dict[str, tuple[Any, str, dict[str, Any]]]) -> None:
        """*keyed*: step id → (op, key, result) of every keyed step of the build."""
        emit = self.env.emitter.emit
        for i, spec in enumerate(self.specs):
            number = self.first_number + i
            label = f"exporting cache to {spec.where} (mode={spec.mode})"
            started = time.monotonic()
            emit(Event("start", number, label))
            try:
                entries = [Entry(sid, op, key, result) for sid, (op, key, result) in sorted(keyed.items())
                           if spec.mode == "max" or op.exported]
                summary = self._export(spec, entries)
            except Exception as exc:  # noqa: BLE001 -- a failing export never fails the build
                emit(Event("log", number, label, message=f"failed: {message(exc)}"))
                if not spec.ignore_error:
                    raise CacheError(f"cannot export the cache to {spec.where}: {message(exc)}") from None
                self.env.emitter.warn(f"cannot export the cache to {spec.where}: {message(exc)} "
                                      "(the build itself succeeded)")
                continue
            emit(Event("log", number, label, message=summary))
            emit(Event("done", number, label, duration=time.monotonic() - started))

    def _blobs(self, entries: list[Entry], present: Any) -> tuple[list[Entry], list[dict[str, Any]], int]:
        """The entries whose blobs can be had, their blobs, and how many entries were left out.
        A blob the store lacks (an import deferred) is fetched unless *present* (at the
        destination) already."""
        kept, blobs, dropped = [], {}, 0
        for e in entries:
            mine = [b for b in e.op.blobs(e.result)]
            ok = True
            for b in mine:  # the cheap check: a damaged local blob is never exported (it is removed)
                size = int(b["size"])
                if self.env.store.check_blob(b["digest"], size, on_damage=self.env.emitter.warn) or present(
                        b["digest"], size):
                    continue
                if self.importer is None or not self.importer.fetch_for_export(b["digest"]):
                    ok = False
                    break
            if ok:
                kept.append(e)
                for b in mine:
                    blobs.setdefault(b["digest"], b)
            else:
                dropped += 1
        return kept, list(blobs.values()), dropped

    def _export(self, spec: CacheSpec, entries: list[Entry]) -> str:
        backend = open_backend(spec)
        try:
            if isinstance(backend, RegistryBackend):
                return self._to_registry(spec, backend, entries)
            return self._to_local(spec, backend, entries)  # type: ignore[arg-type]
        finally:
            backend.close()

    def _to_registry(self, spec: CacheSpec, backend: RegistryBackend, entries: list[Entry]) -> str:
        from modelbuild.oci.registry import split_reference
        from modelbuild.oci.upload import Blob, upload_blobs

        store = self.env.store
        known: dict[str, bool] = {}

        def present(digest: str, size: int) -> bool:
            if digest not in known:
                known[digest] = backend.has_blob(digest, size)
            return known[digest]

        kept, blobs, dropped = self._blobs(entries, present)
        record = record_of(kept, spec.mode)
        manifest, _ = manifest_of(record, blobs)
        mount = None
        for ref in self.mount_from:  # a tag on the same registry: its blobs mount, never upload
            try:
                host, repo, _ = split_reference(ref)
            except UsageError:
                continue
            if host == backend.host and repo != backend.repo:
                mount = repo
                break

        results = upload_blobs(store, backend.registry, backend.repo,
                               [Blob(b["digest"], int(b["size"])) for b in blobs], jobs=TRANSFER_JOBS,
                               present={d for d, there in known.items() if there}, mount_from=mount)
        record_sent = backend.push_bytes(sha256_bytes(record), record)
        backend.put_manifest(manifest)
        uploaded = [n for n in results if n > 0]
        self.env.stats.add(blobs_exported=len(uploaded) + int(record_sent),
                           bytes_exported=sum(uploaded) + (len(record) if record_sent else 0))
        return self._summary(kept, blobs, dropped, len(uploaded), sum(uploaded))

    def _to_local(self, spec: CacheSpec, backend: LocalBackend, entries: list[Entry]) -> str:
        store, layout = self.env.store, backend.layout
        try:
            layout.ensure()
        except OSError as exc:
            raise CacheError(f"cannot create the cache layout {spec.path}: {exc.strerror}") from None
        kept, blobs, dropped = self._blobs(entries, backend.has_blob)
        record = record_of(kept, spec.mode)
        manifest, descriptor = manifest_of(record, blobs)
        written, nbytes = 0, 0
        for b in blobs:
            if layout.link_from(store, b["digest"], int(b["size"])):
                written, nbytes = written + 1, nbytes + int(b["size"])
        for data in (record, manifest):
            if not layout.has_blob(sha256_bytes(data)):
                layout.put_bytes(data)
                written, nbytes = written + 1, nbytes + len(data)
        layout.tag(spec.tag, descriptor)
        layout.tidy()  # a standalone layout needs none of the store's bookkeeping
        self.env.stats.add(blobs_exported=written, bytes_exported=nbytes)
        return self._summary(kept, blobs, dropped, written, nbytes)

    @staticmethod
    def _summary(kept: list[Entry], blobs: list[dict[str, Any]], dropped: int, sent: int, nbytes: int) -> str:
        text = f"{plural(len(kept), 'step')}, {plural(len(blobs), 'blob')}; {sent} new ({human(nbytes)})"
        if dropped:
            text += f"; {plural(dropped, 'step')} left out (their blobs could not be had)"
        return text


__all__ = ["CacheExporter"]
