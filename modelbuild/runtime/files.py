"""A variant's files on disk for an engine, without a second copy of the weights
(docs/spec/runtime.md §3.6).

``run`` materialises a variant into ``$MODELBUILD_HOME/run/<manifest hex>/`` through the one
materialisation (:mod:`modelbuild.oci.materialize`: every path checked, nothing written
outside the directory, tar members unpacked with every name and link checked), with one
difference: a raw layer's file is a **hard link** to the store's blob (blobs in the store
are read-only and never rewritten), so a 16 GB model takes no more disk and no time. Where
the store is on another file system the blob is copied, verified.

The directory is made read-only (files 0444, directories 0555): an engine that writes
next to its model fails loudly instead of changing a store blob through a link. A
``.modelbuild-materialized.json`` record written last says it is complete; a second run
checks that each linked file is still the store's blob (same inode, size and mode) and
materialises nothing. A directory without the record (a run killed half-way) is removed and
done again. Runs of one variant take a lock, so two at once do the work once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelbuild.errors import BuildError
from modelbuild.oci.verify import Descriptor, copy_verified, shown

RECORD = ".modelbuild-materialized.json"


@dataclass(frozen=True)
class Materialized:
    """Where a variant's files are, and what it took to put them there."""

    path: Path
    files: tuple[str, ...]
    linked: int  # files hard-linked from the store
    copied: int  # files copied (another file system, or unpacked from a tar layer)
    reused: bool  # the directory was complete already: nothing was done


class LinkSource:
    """Blobs of the local store, hard-linked into the staging directory after the store's
    cheap check (exists, right size, no write bit: :meth:`Store.check_blob`); copied and
    verified when a link is impossible, and always for an OCI layout's blobs (the user's
    files: making a link read-only would change theirs)."""

    verb = "link"  # the progress line's word for what happens to each blob

    def __init__(self, store: Any, where: str) -> None:
        self.store, self.where = store, where
        self.linked = self.copied = 0

    def fetch(self, desc: Descriptor, dest: Path, progress: Any) -> None:
        from modelbuild.errors import StoreError

        if not self.store.check_blob(desc.digest, desc.size):
            raise StoreError(f"{self.where}: blob {desc.digest} is missing or damaged in the store",
                             hint="pull or build the artifact again")
        blob = self.store.blob_path(desc.digest)
        try:
            if not getattr(self.store, "owned", False):  # a layout's file is the user's: never share its inode
                raise OSError("not the store's own blob")
            os.link(blob, dest)
            self.linked += 1
        except OSError:
            from modelbuild.oci.untar import create_exclusive

            fd = create_exclusive(dest, 0o644)
            try:
                copy_verified(blob, fd, desc.digest, desc.size, what=f"{self.where}: blob", progress=progress)
            finally:
                os.close(fd)
            self.copied += 1
            return
        if progress is not None:
            progress(desc.size)


def run_dir(home: Path, digest: str) -> Path:
    """Where ``run`` puts a variant's files: one directory per manifest digest."""
    return home / "run" / digest.split(":", 1)[-1]


def materialize_variant(variant: Any, home: Path, *, steps: Any = None) -> Materialized:
    """The variant's files in :func:`run_dir`, by hard links; see the module docstring."""
    return materialize_into(variant, run_dir(home, variant.digest), steps=steps)


def materialize_into(variant: Any, dest: Path, *, steps: Any = None) -> Materialized:
    """*variant*'s files in *dest* by hard links, unless a complete, sound materialisation
    is there already; under a lock, so concurrent callers do the work once. *variant* has
    ``digest``, ``store``, ``manifest``, ``config`` and ``shown``."""
    from modelbuild.locks import KeyLocks

    dest.parent.mkdir(parents=True, exist_ok=True)
    with KeyLocks(dest.parent).hold(dest.name):
        done = _complete(dest, variant)
        if done is not None:
            return Materialized(dest, tuple(done), 0, 0, True)
        if os.path.lexists(dest):
            remove_tree(dest)
        return _materialize(variant, dest, steps)


def _materialize(variant: Any, dest: Path, steps: Any) -> Materialized:
    from modelbuild.oci.materialize import materialize

    source = LinkSource(variant.store, variant.shown)
    try:
        outcome = materialize(source, variant.manifest, variant.config or None, dest, steps=steps)
        for warning in outcome.warnings:
            if steps is not None:
                steps.warn(warning)
        links = _links(variant, dest)
        record = {"digest": variant.digest, "files": outcome.files, "links": links}
        (dest / RECORD).write_text(json.dumps(record, sort_keys=True))
        _read_only(dest)
    except BaseException:
        remove_tree(dest)
        raise
    return Materialized(dest, tuple(outcome.files), len(links), len(outcome.files) - len(links), False)


def _links(variant: Any, dest: Path) -> dict[str, list[int]]:
    """Each file that is a store blob: path → [inode, size], what the next run checks."""
    from modelbuild.oci.layerplan import plan

    out: dict[str, list[int]] = {}
    layers, _ = plan(variant.manifest, variant.config or None, variant.shown)
    for layer in layers:
        if layer.is_tar or not layer.path:
            continue
        try:
            st, blob = os.lstat(dest / layer.path), os.stat(variant.store.blob_path(layer.desc.digest))
        except OSError:
            continue
        if st.st_ino == blob.st_ino and st.st_dev == blob.st_dev:
            out[layer.path] = [st.st_ino, st.st_size]
    return out


def _complete(dest: Path, variant: Any) -> list[str] | None:
    """The files of a complete earlier materialisation, if it is still sound, else None."""
    try:
        record = json.loads((dest / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("digest") != variant.digest:
        return None
    files, links = record.get("files"), record.get("links")
    if not isinstance(files, list) or not isinstance(links, dict):
        return None
    for rel in files:
        if not isinstance(rel, str) or not os.path.lexists(dest / rel):
            return None
    for rel, (ino, size) in links.items():
        try:
            st = os.lstat(dest / rel)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_ino != ino or st.st_size != size or st.st_mode & 0o222:
            return None
    return files


def _read_only(root: Path) -> None:
    """Files 0444 (0555 where executable), directories 0555, deepest first."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o222:
                os.chmod(path, 0o555 if st.st_mode & 0o111 else 0o444)
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o555)
    os.chmod(root, 0o555)


def remove_tree(root: Path) -> None:
    """Remove a run directory, read-only as it is (its directories are made writable first;
    files that are links to store blobs keep their mode: unlinking needs none)."""
    def writable(path: str) -> None:
        with contextlib.suppress(OSError):
            if not os.path.islink(path):
                os.chmod(path, 0o755)

    if not os.path.lexists(root):
        return
    if os.path.islink(root) or not os.path.isdir(root):
        os.unlink(root)
        return
    writable(str(root))
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            writable(os.path.join(dirpath, name))
    try:
        shutil.rmtree(root)
    except OSError as exc:
        raise BuildError(f"cannot remove {shown(root)}: {exc.strerror}") from None


__all__ = ["RECORD", "LinkSource", "Materialized", "materialize_variant", "remove_tree", "run_dir"]
