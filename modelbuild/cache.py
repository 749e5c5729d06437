"""The build cache: step keys → results, and file stat → content digest.

Both live in one diskcache (SQLite) database, so every entry is written in a transaction:
a killed build leaves the old entry or the new one, never half of one. Values are small JSON
documents; blobs stay in the store.

The file-digest cache is BuildKit's checksum cache: a file's sha256 is looked up by
``(device, inode, size, mtime_ns)``, so an unchanged file is never read twice. The content
digest, not the stat, is what enters step keys: two paths with one content share results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class BuildCache:
    def __init__(self, root: Path) -> None:
        import diskcache

        root.mkdir(parents=True, exist_ok=True)
        # No eviction: entries are tiny, and an evicted digest costs a re-hash of gigabytes.
        self._db = diskcache.Cache(str(root), eviction_policy="none", timeout=60)

    def close(self) -> None:
        self._db.close()

    # -- step results ----------------------------------------------------------------
    def get_step(self, key: str) -> dict[str, Any] | None:
        return self._db.get(("step", key))

    def set_step(self, key: str, result: dict[str, Any]) -> None:
        self._db.set(("step", key), result)

    def drop_step(self, key: str) -> None:
        self._db.delete(("step", key))

    def step_items(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
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
        return self._db.get(self.stat_key(st))

    def set_file_digest(self, st: os.stat_result, digest: str) -> None:
        with self._db.transact():
            self._db.set(self.stat_key(st), digest)
            self._db.set(("inode", st.st_dev, st.st_ino, st.st_size), digest)

    def seen_inode(self, st: os.stat_result) -> bool:
        """Whether this inode, at this size, was hashed before (with another mtime): the
        likely case is a ``touch`` or a checkout that kept the content."""
        return ("inode", st.st_dev, st.st_ino, st.st_size) in self._db
