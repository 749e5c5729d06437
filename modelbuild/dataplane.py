"""The data plane: what a remote executor's worker runs around each item (:class:`Work`).

A remote item reads and writes files by path in the build's store and context. Before the
first item of a build runs in a worker process, :meth:`Work.run` checks that the process
sees the build's store: the core wrote a *marker*, a file holding a random token, under the
store (:class:`Marker`, when the build's executor opens), and the worker must read that
token at that path. A node that mounts another store, or none, fails the build in one line,
before it writes anything, instead of writing outputs nobody reads. It must also see the
context and run the same code (:func:`code_version`).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelbuild.errors import BuildError

@dataclass(frozen=True, slots=True)
class Marker:
    """A file under the build's store holding a token only this build wrote: a worker that
    reads the token at that path sees the same store."""

    path: str
    token: str
    roots: tuple[str, ...] = ()  # where items read and write: the home (store, sources), the context
    driver: int = 0  # the build's process id: an executor may run items in it (threads)

    @classmethod
    def create(cls, store: Path, context: Path | None = None) -> Marker:
        directory = Path(store) / "ingest"
        import secrets

        directory.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(16)
        path = directory / f"executor-{token}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(token)
        os.replace(tmp, path)
        roots = (str(Path(store).resolve().parent),) + ((str(Path(context).resolve()),) if context else ())
        return cls(str(path), token, roots, os.getpid())

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


_seen: dict[tuple[str, str], str | None] = {}  # (marker, code) → what this process found wrong (None: fine)
_seen_lock = threading.Lock()
_running: set[int] = set()  # the items running in this process now (their threads' idents)
_overlapped: set[int] = set()  # those that ran beside another: whose files are whose is unknown
_inline: dict[Callable[[Any], Any], bool] = {}  # function → its items run in the calling thread (Work.run, 3.)


@functools.lru_cache(maxsize=64)
def code_version(fn: Callable[[Any], Any]) -> str:
    """What produced *fn*'s bytes: modelbuild's version and that of the distribution that
    ships *fn*'s module. A node with other code would write other bytes under the same cache
    key, so a worker runs an item only where this matches the build's."""
    import modelbuild

    module = getattr(fn, "__module__", "") or ""
    top = module.split(".", 1)[0]
    shipped = "?"
    try:
        from importlib.metadata import packages_distributions, version

        dists = packages_distributions().get(top) or []
        if dists:
            shipped = f"{dists[0]} {version(dists[0])}"
    except Exception:  # noqa: BLE001 - an unreadable installation: compare modelbuild alone
        pass
    return f"modelbuild {modelbuild.__version__}; {module} from {shipped}"


@dataclass(frozen=True, slots=True)
class Work:
    """A transform's function, ready to ship: what a remote executor sends to its workers
    with each item (``ExecutorSetup.work(fn)`` on the build's side, ``work.run(item)`` on
    the worker's). Picklable: the function goes by reference, the rest is strings."""

    fn: Callable[[Any], Any]
    marker: Marker
    code: str

    @classmethod
    def prepare(cls, fn: Callable[[Any], Any], marker: Marker) -> Work:
        return cls(fn, marker, code_version(fn))

    def run(self, item: Any, node: str = "") -> Any:
        """Run one item here, on a worker of a remote executor (*node*: its name, for errors).

        1. The data plane: this process must see the build's store (the marker) and context,
           and run the build's code (:func:`code_version`), else a :class:`BuildError` that
           names the node and the fix, before the item touches a file.
        2. The files the item left open under the home or the context are closed when it
           returns: a long-lived worker keeps nothing of a finished build, and what an item
           wrote is closed (on NFS: written back) before the driver reads it. Only where the
           item ran alone in a process of its own: an executor that runs items on threads
           (or in the build's own process) shares the process with files other threads are
           writing.
        3. Where it runs: the first item of a function in this process runs in a thread of
           its own, so that what the function keeps per thread (open files, by path) starts
           fresh, and what it left open can be closed behind it. A function whose item left
           no file open runs its later items in the calling thread, which saves a thread's
           start and, in a Ray worker, the fresh heap that a new thread's allocations page
           in (15–30 % of a quantize item's time, measured); one that keeps files open gets
           a new thread for every item.
        """
        problem = self._check()
        if problem is not None:
            raise BuildError(f"node {node or '?'} cannot run this build's work: {problem}",
                             hint="every node needs MODELBUILD_HOME and the build context at the same paths, and the "
                                  "same modelbuild and plugins installed (docs/scale.md)")
        before = _open_fds()
        outcome: list[tuple[bool, Any]] = []

        def call() -> None:
            try:
                outcome.append((True, self.fn(item)))
            except BaseException as exc:  # noqa: BLE001 - raised again in the calling thread
                outcome.append((False, exc))

        here = _inline.get(self.fn, False)
        worker = None if here else threading.Thread(target=call, name="modelbuild-item")
        with _seen_lock:
            if worker is not None:
                worker.start()
            ident = threading.get_ident() if worker is None else worker.ident or 0
            _running.add(ident)
            if len(_running) > 1:
                _overlapped.update(_running)
        try:
            if worker is None:
                call()
            else:
                worker.join()
        finally:
            with _seen_lock:
                _running.discard(ident)
                alone = ident not in _overlapped
                _overlapped.discard(ident)
        left = _files_under(_open_fds() - before, self.marker.roots)
        if left:  # it keeps files (per thread, perhaps): a fresh thread for each of its items
            _inline[self.fn] = False
            if alone and os.getpid() != self.marker.driver:
                _close(left)
        elif alone and worker is not None:  # learned from an item nothing else ran beside
            _inline.setdefault(self.fn, True)
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def _check(self) -> str | None:
        key = (self.marker.path, self.code)
        with _seen_lock:
            if key not in _seen:
                _seen[key] = self._problem()
            return _seen[key]

    def _problem(self) -> str | None:
        marker = self.marker
        try:
            with open(marker.path) as fh:
                found = fh.read(64)
        except OSError as exc:
            return f"it does not see the build's store ({marker.path}: {exc.strerror})"
        if found != marker.token:
            return f"{marker.path} is another build's: this node mounts another store"
        for root in marker.roots[1:]:
            if not os.path.isdir(root):
                return f"it does not see the build context {root}"
        here = code_version(self.fn)
        if here != self.code:
            return f"it runs {here}, the build {self.code}"
        return None


def _open_fds() -> set[int]:
    """The descriptors open now (not the one that listed them, closed by then)."""
    try:
        listed = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: nothing is closed for the item
        return set()
    open_now = set()
    for fd in listed:
        try:
            os.fstat(fd)
        except OSError:
            continue
        open_now.add(fd)
    return open_now


def _files_under(fds: set[int], roots: tuple[str, ...]) -> list[int]:
    """Those of *fds* that name files under *roots* (the plugin's files of the build); the
    worker's own (its sockets, its logs) are not."""
    prefixes = tuple(r.rstrip("/") + "/" for r in roots)
    if not prefixes:
        return []
    found = []
    for fd in sorted(fds):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(prefixes):
            found.append(fd)
    return found


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
