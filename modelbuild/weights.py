"""The public API for format, quantizer and shard plugins: what they receive and return.

A *model set* is the list of files a weight transform works on: the weight files selected
by ``MODEL`` plus the ``CONFIG`` files beside them (a quantizer may rewrite
``config.json``). Each is a :class:`WeightFile`, readable at ``source``. A transform returns
the complete new set: input :class:`WeightFile` objects it leaves alone, and an
:class:`Output` for every file it wrote into ``ctx.workdir``. modelbuild hashes the outputs,
moves them into the content-addressed store, caches the result under a key made of the
plugin's name and version, the parameters and the input digests, and packs the final set as
layers.

Plugins import numpy, gguf, safetensors… inside their functions, never at module level: the
CLI imports every plugin module on every run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from modelbuild.errors import ModelbuildError

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext


class FormatError(ModelbuildError):
    """A weight file that cannot be read as what it claims to be. Names the file."""

    def __init__(self, file: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{file}: {message}", hint=hint)
        self.file = file


@dataclass(frozen=True, slots=True)
class WeightFile:
    """A file of the model set: its artifact path, where to read it, and its content digest."""

    path: str  # relative POSIX path in the artifact, e.g. "model-00001-of-00002.safetensors"
    source: str  # absolute path to read the bytes from (a context file or a store blob)
    digest: str  # "sha256:…"
    size: int
    kind: str = "model"  # "model" (weights), "config", or "doc" (a model card a converter reads)


@dataclass(frozen=True, slots=True)
class Output:
    """A file a transform wrote: ``file`` lies in ``ctx.workdir``; ``path`` is its name in the artifact."""

    path: str
    file: str
    kind: str = "model"


@dataclass
class ModelInfo:
    """What a format handler reads from headers alone (never by loading weights)."""

    format: str
    param_count: int = 0
    dtype_params: dict[str, int] = field(default_factory=dict)  # ModelPack precision → parameters
    quantization: str | None = None  # e.g. "q8_0", "fp8"; None when not quantized
    architecture: str | None = None  # e.g. "transformer"
    family: str | None = None  # e.g. "llama"
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific facts (opset, inputs, …)

    @property
    def precision(self) -> str | None:
        """All dtypes present, comma-joined, the one holding most parameters first."""
        if not self.dtype_params:
            return None
        return ",".join(sorted(self.dtype_params, key=lambda d: (-self.dtype_params[d], d)))

    @property
    def param_size(self) -> str | None:
        return format_param_size(self.param_count) if self.param_count else None


class TransformContext:
    """What a transform gets besides its inputs: a work directory, a CPU budget, progress."""

    def __init__(
        self,
        workdir: Path,
        *,
        jobs: int = 1,
        advance: Callable[[int], None] | None = None,
        set_total: Callable[[int], None] | None = None,
        log: Callable[[str], None] | None = None,
        plugins: Any = None,
        executor: Any = None,
    ) -> None:
        self.workdir = workdir
        # where run_processes' items run (modelbuild.api.ExecutorSession): this machine's
        # worker processes unless the build said --executor; jobs is then its slots (a
        # cluster's CPUs), so that a transform splits its work into at least that many items
        self.executor = executor
        self.jobs = max(1, executor.slots if executor is not None else jobs)
        # the plugin host (modelbuild.api.PluginLookup): a plugin's own extension registries
        # (``plugins.extension(hook_name, what)``, e.g. hf-to-gguf's architecture adapters)
        self.plugins = plugins
        self._advance = advance or (lambda n: None)
        self._set_total = set_total or (lambda n: None)
        # a set_total callback that takes the unit (the build's StepContext.set_total) gets it;
        # one that takes only the count (older callers, test recorders) keeps working
        self._total_takes_unit = set_total is not None and _takes_keyword(set_total, "unit")
        self._log = log or (lambda m: None)
        self.unit = "bytes"

    def output_path(self, path: str) -> str:
        """Where to write the output that will be called *path* in the artifact."""
        target = self.workdir / "out" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        return str(target)

    def advance(self, n: int) -> None:
        """Report *n* more units of work done (in the unit :meth:`set_total` named), as it
        is done: the build shows the rate and the time left from these reports. Safe to call
        from any thread."""
        self._advance(n)

    def set_total(self, n: int, unit: str = "bytes") -> None:
        """The work this transform will report with :meth:`advance`, in all: *n* *unit*
        (``"bytes"``, the default; ``"params"`` for tensor elements; ``"tensors"``…). Call it
        before the first item is done: the progress bar gets its size (and its ETA) from it."""
        self.unit = unit
        if self._total_takes_unit:
            self._set_total(n, unit=unit)  # type: ignore[call-arg]
        else:
            self._set_total(n)

    def log(self, message: str) -> None:
        self._log(message)

    def run_threads(self, fn: Callable[[Any], int], items: list[Any]) -> None:
        """Run *fn* over *items* on up to ``jobs`` threads (for I/O-bound work: copies,
        GIL-releasing numpy); each return value is reported as progress done as soon as its
        item finishes (in whatever order they finish). An *fn* with big items may instead
        call :meth:`advance` itself as it goes, from its thread, and return 0. The first
        exception is raised here; items not started yet are then dropped."""
        if self.jobs <= 1 or len(items) <= 1:
            for item in items:
                self.advance(fn(item))
            return
        from concurrent.futures import ThreadPoolExecutor, as_completed

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            futures = [pool.submit(fn, item) for item in items]
            try:
                for future in as_completed(futures):
                    self.advance(future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def run_processes(self, fn: Callable[[Any], Any], items: list[Any], *, preload: Iterable[str] = (),
                      on_done: Callable[[Any, Any], None] | None = None, jobs: int | None = None) -> None:
        """Run *fn* over *items* on up to *jobs* (default ``jobs``) worker processes, for
        CPU-bound work; ``on_done(item, result)`` runs in this thread as each finishes, and
        without it each result is reported as progress done (as :meth:`run_threads`).

        *fn* is a module-level function (it is sent to the workers by name); items and
        results are pickled, so pass paths and offsets, not data. Progress moves once per
        finished item: keep items to a fraction of a second of work (split big tensors into
        row or byte ranges). Big items first: they are handed out from the front. While the
        workers start, this thread runs items from the back itself, so *fn* must be safe to
        call here too (no process-wide state). One job, or one item: everything runs here.
        *preload*: as for :meth:`mp_context`. With ``build --executor ray`` the items run on
        a cluster's nodes instead (docs/scale.md): an item may run twice (a lost node), so it
        must write the same bytes to the same place each time, and name files by path only;
        and it should close what it opens before it returns (the nodes' data plane closes what
        is left, and runs a function whose items leave files open in a new thread each time,
        which costs a quantize item 15–30 % there: :meth:`modelbuild.api.Work.run`).
        """
        report = on_done or (lambda item, result: self.advance(result))
        jobs = self.jobs if jobs is None else max(1, jobs)
        if self.executor is not None:  # --executor: a cluster's nodes, or this machine's processes
            self.executor.map(fn, items, report, jobs=jobs, preload=preload)
            return
        from modelbuild.workers import run_processes

        run_processes(fn, items, report, jobs=jobs, preload=preload)

    def prepare(self, preload: Iterable[str] = ()) -> None:
        """Start the workers that will run this transform's :meth:`run_processes` items, and
        have them import *preload* (the plugin's ``worker_modules``), while the transform goes
        on planning; returns at once. This machine's forkserver, or with ``--executor`` the
        executor's workers (a cluster's nodes). Optional: items run either way."""
        if self.executor is not None:
            self.executor.prepare(tuple(preload))
            return
        from modelbuild.workers import mp_context

        mp_context(preload)

    def mp_context(self, preload: Iterable[str] = ()) -> BaseContext:
        """The multiprocessing context for this transform's worker processes, when
        :meth:`run_processes` does not fit: pass it as ``mp_context=`` to
        :class:`concurrent.futures.ProcessPoolExecutor`, or call ``.Pool(…)`` on it; use up
        to ``jobs`` processes.

        Workers never fork from the build (it runs steps on threads): they start from one
        forkserver per modelbuild process (:mod:`modelbuild.workers`), launched by the first
        call and reused. *preload*: the modules the workers need, imported once by the server
        instead of by every worker: the plugin's ``worker_modules`` (the build declares those
        of every transform before it starts; pass them here as well, for a plugin used on its
        own). A worker shares no memory with the parent: what it runs is a module-level
        function, and its state comes as arguments (tasks, ``initargs``).
        """
        from modelbuild.workers import mp_context

        return mp_context(preload)


def _takes_keyword(fn: Callable[..., Any], name: str) -> bool:
    import inspect

    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return any((p.name == name and p.kind is not p.POSITIONAL_ONLY) or p.kind is p.VAR_KEYWORD for p in parameters)


_SCALES = (("Q", 10**15), ("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3))


def format_param_size(count: int) -> str:
    """A parameter count in ModelPack's grammar: ``<count><scale>``, at most one decimal.

    >>> format_param_size(494_032_768), format_param_size(6_738_415_616), format_param_size(156_480)
    ('494M', '6.7B', '156.5K')
    """
    for i, (letter, scale) in enumerate(_SCALES):
        if count >= scale:
            value = round(count / scale, 1)
            if value >= 1000 and i > 0:  # 999.96M rounds to 1000.0M: that is 1B
                return f"1{_SCALES[i - 1][0]}"
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text}{letter}"
    return str(count)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """``2GB``, ``500MB``, ``1.5G`` (decimal, as Hugging Face and llama.cpp count) or ``2GiB``."""
    match = _SIZE.match(text)
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(f"bad size {text!r}: use e.g. 2GB, 500MB or 4GiB")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return value
