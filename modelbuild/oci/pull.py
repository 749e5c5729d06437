"""Pull: a registry reference into the local store, or straight into a directory.

* :func:`pull_artifact`: into the local store, tagged there. Each blob is downloaded through
  :meth:`Store.download <modelbuild.store.Store.download>`: into ``<store>/partial/<hex>``
  (resumed by the next pull after a kill -9), verified, and installed under its digest by the
  store itself; manifests go in last, the tag after them, so the store never has a tag
  pointing at a blob it lacks. The store's gc lock is held shared throughout (``prune`` waits).
  Then the referrers of each manifest pulled (its runtime description, a signature) come
  along (:func:`remote_referrers`): bounded in number and size, every byte verified, each
  one's ``subject`` checked; one that fails is skipped with a warning, never the pull.
* :func:`pull_to_dir`: into a directory, no store, through the one materialisation
  (:mod:`modelbuild.oci.materialize`): blobs download into ``DIR/.modelbuild-partial/<hex>``
  (resumable, named by digest only), are verified, staged and moved into place only when
  every file is verified.

Both read the manifest tree with the one walker (:func:`modelbuild.oci.walk.walk`); with a
platform, an index is narrowed to the one entry chosen for this host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from modelbuild.digests import is_digest
from modelbuild.errors import StoreError, UsageError
from modelbuild.oci.registry import DigestMismatchError, Registry, RegistryError, transfer_all
from modelbuild.oci.transfer import DEFAULT_JOBS, Steps, blobs_of
from modelbuild.oci.upload import Blob
from modelbuild.oci.verify import Descriptor
from modelbuild.oci.walk import Node, is_index, media_type_of, walk
from modelbuild.progress import Emitter
from modelbuild.units import human_size


def _select(index: dict[str, Any], platform: str) -> Any:
    from modelbuild.plugins import make_plugin_manager
    from modelbuild.targets import detect_host, select_entry

    return select_entry(index, platform, detect_host(), make_plugin_manager().targets)


def remote_tree(registry: Registry, repo: str, ref: str, platform: str | None
                ) -> tuple[list[Node], str | None, str | None, dict[str, Any] | None]:
    """The manifests of ``repo:ref``, children first; with *platform*, an index is narrowed
    to the one entry chosen for this host. Also returns the index digest, the stage and the
    chosen index entry (its platform and annotations say what the variant is for).
    Each manifest's media type is the one the registry served it with, where its own
    document does not say."""
    served: dict[str, tuple[bytes, str]] = {}

    def fetch(name: str) -> Descriptor:
        data, media, digest = registry.get_manifest(repo, name)  # verified and validated
        served[digest] = (data, media)
        return Descriptor(media, digest, len(data))

    def read(desc: Descriptor) -> bytes:
        if desc.digest not in served:
            fetch(desc.digest)
        return served[desc.digest][0]

    def typed(node: Node) -> Node:
        return replace(node, media_type=media_type_of(node.doc, served[node.digest][1] or node.descriptor.media_type
                                                      or None))

    root = fetch(ref)
    (top,) = walk(root, read, max_depth=0)
    if not is_index(top.doc, root.media_type):
        return [typed(top)], None, None, None
    if platform:
        choice = _select(top.doc, platform)
        chosen = fetch(choice.descriptor["digest"])
        (node,) = walk(chosen, read, max_depth=0)
        if is_index(node.doc, chosen.media_type):
            raise RegistryError(f"{registry.host}/{repo}: the entry chosen for {choice.stage} is itself an index")
        return [typed(node)], root.digest, choice.stage, dict(choice.descriptor)
    return [typed(node) for node in walk(root, read)], None, None, None


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
    steps = Steps.of(progress)
    where = f"{registry.host}/{repo}{'@' if is_digest(ref) else ':'}{ref}"
    tag = tag or where
    try:
        store.ensure()
    except OSError as exc:
        raise UsageError(f"cannot create the store at {store.root}: {exc.strerror}") from None
    with store.gc_lock(exclusive=False):
        manifests, index_digest, stage, entry = remote_tree(registry, repo, ref, platform)
        blobs = blobs_of(manifests)

        def pull_one(blob: Blob) -> int:
            step = steps.new(f"pull {blob.label} {blob.digest[7:19]} ({human_size(blob.size)})", blob.size)
            if store.check_blob(blob.digest, blob.size, on_damage=steps.warn):  # a damaged copy is fetched again
                step.finish(False)
                return -1
            store.download(blob.digest, blob.size, lambda dest, partial: _pull_blob(
                registry, repo, blob.digest, blob.size, dest, partial=partial, progress=step.advance))
            step.finish(True)
            return blob.size

        results = transfer_all([lambda b=b: pull_one(b) for b in blobs], max(1, jobs))
        for m in manifests:  # children first: a parent never names a blob the store lacks
            if not store.has_blob(m.digest) and store.put_bytes(m.data) != m.digest:
                raise StoreError(f"manifest {m.digest} changed on its way into the store")
        referrers = sum(pull_referrers(registry, repo, m, store, steps) for m in manifests)
        top = manifests[-1]
        tagged: dict[str, Any] = {"mediaType": top.media_type, "digest": top.digest, "size": len(top.data)}
        if entry is not None:  # one variant of an index: the tag keeps what its entry said it is for
            tagged.update({k: entry[k] for k in ("platform", "annotations") if isinstance(entry.get(k), dict)})
        store.tag(tag, tagged)
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
        "referrers": referrers,
    }


# -- referrers ---------------------------------------------------------------------------
MAX_REFERRER_BYTES = 16 << 20  # the blobs of one referrer: a description or a signature is a few KiB


def referrers_tag(subject: str) -> str:
    """The referrers tag schema's tag for *subject* (``sha256-<hex>``): where a registry
    without the referrers API keeps the index of its referrers."""
    return subject.replace(":", "-", 1)


def remote_referrers(registry: Registry, repo: str, subject: str) -> tuple[list[dict[str, Any]], bool]:
    """The referrers the registry lists for *subject*, and whether it has the referrers API.
    ``GET /v2/<name>/referrers/<digest>`` first; any answer but a 200 holding a JSON object (a
    registry without the API answers 404) sends us to the referrers tag (``sha256-<hex>``),
    and no such tag means no referrers. Every descriptor is validated; the manifests they
    name are not read here."""
    from modelbuild.storage.referrers import parse_referrers

    answer = registry.get_referrers(repo, subject)
    where = f"{registry.host}/{repo}: the referrers of {subject}"
    if answer is not None and _json_object(answer):  # else not the API, whatever answered
        return parse_referrers(answer, where, limit=None), True
    tag = referrers_tag(subject)
    if registry.head_manifest(repo, tag) is None:
        return [], False
    data, _media, _digest = registry.get_manifest(repo, tag)  # verified, validated
    return parse_referrers(data, f"{registry.host}/{repo}:{tag}", limit=None), False


def _json_object(data: bytes) -> bool:
    """Whether *data* is a JSON object: a referrers API answer, right or wrong."""
    from modelbuild.oci.verify import IntegrityError, parse_json_object

    try:
        parse_json_object(data, "the answer")
    except IntegrityError:
        return False
    return True


def pull_referrers(registry: Registry, repo: str, subject: Node, store: Any, steps: Steps) -> int:
    """Pull the referrers the registry lists for the manifest *subject* into the store and
    record them; return how many. At most :data:`MAX_REFERRERS` per manifest; one that
    cannot be fetched or checked is skipped with a warning (the artifact is whole without it)."""
    from modelbuild.errors import ModelbuildError
    from modelbuild.storage.referrers import MAX_REFERRERS

    try:
        listed, _api = remote_referrers(registry, repo, subject.digest)
    except ModelbuildError as exc:
        steps.warn(f"the referrers of {subject.digest} cannot be listed: {exc.render()}; pulled without them")
        return 0
    if len(listed) > MAX_REFERRERS:
        steps.warn(f"{registry.host}/{repo} lists {len(listed)} referrers of {subject.digest}; "
                   f"pulling the first {MAX_REFERRERS}")
    fetched = []
    for entry in listed[:MAX_REFERRERS]:
        try:
            fetched.append(_pull_referrer(registry, repo, subject.digest, entry, store, steps))
        except ModelbuildError as exc:
            steps.warn(f"referrer {entry['digest']} of {subject.digest}: {exc.render()}; skipped")
    if fetched:
        store.record_referrers(subject.digest, fetched)
    return len(fetched)


def _pull_referrer(registry: Registry, repo: str, subject: str, entry: dict[str, Any], store: Any,
                   steps: Steps) -> dict[str, Any]:
    """One referrer into the store, verified: its manifest against the digest listed, its
    ``subject`` against *subject*, its blobs bounded and each downloaded verified. Returns
    the descriptor to record (the referrer's own ``artifactType``, whatever the list said).
    Errors say what is wrong with it; the caller names it."""
    from modelbuild.oci import mediatypes as mt
    from modelbuild.oci.verify import IntegrityError, ManifestParts, parse_json_object, shown

    if entry.get("mediaType", mt.OCI_MANIFEST) != mt.OCI_MANIFEST:
        raise IntegrityError(f"it is listed as a {shown(entry.get('mediaType'), 80)!r}, not an image manifest")
    data, _media, digest = registry.get_manifest(repo, entry["digest"])  # verified against the digest
    doc = parse_json_object(data, "its manifest")
    parts = ManifestParts.parse(doc, "its manifest")
    named = (doc.get("subject") or {}).get("digest")
    if named != subject:
        raise IntegrityError(f"its subject is {shown(str(named), 80)!r}, not {subject}")
    blobs = parts.blobs()
    total = sum(b.size for b in blobs)
    if total > MAX_REFERRER_BYTES:
        raise IntegrityError(f"its blobs add up to {total} bytes, more than the {MAX_REFERRER_BYTES} a referrer "
                             "may have")
    step = steps.new(f"pull referrer {digest[7:19]} of {subject[7:19]}", total + len(data))
    for b in blobs:
        if not store.check_blob(b.digest, b.size, on_damage=steps.warn):
            store.download(b.digest, b.size, lambda dest, partial, b=b: _pull_blob(
                registry, repo, b.digest, b.size, dest, partial=partial, progress=step.advance))
    if store.put_bytes(data) != digest:
        raise StoreError(f"its manifest {digest} changed on its way into the store")
    step.finish(True)
    artifact_type = doc.get("artifactType") or (parts.config.media_type if parts.config else "")
    entry = {"mediaType": mt.OCI_MANIFEST, "artifactType": artifact_type, "digest": digest, "size": len(data)}
    annotations = doc.get("annotations")  # the manifest's own, as the referrers API lists them (in-toto's predicate type)
    if isinstance(annotations, dict) and len(annotations) <= 32 and all(
            isinstance(k, str) and isinstance(v, str) and len(k) + len(v) <= 4096 for k, v in annotations.items()):
        entry["annotations"] = dict(annotations)
    return entry


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
        buf = MemorySink()
        self.registry.pull_blob(self.repo, desc.digest, desc.size, buf)
        return parse_json_object(bytes(buf.data), f"{self.where}: config {desc.digest}")


class MemorySink:
    """A small blob received into memory (its size was bounded before the download)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> int:
        self.data += chunk
        return len(chunk)


def pull_to_dir(registry: Registry, repo: str, ref: str, dest: Path, platform: str | None = "auto", *,
                jobs: int = DEFAULT_JOBS, progress: Emitter | None = None, include: Sequence[str] = ()
                ) -> dict[str, Any]:
    """Write the files of ``registry/repo:ref`` into *dest*, without the local store.

    For an index, *platform* (``auto``, a stage or a target name) picks the variant. The files
    are written by :func:`modelbuild.oci.materialize.materialize`: verified in a staging
    directory, moved into place only when all of them are; a file already holding the right
    bytes is not downloaded again. *include* (glob patterns) fetches only the matching files.
    """
    from modelbuild.oci.materialize import materialize

    steps = Steps.of(progress)
    where = f"{registry.host}/{repo}{'@' if is_digest(ref) else ':'}{ref}"
    manifests, index_digest, stage, _entry = remote_tree(registry, repo, ref, platform or "auto")
    manifest = manifests[-1]
    if manifest.is_index or not isinstance(manifest.doc.get("layers"), list):
        raise RegistryError(f"{where} is not an artifact with layers (media type {manifest.media_type})")
    source = RegistrySource(registry, repo, where, dest)
    try:
        outcome = materialize(source, manifest.doc, source.config(manifest.doc), dest, jobs=jobs, steps=steps,
                              include=include)
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


__all__ = ["MemorySink", "pull_artifact", "pull_referrers", "pull_to_dir", "referrers_tag", "remote_referrers", "remote_tree"]
