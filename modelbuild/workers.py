"""Worker processes for weight transforms, started without forking the threaded build.

The solver runs steps on threads, and ``fork()`` from a process with threads copies only the
calling thread: a lock another thread held (the dynamic loader's, an allocator's, a pipe a
second pool was creating) stays held forever in the child, and Python 3.12+ warns
(``DeprecationWarning: This process … is multi-threaded, use of fork() may lead to
deadlocks``). Transform workers therefore come from one ``forkserver`` per process: a fresh
interpreter, started with ``fork``+``exec`` like any subprocess the first time a transform
asks for workers, that imports the modules plugins declare (:func:`declare`, and the
*preload* of :func:`mp_context`) once, single-threaded, and then forks a worker per request
from that clean state. Anything handed to the workers travels by pickle: module-level
functions, and state as task or ``initargs`` values, never globals set in the parent.

:func:`run_processes` runs a function over work items on such workers, the calling thread
taking items itself until they are up; :func:`mp_context` gives the context, for a pool of
one's own. Plugins reach both through :class:`modelbuild.weights.TransformContext`.

The server is multiprocessing's own (``multiprocessing.forkserver``), shared with anything
else in the process that uses that start method. Its preload list is fixed when it starts:
modules declared later are imported by each worker that needs them (slower, still safe). The
build declares every transform's modules before its first step (``Solver``); a plugin used on
its own (tests, benchmarks) passes its modules to :func:`mp_context`.

Where ``forkserver`` does not exist (Windows) the ``spawn`` method is used: each worker
starts a fresh interpreter and imports what it needs.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

T = TypeVar("T")
R = TypeVar("R")

# Imported first by the server: one BLAS/OpenMP thread, so that it forks single-threaded.
BOOT_MODULE = "modelbuild._forkserver_boot"

_lock = threading.Lock()
_declared: dict[str, None] = {}  # module names to preload, in declaration order
_started = False  # the preload list was handed to multiprocessing and the server launched


def declare(modules: Iterable[str]) -> None:
    """Add *modules* (dotted names) to what the forkserver imports before it forks workers.

    Effective until the server starts; harmless after. A module that is not installed is
    skipped (``ImportError``); one that fails otherwise stops the server, so declare only
    modules that import cleanly.
    """
    with _lock:
        for name in modules:
            _declared.setdefault(str(name), None)


def preload() -> list[str]:
    """The modules the forkserver imports (or would import, were it started now), in order."""
    with _lock:
        return [BOOT_MODULE, __name__, *_declared]


def mp_context(modules: Iterable[str] = ()) -> BaseContext:
    """A multiprocessing context whose processes start from the forkserver.

    *modules* are :func:`declare`\\ d first. The server is launched now when it is not
    running (it imports while the caller goes on planning), and reused by every later call.
    Pass the result as ``mp_context=`` to :class:`concurrent.futures.ProcessPoolExecutor`,
    or call ``.Pool(…)`` / ``.Process(…)`` on it.
    """
    import multiprocessing

    declare(modules)
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver

    global _started
    context = multiprocessing.get_context("forkserver")
    with _lock:
        if not _started:
            # the server's own list; '__main__' is left out on purpose: importing the main
            # script first could start threads (numpy's) before BOOT_MODULE limits them
            forkserver.set_forkserver_preload([BOOT_MODULE, __name__, *_declared])
            _started = True
    forkserver.ensure_running()  # locked inside; relaunches a server that died
    return context


def run_processes(fn: Callable[[T], R], items: Sequence[T], on_done: Callable[[T, R], None], *, jobs: int,
                  preload: Iterable[str] = (), timeout: float | None = None,
                  stalled: Callable[[Callable[[T], R]], Exception] | None = None) -> None:
    """Call ``fn(item)`` for every item on up to *jobs* worker processes; ``on_done(item,
    result)`` runs in the calling thread as each finishes (in no particular order).

    *fn* must be a module-level function, and items and results picklable. Items are handed
    out from the front of the list: put the big ones first. Until the workers are up (the
    forkserver's first start costs an interpreter and its imports), the calling thread runs
    items itself, from the back of the list, so *fn* must also be safe to call here. A
    worker's exception is raised here; the workers are then stopped. So is *stalled(fn)*,
    given with a *timeout*, when no worker finishes an item within *timeout* seconds (the
    executor's ``item_timeout``); items the calling thread runs while the workers start are
    not bounded.
    """
    pending = deque(items)
    if jobs <= 1 or len(pending) <= 1:
        for item in pending:
            on_done(item, fn(item))
        return
    context = mp_context(preload)
    processes = min(jobs, len(pending))
    started: list[Any] = []  # the pool, or the exception that stopped it from starting
    ready = threading.Event()

    def start() -> None:
        try:
            started.append(context.Pool(processes))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            started.append(exc)
        finally:
            ready.set()

    starter = threading.Thread(target=start, name="modelbuild-workers", daemon=True)
    starter.start()
    try:
        while pending and not ready.is_set():
            item = pending.pop()
            on_done(item, fn(item))
    except BaseException:
        starter.join()
        if not isinstance(started[0], BaseException):
            started[0].terminate()
        raise
    starter.join()
    if isinstance(started[0], BaseException):
        raise started[0]
    rest = list(pending)
    with started[0] as pool:  # leaving the block early terminates the workers
        results = pool.imap_unordered(_call, [(fn, i, item) for i, item in enumerate(rest)])
        bound = timeout if stalled is not None else None
        for _ in rest:
            try:
                index, result = results.next(bound)
            except context.TimeoutError:
                assert stalled is not None  # only waited for with a bound
                raise stalled(fn) from None
            on_done(rest[index], result)
        pool.close()
        pool.join()


def _call(task: tuple[Callable[[Any], Any], int, Any]) -> tuple[int, Any]:
    fn, index, item = task
    return index, fn(item)
