"""Export an artifact from the store into a standalone OCI image layout (``--output type=oci``).

Blobs are hard-linked from the store when both are on one file system (store blobs are
immutable and read-only), else copied with the kernel's copy (``shutil.copyfile`` uses
``sendfile``/``copy_file_range``): no byte passes through Python either way
(:meth:`Store.link_from`). So no blob is read here; each gets the store's cheap check instead
(:meth:`Store.check_blob`: a regular file, its exact size, read-only), and a damaged one
fails the export and is removed from the store, so the next build writes it again.
``prune --verify`` is the full check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelbuild.errors import BuildError
from modelbuild.oci.verify import Descriptor, shown
from modelbuild.oci.walk import walk
from modelbuild.store import Store


def blobs_of(store: Store, descriptor: dict[str, Any]) -> list[tuple[str, int]]:
    """The blobs (digest, size) a manifest or index needs, children first; the manifests
    themselves are read back verified, by the one walker."""
    out: list[tuple[str, int]] = []
    for node in walk(Descriptor.parse(descriptor, "the artifact"), lambda d: store.read_blob(d.digest, d.size),
                     named=lambda d: f"blob {d.digest} in {shown(store.root)}"):
        out.extend((b.digest, b.size) for b in node.parts.blobs())
        out.append((node.digest, node.descriptor.size))
    return list(dict.fromkeys(out))


def export_layout(store: Store, descriptor: dict[str, Any], dest: Path, ref: str | None) -> bool:
    """Write *descriptor* and its blobs into the layout at *dest*; return whether it changed."""
    target = Store(dest, owned=False).ensure()
    changed = False
    for digest, size in blobs_of(store, descriptor):
        damage: list[str] = []
        if not store.check_blob(digest, size, on_damage=damage.append):
            raise BuildError(damage[0] if damage else f"blob {digest} is missing from the store",
                             hint="build again: the blob is rebuilt")
        changed |= target.link_from(store, digest, size)
    if ref:
        changed |= target.tag(ref, descriptor)
    else:
        changed |= target.add_untagged(descriptor)
    target.tidy()  # a standalone layout has no use for the store's bookkeeping
    return changed
