"""Cache export and import in BuildKit's manner: ``--cache-to`` / ``--cache-from``.

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
directory, tagged ``tag=`` (default ``latest``, as BuildKit).

Modes: ``mode=min`` (the default, as BuildKit) records only the steps whose results are part
of the artifact (layers, config, manifest, index): a rebuild from it still converts and
quantizes, then finds every layer and the config cached. ``mode=max`` records every keyed
step, transforms included: a rebuild on an empty machine runs no CONVERT, QUANTIZE, SHARD or
MERGE whose inputs did not change; it downloads their results instead.

Import: the records are read before the solve. On a local miss the solver asks
:meth:`CacheImporter.lookup`; a hit is reported CACHED. Downloads are lazy: the blobs of an
artifact step (layers, config, manifest) are fetched at once, since the artifact needs them
in the store; a transform's output is fetched only when a step that reads it has to run
(``materialize``), so a CONVERT whose output only fed a QUANTIZE that hit the cache too is
never downloaded. Every blob is verified against its digest on the way into the store; an
entry whose blob the cache lacks is a miss, so the step runs. A blob found corrupt only when
a later step needs it raises :class:`StaleImport`: the solver drops that entry and solves
again (its dependents' keys came from the bad entry), so the build never uses a wrong result.

Export runs after a successful build; a failure is a warning and the build still succeeds
(``ignore-error=false`` makes it an error). Registry options: ``plain-http=true`` (no TLS)
and ``insecure=true`` / ``registry.insecure=true`` (TLS without verifying the certificate).
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelbuild.digests import canonical_json, is_digest, sha256_bytes
from modelbuild.errors import EXIT_BUILD_FAILED, ModelbuildError, UsageError
from modelbuild.oci import mediatypes as mt
from modelbuild.progress import Event

CACHE_MEDIA_TYPE = "application/vnd.modelbuild.cache.v1+json"
BLOB_MEDIA_TYPE = "application/octet-stream"
RECORD_MAX = 64 << 20  # a record is kilobytes; refuse to read anything absurd into memory
TRANSFER_JOBS = 4
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
_KEYS = {
    "from": {"type", "ref", "src", "tag", "plain-http", "insecure", "registry.insecure"},
    "to": {"type", "ref", "dest", "tag", "mode", "ignore-error", "plain-http", "insecure", "registry.insecure"},
}


class StaleImport(Exception):
    """An imported result turned out unusable after the solver had used it (a blob the
    cache holds is corrupt): the solve must start again without that entry."""


@dataclass(frozen=True)
class CacheSpec:
    """One ``--cache-to`` or ``--cache-from`` value, parsed."""

    type: str  # "registry" or "local"
    text: str  # as the user wrote it, for messages
    ref: str | None = None  # registry: HOST/REPO:TAG
    path: Path | None = None  # local: the OCI layout directory
    tag: str = "latest"  # local: the layout's tag
    mode: str = "min"
    ignore_error: bool = True
    plain_http: bool = False
    insecure: bool = False

    @property
    def where(self) -> str:
        return self.ref if self.type == "registry" else f"{self.path}:{self.tag}"


def parse_cache_spec(text: str, *, direction: str, plain_http: bool = False, insecure: bool = False) -> CacheSpec:
    """``type=registry,ref=R[,mode=max]`` or ``type=local,dest|src=DIR``; a bare ``R`` means
    ``type=registry,ref=R``. *direction* is ``"to"`` or ``"from"``."""
    flag = f"--cache-{direction}"
    if "=" not in text:
        fields = {"type": "registry", "ref": text}
    else:
        fields = {}
        for part in text.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise UsageError(f"bad {flag} {text!r}", hint="use KEY=VALUE pairs, e.g. type=registry,ref=HOST/REPO:TAG")
            fields[key.strip()] = value.strip()
    unknown = sorted(set(fields) - _KEYS[direction])
    if unknown:
        raise UsageError(f"{flag} {text!r}: unknown key {unknown[0]!r}",
                         hint="known keys: " + ", ".join(sorted(_KEYS[direction])))
    kind = fields.get("type", "registry")

    def flag_value(name: str, default: bool) -> bool:
        value = fields.get(name)
        if value is None:
            return default
        if value.lower() in _TRUE or value == "":
            return True
        if value.lower() in _FALSE:
            return False
        raise UsageError(f"{flag} {text!r}: {name} must be true or false")

    common = {
        "text": text,
        "plain_http": flag_value("plain-http", plain_http),
        "insecure": flag_value("insecure", False) or flag_value("registry.insecure", insecure),
    }
    if direction == "to":
        mode = fields.get("mode", "min")
        if mode not in ("min", "max"):
            raise UsageError(f"{flag} {text!r}: mode must be min or max")
        common.update(mode=mode, ignore_error=flag_value("ignore-error", True))
    if kind == "registry":
        from modelbuild.oci.registry import split_reference

        ref = fields.get("ref")
        if not ref:
            raise UsageError(f"{flag} {text!r} needs ref=HOST/REPO:TAG")
        _, _, parsed = split_reference(ref)
        if parsed.digest and direction == "to":
            raise UsageError(f"{flag} {text!r}: a cache is exported to a tag, not a digest")
        return CacheSpec("registry", ref=str(parsed), **common)
    if kind == "local":
        where = "dest" if direction == "to" else "src"
        if not fields.get(where):
            raise UsageError(f"{flag} {text!r} needs {where}=DIR")
        tag = fields.get("tag", "latest")
        return CacheSpec("local", path=Path(fields[where]).resolve(), tag=tag, **common)
    raise UsageError(f"{flag} {text!r}: unsupported type {kind!r}", hint="supported: registry, local")


def parse_cache_specs(texts: Iterable[str], *, direction: str, plain_http: bool = False,
                      insecure: bool = False) -> list[CacheSpec]:
    return [parse_cache_spec(t, direction=direction, plain_http=plain_http, insecure=insecure) for t in texts]


# -- where a cache lives: a registry repository, or an OCI layout directory ----------------
class _Backend:
    spec: CacheSpec

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


class _RegistryBackend(_Backend):
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

    def push(self, digest: str, size: int, source: Any, mount_from: str | None = None) -> bool:
        return self.registry.push_blob(self.repo, digest, size, source, mount_from=mount_from)

    def put_manifest(self, data: bytes) -> None:
        self.registry.put_manifest(self.repo, self.ref, data, mt.OCI_MANIFEST)

    def close(self) -> None:
        self.registry.close()


class _LocalBackend(_Backend):
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
        from modelbuild.store import copy_stream

        with store.writer() as w:
            copy_stream(self.layout.blob_path(digest), w.write, None)
            got = "sha256:" + w.hasher.hexdigest()
            if got != digest or w.size != size:
                raise CacheError(f"{self.layout.blob_path(digest)} is corrupt (its content is {got}, not {digest})")
            w.commit()


def _backend(spec: CacheSpec) -> _Backend:
    return _RegistryBackend(spec) if spec.type == "registry" else _LocalBackend(spec)


class CacheError(ModelbuildError):
    """A cache could not be read or written."""

    exit_code = EXIT_BUILD_FAILED


def _human(n: int) -> str:
    from modelbuild.units import human_size

    return human_size(n, digits=2)


def _message(exc: BaseException) -> str:
    if isinstance(exc, ModelbuildError):
        return exc.message if hasattr(exc, "message") else str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _referenced(obj: Any) -> set[str]:
    """Every digest a result mentions (files, layer descriptors, descriptors)."""
    out: set[str] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            d = item.get("digest")
            if isinstance(d, str) and is_digest(d):
                out.add(d)
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, (dict, list)))
    return out


# -- import -----------------------------------------------------------------------------
@dataclass
class _Source:
    backend: _Backend
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
                backend = _backend(spec)
            except ModelbuildError as exc:
                emit(Event("log", number, label, message=f"skipped: {exc.message}"))
                self.env.emitter.warn(f"--cache-from {spec.text}: {exc.message}")
                continue
            try:
                entries = self._read(backend)
            except Exception as exc:  # noqa: BLE001 -- a cache that cannot be read is only a warning
                backend.close()
                emit(Event("log", number, label, message=f"failed: {_message(exc)}"))
                self.env.emitter.warn(f"cannot import the cache {spec.where}: {_message(exc)}; building without it")
                continue
            if entries is None:
                backend.close()
                emit(Event("log", number, label, message="not found"))
            else:
                self.sources.append(_Source(backend, entries))
                emit(Event("log", number, label, message=f"{_plural(len(entries), 'cached step')}"))
            emit(Event("done", number, label, duration=time.monotonic() - started))

    @staticmethod
    def _read(backend: _Backend) -> dict[str, dict[str, Any]] | None:
        manifest = backend.manifest()
        if manifest is None:
            return None
        config = manifest.get("config") or {}
        if CACHE_MEDIA_TYPE not in (manifest.get("artifactType"), config.get("mediaType")):
            raise CacheError(f"{backend.spec.where} is not a modelbuild cache (artifactType "
                             f"{manifest.get('artifactType') or config.get('mediaType')!r})")
        size = int(config.get("size", 0))
        if not is_digest(config.get("digest", "")) or not 0 < size <= RECORD_MAX:
            raise CacheError(f"{backend.spec.where}: the cache manifest's record descriptor is invalid")
        record = json.loads(backend.read_small(config["digest"], size))
        if record.get("mediaType") != CACHE_MEDIA_TYPE or record.get("schemaVersion") != 1:
            raise CacheError(f"{backend.spec.where}: unsupported cache record (schemaVersion "
                             f"{record.get('schemaVersion')!r})")
        entries = {}
        for step in record.get("steps", []):
            if (isinstance(step, dict) and isinstance(step.get("key"), str) and isinstance(step.get("op"), str)
                    and isinstance(step.get("result"), dict)):
                entries[step["key"]] = step
        return entries

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
                self.env.emitter.warn(f"cannot use the cache {source.backend.spec.where} any more: {_message(exc)}")

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
                    return result, f"from cache {where} ({_plural(len(missing), 'blob')} fetched only if needed)"
                got = self._fetch_all(source, missing)
                if not op.valid(result, self.env):
                    raise CacheError("the result is incomplete after its blobs were fetched")
            except Exception as exc:  # noqa: BLE001 -- any trouble with an entry makes it a miss
                self._reject(source, key, exc)
                emit(Event("log", number, step.label, message=f"cache {where} unusable: {_message(exc)}"))
                continue
            self.env.cache.set_step(key, result)
            self.env.stats.add(imported=step.id)
            return result, f"from cache {where}" + (f" ({_human(got)} fetched)" if got else "")
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
            wanted = [d for d in sorted(_referenced(inputs)) if d in self._pending_blobs and not store.has_blob(d)]
            for digest in wanted:
                size, owner = self._pending_blobs[digest]
                try:
                    self._fetch_all(owner.source, [{"digest": digest, "size": size}])
                except Exception as exc:
                    self._reject(owner.source, owner.key, exc)
                    self._forget(owner)
                    raise StaleImport(f"the cached result of a {owner.op} step from {owner.source.backend.spec.where} "
                                      f"is unusable: {_message(exc)}") from exc
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


# -- export -----------------------------------------------------------------------------
@dataclass
class _Entry:
    step: str
    op: Any
    key: str
    result: dict[str, Any]


def record_of(entries: Sequence[_Entry], mode: str) -> bytes:
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
                entries = [_Entry(sid, op, key, result) for sid, (op, key, result) in sorted(keyed.items())
                           if spec.mode == "max" or op.exported]
                summary = self._export(spec, entries)
            except Exception as exc:  # noqa: BLE001 -- a failing export never fails the build
                emit(Event("log", number, label, message=f"failed: {_message(exc)}"))
                if not spec.ignore_error:
                    raise CacheError(f"cannot export the cache to {spec.where}: {_message(exc)}") from None
                self.env.emitter.warn(f"cannot export the cache to {spec.where}: {_message(exc)} "
                                      "(the build itself succeeded)")
                continue
            emit(Event("log", number, label, message=summary))
            emit(Event("done", number, label, duration=time.monotonic() - started))

    def _blobs(self, entries: list[_Entry], present: Any) -> tuple[list[_Entry], list[dict[str, Any]], int]:
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

    def _export(self, spec: CacheSpec, entries: list[_Entry]) -> str:
        backend = _backend(spec)
        try:
            if isinstance(backend, _RegistryBackend):
                return self._to_registry(spec, backend, entries)
            return self._to_local(spec, backend, entries)  # type: ignore[arg-type]
        finally:
            backend.close()

    def _to_registry(self, spec: CacheSpec, backend: _RegistryBackend, entries: list[_Entry]) -> str:
        from modelbuild.oci.registry import split_reference, transfer_all

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

        def push(b: dict[str, Any]) -> int:
            if known.get(b["digest"]):
                return 0
            sent = backend.push(b["digest"], int(b["size"]), store.blob_path(b["digest"]), mount_from=mount)
            return int(b["size"]) if sent else -1  # -1: mounted or already there

        results = transfer_all([lambda b=b: push(b) for b in blobs], TRANSFER_JOBS)
        record_sent = backend.push(sha256_bytes(record), len(record), lambda: io.BytesIO(record))
        backend.put_manifest(manifest)
        uploaded = [n for n in results if n > 0]
        self.env.stats.add(blobs_exported=len(uploaded) + int(record_sent),
                           bytes_exported=sum(uploaded) + (len(record) if record_sent else 0))
        return self._summary(kept, blobs, dropped, len(uploaded), sum(uploaded))

    def _to_local(self, spec: CacheSpec, backend: _LocalBackend, entries: list[_Entry]) -> str:
        from modelbuild.oci.layout import link_or_copy
        from modelbuild.store import atomic_write

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
            if link_or_copy(store.blob_path(b["digest"]), layout.blob_path(b["digest"]), int(b["size"])):
                written, nbytes = written + 1, nbytes + int(b["size"])
        for data in (record, manifest):
            path = layout.blob_path(sha256_bytes(data))
            if not path.exists():
                atomic_write(path, data)
                written, nbytes = written + 1, nbytes + len(data)
        layout.tag(spec.tag, descriptor)
        for extra in ("ingest", "locks", "partial"):  # a standalone layout needs none of the store's bookkeeping
            try:
                (layout.root / extra).rmdir()
            except OSError:
                pass
        (layout.root / "index.json.lock").unlink(missing_ok=True)
        self.env.stats.add(blobs_exported=written, bytes_exported=nbytes)
        return self._summary(kept, blobs, dropped, written, nbytes)

    @staticmethod
    def _summary(kept: list[_Entry], blobs: list[dict[str, Any]], dropped: int, sent: int, nbytes: int) -> str:
        text = f"{_plural(len(kept), 'step')}, {_plural(len(blobs), 'blob')}; {sent} new ({_human(nbytes)})"
        if dropped:
            text += f"; {_plural(dropped, 'step')} left out (their blobs could not be had)"
        return text
