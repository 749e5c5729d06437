"""The build cache's step index: step keys → results, and file stat → content digest.

Both live in one diskcache (SQLite) database, so every entry is written in a transaction:
a killed build leaves the old entry or the new one, never half of one. Values are small JSON
documents; blobs stay in the store.

The file-digest cache is BuildKit's checksum cache: a file's sha256 is looked up by
``(device, inode, size, mtime_ns)``, so an unchanged file is never read twice. The content
digest, not the stat, is what enters step keys: two paths with one content share results.

Reads do not go through diskcache: opening a ``diskcache.Cache`` rewrites its settings
(SQLite writes and an ``fdatasync`` on every open) and importing it costs more than a no-op
rebuild's look-ups. An existing database is read with one plain SQLite connection, exactly
as diskcache's own ``get`` reads it (its ``Cache`` table, keys pickled and optimised by its
``Disk``, values raw or pickled, large ones in files); diskcache is opened at the first
write, so a build that finds everything cached never opens it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelbuild.errors import StoreError
from modelbuild.oci.verify import shown
from modelbuild.storage.files import os_failure

DBNAME = "cache.db"  # diskcache's database file in the cache directory
# diskcache's Cache table modes (diskcache.core.MODE_*)
_MODE_RAW, _MODE_BINARY, _MODE_TEXT, _MODE_PICKLE = 1, 2, 3, 4
_SELECT = ("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = ?"
           " AND (expire_time IS NULL OR expire_time > ?)")


class BuildCache:
    """The step index and the file-digest cache of one modelbuild home.

    A cache that cannot be opened or written (a read-only or full disk, a path that is a
    file) is a :class:`StoreError` naming the directory, raised here: SQLite's own errors
    never reach the user as a bug report."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if root.exists() and not root.is_dir():
            raise StoreError(f"{shown(root)}: cannot open the build cache: it is a file, not a directory")
        self._db: Any = None  # the diskcache.Cache every write goes through, opened at the first
        self._db_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None  # shared by the step threads, one at a time
        self._reader_lock = threading.Lock()
        self._reader_pid = 0
        self._protocol = 0  # the pickle protocol of the keys (diskcache's disk_pickle_protocol)
        with self._guard("open the build cache"):
            if not (root / DBNAME).is_file():  # a new cache: diskcache creates its tables now
                root.mkdir(parents=True, exist_ok=True)
                self._writer()
            with self._reader_lock:
                self._connect()

    def _writer(self) -> Any:
        """The diskcache every write goes through, opened on first use."""
        with self._db_lock:
            if self._db is None:
                import diskcache

                # No eviction: entries are tiny, and an evicted digest costs a re-hash of gigabytes.
                self._db = diskcache.Cache(str(self.root), eviction_policy="none", timeout=60)
            return self._db

    def _connect(self) -> sqlite3.Connection:
        """The reader connection, opened once per process (holding ``_reader_lock``)."""
        if self._reader is None or self._reader_pid != os.getpid():
            for attempt in range(2):
                con = sqlite3.connect(str(self.root / DBNAME), timeout=60, isolation_level=None,
                                      check_same_thread=False)
                try:
                    rows = con.execute("SELECT value FROM Settings WHERE key = 'disk_pickle_protocol'").fetchall()
                except sqlite3.OperationalError:  # no tables yet: being created, or never were
                    rows = []
                if rows or attempt:
                    break
                con.close()
                self._writer()  # diskcache creates what is missing, or waits for whoever is
            if not rows:
                con.close()
                raise sqlite3.DatabaseError("not a diskcache database")
            self._reader, self._reader_pid, self._protocol = con, os.getpid(), int(rows[0][0])
        return self._reader

    def _select(self, key: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The row of *key* (mode, filename, value), as ``diskcache.Cache.get`` selects it."""
        with self._reader_lock:
            con = self._connect()
            return con.execute(_SELECT, (_key(key, self._protocol), False, time.time())).fetchall()

    def _get(self, key: tuple[Any, ...]) -> Any:
        """The value stored under *key*, as ``diskcache.Cache.get`` returns it; None if none."""
        rows = self._select(key)
        if not rows:
            return None
        mode, filename, value = rows[0]
        try:
            return _value(self.root, mode, filename, value)
        except OSError:  # removed after the row was read: diskcache reads that as a miss too
            return None

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
            with self._reader_lock:
                if self._reader is not None and self._reader_pid == os.getpid():
                    self._reader.close()
                self._reader = None
            if self._db is not None:
                self._db.close()

    # -- step results ----------------------------------------------------------------
    def get_step(self, key: str) -> dict[str, Any] | None:
        with self._guard("read the build cache"):
            value = self._get(("step", key))
        return value if isinstance(value, dict) else None

    def set_step(self, key: str, result: dict[str, Any]) -> None:
        with self._guard("record a step in the build cache"):
            self._writer().set(("step", key), result)

    def drop_step(self, key: str) -> None:
        with self._guard("update the build cache"):
            self._writer().delete(("step", key))

    def step_items(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        with self._guard("read the build cache"):
            db = self._writer()
            for k in db.iterkeys():
                if isinstance(k, tuple) and k[0] == "step":
                    value = db.get(k)
                    if value is not None:
                        out.append((k[1], value))
        return out

    # -- file digests ----------------------------------------------------------------
    @staticmethod
    def stat_key(st: os.stat_result) -> tuple[str, int, int, int, int]:
        return ("file", st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def get_file_digest(self, st: os.stat_result) -> str | None:
        with self._guard("read the build cache"):
            value = self._get(self.stat_key(st))
        return value if isinstance(value, str) else None

    def set_file_digest(self, st: os.stat_result, digest: str) -> None:
        with self._guard("record a file digest in the build cache"):
            db = self._writer()
            with db.transact():
                db.set(self.stat_key(st), digest)
                db.set(("inode", st.st_dev, st.st_ino, st.st_size), digest)

    def seen_inode(self, st: os.stat_result) -> bool:
        """Whether this inode, at this size, was hashed before (with another mtime): the
        likely case is a ``touch`` or a checkout that kept the content."""
        with self._guard("read the build cache"):
            return bool(self._select(("inode", st.st_dev, st.st_ino, st.st_size)))


def _key(key: tuple[Any, ...], protocol: int) -> bytes:
    """*key* as diskcache's ``Disk.put`` stores a tuple: pickled, then optimised."""
    import pickle
    import pickletools

    return pickletools.optimize(pickle.dumps(key, protocol=protocol))


def _value(root: Path, mode: int, filename: str | None, value: Any) -> Any:
    """A stored value, as diskcache's ``Disk.fetch`` reads it."""
    if mode == _MODE_RAW:
        return value
    if mode == _MODE_BINARY:
        return (root / str(filename)).read_bytes()
    if mode == _MODE_TEXT:
        return (root / str(filename)).read_text(encoding="utf-8")
    if mode == _MODE_PICKLE:
        import pickle

        return pickle.loads((root / str(filename)).read_bytes() if value is None else value)
    return None


def _read_only(root: Path) -> str | None:
    """SQLite says "unable to open database file" where the disk is read-only: say that."""
    for part in (root, *root.parents):
        try:
            return "read-only file system" if os.statvfs(part).f_flag & os.ST_RDONLY else None
        except OSError:
            continue
    return None
