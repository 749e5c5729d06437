"""Registry outputs without a second copy: large raw layers go from the build context to the
registry, never into the store (``build --push``, ``build --output type=registry``).

A raw layer *is* its file, so a build whose result goes to a registry need not copy it into
the store first. When such a build keeps nothing else locally (no ``type=local``/``type=oci``
output, no ``--cache-to``, no tag that names no registry: ``modelbuild.build`` decides), the
ops see a :class:`SourceBlobs` on the environment (``ExecEnv.sources``), and:

* the ``digest`` step of a file larger than :data:`STREAM_MIN` that would have been copied
  into the store while it is hashed is uploaded to the first destination while it is hashed
  instead (:meth:`SourceBlobs.ingest`): one read, one hash, the registry checking the digest
  at the end. A file the stat cache knows is not read at all; a file only touched (its inode
  hashed before) is hashed, and read again at push time only if the registry lacks it.
* every file a ``digest`` step saw is recorded (:meth:`SourceBlobs.add`) with the stat it was
  hashed at, so a ``layer``/``layerset`` step may name it as its blob, and a cached layer
  result whose blob is not in the store is still valid when the file this build just found,
  through the stat cache or by hashing it, has that digest (:meth:`SourceBlobs.has`);
* the push reads such a blob from its file (:meth:`SourceBlobs.upload`) only when the
  registry does not have it: the opened file must still have the stat it was hashed at, and
  its bytes are hashed as they are read, so a file changed since its hash fails the upload
  (:class:`SourceChanged`, one line) before the last byte reaches the registry, and before
  any manifest or tag is written.

Files up to :data:`STREAM_MIN` (configs, tokenizers, the model card), archives (directories,
``--layer-format tar…``) and transform outputs still go into the store as in any build: they
are small, or the build made them. What a registry output does with tags is
:func:`modelbuild.build.build`'s: the store is tagged only when the artifact is whole there.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Callable

from modelbuild.errors import BuildError

if TYPE_CHECKING:
    from modelbuild.oci.registry import Registry
    from modelbuild.oci.upload import Blob

# Files up to this size are copied into the store as usual: what inspect, run's memory
# estimate and a runtime description read (config.json) must be local, and a few MiB of
# small files are nothing next to the weights. The largest blob read into memory (MAX_JSON).
STREAM_MIN = 4 << 20

READ_AHEAD = 1 << 20
Progress = Callable[[int], None]
StatKey = tuple[int, int, int, int]


class SourceChanged(BuildError):
    """A file streamed to a registry is not what its digest says any more."""


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file of the build context whose content digest this build established."""

    rel: str  # its path in the context, for messages
    path: str
    st: os.stat_result  # its stat when its digest was found

    @property
    def size(self) -> int:
        return self.st.st_size

    @property
    def key(self) -> StatKey:
        return stat_key(self.st)


class SourceBlobs:
    """The large raw layers of a registry-output build, by digest: where each lies and the
    stat it was hashed at; and what was uploaded while hashing (to *registry*/*repo*, the
    first destination). Thread-safe: digest steps run in parallel."""

    def __init__(self, registry: Registry, repo: str, cache: Any = None) -> None:
        self.registry, self.repo = registry, repo
        self.cache = cache  # the stat cache (BuildCache), corrected when a file changed under an unchanged stat
        self._files: dict[str, SourceFile] = {}
        self.sent: dict[str, int] = {}  # digest → size: uploaded to registry/repo while hashed
        self._lock = threading.Lock()

    @staticmethod
    def streams(size: int) -> bool:
        """Whether a file of *size* bytes is streamed rather than copied into the store."""
        return size > STREAM_MIN

    def add(self, digest: str, rel: str, path: str, st: os.stat_result) -> None:
        """Record that the file at *path*, at stat *st*, has *digest* (small files are not
        recorded: they are in the store)."""
        if self.streams(st.st_size):
            with self._lock:
                self._files.setdefault(digest, SourceFile(rel, path, st))

    def has(self, digest: str, size: int) -> bool:
        """Whether this build found a file of the context with *digest* and *size*."""
        found = self._files.get(digest)
        return found is not None and found.size == size

    def ingest(self, rel: str, path: str, st: os.stat_result, progress: Progress | None = None) -> str:
        """Hash a file while uploading it to the first destination; its digest. The registry
        checks the digest when the upload completes; the caller checks the stat afterwards."""
        hashing = _Hashing(rel, path, st.st_size)
        opener = _opener(path, stat_key(st), hashing,
                         f"{rel} changed while it was being read; build again once it is written")
        digest = self.registry.push_blob_hashing(self.repo, st.st_size, opener, hashing.result, label=rel,
                                                 progress=progress)
        with self._lock:
            self.sent[digest] = st.st_size
        return digest

    def upload(self, registry: Registry, repo: str, blob: Blob, *, mount_from: str | None = None,
               progress: Progress | None = None) -> bool:
        """Push a recorded file as the blob *blob* unless *repo* has it (HEAD) or can mount
        it; True when bytes were sent. The file opened must have the stat it was hashed at,
        and its bytes must hash to the digest, checked as they are read."""
        found = self._files[blob.digest]
        hashing = _Hashing(found.rel, found.path, found.size, expected=blob.digest)
        changed = f"{found.rel} changed since the build hashed it; build again once it is written"
        try:
            return registry.push_blob(repo, blob.digest, blob.size, _opener(found.path, found.key, hashing, changed),
                                      mount_from=mount_from, progress=progress)
        except SourceChanged:
            self._forget(found, hashing)
            raise

    def _forget(self, found: SourceFile, hashing: _Hashing) -> None:
        """A file whose bytes changed under the stat it was hashed at (its mtime put back):
        the stat cache learns the digest of what it holds now, so the next build pushes that."""
        from modelbuild.ops.files import RACY_WINDOW_NS

        now = hashing.actual
        if self.cache is not None and now is not None and time.time_ns() - found.st.st_mtime_ns > RACY_WINDOW_NS:
            try:
                if stat_key(os.stat(found.path)) == found.key:
                    self.cache.set_file_digest(found.st, now)
            except OSError:
                pass


# -- hashing what an upload reads ----------------------------------------------------------
class _Hashing:
    """The sha256 of a file, fed by the reads of one blob's upload.

    An upload reads the file in order, but may go back: a chunk is re-sent after a dropped
    connection, or the upload starts over. Bytes are hashed the first time they are read
    (a re-sent chunk is checked by the registry, which verifies the digest at the end); a
    read from the first byte after others starts the hash over, so a restarted upload is
    checked whole. Bytes the upload skips (a registry claiming to have more than it was
    sent) are read here, so the digest is always of the whole file."""

    def __init__(self, rel: str, path: str, size: int, expected: str | None = None) -> None:
        self.rel, self.path, self.size, self.expected = rel, path, size, expected
        self._hasher = hashlib.sha256()
        self._done = 0
        self._digest: str | None = None
        self.actual: str | None = None  # the digest found when it was not the one expected

    def feed(self, offset: int, data: bytes) -> None:
        if offset == 0 and self._done:
            self._hasher, self._done, self._digest = hashlib.sha256(), 0, None
        if offset > self._done:
            self._fill(offset)
        end = min(offset + len(data), self.size)  # a file grown since its stat: checked by the caller
        if end > self._done:
            self._hasher.update(memoryview(data)[self._done - offset:end - offset])
            self._done = end
            if self._done >= self.size:
                self._finish()

    def result(self) -> str:
        """The digest of the whole file (reading what no upload read)."""
        if self._digest is None:
            self._fill(self.size)
            self._finish()
        assert self._digest is not None
        return self._digest

    def _fill(self, until: int) -> None:
        with open(self.path, "rb") as fh:
            fh.seek(self._done)
            while self._done < until:
                data = fh.read(min(1 << 20, until - self._done))
                if not data:
                    raise SourceChanged(f"{self.rel} got shorter while it was being read; build again once it is "
                                        "written")
                self._hasher.update(data)
                self._done += len(data)

    def _finish(self) -> None:
        self._digest = "sha256:" + self._hasher.hexdigest()
        if self.expected is not None and self._digest != self.expected:
            self.actual = self._digest
            raise SourceChanged(f"{self.rel} changed since the build hashed it (it was {self.expected}, it is "
                                f"{self._digest} now); build again once it is written")


class _HashedFile:
    """A source file opened for one request body: what is read is hashed. It reads ahead in
    blocks of :data:`READ_AHEAD` (the HTTP client asks for 16 KiB at a time), so the hash is
    updated a few times per MiB rather than 64, and hands out views of the block."""

    def __init__(self, fh: BinaryIO, hashing: _Hashing) -> None:
        self.fh, self.hashing = fh, hashing
        self.base = 0  # the file offset of the block
        self.block = memoryview(b"")
        self.used = 0  # of the block, handed out

    def seek(self, offset: int, whence: int = 0) -> int:
        self.base = self.fh.seek(offset, whence)
        self.block, self.used = memoryview(b""), 0
        return self.base

    def read(self, n: int = -1) -> memoryview:
        if self.used >= len(self.block):
            self.base += len(self.block)
            data = self.fh.read(max(n, READ_AHEAD) if n is not None and n >= 0 else -1)
            if n and not data:
                self.fh.close()
                raise SourceChanged(f"{self.hashing.rel} got shorter while it was being read; build again once it "
                                    "is written")
            self.hashing.feed(self.base, data)
            self.block, self.used = memoryview(data), 0
        end = len(self.block) if n is None or n < 0 else min(len(self.block), self.used + n)
        out = self.block[self.used:end]
        self.used = end
        return out

    def close(self) -> None:
        self.fh.close()


def _opener(path: str, key: StatKey, hashing: _Hashing, changed: str) -> Callable[[], _HashedFile]:
    """What an upload calls for each request body: the file, checked to be the one hashed."""

    def open_it() -> _HashedFile:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the request body once read
        except FileNotFoundError:
            raise SourceChanged(f"{hashing.rel} vanished during the build") from None
        except OSError as exc:
            raise BuildError(f"cannot read {hashing.rel}: {exc.strerror}") from None
        if stat_key(os.fstat(fh.fileno())) != key:
            fh.close()
            raise SourceChanged(changed)
        return _HashedFile(fh, hashing)

    return open_it


__all__ = ["STREAM_MIN", "SourceBlobs", "SourceChanged", "SourceFile"]
