"""Engines: what serves a variant once it is on a machine (``modelbuild_register_engines``,
plugin API 1.1; docs/spec/runtime.md says what a runtime does with them).

An engine is a plugin object that *describes* how to serve a variant; it never starts a
process itself. The core resolves the reference, picks the variant for the host, puts its
files on disk (or, for ``deploy``, names where a cluster mounts them), and hands the engine
an :class:`EngineModel`. The engine answers with a :class:`Launch` (a command line, the files
it needs beside the model, where its health and API live) or a :class:`Container` (the same
for a Kubernetes pod). Starting, health polling, log streaming and clean shutdown are the
core's, written once for every engine: a plugin cannot leave a process behind.

Everything here is a frozen value: the same model and options give the same command, so
``modelbuild run --dry-run`` prints exactly what ``modelbuild run`` executes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Protocol, runtime_checkable

#: The protocols a :class:`Launch` or :class:`Container` can say its server speaks.
PROTOCOLS = {
    "openai": "OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions)",
    "open-inference-v2": "Open Inference Protocol (KServe v2: /v2/models/{name}/infer)",
    "tgi": "Hugging Face TGI's API (/generate, and OpenAI-compatible /v1/chat/completions)",
}


@dataclass(frozen=True, slots=True)
class EngineModel:
    """One variant of an artifact, as an engine sees it.

    ``path`` is the directory holding the variant's files: a materialised directory on this
    machine for ``run``, the mount path inside the container for ``deploy`` (so it is a
    :class:`~pathlib.PurePath`: nothing may be read from it). ``files`` are the relative
    paths the artifact holds, in layer order; ``weights`` those of them that are weights
    (a ``.gguf``, ``.onnx``, ``.safetensors``…), the first being the one to load when an
    engine takes a single file.

    ``format`` (``gguf``, ``safetensors``, ``onnx``; ``""`` when the config does not say),
    ``quantization`` (``q4_k_m``; ``""`` for none) and ``precision`` (``bfloat16``) come from
    the ModelPack config; ``target`` is the target the variant was built for (``cpu``,
    ``cuda``, ``rocm``…; ``""`` for a single-platform artifact); ``name`` is the name to
    serve it under (``descriptor.name``, else the reference's repository), and ``reference``
    and ``digest`` say where it came from.

    ``context_length`` is the context to serve (the user's ``--context``, else the runtime
    description's, else None: the engine's default). ``params`` are engine parameters from
    the runtime description's entry for this engine (``RUNTIME llama.cpp n_gpu_layers=99``),
    overridden by the user's ``--param KEY=VALUE``; an engine refuses, with a
    :class:`~modelbuild.api.UsageError`, a key it does not know (see ``parameters``).
    ``config`` is the whole ModelPack config document, for anything else.
    """

    name: str
    path: PurePath
    files: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()
    format: str = ""
    quantization: str = ""
    precision: str = ""
    target: str = ""
    context_length: int | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    reference: str = ""
    digest: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def weight_path(self) -> PurePath:
        """The first weight file: what a single-file engine loads."""
        return self.path / (self.weights[0] if self.weights else "")


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start an engine on this machine for one model.

    ``argv`` is the command (``argv[0]`` a program on ``PATH``, or ``sys.executable``);
    ``env`` what it adds to the environment, ``unset_env`` the variables it removes from it
    (those that would override the command line, e.g. llama-cpp-python's ``CONFIG_FILE``). ``files`` are text files the engine needs beside
    the model (an MLServer ``model-settings.json``, a Triton ``config.pbtxt``), relative to
    a work directory the core creates for the launch and passes as the process's working
    directory; ``links`` are symbolic links to create in it (relative path → absolute
    target), for a layout an engine insists on (Triton's ``repo/model/1/model.onnx``). A
    relative path in ``argv`` is relative to that directory.

    ``port`` is where it listens; ``health`` the HTTP path that answers 200 once the model is
    loaded (the core polls it until then, or ``ready_timeout`` seconds); ``endpoint`` the
    path users call (``/v1``), ``protocol`` a key of :data:`PROTOCOLS`.
    """

    argv: tuple[str, ...]
    port: int
    health: str
    endpoint: str
    protocol: str
    env: Mapping[str, str] = field(default_factory=dict)
    unset_env: tuple[str, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)
    links: Mapping[str, str] = field(default_factory=dict)
    ready_timeout: float = 300.0


@dataclass(frozen=True, slots=True)
class Container:
    """An engine as a Kubernetes container, for ``modelbuild deploy``.

    ``image`` is the engine's published image (with a tag: never ``latest``); ``command``
    and ``args`` as in a pod spec (an empty ``command`` keeps the image's entry point);
    ``port`` the container port; ``readiness`` and ``liveness`` HTTP paths for the probes;
    ``startup_seconds`` how long loading may take before the liveness probe counts (the
    core turns it into a startup probe). ``files`` are text files mounted from a ConfigMap
    (absolute path in the container → content), as :attr:`Launch.files`. ``accelerator``
    the extended resource it needs (``nvidia.com/gpu``, ``amd.com/gpu``; ``""`` for none) and
    ``accelerator_count`` how many (vLLM's tensor parallelism, TGI's shards); ``endpoint`` the
    path users call, as :attr:`Launch.endpoint`; ``shm`` whether it needs a memory-backed ``/dev/shm`` (vLLM and TGI do, for
    tensor parallelism across processes).
    """

    image: str
    port: int
    readiness: str
    liveness: str
    protocol: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    accelerator: str = ""
    accelerator_count: int = 1
    endpoint: str = ""
    shm: bool = False
    startup_seconds: int = 600


@runtime_checkable
class Engine(Protocol):
    """Something that serves a variant: llama.cpp, ONNX Runtime behind a model server, vLLM
    (``modelbuild_register_engines``).

    ``formats`` are the weight formats it loads; ``targets`` the targets whose variants it
    runs (``cpu``, ``cuda``, ``rocm``…); ``protocol`` a key of :data:`PROTOCOLS`;
    ``install`` says how to get it (``pip install 'llama-cpp-python[server]'``), for the
    error a user sees when no installed engine accepts a variant; ``parameters`` names the
    keys its ``params`` accept, each with a one-line meaning (``RUNTIME`` lines and
    ``--param`` are checked against them).

    The core calls ``accepts(model)`` to choose (``None``: it can serve this variant; else
    why not, e.g. ``"llama.cpp runs gguf files; this variant is onnx"``), ``installed()``
    whether it can be started on this machine (``None``: yes; else what is missing), then
    ``launch(model, host=…, port=…)`` for ``run`` or ``container(model, port=…)`` for
    ``deploy``. ``launch`` is called for ``run --dry-run`` as well: it must not start
    anything, read the weights or reach the network. ``port`` is the one the user asked for,
    or the engine's own ``default_port``.
    """

    name: str
    formats: tuple[str, ...]
    targets: tuple[str, ...]
    protocol: str
    install: str
    default_port: int
    parameters: Mapping[str, str]

    def accepts(self, model: EngineModel) -> str | None: ...

    def installed(self) -> str | None: ...

    def launch(self, model: EngineModel, *, host: str, port: int) -> Launch: ...

    def container(self, model: EngineModel, *, port: int) -> Container: ...
