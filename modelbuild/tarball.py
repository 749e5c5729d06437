"""Reproducible tar streams: lexicographic order, constant owner and time, normalised modes.

Public API for layer-codec plugins. Members are streamed straight from their files, so a
tar of a 10 GB directory never holds more than one read buffer in memory.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Callable

from modelbuild.digests import CHUNK
from modelbuild.errors import BuildError

BLOCK = 512


@dataclass(frozen=True, slots=True)
class Member:
    """One archive entry: ``kind`` is "file", "dir" or "symlink"."""

    name: str
    kind: str
    source: str | None = None  # the file to read, for kind "file"
    mode: int = 0o644
    size: int = 0
    linkname: str = ""


def normalise_mode(st_mode: int, is_dir: bool = False) -> int:
    """0755 for directories and anything executable, else 0644: umask-independent."""
    if is_dir or st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
        return 0o755
    return 0o644


def header(member: Member, mtime: int) -> bytes:
    import tarfile  # here: a build that writes no tar (a no-op) does not pay for its import

    info = tarfile.TarInfo(member.name + ("/" if member.kind == "dir" else ""))
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = member.mode
    if member.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif member.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = member.linkname
    else:
        info.type = tarfile.REGTYPE
        info.size = member.size
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def write_tar(
    members: list[Member],
    write: Callable[[bytes | memoryview], object],
    *,
    mtime: int = 0,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write a tar of *members* through *write*; return the number of bytes written."""
    total = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    for member in members:
        head = header(member, mtime)
        write(head)
        total += len(head)
        if member.kind != "file":
            continue
        assert member.source is not None
        copied = 0
        try:
            with open(member.source, "rb", buffering=0) as src:
                while copied < member.size:
                    n = src.readinto(buf)
                    if not n:
                        break
                    n = min(n, member.size - copied)
                    write(view[:n])
                    copied += n
                    if progress:
                        progress(n)
                extra = src.read(1)
        except OSError as exc:
            raise BuildError(f"cannot read {member.source}: {exc.strerror}") from None
        if copied != member.size or extra:
            raise BuildError(f"{member.name} changed size while it was being packed; build again")
        pad = (-member.size) % BLOCK
        if pad:
            write(bytes(pad))
        total += member.size + pad
    write(bytes(2 * BLOCK))
    return total + 2 * BLOCK


def file_member(name: str, path: str) -> Member:
    st = os.stat(path)
    return Member(name, "file", path, normalise_mode(st.st_mode), st.st_size)
