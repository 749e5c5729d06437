"""Copying a file into another, hashing the copy as it is made: the one fast copy.

The store's ingest (:meth:`modelbuild.store.Store.ingest_file`) and the verified copy of a
blob (:func:`modelbuild.oci.verify.copy_verified`) both copy with :func:`kernel_copy`, which
picks the cheapest way this file system allows, best first:

* a **reflink** (``FICLONE``) where the file system shares extents (btrfs, XFS with reflink,
  bcachefs, ZFS with block cloning): no data written, the clone read back and hashed;
* where the copy will be ``fsync``'d, an **O_DIRECT write** of each chunk from the buffer it
  was read and hashed in (:class:`_DirectCopy`): every byte crosses memory once, the page
  cache keeps no second copy, and the ``fsync`` finds nothing left to write. On a 2-core VM,
  with the copies kept as a store keeps its blobs, this is 3× faster than the kernel's copy
  and under a ``copy_file_range`` + ``fsync`` that hashes nothing; where the copies' pages
  are reused warm, the two are even (``benchmarks/ingest.py``, docs/benchmarks.md);
* the kernel's **copy_file_range** in a helper thread, a few chunks ahead of a read back
  that hashes the copy (:class:`_Pipeline`);
* else None: the caller streams through Python.

In every case the sink is fed the bytes that are in the copy, not the source's bytes at some
other moment: a source rewritten during the copy cannot give the copy a name that lies.
"""

from __future__ import annotations

import errno
import functools
import mmap
import os
import queue
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any

from modelbuild.digests import CHUNK
from modelbuild.errors import BuildError

Progress = Callable[[int], None]
Sink = Callable[[memoryview], Any]
_KERNEL_CHUNK = 16 << 20  # one copy_file_range call: the unit the read back follows
_AHEAD = 4  # chunks the copy may run ahead of the read back (they stay hot in the page cache)
# errors that mean "the kernel cannot do this for these files", raised before anything is written
_CANNOT = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTTY)
FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h: make a file a reflink of another
FICLONERANGE = 0x4020940D  # _IOW(0x94, 13, struct file_clone_range): the same, for a range
_DIRECT_MIN = 32 << 20  # smaller copies gain nothing from O_DIRECT: the kernel's copy does them
_DIRECT_CHUNK = 8 << 20  # one O_DIRECT write: a multiple of every block size O_DIRECT asks for
_DIRECT_BUFFERS = 3  # chunks in flight per copy: one read and hashed, up to two being written
_ALIGN = 4096  # O_DIRECT's alignment of memory, offset and length (the page size; any block size up to it)


def kernel_copy(src_fd: int, dst_fd: int, sink: Sink, *, size: int | None = None,
                progress: Progress | None = None, failed: Callable[[OSError], Exception], short: str,
                writeback: bool = False) -> int | None:
    """Copy *src_fd* into the empty *dst_fd* (both from offset 0), feeding *sink* every byte
    that is in the *copy*: what *sink* hashes is what was written, even if the source
    changes meanwhile. At most *size* bytes (None: to the source's end).

    The cheapest way the file system allows (this module's docstring): a reflink, read back;
    with *writeback* (the caller will ``fsync``) and a large file, O_DIRECT writes of the
    buffers *sink* was fed; else ``copy_file_range`` in a helper thread a few chunks ahead
    of the read back, so copying and hashing overlap, each copied chunk's write-back started
    at once with *writeback*, so the final ``fsync`` has little left to wait for.

    Returns the bytes copied, *dst_fd* positioned after them; or None, having written
    nothing, where the kernel can do none of these (another file system, an old kernel): the
    caller then streams. A failing copy raises *failed(exc)*; a short read back, a
    :class:`BuildError` saying *short*.
    """
    if size == 0 or not hasattr(os, "copy_file_range"):
        return 0 if size == 0 else None
    cloned = reflink(src_fd, dst_fd, size, failed=failed)
    if cloned is not None:  # the clone's pages are not cached yet: read it back from the disk, ahead
        os.posix_fadvise(dst_fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        _read_back(dst_fd, 0, cloned, sink, progress, short)
        os.lseek(dst_fd, cloned, os.SEEK_SET)
        return cloned
    if writeback and _large(src_fd, size):
        copied = _direct_copy(src_fd, dst_fd, size, sink, progress, failed)
        if copied is not None:
            os.lseek(dst_fd, copied, os.SEEK_SET)
            return copied
    want = _KERNEL_CHUNK if size is None else min(_KERNEL_CHUNK, size)
    try:  # the first chunk here: a kernel that cannot copy these files says so now, nothing written
        first = os.copy_file_range(src_fd, dst_fd, want, 0, 0)
    except OSError as exc:
        if exc.errno in _CANNOT:
            return None
        raise failed(exc) from None
    if writeback and first:
        _start_writeback(dst_fd, 0, first)
    if first == 0 or first == size:
        end = first
        _read_back(dst_fd, 0, end, sink, progress, short)
    else:
        end = _Pipeline(src_fd, dst_fd, first, size, failed, writeback).run(sink, progress, short)
    os.lseek(dst_fd, end, os.SEEK_SET)
    return end


def reflink(src_fd: int, dst_fd: int, size: int | None = None, *,
            failed: Callable[[OSError], Exception] = lambda exc: exc) -> int | None:
    """Make the empty *dst_fd* a reflink of *src_fd* (whole, or exactly its first *size*
    bytes): the bytes it holds then, sharing the source's extents; or None, *dst_fd* left
    empty, where the file system cannot (``EOPNOTSUPP``: ext4, tmpfs; ``EXDEV``: another
    file system). Any other failure raises *failed(exc)*."""
    if not sys.platform.startswith("linux"):
        return None
    import fcntl

    try:
        if size is None:
            fcntl.ioctl(dst_fd, FICLONE, src_fd)
        else:  # exactly *size* bytes: a longer source (a lying descriptor) is not cloned (EINVAL)
            fcntl.ioctl(dst_fd, FICLONERANGE, struct.pack("=qQQQ", src_fd, 0, size, 0))
    except OSError as exc:
        if exc.errno in _CANNOT or exc.errno == errno.EAGAIN:  # ZFS: a block not yet synced
            if os.fstat(dst_fd).st_size:  # a file system that gave up half-way leaves nothing either
                os.ftruncate(dst_fd, 0)
            return None
        raise failed(exc) from None
    return os.fstat(dst_fd).st_size


def _read_back(dst_fd: int, offset: int, end: int, sink: Sink, progress: Progress | None,
               short: str, buf: memoryview | None = None) -> None:
    """Feed *sink* the bytes *offset* to *end* of *dst_fd*, read back from it."""
    view = buf if buf is not None else memoryview(bytearray(CHUNK))
    while offset < end:
        got = os.preadv(dst_fd, [view[: min(len(view), end - offset)]], offset)
        if got <= 0:
            raise BuildError(short)
        sink(view[:got])
        offset += got
        if progress is not None:
            progress(got)


class _Pipeline:
    """``copy_file_range`` in a helper thread, at most :data:`_AHEAD` chunks ahead of the
    caller's thread, which reads each copied chunk back from the copy and feeds it to the
    sink. ``copy_file_range``, ``preadv`` and hashlib's ``update`` of a large buffer all
    release the GIL, so the copy and the hash of one file run on two cores."""

    def __init__(self, src_fd: int, dst_fd: int, copied: int, size: int | None,
                 failed: Callable[[OSError], Exception], writeback: bool) -> None:
        self.src_fd, self.dst_fd, self.size, self.failed, self.writeback = src_fd, dst_fd, size, failed, writeback
        self.copied = copied  # bytes in the copy so far
        self.consumed = 0  # bytes read back so far
        self.finished = False  # the copier is done (at the end, or by an error)
        self.stop = False  # the reader gave up: the copier stops
        self.error: BaseException | None = None
        self.cond = threading.Condition()

    def run(self, sink: Sink, progress: Progress | None, short: str) -> int:
        copier = threading.Thread(target=self._copy, name="kernel-copy", daemon=True)
        copier.start()
        view = memoryview(bytearray(CHUNK))
        offset = 0
        try:
            while True:
                with self.cond:
                    while self.copied <= offset and not self.finished:
                        self.cond.wait()
                    end, finished, error = self.copied, self.finished, self.error
                if error is not None:
                    raise error
                if offset >= end and finished:
                    return offset
                _read_back(self.dst_fd, offset, end, sink, progress, short, view)
                offset = end
                with self.cond:
                    self.consumed = offset
                    self.cond.notify_all()
        finally:
            with self.cond:
                self.stop = True
                self.cond.notify_all()
            copier.join()

    def _copy(self) -> None:
        offset = self.copied
        try:
            while self.size is None or offset < self.size:
                with self.cond:
                    while offset - self.consumed >= _AHEAD * _KERNEL_CHUNK and not self.stop:
                        self.cond.wait()
                    if self.stop:
                        return
                want = _KERNEL_CHUNK if self.size is None else min(_KERNEL_CHUNK, self.size - offset)
                try:
                    n = os.copy_file_range(self.src_fd, self.dst_fd, want, offset, offset)
                except OSError as exc:
                    raise self.failed(exc) from None
                if n == 0:
                    return
                if self.writeback:
                    _start_writeback(self.dst_fd, offset, n)
                offset += n
                with self.cond:
                    self.copied = offset
                    self.cond.notify_all()
        except BaseException as exc:  # handed to the reader, which raises it
            self.error = exc
        finally:
            with self.cond:
                self.finished = True
                self.cond.notify_all()


def _large(src_fd: int, size: int | None) -> bool:
    """Whether a copy of *size* bytes (None: the whole source) is worth O_DIRECT."""
    if size is None:
        try:
            size = os.fstat(src_fd).st_size
        except OSError:
            return False
    return size >= _DIRECT_MIN


def _direct_copy(src_fd: int, dst_fd: int, size: int | None, sink: Sink, progress: Progress | None,
                 failed: Callable[[OSError], Exception]) -> int | None:
    """:class:`_DirectCopy` with ``O_DIRECT`` set on *dst_fd* for the copy, and cleared
    after it; None, having written nothing, where the file system refuses ``O_DIRECT`` or
    its buffers cannot be had."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return None
    import fcntl

    flags = fcntl.fcntl(dst_fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(dst_fd, fcntl.F_SETFL, flags | direct)
    except OSError:  # EINVAL: this file system has no O_DIRECT
        return None
    try:
        try:
            copy = _DirectCopy(src_fd, dst_fd, size, failed)
        except OSError:  # ENOMEM for its buffers (a tight RLIMIT_AS): nothing written yet
            return None
        return copy.run(sink, progress)
    finally:
        fcntl.fcntl(dst_fd, fcntl.F_SETFL, flags)


class _DirectCopy:
    """Read the source into page-aligned buffers in the caller's thread, feed each to the
    sink, and write it to the destination with ``O_DIRECT`` in a helper thread while the
    next one is read and hashed.

    Why: ``copy_file_range`` + a read back costs two memory copies per byte, the page cache
    a second copy of the file (evicting the source's), and the ``fsync`` a wait for the
    write-back of all of it; on a small machine the copies alone use a core. Here each byte
    is copied once (the read), hashed from that buffer, and goes to the disk by DMA from it:
    the hashed bytes are the written bytes. The last chunk is padded to :data:`_ALIGN` and
    the file cut back to its size.

    The first chunk is written in the caller's thread before it is fed to the sink, so a
    file system or device that refuses this alignment (``EINVAL``) is found with nothing
    written and nothing hashed: :meth:`run` then returns None and the kernel's copy takes over.
    """

    def __init__(self, src_fd: int, dst_fd: int, size: int | None, failed: Callable[[OSError], Exception]) -> None:
        self.src_fd, self.dst_fd, self.size, self.failed = src_fd, dst_fd, size, failed
        self.views = [memoryview(mmap.mmap(-1, _DIRECT_CHUNK)) for _ in range(_DIRECT_BUFFERS)]
        self.free: queue.Queue[memoryview] = queue.Queue()
        self.full: queue.Queue[tuple[memoryview, int, int] | None] = queue.Queue()
        self.error: BaseException | None = None  # the writer's, raised in the caller's thread

    def run(self, sink: Sink, progress: Progress | None) -> int | None:
        first = self.views[0]
        n = self._fill(first, 0)
        if n == 0:
            return 0
        try:
            self._write(first, 0, n)
        except OSError as exc:
            if exc.errno == errno.EINVAL and os.fstat(self.dst_fd).st_size == 0:
                return None
            raise self.failed(exc) from None
        self._feed(sink, progress, first, n)
        offset = n
        if n == self._want(0):
            offset = self._pipeline(sink, progress, offset)
        if offset % _ALIGN:  # the last write was padded
            try:
                os.ftruncate(self.dst_fd, offset)
            except OSError as exc:
                raise self.failed(exc) from None
        return offset

    def _pipeline(self, sink: Sink, progress: Progress | None, offset: int) -> int:
        """Chunks after the first: read and fed here, written by the helper thread."""
        for view in self.views:
            self.free.put(view)
        writer = threading.Thread(target=self._writer, name="direct-write", daemon=True)
        writer.start()
        try:
            while self.size is None or offset < self.size:
                view = self.free.get()
                if self.error is not None:
                    break
                want = self._want(offset)
                n = self._fill(view, offset)
                if n == 0:
                    break
                self._feed(sink, progress, view, n)
                self.full.put((view, offset, n))
                offset += n
                if n < want:
                    break
        finally:
            self.full.put(None)
            writer.join()
        if self.error is not None:
            raise self.error
        return offset

    def _want(self, offset: int) -> int:
        return _DIRECT_CHUNK if self.size is None else min(_DIRECT_CHUNK, self.size - offset)

    def _fill(self, view: memoryview, offset: int) -> int:
        """Read the chunk at *offset* into *view*: all of it, unless the source ends first
        (a short read mid-file would leave the next write unaligned)."""
        want, got = self._want(offset), 0
        try:
            while got < want:
                n = os.preadv(self.src_fd, [view[got:want]], offset + got)
                if n == 0:
                    break
                got += n
        except OSError as exc:
            raise self.failed(exc) from None
        return got

    @staticmethod
    def _feed(sink: Sink, progress: Progress | None, view: memoryview, n: int) -> None:
        sink(view[:n])
        if progress is not None:
            progress(n)

    def _write(self, view: memoryview, offset: int, n: int) -> None:
        """Write *n* bytes of *view* at *offset*, the length padded with zeros to :data:`_ALIGN`."""
        end = -(-n // _ALIGN) * _ALIGN
        if end > n:
            view[n:end] = bytes(end - n)
        done = 0
        while done < end:
            written = os.pwritev(self.dst_fd, [view[done:end]], offset + done)
            if written <= 0:
                raise OSError(errno.EIO, "the write made no progress")
            done += written

    def _writer(self) -> None:
        """The helper thread: write each chunk handed over, then hand its buffer back. After
        an error, it writes nothing more but still hands the buffers back, so the reader,
        which checks :attr:`error` after each, never waits for ever."""
        while (item := self.full.get()) is not None:
            view, offset, n = item
            if self.error is None:
                try:
                    self._write(view, offset, n)
                except OSError as exc:
                    self.error = self.failed(exc)
                except BaseException as exc:  # handed to the reader, which raises it
                    self.error = exc
            self.free.put(view)


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing *fd*'s dirty pages in this range to disk, without waiting for it
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``): a later ``fsync`` then has little left to
    do. Best effort: where the call is missing, or fails, the ``fsync`` does it all."""
    call = _sync_file_range()
    if call is not None:
        call(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE; an error changes nothing that fsync will not do


@functools.lru_cache(maxsize=1)
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    func.restype = ctypes.c_int
    return func
