"""Export an artifact from the store into a standalone OCI image layout (``--output type=oci``).

Blobs are hard-linked from the store when both are on one file system (store blobs are
immutable and read-only), else copied with the kernel's copy (``shutil.copyfile`` uses
``sendfile``/``copy_file_range``): no byte passes through Python either way. So no blob is
read here; each gets the store's cheap check instead (:meth:`Store.check_blob`: a regular
file, its exact size, read-only), and a damaged one fails the export and is removed from
the store, so the next build writes it again. ``prune --verify`` is the full check.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from modelbuild.errors import BuildError
from modelbuild.oci.verify import Descriptor, shown
from modelbuild.store import ManifestParts, Store, os_failure


def blobs_of(store: Store, descriptor: dict[str, Any]) -> list[tuple[str, int]]:
    """The blobs (digest, size) a manifest or index needs, children first; the manifests
    themselves are read back verified."""
    out: list[tuple[str, int]] = []

    def walk(desc: Descriptor, depth: int) -> None:
        parts = ManifestParts.parse(store.read_json(desc.digest, desc.size), f"manifest {desc.digest}")
        if depth < 4:
            for child in parts.manifests:
                walk(child, depth + 1)
        out.extend((b.digest, b.size) for b in parts.blobs())
        out.append((desc.digest, desc.size))

    walk(Descriptor.parse(descriptor, "the artifact"), 0)
    return list(dict.fromkeys(out))


def link_or_copy(src: Path, dst: Path, size: int | None = None) -> bool:
    """Put *src* at *dst* atomically unless it is there (with *size* bytes, when given);
    return whether anything was written."""
    try:
        if dst.is_file() and (size is None or dst.stat().st_size == size):
            return False
    except OSError:
        pass
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise BuildError(f"cannot write {shown(dst)}: {exc.strerror}") from None
    return True


def export_layout(store: Store, descriptor: dict[str, Any], dest: Path, ref: str | None) -> bool:
    """Write *descriptor* and its blobs into the layout at *dest*; return whether it changed."""
    target = Store(dest, owned=False).ensure()
    changed = False
    for digest, size in blobs_of(store, descriptor):
        damage: list[str] = []
        if not store.check_blob(digest, size, on_damage=damage.append):
            raise BuildError(damage[0] if damage else f"blob {digest} is missing from the store",
                             hint="build again: the blob is rebuilt")
        changed |= link_or_copy(store.blob_path(digest), target.blob_path(digest), size)
    if ref:
        changed |= target.tag(ref, descriptor)
    else:
        changed |= target.add_untagged(descriptor)
    # a standalone layout has no use for the store's bookkeeping
    for extra in ("ingest", "locks"):
        try:
            (dest / extra).rmdir()
        except OSError:
            pass
    try:
        (dest / "index.json.lock").unlink(missing_ok=True)
    except OSError as exc:
        raise os_failure(exc, "tidy the OCI layout", dest) from None
    return changed
