"""The plugin kinds modelbuild 1.0 calls: one Protocol each, holding exactly what the core
reads or calls, no more.

An object registered by a ``modelbuild_register_*`` hook satisfies its Protocol structurally:
no base class to inherit. Anything else on it (a ``summary``, helper methods such as a
format's ``iter_tensors``) is the plugin's own business; the core never looks at it. The
Protocols are ``runtime_checkable``: ``isinstance(obj, Quantizer)`` checks that every member
exists (not its signature).

Optional members are named in each docstring, not in the Protocol: the core reads them with
a default (``getattr(plugin, "key_extras", None)``), so a plugin without them is complete.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from modelbuild.api import _engines, _executors, _signers

if TYPE_CHECKING:
    from modelbuild.description import BuildDescription
    from modelbuild.plugins import Registry, SourceRegistry
    from modelbuild.targets import Constraint, HostInfo, Stage
    from modelbuild.tarball import Member
    from modelbuild.weights import ModelInfo, Output, TransformContext, WeightFile


@runtime_checkable
class PluginLookup(Protocol):
    """What a plugin may ask of the plugin manager at run time: ``ctx.plugins`` of a
    :class:`~modelbuild.api.TransformContext`, and the *plugins* argument of
    ``key_extras``.

    ``extension(hook_name, what)`` is the registry filled by a ``modelbuild_register_*``
    hook the plugin declared itself (``modelbuild_addhooks``), empty when nobody declared
    it; ``plugin_version(plugin_name)`` the version of the distribution that provides a
    plugin ("0" for one registered directly), for cache keys.
    """

    def extension(self, hook_name: str, what: str) -> Registry[Any]: ...

    def plugin_version(self, plugin_name: str) -> str: ...


# -- reading the build file -----------------------------------------------------------------


@runtime_checkable
class Frontend(Protocol):
    """Turns build-file text into a :class:`~modelbuild.api.BuildDescription`
    (``modelbuild_register_frontends``).

    The core calls ``load`` once per build, on the frontend the build file's first line
    names (``# syntax=NAME``; ``modelfile`` when it names none). ``filename`` is the
    name to put in error spans; ``base_dir`` the directory relative paths are resolved
    from; ``default_context`` the context when the file names none; ``build_args`` the
    ``--build-arg`` values; ``sources`` the source registry, to open a ``FROM``
    reference: ``sources.open(ref, base_dir=…)`` (since 1.2) gives an
    :class:`~modelbuild.api.OpenedSource` (the directory, and for a remote source its pin,
    its listing's defaults, and the fetch key to put in ``BuildDescription.source``).
    Bad input is
    a :class:`~modelbuild.api.ModelfileError` with a span. The description is resolved:
    every file found, every variable expanded.
    """

    name: str

    def load(self, text: str, *, filename: str, base_dir: Path, default_context: Path,
             build_args: Mapping[str, str], sources: SourceRegistry) -> BuildDescription: ...


@runtime_checkable
class Source(Protocol):
    """What a ``FROM`` reference can name (``modelbuild_register_sources``).

    The core picks the source whose ``schemes`` hold the reference's URL scheme (the empty
    string: a plain path) and calls ``resolve`` while the frontend reads ``FROM``. It returns
    a local directory holding the context's files (a source whose files are elsewhere is a
    :class:`~modelbuild.api.RemoteSource` instead: the core fetches them), or raises :class:`~modelbuild.api.ModelfileError` without a span for a
    reference it cannot serve; the frontend adds the location.
    """

    name: str
    schemes: tuple[str, ...]

    def resolve(self, reference: str, *, base_dir: Path) -> Path: ...


# -- packing layers ---------------------------------------------------------------------------


class LayerSink(Protocol):
    """Where a codec writes a layer's bytes: a writer into the blob store."""

    def write(self, data: bytes | memoryview, /) -> object: ...


@runtime_checkable
class LayerCodec(Protocol):
    """How a file or directory becomes a layer blob (``modelbuild_register_layer_codecs``).

    ``name`` is what ``--layer-format`` selects (``tar+zstd``); ``media_suffix`` the part
    after ``.v1.`` in the ModelPack media type; ``archive`` False only for a codec that
    cannot hold a directory (``raw``); ``version`` enters the cache key of every layer it
    packs (bump it when output bytes change).

    The core calls ``encode`` once per layer that misses the cache, from a build thread:
    ``members`` in archive order (one file, or a directory and everything in it), ``sink``
    the blob being written, ``mtime`` the constant timestamp archives must carry
    (``SOURCE_DATE_EPOCH`` or 0), ``progress`` a callable taking a count of input bytes
    consumed. It returns the diffId (``sha256:…`` of the uncompressed tar), or None when the
    layer is not compressed and its diffId is its own digest. Output must depend only on the
    members' content, names and modes; :func:`~modelbuild.api.write_tar` writes reproducible
    archives.
    """

    name: str
    media_suffix: str
    archive: bool
    version: str

    def encode(self, members: list[Member], sink: LayerSink, *, mtime: int = 0,
               progress: Callable[[int], None] | None = None) -> str | None: ...


# -- weights ----------------------------------------------------------------------------------


@runtime_checkable
class WeightFormat(Protocol):
    """How files of a weight format are recognised and described (``modelbuild_register_formats``).

    ``name`` is what ``ModelInfo.format`` and the config's ``format`` say; ``version`` enters
    the cache key of every describe step; ``extensions`` (``(".gguf",)``) is how the core
    tells a model file's format, from its name alone.

    The core calls ``read_info`` once per format present in a model set that misses the
    cache, with the :class:`~modelbuild.api.WeightFile` objects of that format and the
    parsed ``config.json`` beside them (or None). It reads headers only, never whole
    weights, and returns a :class:`~modelbuild.api.ModelInfo`; bad input is a
    :class:`~modelbuild.api.FormatError` naming the file.

    Optional: ``sidecar_files = True`` makes ``read_info`` also receive the set's model
    files of no known format (ONNX external data).
    """

    name: str
    version: str
    extensions: tuple[str, ...]

    def read_info(self, files: list[WeightFile], config: dict[str, Any] | None) -> ModelInfo: ...


@runtime_checkable
class Quantizer(Protocol):
    """What ``QUANTIZE TYPE`` does to a model set of one format (``modelbuild_register_quantizers``).

    ``name`` is unique among quantizers; ``version`` enters the cache key (bump it when
    output bytes change); ``format`` the weight format it reads and writes; ``types`` the
    quant types it produces, lower-case (``("q8_0", "q4_0")``): the core picks the quantizer
    whose ``format`` and ``types`` match, at the ``QUANTIZE`` line.

    The core calls ``quantize(files, qtype, options, ctx)`` once per step that misses the
    cache, on a build thread: ``qtype`` is one of ``types``; ``options``
    the line's ``--name=value`` options (``keep``: a list of tensor-name patterns). Use up to
    ``ctx.jobs`` processes and keep memory to a few tensors. Raise
    :class:`~modelbuild.api.FormatError` for input it cannot quantize.

    The conventions of the three transform kinds (quantizer, converter, shard strategy):
    ``files`` is the model set (:class:`~modelbuild.api.WeightFile`: weights and config
    files); the return value is the complete new set, inputs passed through unchanged and an
    :class:`~modelbuild.api.Output` for each file written at ``ctx.output_path(path)``;
    ``ctx`` is a :class:`~modelbuild.api.TransformContext`. Optional members, all three
    kinds: ``options``, a tuple of :class:`~modelbuild.api.OptionSpec` (the ``--name=value``
    options it accepts, for the frontend to check at the line; without it, options reach
    the plugin unchecked); ``key_extras(files, plugins) -> dict``, JSON-able facts the output
    also depends on, added to the step's cache key (hf-to-gguf names the architecture
    adapter it will use; *plugins* is a :class:`PluginLookup`); ``worker_modules``, a
    tuple of the dotted names of the modules its worker processes import (numpy, extension
    modules, the module defining the function workers run). Before the first step the
    build collects them from every transform, and modelbuild's one forkserver per process
    imports them once, single-threaded, before it starts any worker: workers are never
    forked from the threaded build. Run CPU-bound work with
    ``ctx.run_processes(fn, items, preload=self.worker_modules, on_done=…)`` (or a pool of
    your own on ``ctx.mp_context(self.worker_modules)``): ``fn`` is a module-level function
    of pickled arguments, inherits nothing from the parent, gets one BLAS/OpenMP thread, and
    may also run in the calling thread while the workers start. Since: 1.0.
    """

    name: str
    version: str
    format: str
    types: tuple[str, ...]

    def quantize(self, files: list[WeightFile], qtype: str, options: dict[str, Any],
                 ctx: TransformContext) -> list[WeightFile | Output]: ...


@runtime_checkable
class Converter(Protocol):
    """What ``CONVERT FORMAT`` does to a model set (``modelbuild_register_converters``).

    ``name`` is unique among converters; ``version`` enters the cache key;
    ``source_format`` → ``target_format`` the format names it converts between (the core
    picks the converter by that pair); ``outtypes`` what ``--outtype=`` may name, the first
    the default.

    The core calls ``convert(files, options, ctx)`` once per step that misses the cache,
    ``options`` holding the line's options with ``outtype`` always set. ``files`` are the
    model set, plus the model cards (``README.md`` files listed with ``DOC``, ``kind ==
    "doc"``) for the metadata a converted file carries (a name, a license); a card is
    context: returned or not, it is never part of the output. Raise
    :class:`~modelbuild.api.FormatError` for input it cannot convert (an unsupported
    architecture, naming the supported ones; a missing tokenizer or shard). Conventions and
    optional members (``options``, ``key_extras``, ``worker_modules``): as for
    :class:`Quantizer`.
    """

    name: str
    version: str
    source_format: str
    target_format: str
    outtypes: tuple[str, ...]

    def convert(self, files: list[WeightFile], options: dict[str, Any],
                ctx: TransformContext) -> list[WeightFile | Output]: ...


@runtime_checkable
class ShardStrategy(Protocol):
    """How ``SHARD SIZE`` splits, and ``SHARD none`` merges, one format
    (``modelbuild_register_shard_strategies``).

    ``name`` is the format it handles; ``version`` enters the cache key. The core calls
    ``shard(files, max_bytes, ctx)`` or ``merge(files, ctx)`` once per step that misses the
    cache; ``max_bytes`` is the largest shard, in bytes of tensor data (``2GB`` is
    2,000,000,000: the frontend parsed it). ``SHARD`` lines take no options today, so a
    strategy declares ``options = ()``. Conventions and optional members: as for
    :class:`Quantizer`.
    """

    name: str
    version: str

    def shard(self, files: list[WeightFile], max_bytes: int, ctx: TransformContext) -> list[WeightFile | Output]: ...

    def merge(self, files: list[WeightFile], ctx: TransformContext) -> list[WeightFile | Output]: ...


# -- multi-platform builds --------------------------------------------------------------------


@runtime_checkable
class Target(Protocol):
    """What a ``TARGET NAME`` stage builds for, and how a host is matched to its variant
    (``modelbuild_register_targets``; the rules are docs/spec/multi-platform.md).

    ``generic`` is True for a variant any machine of its OS and architecture can run
    (generic entries come first in the index); ``variants`` the OCI
    ``platform.architecture`` values it supports, the default first; ``formats`` the weight
    formats an engine on it runs: the planner rejects a stage whose chain ends elsewhere.

    When planning each stage the core calls ``check_constraint`` for each constraint of the
    ``TARGET`` line (raise :class:`~modelbuild.api.ConstraintError` for one it does not know
    or accept: the message is shown at the line); ``default_steps(fmt)`` when the stage
    names no step (``(action, argument, options)`` triples, e.g. ``("convert", "gguf",
    {})``); ``check_step(stage, action, arg, fmt)`` for each step (a message when it makes no
    sense for the stage, else None); then ``platform(stage)`` (``{"os": …,
    "architecture": …}``) and ``annotations(stage)`` (namespaced keys describing the
    accelerator, never ``platform.features``) for the stage's index entry. When pulling
    (``--platform auto``) it calls ``matches(stage, host)``: whether the host can run the
    variant, and why not.
    """

    name: str
    generic: bool
    variants: tuple[str, ...]
    formats: tuple[str, ...]

    def check_constraint(self, constraint: Constraint, /) -> None: ...

    def default_steps(self, fmt: str) -> list[tuple[str, str, dict[str, Any]]]: ...

    def check_step(self, stage: Stage, action: str, arg: str, fmt: str) -> str | None: ...

    def platform(self, stage: Stage) -> dict[str, str]: ...

    def annotations(self, stage: Stage) -> dict[str, str]: ...

    def matches(self, stage: Stage, host: HostInfo) -> tuple[bool, str]: ...


PLUGIN_KINDS: Mapping[str, type] = {
    "modelbuild_register_frontends": Frontend,
    "modelbuild_register_sources": Source,
    "modelbuild_register_layer_codecs": LayerCodec,
    "modelbuild_register_formats": WeightFormat,
    "modelbuild_register_quantizers": Quantizer,
    "modelbuild_register_shard_strategies": ShardStrategy,
    "modelbuild_register_converters": Converter,
    "modelbuild_register_targets": Target,
    "modelbuild_register_engines": _engines.Engine,
    "modelbuild_register_signers": _signers.Signer,
    "modelbuild_register_executors": _executors.Executor,
}
"""Each core register hook, and the Protocol of what it registers."""
