"""Every hook a modelbuild plugin can implement, in the order a build calls them.

This module is the reference for plugin authors (pytest's manner): each hookspec says what
it receives, what it should do, and what its return value means. Importing it costs nothing
beyond pluggy.

A plugin is a module or object with functions decorated by :data:`hookimpl`, registered
under the ``modelbuild`` entry-point group::

    [project.entry-points.modelbuild]
    my-codec = "my_package.plugin"

Hooks never reach for globals: each receives the registry it adds entries to. Two plugins
claiming one name in a registry is an error that names both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from modelbuild.plugins import Registry

PROJECT = "modelbuild"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- setting up the plugin manager ----------------------------------------------------


@hookspec(historic=True)
def modelbuild_addhooks(pluginmanager: "pluggy.PluginManager") -> None:
    """Add hookspecs of a plugin's own, for other plugins to implement (pytest's
    ``pytest_addhooks``).

    Call ``pluginmanager.add_hookspecs(module_or_class)``. The hook is historic: a plugin
    registered at any time is called once, as it is registered, so its hookspecs exist
    before ``check_pending`` runs. A plugin that fills a registry from its own hook reads it
    at run time with ``plugins.extension(hook_name, what)`` (the
    :class:`modelbuild.api.PluginLookup` a transform context carries): the HF → GGUF
    converter declares ``modelbuild_register_architectures`` this way.

    Parameters: ``pluginmanager``, the :class:`pluggy.PluginManager` of this invocation.
    Return value: ignored.  Since: 1.0.
    """


# -- reading the build file ---------------------------------------------------------


@hookspec
def modelbuild_register_frontends(registry: "Registry") -> None:
    """Add frontends: objects that turn build-file text into a build description.

    Call ``registry.add(frontend)``. A frontend has a ``name`` (what ``# syntax=NAME`` on a
    build file's first line selects), a one-line ``summary``, and a method::

        load(text, *, filename, base_dir, default_context, build_args, sources)
            -> modelbuild.description.BuildDescription

    ``filename`` is the name to use in error spans; ``base_dir`` the directory relative
    paths in the file are resolved from; ``default_context`` the context when the file names
    none; ``sources`` the source registry (see :func:`modelbuild_register_sources`).
    ``load`` raises :class:`modelbuild.errors.ModelfileError` with a span for bad input.

    Return value: ignored.  Since: 0.1.
    """


@hookspec
def modelbuild_register_sources(registry: "Registry") -> None:
    """Add sources: what a ``FROM`` reference can name.

    Call ``registry.add(source)``. A source has a ``name``, a tuple of URL ``schemes`` it
    serves (the empty string means a plain path), a ``summary``, and a method::

        resolve(reference, *, base_dir) -> pathlib.Path

    returning a local directory holding the context's files (a remote source materialises
    them first). It raises :class:`modelbuild.errors.ModelfileError` without a span for a
    reference it cannot serve; the frontend adds the location.

    Return value: ignored.  Since: 0.1.
    """


# -- packing layers -----------------------------------------------------------------


@hookspec
def modelbuild_register_layer_codecs(registry: "Registry") -> None:
    """Add layer codecs: how a file or directory becomes a layer blob.

    Call ``registry.add(codec)``. A codec has a ``name`` (what ``--layer-format`` selects,
    e.g. ``tar+zstd``), a ``media_suffix`` (the part after ``.v1.`` in the ModelPack media
    type), ``archive`` (False only for ``raw``, which cannot hold a directory), a
    ``version`` string that enters every cache key of layers it packs, and a method::

        encode(members, sink, *, mtime=0, progress=None) -> str | None

    ``members`` is a list of :class:`modelbuild.tarball.Member` in archive order (one
    file, or a directory and everything in it); ``sink`` a writer into the blob store with
    a ``write(bytes)`` method; ``mtime`` the constant timestamp archives must use
    (``SOURCE_DATE_EPOCH`` or 0); ``progress`` a callable taking a count of input bytes
    consumed. ``encode`` writes the layer bytes to ``sink`` and returns the diffId
    (``sha256:…`` of the uncompressed tar), or None when the layer is not compressed and
    its diffId is its own digest. Codecs use :func:`modelbuild.tarball.write_tar` for
    reproducible archives. Output must depend only on the members' content, names and
    modes: the layer is cached under that.

    Return value: ignored.  Since: 0.1.
    """


# -- weights: formats, quantizers, shard strategies ------------------------------------


@hookspec
def modelbuild_register_formats(registry: "Registry") -> None:
    """Add weight-format handlers: how files of a format are recognised and read.

    Call ``registry.add(handler)``. A handler has a ``name`` (``safetensors``, ``gguf``,
    ``onnx``: what ``ModelInfo.format`` and the config's ``format`` say), a ``version``
    (enters cache keys), a ``summary``, ``extensions`` (e.g. ``(".safetensors",)``),
    optionally ``sidecar_files = True`` (``read_info`` then also receives the model set's
    weight files of no known format, e.g. ONNX external data) and ``writable = False``
    (``write`` is not supported), and::

        detect(path) -> bool
            True when the file at *path* is of this format; reads a few bytes at most.
        read_info(files, config) -> modelbuild.weights.ModelInfo
            Facts from headers alone, never by loading weights: parameter count, parameters
            per dtype, quantization, architecture, family. ``files`` are the
            :class:`~modelbuild.weights.WeightFile` objects of this format; ``config`` the
            parsed ``config.json`` beside them, or None. Raises
            :class:`~modelbuild.weights.FormatError` naming the file for bad input.
        iter_tensors(file) -> iterator of (name, dtype, shape, load)
            Lazily: ``load()`` returns the tensor as a numpy array (memory-mapped where
            the format allows).
        write(path, tensors, metadata) -> None
            Stream ``(name, numpy array)`` pairs into a new file at *path*.

    Return value: ignored.  Since: 0.2.
    """


@hookspec
def modelbuild_register_quantizers(registry: "Registry") -> None:
    """Add quantizers: what ``QUANTIZE TYPE`` can do to a model set of one format.

    Call ``registry.add(quantizer)``. A quantizer has a unique ``name``, a ``version``
    (enters cache keys: bump it when output bytes change), a ``summary``, the ``format``
    it works on, the ``types`` it produces (e.g. ``("q8_0", "q4_0")``), and::

        quantize(files, qtype, options, ctx) -> list[WeightFile | Output]

    ``files`` is the model set (:class:`~modelbuild.weights.WeightFile`, weights and
    config files); ``qtype`` one of ``types``; ``options`` the ``--key=value`` options of
    the ``QUANTIZE`` line (``keep`` is a list of tensor-name patterns to leave in full
    precision); ``ctx`` a :class:`~modelbuild.weights.TransformContext`. Return the
    complete new set: inputs passed through unchanged, and an
    :class:`~modelbuild.weights.Output` for each file written under ``ctx.workdir``. Use up
    to ``ctx.jobs`` processes and keep memory bounded by a few tensors.

    Return value: ignored.  Since: 0.2.
    """


@hookspec
def modelbuild_register_shard_strategies(registry: "Registry") -> None:
    """Add shard strategies: how ``SHARD SIZE`` splits, and ``SHARD none`` merges, a format.

    Call ``registry.add(strategy)``. A strategy has a ``name`` equal to the format it
    handles, a ``version``, a ``summary``, and::

        shard(files, max_bytes, ctx) -> list[WeightFile | Output]
        merge(files, ctx) -> list[WeightFile | Output]

    with the same conventions as ``quantize`` (see :func:`modelbuild_register_quantizers`).
    ``max_bytes`` is the largest shard in bytes of tensor data (decimal units were parsed
    already: ``2GB`` is 2,000,000,000).

    Return value: ignored.  Since: 0.2.
    """


@hookspec
def modelbuild_register_converters(registry: "Registry") -> None:
    """Add converters: what ``CONVERT FORMAT`` can do to a model set.

    Call ``registry.add(converter)``. A converter has a unique ``name``, a ``version``
    (enters cache keys), a ``summary``, ``source_format`` and ``target_format`` (format
    names, e.g. ``"safetensors"`` → ``"gguf"``), ``outtypes`` (what ``--outtype=`` may
    name; the first is the default), and::

        convert(files, options, ctx) -> list[WeightFile | Output]

    with the conventions of ``quantize`` (see :func:`modelbuild_register_quantizers`):
    ``files`` is the model set (weights and config files such as ``config.json`` and
    ``tokenizer.json``), ``options`` the ``--name=value`` options of the ``CONVERT`` line
    (``outtype`` always set), and the return value the complete new set. Raise
    :class:`~modelbuild.weights.FormatError` for input it cannot convert (an unsupported
    architecture, naming the supported ones; a missing tokenizer; a missing shard).

    Return value: ignored.  Since: 0.3.
    """


# -- multi-platform builds ------------------------------------------------------------


@hookspec
def modelbuild_register_targets(registry: "Registry") -> None:
    """Add targets: what ``TARGET NAME`` stages build for, and how hosts match them.

    Call ``registry.add(target)``. A target has a ``name`` (``cpu``, ``cuda``…), a
    ``version``, a ``summary``, ``generic`` (True for a variant any machine of its
    architecture can run; generic entries come first in the index), ``variants`` (OCI
    ``platform.architecture`` values it supports, the default first, e.g.
    ``("amd64", "arm64")``), ``formats`` (weight formats an engine on it can run), and::

        check_constraint(constraint) -> None
            Raise modelbuild.targets.ConstraintError for a constraint it does not know or
            accept (``TARGET cuda compute>=banana``); the message is shown at the line.
        platform(stage) -> dict
            The OCI platform of the stage's variant: {"os": …, "architecture": …}.
        annotations(stage) -> dict[str, str]
            Namespaced annotations describing the accelerator for the index descriptor
            (NVIDIA GPU feature discovery keys where they fit); never platform.features.
        default_steps(fmt) -> list[tuple[str, str, dict]]
            Steps for a stage that names none, given the model's format: (action, argument,
            options), e.g. [("convert", "gguf", {}), ("quantize", "q8_0", {})].
        check_step(stage, action, arg, fmt) -> str | None
            A message when the step makes no sense for the stage (float8 below compute
            capability 8.9), else None.
        matches(stage, host) -> tuple[bool, str]
            Whether a host (modelbuild.targets.HostInfo) can run the stage's variant, and
            why not.

    ``stage`` is a :class:`modelbuild.targets.Stage`. A third party adds a target (say
    Intel Gaudi) with a plugin alone. Return value: ignored.  Since: 0.4.
    """
