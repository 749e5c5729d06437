"""Executors, from the core's side: the built-in ``local`` one, ``--executor`` parsing, and
the build's executor, opened on first use (:class:`BuildExecutor`).

A build opens one executor session and hands it to each transform's
:class:`~modelbuild.weights.TransformContext`: ``run_processes`` maps its items through it;
with a remote executor, large input files are hashed through it too (ops/files.py). The
contract is :mod:`modelbuild.api._executors`; the ``ray`` plugin is the remote one; what a
remote worker runs around each item is :mod:`modelbuild.dataplane`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelbuild.errors import UsageError

if TYPE_CHECKING:
    from modelbuild.api._executors import Executor, ExecutorSession, ExecutorSetup
    from modelbuild.dataplane import Marker

DEFAULT = "local"
# Steps at once for a build whose executor is not local and that was given no -j: each large
# input's hash is an item on a node, so the driver's cores no longer bound how many files
# hash at once (docs/scale.md; -j sets it, for a larger cluster)
REMOTE_STEPS = 16


class LocalExecutor:
    """Work items on worker processes of this machine (:mod:`modelbuild.workers`), at most
    ``-j`` at once: what every build did before executors were a plugin kind."""

    name = "local"
    summary = "work items on worker processes of this machine, -j at a time (the default)"

    def open(self, setup: ExecutorSetup) -> LocalSession:
        if setup.address:
            raise UsageError(f"--executor local takes no address (got local://{setup.address})",
                             hint="a cluster is another executor: --executor ray://HOST:PORT")
        return LocalSession(setup)


class LocalSession:
    name = "local"
    nodes = 1

    def __init__(self, setup: ExecutorSetup) -> None:
        self.slots = max(1, setup.jobs)
        self._setup = setup

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], on_done: Callable[[Any, Any], None], *,
            jobs: int | None = None, preload: Iterable[str] = ()) -> None:
        from modelbuild.workers import run_processes

        run_processes(fn, items, on_done, jobs=self.slots if jobs is None else max(1, jobs), preload=preload,
                      timeout=self._setup.item_timeout, stalled=self._setup.stalled)

    def prepare(self, preload: Iterable[str]) -> None:
        from modelbuild.workers import mp_context

        mp_context(preload)  # the forkserver starts importing while the transform plans

    def close(self) -> None:
        pass


ITEM_TIMEOUT_S = 3600.0  # MODELBUILD_ITEM_TIMEOUT's default: a 40 GB GGUF hashed on a slow NFS node fits


def item_timeout() -> float | None:
    """``MODELBUILD_ITEM_TIMEOUT``: how long a map waits for the next running item to finish
    (seconds; 0 for no bound), the one reading of that setting. A bad value is a usage error."""
    from modelbuild.limits import env_number

    seconds = env_number("MODELBUILD_ITEM_TIMEOUT", ITEM_TIMEOUT_S, integer=False, zero_ok=True)
    return seconds or None


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
        self._item_timeout = item_timeout()  # read now: a bad value is a usage error before any work
        self._session: ExecutorSession | None = None
        self._marker: Marker | None = None
        self._lock = threading.Lock()
        self._early: threading.Thread | None = None
        self._early_error: BaseException | None = None
        self._driver_file = threading.Lock()  # held for good by the one file the driver hashes (below)

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

    def hash_here_while_connecting(self) -> bool:
        """Whether a large file that would hash on a node hashes on this machine instead:
        True for one file per build, asked for while the remote executor is still opening
        (importing its client, connecting, starting a worker on each node: 2–3 s). The
        driver would sit idle through that wait, and the file's hash waits on it; a build
        of one large input (a GGUF to quantize) gets its hash for free. Never more than one:
        a large model's other files hash on the nodes, which read them in parallel, rather
        than queue on the driver's disk or link."""
        if not self.remote or self._session is not None or self._early is None:
            return False
        return self._driver_file.acquire(blocking=False)

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
                from modelbuild.dataplane import Marker

                jobs, store, context, log = self._args
                self._marker = Marker.create(store, context)
                setup = ExecutorSetup(address=self.choice.address, jobs=jobs, store=store, context=context, log=log,
                                      marker=self._marker, item_timeout=self._item_timeout)
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
