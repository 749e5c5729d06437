"""The solver: runs a build graph in dependency order, through the cache.

For each step, in a thread pool bounded by ``-j``:

1. its op computes the cache key from the step definition and its inputs' results;
2. a hit whose blobs are still in the store, and pass the store's cheap check (exact size,
   read-only: :meth:`modelbuild.store.Store.check_blob`), is CACHED without running
   anything; a damaged blob is removed, named in a warning, and the step runs again;
3. otherwise the step runs under a lock on its key — a thread lock within this process and
   an ``flock`` across processes — and the cache is checked once more inside the lock, so
   identical work started by two builds at once is done once;
4. the result is recorded in the index only after its blobs are in the store.

With ``--cache-from`` (``remote``, a :class:`modelbuild.cache.CacheImporter`), a
local miss asks the imported cache records before running; such a hit is CACHED too. Its
blobs may be fetched only once a step that reads them runs; if one turns out corrupt then,
the solve starts again without that entry (:class:`StaleImport`). Every keyed step's key and
result are kept in ``keyed``, for ``--cache-to``.

The first failure stops scheduling; steps already running finish, and the error names the
step that failed.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

from modelbuild.errors import BuildError, ModelbuildError
from modelbuild.graph import BuildGraph
from modelbuild.ops import CORE_OPS, ExecEnv, Op, Outcome, StepContext
from modelbuild.progress import Event


class Solver:
    def __init__(self, graph: BuildGraph, env: ExecEnv, *, jobs: int = 2, ops: dict[str, Op] | None = None,
                 remote: Any = None) -> None:
        self.graph = graph
        self.env = env
        self.jobs = max(1, jobs)
        self.ops = ops or CORE_OPS
        self.remote = None if env.no_cache else remote
        self.number = {sid: i + 1 for i, sid in enumerate(graph.order)}
        self.results: dict[str, Any] = {}  # step id → typed result (modelbuild.results)
        self.keyed: dict[str, tuple[Op, str, dict[str, Any]]] = {}  # step id → (op, key, stored result)

    def solve(self) -> dict[str, Any]:
        """Every step's typed result, by step id."""
        self._declare_worker_modules()
        if self.remote is None:
            return self._solve()
        from modelbuild.cache import StaleImport

        while True:
            try:
                return self._solve()
            except StaleImport as exc:  # the entry is rejected now: each retry has one fewer
                self.env.emitter.warn(f"{exc}; solving again without it")
                self.results, self.keyed = {}, {}
                self.env.stats.resolve_again()

    def _declare_worker_modules(self) -> None:
        """Declare the modules the steps' worker processes import, before any step runs.

        Transform plugins start their workers from one forkserver per process
        (:mod:`modelbuild.workers`), which imports its preload list once, when the first
        transform starts it. An op whose steps use workers says which modules through
        ``worker_modules(step, env)`` (a transform: its plugin's ``worker_modules``).
        """
        declared: list[str] = []
        for sid in self.graph.order:
            step = self.graph.step(sid)
            modules = getattr(self.ops.get(step.op), "worker_modules", None)
            if modules is not None:
                declared.extend(modules(step, self.env))
        if declared:
            from modelbuild import workers

            workers.declare(declared)

    def _solve(self) -> dict[str, Any]:
        remaining = {sid: len(self.graph.deps[sid]) for sid in self.graph.order}
        ready = [sid for sid in self.graph.order if remaining[sid] == 0]
        running: set[str] = set()
        failure: BaseException | None = None
        pool = _StepThreads(self.jobs, self._run_step)
        try:
            while ready or running:
                # submit no more than the pool runs at once, so that a failure stops what is
                # not started yet rather than leaving it queued in the pool
                while ready and failure is None and len(running) < self.jobs:
                    sid = ready.pop(0)
                    running.add(sid)
                    pool.submit(sid, in_flight=len(running))
                if not running:
                    break
                for sid, result, exc in sorted(pool.finished(), key=lambda d: self.number[d[0]]):
                    running.discard(sid)
                    if exc is not None:
                        failure = failure or exc
                        continue
                    self.results[sid] = result
                    for succ in self.graph.successors(sid):
                        remaining[succ] -= 1
                        if remaining[succ] == 0:
                            ready.append(succ)
                    ready.sort(key=lambda s: self.number[s])
        finally:
            pool.close()  # the steps still running finish first
        if failure is not None:
            raise failure
        return self.results

    def _run_step(self, sid: str) -> Any:
        step = self.graph.step(sid)
        number = self.number[sid]
        op = self.ops[step.op]
        inputs = [self.results[d] for d in self.graph.deps[sid]]
        emit = self.env.emitter.emit
        started = time.monotonic()
        try:
            result = self._execute(op, step, number, inputs, started)
            result = op.finalize(result, inputs, self.env)
            for warning in getattr(result, "warnings", ()):
                self.env.emitter.warn(warning)
            return result
        except ModelbuildError as exc:
            emit(Event("error", number, step.label, message=exc.render()))
            raise
        except OSError as exc:
            emit(Event("error", number, step.label, message=str(exc)))
            raise BuildError(f"{step.label}: {exc.strerror or exc}") from exc

    def _execute(self, op: Op, step: Any, number: int, inputs: list[Any], started: float) -> Any:
        """The step's result: from the cache when its key hits, else by running it.

        Results are typed in flight and JSON at rest: a hit is decoded, a new result is
        stored as ``to_json()``, and ``keyed`` keeps the stored form for ``--cache-to``.
        """
        emit = self.env.emitter.emit
        key = op.key(step, inputs, self.env)
        if key is not None:
            hit, note = self._lookup(op, key), None
            if hit is None and self.remote is not None:
                stored, note = self.remote.lookup(op, key, step, number) or (None, None)
                hit = (op.decode(stored), stored) if stored is not None else None
            if hit is not None:
                self.keyed[step.id] = (op, key, hit[1])
                self._cached(number, step.label)
                if note:
                    emit(Event("log", number, step.label, message=note))
                return hit[0]
            emit(Event("start", number, step.label))
            with self.env.locks.hold(key):
                hit = self._lookup(op, key)
                if hit is not None:
                    emit(Event("log", number, step.label, message="done by a concurrent build"))
                    emit(Event("done", number, step.label, duration=time.monotonic() - started))
                    self.env.stats.add(steps_cached=1)
                    self.keyed[step.id] = (op, key, hit[1])
                    return hit[0]
                self._materialize(inputs)
                self.env.work_starts(op)
                outcome = op.run(step, inputs, StepContext(self.env, number, step))
                stored = outcome.result.to_json()
                self.env.cache.set_step(key, stored)
            self.keyed[step.id] = (op, key, stored)
            self._done(number, step, started)
            return outcome.result
        self._materialize(inputs)
        outcome = self._run_unkeyed(op, step, inputs, number)
        if not outcome.cached:
            self._done(number, step, started)
        return outcome.result

    def _run_unkeyed(self, op: Op, step: Any, inputs: list[Any], number: int) -> Outcome:
        """Run a step that has no key; announce it only once it turns out to do work."""
        ctx = _LazyStartContext(self.env, number, step)
        ctx.on_work = lambda: self.env.work_starts(op)
        outcome = op.run(step, inputs, ctx)
        if not outcome.cached and not ctx.announced:
            self.env.emitter.emit(Event("start", number, step.label))
        elif outcome.cached:
            self.env.emitter.emit(Event("cached", number, step.label))
            self.env.stats.add(steps_cached=1)
        return outcome

    def _materialize(self, inputs: list[Any]) -> None:
        """Fetch the imported blobs the inputs reference, before a step reads them."""
        if self.remote is not None:
            self.remote.materialize([i.to_json() for i in inputs])

    def _lookup(self, op: Op, key: str) -> tuple[Any, dict[str, Any]] | None:
        """(typed result, stored form) from the local step index, if its blobs are sound;
        an entry that does not decode (a damaged index) is a miss."""
        if self.env.no_cache:
            return None
        stored = self.env.cache.get_step(key)
        if stored is None or not op.valid(stored, self.env):
            return None
        try:
            return op.decode(stored), stored
        except ValueError:
            return None

    def _cached(self, number: int, label: str) -> None:
        self.env.emitter.emit(Event("cached", number, label))
        self.env.stats.add(steps_cached=1)

    def _done(self, number: int, step: Any, started: float) -> None:
        self.env.stats.add(steps_run=1, executed=step.id)
        self.env.emitter.emit(Event("done", number, step.label, duration=time.monotonic() - started))


class _LazyStartContext(StepContext):
    """Emits the step's start event on its first progress report, so a step that turns out
    to be cached (a digest answered by the stat cache) shows as CACHED, never as started."""

    announced = False
    on_work: Any = None  # called once, as the step turns out to do work

    def _announce(self) -> None:
        with self._lock:  # once, and before any thread's first progress event
            if not self.announced:
                self.announced = True
                self.env.emitter.emit(Event("start", self.number, self.step.label))
                if self.on_work is not None:
                    self.on_work()

    def set_total(self, total: int, unit: str = "bytes") -> None:
        self._announce()
        super().set_total(total, unit)

    def advance(self, n: int) -> None:
        self._announce()
        super().advance(n)

    def log(self, message: str) -> None:
        self._announce()
        super().log(message)


class _StepThreads:
    """The solver's threads (``-j`` of them at most, started as steps are submitted): what a
    ``ThreadPoolExecutor`` did here, without importing :mod:`concurrent.futures` (and
    :mod:`logging`) on every build, a no-op rebuild included. A step's exception, whatever
    it is, is handed back with its step id, as a future would hold it."""

    def __init__(self, size: int, run: Callable[[str], Any]) -> None:
        self._size = size
        self._run = run
        self._tasks: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[str, Any, BaseException | None]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def submit(self, sid: str, *, in_flight: int) -> None:
        self._tasks.put(sid)
        if len(self._threads) < min(self._size, in_flight):  # no idle thread: start one
            thread = threading.Thread(target=self._work, name=f"step_{len(self._threads)}")
            thread.start()
            self._threads.append(thread)

    def finished(self) -> list[tuple[str, Any, BaseException | None]]:
        """The steps that finished: waits for one, then takes every other one done meanwhile."""
        done = [self._done.get()]
        while True:
            try:
                done.append(self._done.get_nowait())
            except queue.Empty:
                return done

    def close(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (sid := self._tasks.get()) is not None:
            try:
                result = self._run(sid)
            except BaseException as exc:  # noqa: BLE001 - handed to the solver, which raises it
                self._done.put((sid, None, exc))
            else:
                self._done.put((sid, result, None))
