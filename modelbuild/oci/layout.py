"""Export an artifact from the store into a standalone OCI image layout (``--output type=oci``).

Blobs are hard-linked from the store when both are on one file system (store blobs are
immutable and read-only), else copied with the kernel's copy (``shutil.copyfile`` uses
``sendfile``/``copy_file_range``): no byte passes through Python either way.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from modelbuild.errors import BuildError
from modelbuild.store import Store, atomic_write


def blobs_of(store: Store, descriptor: dict[str, Any]) -> list[str]:
    """The digests a manifest or index needs, children first."""
    out: list[str] = []
    doc = store.read_json(descriptor["digest"])
    for child in doc.get("manifests", []):
        out.extend(blobs_of(store, child))
    if "config" in doc:
        out.append(doc["config"]["digest"])
    out.extend(layer["digest"] for layer in doc.get("layers", []))
    out.append(descriptor["digest"])
    return list(dict.fromkeys(out))


def link_or_copy(src: Path, dst: Path) -> bool:
    """Put *src* at *dst* atomically unless it is there; return whether anything was written."""
    if dst.exists():
        return False
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise BuildError(f"cannot write {dst}: {exc.strerror}") from None
    return True


def export_layout(store: Store, descriptor: dict[str, Any], dest: Path, ref: str | None) -> bool:
    """Write *descriptor* and its blobs into the layout at *dest*; return whether it changed."""
    target = Store(dest)
    try:
        target.ensure()
    except OSError as exc:
        raise BuildError(f"cannot create OCI layout at {dest}: {exc.strerror}") from None
    changed = False
    for digest in blobs_of(store, descriptor):
        changed |= link_or_copy(store.blob_path(digest), target.blob_path(digest))
    if ref:
        changed |= target.tag(ref, descriptor)
    else:
        entries = target.manifests()
        if not any(m["digest"] == descriptor["digest"] for m in entries):
            entries.append(dict(descriptor))
            doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}
            atomic_write(target.index_path, json.dumps(doc, indent=2).encode() + b"\n")
            changed = True
    # a standalone layout has no use for the store's bookkeeping
    for extra in ("ingest", "locks"):
        try:
            (dest / extra).rmdir()
        except OSError:
            pass
    (dest / "index.json.lock").unlink(missing_ok=True)
    return changed
