"""The local store: an OCI image layout of content-addressed blobs, and its tags.

Every blob is written to ``ingest/`` first, hashed on the way in, fsync'd, and renamed into
``blobs/sha256/<hex>``: a killed build leaves at worst a temp file in ``ingest/`` (which
``prune`` removes), never a half-written blob under its digest. Blobs are made read-only so
an export that hard-links them cannot be edited by accident.

Nothing read back is trusted. Manifests, indexes and configs are read through
:func:`modelbuild.oci.verify.read_verified` (bounded in size, checked against their digest);
every descriptor of ``index.json`` and of a manifest goes through
:meth:`~modelbuild.oci.verify.Descriptor.parse`. A blob reused without being read (a cached
step's result, a layer hard-linked into an ``--output`` layout, a blob about to be pushed)
gets :meth:`Store.check_blob`: it exists, is a regular file of exactly its size and has no
write permission bit (root ignores permission bits, so a writable blob is one someone
rewrote). A blob found damaged either way is removed, so the next build rebuilds it and the
next pull fetches it again; ``prune --verify`` re-hashes everything.

``index.json`` holds the tags (``org.opencontainers.image.ref.name``); it is rewritten
atomically under an exclusive ``flock``, so concurrent builds never lose each other's tags.
Builds hold ``gc.lock`` shared while they run; ``prune`` takes it exclusively, so it never
collects blobs a running build has written but not yet tagged.

Every failure of the file system under the store (read-only, full, permission denied, a
path that is a file) is a :class:`StoreError` naming the file, raised here, where the store
is touched: commands never catch ``OSError`` themselves.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from modelbuild.digests import CHUNK, hex_of, is_digest
from modelbuild.errors import BuildError, NotFoundError, StoreError
from modelbuild.oci import mediatypes as mt
from modelbuild.oci.verify import (  # ManifestParts is also imported from here by older callers
    MAX_JSON,
    Descriptor,
    IntegrityError,
    ManifestParts,
    fsync_enabled,
    parse_json_object,
    read_verified,
    shown,
)

REF_ANNOTATION = "org.opencontainers.image.ref.name"
MAX_INDEX = 64 << 20  # index.json lists every tag: far more than a manifest, still not endless
Progress = Callable[[int], None]
Report = Callable[[str], None]

_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EEXIST: "a file is in the way",
    errno.EISDIR: "is a directory",
}




def os_failure(exc: OSError, doing: str, path: str | Path) -> StoreError:
    """The one line a failed file-system call under the store becomes: the file it concerned,
    what modelbuild was doing, and the reason in words (``ENOSPC``, ``EROFS``, …)."""
    reason = _REASONS.get(exc.errno or 0) or (exc.strerror or str(exc)).lower()
    return StoreError(f"{shown(exc.filename or path, 240)}: cannot {doing}: {reason}")


@contextlib.contextmanager
def store_io(doing: str, path: str | Path, *, exact: bool = False) -> Iterator[None]:
    """Run a file-system call on the store; an ``OSError`` becomes :func:`os_failure`, naming
    the file the error names, or always *path* when *exact* (a temp file's name says nothing).

    Wrap only the call itself, never a ``yield`` to caller code: that code's own errors are
    its own."""
    try:
        yield
    except OSError as exc:
        if exact:
            exc.filename = None
        raise os_failure(exc, doing, path) from None


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


def tag_entry(ref: str, descriptor: Mapping[str, Any]) -> dict[str, Any]:
    """The ``index.json`` entry that tags *descriptor* as *ref*."""
    entry = dict(descriptor)
    entry["annotations"] = {**(descriptor.get("annotations") or {}), REF_ANNOTATION: ref}
    return entry


def ref_of(entry: Mapping[str, Any]) -> str | None:
    return (entry.get("annotations") or {}).get(REF_ANNOTATION)


class Store:
    """An OCI image layout used as modelbuild's local store (*owned*), or an OCI layout read
    or written by modelbuild (not owned: it is the user's, so nothing in it is ever removed
    and its blobs' modes are theirs)."""

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
            data = _read_bounded(marker, 4096)
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
                _atomic_write(layout, json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
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
        """Copy a file into the store, hashing it in the same pass: each byte read once.

        Returns the digest, the size, and whether the blob is new to the store.
        """
        with self.writer() as w:
            if not _kernel_copy(path, w, progress):
                _copy_stream(path, w.write, progress)
            return w.commit(), w.size, w.created

    def adopt(self, path: str | Path, progress: Progress | None = None) -> tuple[str, int, bool]:
        """Move a finished file (written under ``ingest/``) into the store: hash it, fsync
        it, rename it under its digest. No copy. Returns digest, size, and whether it is new."""
        hasher = hashlib.sha256()
        size = _copy_stream(path, hasher.update, progress)
        digest = "sha256:" + hasher.hexdigest()
        if fsync_enabled():
            with store_io("write a blob into the store", path):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return digest, size, self._install(Path(path), digest, size)

    def _install(self, temp: Path, digest: str, size: int) -> bool:
        """Rename the finished file *temp* to the blob *digest*, read-only, unless a sound copy
        is there already (then *temp* goes). Returns whether the blob is new."""
        final = self.blob_path(digest)
        with store_io("write a blob into the store", final):
            if self.check_blob(digest, size):
                temp.unlink(missing_ok=True)
                return False
            os.chmod(temp, 0o444)
            os.replace(temp, final)
        return True

    # -- tags -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        with _flock(self.root / "index.json.lock", exclusive=True):
            yield

    def manifests(self) -> list[dict[str, Any]]:
        """The entries of ``index.json``, each a validated descriptor; a damaged file is an
        error naming it (an empty store has none)."""
        try:
            data = _read_bounded(self.index_path, MAX_INDEX)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise os_failure(exc, "read the index", self.index_path) from None
        where = shown(self.index_path)
        doc = parse_json_object(data, where)
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise IntegrityError(f"{where}: has no 'manifests' list")
        out = []
        for i, item in enumerate(entries):
            descriptor = Descriptor.parse(item, f"{where} manifests[{i}]")
            entry = dict(descriptor.raw)
            entry.pop("annotations", None)
            if descriptor.annotations:
                entry["annotations"] = dict(descriptor.annotations)
            out.append(entry)
        return out

    def tags(self) -> dict[str, dict[str, Any]]:
        return {ref: m for m in self.manifests() if (ref := ref_of(m)) is not None}

    def tag(self, ref: str, descriptor: Mapping[str, Any]) -> bool:
        """Point *ref* at *descriptor*; return False when it already did."""
        return self.set_tags([(ref, descriptor)])

    def set_tags(self, tags: Sequence[tuple[str, Mapping[str, Any]]]) -> bool:
        """Point each ref at its descriptor in one rewrite of ``index.json``: a reader (or a
        failure) sees all of them moved or none. Returns False when nothing changed."""
        if not tags:
            return False
        with self._index_lock():
            entries = self.manifests()
            wanted = {ref: tag_entry(ref, descriptor) for ref, descriptor in tags}
            if all(entry in entries for entry in wanted.values()):
                return False
            kept = [m for m in entries if ref_of(m) not in wanted]
            kept.extend(wanted.values())
            kept.sort(key=lambda m: (ref_of(m) or "", m["digest"]))
            self._write_index(kept)
            return True

    def untag(self, ref: str) -> dict[str, Any] | None:
        if ref not in self.tags():
            ref = _normalised(ref)
        with self._index_lock():
            entries = self.manifests()
            gone = [m for m in entries if ref_of(m) == ref]
            if not gone:
                return None
            self._write_index([m for m in entries if m not in gone])
            return gone[0]

    def add_untagged(self, descriptor: Mapping[str, Any]) -> bool:
        """List *descriptor* in ``index.json`` without a tag (an ``--output`` layout of an
        untagged build); False when it is there already."""
        with self._index_lock():
            entries = self.manifests()
            if any(m["digest"] == descriptor["digest"] for m in entries):
                return False
            self._write_index([*entries, dict(descriptor)])
            return True

    def _write_index(self, entries: list[dict[str, Any]]) -> None:
        with store_io("write the index", self.index_path, exact=True):
            _atomic_write(self.index_path, _index_bytes(entries))

    def resolve(self, ref: str) -> dict[str, Any]:
        """A tag or a manifest digest → its descriptor."""
        if is_digest(ref):
            if not self.has_blob(ref):
                raise NotFoundError(f"{ref} is not in {shown(self.root)}")
            data = self.read_blob(ref)
            doc = parse_json_object(data, f"blob {ref} in {shown(self.root)}")
            media = doc.get("mediaType")
            return {"mediaType": media if isinstance(media, str) else mt.OCI_MANIFEST, "digest": ref,
                    "size": len(data)}
        tags = self.tags()
        if ref in tags:
            return tags[ref]
        normalised = _normalised(ref)
        if normalised in tags:
            return tags[normalised]
        raise NotFoundError(f"no such model: {shown(ref)}", hint="`modelbuild ls` lists what is stored")

    # -- maintenance ------------------------------------------------------------------
    @contextlib.contextmanager
    def gc_lock(self, exclusive: bool) -> Iterator[None]:
        with _flock(self.root / "gc.lock", exclusive=exclusive):
            yield

    def all_blobs(self) -> list[str]:
        if not self.blobs_dir.exists():
            return []
        with store_io("list the blobs", self.blobs_dir):
            return sorted("sha256:" + p.name for p in self.blobs_dir.iterdir() if is_digest("sha256:" + p.name))

    def reachable(self, *, heal: bool = True) -> set[str]:
        """Every blob reachable from a tag: manifests, indexes, configs, layers. A manifest
        that is missing or damaged contributes only itself (and is removed, if *heal*)."""
        seen: set[str] = set()
        stack = [(m["digest"], m["size"]) for m in self.manifests()]
        while stack:
            digest, size = stack.pop()
            if digest in seen:
                continue
            seen.add(digest)
            try:
                parts = ManifestParts.parse(self.read_json(digest, size, heal=heal), f"manifest {digest}")
            except (StoreError, IntegrityError):
                continue
            stack.extend((m.digest, m.size) for m in parts.manifests)
            seen.update(b.digest for b in parts.blobs())
        return seen

    def verify_blob(self, digest: str) -> bool:
        hasher = hashlib.sha256()
        _copy_stream(self.blob_path(digest), hasher.update, None)
        return "sha256:" + hasher.hexdigest() == digest


@contextlib.contextmanager
def _flock(path: Path, *, exclusive: bool) -> Iterator[None]:
    """An ``flock`` on *path*, created if need be. An existing lock file of a read-only store
    is opened read-only (``flock`` does not care), so reading commands still work there."""
    with store_io("lock the store", path):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or not path.exists():
                raise
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with store_io("lock the store", path):
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # drops the lock


def _read_bounded(path: Path, limit: int) -> bytes:
    """A small file read whole, refusing more than *limit* bytes (a hostile layout's index
    may be endless)."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise IntegrityError(f"{shown(path)} is larger than {limit} bytes")
    return data


KERNEL_CHUNK = 64 << 20


def _kernel_copy(path: str | Path, w: BlobWriter, progress: Progress | None) -> bool:
    """Copy *path* into the blob being written with ``copy_file_range`` (no byte passes
    through Python), hashing each chunk from the *copy* while it is hot in the page cache.

    Hashing the copy, not the source, means the digest always names the bytes stored, even
    if the source changes meanwhile. Returns False, having written nothing, where the
    kernel cannot do it (other file systems, old kernels); the caller then streams.
    """
    if not hasattr(os, "copy_file_range"):
        return False
    with store_io("write a blob into the store", w.temp):
        w.file.flush()
    out_fd = w.file.fileno()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        src_fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror}") from None
    try:
        offset = 0
        while True:
            try:
                n = os.copy_file_range(src_fd, out_fd, KERNEL_CHUNK, offset, offset)
            except OSError as exc:
                if offset == 0 and exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    return False
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                    raise os_failure(exc, "write a blob into the store", w.temp) from None
                raise BuildError(f"cannot copy {path}: {exc.strerror}") from None
            if n == 0:
                break
            end = offset + n
            while offset < end:
                got = os.preadv(out_fd, [view[: min(CHUNK, end - offset)]], offset)
                if got <= 0:
                    raise BuildError(f"short read from the store while ingesting {path}")
                w.hasher.update(view[:got])
                offset += got
                if progress is not None:
                    progress(got)
        w.size = offset
        w.file.seek(offset)
        return True
    finally:
        os.close(src_fd)


def _normalised(ref: str) -> str:
    """``name`` → ``name:latest``, as a user typing a bare name means."""
    from modelbuild.errors import UsageError
    from modelbuild.oci.reference import parse_reference

    try:
        return str(parse_reference(ref))
    except UsageError:
        return ref


def _copy_stream(path: str | Path, sink: Callable[[memoryview], Any], progress: Progress | None) -> int:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    try:
        with open(path, "rb", buffering=0) as src:
            while True:
                n = src.readinto(buf)
                if not n:
                    break
                sink(view[:n])
                total += n
                if progress is not None:
                    progress(n)
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror}") from None
    return total


def _index_bytes(manifests: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}, indent=2
    ).encode() + b"\n"


def _atomic_write(path: Path, data: bytes) -> None:
    """Write *data* to *path* so a reader sees the old or the new file, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync_enabled():
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


atomic_write = _atomic_write
copy_stream = _copy_stream
