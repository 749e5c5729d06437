"""What the engine plugins emit is what their engines document: every flag of every
``launch()`` and ``container()`` is one the engine's own source declares, taking the kind of
value it takes, and the important ones are cited.

None of vLLM, TGI or Triton runs on a CPU-only machine, so ``run --dry-run`` and ``deploy``
are what users get here: a command copied onto a GPU box has to work as it is. Their flag
lists are vendored in tests/data/engine-flags/, one file per program, each with a header
naming the repository, the paths, the tag and commit they were read at and how the list
was made, and verbatim quotes of the upstream lines (``> path:line: text``) that each
entry's citations below rest on:

    vllm.txt          vllm-project/vllm v0.34.0 (62d4bc3c7): vllm/engine/arg_utils.py,
                      vllm/entrypoints/common/cli_args.py, docker/Dockerfile{,.rocm}
    tgi.txt           huggingface/text-generation-inference v3.3.5 (8d029d2f):
                      docs/source/reference/launcher.md, launcher/src/main.rs, Dockerfile
    triton.txt        triton-inference-server/server v2.71.0 (819ee377): src/command_line_parser.cc,
                      docs/user_guide/model_configuration.md, model_repository.md, build.py
    llama-server.txt  ggml-org/llama.cpp (00dc8057): tools/server/README.md, an excerpt
    mlserver.txt      SeldonIO/MLServer 1.7.1 (1d1f3ee4): mlserver/cli/main.py, Dockerfile

llama-cpp-python's server is checked against the parser the installed package builds,
quoted from its installed sources. Adding a program is one :class:`Documented` entry in
``ENGINES`` (and its list): every check runs for every entry.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

import modelbuild.api as api
from modelbuild.testing import plugin_host
from support import REPO, require_module

DATA = REPO / "tests" / "data" / "engine-flags"
WRAPPER_TAIL = 'exec "$0" "$@"'  # a container's shell wrapper runs its args after it


# -- the documented flags --------------------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    """A program's documented flags: flag → what it takes (``switch``, ``VALUE``, ``INT``,
    ``FLOAT``, a set of choices, or None where only the name was recorded), the quoted
    upstream lines, and the header's fields (repo, ref, paths, version…)."""

    flags: Mapping[str, str | frozenset[str] | None]
    quotes: tuple[str, ...]
    header: Mapping[str, str]


def vendored(name: str) -> Callable[[], Upstream]:
    """The vendored list tests/data/engine-flags/*name*."""

    def load() -> Upstream:
        flags: dict[str, str | frozenset[str] | None] = {}
        quotes, header = [], {}
        for line in (DATA / name).read_text().splitlines():
            if line.startswith("> "):
                quotes.append(line[2:])
            elif line.startswith("#"):
                key, sep, value = line[1:].partition(":")
                if sep and re.fullmatch(r" \w+", key):
                    header.setdefault(key.strip(), value.strip())
            elif line.strip():
                flag, _, takes = line.partition(" ")
                takes = takes.strip()
                flags[flag] = frozenset(takes[1:-1].split(",")) if takes.startswith("{") else (takes or None)
        return Upstream(flags, tuple(quotes), header)

    return load


def installed_llama_cpp_python() -> Upstream:
    """llama-cpp-python's server flags from the installed package itself: the parser its
    ``__main__`` builds (``add_args_from_model`` over ModelSettings and ServerSettings, one
    ``--<field>`` each), quoted from the installed sources."""
    require_module("llama_cpp.server.settings", "pip install 'llama-cpp-python[server]'")
    import argparse

    import llama_cpp
    from llama_cpp.server import cli, settings

    parser = argparse.ArgumentParser()
    cli.add_args_from_model(parser, settings.ModelSettings)
    cli.add_args_from_model(parser, settings.ServerSettings)
    kinds = {int: "INT", float: "FLOAT", str: "VALUE"}
    flags: dict[str, str | frozenset[str] | None] = {}
    for action in parser._actions:
        for option in action.option_strings:
            if action.nargs == 0:
                flags[option] = "switch"
            elif action.type is cli._parse_bool_arg:
                flags[option] = frozenset(("true", "false", "1", "0", "on", "off", "yes", "no"))
            else:
                flags[option] = kinds.get(action.type, "VALUE")
    sources = [Path(cli.__file__), Path(settings.__file__), Path(cli.__file__).with_name("__main__.py")]
    quotes = tuple(f"{p.name}: {line.strip()}" for p in sources for line in p.read_text().splitlines())
    header = {"repo": "abetlen/llama-cpp-python", "ref": f"the installed {llama_cpp.__version__}",
              "paths": "llama_cpp/server/cli.py, settings.py, __main__.py", "version": llama_cpp.__version__}
    return Upstream(flags, quotes, header)


def parse_command(tokens, upstream: Upstream) -> tuple[list[str], dict[str, str | None]]:
    """The positional arguments and the flags (flag → value) of one command line, each flag
    checked against *upstream*: documented, and given the kind of value it takes."""
    positionals: list[str] = []
    used: dict[str, str | None] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("-") or re.fullmatch(r"-\d+(\.\d+)?", token):
            positionals.append(token)
            i += 1
            continue
        flag, eq, value = token.partition("=")
        assert flag in upstream.flags, f"{flag} is not a documented flag (in {token!r})"
        takes = upstream.flags[flag]
        assert takes is not None, f"{flag}: the list does not record what it takes; record it before emitting it"
        if takes == "switch":
            assert not eq, f"{flag} takes no value, got {token!r}"
            used[flag] = None
            i += 1
            continue
        if not eq:
            assert i + 1 < len(tokens), f"{flag} needs a value"
            i += 1
            value = tokens[i]
        i += 1
        _check_value(flag, value, takes)
        used[flag] = value
    return positionals, used


def _check_value(flag: str, value: str, takes: str | frozenset[str]) -> None:
    if isinstance(takes, frozenset):
        assert value in takes, f"{flag} {value!r}: not one of {sorted(takes)}"
    elif takes == "INT":
        assert re.fullmatch(r"-?\d+", value), f"{flag} {value!r}: not an integer"
    elif takes == "FLOAT":
        float(value)
    else:
        assert value, f"{flag}: empty value"


# -- the engines, as their documentation describes them -------------------------------------


def hf_model(**changes) -> api.EngineModel:
    """A Hugging Face safetensors checkpoint, as the runtime hands it to an engine."""
    fields = dict(name="acme/tiny-llama", path=PurePosixPath("/models/acme/tiny-llama"),
                  files=("config.json", "tokenizer.json", "model-00001-of-00002.safetensors",
                         "model-00002-of-00002.safetensors"),
                  weights=("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"),
                  format="safetensors", precision="bfloat16", target="cuda")
    return api.EngineModel(**{**fields, **changes})


def onnx_model(**changes) -> api.EngineModel:
    """An ONNX model with external data beside it, in a subdirectory of the artifact."""
    fields = dict(name="acme/classifier", path=PurePosixPath("/models/acme/classifier"),
                  files=("README.md", "onnx/classifier.onnx", "onnx/classifier.onnx_data"),
                  weights=("onnx/classifier.onnx",), format="onnx", target="cpu")
    return api.EngineModel(**{**fields, **changes})


def gguf_model(**changes) -> api.EngineModel:
    fields = dict(name="tiny", path=PurePosixPath("/models/tiny"), files=("tiny.Q4_K_M.gguf",),
                  weights=("tiny.Q4_K_M.gguf",), format="gguf", quantization="q4_k_m", target="cpu")
    return api.EngineModel(**{**fields, **changes})


def with_llama_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A ``llama-server`` on PATH (a stub: the command is only rendered), so the llama.cpp
    engine chooses it."""
    (tmp_path / "bin").mkdir()
    stub = tmp_path / "bin" / "llama-server"
    stub.write_text("#!/bin/sh\nexit 1\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")


def without_llama_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ``llama-server`` on PATH, so the llama.cpp engine runs llama-cpp-python's server."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    monkeypatch.setenv("PATH", os.pathsep.join(d for d in dirs if not (Path(d) / "llama-server").exists()))


@dataclass(frozen=True)
class Documented:
    """One program an engine runs, and where its documentation says each piece comes from.

    ``flags`` loads the program's documented flags. ``program`` is how ``Launch.argv``
    starts (``*`` matches any one argument; a bare name matches a path to it) and
    ``positionals`` how many arguments after it are not flags (vLLM's ``model_tag``);
    ``setup`` makes the engine choose this program. ``models`` are the variants to render,
    ``samples`` a value for the parameters this program takes (across an engine's entries,
    every parameter has one), ``quotes`` flag → upstream text documenting it, ``health``
    the Launch health path (``{endpoint}``: the launch's endpoint).

    For ``deploy``: ``image_command`` is what the image runs ``Container.args`` after (its
    entry point, or CMD), cited by ``image_command_quotes``, with ``image_positionals``
    non-flag arguments after it (None: the entry's container is checked by another entry);
    a container whose ``command`` is a ``/bin/sh -c`` wrapper must exec its args, which then
    start with ``image_command``. ``images`` is the image per target (``{version}``: the
    flag list's header; ``re:``: a pattern), cited by ``image_quotes``; ``probes`` the
    (readiness, liveness) paths; ``accelerators`` the resource per target; ``shm``.
    """

    engine: str
    flags: Callable[[], Upstream]
    program: tuple[str, ...]
    models: tuple[api.EngineModel, ...]
    samples: Mapping[str, str]
    quotes: Mapping[str, str]
    health: str
    positionals: int = 0
    setup: Callable[[pytest.MonkeyPatch, Path], None] | None = None
    image_command: tuple[str, ...] | None = None
    image_command_quotes: tuple[str, ...] = ()
    image_positionals: int = 0
    images: Mapping[str, str] = field(default_factory=dict)
    image_quotes: tuple[str, ...] = ()
    probes: tuple[str, str] = ("", "")
    accelerators: Mapping[str, str] = field(default_factory=dict)
    shm: bool = False


ENGINES = {
    "vllm": Documented(
        engine="vllm", flags=vendored("vllm.txt"), program=("vllm", "serve"), positionals=1,
        models=(hf_model(), hf_model(context_length=32768, target="rocm", precision="float16"),
                hf_model(quantization="gptq", precision="", target="")),
        samples={"tensor_parallel_size": "1", "gpu_memory_utilization": "0.85", "max_num_seqs": "64",
                 "dtype": "half", "quantization": "awq", "trust_remote_code": "true", "enforce_eager": "true"},
        quotes={
            "--host": "host: str | None = None",
            "--port": "port: int = 8000",
            "--served-model-name": "The model name(s) used in the API",
            "--max-model-len": "Model context length (prompt and output)",
            "--dtype": 'ModelDType = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]',
            "--quantization": "`quantization_config` attribute in the model config file",
            "--tensor-parallel-size": "Number of tensor parallel groups.",
            "--gpu-memory-utilization": "The fraction of GPU memory to be used for the model executor",
            "--max-num-seqs": "Maximum number of sequences to be processed in a single iteration.",
            "--trust-remote-code": "Trust remote code (e.g., from HuggingFace)",
            "--enforce-eager": "Whether to always use eager-mode PyTorch.",
        },
        health="/health",
        image_command=("vllm", "serve"), image_positionals=1,
        image_command_quotes=('docker/Dockerfile:1386: ENTRYPOINT ["vllm", "serve"]',
                              'docker/Dockerfile.rocm:592: ENTRYPOINT ["vllm", "serve"]'),
        images={"cuda": "vllm/vllm-openai:v{version}", "rocm": "vllm/vllm-openai-rocm:v{version}",
                "": "vllm/vllm-openai:v{version}"},
        image_quotes=('docker manifest push "vllm/vllm-openai:v${RELEASE_VERSION}"',
                      'docker push "vllm/vllm-openai-rocm:v${RELEASE_VERSION}"'),
        probes=("/health", "/health"), shm=True,
        accelerators={"cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu", "": "nvidia.com/gpu"},
    ),
    "tgi": Documented(
        engine="tgi", flags=vendored("tgi.txt"), program=("text-generation-launcher",),
        models=(hf_model(), hf_model(context_length=8192, target="rocm"), hf_model(context_length=2048),
                hf_model(quantization="awq", precision="float16")),
        samples={"num_shard": "1", "quantize": "eetq", "dtype": "float16", "max_batch_prefill_tokens": "8192",
                 "max_concurrent_requests": "64", "cuda_memory_fraction": "0.9", "trust_remote_code": "yes",
                 "usage_stats": "off"},
        quotes={
            "--model-id": "Or it can be a local directory containing the necessary files",
            "--hostname": "The IP address to listen on",
            "--port": '#[clap(default_value = "3000", long, short, env)]',
            "--max-total-tokens": 'defines the "memory budget"',
            "--max-input-tokens": "must be < `max_total_tokens`",
            "--max-batch-prefill-tokens": "`max_batch_prefill_tokens` must be >= `max_input_tokens`",
            "--dtype": "[possible values: float16, bfloat16]",
            "--quantize": "since the quantization method is read from the model",
            "--num-shard": "By default text-generation-inference will use all available GPUs",
        },
        health="/health",
        image_command=("text-generation-launcher",),
        image_command_quotes=('Dockerfile:249: ENTRYPOINT ["/tgi-entrypoint.sh"]',
                              'Dockerfile_amd:311: ENTRYPOINT ["/tgi-entrypoint.sh"]',
                              "tgi-entrypoint.sh:6: exec text-generation-launcher $@"),
        images={"cuda": "ghcr.io/huggingface/text-generation-inference:{version}",
                "rocm": "ghcr.io/huggingface/text-generation-inference:{version}-rocm",
                "": "ghcr.io/huggingface/text-generation-inference:{version}"},
        image_quotes=("ghcr.io/huggingface/text-generation-inference:3.3.5 --model-id $model",
                      "type=semver,pattern={{version}}${{ env.LABEL_EXTENSION }}", 'label_extension="-rocm"'),
        probes=("/health", "/health"), shm=True,
        accelerators={"cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu", "": "nvidia.com/gpu"},
    ),
    "triton": Documented(
        engine="triton", flags=vendored("triton.txt"), program=("tritonserver",),
        models=(onnx_model(), onnx_model(target="cuda"), onnx_model(target="", name="plain"),
                onnx_model(files=("model.onnx",), weights=("model.onnx",))),
        samples={"instance_count": "3", "max_batch_size": "0", "grpc_port": "9001", "metrics_port": "9002",
                 "log_verbose": "1"},
        quotes={
            "--model-repository": "Path to model repository directory.",
            "--http-address": "The address for the http server to bind to.",
            "--http-port": "requests. Default is 8000.",
            "--allow-grpc": "Allow the server to listen for GRPC requests.",
            "--grpc-port": "requests. Default is 8001.",
            "--allow-metrics": "Allow the server to provide prometheus metrics.",
            "--metrics-port": "The port reporting prometheus metrics. Default is 8002.",
            "--backend-config": "flag is --backend-config=<backend_name>,<setting>=<value>.",
        },
        health="/v2/health/ready",
        image_command=("tritonserver",),
        image_command_quotes=("build.py:1278: ENV PATH /opt/tritonserver/bin:${PATH}",),
        images={"cpu": "nvcr.io/nvidia/tritonserver:26.07-py3", "cuda": "nvcr.io/nvidia/tritonserver:26.07-py3",
                "": "nvcr.io/nvidia/tritonserver:26.07-py3"},
        image_quotes=("nvcr.io/nvidia/tritonserver:26.07-py3 tritonserver --model-repository=/models",),
        probes=("/v2/health/ready", "/v2/health/live"),
        accelerators={"cpu": "", "cuda": "nvidia.com/gpu", "": ""},
    ),
    "llama-server": Documented(
        engine="llama.cpp", flags=vendored("llama-server.txt"), program=("llama-server",), setup=with_llama_server,
        models=(gguf_model(), gguf_model(context_length=4096, target="cuda")),
        samples={"n_gpu_layers": "999", "threads": "4", "batch_size": "512", "ubatch_size": "128",
                 "flash_attn": "on", "seed": "7", "parallel": "2"},
        quotes={
            "-m": "| `-m, --model FNAME` | model path to load",
            "--host": "| `--host HOST` | IP addresses to listen on",
            "--port": "| `--port PORT` | port to listen",
            "--alias": "| `-a, --alias STRING` | set model name aliases",
            "--ctx-size": "| `-c, --ctx-size N` | size of the prompt context",
            "--n-gpu-layers": "| `-ngl, --gpu-layers, --n-gpu-layers N` |",
            "--flash-attn": "| `-fa, --flash-attn [on\\|off\\|auto]` |",
            "--parallel": "| `-np, --parallel N` | number of server slots",
        },
        health="/health",
        image_command=("llama-server",), image_command_quotes=('ENTRYPOINT [ "/app/llama-server" ]',),
        images={"cpu": r"re:ghcr\.io/ggml-org/llama\.cpp:server-b\d+",
                "": r"re:ghcr\.io/ggml-org/llama\.cpp:server-b\d+",
                "cuda": r"re:ghcr\.io/ggml-org/llama\.cpp:server-cuda-b\d+",
                "rocm": r"re:ghcr\.io/ggml-org/llama\.cpp:server-rocm-b\d+"},
        image_quotes=('SERVERTAGS="${PREFIX}server${TYPE},${PREFIX}server${TYPE}${TAG_POSTFIX}"',
                      'TAG_POSTFIX="-b${BUILD_NUMBER}"', "`ghcr.io/ggml-org/llama.cpp:server-rocm`"),
        probes=("/health", "/health"),
        accelerators={"cpu": "", "cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu", "": ""},
    ),
    "llama_cpp.server": Documented(
        engine="llama.cpp", flags=installed_llama_cpp_python, program=(sys.executable, "-m", "llama_cpp.server"),
        setup=without_llama_server,
        models=(gguf_model(), gguf_model(context_length=4096)),
        samples={"n_gpu_layers": "0", "threads": "4", "batch_size": "512", "ubatch_size": "128",
                 "flash_attn": "off", "seed": "7", "chat_format": "chatml"},
        quotes={
            "--model": "settings.py: model: str = Field(",
            "--model_alias": "settings.py: model_alias: Optional[str] = Field(",
            "--n_ctx": 'settings.py: n_ctx: int = Field(default=2048, ge=0, description="The context size.")',
            "--host": 'settings.py: host: str = Field(default="localhost", description="Listen address")',
            "--port": 'settings.py: port: int = Field(default=8000, description="Listen port")',
            "--flash_attn": "settings.py: flash_attn: bool = Field(",
            "--chat_format": "settings.py: chat_format: Optional[str] = Field(",
        },
        health="/v1/models",  # the container is llama-server's image: the entry above checks it
    ),
    "mlserver": Documented(
        engine="onnxruntime", flags=vendored("mlserver.txt"), program=(sys.executable, "-c", "*", "start"),
        positionals=1, models=(onnx_model(), onnx_model(target="")),
        samples={"threads": "2", "optimization": "basic"},
        quotes={}, health="{endpoint}/ready",
        image_command=("mlserver", "start", "$MLSERVER_MODELS_DIR"),
        image_command_quotes=("Dockerfile:135: mlserver start $MLSERVER_MODELS_DIR",),
        images={"cpu": "seldonio/mlserver:{version}", "": "seldonio/mlserver:{version}"},
        image_quotes=('IMAGE_NAME="seldonio/mlserver"', '_buildImage "all" $_version'),
        probes=("{endpoint}/ready", "/v2/health/live"),
        accelerators={"cpu": "", "": ""},
    ),
}


@pytest.fixture(scope="module")
def engines():
    """The engines as the CLI gets them: registered through their entry points."""
    host = plugin_host()
    return {name: host.engines.get(entry.engine) for name, entry in ENGINES.items()}


@pytest.fixture
def entry(request, monkeypatch, tmp_path) -> str:
    """An ``ENGINES`` key (indirect parameter), with the engine set up to run that program."""
    if ENGINES[request.param].setup:
        ENGINES[request.param].setup(monkeypatch, tmp_path)
    return request.param


def each(names=ENGINES):
    return pytest.mark.parametrize("entry", list(names), indirect=True)


def with_containers():
    return each([name for name, e in ENGINES.items() if e.image_command is not None])


def starts_with(argv, program: tuple[str, ...]) -> bool:
    if len(argv) < len(program):
        return False
    return all(want in ("*", got) or ("/" not in want and Path(got).name == want) for got, want in zip(argv, program))


def rendered(engine, model: api.EngineModel, container: bool = True):
    """``launch`` (and ``container``) of *model*, on the engine's default port."""
    launch = engine.launch(model, host="127.0.0.1", port=engine.default_port)
    return launch, engine.container(model, port=engine.default_port) if container else None


def container_command(doc: Documented, container: api.Container) -> tuple[str, ...]:
    """What the container runs: its args after the image's command, or, when a shell
    wrapper replaces the entry point, its args (which the wrapper must exec)."""
    assert doc.image_command is not None
    if container.command:
        assert container.command[:2] == ("/bin/sh", "-c") and len(container.command) == 3, container.command
        assert container.command[2].endswith(WRAPPER_TAIL), container.command[2]
        assert container.args[:len(doc.image_command)] == doc.image_command, container.args
        return container.args
    return (*doc.image_command, *container.args)


def commands(engine, doc: Documented, model: api.EngineModel) -> list[tuple[str, tuple[str, ...], tuple, int]]:
    """(what, argv, the program's own start, how many positionals) for the launch and, where
    this entry checks it, the container."""
    launch, container = rendered(engine, model, doc.image_command is not None)
    out = [("launch", launch.argv, doc.program, doc.positionals)]
    if container is not None:
        out.append(("container", container_command(doc, container), doc.image_command, doc.image_positionals))
    return out


def all_models(doc: Documented) -> list[api.EngineModel]:
    """The entry's models, and its first with each parameter's sample on its own."""
    base = doc.models[0]
    return [*doc.models, *(replace(base, params={key: value}) for key, value in doc.samples.items())]


def replace(model: api.EngineModel, **changes) -> api.EngineModel:
    return dataclasses.replace(model, **changes)


# -- every flag is documented ----------------------------------------------------------------


@each()
def test_every_emitted_flag_is_documented_with_its_kind_of_value(engines, entry):
    doc = ENGINES[entry]
    upstream = doc.flags()
    for model in all_models(doc):
        for what, argv, program, positionals in commands(engines[entry], doc, model):
            assert starts_with(argv, program), (what, argv)
            found, _used = parse_command(argv[len(program):], upstream)
            assert len(found) == positionals, (what, argv)


@each()
def test_the_cited_flags_are_emitted_and_their_quotes_are_upstream_text(engines, entry):
    """Each citation is verbatim upstream text (the vendored quotes, or the installed source)
    for a documented flag that some rendering of the entry's models really emits."""
    doc = ENGINES[entry]
    upstream = doc.flags()
    emitted = set()
    for model in all_models(doc):
        for _, argv, program, _n in commands(engines[entry], doc, model):
            emitted |= set(parse_command(argv[len(program):], upstream)[1])
    for flag, quote in doc.quotes.items():
        assert flag in upstream.flags, flag
        assert flag in emitted, f"{flag} is cited but never emitted"
        assert any(quote in line for line in upstream.quotes), f"{flag}: {quote!r} is not quoted upstream"
    for quote in (*doc.image_command_quotes, *doc.image_quotes):
        assert any(quote in line for line in upstream.quotes), f"{quote!r} is not quoted upstream"
    for key in ("repo", "ref", "paths", "version"):
        assert upstream.header.get(key), f"{entry}: the flag list's header names no {key}"


@pytest.mark.parametrize("engine", sorted({doc.engine for doc in ENGINES.values()}))
def test_every_parameter_has_a_sample(engines, engine):
    some = next(name for name, doc in ENGINES.items() if doc.engine == engine)
    sampled = {key for doc in ENGINES.values() if doc.engine == engine for key in doc.samples}
    assert sampled == set(engines[some].parameters)


@each()
def test_each_parameter_changes_what_is_rendered(engines, entry):
    doc = ENGINES[entry]
    plain = rendered(engines[entry], doc.models[0], doc.image_command is not None)
    for model in all_models(doc)[len(doc.models):]:
        assert rendered(engines[entry], model, doc.image_command is not None) != plain, model.params


# -- launch and container fields -------------------------------------------------------------


@each()
def test_launch_listens_where_asked_and_names_health_endpoint_and_protocol(engines, entry):
    doc, engine = ENGINES[entry], engines[entry]
    launch = engine.launch(doc.models[0], host="127.0.0.1", port=18123)
    assert launch.port == 18123
    assert launch.health == doc.health.format(endpoint=launch.endpoint)
    assert launch.protocol == engine.protocol and engine.protocol in api.ENGINE_PROTOCOLS
    assert launch.endpoint.startswith("/")
    if doc.engine != "onnxruntime":  # MLServer takes its host and port from settings.json
        assert "18123" in " ".join(launch.argv) and "127.0.0.1" in " ".join(launch.argv)


@with_containers()
def test_the_container_is_a_pinned_image_with_probes_accelerator_and_shm(engines, entry):
    doc, engine = ENGINES[entry], engines[entry]
    version = doc.flags().header["version"]
    for target, accelerator in doc.accelerators.items():
        model = replace(doc.models[0], target=target)
        container = engine.container(model, port=18124)
        endpoint = engine.launch(model, host="127.0.0.1", port=18124).endpoint
        image = doc.images[target]
        if image.startswith("re:"):
            assert re.fullmatch(image[3:], container.image), container.image
        else:
            assert container.image == image.format(version=version)
        tag = container.image.rpartition(":")[2]
        assert "/" not in tag and tag not in ("latest", "nightly") and re.search(r"\d", tag), container.image
        assert (container.readiness, container.liveness) == tuple(p.format(endpoint=endpoint) for p in doc.probes)
        assert container.accelerator == accelerator, target
        assert container.shm is doc.shm
        assert container.port == 18124 and container.protocol == engine.protocol


@each()
def test_launch_and_container_read_nothing(engines, entry):
    """A model directory that does not exist renders all the same: nothing is read."""
    doc = ENGINES[entry]
    missing = replace(doc.models[0], path=PurePosixPath("/nonexistent/modelbuild/x"))
    launch, container = rendered(engines[entry], missing, doc.image_command is not None)
    said = [*launch.argv, *launch.links.values(), *launch.files.values()]
    if container is not None:
        said += [*container.command, *container.args, *container.files.values()]
    assert any("/nonexistent/modelbuild/x" in text for text in said)


@pytest.mark.parametrize("name", ["vllm", "tgi", "triton"])
def test_launch_names_the_model_by_an_absolute_path(engines, name, tmp_path, monkeypatch):
    """The core starts the server in a work directory of its own: a relative model path
    would point into it."""
    monkeypatch.chdir(tmp_path)
    model = replace(ENGINES[name].models[0], path=PurePosixPath("store/run/abc"))
    launch = engines[name].launch(model, host="127.0.0.1", port=1)
    said = [*launch.argv, *launch.links.values()]
    assert any(text.startswith(f"{tmp_path}/store/run/abc") for text in said), said
    assert not any(text.startswith("store/") for text in said), said


# -- accepts() and parameters ----------------------------------------------------------------


@pytest.mark.parametrize(("name", "model", "words"), [
    ("vllm", hf_model(), None),
    ("vllm", hf_model(target=""), None),
    ("vllm", hf_model(format="gguf", weights=("m.gguf",), files=("m.gguf",)), ("safetensors", "gguf", "llama.cpp")),
    ("vllm", hf_model(target="cpu"), ("cuda and rocm", "cpu", "separate build")),
    ("vllm", hf_model(files=("model.safetensors",), weights=("model.safetensors",)), ("config.json",)),
    ("tgi", hf_model(target="rocm"), None),
    ("tgi", onnx_model(), ("safetensors", "onnx")),
    ("tgi", hf_model(target="cpu"), ("cuda and rocm", "cpu")),
    ("triton", onnx_model(), None),
    ("triton", hf_model(), ("onnx", "safetensors")),
    ("triton", onnx_model(target="rocm"), ("cpu and cuda", "rocm")),
    ("triton", onnx_model(weights=("encoder.onnx", "decoder.onnx")), ("one .onnx", "has 2", "encoder.onnx")),
    ("triton", onnx_model(format="", weights=(), files=("model.onnx",)), None),
])
def test_accepts_says_what_the_engine_needs(engines, name, model, words):
    reason = engines[name].accepts(model)
    if words is None:
        assert reason is None
    else:
        assert reason and "\n" not in reason
        assert all(w in reason for w in words), reason


@pytest.mark.parametrize(("name", "params", "words"), [
    ("vllm", {"tensor_paralel_size": "2"}, ("tensor_paralel_size",)),
    ("vllm", {"tensor_parallel_size": "two"}, ("tensor_parallel_size", "not an integer")),
    ("vllm", {"gpu_memory_utilization": "1.5"}, ("gpu_memory_utilization", "(0, 1]")),
    ("vllm", {"gpu_memory_utilization": "most"}, ("gpu_memory_utilization", "not a number")),
    ("vllm", {"dtype": "int4"}, ("dtype", "bfloat16")),
    ("vllm", {"enforce_eager": "maybe"}, ("enforce_eager", "boolean")),
    ("vllm", {"max_num_seqs": "0"}, ("max_num_seqs", "at least 1")),
    ("tgi", {"quantize": "q4_k_m"}, ("quantize", "awq", "gptq")),
    ("tgi", {"dtype": "float16", "quantize": "eetq"}, ("dtype", "quantize")),
    ("tgi", {"num_shard": "1.5"}, ("num_shard", "not an integer")),
    ("tgi", {"cuda_memory_fraction": "inf"}, ("cuda_memory_fraction", "(0, 1]")),
    ("triton", {"grpc_port": "70000"}, ("grpc_port", "1-65535")),
    ("triton", {"instance_count": "0"}, ("instance_count", "at least 1")),
    ("triton", {"batch": "4"}, ("batch",)),
])
def test_a_bad_parameter_is_a_one_line_usage_error(engines, name, params, words):
    engine = engines[name]
    model = replace(ENGINES[name].models[0], params=params)
    for render in (lambda: engine.launch(model, host="127.0.0.1", port=1), lambda: engine.container(model, port=1)):
        with pytest.raises(api.UsageError) as caught:
            render()
        message = str(caught.value)
        assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize("name", [next(n for n, d in ENGINES.items() if d.engine == e)
                                  for e in dict.fromkeys(d.engine for d in ENGINES.values())])
def test_an_unknown_parameter_names_the_known_ones(engines, name):
    engine = engines[name]
    model = replace(ENGINES[name].models[0], params={"no_such": "1"})
    with pytest.raises(api.UsageError) as caught:
        engine.launch(model, host="127.0.0.1", port=1)
    assert "no_such" in str(caught.value)
    assert all(key in caught.value.hint for key in engine.parameters), caught.value.hint


# -- vLLM ------------------------------------------------------------------------------------


def vllm_flags(engines, model) -> dict[str, str | None]:
    argv = engines["vllm"].launch(model, host="127.0.0.1", port=8000).argv
    return parse_command(argv[2:], vendored("vllm.txt")())[1]


@pytest.mark.parametrize(("precision", "quantization", "dtype"), [
    ("bfloat16", "", "bfloat16"), ("float16", "", "float16"), ("fp32", "", "float32"),
    ("int8", "", None), ("float16", "gptq", None),
])
def test_vllm_dtype_comes_from_an_unquantized_variants_precision(engines, precision, quantization, dtype):
    """A quantized checkpoint's config.json names its method; vLLM picks the dtype then."""
    flags = vllm_flags(engines, hf_model(precision=precision, quantization=quantization))
    assert flags.get("--dtype") == dtype
    assert "--quantization" not in flags


def test_vllm_serves_the_directory_under_the_models_name_with_its_context(engines):
    model = hf_model(context_length=16384, params={"tensor_parallel_size": "2", "enforce_eager": "false"})
    argv = engines["vllm"].launch(model, host="0.0.0.0", port=8001).argv
    assert argv[2] == "/models/acme/tiny-llama"
    flags = parse_command(argv[2:], vendored("vllm.txt")())[1]
    assert flags["--served-model-name"] == "acme/tiny-llama" and flags["--max-model-len"] == "16384"
    assert flags["--tensor-parallel-size"] == "2" and "--enforce-eager" not in flags
    assert engines["vllm"].launch(model, host="0.0.0.0", port=8001).endpoint == "/v1"


@pytest.mark.parametrize(("name", "key"), [("vllm", "tensor_parallel_size"), ("tgi", "num_shard")])
def test_a_model_split_over_gpus_asks_the_pod_for_as_many(engines, name, key):
    """A model split over 2 GPUs would not start in a pod that gets one: the container asks
    for both."""
    model = hf_model(params={key: "2"})
    assert "2" in " ".join(engines[name].launch(model, host="127.0.0.1", port=1).argv)
    container = engines[name].container(model, port=1)
    assert container.accelerator_count == 2 and container.accelerator == "nvidia.com/gpu"
    assert engines[name].container(hf_model(), port=1).accelerator_count == 1


# -- TGI -------------------------------------------------------------------------------------


def tgi_flags(engines, model) -> dict[str, str | None]:
    argv = engines["tgi"].launch(model, host="127.0.0.1", port=8080).argv
    return parse_command(argv[1:], vendored("tgi.txt")())[1]


@pytest.mark.parametrize(("context", "expected"), [
    (None, {}),
    (2048, {"--max-input-tokens": "2047", "--max-total-tokens": "2048"}),
    (4097, {"--max-input-tokens": "4096", "--max-total-tokens": "4097"}),
    (8192, {"--max-input-tokens": "8191", "--max-total-tokens": "8192", "--max-batch-prefill-tokens": "8191"}),
])
def test_tgi_context_is_total_tokens_with_one_less_for_input(engines, context, expected):
    flags = tgi_flags(engines, hf_model(context_length=context))
    got = {k: v for k, v in flags.items() if k in ("--max-input-tokens", "--max-total-tokens",
                                                   "--max-batch-prefill-tokens")}
    assert got == expected


def test_tgi_keeps_a_prefill_budget_the_user_gives(engines):
    flags = tgi_flags(engines, hf_model(context_length=8192, params={"max_batch_prefill_tokens": "2048"}))
    assert flags["--max-batch-prefill-tokens"] == "2048"


def test_tgi_context_below_two_is_refused(engines):
    with pytest.raises(api.UsageError, match="at least 2"):
        engines["tgi"].launch(hf_model(context_length=1), host="127.0.0.1", port=1)


@pytest.mark.parametrize(("model", "dtype"), [
    (hf_model(precision="bfloat16"), "bfloat16"), (hf_model(precision="fp16"), "float16"),
    (hf_model(precision="float32"), None), (hf_model(precision="float16", quantization="gptq"), None),
    (hf_model(precision="bfloat16", params={"quantize": "eetq"}), None),
])
def test_tgi_dtype_only_for_an_unquantized_half_precision_variant(engines, model, dtype):
    assert tgi_flags(engines, model).get("--dtype") == dtype


# -- Triton ----------------------------------------------------------------------------------


def model_config(text: str):
    """``config.pbtxt`` parsed with Triton's own schema (tritonclient's ModelConfig), in a
    process of its own: tritonclient's gRPC protos and MLServer's define the same
    ``inference.*`` symbols, and one process's protobuf pool takes only one of them."""
    import importlib.util

    if importlib.util.find_spec("tritonclient") is None:  # find, never import, here
        require_module("tritonclient", "pip install 'tritonclient[grpc]' (mlserver installs it)")
    script = (
        "import json, sys\n"
        "from google.protobuf import json_format, text_format\n"
        "from tritonclient.grpc import model_config_pb2 as pb\n"
        "config = text_format.Parse(sys.stdin.read(), pb.ModelConfig())\n"
        "print(json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True,\n"
        "                                           always_print_fields_with_no_presence=True)))\n")
    run = subprocess.run([sys.executable, "-c", script], input=text, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return _namespace(json.loads(run.stdout))


def _namespace(value):
    """JSON → attributes (``config.instance_group[0].count``), as the message reads."""
    import types

    if isinstance(value, dict):
        return types.SimpleNamespace(**{k: _namespace(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_namespace(v) for v in value]
    return value


@pytest.mark.parametrize(("model", "kind"), [(onnx_model(), "KIND_CPU"), (onnx_model(target="cuda"), "KIND_GPU"),
                                             (onnx_model(target=""), "KIND_CPU")])
def test_triton_config_parses_with_tritons_schema(engines, model, kind):
    launch = engines["triton"].launch(model, host="127.0.0.1", port=8000)
    (path, text), = launch.files.items()
    assert path == "repo/acme-classifier/config.pbtxt"
    config = model_config(text)
    assert config.name == "acme-classifier" and config.backend == "onnxruntime"
    assert config.default_model_filename == "classifier.onnx"
    assert config.max_batch_size == 0 and not config.input and not config.output  # left to auto-complete
    group, = config.instance_group
    assert group.kind == kind
    container = engines["triton"].container(model, port=8000)
    assert list(container.files.values()) == [text]


def test_triton_parameters_reach_the_config_and_the_flags(engines):
    model = onnx_model(params={"instance_count": "3", "max_batch_size": "8"})
    launch = engines["triton"].launch(model, host="127.0.0.1", port=8000)
    config = model_config(next(iter(launch.files.values())))
    assert config.max_batch_size == 8 and config.instance_group[0].count == 3
    flags = parse_command(launch.argv[1:], vendored("triton.txt")())[1]
    assert "--backend-config" not in flags
    off = engines["triton"].launch(onnx_model(params={"max_batch_size": "0"}), host="127.0.0.1", port=8000)
    assert parse_command(off.argv[1:], vendored("triton.txt")())[1]["--backend-config"] == \
        "onnxruntime,default-max-batch-size=0"


def test_triton_grpc_and_metrics_are_off_unless_given_a_port(engines):
    flags = parse_command(engines["triton"].launch(onnx_model(), host="127.0.0.1", port=8000).argv[1:],
                          vendored("triton.txt")())[1]
    assert flags["--allow-grpc"] == "false" and flags["--allow-metrics"] == "false"
    model = onnx_model(params={"grpc_port": "9001", "metrics_port": "9002"})
    argv = engines["triton"].launch(model, host="127.0.0.1", port=8000).argv
    flags = parse_command(argv[1:], vendored("triton.txt")())[1]
    assert (flags["--allow-grpc"], flags["--grpc-port"]) == ("true", "9001")
    assert (flags["--allow-metrics"], flags["--metrics-port"]) == ("true", "9002")


def test_triton_serves_an_acceptable_name(engines):
    launch = engines["triton"].launch(onnx_model(name="acme/Big Model:v2"), host="127.0.0.1", port=8000)
    assert launch.endpoint == "/v2/models/acme-Big-Model-v2"
    assert set(launch.links) == {"repo/acme-Big-Model-v2/1"}


def onnx_on_disk(root: Path) -> Path:
    """A model directory as the runtime materialises one: an .onnx and its external data."""
    (root / "onnx").mkdir(parents=True)
    (root / "onnx" / "classifier.onnx").write_bytes(b"onnx graph")
    (root / "onnx" / "classifier.onnx_data").write_bytes(b"weights")
    return root


def test_triton_run_repository_is_where_its_backend_looks(engines, tmp_path):
    """The work directory the core builds from Launch.files/links (prepare_workdir) has the
    file where Triton's onnxruntime backend opens it, <repo>/<name>/1/<default_model_filename>,
    with its external data beside that path."""
    from modelbuild.runtime.process import prepare_workdir

    model = onnx_model(path=onnx_on_disk(tmp_path / "model"))
    launch = engines["triton"].launch(model, host="127.0.0.1", port=8000)
    work = prepare_workdir(tmp_path / "work", dict(launch.files), dict(launch.links))
    (repo,) = [work / a.partition("=")[2] for a in launch.argv if a.startswith("--model-repository=")]
    name = launch.endpoint.rpartition("/")[2]
    config = model_config((repo / name / "config.pbtxt").read_text())
    opened = repo / name / "1" / config.default_model_filename
    assert opened.read_bytes() == b"onnx graph" and (opened.parent / "classifier.onnx_data").read_bytes() == b"weights"


def test_triton_deploy_wrapper_builds_the_repository_and_execs_tritonserver(engines, tmp_path):
    """The container's /bin/sh script, run for real with its fixed paths moved under
    tmp_path: the repository it builds holds the mounted config and the model, and the
    program it execs gets exactly the container's args."""
    triton = sys.modules[type(engines["triton"]).__module__]
    model = onnx_model(path=onnx_on_disk(tmp_path / "model"))
    container = engines["triton"].container(model, port=8000)
    moved = {triton.REPO_DIR: str(tmp_path / "repo"), triton.CONFIG_DIR: str(tmp_path / "cm")}
    script = container.command[2]
    for old, new in moved.items():
        script = script.replace(old, new)
    for path, text in container.files.items():  # what the ConfigMap mounts
        target = Path(path.replace(triton.CONFIG_DIR, moved[triton.CONFIG_DIR]))
        target.parent.mkdir(parents=True)
        target.write_text(text)
    stub = tmp_path / "tritonserver"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    out = subprocess.run(["/bin/sh", "-c", script, str(stub), *container.args[1:]], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines() == list(container.args[1:])
    assert container.args[0] == "tritonserver" and f"--model-repository={triton.REPO_DIR}" in container.args
    home = tmp_path / "repo" / "acme-classifier"
    config = model_config((home / "config.pbtxt").read_text())
    assert (home / "1" / config.default_model_filename).read_bytes() == b"onnx graph"
    assert (home / "1" / "classifier.onnx_data").is_file()
    assert os.path.realpath(home / "1") == str(tmp_path / "model" / "onnx")
    assert shlex.split(container.command[2])[-3:] == ["exec", "$0", "$@"]


# -- the command `modelbuild run --dry-run` prints is the one checked above ------------------

#: Which bundled example each program is dry-run on, and the variant to pick.
DRY_RUN_ON = {
    "vllm": ("multi-platform", "cuda"), "tgi": ("multi-platform", "rocm"), "triton": ("onnx", None),
    "llama-server": ("convert-quantize", None), "llama_cpp.server": ("convert-quantize", None),
    "mlserver": ("onnx", None),
}


@pytest.fixture(scope="module")
def built_examples(tmp_path_factory):
    """The bundled examples the dry runs use, built once into one store; their tags."""
    from engines import build_example

    home = tmp_path_factory.mktemp("dry-run-home")
    return home, {name: build_example(home, name)["tags"][0] for name in {e for e, _ in DRY_RUN_ON.values()}}


@each(DRY_RUN_ON)
def test_run_dry_run_prints_the_documented_command_for_a_built_variant(built_examples, entry):
    """``modelbuild run REF --engine E --dry-run``, a real CLI process on a real artifact:
    its command is the engine's launch, every flag of it documented upstream, with the
    extra arguments after ``--`` passed on unchanged at its end."""
    from engines import modelbuild

    home, tags = built_examples
    doc = ENGINES[entry]
    example, platform = DRY_RUN_ON[entry]
    args = ["run", tags[example], "--engine", doc.engine, "--dry-run", "--json", "--port", "18123",
            "--context", "128"] + (["--platform", platform] if platform else [])
    plan = json.loads(modelbuild(home, *args))
    argv = plan["argv"]
    assert plan["engine"] == doc.engine and starts_with(argv, doc.program), argv
    found, used = parse_command(argv[len(doc.program):], doc.flags())
    assert len(found) == doc.positionals, argv
    # the port asked for reaches the engine: a flag, or its settings file (MLServer's http_port)
    assert "18123" in used.values() or any('"http_port": 18123' in text for text in plan["workFiles"].values())
    assert plan["command"] == shlex.join(argv)
    text = modelbuild(home, *[a for a in args if a != "--json"], "--", "--extra")
    assert f"command:  {shlex.join([*argv, '--extra'])}" in text.splitlines()
