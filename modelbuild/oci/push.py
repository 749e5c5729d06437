"""Push: an artifact of the local store (or of an OCI layout) to a registry.

Blobs go first, through the one upload path (:func:`modelbuild.oci.upload.upload_blobs`:
skipped where the registry has them, mounted where another repository of it does, ``jobs``
at a time); then child manifests by digest; then the manifest or index under its tag. Every
manifest is read back from the store verified, by the one walker, and PUT with those exact
bytes, so the registry's digests are the store's. The store's gc lock is held shared
throughout, so ``prune`` never removes a blob being pushed.

Then each manifest's referrers recorded in the store (its runtime description, a signature)
follow it (:func:`push_referrers`): their blobs by the same upload path, the referrer manifest
by digest; a registry with the OCI 1.1 referrers API lists them by itself (it answers
``GET /v2/<name>/referrers/<digest>``), any other gets the referrers tag schema: the index
under ``sha256-<hex>`` read, the new referrers added, written back. A referrer the store cannot
give whole is skipped with a warning: the artifact pushed is complete without it.

A build's registry outputs (``--push``, ``--output type=registry``) go through
:func:`push_outputs`: every destination's blobs before any destination's manifests, so a
blob that cannot be sent leaves every tag as it was. A build that streamed its large layers
(:mod:`modelbuild.oci.stream`) hands its ``sources``: a blob the store lacks is read from the
file of the build context it is, checked against its digest as it is read.
"""

from __future__ import annotations

from typing import Any

from modelbuild.digests import is_digest
from modelbuild.errors import StoreError
from modelbuild.oci.registry import Registry, RegistryError
from modelbuild.oci.transfer import (
    DEFAULT_JOBS,
    Steps,
    blobs_of,
    login_hint,
    open_registry,
    remote_ref,
)
from modelbuild.oci.upload import Blob, upload_blobs
from modelbuild.oci.verify import Descriptor
from modelbuild.oci.walk import Node, walk
from modelbuild.progress import Emitter
from modelbuild.units import human_size


def store_tree(store: Any, descriptor: dict[str, Any]) -> list[Node]:
    """The manifests under *descriptor* in the local store (or a layout), children before
    parents: each read back verified against its digest and size, every descriptor in it
    validated, so what is pushed is what the digests name."""

    def read(desc: Descriptor) -> bytes:
        if not store.has_blob(desc.digest):
            raise StoreError(f"manifest {desc.digest} is missing from the local store",
                             hint="`modelbuild prune --verify` checks the store")
        return store.read_blob(desc.digest, desc.size)

    return list(walk(Descriptor.parse(descriptor, "the artifact to push"), read, strict=True))


def push_artifact(store: Any, descriptor: dict[str, Any], registry: Registry, repo: str, ref: str, *,
                  jobs: int = DEFAULT_JOBS, progress: Emitter | Steps | None = None, mount_from: str | None = None,
                  present: set[str] | None = None, sources: Any = None) -> dict[str, Any]:
    """Push the store's artifact *descriptor* to ``registry/repo:ref``.

    Blobs go first, ``jobs`` at a time, each skipped when the registry has it (HEAD) or
    mounted from *mount_from* (another repository of this registry); then child manifests
    by digest, then the top manifest or index under *ref*, all with the store's exact
    bytes. *present* is a set of digests known to be in *repo* already (skipped without a
    request), updated with everything pushed. *sources* (:class:`~modelbuild.oci.stream.SourceBlobs`)
    gives the blobs of a build that streamed its large layers: read from their files.
    Returns a summary.

    Every blob gets the store's cheap check (:meth:`Store.check_blob`) before any byte is
    sent; a damaged one is removed and the push fails naming it. A blob that passes it but
    that the registry refuses for its digest is re-hashed once: when it is corrupt, it is
    removed and the push fails at once, naming it, rather than ending as a registry error.
    """
    present = set() if present is None else present
    steps = Steps.of(progress)
    with store.gc_lock(exclusive=False):
        manifests = store_tree(store, descriptor)
        mount_from = mount_from or base_repository(manifests, registry.host)
        blobs, results = _push_blobs(store, manifests, registry, repo, jobs=jobs, present=present, steps=steps,
                                     mount_from=mount_from, sources=sources)
        referred = _push_manifests(store, manifests, registry, repo, ref, jobs=jobs, present=present, steps=steps,
                                   mount_from=mount_from)
    return _summary(registry, repo, ref, manifests, blobs, results, referred)


def _push_blobs(store: Any, manifests: list[Node], registry: Registry, repo: str, *, jobs: int, present: set[str],
                steps: Steps, mount_from: str | None, sources: Any = None) -> tuple[list[Blob], list[int]]:
    """The blobs of *manifests* into *repo*, each checked first (none is sent if one is
    missing or damaged); the blobs, and per blob the bytes sent or -1."""
    blobs = blobs_of(manifests)
    for b in blobs:
        _check_before_push(store, b, manifests[-1].digest, sources)
    results = upload_blobs(
        store, registry, repo, blobs, jobs=jobs, present=present,
        mount_from=mount_from if mount_from and mount_from != repo else None, sources=sources,
        step=lambda b: steps.new(f"push {b.label} {b.digest[7:19]} ({human_size(b.size)})", b.size))
    return blobs, results


def _push_manifests(store: Any, manifests: list[Node], registry: Registry, repo: str, ref: str, *, jobs: int,
                    present: set[str], steps: Steps, mount_from: str | None) -> list[tuple[int, int]]:
    """Child manifests by digest, the top one under *ref*, then each one's referrers (its
    blobs are in *repo* already); per manifest, the referrers pushed and their bytes."""
    top = manifests[-1]
    for m in manifests[:-1]:
        if m.digest in present:
            continue
        step = steps.new(f"push manifest {m.digest[7:19]}")
        step.start()
        registry.put_manifest(repo, m.digest, m.data, m.media_type)
        step.finish(True)
        present.add(m.digest)
    step = steps.new(f"push {'index' if top.is_index else 'manifest'} {top.digest[7:19]} as {ref}")
    step.start()
    registry.put_manifest(repo, ref, top.data, top.media_type)
    step.finish(True)
    present.add(top.digest)
    return [push_referrers(store, registry, repo, m, jobs=jobs, present=present, steps=steps, mount_from=mount_from)
            for m in manifests]


def _summary(registry: Registry, repo: str, ref: str, manifests: list[Node], blobs: list[Blob], results: list[int],
             referred: list[tuple[int, int]], streamed: dict[str, int] | None = None) -> dict[str, Any]:
    """What a push reports. *streamed*: blobs uploaded to this repository while the build
    hashed them (:meth:`~modelbuild.oci.stream.SourceBlobs.ingest`), counted as sent here."""
    top = manifests[-1]
    uploaded = [n for n in results if n >= 0]
    for b, n in zip(blobs, results):
        if n < 0 and streamed and b.digest in streamed:
            uploaded.append(streamed[b.digest])
    where = f"{registry.host}/{repo}:{ref}"
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
        "referrers": sum(n for n, _ in referred),
        "referrerBytes": sum(b for _, b in referred),
    }


def push_outputs(store: Any, pairs: list[tuple[str, dict[str, Any]]], registries: dict[str, Registry], *,
                 jobs: int = DEFAULT_JOBS, progress: Emitter | Steps | None = None,
                 sources: Any = None) -> list[dict[str, Any]]:
    """A build's registry outputs: each ``(reference, descriptor)`` of the store pushed, the
    registry of each reference's host in *registries*. Every destination's blobs go first,
    then every destination's manifests and tags: a blob that cannot be sent (a file changed
    since the build hashed it, *sources*) leaves every tag as it was, here and there. A
    second repository of a registry mounts what the first has; the repository a streaming
    build uploaded to while hashing (*sources*) is asked about nothing it was sent."""
    steps = Steps.of(progress)
    first_repo: dict[str, str] = {}
    present: dict[tuple[str, str], set[str]] = {}
    streamed_to = (sources.registry.host, sources.repo) if sources is not None else None
    planned = []
    with store.gc_lock(exclusive=False):
        for reference, descriptor in pairs:
            host, repo, ref, _ = remote_ref(reference)
            registry = registries[host]
            manifests = store_tree(store, descriptor)
            mount_from = first_repo.get(host) or base_repository(manifests, host)
            streamed = None
            if (host, repo) not in present:
                streamed = dict(sources.sent) if (host, repo) == streamed_to else None
                present[(host, repo)] = set(streamed or ())
            with login_hint(host):
                blobs, results = _push_blobs(store, manifests, registry, repo, jobs=jobs, present=present[(host, repo)],
                                             steps=steps, mount_from=mount_from, sources=sources)
            first_repo.setdefault(host, repo)
            planned.append((registry, repo, ref, manifests, blobs, results, mount_from, streamed))
        pushed = []
        for registry, repo, ref, manifests, blobs, results, mount_from, streamed in planned:
            with login_hint(registry.host):
                referred = _push_manifests(store, manifests, registry, repo, ref, jobs=jobs,
                                           present=present[(registry.host, repo)], steps=steps, mount_from=mount_from)
            pushed.append(_summary(registry, repo, ref, manifests, blobs, results, referred, streamed))
    return pushed


def stored_whole(store: Any, descriptor: dict[str, Any]) -> bool:
    """Whether every manifest, config and layer of *descriptor* is in the store (the cheap
    check): what a tag promises ``run``, ``push`` and ``pull -o``."""
    from modelbuild.errors import NotFoundError
    from modelbuild.oci.verify import IntegrityError

    try:
        manifests = store_tree(store, descriptor)
    except (StoreError, NotFoundError, IntegrityError):
        return False
    return all(store.check_blob(b.digest, b.size) for b in blobs_of(manifests))


def push_referrers(store: Any, registry: Registry, repo: str, subject: Node, *, jobs: int, present: set[str],
                   steps: Steps, mount_from: str | None = None) -> tuple[int, int]:
    """Push the referrers the store records for the manifest *subject* (pushed already) that
    the registry does not list yet, and make it list them; return how many were pushed and
    the bytes their blobs took."""
    from modelbuild.oci.pull import remote_referrers
    from modelbuild.oci.verify import IntegrityError

    try:
        recorded = store.list_referrers(subject.digest)
    except IntegrityError as exc:
        steps.warn(f"{exc.render()}; {subject.digest} is pushed without its referrers")
        return 0, 0
    if not recorded:
        return 0, 0
    listed, api = remote_referrers(registry, repo, subject.digest)
    known = {d["digest"] for d in listed}
    sent, sizes = [], 0
    for entry in recorded:
        if entry["digest"] in known:
            continue  # pushed before: nothing to send, not even a HEAD
        try:
            sizes += _push_referrer(store, registry, repo, subject.digest, entry, jobs=jobs, present=present,
                                    steps=steps, mount_from=mount_from)
        except (StoreError, IntegrityError) as exc:  # the store's problem; a registry's fails the push
            steps.warn(f"referrer {entry['digest']} of {subject.digest}: {exc.render()}; not pushed")
            continue
        sent.append(entry)
    if sent and not api:
        _extend_referrers_tag(registry, repo, subject.digest, listed, sent)
    return len(sent), sizes


def _push_referrer(store: Any, registry: Registry, repo: str, subject: str, entry: dict[str, Any], *, jobs: int,
                   present: set[str], steps: Steps, mount_from: str | None) -> int:
    """One referrer: read back verified, its ``subject`` checked, its blobs uploaded (by the
    one upload path), its manifest PUT by digest. Returns the bytes its blobs took."""
    from modelbuild.oci.verify import IntegrityError, shown

    (node,) = store_tree(store, {k: entry[k] for k in ("mediaType", "digest", "size")})[-1:]
    named = (node.doc.get("subject") or {}).get("digest")
    if named != subject:
        raise IntegrityError(f"its subject is {shown(str(named), 80)!r}, not {subject}")
    blobs = blobs_of([node])
    for b in blobs:
        _check_before_push(store, b, entry["digest"])
    sent = upload_blobs(store, registry, repo, blobs, jobs=jobs, present=present,
                        mount_from=mount_from if mount_from and mount_from != repo else None,
                        step=lambda b: steps.new(f"push {b.label} {b.digest[7:19]} ({human_size(b.size)})", b.size))
    if node.digest not in present:
        step = steps.new(f"push referrer {node.digest[7:19]} of {subject[7:19]}")
        step.start()
        registry.put_manifest(repo, node.digest, node.data, node.media_type)
        step.finish(True)
        present.add(node.digest)
    return sum(n for n in sent if n >= 0)


REFERRERS_TAG_TRIES = 6
REFERRERS_TAG_SETTLE = 0.2  # seconds between writing the tag and checking it: far longer than one read-then-write (ms)


def _extend_referrers_tag(registry: Registry, repo: str, subject: str, listed: list[dict[str, Any]],
                          sent: list[dict[str, Any]]) -> None:
    """For a registry without the referrers API: make the referrers tag ``sha256-<hex>`` of
    *subject* list *sent* too (the distribution spec's fallback). The tag has no conditional
    write, so two pushers attaching to one subject at once could each overwrite the other's
    list. Each write therefore merges what the tag lists just before it (one read, then the
    PUT: milliseconds), and the pusher reads the tag back after a pause much longer than that
    and writes again until everything it sent is there: a pusher that read before our write
    must have written before our check, which then sees it and adds ours back. A registry with
    the API needs nothing: it indexes a manifest's ``subject`` when the manifest is PUT."""
    import random
    import time

    from modelbuild.oci import mediatypes as mt
    from modelbuild.oci.pull import referrers_tag, remote_referrers
    from modelbuild.storage.referrers import referrers_index

    wanted = {d["digest"] for d in sent}
    for attempt in range(REFERRERS_TAG_TRIES + 1):
        current, _ = remote_referrers(registry, repo, subject)  # fresh: *listed* was read before the blobs went up
        have = {d["digest"] for d in current}
        if attempt and wanted <= have:
            return
        if attempt == REFERRERS_TAG_TRIES:
            break
        merged = current + [d for d in sent if d["digest"] not in have]
        registry.put_manifest(repo, referrers_tag(subject), referrers_index(merged), mt.OCI_INDEX)
        time.sleep(REFERRERS_TAG_SETTLE * (1 + random.random()))
    raise RegistryError(f"{registry.host}/{repo}: the referrers tag of {subject} kept losing what was added to "
                            "it; another pusher is rewriting it", hint="push again")


def _check_before_push(store: Any, blob: Blob, artifact: str, sources: Any = None) -> None:
    """The cheap check of a blob about to be pushed; a missing or damaged one fails the push.
    A blob a streaming build left in its file (*sources*) is checked when it is read."""
    damage: list[str] = []
    if store.check_blob(blob.digest, blob.size, on_damage=damage.append):
        return
    if sources is not None and sources.has(blob.digest, blob.size):
        return
    raise StoreError(damage[0] if damage else f"blob {blob.digest} of {artifact} is missing from the local store",
                     hint="rebuild it, or pull it again")


def base_repository(manifests: list[Any], host: str) -> str | None:
    """The repository of *host* an artifact was built from (the image spec's
    ``org.opencontainers.image.base.name``, which ``FROM oci://`` writes), so its unchanged
    layers are mounted from there instead of uploaded; None if it names another registry."""
    for m in manifests:
        annotations = m.doc.get("annotations")
        name = annotations.get("org.opencontainers.image.base.name") if isinstance(annotations, dict) else None
        if isinstance(name, str) and name.startswith(host + "/"):
            repo = name[len(host) + 1:].split("@", 1)[0]
            return repo.rsplit(":", 1)[0] if ":" in repo.rsplit("/", 1)[-1] else repo
    return None


def push_refs(store: Any, pairs: list[tuple[str, str]], *, plain_http: bool = False, insecure: bool = False,
              jobs: int = DEFAULT_JOBS, progress: Emitter | None = None) -> list[dict[str, Any]]:
    """Push each ``(local tag, remote reference)``. Blobs are sent once per repository;
    a second repository of the same registry mounts them from the first."""
    steps = Steps.of(progress)  # one numbering across all the pushes
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


__all__ = ["push_artifact", "push_outputs", "push_referrers", "push_refs", "store_tree", "stored_whole"]
