"""The store's ingest path: a file copied into the store and hashed from the copy.

* Where the file system shares extents (XFS made with ``reflink=1``, btrfs), ingest is a
  reflink (``FICLONE``): proved on a real file system the test makes and loop-mounts (as
  root), by ``filefrag`` reporting the blob's extents shared and by free space that does not
  drop by the file's size; the digest names the stored bytes. A whole build there shares the
  weights' extents too, and so does a verified copy out of the store.
* Where it cannot (tmpfs refuses ``FICLONE``; another file system is ``EXDEV``), ingest falls
  back to the kernel's copy, or a stream, and a clone refused half-way leaves nothing behind.
* Where the copy will be fsync'd, a large file is written with O_DIRECT from the buffers it
  was read and hashed in: every size around the chunk and block boundaries comes out whole,
  under the name of the bytes written, with the destination's flags restored; a file system
  without O_DIRECT (ramfs), or one that refuses the first write, gets the kernel's copy
  with nothing written or hashed twice; a failure in either thread is one line.
* The kernel's copy runs in a helper thread a few chunks ahead of the hash, which reads each
  chunk back from the copy: a source rewritten during the copy cannot give a blob a name that
  lies, and a failure in either thread (a full disk is one line) leaves no thread and no
  temp file. With fsync on, each copied chunk's write-back starts at once.

Mounting needs root (CI runs as root); the loop-mounted file systems need ``mkfs.xfs``
(xfsprogs) and ``mkfs.btrfs`` (btrfs-progs). Without them the tests skip, and fail under CI.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest

from support import missing, require_tool, safetensors_blob, write_model_dir

import modelbuild.oci.filecopy as filecopy
from modelbuild.errors import BuildError, StoreError
from modelbuild.oci.filecopy import FICLONE, kernel_copy
from modelbuild.oci.verify import IntegrityError, copy_verified
from modelbuild.store import Store

KiB, MiB = 1 << 10, 1 << 20
MKFS = {"xfs": (["mkfs.xfs", "-q", "-m", "reflink=1"], "xfsprogs"), "btrfs": (["mkfs.btrfs", "-q"], "btrfs-progs")}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- file systems made for the test -----------------------------------------------------------
@pytest.fixture
def mounts(tmp_path):
    """``mounts.tmpfs(name, size)``, ``mounts.ramfs(name)``, ``mounts.loop(kind)`` (``xfs`` with reflink, ``btrfs``) and
    ``mounts.bind(name, source)``: a file system mounted under *tmp_path*, unmounted after."""
    mounted: list[Path] = []

    def mount(name: str, *args: str) -> Path:
        if os.geteuid() != 0:
            missing("mounting a file system needs root")
        path = tmp_path / name
        path.mkdir()
        proc = subprocess.run(["mount", *args, str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            missing(f"cannot mount {' '.join(args)} here: {proc.stderr.strip()}")
        mounted.append(path)
        return path

    class Mounts:
        @staticmethod
        def tmpfs(name: str, size: str = "64m") -> Path:
            return mount(name, "-t", "tmpfs", "-o", f"size={size}", "tmpfs")

        @staticmethod
        def ramfs(name: str) -> Path:  # a file system without O_DIRECT (EINVAL)
            return mount(name, "-t", "ramfs", "ramfs")

        @staticmethod
        def bind(name: str, source: Path) -> Path:
            return mount(name, "--bind", str(source))

        @staticmethod
        def loop(kind: str) -> Path:
            command, package = MKFS[kind]
            mkfs = require_tool(command[0], f"apt-get install -y {package}")
            image = tmp_path / f"{kind}.img"
            with open(image, "wb") as fh:
                fh.truncate(300 * MiB)  # sparse; mkfs.xfs wants at least 300 MB
            proc = subprocess.run([mkfs, *command[1:], str(image)], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            return mount(kind, "-o", "loop", str(image))

    yield Mounts()
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def free_bytes(path: Path) -> int:
    os.sync()
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def extent_flags(path: Path) -> list[str]:
    """The flags ``filefrag -v`` reports for each extent of *path* (``shared`` for a reflink)."""
    filefrag = require_tool("filefrag", "apt-get install -y e2fsprogs")
    out = subprocess.run([filefrag, "-v", str(path)], capture_output=True, text=True, check=True).stdout
    rows = [line.split(":", 1)[1] for line in out.splitlines() if line.strip()[:1].isdigit() and ".." in line]
    return [row.split()[-1] if row.split()[-1][0].isalpha() else "" for row in rows]


def assert_shared(path: Path) -> None:
    """Every extent of *path* is shared with another file (and it has some)."""
    flags = extent_flags(path)
    assert flags and all("shared" in f.split(",") for f in flags), (path, flags)


@pytest.fixture
def ioctls(monkeypatch):
    """Every ``fcntl.ioctl`` request made, with the errno it failed with (None: it worked)."""
    seen: list[tuple[int, int | None]] = []
    real = fcntl.ioctl

    def spy(fd, request, arg=0, *rest):  # noqa: ANN001
        try:
            result = real(fd, request, arg, *rest)
        except OSError as exc:
            seen.append((request, exc.errno))
            raise
        seen.append((request, None))
        return result

    monkeypatch.setattr(fcntl, "ioctl", spy)
    return seen


# -- reflink ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["xfs", "btrfs"])
def test_ingest_on_a_reflink_file_system_shares_the_extents_and_names_the_clone(mounts, ioctls, kind):
    root = mounts.loop(kind)
    data = os.urandom(24 * MiB) + b"a tail that is not a whole block"
    src = root / "model.safetensors"
    src.write_bytes(data)
    store = Store(root / "store").ensure()
    before = free_bytes(root)
    progress: list[int] = []

    digest, size, created = store.ingest_file(src, progress.append)

    assert (digest, size, created) == (sha(data), len(data), True)
    assert ioctls == [(FICLONE, None)]
    assert sum(progress) == len(data)  # the clone is read back and hashed
    blob = store.blob_path(digest)
    assert blob.read_bytes() == data and store.verify_blob(digest)
    assert_shared(blob)
    assert before - free_bytes(root) < len(data) // 4  # a copy would have taken 24 MiB more

    # a verified copy out of the store (an --output layout, `run`'s files) is a clone too:
    # FICLONERANGE of exactly the declared size
    out = root / "copy"
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        copy_verified(blob, fd, digest, size)
    finally:
        os.close(fd)
    assert ioctls[-1] == (filecopy.FICLONERANGE, None)
    assert out.read_bytes() == data
    assert_shared(out)


def test_copy_verified_refuses_a_clone_source_longer_than_declared(mounts):
    root = mounts.loop("xfs")
    data = os.urandom(MiB + 100)
    src = root / "blob"
    src.write_bytes(data)
    declared = len(data) - 100  # a lying descriptor: the file has 100 more bytes
    fd = os.open(root / "out", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with pytest.raises(IntegrityError, match="holds more than"):
            copy_verified(src, fd, sha(data[:declared]), declared)
        assert os.fstat(fd).st_size <= declared  # never more than declared was put there
    finally:
        os.close(fd)


def test_a_build_on_a_reflink_file_system_stores_its_weights_without_copying_them(mounts, build):
    root = mounts.loop("xfs")
    weights = safetensors_blob(os.urandom(16 * MiB))
    ctx = write_model_dir(root / "ctx", {"config.json": '{"model_type": "llama"}', "model.safetensors": weights})
    before = free_bytes(root)
    build(ctx, "NAME shared\nCONFIG config.json\nMODEL model.safetensors\n",
          env={"MODELBUILD_HOME": str(root / "home")})
    blob = root / "home" / "store" / "blobs" / "sha256" / hashlib.sha256(weights).hexdigest()
    assert blob.read_bytes() == weights
    assert_shared(blob)
    assert_shared(ctx / "model.safetensors")
    assert before - free_bytes(root) < len(weights) // 4


def test_a_layout_on_another_mount_of_the_file_system_gets_reflinks(mounts, ioctls):
    """A hard link cannot cross mounts, even of one file system; a reflink can (Linux 5.18+):
    ``--output type=oci`` into a bind mount (or another btrfs subvolume) shares extents."""
    root = mounts.loop("xfs")
    (root / "elsewhere").mkdir()
    other = mounts.bind("bound", root / "elsewhere")
    store = Store(root / "store").ensure()
    data = os.urandom(8 * MiB)
    digest = store.put_bytes(data)
    layout = Store(other / "layout", owned=False).ensure()
    assert layout.link_from(store, digest, len(data))
    copied = layout.blob_path(digest)
    assert copied.read_bytes() == data and os.stat(copied).st_ino != os.stat(store.blob_path(digest)).st_ino
    assert (filecopy.FICLONERANGE, None) in ioctls
    assert_shared(copied)


# -- where the file system cannot clone ------------------------------------------------------
def test_where_the_file_system_refuses_a_clone_ingest_copies_and_hashes_the_copy(mounts, ioctls):
    root = mounts.tmpfs("plain", "128m")  # tmpfs has no reflink: FICLONE fails with EOPNOTSUPP
    data = os.urandom(40 * MiB + 7)  # more than two kernel-copy chunks: the pipelined copy
    src = root / "model.safetensors"
    src.write_bytes(data)
    store = Store(root / "store").ensure()
    before = free_bytes(root)
    progress: list[int] = []

    digest, size, created = store.ingest_file(src, progress.append)

    assert ioctls == [(FICLONE, errno.EOPNOTSUPP)]
    assert (digest, size, created) == (sha(data), len(data), True) and sum(progress) == len(data)
    assert store.blob_path(digest).read_bytes() == data
    assert before - free_bytes(root) >= len(data)  # a real copy
    assert list(store.ingest_dir.iterdir()) == []


def test_across_file_systems_ingest_streams(mounts, ioctls):
    src = mounts.tmpfs("source") / "model.safetensors"
    data = os.urandom(3 * MiB + 1)
    src.write_bytes(data)
    store = Store(mounts.tmpfs("store") / "store").ensure()
    assert store.ingest_file(src) == (sha(data), len(data), True)
    assert ioctls == [(FICLONE, errno.EXDEV)]  # and copy_file_range: EXDEV too, so a stream
    assert list(store.ingest_dir.iterdir()) == []


def test_a_clone_given_up_half_way_leaves_nothing_behind(mounts, monkeypatch):
    """OpenZFS may clone some blocks, then refuse one not yet synced (EAGAIN): the copy that
    follows starts from an empty file."""
    root = mounts.tmpfs("zfs-like")
    data = os.urandom(5 * MiB)
    src = root / "model.safetensors"
    src.write_bytes(data)

    def half_clone(fd, request, arg=0, *rest):  # noqa: ANN001
        os.pwrite(fd, b"\xff" * (7 * MiB), 0)  # what a partial clone left: longer than the source
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(fcntl, "ioctl", half_clone)
    store = Store(root / "store").ensure()
    digest, size, _ = store.ingest_file(src)
    assert (digest, size) == (sha(data), len(data)) and store.blob_path(digest).read_bytes() == data


# -- the pipelined copy -------------------------------------------------------------------------
@pytest.fixture
def small_chunks(monkeypatch):
    """Kernel-copy chunks of 64 KiB, so that a file of a few MiB has many and the copier
    thread does most of the copying."""
    monkeypatch.setattr(filecopy, "_KERNEL_CHUNK", 64 * KiB)


@pytest.mark.parametrize("way, call", [("small_chunks", "copy_file_range"), ("direct_writes", "preadv")],
                         ids=["kernel-copy", "o-direct"])
def test_a_source_rewritten_during_the_copy_cannot_make_a_blob_whose_name_lies(mounts, monkeypatch, request, way,
                                                                               call):
    """The source is rewritten after the third chunk has been copied (the kernel's copy) or
    read (O_DIRECT): what was copied already, and what was not yet."""
    direct_writes = request.getfixturevalue(way)
    root = mounts.tmpfs("racy")
    src = root / "model.safetensors"
    src.write_bytes(os.urandom(4 * MiB))
    real = getattr(os, call)
    calls = []

    def then_rewrite(*args):  # noqa: ANN002
        n = real(*args)
        calls.append(n)
        if len(calls) == 3:
            with open(src, "r+b") as fh:
                fh.write(b"\0" * (256 * KiB))
                fh.seek(3 * MiB)
                fh.write(b"\1" * (256 * KiB))
        return n

    monkeypatch.setattr(os, call, then_rewrite)
    store = Store(root / "store").ensure()
    digest, size, _ = store.ingest_file(src)
    stored = store.blob_path(digest).read_bytes()
    assert len(calls) > 3 and size == len(stored) == 4 * MiB
    assert digest == sha(stored)  # the name is the stored bytes' ...
    assert stored[:256 * KiB] != b"\0" * (256 * KiB) and stored[3 * MiB:3 * MiB + 16] == b"\1" * 16  # ... a mix
    assert digest != sha(src.read_bytes())
    if way == "direct_writes":
        assert direct_writes  # through O_DIRECT


def test_a_failing_sink_stops_the_copier_thread(mounts, small_chunks):
    root = mounts.tmpfs("sink")
    src = root / "src"
    src.write_bytes(os.urandom(4 * MiB))
    seen = 0

    def sink(view: memoryview) -> None:
        nonlocal seen
        seen += len(view)
        if seen > MiB:
            raise IntegrityError("refused")

    with open(src, "rb") as s, open(root / "dst", "w+b") as d:
        with pytest.raises(IntegrityError, match="refused"):
            kernel_copy(s.fileno(), d.fileno(), sink, failed=lambda exc: exc, short="short")
    assert not [t for t in threading.enumerate() if t.name == "kernel-copy"]
    assert os.path.getsize(root / "dst") <= MiB + (filecopy._AHEAD + 1) * filecopy._KERNEL_CHUNK  # it stopped


@pytest.mark.parametrize("way, thread", [("small_chunks", "kernel-copy"), ("direct_writes", "direct-write")],
                         ids=["kernel-copy", "o-direct"])
def test_a_disk_filling_during_the_copy_is_one_line_and_leaves_no_temp_file(mounts, request, way, thread):
    direct_writes = request.getfixturevalue(way)
    root = mounts.tmpfs("full", size="1m")
    src = root / "model.safetensors"
    src.write_bytes(os.urandom(640 * KiB))  # fits once, not twice
    store = Store(root / "store").ensure()
    with pytest.raises(StoreError) as info:
        store.ingest_file(src)
    assert "no space left on device" in str(info.value) and "\n" not in str(info.value)
    assert str(store.ingest_dir) in str(info.value)
    assert list(store.ingest_dir.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name == thread]
    if way == "direct_writes":
        assert direct_writes  # it failed in the O_DIRECT writes


def test_a_source_that_vanishes_is_a_build_error(tmp_path):
    store = Store(tmp_path / "store").ensure()
    with pytest.raises(BuildError, match="cannot read"):
        store.ingest_file(tmp_path / "gone")
    assert list(store.ingest_dir.iterdir()) == []


# -- write-back ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fsync", ["1", "0"])
def test_write_back_starts_with_each_chunk_when_blobs_are_fsynced(mounts, monkeypatch, small_chunks, fsync):
    monkeypatch.setenv("MODELBUILD_FSYNC", fsync)
    root = mounts.tmpfs("wb")
    src = root / "src"
    src.write_bytes(os.urandom(MiB + 5))
    started: list[tuple[int, int]] = []
    real = filecopy._start_writeback
    monkeypatch.setattr(filecopy, "_start_writeback", lambda fd, off, n: (started.append((off, n)), real(fd, off, n)))
    Store(root / "store").ensure().ingest_file(src)
    if fsync == "0":
        assert started == []
    else:  # every byte, chunk by chunk, in order
        assert [off for off, _ in started] == list(range(0, MiB + 5, 64 * KiB))
        assert sum(n for _, n in started) == MiB + 5


def test_sync_file_range_is_reachable_on_linux(tmp_path):
    call = filecopy._sync_file_range()
    if not os.uname().sysname == "Linux":
        assert call is None
        return
    assert call is not None
    with open(tmp_path / "f", "wb") as fh:
        fh.write(b"x" * 8192)
        fh.flush()
        assert call(fh.fileno(), 0, 8192, 2) == 0


# -- O_DIRECT ------------------------------------------------------------------------------------
@pytest.fixture
def direct_writes(monkeypatch):
    """O_DIRECT chunks of 64 KiB for any size of file; yields the list of ``(offset, length)``
    of every write made while the file had ``O_DIRECT`` set, seen by a spy on ``os.pwritev``.
    No reflink is tried, so that the tests mean the same under a ``/tmp`` that has them
    (XFS, btrfs) as under this one (ext4)."""
    monkeypatch.setattr(filecopy, "_DIRECT_MIN", 0)
    monkeypatch.setattr(filecopy, "reflink", lambda *args, **kwargs: None)
    monkeypatch.setattr(filecopy, "_DIRECT_CHUNK", 64 * KiB)
    seen: list[tuple[int, int]] = []
    real = os.pwritev

    def spy(fd, buffers, offset, *rest):  # noqa: ANN001
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            seen.append((offset, sum(len(b) for b in buffers)))
        return real(fd, buffers, offset, *rest)

    monkeypatch.setattr(os, "pwritev", spy)
    return seen


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1, 5 * 64 * KiB + 17])
def test_a_fsynced_ingest_writes_with_o_direct_what_it_hashed(tmp_path, direct_writes, size):
    data = os.urandom(size)
    src = tmp_path / "model.safetensors"
    src.write_bytes(data)
    store = Store(tmp_path / "store").ensure()
    progress: list[int] = []

    digest, stored, created = store.ingest_file(src, progress.append)

    assert (digest, stored, created) == (sha(data), size, True) and sum(progress) == size
    assert store.blob_path(digest).read_bytes() == data  # cut back to its size after the padded last write
    offsets = [off for off, _ in direct_writes]
    assert offsets == list(range(0, size, 64 * KiB))  # every chunk, in order, with O_DIRECT
    assert all(off % 4096 == 0 and n % 4096 == 0 for off, n in direct_writes)
    assert list(store.ingest_dir.iterdir()) == []


def test_o_direct_is_cleared_after_the_copy_and_the_file_positioned_at_its_end(tmp_path, direct_writes):
    data = os.urandom(3 * 64 * KiB + 5)
    (tmp_path / "src").write_bytes(data)
    hashed = hashlib.sha256()
    with open(tmp_path / "src", "rb") as s, open(tmp_path / "dst", "w+b") as d:
        flags = fcntl.fcntl(d.fileno(), fcntl.F_GETFL)
        copied = kernel_copy(s.fileno(), d.fileno(), hashed.update, failed=lambda exc: exc, short="short",
                             writeback=True)
        assert copied == len(data) and d.tell() == len(data)
        assert fcntl.fcntl(d.fileno(), fcntl.F_GETFL) == flags
        d.write(b"tail")  # a buffered write after it, as a caller may make
    assert (tmp_path / "dst").read_bytes() == data + b"tail" and hashed.digest() == hashlib.sha256(data).digest()
    assert len(direct_writes) == 4


def test_without_fsync_the_kernel_copies(tmp_path, direct_writes, monkeypatch):
    monkeypatch.setenv("MODELBUILD_FSYNC", "0")  # nothing waits for the disk: the page cache is faster
    data = os.urandom(200 * KiB)
    (tmp_path / "src").write_bytes(data)
    digest, _, _ = Store(tmp_path / "store").ensure().ingest_file(tmp_path / "src")
    assert digest == sha(data) and direct_writes == []


def test_a_file_system_without_o_direct_gets_the_kernels_copy(mounts, direct_writes):
    root = mounts.ramfs("ramfs")
    data = os.urandom(300 * KiB + 3)
    (root / "src").write_bytes(data)
    digest, size, _ = Store(root / "store").ensure().ingest_file(root / "src")
    assert (digest, size) == (sha(data), len(data)) and direct_writes == []


def test_a_first_direct_write_refused_leaves_nothing_written_or_hashed_twice(tmp_path, direct_writes, monkeypatch):
    """A device whose block size O_DIRECT's alignment does not meet says EINVAL at the first
    write: the kernel's copy starts over from an empty file and a sink that saw nothing."""
    data = os.urandom(300 * KiB + 3)
    (tmp_path / "src").write_bytes(data)
    spy = os.pwritev

    def refuse(fd, buffers, offset, *rest):  # noqa: ANN001
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return spy(fd, buffers, offset, *rest)

    monkeypatch.setattr(os, "pwritev", refuse)
    store = Store(tmp_path / "store").ensure()
    progress: list[int] = []
    digest, size, _ = store.ingest_file(tmp_path / "src", progress.append)
    assert (digest, size) == (sha(data), len(data)) and sum(progress) == len(data)
    assert store.blob_path(digest).read_bytes() == data


def test_buffers_that_cannot_be_had_leave_the_copy_to_the_kernel(tmp_path, direct_writes, monkeypatch):
    """Under a tight address-space limit (``ulimit -v``) the O_DIRECT buffers fail with
    ENOMEM: the kernel's copy does the ingest, not a crash (exit 70)."""
    data = os.urandom(300 * KiB + 3)
    (tmp_path / "src").write_bytes(data)

    def no_memory(*args, **kwargs):  # noqa: ANN002, ANN003
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(filecopy.mmap, "mmap", no_memory)
    store = Store(tmp_path / "store").ensure()
    digest, size, created = store.ingest_file(tmp_path / "src")
    assert (digest, size, created) == (sha(data), len(data), True) and direct_writes == []
    assert store.blob_path(digest).read_bytes() == data


def test_a_failing_sink_stops_the_direct_writer(tmp_path, direct_writes):
    (tmp_path / "src").write_bytes(os.urandom(64 * 64 * KiB))
    seen = 0

    def sink(view: memoryview) -> None:
        nonlocal seen
        seen += len(view)
        if seen > 4 * 64 * KiB:
            raise IntegrityError("refused")

    with open(tmp_path / "src", "rb") as s, open(tmp_path / "dst", "w+b") as d:
        with pytest.raises(IntegrityError, match="refused"):
            kernel_copy(s.fileno(), d.fileno(), sink, failed=lambda exc: exc, short="short", writeback=True)
    assert not [t for t in threading.enumerate() if t.name == "direct-write"]
    assert os.path.getsize(tmp_path / "dst") <= (4 + filecopy._DIRECT_BUFFERS) * 64 * KiB  # it stopped


def test_a_verified_copy_of_a_lying_blob_is_refused_through_o_direct(tmp_path, direct_writes):
    data = os.urandom(5 * 64 * KiB)
    (tmp_path / "blob").write_bytes(data)
    with open(tmp_path / "dst", "w+b") as d:
        copy_verified(tmp_path / "blob", d.fileno(), sha(data), len(data), writeback=True)
        with pytest.raises(IntegrityError, match="does not match"):
            d.seek(0)
            d.truncate()
            copy_verified(tmp_path / "blob", d.fileno(), sha(b"other"), len(data), writeback=True)
        with pytest.raises(IntegrityError, match="more than"):
            d.seek(0)
            d.truncate()
            copy_verified(tmp_path / "blob", d.fileno(), sha(data[:-1]), len(data) - 1, writeback=True)
    assert direct_writes
