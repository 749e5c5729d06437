"""Push: an artifact of the local store (or of an OCI layout) to a registry.

Blobs go first, through the one upload path (:func:`modelbuild.oci.upload.upload_blobs`:
skipped where the registry has them, mounted where another repository of it does, ``jobs``
at a time); then child manifests by digest; then the manifest or index under its tag. Every
manifest is read back from the store verified, by the one walker, and PUT with those exact
bytes, so the registry's digests are the store's. The store's gc lock is held shared
throughout, so ``prune`` never removes a blob being pushed.
"""

from __future__ import annotations

from typing import Any

from modelbuild.digests import is_digest
from modelbuild.errors import StoreError
from modelbuild.oci.registry import Registry
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
    steps = Steps.of(progress)
    where = f"{registry.host}/{repo}:{ref}"
    with store.gc_lock(exclusive=False):
        manifests = store_tree(store, descriptor)
        blobs = blobs_of(manifests)
        for b in blobs:
            _check_before_push(store, b, descriptor["digest"])
        results = upload_blobs(
            store, registry, repo, blobs, jobs=jobs, present=present,
            mount_from=mount_from if mount_from and mount_from != repo else None,
            step=lambda b: steps.new(f"push {b.label} {b.digest[7:19]} ({human_size(b.size)})", b.size))
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


def _check_before_push(store: Any, blob: Blob, artifact: str) -> None:
    """The cheap check of a blob about to be pushed; a missing or damaged one fails the push."""
    damage: list[str] = []
    if not store.check_blob(blob.digest, blob.size, on_damage=damage.append):
        raise StoreError(damage[0] if damage else f"blob {blob.digest} of {artifact} is missing from the local store",
                         hint="rebuild it, or pull it again")


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


__all__ = ["push_artifact", "push_refs", "store_tree"]
