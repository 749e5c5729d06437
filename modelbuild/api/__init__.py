"""The public API for plugin authors: the only modelbuild module a plugin imports.

    from modelbuild.api import FormatError, Output, Quantizer, WeightFile, hookimpl

Everything a plugin needs is a name here; the modules these names come from are the core's
own and may change. modelbuild's built-in plugins (``plugins/``) import nothing else, and
``tests/test_api_contract.py`` keeps it so. The hooks themselves, each with its parameters,
return value and the version it appeared in, are documented in :mod:`modelbuild.hookspecs`.
Importing this module is cheap (no numpy, gguf or requests): every plugin module imports it
on every CLI start.

Hooks
    ``hookimpl``        marks a hook implementation (``@hookimpl``, ``@hookimpl(tryfirst=True)``)
    ``hookspec``        marks a hookspec, for a plugin that declares hooks of its own
                        (``modelbuild_addhooks``)
    ``Registry``        what a ``modelbuild_register_*`` hook receives: ``add(obj)`` by its ``name``
    ``SourceRegistry``  the sources registry a frontend receives: ``open(ref, base_dir=…)``
                        gives an ``OpenedSource`` (the directory; a remote source's pin,
                        listing and fetch key); ``get_for_reference(ref)`` the plugin
    ``PluginLookup``    ``ctx.plugins``: a plugin's own extension registries, plugin versions

Plugin kinds: Protocols of exactly what the core calls (see each docstring)
    ``Frontend``        build-file text → build description (``# syntax=NAME``)
    ``Source``          what ``FROM`` can name: a local directory (``resolve``)
    ``RemoteSource``    what ``FROM`` can name elsewhere (since 1.2): ``pin`` a reference to
                        a ``SourcePin``, list its files (``RemoteFile``) in a ``SourceListing``,
                        ``open`` a file at an offset; the core fetches, verifies and caches
                        (``FetchError`` with ``retryable`` for a failed transfer)
    ``open_registry``   ``open_registry(host)``: a ``RegistryClient`` (the core's transport:
                        auth, TLS, limits) for a source that reads an OCI registry:
                        ``manifest``, ``blob`` (small, verified), ``stream`` (from an offset)
    ``LayerCodec``      a file or directory → a layer blob (``--layer-format``)
    ``LayerSink``       where a codec writes
    ``WeightFormat``    recognises a weight format and reads facts from its headers
    ``Quantizer``       ``QUANTIZE TYPE``
    ``Converter``       ``CONVERT FORMAT``
    ``ShardStrategy``   ``SHARD SIZE`` and ``SHARD none``
    ``Target``          ``TARGET NAME`` stages, and matching hosts to variants
    ``OptionSpec``      one declared ``--name=value`` option of a quantizer, converter or
                        shard strategy
    ``modelfile_frontend``  the core's Modelfile frontend, which the built-in ``modelfile``
                        plugin registers (a third-party frontend may wrap it)

    ``Engine``          serves a variant (``modelbuild run``/``deploy``, since 1.1): gets an
                        ``EngineModel``, returns a ``Launch`` (a command) or a ``Container``
                        (a pod's container); ``ENGINE_PROTOCOLS`` the APIs a server can speak
    ``engine_params``   ``engine_params(name, options, params)``: an engine's ``params``
                        typed by its ``OptionSpec`` declarations (a UsageError otherwise)

Signers (since 1.3): signature schemes for artifacts in a registry
    ``Signer``          signs a ``Subject`` (a manifest in a registry, by digest) and verifies
                        its signatures, in a ``SignatureRepository`` the core opens (one
                        repository: manifests, small blobs, referrers); ``Verified`` is one
                        signature that verified
    ``SigningKey``      a loaded private key: ``sign(data)``, ``public()``, ``keyid``
    ``VerifyingKey``    a loaded public key: ``verify(signature, data)``, ``keyid``
    ``cosign_signer``   the core's ``cosign`` signer (cosign's key-based format), which the
                        built-in ``cosign`` plugin registers

Executors (since 1.4): where a build's work items run (``build --executor``; docs/scale.md)
    ``Executor``        ``open(setup)`` for a build: gets an ``ExecutorSetup`` (address, ``-j``,
                        store and context directories, log; since 1.5 ``item_timeout``, and
                        ``stalled(fn)``, the error ``map`` raises past it), returns an ``ExecutorSession``
                        (``slots``, ``nodes``, ``map(fn, items, on_done)``, ``prepare(preload)``,
                        ``close()``)
    ``local_executor``  the core's ``local`` executor (worker processes of this machine), which
                        the built-in ``local`` plugin registers
    ``Work``            ``setup.work(fn)``: a transform's function packed for a remote worker;
                        ``work.run(item, node)`` there checks the node sees the build's store
                        and context and runs the same code, then runs the item (a function's
                        first item in a clean thread) and closes the files it left open

Provisional kinds: contracts for the next issues, no hook registers them yet
    ``Attester``        attests a pushed artifact (provenance, an SBOM); ``Subject`` is what
                        it attests, ``Attestation`` what it returns

Values exchanged
    ``WeightFile``      a file of the model set: ``path`` in the artifact, ``source`` to read
    ``Output``          a file a transform wrote: ``Output(path, file, kind)``
    ``TransformContext``  what a transform gets: ``output_path``, ``jobs``, progress, ``log``,
                        ``run_processes``, ``prepare``, ``mp_context``, ``plugins``
    ``ModelInfo``       the facts a format reads from headers
    ``Member``          one archive entry handed to a codec
    ``write_tar``       writes reproducible tar streams
    ``Stage``           a ``TARGET`` stage, as a target sees it
    ``Constraint``      one ``key>=value`` requirement of a ``TARGET`` line (``key``, ``op``,
                        ``value``, ``values``, ``admits(found)``)
    ``HostInfo``        the machine a variant is chosen for; ``Accelerator`` one kind of
                        accelerator on it
    ``version_tuple``   ``"12.1"`` → ``(12, 1)``, a ConstraintError for a non-version
    ``ANN_TARGET``, ``ANN_ACCELERATOR``, ``ANN_REQUIRES``  the index annotation keys a
                        target writes (docs/spec/multi-platform.md §3)
    ``BuildDescription``  what a frontend returns; made of ``FileSpec`` (with ``FileKind``),
                        ``TransformSpec``, ``StageSpec`` and ``RuntimeSpec`` (the ``RUNTIME``
                        lines: ``EngineSpec`` engines and a context length; since 1.2)
    ``Span``            a place in a build file, for errors
    ``artifact_path_problem``  ``artifact_path_problem(path)``: why an artifact cannot carry a
                        file at *path* (absolute, ``..``, a control character, a reserved
                        name…), else None: the core's own rule, for frontends
    ``lfs_pointer_hint``  ``lfs_pointer_hint(first_bytes)``: the hint for a format error on a
                        file that is a Git LFS pointer (a clone without ``git lfs pull``), else None

Errors (exit code 2 unless said)
    ``ModelbuildError``  the base of every expected error
    ``UsageError``      bad options or arguments
    ``ModelfileError``  bad build-file input, at a ``Span``
    ``FormatError``     a weight file that is not what it claims, naming the file
    ``ConstraintError``  a constraint a target does not know or accept
    ``BuildError``      a step could not do its work (exit code 1)
    ``VerificationError``  a signature or attestation missing or wrong (exit code 1)
    ``PluginError``     a plugin misbehaved (exit code 70); any other exception from a
                        plugin is reported as a bug in that plugin, with that exit code too
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

# Where each name lives. The names are imported on first use (PEP 562), so importing this
# module costs almost nothing: a worker process that unpickles a plugin function imports
# only what that plugin uses, and the CLI does not pay for the targets or the hookspecs
# before it needs them.
_WHERE = {
    **dict.fromkeys(("Converter", "Frontend", "LayerCodec", "LayerSink", "PluginLookup", "Quantizer",
                     "ShardStrategy", "Source", "Target", "WeightFormat"), "modelbuild.api._kinds"),
    **dict.fromkeys(("OptionSpec", "engine_params"), "modelbuild.api._options"),
    **dict.fromkeys(("Container", "Engine", "EngineModel", "Launch"), "modelbuild.api._engines"),
    "ENGINE_PROTOCOLS": "modelbuild.api._engines",  # PROTOCOLS, under its public name
    **dict.fromkeys(("RegistryClient", "open_registry"), "modelbuild.oci.client"),
    **dict.fromkeys(("FetchError", "OpenedSource", "RemoteFile", "RemoteSource", "SourceListing", "SourcePin"),
                    "modelbuild.api._sources"),
    **dict.fromkeys(("Attestation", "Attester"), "modelbuild.api._provisional"),
    **dict.fromkeys(("Executor", "ExecutorSession", "ExecutorSetup"), "modelbuild.api._executors"),
    "Work": "modelbuild.dataplane",
    "local_executor": "modelbuild.executors",
    **dict.fromkeys(("SignatureRepository", "Signer", "SigningKey", "Subject", "Verified", "VerifyingKey"),
                    "modelbuild.api._signers"),
    **dict.fromkeys(("BuildDescription", "EngineSpec", "FileKind", "FileSpec", "RuntimeSpec", "StageSpec",
                     "TransformSpec"), "modelbuild.description"),
    **dict.fromkeys(("BuildError", "ModelbuildError", "ModelfileError", "PluginError", "Span", "UsageError",
                     "VerificationError"), "modelbuild.errors"),
    **dict.fromkeys(("hookimpl", "hookspec"), "modelbuild.hookspecs"),
    "lfs_pointer_hint": "modelbuild.lfs",  # pointer_hint, under its public name
    "artifact_path_problem": "modelbuild.artifact_paths",  # path_problem, under its public name
    **dict.fromkeys(("Registry", "SourceRegistry"), "modelbuild.plugins"),
    **dict.fromkeys(("Member", "write_tar"), "modelbuild.tarball"),
    **dict.fromkeys(("ANN_ACCELERATOR", "ANN_REQUIRES", "ANN_TARGET", "Accelerator", "Constraint", "ConstraintError",
                     "HostInfo", "Stage", "version_tuple"), "modelbuild.targets"),
    **dict.fromkeys(("FormatError", "ModelInfo", "Output", "TransformContext", "WeightFile"), "modelbuild.weights"),
}

_RENAMED = {"lfs_pointer_hint": "pointer_hint", "ENGINE_PROTOCOLS": "PROTOCOLS",
            "artifact_path_problem": "path_problem"}


def __getattr__(name: str) -> _Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'modelbuild.api' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value  # once: later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if _TYPE_CHECKING:
    from modelbuild.api._kinds import (
        Converter,
        Frontend,
        LayerCodec,
        LayerSink,
        PluginLookup,
        Quantizer,
        ShardStrategy,
        Source,
        Target,
        WeightFormat,
    )
    from modelbuild.api._options import OptionSpec, engine_params
    from modelbuild.api._engines import PROTOCOLS as ENGINE_PROTOCOLS
    from modelbuild.api._engines import Container, Engine, EngineModel, Launch
    from modelbuild.oci.client import RegistryClient, open_registry
    from modelbuild.api._sources import FetchError, OpenedSource, RemoteFile, RemoteSource, SourceListing, SourcePin
    from modelbuild.api._provisional import Attestation, Attester
    from modelbuild.api._executors import Executor, ExecutorSession, ExecutorSetup
    from modelbuild.dataplane import Work
    from modelbuild.executors import local_executor
    from modelbuild.api._signers import SignatureRepository, Signer, SigningKey, Subject, Verified, VerifyingKey
    from modelbuild.description import (
        BuildDescription,
        EngineSpec,
        FileKind,
        FileSpec,
        RuntimeSpec,
        StageSpec,
        TransformSpec,
    )
    from modelbuild.errors import (
        BuildError,
        ModelbuildError,
        ModelfileError,
        PluginError,
        Span,
        UsageError,
        VerificationError,
    )
    from modelbuild.hookspecs import hookimpl, hookspec
    from modelbuild.artifact_paths import path_problem as artifact_path_problem
    from modelbuild.lfs import pointer_hint as lfs_pointer_hint
    from modelbuild.plugins import Registry, SourceRegistry
    from modelbuild.tarball import Member, write_tar
    from modelbuild.targets import (
        ANN_ACCELERATOR,
        ANN_REQUIRES,
        ANN_TARGET,
        Accelerator,
        Constraint,
        ConstraintError,
        HostInfo,
        Stage,
        version_tuple,
    )
    from modelbuild.weights import FormatError, ModelInfo, Output, TransformContext, WeightFile


def modelfile_frontend() -> Frontend:
    """The core's own ``modelfile`` frontend: modctl-compatible Modelfiles with modelbuild's
    extensions (``ARG``, ``FROM``, ``TARGET``…, see docs/modelfile.md).

    The language is implemented in the core package (``modelbuild.frontend``: its parser,
    spans, limits and directive table); the built-in ``modelfile`` plugin registers the
    object this returns, through the same hook a third-party frontend uses. A third-party
    frontend may wrap it (say, to rewrite text before ``load``). Imported when called, so
    importing this module stays cheap.
    """
    from modelbuild.frontend.modelfile import ModelfileFrontend

    return ModelfileFrontend()


def cosign_signer() -> Signer:
    """The core's ``cosign`` signer: cosign's key-based signatures (a simple-signing payload
    signed with ECDSA P-256, stored under the ``sha256-<hex>.sig`` tag; docs/signing.md).

    The format and the key files are implemented in the core package
    (``modelbuild.signing``); the built-in ``cosign`` plugin registers the object this
    returns, through the same hook a third-party signer uses. Imported when called.
    """
    from modelbuild.signing.signer import CosignSigner

    return CosignSigner()


__all__ = [
    # hooks
    "PluginLookup", "Registry", "SourceRegistry", "hookimpl", "hookspec",
    # plugin kinds
    "Converter", "Frontend", "LayerCodec", "LayerSink", "OptionSpec", "Quantizer", "ShardStrategy", "Source",
    "Target", "WeightFormat", "modelfile_frontend",
    # remote sources
    "FetchError", "OpenedSource", "RegistryClient", "RemoteFile", "RemoteSource", "SourceListing", "SourcePin",
    "open_registry",
    # engines
    "Container", "ENGINE_PROTOCOLS", "Engine", "EngineModel", "Launch", "engine_params",
    # signers
    "SignatureRepository", "Signer", "SigningKey", "Subject", "Verified", "VerifyingKey", "cosign_signer",
    # executors
    "Executor", "ExecutorSession", "ExecutorSetup", "Work", "local_executor",
    # provisional kinds
    "Attestation", "Attester",
    # values exchanged
    "ANN_ACCELERATOR", "ANN_REQUIRES", "ANN_TARGET", "Accelerator", "BuildDescription", "Constraint", "EngineSpec",
    "FileKind", "FileSpec", "HostInfo", "Member", "ModelInfo", "Output", "RuntimeSpec", "Span", "Stage", "StageSpec",
    "TransformContext", "TransformSpec", "WeightFile", "artifact_path_problem", "lfs_pointer_hint", "version_tuple", "write_tar",
    # errors
    "BuildError", "ConstraintError", "FormatError", "ModelbuildError", "ModelfileError", "PluginError",
    "UsageError", "VerificationError",
]
