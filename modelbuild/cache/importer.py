"""Cache import in BuildKit's manner: ``--cache-from``.

The records are read before the solve. On a local miss the solver asks
:meth:`CacheImporter.lookup`; a hit is reported CACHED. Downloads are lazy: the blobs of an
artifact step (layers, config, manifest) are fetched at once, since the artifact needs them
in the store; a transform's output is fetched only when a step that reads it has to run
(:meth:`~CacheImporter.materialize`), so a CONVERT whose output only fed a QUANTIZE that hit
the cache too is never downloaded. Every blob is verified against its digest on the way into
the store; an entry whose blob the cache lacks is a miss, so the step runs. A blob found
corrupt only when a later step needs it raises :class:`StaleImport`: the solver drops that
entry and solves again (its dependents' keys came from the bad entry), so the build never
uses a wrong result. A cache that cannot be read at all is a warning: the build goes on
without it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelbuild.cache.backends import Backend, open_backend
from modelbuild.cache.errors import CacheError, StaleImport, human, message, plural
from modelbuild.cache.record import read_record
from modelbuild.cache.spec import CacheSpec
from modelbuild.digests import is_digest
from modelbuild.errors import ModelbuildError
from modelbuild.oci.walk import digests_named
from modelbuild.progress import Event

TRANSFER_JOBS = 4


@dataclass
class _Source:
    backend: Backend
    entries: dict[str, dict[str, Any]]  # key → {"op", "result", …}


@dataclass
class _Pending:
    """A result taken from a cache whose blobs are not downloaded yet."""

    key: str
    op: str
    result: dict[str, Any]
    blobs: list[dict[str, Any]]
    source: _Source


class CacheImporter:
    """The records of every ``--cache-from``, consulted by the solver on a local miss."""

    def __init__(self, specs: Sequence[CacheSpec], env: Any, *, first_number: int) -> None:
        self.specs = list(specs)
        self.env = env
        self.first_number = first_number
        self.sources: list[_Source] = []
        self._rejected: set[tuple[int, str]] = set()  # (id of the source, key)
        self._pending: dict[str, _Pending] = {}  # step id → pending
        self._pending_blobs: dict[str, tuple[int, _Pending]] = {}  # digest → (size, owner)
        self._lock = threading.RLock()

    def load(self) -> None:
        emit = self.env.emitter.emit
        for i, spec in enumerate(self.specs):
            number = self.first_number + i
            label = f"importing cache from {spec.where}"
            started = time.monotonic()
            emit(Event("start", number, label))
            try:
                backend = open_backend(spec)
            except ModelbuildError as exc:
                emit(Event("log", number, label, message=f"skipped: {exc.message}"))
                self.env.emitter.warn(f"--cache-from {spec.text}: {exc.message}")
                continue
            try:
                entries = read_record(backend)
            except Exception as exc:  # noqa: BLE001 -- a cache that cannot be read is only a warning
                backend.close()
                emit(Event("log", number, label, message=f"failed: {message(exc)}"))
                self.env.emitter.warn(f"cannot import the cache {spec.where}: {message(exc)}; building without it")
                continue
            if entries is None:
                backend.close()
                emit(Event("log", number, label, message="not found"))
            else:
                self.sources.append(_Source(backend, entries))
                emit(Event("log", number, label, message=f"{plural(len(entries), 'cached step')}"))
            emit(Event("done", number, label, duration=time.monotonic() - started))

    def close(self) -> None:
        for source in self.sources:
            source.backend.close()

    def _reject(self, source: _Source, key: str, exc: BaseException) -> None:
        """Never use this entry again; where the cache itself failed (it cannot be reached,
        not a corrupt or missing blob), use none of its entries again: every one would wait
        out the same retries."""
        from modelbuild.oci.registry import DigestMismatchError, RegistryError

        with self._lock:
            self._rejected.add((id(source), key))
            if isinstance(exc, RegistryError) and not isinstance(exc, DigestMismatchError) and source in self.sources:
                self.sources.remove(source)
                self.env.emitter.warn(f"cannot use the cache {source.backend.spec.where} any more: {message(exc)}")

    def _candidates(self, key: str, op_name: str) -> list[tuple[_Source, dict[str, Any]]]:
        with self._lock:
            return [(s, s.entries[key]) for s in self.sources
                    if key in s.entries and s.entries[key]["op"] == op_name and (id(s), key) not in self._rejected]

    def lookup(self, op: Any, key: str, step: Any, number: int) -> tuple[dict[str, Any], str] | None:
        """The result an imported cache has for *key* and a line to show under the step's
        CACHED, or None (then the step runs).

        An artifact step's blobs are fetched now; another step's blobs are only checked to
        exist in the cache and fetched when a step that reads them runs (:meth:`materialize`).
        """
        store, emit = self.env.store, self.env.emitter.emit
        for source, entry in self._candidates(key, op.name):
            result = entry["result"]
            where = source.backend.spec.where
            try:
                blobs = [b for b in op.blobs(result) if is_digest(b["digest"])]
                missing = list({b["digest"]: b for b in blobs if not store.has_blob(b["digest"])}.values())
                absent = [b["digest"] for b in missing if not source.backend.has_blob(b["digest"], b["size"])]
                if absent:
                    raise CacheError(f"the cache lacks blob {absent[0]}")
                if missing and not op.exported:
                    with self._lock:
                        pending = _Pending(key, op.name, result, missing, source)
                        self._pending[step.id] = pending
                        for b in missing:
                            self._pending_blobs[b["digest"]] = (int(b["size"]), pending)
                    self.env.stats.add(imported=step.id)
                    return result, f"from cache {where} ({plural(len(missing), 'blob')} fetched only if needed)"
                got = self._fetch_all(source, missing)
                if not op.valid(result, self.env):
                    raise CacheError("the result is incomplete after its blobs were fetched")
            except Exception as exc:  # noqa: BLE001 -- any trouble with an entry makes it a miss
                self._reject(source, key, exc)
                emit(Event("log", number, step.label, message=f"cache {where} unusable: {message(exc)}"))
                continue
            self.env.cache.set_step(key, result)
            self.env.stats.add(imported=step.id)
            return result, f"from cache {where}" + (f" ({human(got)} fetched)" if got else "")
        return None

    def _fetch_all(self, source: _Source, blobs: list[dict[str, Any]]) -> int:
        from modelbuild.oci.registry import transfer_all

        store = self.env.store

        def fetch(b: dict[str, Any]) -> int:
            if store.has_blob(b["digest"]):
                return 0
            source.backend.fetch(b["digest"], int(b["size"]), store)
            self.env.stats.add(bytes_imported=int(b["size"]))
            return int(b["size"])

        return sum(transfer_all([lambda b=b: fetch(b) for b in blobs], TRANSFER_JOBS))

    def materialize(self, inputs: list[dict[str, Any]]) -> None:
        """Fetch the pending blobs that *inputs* (the results a step is about to read)
        reference; record each pending result in the local index once all its blobs are in.
        Raises :class:`StaleImport` when the cache cannot deliver one intact."""
        if not self._pending_blobs:
            return
        with self._lock:
            store = self.env.store
            wanted = [d for d in sorted(digests_named(inputs)) if d in self._pending_blobs and not store.has_blob(d)]
            for digest in wanted:
                size, owner = self._pending_blobs[digest]
                try:
                    self._fetch_all(owner.source, [{"digest": digest, "size": size}])
                except Exception as exc:
                    self._reject(owner.source, owner.key, exc)
                    self._forget(owner)
                    raise StaleImport(f"the cached result of a {owner.op} step from {owner.source.backend.spec.where} "
                                      f"is unusable: {message(exc)}") from exc
            for pending in list(self._pending.values()):
                if all(store.has_blob(b["digest"]) for b in pending.blobs):
                    self.env.cache.set_step(pending.key, pending.result)
                    self._forget(pending)

    def _forget(self, pending: _Pending) -> None:
        for sid in [s for s, p in self._pending.items() if p is pending]:
            del self._pending[sid]
        for digest in [d for d, (_, p) in self._pending_blobs.items() if p is pending]:
            del self._pending_blobs[digest]

    def fetch_for_export(self, digest: str) -> bool:
        """Fetch a blob the store lacks because its import was deferred; whether it worked."""
        with self._lock:
            found = self._pending_blobs.get(digest)
            if found is None:
                return False
            size, owner = found
            try:
                self._fetch_all(owner.source, [{"digest": digest, "size": size}])
            except Exception:  # noqa: BLE001 -- the entry is then left out of the export
                return False
            return True


__all__ = ["CacheImporter", "StaleImport"]
