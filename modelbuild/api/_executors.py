"""Executors: where a build's work items run (plugin API 1.4).

The solver keeps the graph, the cache, the locks and the progress stream on the machine that
runs ``modelbuild build`` (the driver), as BuildKit's solver does. What it hands out is the
*work* inside a step that a plugin has already split into independent, idempotent items: a
quantize or cast becomes items over tensor row ranges (``TransformContext.run_processes``).
An executor runs those items: on worker processes of this machine (the built-in ``local``),
or on the nodes of a cluster (the ``ray`` plugin).

Items name their inputs and outputs by path inside the build's store (``ExecutorSetup.store``)
and the build context, and write their output bytes at fixed offsets of a file the step
created there: an item run twice, or on another node, writes the same bytes to the same
place, so a retried item never changes a digest. That is the data plane: a remote executor
needs every node to see the store and the context at the same paths (a shared filesystem;
docs/scale.md), and says so in one line when a node does not, before any item runs there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from modelbuild.dataplane import Marker, Work


@dataclass(frozen=True, slots=True)
class ExecutorSetup:
    """What the core tells an executor when a build opens it.

    ``address``: what followed ``NAME://`` in ``--executor`` (``ray://10.0.0.5:10001`` gives
    ``"10.0.0.5:10001"``), or None for a bare ``--executor NAME``; the executor reads its own
    default (``RAY_ADDRESS``) then. ``jobs``: the build's ``-j``, the local CPU budget.
    ``store``: the root of the build's store, which holds every blob by digest and the
    directories transforms write in; ``context``: the build context's directory (None for a
    build without one). ``log``: one line for the build's progress output. ``marker``: a
    file under the store that only this build wrote, by which a worker proves it sees the
    same store (the core removes it after the build). ``item_timeout`` (since 1.5): the
    longest ``map`` waits for the next of its running items to finish, in seconds, or None
    for no bound (``MODELBUILD_ITEM_TIMEOUT``; 0 there); past it, ``map`` stops the items in
    flight and raises :meth:`stalled`.
    """

    address: str | None
    jobs: int
    store: Path
    context: Path | None
    log: Callable[[str], None]
    marker: Marker
    item_timeout: float | None = None

    def stalled(self, fn: Callable[[Any], Any]) -> Exception:
        """The one-line error ``map`` raises when none of its running items of *fn* finished
        within ``item_timeout`` seconds (an item stuck in a plugin, or a node that hangs
        without dying), after stopping them."""
        from modelbuild.errors import BuildError

        return BuildError(f"no work item of {getattr(fn, '__name__', 'a transform')} finished in "
                          f"{self.item_timeout:g} s: the items in flight were stopped",
                          hint="an item is stuck, or takes longer here: MODELBUILD_ITEM_TIMEOUT=SECONDS raises "
                               "the bound (0: none)")

    def work(self, fn: Callable[[Any], Any]) -> Work:
        """*fn* packed for a remote worker: send the :class:`~modelbuild.api.Work` with each
        item, and call ``work.run(item, node)`` there. It checks, once per worker process,
        that the node sees this build's store and context and runs the same code, runs the
        item, and closes the files it left open under the build's home and context. A
        function's first item in a worker process runs in a clean thread; a function whose
        items keep files open (per thread) gets a clean thread for every item, one whose
        items close what they open runs the later ones in the calling thread, which is
        faster (:meth:`Work.run`)."""
        from modelbuild.dataplane import Work

        return Work.prepare(fn, self.marker)


@runtime_checkable
class ExecutorSession(Protocol):
    """An executor opened for one build: ``map`` may be called many times (once per
    transform, and once per large input file a remote executor hashes: one item, of the
    core's ``hash_on_node``), from the build's step threads, several threads at once, one
    call at a time per thread.

    ``slots``: how many items may run at once (a cluster's CPUs); transforms split their work
    into at least that many items. ``nodes``: how many machines run items (1 for ``local``).
    """

    name: str
    slots: int
    nodes: int

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], on_done: Callable[[Any, Any], None], *,
            jobs: int | None = None, preload: Iterable[str] = ()) -> None:
        """Call ``fn(item)`` for every item, at most *jobs* (default ``slots``) at once, and
        ``on_done(item, result)`` in the calling thread as each finishes, in any order.

        *fn* is a module-level function (sent by reference), items and results are pickled:
        paths and offsets, never data. A remote executor runs each item through
        ``setup.work(fn).run(item)`` on its worker. *preload*: modules *fn* needs, for an executor that
        can import them before the first item. An item whose worker or node is lost is run
        again elsewhere; an item that raises fails the call with that exception (a
        ``ModelbuildError`` unchanged), once the items in flight are stopped; so does
        ``setup.stalled(fn)`` when no running item finishes within ``setup.item_timeout``.
        Returns when every item is done.
        """
        ...

    def prepare(self, preload: Iterable[str]) -> None:
        """Start the workers the next ``map`` will use and have them import *preload*, while
        the transform plans its items (``TransformContext.prepare``); return at once. An
        executor with nothing to start does nothing."""
        ...

    def close(self) -> None:
        """Release what ``open`` took (a cluster connection). Called once, after the build."""
        ...


@runtime_checkable
class Executor(Protocol):
    """A kind of executor, registered by ``modelbuild_register_executors`` and chosen with
    ``build --executor NAME[://ADDRESS]``.

    ``name``: what ``--executor`` names; ``summary``: one line for ``modelbuild plugins``.
    ``open(setup)`` connects (a cluster is reached here, and a failure is a ``BuildError``
    saying how to start one) and returns the :class:`ExecutorSession` for the build.
    """

    name: str
    summary: str

    def open(self, setup: ExecutorSetup) -> ExecutorSession: ...


__all__ = ["Executor", "ExecutorSession", "ExecutorSetup"]
