"""Every hook a modelbuild plugin can implement, in the order a build calls them.

This module is the reference for plugin authors (pytest's manner): each hookspec says what
it receives, what it should do, what its return value means, whether it is ``firstresult``
(stops at the first non-None result) and since which version of the plugin API it exists.
What the registered objects must provide is the Protocol of their kind in
:mod:`modelbuild.api`, which is the only module a plugin imports. Importing this module
costs nothing beyond pluggy.

A plugin is a module or object with functions decorated by :data:`hookimpl`, registered
under the ``modelbuild`` entry-point group::

    [project.entry-points.modelbuild]
    my-codec = "my_package.plugin"

Hooks never reach for globals: each receives the registry it adds entries to. Two plugins
claiming one name in a registry is an error that names both. Every ``modelbuild_register_*``
hook is called once per plugin manager (once per CLI invocation), before anything else
happens; the objects they register live as long as it.

Versions: ``Since: X.Y`` is the plugin API version (``modelbuild.__version__``'s major and
minor) a hook first appeared in; ``Changed in X.Y`` says what its contract lost or gained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from modelbuild.api import (
        Converter,
        Engine,
        Executor,
        Frontend,
        LayerCodec,
        Quantizer,
        ShardStrategy,
        Signer,
        Target,
        WeightFormat,
    )
    from modelbuild.plugins import Registry, SourceRegistry

PROJECT = "modelbuild"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- setting up the plugin manager ----------------------------------------------------


@hookspec(historic=True)
def modelbuild_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Add hookspecs of a plugin's own, for other plugins to implement (pytest's
    ``pytest_addhooks``).

    Call ``pluginmanager.add_hookspecs(module_or_class)``. The hook is historic: a plugin
    registered at any time is called once, as it is registered, so its hookspecs exist
    before ``check_pending`` runs. A plugin that fills a registry from its own hook reads it
    at run time with ``plugins.extension(hook_name, what)`` (the
    :class:`modelbuild.api.PluginLookup` a transform context carries): the HF → GGUF
    converter declares ``modelbuild_register_architectures`` this way.

    Parameters:
        ``pluginmanager``: the :class:`pluggy.PluginManager` of this invocation.
    Return value: None; a returned value is ignored.
    ``firstresult``: no; every implementation is called (historic: also one registered later).
    Since: 1.0.
    """


# -- reading the build file ---------------------------------------------------------


@hookspec
def modelbuild_register_frontends(registry: Registry[Frontend]) -> None:
    """Add frontends: objects that turn build-file text into a build description.

    Call ``registry.add(frontend)``; a frontend is a :class:`modelbuild.api.Frontend`:
    ``name`` (what ``# syntax=NAME`` on a build file's first line selects) and
    ``load(text, *, filename, base_dir, default_context, build_args, sources)``, which
    returns a :class:`~modelbuild.api.BuildDescription` or raises
    :class:`~modelbuild.api.ModelfileError` with a span. The built-in ``modelfile``
    frontend is :func:`modelbuild.api.modelfile_frontend`. Optional member: ``filenames``, a
    tuple of ``fnmatch`` patterns (case-sensitive) for the build file's own name, which
    select the frontend for a file without a ``# syntax=`` line (the ``kitfile`` frontend
    declares ``("Kitfile", "kitfile", ".kitfile", "*.Kitfile", "*.kitfile")``; two frontends
    claiming one file is a usage error); since 1.1.

    Parameters:
        ``registry``: the frontend :class:`~modelbuild.api.Registry` to add to.
    Return value: None; a returned value is ignored.
    ``firstresult``: no; every implementation is called.
    Since: 0.1.  Changed in 1.0: ``summary`` is no longer part of the contract (the core
    never read it).
    """


@hookspec
def modelbuild_register_sources(registry: SourceRegistry) -> None:
    """Add sources: what a ``FROM`` reference can name.

    Call ``registry.add(source)``; a source is a :class:`modelbuild.api.Source`: ``name``,
    ``schemes`` (URL schemes it serves; the empty string means a plain path) and
    ``resolve(reference, *, base_dir) -> pathlib.Path``, a local directory holding the
    context's files, or :class:`~modelbuild.api.ModelfileError` without a span for a
    reference it cannot serve (the frontend adds the location).

    Since 1.2 a source may instead be a :class:`modelbuild.api.RemoteSource` (``name``,
    ``schemes``, ``version``; ``pin``, ``listing``, ``open``): it describes and streams, and
    the core fetches, verifies, caches and links the files (:mod:`modelbuild.fetch`).

    Parameters:
        ``registry``: the :class:`~modelbuild.api.SourceRegistry` to add to.
    Return value: None; a returned value is ignored.
    ``firstresult``: no; every implementation is called.
    Since: 0.1.  Changed in 1.0: ``summary`` is no longer part of the contract.
    """


# -- packing layers -----------------------------------------------------------------


@hookspec
def modelbuild_register_layer_codecs(registry: Registry[LayerCodec]) -> None:
    """Add layer codecs: how a file or directory becomes a layer blob.

    Call ``registry.add(codec)``; a codec is a :class:`modelbuild.api.LayerCodec`: ``name``
    (what ``--layer-format`` selects, e.g. ``tar+zstd``), ``media_suffix`` (the part after
    ``.v1.`` in the ModelPack media type), ``archive`` (False only for ``raw``, which cannot
    hold a directory), ``version`` (enters every cache key of layers it packs) and
    ``encode(members, sink, *, mtime=0, progress=None) -> str | None``, which writes the
    layer to *sink* and returns its diffId, or None when the layer is uncompressed. Output
    must depend only on the members' content, names and modes: the layer is cached under
    that. :func:`modelbuild.api.write_tar` writes reproducible archives.

    Parameters:
        ``registry``: the layer-codec :class:`~modelbuild.api.Registry` to add to.
    Return value: None; a returned value is ignored.
    ``firstresult``: no; every implementation is called.
    Since: 0.1.  Changed in 1.0: ``summary`` is no longer part of the contract.
    """


# -- weights: formats, quantizers, shard strategies, converters ---------------------------


@hookspec
def modelbuild_register_formats(registry: Registry[WeightFormat]) -> None:
    """Add weight-format handlers: how files of a format are recognised and described.

    Call ``registry.add(handler)``; a handler is a :class:`modelbuild.api.WeightFormat`:
    ``name`` (``safetensors``, ``gguf``, ``onnx``: what ``ModelInfo.format`` and the
    config's ``format`` say), ``version`` (enters cache keys), ``extensions`` (e.g.
    ``(".safetensors",)``: a model file's format is told from its name) and
    ``read_info(files, config) -> ModelInfo``: facts from headers alone, never by loading
    weights, or :class:`~modelbuild.api.FormatError` naming the file. Optionally
    ``sidecar_files = True``: ``read_info`` then also receives the model set's weight files
    of no known format (ONNX external data).

    Parameters:
        ``registry``: the weight-format :class:`~modelbuild.api.Registry` to add to.
    Return value: None; a returned value is ignored.
    ``firstresult``: no; every implementation is called.
    Since: 0.2.  Changed in 1.0: ``detect``, ``iter_tensors``, ``write``, ``writable`` and
    ``summary`` left the contract: the core never called them (a plugin may keep them as
    its own methods).
    """


@hookspec
def modelbuild_register_quantizers(registry: Registry[Quantizer]) -> None:
    """Add quantizers: what ``QUANTIZE TYPE`` can do to a model set of one format.

    Call ``registry.add(quantizer)``; a quantizer is a :class:`modelbuild.api.Quantizer`:
    a unique ``name``, a ``version`` (enters cache keys: bump it when output bytes change),
    the ``format`` it works on, the ``types`` it produces (e.g. ``("q8_0", "q4_0")``) and
    ``quantize(files, qtype, options, ctx) -> list[WeightFile | Output]``, returning the
    complete new model set (inputs passed through unchanged, an ``Output`` for each file
    written under ``ctx.workdir``), using up to ``ctx.jobs`` processes and memory of a few
    tensors.

    Options: declare what ``--name=value`` options the ``QUANTIZE`` line may carry as
    ``options``, a tuple of :class:`modelbuild.api.OptionSpec` (name, type, choices,
    default, help), e.g. ``(OptionSpec("keep", list, help="tensor-name patterns left as
    they are"),)``. The frontend checks every option of the line against them, at its
    column, before any work, converts it to the declared type and fills in declared
    defaults: ``quantize`` receives complete, typed options and checks none itself. A
    quantizer without an ``options`` attribute receives them as written (strings; a
    repeated option a list; ``keep`` always a list). Also optional:
    ``key_extras(files, plugins)`` and ``worker_modules`` (the modules its worker
    processes import, preloaded once by modelbuild's forkserver: see the Protocol).

    Parameters:
        ``registry``: the quantizer :class:`~modelbuild.api.Registry` to add to.
    Return value: None; a returned value is ignored.
    ``firstresult``: no; every implementation is called.
    Since: 0.2.  Changed in 1.0: declared ``options``; ``summary`` left the contract.
    """


@hookspec
def modelbuild_register_shard_strategies(registry: Registry[ShardStrategy]) -> None:
    """Add shard strategies: how ``SHARD SIZE`` splits, and ``SHARD none`` merges, a format.

    Call ``registry.add(strategy)``; a strategy is a :class:`modelbuild.api.ShardStrategy`:
    a ``name`` equal to the format it handles, a ``version``, and
    ``shard(files, max_bytes, ctx)`` and ``merge(files, ctx)``, each returning the complete
    new model set with the conventions of ``quantize`` (see
    :func:`modelbuild_register_quantizers`). ``max_bytes`` is the largest shard in bytes of
    tensor data (decimal units were parsed already: ``2GB`` is 2,000,000,000).

    Options: ``SHARD`` lines take none today; declare ``options = ()`` (a tuple of
    :class:`modelbuild.api.OptionSpec`, as for quantizers) so that adding one later is a
    declaration, not a new contract.

    Parameters:
        ``registry``: the shard-strategy :class:`~modelbuild.api.Registry` to add to.
    Return value: None; a returned value is ignored.
    ``firstresult``: no; every implementation is called.
    Since: 0.2.  Changed in 1.0: declared ``options``; ``summary`` left the contract.
    """


@hookspec
def modelbuild_register_converters(registry: Registry[Converter]) -> None:
    """Add converters: what ``CONVERT FORMAT`` can do to a model set.

    Call ``registry.add(converter)``; a converter is a :class:`modelbuild.api.Converter`:
    a unique ``name``, a ``version`` (enters cache keys), ``source_format`` and
    ``target_format`` (format names, e.g. ``"safetensors"`` → ``"gguf"``), ``outtypes``
    (what ``--outtype=`` may name; the first is the default) and
    ``convert(files, options, ctx) -> list[WeightFile | Output]`` with the conventions of
    ``quantize`` (see :func:`modelbuild_register_quantizers`); ``options`` always holds
    ``outtype``. Raise :class:`~modelbuild.api.FormatError` for input it cannot convert
    (an unsupported architecture, naming the supported ones; a missing tokenizer or shard).

    Options: declare them as ``options``, a tuple of :class:`modelbuild.api.OptionSpec`, as
    for quantizers; ``outtype`` among them, with ``choices`` equal to ``outtypes`` and the
    first as ``default``.

    Parameters:
        ``registry``: the converter :class:`~modelbuild.api.Registry` to add to.
    Return value: None; a returned value is ignored.
    ``firstresult``: no; every implementation is called.
    Since: 0.3.  Changed in 1.0: declared ``options``; ``summary`` left the contract.
    """


# -- multi-platform builds ------------------------------------------------------------


@hookspec
def modelbuild_register_targets(registry: Registry[Target]) -> None:
    """Add targets: what ``TARGET NAME`` stages build for, and how hosts match them.

    Call ``registry.add(target)``; a target is a :class:`modelbuild.api.Target`: a
    ``name`` (``cpu``, ``cuda``…), ``generic`` (True for a variant any machine of its
    architecture can run; generic entries come first in the index), ``variants`` (OCI
    ``platform.architecture`` values, the default first), ``formats`` (weight formats an
    engine on it can run), and ``check_constraint(constraint)``, ``default_steps(fmt)``,
    ``check_step(stage, action, arg, fmt)``, ``platform(stage)``, ``annotations(stage)`` and
    ``matches(stage, host)``, called as the Protocol's docstring says. A third party adds a
    target (say Intel Gaudi) with a plugin alone; docs/spec/multi-platform.md holds the
    annotation vocabulary and matching rules.

    Parameters:
        ``registry``: the target :class:`~modelbuild.api.Registry` to add to.
    Return value: None; a returned value is ignored.
    ``firstresult``: no; every implementation is called.
    Since: 0.4.  Changed in 1.0: ``version`` and ``summary`` left the contract (the core
    never read them).
    """


# -- serving a built variant ------------------------------------------------------------


@hookspec
def modelbuild_register_engines(registry: Registry[Engine]) -> None:
    """Add engines: what ``modelbuild run`` starts and ``modelbuild deploy`` renders to serve a
    variant (llama.cpp, ONNX Runtime behind a model server, vLLM…).

    Call ``registry.add(engine)``; an engine is a :class:`modelbuild.api.Engine`: a ``name``
    (``llama.cpp``), the ``formats`` and ``targets`` it serves, the ``protocol`` its server
    speaks, an ``install`` hint, a ``default_port``, the ``parameters`` it accepts, and
    ``accepts(model)``, ``installed()``, ``launch(model, host=, port=)`` and
    ``container(model, port=)``, called as the Protocol's docstring says. An engine never
    starts a process: the core starts what ``launch`` returns, polls its health, streams its
    logs and stops it. Engines are tried in registration order when the user names none and
    the artifact's runtime description names none that is installed (docs/spec/runtime.md).

    Parameters:
        ``registry``: the engine :class:`~modelbuild.api.Registry` to add to.
    Return value: None; a returned value is ignored.
    ``firstresult``: no; every implementation is called.
    Since: 1.1.
    """


# -- signing and verifying what is in a registry -----------------------------------------


@hookspec
def modelbuild_register_signers(registry: Registry[Signer]) -> None:
    """Add signers: signature schemes for artifacts in a registry (``modelbuild sign``,
    ``verify``, ``push --sign``, ``pull``/``run --verify-key``; docs/signing.md).

    Call ``registry.add(signer)``; a signer is a :class:`modelbuild.api.Signer`: a ``name``
    (what ``--signer NAME`` selects; the built-in ``cosign`` is the default),
    ``load_signing_key(path, passphrase=…)`` and ``load_verifying_key(path)`` (the scheme's
    key files, returning a :class:`~modelbuild.api.SigningKey` or
    :class:`~modelbuild.api.VerifyingKey`), ``sign(repository, subject, key)`` and
    ``verify(repository, subject, key)``, called as the Protocol's docstring says. A signer
    never opens a connection: the core hands it a :class:`~modelbuild.api.SignatureRepository`
    over its own registry client. The built-in signer is
    :func:`modelbuild.api.cosign_signer`; Notation or keyless sigstore would be plugins.

    Parameters:
        ``registry``: the signer :class:`~modelbuild.api.Registry` to add to.
    Return value: None; a returned value is ignored.
    ``firstresult``: no; every implementation is called.
    Since: 1.3.
    """


# -- running a build's work --------------------------------------------------------------


@hookspec
def modelbuild_register_executors(registry: Registry[Executor]) -> None:
    """Add executors: where a build's work items run (``build --executor NAME[://ADDRESS]``;
    docs/scale.md).

    Call ``registry.add(executor)``; an executor is a :class:`modelbuild.api.Executor`: a
    ``name``, a ``summary``, and ``open(setup)``, which gets an
    :class:`~modelbuild.api.ExecutorSetup` (the address, ``-j``, the store and context
    directories, a log callback) and returns an :class:`~modelbuild.api.ExecutorSession`
    whose ``map(fn, items, on_done, jobs=, preload=)`` runs a transform's work items, as the
    Protocol's docstring says. The solver, the cache and the store stay with the build: an
    executor only runs items, which read and write files by path in the store and context. A
    remote executor runs each item on its workers through ``setup.work(fn).run(item)`` (a
    :class:`modelbuild.api.Work`: the data-plane and code checks, a clean thread per item). The built-in executor is
    :func:`modelbuild.api.local_executor` (``local``, the default); ``ray`` is a plugin.

    Parameters:
        ``registry``: the executor :class:`~modelbuild.api.Registry` to add to.
    Return value: None; a returned value is ignored.
    ``firstresult``: no; every implementation is called.
    Since: 1.4.
    """
