"""Whole artifacts between the local store, a registry and a directory.

:mod:`modelbuild.oci.registry` moves one blob or one manifest; this module moves artifacts:

* :func:`push_artifact`: a tag of the local store to a registry. Blobs first (HEAD-skip,
  cross-repository mount where the caller knows a repository that has them, ``jobs`` at a
  time), then child manifests, then the manifest or index under its tag, each PUT with the
  exact bytes the store holds, so the registry's digests are the store's.
* :func:`pull_artifact`: a registry reference into the local store, tagged there. Blobs
  stream into ``<store>/partial/<hex>`` (resumed by the next pull after a kill -9), are
  verified and renamed under their digest; manifests go in last, the tag after them, so
  the store never has a tag pointing at a blob it lacks. The store's gc lock is held
  shared throughout (``prune`` waits).
* :func:`pull_to_dir`: a registry reference straight into a directory, no store, through the
  one materialisation (:mod:`modelbuild.oci.materialize`): blobs download into
  ``DIR/.modelbuild-partial/<hex>`` (resumable, named by digest only), are verified, staged
  and moved into place only when every file is verified.

Legacy ModelPack artifacts (``application/vnd.cnai.model.*``, ``org.cnai.model.*``) are
read like current ones. Progress goes to a :class:`modelbuild.progress.Emitter` as one step
per blob, like a build's steps; a blob the other side already has is reported ``CACHED``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelbuild.digests import is_digest
from modelbuild.errors import StoreError, UsageError
from modelbuild.oci import mediatypes as mt
from modelbuild.oci.materialize import layer_path
from modelbuild.oci.registry import (
    DigestMismatchError,
    Registry,
    RegistryError,
    split_reference,
    transfer_all,
)
from modelbuild.progress import Emitter, Event
from modelbuild.units import human_size

DEFAULT_JOBS = 4
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_INDEX = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = (mt.OCI_INDEX, DOCKER_INDEX)


# -- references -------------------------------------------------------------------------
def names_registry(text: str) -> bool:
    """Whether *text* is a reference to a registry (``host.name/…``, ``host:port/…``,
    ``localhost/…``) rather than a local tag or a path."""
    first, slash, _ = text.partition("/")
    if not slash or first in (".", "..", "~", ""):
        return False
    return "." in first or ":" in first or first == "localhost"


def remote_ref(text: str) -> tuple[str, str, str, str]:
    """``host/repo:tag`` → ``(host, repo, tag-or-digest, normalised reference)``."""
    host, repo, parsed = split_reference(text)
    return host, repo, parsed.digest or parsed.tag or "latest", str(parsed)


def open_registry(host: str, *, plain_http: bool = False, insecure: bool = False) -> Registry:
    return Registry(host, plain_http=plain_http, insecure=insecure)


@contextlib.contextmanager
def login_hint(host: str) -> Iterator[None]:
    """Hints in the CLI's words: ``modelbuild login`` for an authentication failure
    (``docker login`` works too: both write docker's config), ``--insecure`` and
    ``--plain-http`` for a TLS failure."""
    try:
        yield
    except RegistryError as exc:
        if exc.hint:
            exc.hint = exc.hint.replace("docker login", "modelbuild login")
            if "use insecure" in exc.hint:
                exc.hint = ("for a registry without a valid certificate pass --insecure, "
                            "for one without TLS --plain-http")
        raise


# -- progress ---------------------------------------------------------------------------
class _Steps:
    """Numbered progress steps, one per blob or manifest, for an optional Emitter."""

    def __init__(self, emitter: Emitter | None, first: int = 1) -> None:
        self.emitter = emitter
        self._numbers = itertools.count(first)
        self._lock = threading.Lock()

    @classmethod
    def of(cls, progress: Emitter | _Steps | None) -> _Steps:
        return progress if isinstance(progress, _Steps) else cls(progress)

    def new(self, label: str, total: int | None = None) -> _Step:
        with self._lock:
            number = next(self._numbers)
        return _Step(self, number, label, total)

    def emit(self, event: Event) -> None:
        if self.emitter is not None:
            self.emitter.emit(event)

    def warn(self, message: str) -> None:
        if self.emitter is not None:
            self.emitter.warn(message)


class _Step:
    """A step shows up when its first byte moves; one with nothing to move is CACHED."""

    def __init__(self, steps: _Steps, number: int, label: str, total: int | None) -> None:
        self.steps, self.number, self.label, self.total = steps, number, label, total
        self.started = False
        self.current = 0
        self.t0 = time.monotonic()

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.t0 = time.monotonic()
            self.steps.emit(Event("start", self.number, self.label, total=self.total))

    def advance(self, n: int) -> None:
        self.start()
        self.current += n
        self.steps.emit(Event("progress", self.number, self.label, current=self.current, total=self.total))

    def finish(self, moved: bool) -> None:
        if moved:
            self.start()
            self.steps.emit(Event("done", self.number, self.label, duration=time.monotonic() - self.t0))
        else:
            self.steps.emit(Event("cached", self.number, self.label))


# -- what an artifact is made of ---------------------------------------------------------
@dataclass(frozen=True)
class _Blob:
    digest: str
    size: int
    label: str  # the file path, or "config"


@dataclass(frozen=True)
class _Manifest:
    digest: str
    media_type: str
    data: bytes
    doc: dict[str, Any]


def _parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise RegistryError(f"{where} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{where} is not a JSON object")
    return doc


def _is_index(doc: dict[str, Any], media_type: str = "") -> bool:
    return media_type in INDEX_TYPES or doc.get("mediaType") in INDEX_TYPES or (
        "manifests" in doc and "layers" not in doc)


def _media_type(doc: dict[str, Any], fallback: str | None) -> str:
    return doc.get("mediaType") or fallback or (mt.OCI_INDEX if _is_index(doc) else mt.OCI_MANIFEST)


def _blobs_of(manifests: list[_Manifest], where: str) -> list[_Blob]:
    """Config and layers of every manifest, each digest once, in order."""
    out: dict[str, _Blob] = {}
    for m in manifests:
        parts = ([("config", m.doc["config"])] if isinstance(m.doc.get("config"), dict) else []) + [
            (layer_path(layer) or "layer", layer) for layer in m.doc.get("layers") or []]
        for label, desc in parts:
            digest, size = desc.get("digest"), desc.get("size")
            if not isinstance(digest, str) or not is_digest(digest) or not isinstance(size, int) or size < 0:
                raise RegistryError(f"{where}: manifest {m.digest} has a malformed descriptor {json.dumps(desc)[:200]}")
            out.setdefault(digest, _Blob(digest, size, label))
    return list(out.values())


def _store_tree(store: Any, descriptor: dict[str, Any]) -> list[_Manifest]:
    """The manifests under *descriptor* in the local store (or a layout), children before
    parents: each read back verified against its digest and size, every descriptor in it
    validated, so what is pushed is what the digests name."""
    from modelbuild.oci.verify import Descriptor, IntegrityError, parse_json_object
    from modelbuild.store import ManifestParts

    out: list[_Manifest] = []
    seen: set[str] = set()

    def walk(desc: Descriptor, depth: int) -> None:
        if desc.digest in seen:
            return
        seen.add(desc.digest)
        if not store.has_blob(desc.digest):
            raise StoreError(f"manifest {desc.digest} is missing from the local store",
                             hint="`modelbuild prune --verify` checks the store")
        where = f"manifest {desc.digest}"
        data = store.read_blob(desc.digest, desc.size)
        doc = parse_json_object(data, where)
        if not isinstance(doc.get("mediaType", ""), str):
            raise IntegrityError(f"{where}: its mediaType is not a string")
        parts = ManifestParts.parse(doc, where)
        if parts.manifests and depth >= 4:
            raise IntegrityError(f"{where}: indexes nested more than 4 deep")
        for child in parts.manifests:
            walk(child, depth + 1)
        out.append(_Manifest(desc.digest, _media_type(doc, desc.media_type or None), data, doc))

    walk(Descriptor.parse(descriptor, "the artifact to push"), 0)
    return out


def _select(index: dict[str, Any], platform: str) -> Any:
    from modelbuild.plugins import make_plugin_manager
    from modelbuild.targets import detect_host, select_entry

    return select_entry(index, platform, detect_host(), make_plugin_manager().targets)


def _remote_tree(registry: Registry, repo: str, ref: str, platform: str | None
                 ) -> tuple[list[_Manifest], str | None, str | None]:
    """The manifests of ``repo:ref``, children first; with *platform*, an index is narrowed
    to the one entry chosen for this host. Also returns the index digest and the stage."""
    data, media, digest = registry.get_manifest(repo, ref)
    doc = _parse_manifest(data, f"{registry.host}/{repo}:{ref}")
    top = _Manifest(digest, _media_type(doc, media), data, doc)
    if not _is_index(doc, media):
        return [top], None, None
    if platform:
        choice = _select(doc, platform)
        cdata, cmedia, cdigest = registry.get_manifest(repo, choice.descriptor["digest"])
        cdoc = _parse_manifest(cdata, f"{registry.host}/{repo}@{cdigest}")
        if _is_index(cdoc, cmedia):
            raise RegistryError(f"{registry.host}/{repo}: the entry chosen for {choice.stage} is itself an index")
        return [_Manifest(cdigest, _media_type(cdoc, cmedia), cdata, cdoc)], digest, choice.stage
    out: list[_Manifest] = []
    seen: set[str] = set()

    def walk(m: _Manifest, depth: int) -> None:
        for child in m.doc.get("manifests") or []:
            cdigest = child.get("digest")
            if not isinstance(cdigest, str) or not is_digest(cdigest):
                raise RegistryError(f"{registry.host}/{repo}: index {m.digest} lists a malformed entry")
            if cdigest in seen:
                continue
            seen.add(cdigest)
            cdata, cmedia, got = registry.get_manifest(repo, cdigest)
            cdoc = _parse_manifest(cdata, f"{registry.host}/{repo}@{cdigest}")
            cm = _Manifest(got, _media_type(cdoc, cmedia or child.get("mediaType")), cdata, cdoc)
            if depth < 4:
                walk(cm, depth + 1)
            out.append(cm)

    walk(top, 0)
    out.append(top)
    return out, None, None


# -- push -------------------------------------------------------------------------------
def push_artifact(store: Any, descriptor: dict[str, Any], registry: Registry, repo: str, ref: str, *,
                  jobs: int = DEFAULT_JOBS, progress: Emitter | _Steps | None = None, mount_from: str | None = None,
                  present: set[str] | None = None) -> dict[str, Any]:
    """Push the store's artifact *descriptor* to ``registry/repo:ref``.

    Blobs go first, ``jobs`` at a time, each skipped when the registry has it (HEAD) or
    mounted from *mount_from* (another repository of this registry); then child manifests
    by digest, then the top manifest or index under *ref*, all with the store's exact
    bytes. *present* is a set of digests known to be in *repo* already (skipped without a
    request), updated with everything pushed. Returns a summary.

    Every blob gets the store's cheap check (:meth:`Store.check_blob`) before any byte is
    sent; a damaged one is removed and the push fails naming it. A blob that passes it but
    that the registry refuses for its digest is re-hashed once: when it is corrupt, it is
    removed and the push fails at once, naming it, rather than ending as a registry error.
    """
    present = set() if present is None else present
    steps = _Steps.of(progress)
    where = f"{registry.host}/{repo}:{ref}"
    with store.gc_lock(exclusive=False):
        manifests = _store_tree(store, descriptor)
        blobs = _blobs_of(manifests, where)
        for b in blobs:
            _check_before_push(store, b, descriptor["digest"])
        mount = mount_from if mount_from and mount_from != repo else None

        def push_one(blob: _Blob) -> int:
            step = steps.new(f"push {blob.label} {blob.digest[7:19]} ({human_size(blob.size)})", blob.size)
            if blob.digest in present:
                step.finish(False)
                return -1
            try:
                sent = registry.push_blob(repo, blob.digest, blob.size, _VerifyOnRetry(store, blob),
                                          mount_from=mount, progress=step.advance)
            except RegistryError as exc:
                if isinstance(exc, DigestMismatchError) or "DIGEST_INVALID" in exc.message:
                    _fail_if_corrupt(store, blob)
                raise
            step.finish(sent)
            return blob.size if sent else -1

        results = transfer_all([lambda b=b: push_one(b) for b in blobs], max(1, jobs))
        present.update(b.digest for b in blobs)
        top = manifests[-1]
        for m in manifests[:-1]:
            if m.digest in present:
                continue
            step = steps.new(f"push manifest {m.digest[7:19]}")
            step.start()
            registry.put_manifest(repo, m.digest, m.data, m.media_type)
            step.finish(True)
            present.add(m.digest)
        step = steps.new(f"push {'index' if _is_index(top.doc) else 'manifest'} {top.digest[7:19]} as {ref}")
        step.start()
        registry.put_manifest(repo, ref, top.data, top.media_type)
        step.finish(True)
        present.add(top.digest)
    uploaded = [n for n in results if n >= 0]
    return {
        "reference": where if not is_digest(ref) else f"{registry.host}/{repo}@{ref}",
        "digest": top.digest,
        "mediaType": top.media_type,
        "size": len(top.data),
        "blobs": len(blobs),
        "uploaded": len(uploaded),
        "skipped": len(blobs) - len(uploaded),
        "bytes": sum(uploaded),
        "manifests": len(manifests),
    }


def _check_before_push(store: Any, blob: _Blob, artifact: str) -> None:
    """The cheap check of a blob about to be pushed; a missing or damaged one fails the push."""
    damage: list[str] = []
    if not store.check_blob(blob.digest, blob.size, on_damage=damage.append):
        raise StoreError(damage[0] if damage else f"blob {blob.digest} of {artifact} is missing from the local store",
                         hint="rebuild it, or pull it again")


class _VerifyOnRetry:
    """The source of a blob upload: opens the store's file for each request body. When the
    client asks for the blob from its first byte a second time, the first upload was lost
    or refused (the registry answers DIGEST_INVALID to bytes that are not their digest), so
    the local copy is hashed then, once: a corrupt blob fails the push after one upload,
    not after every retry the client would make."""

    def __init__(self, store: Any, blob: _Blob) -> None:
        self.store, self.blob = store, blob
        self.starts = 0
        self.verified = False
        self.lock = threading.Lock()

    def __call__(self) -> Any:
        try:
            return _Watched(open(self.store.blob_path(self.blob.digest), "rb"), self)  # noqa: SIM115
        except OSError as exc:
            raise StoreError(f"cannot read blob {self.blob.digest} to push it: {exc.strerror}",
                             hint="rebuild it, or pull it again") from None

    def starting(self) -> None:
        with self.lock:
            self.starts += 1
            if self.starts < 2 or self.verified:
                return
            self.verified = True
        _fail_if_corrupt(self.store, self.blob)


class _Watched:
    """A blob file that tells its :class:`_VerifyOnRetry` when it is read from the start."""

    def __init__(self, fh: Any, owner: _VerifyOnRetry) -> None:
        self.fh, self.owner = fh, owner

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset == 0 and whence == 0:
            try:
                self.owner.starting()
            except BaseException:
                self.fh.close()
                raise
        return self.fh.seek(offset, whence)

    def read(self, n: int = -1) -> bytes:
        return self.fh.read(n)

    def close(self) -> None:
        self.fh.close()


def _fail_if_corrupt(store: Any, blob: _Blob) -> None:
    """The registry refused *blob*'s bytes for its digest: hash the local copy once, and when
    it is the one at fault, remove it and say so (pushing it again cannot help)."""
    if not store.verify_blob(blob.digest):
        raise StoreError(store.damaged(blob.digest, "its content does not match its digest"),
                         hint="rebuild it, or pull it again") from None


def push_refs(store: Any, pairs: list[tuple[str, str]], *, plain_http: bool = False, insecure: bool = False,
              jobs: int = DEFAULT_JOBS, progress: Emitter | None = None) -> list[dict[str, Any]]:
    """Push each ``(local tag, remote reference)``. Blobs are sent once per repository;
    a second repository of the same registry mounts them from the first."""
    steps = _Steps.of(progress)  # one numbering across all the pushes
    registries: dict[str, Registry] = {}
    present: dict[tuple[str, str], set[str]] = {}
    first_repo: dict[str, str] = {}
    results = []
    try:
        for local, remote in pairs:
            host, repo, ref, _ = remote_ref(remote)
            descriptor = store.resolve(local)
            reg = registries.get(host)
            if reg is None:
                reg = registries[host] = open_registry(host, plain_http=plain_http, insecure=insecure)
            with login_hint(host):
                results.append(push_artifact(store, descriptor, reg, repo, ref, jobs=jobs, progress=steps,
                                             mount_from=first_repo.get(host),
                                             present=present.setdefault((host, repo), set())))
            first_repo.setdefault(host, repo)
    finally:
        for reg in registries.values():
            reg.close()
    return results


# -- pull into the store -----------------------------------------------------------------
def _pull_blob(registry: Registry, repo: str, blob_digest: str, size: int, dest: Path, **kw: Any) -> None:
    """:meth:`Registry.pull_blob`, once more from scratch if the bytes came corrupted (the
    client has already thrown them away); a second mismatch is an error."""
    try:
        registry.pull_blob(repo, blob_digest, size, dest, **kw)
    except DigestMismatchError:
        registry.pull_blob(repo, blob_digest, size, dest, **kw)


def pull_artifact(registry: Registry, repo: str, ref: str, store: Any, *, jobs: int = DEFAULT_JOBS,
                  platform: str | None = None, progress: Emitter | None = None, tag: str | None = None
                  ) -> dict[str, Any]:
    """Pull ``registry/repo:ref`` into the local store and tag it there (*tag*, default the
    full reference). An index comes whole, unless *platform* (``auto``, a stage or a target
    name) picks one variant: then only that manifest is pulled, and tagged."""
    steps = _Steps.of(progress)
    where = f"{registry.host}/{repo}{'@' if is_digest(ref) else ':'}{ref}"
    tag = tag or where
    try:
        store.ensure()
    except OSError as exc:
        raise UsageError(f"cannot create the store at {store.root}: {exc.strerror}") from None
    with store.gc_lock(exclusive=False):
        manifests, index_digest, stage = _remote_tree(registry, repo, ref, platform)
        blobs = _blobs_of(manifests, where)

        def pull_one(blob: _Blob) -> int:
            step = steps.new(f"pull {blob.label} {blob.digest[7:19]} ({human_size(blob.size)})", blob.size)
            if store.check_blob(blob.digest, blob.size, on_damage=steps.warn):  # a damaged copy is fetched again
                step.finish(False)
                return -1
            store.partial_dir.mkdir(parents=True, exist_ok=True)
            _pull_blob(registry, repo, blob.digest, blob.size, store.blob_path(blob.digest),
                       partial=store.partial_dir / blob.digest[7:], mode=0o444, progress=step.advance)
            step.finish(True)
            return blob.size

        results = transfer_all([lambda b=b: pull_one(b) for b in blobs], max(1, jobs))
        for m in manifests:  # children first: a parent never names a blob the store lacks
            if not store.has_blob(m.digest) and store.put_bytes(m.data) != m.digest:
                raise StoreError(f"manifest {m.digest} changed on its way into the store")
        top = manifests[-1]
        store.tag(tag, {"mediaType": top.media_type, "digest": top.digest, "size": len(top.data)})
    fetched = [n for n in results if n >= 0]
    return {
        "reference": where,
        "tag": tag,
        "digest": top.digest,
        "mediaType": top.media_type,
        "index": index_digest,
        "stage": stage,
        "blobs": len(blobs),
        "downloaded": len(fetched),
        "bytes": sum(fetched),
    }


# -- pull into a directory ---------------------------------------------------------------
class RegistrySource:
    """Blobs of one repository, for :func:`modelbuild.oci.materialize.materialize`: each is
    downloaded into ``DIR/.modelbuild-partial/<hex>`` (resumed by a later pull, named by its
    digest only), verified, then renamed to where the materialiser asked."""

    def __init__(self, registry: Registry, repo: str, where: str, dest: Path) -> None:
        self.registry, self.repo, self.where, self.dest = registry, repo, where, dest

    def fetch(self, desc: Any, dest: Path, progress: Callable[[int], None] | None) -> None:
        from modelbuild.oci.materialize import partial_dir

        partial = partial_dir(self.dest) / desc.digest[7:]
        _pull_blob(self.registry, self.repo, desc.digest, desc.size, dest, partial=partial, mode=0o600,
                   progress=progress)

    def close(self) -> None:
        """Remove the partial-download directory if nothing is left to resume in it."""
        from modelbuild.oci.materialize import PARTIAL_DIR

        with contextlib.suppress(OSError):
            (self.dest / PARTIAL_DIR).rmdir()

    def config(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """The artifact's config (its diffIds verify tar layers), verified and size-bounded."""
        from modelbuild.oci.verify import MAX_JSON, Descriptor, IntegrityError, parse_json_object

        if not isinstance(manifest.get("config"), dict):
            return None
        desc = Descriptor.parse(manifest["config"], f"{self.where}: config")
        if desc.size > MAX_JSON:
            raise IntegrityError(f"{self.where}: config {desc.digest} declares {desc.size} bytes, "
                                 f"more than the {MAX_JSON} allowed")
        buf = _Buffer()
        self.registry.pull_blob(self.repo, desc.digest, desc.size, buf)
        return parse_json_object(bytes(buf.data), f"{self.where}: config {desc.digest}")


class _Buffer:
    """A small blob received into memory (its size was bounded before the download)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> int:
        self.data += chunk
        return len(chunk)


def pull_to_dir(registry: Registry, repo: str, ref: str, dest: Path, platform: str | None = "auto", *,
                jobs: int = DEFAULT_JOBS, progress: Emitter | None = None) -> dict[str, Any]:
    """Write the files of ``registry/repo:ref`` into *dest*, without the local store.

    For an index, *platform* (``auto``, a stage or a target name) picks the variant. The files
    are written by :func:`modelbuild.oci.materialize.materialize`: verified in a staging
    directory, moved into place only when all of them are; a file already holding the right
    bytes is not downloaded again.
    """
    from modelbuild.oci.materialize import materialize

    steps = _Steps.of(progress)
    where = f"{registry.host}/{repo}{'@' if is_digest(ref) else ':'}{ref}"
    manifests, index_digest, stage = _remote_tree(registry, repo, ref, platform or "auto")
    manifest = manifests[-1]
    if _is_index(manifest.doc) or not isinstance(manifest.doc.get("layers"), list):
        raise RegistryError(f"{where} is not an artifact with layers (media type {manifest.media_type})")
    source = RegistrySource(registry, repo, where, dest)
    try:
        outcome = materialize(source, manifest.doc, source.config(manifest.doc), dest, jobs=jobs, steps=steps)
    finally:
        source.close()
    for warning in outcome.warnings:
        steps.warn(warning)
    return {
        "reference": where,
        "digest": manifest.digest,
        "index": index_digest,
        "stage": stage,
        "files": outcome.files,
        "downloaded": outcome.fetched,
        "bytes": outcome.bytes,
    }


__all__ = [
    "DEFAULT_JOBS",
    "login_hint",
    "names_registry",
    "open_registry",
    "pull_artifact",
    "pull_to_dir",
    "push_artifact",
    "push_refs",
    "remote_ref",
]
