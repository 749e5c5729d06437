"""The local store: an OCI image layout of content-addressed blobs, and its tags.

Every blob is written to ``ingest/`` first, hashed on the way in, fsync'd, and renamed into
``blobs/sha256/<hex>``: a killed build leaves at worst a temp file in ``ingest/`` (which
``prune`` removes), never a half-written blob under its digest. Blobs are made read-only so
an export that hard-links them cannot be edited by accident.

``index.json`` holds the tags (``org.opencontainers.image.ref.name``); it is rewritten
atomically under an exclusive ``flock``, so concurrent builds never lose each other's tags.
Builds hold ``gc.lock`` shared while they run; ``prune`` takes it exclusively, so it never
collects blobs a running build has written but not yet tagged.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from modelbuild.digests import CHUNK, hex_of, is_digest
from modelbuild.errors import BuildError, NotFoundError, StoreError
from modelbuild.oci import mediatypes as mt

REF_ANNOTATION = "org.opencontainers.image.ref.name"
Progress = Callable[[int], None]


def _fsync_enabled() -> bool:
    return os.environ.get("MODELBUILD_FSYNC", "1") != "0"


class BlobWriter:
    """A blob being written: hashes every byte on its way to a temp file."""

    def __init__(self, store: "Store") -> None:
        self.store = store
        fd, name = tempfile.mkstemp(dir=store.ingest_dir, prefix="blob-")
        self.temp = Path(name)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.hasher = hashlib.sha256()
        self.size = 0
        self.digest: str | None = None
        self.created = False  # whether commit() added a new blob (vs. one already stored)

    def write(self, data: bytes | memoryview) -> int:
        self.hasher.update(data)
        self.file.write(data)
        self.size += len(data)
        return len(data)

    def commit(self) -> str:
        """Move the blob under its digest; return the digest. Idempotent per content."""
        self.file.flush()
        if _fsync_enabled():
            os.fsync(self.file.fileno())
        self.file.close()
        digest = "sha256:" + self.hasher.hexdigest()
        final = self.store.blob_path(digest)
        if final.exists():
            self.temp.unlink(missing_ok=True)
        else:
            os.chmod(self.temp, 0o444)
            os.replace(self.temp, final)
            self.created = True
        self.digest = digest
        return digest

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        self.temp.unlink(missing_ok=True)

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc_type is not None or self.digest is None:
            self.abort()


class Store:
    """An OCI image layout used as modelbuild's local store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs" / "sha256"
        self.ingest_dir = root / "ingest"
        self.partial_dir = root / "partial"  # downloads in progress, resumed by the next pull
        self.index_path = root / "index.json"

    # -- layout -----------------------------------------------------------------------
    def ensure(self) -> "Store":
        """Create the layout if it does not exist yet (safe to race)."""
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "locks").mkdir(exist_ok=True)
        layout = self.root / "oci-layout"
        if not layout.exists():
            _atomic_write(layout, json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        if not self.index_path.exists():
            with self._index_lock():
                if not self.index_path.exists():
                    _atomic_write(self.index_path, _index_bytes([]))
        return self

    # -- blobs ------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        try:
            return self.blobs_dir / hex_of(digest)
        except ValueError as exc:
            raise StoreError(str(exc)) from None

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def put_bytes(self, data: bytes) -> str:
        with self.writer() as w:
            w.write(data)
            return w.commit()

    def read_blob(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is not in the store") from None

    def read_json(self, digest: str) -> Any:
        return json.loads(self.read_blob(digest))

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
        final = self.blob_path(digest)
        if final.exists():
            os.unlink(path)
            return digest, size, False
        if _fsync_enabled():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(path, 0o444)
        os.replace(path, final)
        return digest, size, True

    # -- tags -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        with open(self.root / "index.json.lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def manifests(self) -> list[dict[str, Any]]:
        try:
            return json.loads(self.index_path.read_bytes()).get("manifests", [])
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise StoreError(f"{self.index_path} is damaged: {exc}") from None

    def tags(self) -> dict[str, dict[str, Any]]:
        return {
            m["annotations"][REF_ANNOTATION]: m
            for m in self.manifests()
            if REF_ANNOTATION in m.get("annotations", {})
        }

    def tag(self, ref: str, descriptor: dict[str, Any]) -> bool:
        """Point *ref* at *descriptor*; return False when it already did."""
        with self._index_lock():
            entries = self.manifests()
            kept = [m for m in entries if m.get("annotations", {}).get(REF_ANNOTATION) != ref]
            entry = dict(descriptor)
            entry["annotations"] = {**descriptor.get("annotations", {}), REF_ANNOTATION: ref}
            if len(kept) != len(entries) and entry in entries:
                return False
            kept.append(entry)
            kept.sort(key=lambda m: m["annotations"][REF_ANNOTATION])
            _atomic_write(self.index_path, _index_bytes(kept))
            return True

    def untag(self, ref: str) -> dict[str, Any] | None:
        if ref not in self.tags():
            ref = _normalised(ref)
        with self._index_lock():
            entries = self.manifests()
            gone = [m for m in entries if m.get("annotations", {}).get(REF_ANNOTATION) == ref]
            if not gone:
                return None
            kept = [m for m in entries if m not in gone]
            _atomic_write(self.index_path, _index_bytes(kept))
            return gone[0]

    def resolve(self, ref: str) -> dict[str, Any]:
        """A tag or a manifest digest → its descriptor."""
        if is_digest(ref):
            if not self.has_blob(ref):
                raise NotFoundError(f"{ref} is not in the store")
            data = self.read_blob(ref)
            doc = json.loads(data)
            return {"mediaType": doc.get("mediaType", mt.OCI_MANIFEST), "digest": ref, "size": len(data)}
        tags = self.tags()
        if ref in tags:
            return tags[ref]
        normalised = _normalised(ref)
        if normalised in tags:
            return tags[normalised]
        raise NotFoundError(f"no such model: {ref}", hint="`modelbuild ls` lists what is stored")

    # -- maintenance ------------------------------------------------------------------
    @contextlib.contextmanager
    def gc_lock(self, exclusive: bool) -> Iterator[None]:
        with open(self.root / "gc.lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def all_blobs(self) -> list[str]:
        if not self.blobs_dir.exists():
            return []
        return sorted("sha256:" + p.name for p in self.blobs_dir.iterdir() if len(p.name) == 64)

    def reachable(self) -> set[str]:
        """Every blob reachable from a tag: manifests, indexes, configs, layers."""
        seen: set[str] = set()
        stack = [m["digest"] for m in self.manifests()]
        while stack:
            digest = stack.pop()
            if digest in seen:
                continue
            seen.add(digest)
            try:
                doc = self.read_json(digest)
            except (NotFoundError, ValueError):
                continue
            if "manifests" in doc:
                stack.extend(m["digest"] for m in doc["manifests"])
            if "config" in doc:
                seen.add(doc["config"]["digest"])
            seen.update(layer["digest"] for layer in doc.get("layers", []))
        return seen

    def verify_blob(self, digest: str) -> bool:
        hasher = hashlib.sha256()
        _copy_stream(self.blob_path(digest), hasher.update, None)
        return "sha256:" + hasher.hexdigest() == digest


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
                if exc.errno == errno.ENOSPC:
                    raise BuildError("no space left on device while writing the store") from None
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
        if exc.errno == errno.ENOSPC:
            raise BuildError("no space left on device while writing the store") from None
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
            if _fsync_enabled():
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


atomic_write = _atomic_write
copy_stream = _copy_stream
