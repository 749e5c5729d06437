"""Executors, from the core's side: the built-in ``local`` one, ``--executor`` parsing, and
what every remote executor's workers run around an item (:class:`Work`).

A build opens one executor session (:func:`open_session`) and hands it to each transform's
:class:`~modelbuild.weights.TransformContext`: ``run_processes`` maps its items through it.
The contract is :mod:`modelbuild.api._executors`; the ``ray`` plugin is the remote one.

The data plane. A remote item reads and writes files by path in the build's store and
context. Before the first item of a build runs in a worker process, :meth:`Work.run`
checks that the process sees the build's store: the core wrote a *marker*, a file holding a
random token, under the store (:func:`open_session`), and the worker must read that token at
that path. A node that mounts another store, or none, fails the build in one line, before it
writes anything, instead of writing outputs nobody reads.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelbuild.errors import BuildError, UsageError

if TYPE_CHECKING:
    from modelbuild.api._executors import Executor, ExecutorSession, ExecutorSetup

DEFAULT = "local"


class LocalExecutor:
    """Work items on worker processes of this machine (:mod:`modelbuild.workers`), at most
    ``-j`` at once: what every build did before executors were a plugin kind."""

    name = "local"
    summary = "work items on worker processes of this machine, -j at a time (the default)"

    def open(self, setup: ExecutorSetup) -> LocalSession:
        if setup.address:
            raise UsageError(f"--executor local takes no address (got local://{setup.address})",
                             hint="a cluster is another executor: --executor ray://HOST:PORT")
        return LocalSession(setup.jobs)


class LocalSession:
    name = "local"
    nodes = 1

    def __init__(self, jobs: int) -> None:
        self.slots = max(1, jobs)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], on_done: Callable[[Any, Any], None], *,
            jobs: int | None = None, preload: Iterable[str] = ()) -> None:
        from modelbuild.workers import run_processes

        run_processes(fn, items, on_done, jobs=self.slots if jobs is None else max(1, jobs), preload=preload)

    def prepare(self, preload: Iterable[str]) -> None:
        from modelbuild.workers import mp_context

        mp_context(preload)  # the forkserver starts importing while the transform plans

    def close(self) -> None:
        pass


def local_executor() -> LocalExecutor:
    """The core's ``local`` executor, which the built-in ``local`` plugin registers."""
    return LocalExecutor()


@dataclass(frozen=True, slots=True)
class ExecutorChoice:
    """``--executor NAME[://ADDRESS]``, parsed."""

    name: str
    address: str | None = None

    def __str__(self) -> str:
        return self.name + (f"://{self.address}" if self.address else "")


def parse_executor(text: str | None) -> ExecutorChoice:
    """``ray`` → (ray, None); ``ray://10.0.0.5:10001`` → (ray, 10.0.0.5:10001); None or empty
    → the default, ``local``."""
    text = (text or "").strip()
    if not text:
        return ExecutorChoice(DEFAULT)
    name, sep, address = text.partition("://")
    if not name or (sep and not address) or any(c.isspace() for c in text):
        raise UsageError(f"--executor {text!r}: expected NAME or NAME://ADDRESS",
                         hint="for example --executor ray, or --executor ray://10.0.0.5:10001")
    return ExecutorChoice(name.lower(), address or None)


class BuildExecutor:
    """The executor of one build, opened on first use: a build whose transforms are all
    cached (a no-op rebuild) never connects to a cluster. It is the ``ExecutorSession`` the
    transforms see (``slots``, ``nodes``, ``map``); the build calls :meth:`close`."""

    def __init__(self, choice: ExecutorChoice, host: Any, *, jobs: int, store: Path, context: Path | None,
                 log: Callable[[str], None]) -> None:
        registry = host.executors
        if choice.name not in registry.names():
            import difflib

            close = difflib.get_close_matches(choice.name, registry.names(), n=1)
            raise UsageError(f"unknown executor {choice.name!r}",
                             hint=f"did you mean {close[0]}?" if close else f"executors: {', '.join(registry.names())}")
        self.choice = choice
        self.name = choice.name
        self._registry = registry  # the executor's plugin is imported when it is first opened
        self._args = (max(1, jobs), Path(store), context, log)
        self._session: ExecutorSession | None = None
        self._marker: Marker | None = None
        self._lock = threading.Lock()
        self._early: threading.Thread | None = None
        self._early_error: BaseException | None = None

    @property
    def remote(self) -> bool:
        """Whether items run elsewhere than this machine's worker processes (any executor but
        ``local``): then a large file's hash is worth an item of its own (ops/files.py)."""
        return self.choice.name != DEFAULT

    def start_early(self) -> None:
        """Open a remote executor in the background now (the build has started work: its
        first step that is not cached), so that connecting to the cluster and starting its
        workers overlap the hashing instead of delaying the first transform. A failure is
        raised where the session is first needed. The local executor opens when used."""
        if self.choice.name == DEFAULT or self._early is not None:
            return
        self._early = threading.Thread(target=self._open_early, name="modelbuild-executor", daemon=True)
        self._early.start()

    def _open_early(self) -> None:
        try:
            self.session  # noqa: B018 - opens it
        except BaseException as exc:  # noqa: BLE001 - raised again by the first real use
            self._early_error = exc

    @property
    def session(self) -> ExecutorSession:
        with self._lock:
            if self._session is None and self._early_error is not None:
                error, self._early_error = self._early_error, None
                raise error
            if self._session is None:
                from modelbuild.api._executors import ExecutorSetup

                jobs, store, context, log = self._args
                self._marker = Marker.create(store, context)
                setup = ExecutorSetup(address=self.choice.address, jobs=jobs, store=store, context=context, log=log,
                                      marker=self._marker)
                executor: Executor = self._registry.get(self.choice.name)
                try:
                    self._session = executor.open(setup)
                except BaseException:
                    self._marker.remove()
                    self._marker = None
                    raise
            return self._session

    @property
    def slots(self) -> int:
        return max(1, int(self.session.slots))

    @property
    def nodes(self) -> int:
        return max(1, int(getattr(self.session, "nodes", 1)))

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], on_done: Callable[[Any, Any], None], *,
            jobs: int | None = None, preload: Iterable[str] = ()) -> None:
        self.session.map(fn, items, on_done, jobs=jobs, preload=preload)

    def prepare(self, preload: Iterable[str]) -> None:
        self.session.prepare(preload)

    def close(self) -> None:
        if self._early is not None:
            self._early.join()  # a connection under way: finished, then closed
        with self._lock:
            session, self._session = self._session, None
            marker, self._marker = self._marker, None
        try:
            if session is not None:
                session.close()
        finally:
            if marker is not None:
                marker.remove()


# -- the data plane: what a remote worker runs around each item ------------------------------


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
        2. The item runs in a thread of its own, so what a plugin keeps per thread (open
           files, by path) starts fresh for each item; the files it opened under the home or
           the context are closed when it returns: a long-lived worker keeps nothing of a
           finished build. Only where the item ran alone in a process of its own: an
           executor that runs items on threads (or in the build's own process) shares the
           process with files other threads are writing.
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

        worker = threading.Thread(target=call, name="modelbuild-item")
        with _seen_lock:
            worker.start()
            ident = worker.ident or 0
            _running.add(ident)
            if len(_running) > 1:
                _overlapped.update(_running)
        worker.join()
        with _seen_lock:
            _running.discard(ident)
            alone = ident not in _overlapped
            _overlapped.discard(ident)
        if alone and os.getpid() != self.marker.driver:
            _close_new_files(before, self.marker.roots)
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


def _close_new_files(before: set[int], roots: tuple[str, ...]) -> None:
    """Close the descriptors opened since *before* that name files under *roots* (the
    plugin's cached per-thread files); anything else (the worker's own sockets) is left."""
    prefixes = tuple(r.rstrip("/") + "/" for r in roots)
    if not prefixes:
        return
    for fd in _open_fds() - before:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(prefixes):
            try:
                os.close(fd)
            except OSError:
                pass
