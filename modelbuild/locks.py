"""Named locks that hold across threads and processes: identical work runs once.

A lock is a thread lock (within this process) plus an ``flock`` on a file under the
store's ``locks/`` directory (across processes). The kernel drops an ``flock`` when its
holder dies, so a ``kill -9`` never leaves a lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
from pathlib import Path
from typing import Iterator


class KeyLocks:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[None]:
        file_name = hashlib.sha256(name.encode()).hexdigest()[:32] + ".lock"
        with self._guard:
            tlock = self._locks.setdefault(file_name, threading.Lock())
        with tlock, open(self.directory / file_name, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
