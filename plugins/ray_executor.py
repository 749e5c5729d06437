"""The ``ray`` executor: a build's work items on the nodes of a Ray cluster (docs/scale.md).

``build --executor ray`` connects to the cluster ``RAY_ADDRESS`` names (``HOST:PORT`` of its
GCS, or ``auto``: the cluster this machine belongs to); ``--executor ray://HOST:PORT`` goes
through Ray Client. The build's solver, cache and store stay on the driver: what runs on the
nodes are a transform's items (tensor row ranges of a quantize, cast or convert), one Ray
task each (``num_cpus=1``, spread over the nodes). Each task runs its item through
``ExecutorSetup.work(fn).run(item)``: the node must see the build's store and context at
the same paths, and run the same code.

Faults are Ray's task retries: a task whose worker or node dies is run again elsewhere
(``max_retries``). An item writes the same bytes at the same offsets each time it runs, so
a retry never changes a digest. An exception raised by the item itself is not retried: it
fails the build, as it would locally.

Ray is imported only when a build opens this executor (``pip install 'modelbuild[ray]'``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from modelbuild.api import BuildError, ExecutorSetup, UsageError, hookimpl

CONNECT_TIMEOUT_S = 5.0
MAX_RETRIES = 4  # runs of one item lost to a dead worker or node, before the build fails
WARM_UP_S = 30.0  # the longest a transform waits for the nodes' first workers to start
WINDOW = 4  # tasks submitted per slot: enough to keep every node busy while results come back


def _warm(modules: Sequence[str]) -> str:
    """Start a worker process on a node and import what the items will need there, while
    the build does something else: a node whose workers are up takes its share of the first
    items instead of leaving them to the node that was quicker."""
    import importlib

    import ray

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    return ray.get_runtime_context().get_node_id()


def _run_item(work: Any, item: Any) -> tuple[str, Any]:
    """One Ray task: the item, on whichever node Ray chose; returns (node id, result)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return node, work.run(item, node[:12])


class RayExecutor:
    name = "ray"
    summary = "work items on the nodes of a Ray cluster (RAY_ADDRESS, or ray://HOST:PORT)"

    def open(self, setup: ExecutorSetup) -> RaySession:
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray installed where modelbuild runs",
                             hint="pip install 'modelbuild[ray]'") from None
        address = f"ray://{setup.address}" if setup.address else os.environ.get("RAY_ADDRESS") or "auto"
        owned = not ray.is_initialized()
        if owned:
            _reachable(address)
            try:
                ray.init(address=address, namespace="modelbuild", log_to_driver=False,
                         logging_level=logging.ERROR, configure_logging=True)
            except Exception as exc:  # noqa: BLE001 - ConnectionError, and whatever Ray client raises
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise BuildError(f"cannot reach a Ray cluster at {address}: {first}",
                                 hint="start one with `ray start --head`, and set RAY_ADDRESS or use "
                                      "--executor ray://HOST:PORT") from None
        return RaySession(ray, setup, address, owned)


class RaySession:
    name = "ray"

    def __init__(self, ray: Any, setup: ExecutorSetup, address: str, owned: bool) -> None:
        self._ray = ray
        self._setup = setup
        self._owned = owned
        alive = [n for n in ray.nodes() if n.get("Alive")]
        self.nodes = max(1, len(alive))
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._task = ray.remote(_run_item)
        self.items_by_node: Counter[str] = Counter()
        self._restore = _messages_to_log(setup.log)
        self._alive = alive
        self._lock = threading.Lock()  # map runs from several step threads at once (hashes, transforms)
        self._warming = self._warm_up(("modelbuild.api",))
        setup.log(f"ray cluster at {address}: {self.nodes} node(s), {self.slots} CPU(s)")

    def prepare(self, preload: Iterable[str]) -> None:
        """Have a worker on every node import the transform's modules while it plans."""
        started = self._warm_up(tuple(preload))
        with self._lock:
            self._warming += started

    def _warm_up(self, modules: Sequence[str]) -> list[Any]:
        """One warm-up task per CPU of each node, pinned there (softly: a node that is gone
        is not waited for)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        warm = self._ray.remote(_warm)
        return [warm.options(num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=True))
                .remote(tuple(modules))
                for node in self._alive for _ in range(max(1, int(node.get("Resources", {}).get("CPU", 1))))]

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], on_done: Callable[[Any, Any], None], *,
            jobs: int | None = None, preload: Iterable[str] = ()) -> None:
        ray = self._ray
        with self._lock:
            warming = list(self._warming)
        if warming:  # started at open; usually done by now. Every map waits, so none finds the CPUs taken
            ray.wait(warming, num_returns=len(warming), timeout=WARM_UP_S)
            with self._lock:
                self._warming = [ref for ref in self._warming if ref not in warming]
        work = ray.put(self._setup.work(fn))  # shipped once, not with every item
        # named for the item's function: what the dashboard and the state API list
        task = self._task.options(name=getattr(fn, "__name__", "item"), num_cpus=1, max_retries=MAX_RETRIES,
                                  retry_exceptions=False, scheduling_strategy="SPREAD")
        window = max(1, jobs or self.slots) * WINDOW
        pending = deque(range(len(items)))
        running: dict[Any, int] = {}
        counts: Counter[str] = Counter()
        try:
            while pending or running:
                while pending and len(running) < window:
                    index = pending.popleft()
                    running[task.remote(work, items[index])] = index
                done, _ = ray.wait(list(running), num_returns=1, timeout=self._setup.item_timeout)
                if not done:  # nothing finished in item_timeout: stuck items, or a node that hangs
                    for ref in running:
                        ray.cancel(ref, force=True)  # kills their workers: a stuck item never returns
                    running.clear()
                    raise self._setup.stalled(fn)
                for ref in done:
                    index = running.pop(ref)
                    node, result = self._result(ref)
                    counts[node] += 1
                    on_done(items[index], result)
        except BaseException:
            for ref in running:
                ray.cancel(ref, force=False)
            raise
        with self._lock:
            self.items_by_node.update(counts)
        if len(items) == 1:  # a file's hash: one line per file would only repeat the step's
            return
        spread = ", ".join(f"{node[:12]}: {n}" for node, n in counts.most_common())
        self._setup.log(f"ray: {sum(counts.values())} items on {len(counts)} node(s) ({spread})")

    def _result(self, ref: Any) -> tuple[str, Any]:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the item raised: its own exception, as locally
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise BuildError(f"a work item failed on the Ray cluster: {_first_line(exc)}") from None
        except ray.exceptions.RayError as exc:  # lost worker or node, MAX_RETRIES times over
            raise BuildError(f"a work item was lost on the Ray cluster {MAX_RETRIES + 1} times: {_first_line(exc)}",
                             hint="check the cluster's nodes (`ray status`)") from None

    def close(self) -> None:
        try:
            if self._owned and self._ray.is_initialized():
                self._ray.shutdown()
        finally:
            self._restore()


def _messages_to_log(log: Callable[[str], None]) -> Callable[[], None]:
    """Send what Ray's driver prints about the cluster (a node's raylet died, …) to the
    build's log, one line each, instead of standard output, which carries the build's result
    (the digest, ``--json``). Ray prints them from a thread of its own through
    ``ray._private.worker.print_to_stdstream``, whatever ``log_to_driver`` says; without
    that name (another Ray), nothing is changed. Returns what puts it back."""
    import ray._private.worker as driver

    original = getattr(driver, "print_to_stdstream", None)
    if original is None:
        return lambda: None

    def forward(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        lines = [line.strip() for line in data.get("lines", ()) if str(line).strip()]
        if lines:
            log(f"ray ({data.get('pid', '?')}): {lines[0][:400]}")

    driver.print_to_stdstream = forward

    def restore() -> None:
        driver.print_to_stdstream = original

    return restore


def _reachable(address: str) -> None:
    """Fail in one line, within seconds, when nothing listens at a HOST:PORT address: Ray's own
    client retries a GCS that is not there for minutes."""
    import socket

    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", or an address Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise BuildError(f"cannot reach a Ray cluster at {address}: {exc.strerror or exc}",
                         hint="start one with `ray start --head`, and set RAY_ADDRESS or use "
                              "--executor ray://HOST:PORT") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@hookimpl
def modelbuild_register_executors(registry: Any) -> None:
    registry.add(RayExecutor())
