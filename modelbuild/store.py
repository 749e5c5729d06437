"""The local store: an OCI image layout of content-addressed blobs, and its tags.

:class:`Store` is the one writer of the store: every blob goes in through one of its
methods (a :class:`BlobWriter`, :meth:`~Store.ingest_file`, :meth:`~Store.adopt`,
:meth:`~Store.download`, :meth:`~Store.link_from`), every tag through
:class:`~modelbuild.storage.tags.TagIndex` (``index.json``). Nothing outside it names a
path under ``blobs/`` to write to.

Every blob is written to ``ingest/`` first, hashed on the way in, fsync'd, and renamed into
``blobs/sha256/<hex>``: a killed build leaves at worst a temp file in ``ingest/`` (which
``prune`` removes), never a half-written blob under its digest. Blobs are made read-only so
an export that hard-links them cannot be edited by accident. A file ingested where the file
system shares extents (btrfs, XFS with reflink) is a reflink of it, costing no space; its
digest is still that of the stored bytes, read back (docs/storage.md).

Nothing read back is trusted. Manifests, indexes and configs are read through
:func:`modelbuild.oci.verify.read_verified` (bounded in size, checked against their digest);
every descriptor of ``index.json`` and of a manifest goes through
:meth:`~modelbuild.oci.verify.Descriptor.parse`. A blob reused without being read (a cached
step's result, a layer hard-linked into an ``--output`` layout, a blob about to be pushed)
gets :meth:`Store.check_blob`: it exists, is a regular file of exactly its size and has no
write permission bit (root ignores permission bits, so a writable blob is one someone
rewrote). A blob found damaged either way is removed, so the next build rebuilds it and the
next pull fetches it again; ``prune --verify`` re-hashes everything.

Builds hold ``gc.lock`` shared while they run; ``prune`` takes it exclusively, so it never
collects blobs a running build has written but not yet tagged. File-system failures are
:class:`StoreError` lines naming the file (:mod:`modelbuild.storage.files`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from modelbuild.digests import hex_of, is_digest
from modelbuild.errors import BuildError, NotFoundError, StoreError
from modelbuild.oci.filecopy import kernel_copy, reflink
from modelbuild.oci.verify import (MAX_JSON, Descriptor, IntegrityError, fsync_enabled, parse_json_object,
                                   read_verified, shown)
from modelbuild.oci.walk import walk
from modelbuild.storage.files import (atomic_write, copy_stream, flock, os_failure, read_bounded, sha256_file,
                                      store_io)
from modelbuild.storage.referrers import ReferrerIndex
from modelbuild.storage.tags import TagIndex

Progress = Callable[[int], None]
Report = Callable[[str], None]
Fetch = Callable[[Path, Path], None]


class BlobWriter:
    """A blob being written: hashes every byte on its way to a temp file."""

    def __init__(self, store: "Store") -> None:
        self.store = store
        with store_io("write a blob into the store", store.ingest_dir):
            fd, name = tempfile.mkstemp(dir=store.ingest_dir, prefix="blob-")
        self.temp = Path(name)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.hasher = hashlib.sha256()
        self.size = 0
        self.digest: str | None = None
        self.created = False  # whether commit() added a new blob (vs. one already stored)

    def write(self, data: bytes | memoryview) -> int:
        self.hasher.update(data)
        with store_io("write a blob into the store", self.temp):
            self.file.write(data)
        self.size += len(data)
        return len(data)

    def commit(self) -> str:
        """Move the blob under its digest; return the digest. Idempotent per content; a
        damaged copy already under the digest is replaced."""
        with store_io("write a blob into the store", self.temp):
            self.file.flush()
            if fsync_enabled():
                os.fsync(self.file.fileno())
            self.file.close()
        digest = "sha256:" + self.hasher.hexdigest()
        self.created = self.store._install(self.temp, digest, self.size)
        self.digest = digest
        return digest

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.temp.unlink(missing_ok=True)

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc_type is not None or self.digest is None:
            self.abort()


class Store(TagIndex, ReferrerIndex):
    """An OCI image layout used as modelbuild's local store (*owned*), or an OCI layout read
    or written by modelbuild (not owned: it is the user's, so nothing in it is ever removed
    and its blobs' modes are theirs). Besides blobs and tags, it records which artifacts
    refer to a manifest (:mod:`modelbuild.storage.referrers`)."""

    def __init__(self, root: Path, *, owned: bool = True) -> None:
        self.root = root
        self.owned = owned
        self.blobs_dir = root / "blobs" / "sha256"
        self.ingest_dir = root / "ingest"
        self.partial_dir = root / "partial"  # downloads in progress, resumed by the next pull
        self.index_path = root / "index.json"

    @property
    def kind(self) -> str:
        return "the store" if self.owned else "the OCI layout"

    @classmethod
    def open_layout(cls, root: Path) -> "Store":
        """An OCI image layout directory to read (``inspect DIR``, ``push DIR``): its
        ``oci-layout`` file must say it is one."""
        marker = root / "oci-layout"
        try:
            data = read_bounded(marker, 4096)
        except FileNotFoundError:
            raise NotFoundError(f"{shown(root)}: not an OCI image layout (it has no oci-layout file)") from None
        except OSError as exc:
            raise os_failure(exc, "read the OCI layout", marker) from None
        doc = parse_json_object(data, shown(marker))
        if not isinstance(doc.get("imageLayoutVersion"), str):
            raise IntegrityError(f"{shown(marker)}: has no imageLayoutVersion; not an OCI image layout")
        return cls(root, owned=False)

    # -- layout -----------------------------------------------------------------------
    def ensure(self) -> "Store":
        """Create the layout if it does not exist yet (safe to race); a store that cannot be
        created or written is a :class:`StoreError` naming the path."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{shown(self.root)}: cannot create {self.kind}: it is a file, not a directory")
        with store_io(f"create {self.kind}", self.root):
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
            self.ingest_dir.mkdir(parents=True, exist_ok=True)
            (self.root / "locks").mkdir(exist_ok=True)
            layout = self.root / "oci-layout"
            if not layout.exists():
                atomic_write(layout, json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        with store_io(f"write to {self.kind}", self.ingest_dir, exact=True):
            # a read-only or full store says so now, not after a download or a conversion
            fd, probe = tempfile.mkstemp(dir=self.ingest_dir, prefix="probe-")
            os.close(fd)
            os.unlink(probe)
        if not self.index_path.exists():
            with self._index_lock():
                if not self.index_path.exists():
                    self._write_index([])
        return self

    # -- blobs ------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        try:
            return self.blobs_dir / hex_of(digest)
        except ValueError as exc:
            raise StoreError(shown(exc)) from None

    def has_blob(self, digest: str) -> bool:
        """Whether a blob is there (not whether it is sound: see :meth:`check_blob`)."""
        return self.blob_path(digest).exists()

    def check_blob(self, digest: str, size: int, *, on_damage: Report | None = None) -> bool:
        """The cheap check on each reuse of a blob not read back: it exists, is a regular file
        of exactly *size* bytes, and (in the store) has no write permission bit.

        False when it is missing, or damaged: then it is removed (the next build or pull puts
        it back) and *on_damage* gets the line reporting it. Content is not hashed here
        (``prune --verify`` and :meth:`verify_blob` do that), except when the size is wrong:
        then either the blob or the descriptor lies, and a sound blob is kept (a descriptor
        from a hostile manifest or cache record cannot make modelbuild delete good data)."""
        path = self.blob_path(digest)
        try:
            st = os.lstat(path) if self.owned else os.stat(path)  # a layout's blob may be a link
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise os_failure(exc, "check a blob", path) from None
        if not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
        elif st.st_size != size:
            if self.owned and self.is_sound(digest):
                if on_damage is not None:
                    on_damage(f"blob {digest} has {st.st_size} bytes, not the {size} its descriptor says")
                return False
            problem = f"{st.st_size} bytes, not {size}"
        elif self.owned and st.st_mode & 0o222:
            problem = "made writable, so it may have been rewritten"
        else:
            return True
        line = self.damaged(digest, problem)
        if on_damage is not None:
            on_damage(line)
        return False

    def is_sound(self, digest: str) -> bool:
        """Whether the blob hashes to its digest (a full read; for the failure paths only)."""
        try:
            return self.verify_blob(digest)
        except BuildError:
            return False

    def damaged(self, digest: str, why: str, *, remove: bool = True) -> str:
        """Remove a damaged blob from the store (never from a layout, which is not ours) and
        return the line that reports it."""
        if not self.owned or not remove:
            return f"blob {digest} in {shown(self.root)} is damaged ({why})"
        try:
            self.blob_path(digest).unlink(missing_ok=True)
        except OSError as exc:
            return f"blob {digest} in {shown(self.root)} is damaged ({why}) and cannot be removed: {exc.strerror}"
        return f"blob {digest} in {shown(self.root)} was damaged ({why}); removed it"

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def put_bytes(self, data: bytes) -> str:
        with self.writer() as w:
            w.write(data)
            return w.commit()

    def read_blob(self, digest: str, size: int | None = None, *, limit: int = MAX_JSON, heal: bool = True) -> bytes:
        """A small blob (a manifest, an index, a config), checked against *digest* and, when
        the caller knows it, *size*; at most *limit* bytes are read. A blob whose bytes do not
        match is reported with its digest and (unless not *heal*: a dry run) removed."""
        path = self.blob_path(digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is not in {shown(self.root)}") from None
        except OSError as exc:
            raise os_failure(exc, "read a blob", path) from None
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(self.damaged(digest, "not a regular file", remove=heal), hint=self._remedy())
        if size is not None and st.st_size != size:
            if not self.owned or self.is_sound(digest):  # the descriptor lies, not the blob
                raise IntegrityError(f"blob {digest} in {shown(self.root)} has {st.st_size} bytes, not the {size} "
                                     "its descriptor says")
            raise StoreError(self.damaged(digest, f"{st.st_size} bytes, not {size}", remove=heal),
                             hint=self._remedy())
        if st.st_size > limit:
            raise IntegrityError(f"blob {digest} in {shown(self.root)} has {st.st_size} bytes, more than the "
                                 f"{limit} a manifest, index or config may have")
        try:
            return read_verified(path, digest, st.st_size, limit=limit, what=f"blob in {shown(self.root)}")
        except IntegrityError as exc:
            if "does not match" not in exc.message:  # it could not be read, or changed size meanwhile
                raise
            raise StoreError(self.damaged(digest, "its content does not match its digest", remove=heal),
                             hint=self._remedy()) from None

    def read_json(self, digest: str, size: int | None = None, *, heal: bool = True) -> dict[str, Any]:
        """A manifest, index or config: :meth:`read_blob`, and a JSON object."""
        return parse_json_object(self.read_blob(digest, size, heal=heal), f"blob {digest} in {shown(self.root)}")

    def _remedy(self) -> str | None:
        return "rebuild it, or pull it again" if self.owned else None

    def ingest_file(self, path: str | Path, progress: Progress | None = None) -> tuple[str, int, bool]:
        """Copy a file into the store, hashing the copy as it is made: a reflink where the
        file system can, else O_DIRECT writes of the buffers hashed (with fsync on), else the
        kernel's copy with the hash a few chunks behind it
        (:func:`~modelbuild.oci.filecopy.kernel_copy`), else a stream through Python (from
        another file system).

        Returns the digest, the size, and whether the blob is new to the store.
        """
        with self.writer() as w:
            if not self._kernel_ingest(path, w, progress):
                copy_stream(path, w.write, progress)
            return w.commit(), w.size, w.created

    def _kernel_ingest(self, path: str | Path, w: BlobWriter, progress: Progress | None) -> bool:
        """*path* into *w* by :func:`~modelbuild.oci.filecopy.kernel_copy`, hashing the copy (so
        the digest names the bytes stored, even if the source changes meanwhile); False,
        having written nothing, where the kernel cannot."""
        with store_io("write a blob into the store", w.temp):
            w.file.flush()
        try:
            src_fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise BuildError(f"cannot read {path}: {exc.strerror}") from None

        def failed(exc: OSError) -> Exception:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                return os_failure(exc, "write a blob into the store", w.temp)
            return BuildError(f"cannot copy {path}: {exc.strerror}")

        try:
            copied = kernel_copy(src_fd, w.file.fileno(), w.hasher.update, progress=progress, failed=failed,
                                 short=f"short read from the store while ingesting {path}",
                                 writeback=fsync_enabled())
        finally:
            os.close(src_fd)
        if copied is None:
            return False
        w.size = copied
        w.file.seek(copied)
        return True

    def adopt(self, path: str | Path, progress: Progress | None = None) -> tuple[str, int, bool]:
        """Move a finished file (written under ``ingest/``) into the store: hash it, fsync
        it, rename it under its digest. No copy. Returns digest, size, and whether it is new."""
        digest, size = sha256_file(path, progress)
        if fsync_enabled():
            with store_io("write a blob into the store", path):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return digest, size, self._install(Path(path), digest, size)

    def download(self, digest: str, size: int, fetch: Fetch) -> bool:
        """Put a blob into the store by *fetch(dest, partial)*, which leaves at *dest* a file
        it has verified against *digest* and *size*, resuming from *partial* (kept under
        ``partial/`` across a kill, named by the digest). The store installs it under its
        digest like any other blob. Two downloads of one blob take turns: the second finds
        it stored and fetches nothing. Returns whether the blob is new."""
        hexd = hex_of(digest)
        with store_io(f"write to {self.kind}", self.partial_dir):
            self.partial_dir.mkdir(parents=True, exist_ok=True)
        with flock(self.root / "locks" / f"blob-{hexd}.lock", exclusive=True):
            if self.check_blob(digest, size):
                return False
            dest = self.ingest_dir / f"pull-{hexd}"
            fetch(dest, self.partial_dir / hexd)
            return self._install(dest, digest, size)

    def link_from(self, source: Store, digest: str, size: int) -> bool:
        """Put *source*'s blob here unless it is here already (with *size* bytes): hard-linked
        where both are on one file system (blobs are immutable), else reflinked where the file
        system shares extents across mounts (btrfs subvolumes, a bind mount), else copied,
        atomically either way; no byte is checked, so the caller gives it :meth:`check_blob`
        first. Returns whether anything was written."""
        dst = self.blob_path(digest)
        try:
            if dst.is_file() and dst.stat().st_size == size:
                return False
        except OSError:
            pass
        tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
        try:
            try:
                os.link(source.blob_path(digest), tmp)
            except OSError:  # another file system, or another mount of this one: a reflink, else a copy
                with open(source.blob_path(digest), "rb") as src, open(tmp, "wb") as out:
                    cloned = reflink(src.fileno(), out.fileno(), size) is not None
                if not cloned:
                    shutil.copyfile(source.blob_path(digest), tmp)
            os.replace(tmp, dst)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise BuildError(f"cannot write {shown(dst)}: {exc.strerror}") from None
        return True

    def tidy(self) -> None:
        """Remove the store's bookkeeping (``ingest/``, ``locks/``, ``partial/`` where empty,
        the index lock) from an OCI layout modelbuild wrote: a standalone layout has no use
        for it."""
        for extra in ("ingest", "locks", "partial"):
            with contextlib.suppress(OSError):
                (self.root / extra).rmdir()
        try:
            (self.root / "index.json.lock").unlink(missing_ok=True)
        except OSError as exc:
            raise os_failure(exc, "tidy the OCI layout", self.root) from None

    def _install(self, temp: Path, digest: str, size: int) -> bool:
        """Rename the finished file *temp* to the blob *digest*, read-only in the store (a
        layout's blobs get the usual mode), unless a sound copy is there already (then
        *temp* goes). Returns whether the blob is new."""
        final = self.blob_path(digest)
        with store_io("write a blob into the store", final):
            if self.check_blob(digest, size):
                temp.unlink(missing_ok=True)
                return False
            os.chmod(temp, 0o444 if self.owned else 0o644)
            os.replace(temp, final)
        return True

    # -- maintenance ------------------------------------------------------------------
    @contextlib.contextmanager
    def gc_lock(self, exclusive: bool) -> Iterator[None]:
        with flock(self.root / "gc.lock", exclusive=exclusive):
            yield

    def all_blobs(self) -> list[str]:
        if not self.blobs_dir.exists():
            return []
        with store_io("list the blobs", self.blobs_dir):
            return sorted("sha256:" + p.name for p in self.blobs_dir.iterdir() if is_digest("sha256:" + p.name))

    def reachable(self, *, heal: bool = True) -> set[str]:
        """Every blob reachable from a tag: manifests, indexes, configs, layers, and the
        referrers of every manifest reached (a runtime description, a signature) with their
        blobs, and theirs in turn. A manifest that is missing or damaged contributes only
        itself (and is removed, if *heal*). No depth bound: what is kept must be everything a
        tag names.

        With *heal* (``prune``, under the exclusive gc lock: no build is between writing a
        referrer and tagging its subject), the referrer records of subjects no tag reaches
        are forgotten, and so are recorded referrers whose manifest is gone."""
        seen: set[str] = set()
        blobs: set[str] = set()

        def visit(root: Descriptor) -> None:
            for node in walk(root, lambda d: self.read_blob(d.digest, d.size, heal=heal), max_depth=None,
                             tolerate=(StoreError, IntegrityError), seen=seen):
                blobs.update(b.digest for b in node.parts.blobs())

        for i, entry in enumerate(self.manifests()):
            visit(Descriptor.parse(entry, f"{shown(self.index_path)} manifests[{i}]"))
        pending = set(self.referrer_subjects())
        while reached := sorted(pending & seen):  # referrers of referrers, until none is new
            pending -= set(reached)
            for subject in reached:
                self._visit_referrers(subject, visit, heal)
        if heal:
            for subject in pending:  # what is left: no tag reaches the subject
                self.forget_referrers(subject)
        return seen | blobs

    def _visit_referrers(self, subject: str, visit: Callable[[Descriptor], None], heal: bool) -> None:
        """Walk the referrers recorded for *subject* whose manifest is still in the store; with
        *heal*, forget the others (and a record too damaged to read)."""
        try:
            listed = self.list_referrers(subject)
        except IntegrityError:
            if heal:
                self.forget_referrers(subject)
            return
        present = [d for d in listed if self.has_blob(d["digest"])]
        for d in present:
            visit(Descriptor.parse(d, f"a referrer of {subject}"))
        if heal and len(present) != len(listed):
            self.forget_referrers(subject, keep=[d["digest"] for d in present])

    def verify_blob(self, digest: str) -> bool:
        return sha256_file(self.blob_path(digest))[0] == digest
