"""Tar layers unpacked member by member, within bounds, into a staging tree.

Python's ``extractall(filter="data")`` checks members but cannot bound what a compressed
stream expands to, nor refuse a member that collides with another layer's file. Here each
member's name and link are checked (:mod:`modelbuild.artifact_paths`), recorded in the
artifact's :class:`~modelbuild.oci.layerplan.PathTree` (a second writer of a path, or a
file below a link, is refused), and created with ``O_EXCL`` and ``O_NOFOLLOW``; the
decompressed stream is counted against the layer's bound and hashed for its diffId.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
from pathlib import Path
from typing import Any, BinaryIO

from modelbuild import artifact_paths as ap
from modelbuild.digests import CHUNK
from modelbuild.errors import BuildError
from modelbuild.limits import raise_hint
from modelbuild.oci.layerplan import Layer, PathTree
from modelbuild.oci.verify import IntegrityError, fsync_enabled, shown

EXPANSION_VAR = "MODELBUILD_MAX_EXPANSION_RATIO"


def create_exclusive(path: Path, mode: int = 0o600) -> int:
    """A new file's descriptor: never an existing file, never through a symbolic link."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, mode)
    except FileExistsError:
        raise IntegrityError(f"{shown(path)} already exists in the staging directory; refusing to overwrite it") from None
    except OSError as exc:
        raise write_error(exc, path) from None


def write_error(exc: OSError, path: Path) -> BuildError:
    if exc.errno == 28:  # ENOSPC
        return BuildError(f"no space left on device while writing {shown(path)}")
    return BuildError(f"cannot write {shown(path)}: {exc.strerror or exc}")


class _Expanded:
    """A decompressed stream that counts and hashes what it yields and stops at *limit*."""

    def __init__(self, raw: BinaryIO, compression: str | None, limit: int, what: str) -> None:
        if compression == "gzip":
            import gzip

            self.stream: Any = gzip.GzipFile(fileobj=raw, mode="rb")
        elif compression == "zstd":
            import zstandard

            self.stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        else:
            self.stream = raw
        self.limit, self.what = limit, what
        self.count = 0
        self.hasher = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = CHUNK if n is None or n < 0 else n
        try:
            data = self.stream.read(min(n, self.limit + 1 - self.count))
        except (OSError, EOFError, ValueError) as exc:  # gzip.BadGzipFile is an OSError
            raise IntegrityError(f"{self.what}: cannot decompress ({shown(exc, 100)})") from None
        except Exception as exc:  # zstandard.ZstdError
            if type(exc).__name__ == "ZstdError":
                raise IntegrityError(f"{self.what}: cannot decompress ({shown(exc, 100)})") from None
            raise
        self.count += len(data)
        if self.count > self.limit:
            raise IntegrityError(f"{self.what} expands to more than {self.limit} bytes, more than its sizes allow",
                                 hint=raise_hint(EXPANSION_VAR) + " for layers that declare no size")
        self.hasher.update(data)
        return data

    def drain(self) -> None:
        """Read to the end, so the hash covers the whole decompressed stream."""
        while self.read(CHUNK):
            pass


def _member_kind(member: tarfile.TarInfo) -> str | None:
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    return None


def unpack(blob: Path, layer: Layer, tree_root: Path, tree: PathTree, where: str, ratio: int) -> list[str]:
    """Unpack tar *layer* (its verified blob) under *tree_root*; return the paths it wrote."""
    what = f"{where}: layer {layer.label} ({layer.desc.digest})"
    written: list[str] = []
    with open(blob, "rb") as raw:
        stream = _Expanded(raw, layer.compression, layer.expansion_limit(ratio), what)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tf:  # type: ignore[call-overload]
                for member in tf:
                    rel = _extract_member(tf, member, tree_root, tree, what)
                    if rel:
                        written.append(rel)
        except tarfile.TarError as exc:
            raise IntegrityError(f"{what}: not a valid tar archive ({shown(exc, 100)})") from None
        stream.drain()
    got = "sha256:" + stream.hasher.hexdigest()
    if layer.compression and layer.diff_id and got != layer.diff_id:
        raise IntegrityError(f"{what}: its uncompressed content has digest {got}, not the diffId {layer.diff_id} "
                             "its config declares")
    return written


def _extract_member(tf: tarfile.TarFile, member: tarfile.TarInfo, root: Path, tree: PathTree, what: str) -> str | None:
    rel = ap.normalise(member.name)
    if not rel or rel == ".":
        return None
    if problem := ap.path_problem(rel):
        raise IntegrityError(f"{what}: member {shown(rel)} {problem}; refusing it")
    kind = _member_kind(member)
    if kind is None:
        raise IntegrityError(f"{what}: member {shown(rel)} is not a regular file, directory or symbolic link")
    if kind == "symlink" and (problem := ap.link_problem(rel, member.linkname)):
        raise IntegrityError(f"{what}: symbolic link {shown(rel)} {problem}; refusing it")
    tree.add(rel, kind)
    target = root / rel
    make_parents(root, rel)
    try:
        if kind == "dir":
            with contextlib.suppress(FileExistsError):
                target.mkdir(mode=0o700)
            os.chmod(target, (member.mode & 0o755) | 0o700, follow_symlinks=False)
        elif kind == "symlink":
            os.symlink(member.linkname, target)
        else:
            _write_member(tf, member, target, what)
    except OSError as exc:
        raise write_error(exc, target) from None
    return rel


def make_parents(root: Path, rel: str) -> None:
    """Create the directories above *rel* under *root*; the tree check has made sure none of
    them is a file or a link."""
    parent = root
    for part in rel.split("/")[:-1]:
        parent = parent / part
        with contextlib.suppress(FileExistsError):
            parent.mkdir(mode=0o755)


def _write_member(tf: tarfile.TarFile, member: tarfile.TarInfo, target: Path, what: str) -> None:
    fd = create_exclusive(target)
    try:
        source = tf.extractfile(member)
        left = member.size
        while left > 0 and source is not None:
            chunk = source.read(min(CHUNK, left))
            if not chunk:
                raise IntegrityError(f"{what}: member {shown(member.name)} is cut short")
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            left -= len(chunk)
        os.fchmod(fd, (member.mode & 0o777) | 0o600)
        if fsync_enabled():
            os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["EXPANSION_VAR", "create_exclusive", "make_parents", "unpack", "write_error"]
