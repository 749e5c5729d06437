"""The step-execution environment shared by every op: stats, context, the Op base class.

An op computes its step's cache key from the step's definition and its inputs' content
digests (``key``), does the work (``run``), says whether a cached result is still usable
(``valid``: its blobs are still in the store and pass :meth:`ExecEnv.blob_ok`, the cheap
check, so a damaged blob makes the step run again rather than show CACHED), and
re-attaches what a cached result cannot carry (``finalize``: local paths). Ops never
print: progress goes out as events.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelbuild.graph import Step
from modelbuild.progress import Emitter, Event

if TYPE_CHECKING:
    from modelbuild.cache import BuildCache
    from modelbuild.executors import BuildExecutor
    from modelbuild.locks import KeyLocks
    from modelbuild.oci.stream import SourceBlobs
    from modelbuild.plugins import PluginHost
    from modelbuild.store import Store

@dataclass
class Stats:
    """What a build did, reported in ``--json`` output and asserted by tests."""

    steps_run: int = 0
    steps_cached: int = 0
    bytes_hashed: int = 0
    bytes_written: int = 0
    files_hashed: list[str] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    imported: list[str] = field(default_factory=list)  # steps whose result came from --cache-from
    bytes_imported: int = 0  # downloaded from --cache-from
    blobs_exported: int = 0  # uploaded (or copied) by --cache-to: blobs the cache did not have yet
    bytes_exported: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: Any) -> None:
        with self._lock:
            for name, value in counts.items():
                current = getattr(self, name)
                if isinstance(current, list):
                    current.append(value)
                else:
                    setattr(self, name, current + value)

    def resolve_again(self) -> None:
        """Forget which steps ran or hit the cache: the solver is starting over (the byte
        counts stay: that work was done)."""
        with self._lock:
            self.steps_run = self.steps_cached = 0
            self.executed, self.imported = [], []

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps_run": self.steps_run,
            "steps_cached": self.steps_cached,
            "bytes_hashed": self.bytes_hashed,
            "bytes_written": self.bytes_written,
            "files_hashed": sorted(self.files_hashed),
            "executed": sorted(self.executed),
            "imported": sorted(self.imported),
            "bytes_imported": self.bytes_imported,
            "blobs_exported": self.blobs_exported,
            "bytes_exported": self.bytes_exported,
        }


@dataclass
class ExecEnv:
    store: "Store"
    cache: "BuildCache"
    host: "PluginHost"
    emitter: Emitter
    stats: Stats = field(default_factory=Stats)
    no_cache: bool = False
    jobs: int = 1
    # where work items run (--executor): a transform's row ranges, a large file's hash;
    # None: this machine's worker processes
    executor: "BuildExecutor | None" = None
    # a build whose large raw layers stream to a registry (--push): the source files it
    # found, by digest (modelbuild.oci.stream); None: every layer goes into the store
    sources: "SourceBlobs | None" = None
    locks: "KeyLocks" = field(init=False)

    def __post_init__(self) -> None:
        from modelbuild.locks import KeyLocks

        self.locks = KeyLocks(self.store.root / "locks")

    def work_starts(self, op: "Op") -> None:
        """A step of *op* is about to do work (it is not cached): what the rest of the build
        will need starts getting ready in the background. Today that is a remote executor's
        connection and workers, when the step will hand it items or is hashing a changed
        input (``Op.prepares_executor``); a build whose steps are all cached never connects."""
        if op.prepares_executor and self.executor is not None:
            self.executor.start_early()

    def blob_ok(self, digest: str, size: int) -> bool:
        """Whether a blob a result names may be reused as it is (:meth:`Store.check_blob`):
        one found damaged is removed, and a warning names it, so the step runs again."""
        return self.store.check_blob(digest, size,
                                     on_damage=lambda line: self.emitter.warn(f"{line}: the step runs again"))


class StepContext:
    """What an op sees while it runs: the environment and a progress reporter.

    ``set_total`` and ``advance`` may be called from any thread (a plugin's worker threads
    report as their items finish); each becomes a progress event, throttled by the Emitter."""

    def __init__(self, env: ExecEnv, number: int, step: Step) -> None:
        self.env = env
        self.number = number
        self.step = step
        self.current = 0
        self.total: int | None = None
        self.unit = "bytes"
        self._lock = threading.Lock()

    def set_total(self, total: int, unit: str = "bytes") -> None:
        """The work the step will do, in *unit* (``bytes``, ``params``, ``tensors``…):
        shown at once, so the bar has its size before the first item is done."""
        with self._lock:
            self.total, self.unit = total, unit
            self._emit()

    def advance(self, n: int) -> None:
        with self._lock:
            self.current += n
            self._emit()

    def _emit(self) -> None:
        # under the lock: counts go out in the order they were reached, never a smaller one last
        self.env.emitter.emit(Event("progress", self.number, self.step.label, self.current, self.total,
                                    unit=self.unit))

    def log(self, message: str) -> None:
        self.env.emitter.emit(Event("log", self.number, self.step.label, message=message))


def plugin_identity(registry: Any, name: str, env: ExecEnv) -> dict[str, Any]:
    """What of a registry entry (a format, a quantizer, a layer codec…) enters a cache key:
    its name and version, its plugin and the plugin's version. Read from the plugin catalog
    where it recorded them, so that computing the key of a cached step imports no plugin."""
    if name not in registry.names():
        registry.get(name)  # unknown: the one-line error, with a "did you mean"
    owner = registry.owner(name)
    return {"name": name, "version": registry.peek(name, "version"), "plugin": owner,
            "plugin_version": env.host.plugin_version(owner)}


@dataclass
class Outcome:
    result: Any  # a typed result (modelbuild.results)
    cached: bool = False


class Op:
    """What one kind of step does.

    In flight, results are typed values (:mod:`modelbuild.results`): ``key``, ``run`` and
    ``finalize`` receive and return them. At rest (the step index, ``--cache-to`` records) a
    result is its JSON form: ``decode`` reads it back, and ``valid`` / ``blobs`` answer for
    a stored result whether it is still usable and which store blobs it needs, before it is
    used. A stored result that does not decode is a miss, never an error.
    """

    name = ""
    # Whether the step's result is part of the artifact (layers, config, manifest, index):
    # ``--cache-to …,mode=min`` exports only these steps, ``mode=max`` every keyed step.
    exported = False
    result_type: Any = None  # the results class whose from_json decodes a stored result
    # Whether a step of this kind that runs (not cached) means the build's executor will be
    # needed: a remote one then opens in the background (ExecEnv.work_starts)
    prepares_executor = False

    def key(self, step: Step, inputs: list[Any], env: ExecEnv) -> str | None:
        """The step's cache key, or None for a step that always runs (it is cheap)."""
        return None

    def run(self, step: Step, inputs: list[Any], ctx: StepContext) -> Outcome:
        raise NotImplementedError

    def decode(self, stored: dict[str, Any]) -> Any:
        """A stored result as its typed value; ValueError when it is not one."""
        try:
            return self.result_type.from_json(stored)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"not a stored {self.name} result ({exc!r})") from None

    def valid(self, stored: dict[str, Any], env: ExecEnv) -> bool:
        """Whether a stored result may be used as it is: it decodes and every blob it names
        is in the store and passes the cheap check (a damaged one is removed)."""
        try:
            result = self.decode(stored)
        except ValueError:
            return False
        return all(env.blob_ok(b.digest, b.size) for b in result.blobs())

    def blobs(self, stored: dict[str, Any]) -> list[dict[str, Any]]:
        """The store blobs a stored result references, as ``{digest, size[, mediaType]}``:
        what a cache export must carry along with it, and an import must fetch."""
        return [b.to_json() for b in self.decode(stored).blobs()]

    def finalize(self, result: Any, inputs: list[Any], env: ExecEnv) -> Any:
        """Attach what a cached result cannot carry (paths on this machine); default: nothing."""
        return result
