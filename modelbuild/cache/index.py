"""The build cache's step index: step keys → results, and file stat → content digest.

Both live in one diskcache (SQLite) database, so every entry is written in a transaction:
a killed build leaves the old entry or the new one, never half of one. Values are small JSON
documents; blobs stay in the store.

The file-digest cache is BuildKit's checksum cache: a file's sha256 is looked up by
``(device, inode, size, mtime_ns)``, so an unchanged file is never read twice. The content
digest, not the stat, is what enters step keys: two paths with one content share results.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelbuild.errors import StoreError
from modelbuild.oci.verify import shown
from modelbuild.storage.files import os_failure


class BuildCache:
    """The step index and the file-digest cache of one modelbuild home.

    A cache that cannot be opened or written (a read-only or full disk, a path that is a
    file) is a :class:`StoreError` naming the directory, raised here: SQLite's own errors
    never reach the user as a bug report."""

    def __init__(self, root: Path) -> None:
        import diskcache

        self.root = root
        if root.exists() and not root.is_dir():
            raise StoreError(f"{shown(root)}: cannot open the build cache: it is a file, not a directory")
        with self._guard("open the build cache"):
            root.mkdir(parents=True, exist_ok=True)
            # No eviction: entries are tiny, and an evicted digest costs a re-hash of gigabytes.
            self._db = diskcache.Cache(str(root), eviction_policy="none", timeout=60)

    @contextlib.contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """SQLite and file-system failures of the cache database as one line naming it."""
        try:
            yield
        except OSError as exc:
            raise os_failure(exc, doing, self.root) from None
        except sqlite3.Error as exc:
            # SQLite's "database or disk is full" is the OS's ENOSPC: worded as every other
            # full-disk error is, so a full disk reads the same whichever write hit it first
            full = "no space left on device" if "disk is full" in str(exc) else None
            raise StoreError(f"{shown(self.root)}: cannot {doing}: {_read_only(self.root) or full or shown(exc)}"
                             ) from None

    def close(self) -> None:
        with contextlib.suppress(OSError, sqlite3.Error):
            self._db.close()

    # -- step results ----------------------------------------------------------------
    def get_step(self, key: str) -> dict[str, Any] | None:
        with self._guard("read the build cache"):
            value = self._db.get(("step", key))
        return value if isinstance(value, dict) else None

    def set_step(self, key: str, result: dict[str, Any]) -> None:
        with self._guard("record a step in the build cache"):
            self._db.set(("step", key), result)

    def drop_step(self, key: str) -> None:
        with self._guard("update the build cache"):
            self._db.delete(("step", key))

    def step_items(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        with self._guard("read the build cache"):
            for k in self._db.iterkeys():
                if isinstance(k, tuple) and k[0] == "step":
                    value = self._db.get(k)
                    if value is not None:
                        out.append((k[1], value))
        return out

    # -- file digests ----------------------------------------------------------------
    @staticmethod
    def stat_key(st: os.stat_result) -> tuple[str, int, int, int, int]:
        return ("file", st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def get_file_digest(self, st: os.stat_result) -> str | None:
        with self._guard("read the build cache"):
            value = self._db.get(self.stat_key(st))
        return value if isinstance(value, str) else None

    def set_file_digest(self, st: os.stat_result, digest: str) -> None:
        with self._guard("record a file digest in the build cache"), self._db.transact():
            self._db.set(self.stat_key(st), digest)
            self._db.set(("inode", st.st_dev, st.st_ino, st.st_size), digest)

    def seen_inode(self, st: os.stat_result) -> bool:
        """Whether this inode, at this size, was hashed before (with another mtime): the
        likely case is a ``touch`` or a checkout that kept the content."""
        with self._guard("read the build cache"):
            return ("inode", st.st_dev, st.st_ino, st.st_size) in self._db


def _read_only(root: Path) -> str | None:
    """SQLite says "unable to open database file" where the disk is read-only: say that."""
    for part in (root, *root.parents):
        try:
            return "read-only file system" if os.statvfs(part).f_flag & os.ST_RDONLY else None
        except OSError:
            continue
    return None
