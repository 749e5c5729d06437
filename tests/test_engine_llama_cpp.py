"""The llama.cpp engine (plugins/engines/llama_cpp.py).

First what it decides, without a server: which variants it takes (one GGUF, or the first
shard of a complete split set), the command line for each of its two servers, with every
flag checked against where that server documents it, its parameters, its container. The
python server's command line is also parsed by llama-cpp-python's own argument parser.

Then (``-m llama``) llama-cpp-python's server really started from the engine's Launch, as
``modelbuild run`` starts it, serving ``Modelfile.examples/convert-quantize`` (tiny-llama
converted to GGUF and quantized to Q4_K_M) built and materialised read-only: a greedy
completion over HTTP must be exactly what ``llama_cpp.Llama`` gives in this process for the
same file and request, log-probabilities included; a split build of the same model must
give the same text; SIGTERM must leave no process behind.

Flag sources, cited below as README (llama.cpp's tools/server/README.md, the
``llama-server --help`` table) and settings.py (llama-cpp-python's
llama_cpp/server/settings.py, whose fields cli.py's ``add_args_from_model`` turns into
``--<field>`` flags).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from engines import alive, build_example, descendants, engine_model, free_port, http_json, materialise, \
    modelbuild, serving, start, stop, wait_healthy
from modelbuild.api import ENGINE_PROTOCOLS, Engine, EngineModel, UsageError
from modelbuild_plugins.engines import llama_cpp as plugin
from modelbuild_plugins.engines.llama_cpp import LlamaCppEngine
from support import EXAMPLES, require_module

ENGINE = LlamaCppEngine()
HOST = "127.0.0.1"
FAKE_LLAMA_SERVER = "/opt/llama.cpp/bin/llama-server"


def model(**changes) -> EngineModel:
    fields = dict(name="tiny", path=PurePosixPath("/models/tiny"), files=("config.json", "model.gguf"),
                  weights=("model.gguf",), format="gguf", quantization="q4_k_m")
    fields.update(changes)
    return EngineModel(**fields)


@pytest.fixture
def python_server(monkeypatch):
    """No llama-server on PATH: the engine falls back to llama-cpp-python's server."""
    monkeypatch.setattr(plugin.shutil, "which", lambda name: None)


@pytest.fixture
def llama_server(monkeypatch):
    """llama-server on PATH (it is not installed here: only ``launch`` is tested with it)."""
    monkeypatch.setattr(plugin.shutil, "which", lambda name: FAKE_LLAMA_SERVER if name == "llama-server" else None)


# -- what the engine decides ---------------------------------------------------------------------

def test_the_engine_is_registered_and_satisfies_the_protocol():
    from modelbuild.testing import plugin_host

    engine = plugin_host().engines.get("llama.cpp")
    assert isinstance(engine, LlamaCppEngine) and isinstance(engine, Engine)
    assert engine.protocol in ENGINE_PROTOCOLS and engine.default_port == 8080
    assert engine.formats == ("gguf",) and engine.targets == ("cpu", "cuda", "rocm", "metal")
    assert set(engine.parameters) == {"n_gpu_layers", "threads", "batch_size", "ubatch_size", "flash_attn", "seed",
                                      "parallel", "chat_format"}


SHARDS = ("m-00001-of-00003.gguf", "m-00002-of-00003.gguf", "m-00003-of-00003.gguf")


@pytest.mark.parametrize("changes, reason", [
    (dict(format="onnx", weights=("model.onnx",)), "llama.cpp runs gguf files; this variant is onnx"),
    (dict(format="", weights=("model.bin",)), "this variant is of an unknown format"),
    (dict(target="gaudi"), "llama.cpp has no gaudi build"),
    (dict(weights=()), "this variant has no .gguf weight file"),
    (dict(weights=("model.gguf", "mmproj.gguf")), "holds 2 .gguf files (mmproj.gguf, model.gguf)"),
    (dict(weights=SHARDS[:2]), "the split GGUF is incomplete: shard 3 of 3"),
    (dict(weights=(SHARDS[1],)), "the split GGUF is incomplete: shard 1, 3 of 3"),
    (dict(weights=(*SHARDS, "extra.gguf")), "holds 4 .gguf files"),
    (dict(weights=(*SHARDS, "n-00001-of-00001.gguf")), "shards of 2 split files"),
    (dict(weights=("a-00001-of-00002.gguf", "a-00002-of-00002.gguf", "b-00001-of-00002.gguf",
                   "b-00002-of-00002.gguf")), "shards of 2 split files"),
])
def test_accepts_refuses_with_the_reason(changes, reason):
    assert reason in ENGINE.accepts(model(**changes))


@pytest.mark.parametrize("changes", [{}, dict(format=""), dict(target="cpu"), dict(target="cuda"),
                                     dict(target="rocm"), dict(target="metal"),
                                     dict(weights=(SHARDS[2], SHARDS[0], SHARDS[1])),
                                     dict(weights=("m-00001-of-00001.gguf",))])
def test_accepts_one_gguf_or_one_complete_split_set(changes):
    assert ENGINE.accepts(model(**changes)) is None


def test_python_server_launch(python_server):
    launch = ENGINE.launch(model(context_length=512), host=HOST, port=9123)
    assert launch.argv == (
        sys.executable, "-m", "llama_cpp.server",  # llama_cpp/server/__main__.py
        "--model", "/models/tiny/model.gguf",  # settings.py ModelSettings.model
        "--host", HOST, "--port", "9123",  # settings.py ServerSettings.host, .port
        "--model_alias", "tiny",  # settings.py ModelSettings.model_alias: the name /v1/models lists
        "--n_ctx", "512",  # settings.py ModelSettings.n_ctx
    )
    # __main__.py: uvicorn.run(host=os.getenv("HOST", …), port=int(os.getenv("PORT", …))): env wins over flags
    assert launch.env == {"HOST": HOST, "PORT": "9123"}
    # app.py: GET /v1/models; the model is loaded in create_app, before uvicorn listens
    assert (launch.health, launch.endpoint, launch.protocol, launch.port) == ("/v1/models", "/v1", "openai", 9123)
    assert launch.files == {} and launch.links == {}


def test_llama_server_launch_when_it_is_on_path(llama_server):
    launch = ENGINE.launch(model(context_length=512), host=HOST, port=9123)
    assert launch.argv == (
        FAKE_LLAMA_SERVER,
        "-m", "/models/tiny/model.gguf",  # README: `-m, --model FNAME`
        "--host", HOST, "--port", "9123",  # README: `--host HOST`, `--port PORT`
        "--alias", "tiny",  # README: `-a, --alias STRING`
        "--ctx-size", "512",  # README: `-c, --ctx-size N`
    )
    # README: GET /health: 503 while the model loads, 200 once it is ready
    assert (launch.health, launch.endpoint, launch.env) == ("/health", "/v1", {})


PARAMS = {"n_gpu_layers": "999", "threads": "2", "batch_size": "256", "ubatch_size": "128", "flash_attn": "On",
          "seed": "7"}


def test_parameters_as_llama_server_spells_them(llama_server):
    argv = ENGINE.launch(model(params=PARAMS), host=HOST, port=1).argv
    assert argv[argv.index("tiny") + 1:] == (
        "--n-gpu-layers", "999",  # README: `-ngl, --gpu-layers, --n-gpu-layers N`
        "--threads", "2",  # README: `-t, --threads N`
        "--batch-size", "256",  # README: `-b, --batch-size N`
        "--ubatch-size", "128",  # README: `-ub, --ubatch-size N`
        "--flash-attn", "on",  # README: `-fa, --flash-attn [on|off|auto]`
        "--seed", "7",  # README: `-s, --seed SEED`
    )
    argv = ENGINE.launch(model(params={"parallel": "4"}), host=HOST, port=1).argv
    assert argv[-2:] == ("--parallel", "4")  # README: `-np, --parallel N`


def test_parameters_as_llama_cpp_python_spells_them(python_server):
    argv = ENGINE.launch(model(params=PARAMS), host=HOST, port=1).argv
    assert argv[argv.index("tiny") + 1:] == (
        "--n_gpu_layers", "999",  # settings.py: n_gpu_layers: int
        "--n_threads", "2",  # settings.py: n_threads: int
        "--n_batch", "256",  # settings.py: n_batch: int
        "--n_ubatch", "128",  # settings.py: n_ubatch: int
        "--flash_attn", "true",  # settings.py: flash_attn: bool (cli.py _parse_bool_arg)
        "--seed", "7",  # settings.py: seed: int
    )
    argv = ENGINE.launch(model(params={"chat_format": "chatml"}), host=HOST, port=1).argv
    assert argv[-2:] == ("--chat_format", "chatml")  # settings.py: chat_format: Optional[str]


def test_llama_cpp_pythons_own_parser_reads_the_command_line(python_server):
    """The whole python-server command line, every parameter in it, parsed by the parser
    llama_cpp.server builds (cli.py add_args_from_model over settings.Settings)."""
    require_module("llama_cpp", "pip install 'llama-cpp-python[server]'")
    import argparse

    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    launch = ENGINE.launch(model(context_length=300, params={**PARAMS, "chat_format": "chatml"}), host=HOST,
                           port=9123)
    parser = argparse.ArgumentParser()
    add_args_from_model(parser, Settings)
    args = parser.parse_args(list(launch.argv[3:]))
    server = parse_model_from_args(ServerSettings, args)
    settings = parse_model_from_args(ModelSettings, args)
    assert (server.host, server.port) == (HOST, 9123)
    assert (settings.model, settings.model_alias, settings.n_ctx) == ("/models/tiny/model.gguf", "tiny", 300)
    assert (settings.n_gpu_layers, settings.n_threads, settings.n_batch, settings.n_ubatch, settings.flash_attn,
            settings.seed, settings.chat_format) == (999, 2, 256, 128, True, 7, "chatml")


@pytest.mark.parametrize("server, key, message", [
    ("python", "parallel", "llama_cpp.server has no such setting (only llama-server does)"),
    ("native", "chat_format", "llama-server has no such setting (only llama_cpp.server does)"),
])
def test_a_parameter_the_chosen_server_lacks_is_a_usage_error(request, server, key, message):
    request.getfixturevalue("python_server" if server == "python" else "llama_server")
    with pytest.raises(UsageError) as err:
        ENGINE.launch(model(params={key: "4" if key == "parallel" else "chatml"}), host=HOST, port=1)
    assert message in err.value.message and key in err.value.hint


@pytest.mark.parametrize("params, message", [
    ({"n_gpu_layer": "1"}, "llama.cpp has no parameter 'n_gpu_layer'"),
    ({"threads": "0"}, "threads=0: must be at least 1"),
    ({"threads": "many"}, "threads=many: not a whole number"),
    ({"flash_attn": "maybe"}, "flash_attn=maybe: on or off"),
    ({"n_gpu_layers": "-1"}, "n_gpu_layers=-1: must be at least 0"),
    ({"chat_format": " "}, "chat_format: needs a value"),
])
def test_bad_parameters_are_usage_errors(python_server, params, message):
    with pytest.raises(UsageError) as err:
        ENGINE.launch(model(params=params), host=HOST, port=1)
    assert message in err.value.message
    if "no parameter" in message:
        assert err.value.hint == ("its parameters: batch_size, chat_format, flash_attn, n_gpu_layers, parallel, "
                                  "seed, threads, ubatch_size")


def test_a_split_gguf_is_loaded_from_its_first_shard(python_server, tmp_path, monkeypatch):
    launch = ENGINE.launch(model(weights=(SHARDS[1], SHARDS[2], SHARDS[0])), host=HOST, port=1)
    assert launch.argv[launch.argv.index("--model") + 1] == "/models/tiny/m-00001-of-00003.gguf"
    monkeypatch.chdir(tmp_path)  # the server runs in its own work directory: the path is absolute
    launch = ENGINE.launch(model(path=PurePosixPath("rel")), host=HOST, port=1)
    assert launch.argv[launch.argv.index("--model") + 1] == str(tmp_path / "rel" / "model.gguf")


@pytest.mark.parametrize("target, image, accelerator", [
    ("", "ghcr.io/ggml-org/llama.cpp:server-b11206", ""),
    ("cpu", "ghcr.io/ggml-org/llama.cpp:server-b11206", ""),
    ("cuda", "ghcr.io/ggml-org/llama.cpp:server-cuda-b11206", "nvidia.com/gpu"),
    ("rocm", "ghcr.io/ggml-org/llama.cpp:server-rocm-b11206", "amd.com/gpu"),
])
def test_container_is_llama_servers_image_pinned_to_a_build(python_server, target, image, accelerator):
    """docs/docker.md: the server images' entry point is llama-server; tags server,
    server-cuda, server-rocm, each also with -b<build> (.github/workflows/docker.yml)."""
    container = ENGINE.container(model(target=target, context_length=4096, params={"parallel": "2"}), port=8080)
    assert (container.image, container.accelerator) == (image, accelerator)
    assert container.command == ()  # the image's entry point
    assert container.args == ("-m", "/models/tiny/model.gguf", "--host", "0.0.0.0", "--port", "8080",
                              "--alias", "tiny", "--ctx-size", "4096", "--parallel", "2")
    assert (container.readiness, container.liveness, container.port, container.protocol) == (
        "/health", "/health", 8080, "openai")


def test_container_refusals():
    with pytest.raises(UsageError, match="no container image for metal"):
        ENGINE.container(model(target="metal"), port=8080)
    with pytest.raises(UsageError, match="llama-server has no such setting"):
        ENGINE.container(model(params={"chat_format": "chatml"}), port=8080)


def test_installed_finds_either_server(monkeypatch):
    require_module("llama_cpp", "pip install 'llama-cpp-python[server]'")
    monkeypatch.setattr(plugin.shutil, "which", lambda name: None)
    assert ENGINE.installed() is None  # llama-cpp-python[server] is installed here
    monkeypatch.setattr(plugin, "PYTHON_SERVER_MODULES", (*plugin.PYTHON_SERVER_MODULES, "no_such_module_xyz"))
    assert ENGINE.installed() == ("neither llama-server on PATH nor llama-cpp-python's server "
                                  "(missing: no_such_module_xyz)")
    monkeypatch.setattr(plugin.shutil, "which", lambda name: FAKE_LLAMA_SERVER)
    assert ENGINE.installed() is None


def test_importing_the_plugin_is_cheap():
    code = ("import sys, modelbuild_plugins.engines.llama_cpp; "
            "print(sorted(m for m in ('llama_cpp', 'fastapi', 'uvicorn', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- llama-cpp-python's server, really started ------------------------------------------------

CONTEXT = 256
PROMPT = "Once upon a time"
REQUEST = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "seed": 42, "logprobs": 3}


@pytest.fixture(scope="module")
def gguf_example(tmp_path_factory):
    """convert-quantize built and materialised read-only: its EngineModel, served at a
    context of 256 with one generation thread."""
    require_module("llama_cpp", "pip install 'llama-cpp-python[server]'")
    root = tmp_path_factory.mktemp("gguf")
    result = build_example(root / "home", "convert-quantize")
    path = materialise(root / "home", result["tags"][0], root / "model")
    return engine_model(result, path, context_length=CONTEXT, params={"threads": "1", "seed": "42"})


def _python_launch(m: EngineModel, port: int):
    """The Launch with llama-server hidden, so the server is llama-cpp-python's whatever
    this machine has on PATH (the reference is llama-cpp-python's llama.cpp too)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plugin.shutil, "which", lambda name: None)
        return ENGINE.launch(m, host=HOST, port=port)


def _in_process(weights: Path) -> dict:
    """The same request through llama_cpp.Llama in this process, loaded as the server loads
    it: n_ctx, seed and threads from the launch; logits_all as the server's default (True)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(weights), n_ctx=CONTEXT, seed=42, n_threads=1, logits_all=True,
                          verbose=False)
    try:
        return llm.create_completion(**REQUEST)
    finally:
        llm.close()


@pytest.fixture(scope="module")
def served(gguf_example, tmp_path_factory):
    launch = _python_launch(gguf_example, free_port())
    with serving(launch, tmp_path_factory.mktemp("work"), timeout=120) as proc:
        print(f"llama_cpp.server answered {launch.health} after {proc.ready_seconds:.1f}s")
        yield launch, f"http://{HOST}:{launch.port}"


@pytest.mark.llama
def test_completion_is_exactly_llama_cpp_in_process(gguf_example, served):
    launch, base = served
    status, answer = http_json(f"{base}{launch.endpoint}/completions", {"model": gguf_example.name, **REQUEST})
    assert status == 200, answer
    expected = _in_process(Path(gguf_example.path) / "model.gguf")
    (choice,) = answer["choices"]
    assert choice["text"] == expected["choices"][0]["text"] and choice["text"]
    assert len(choice["logprobs"]["tokens"]) == 8 and len(choice["logprobs"]["top_logprobs"][0]) == 3
    assert choice["logprobs"] == expected["choices"][0]["logprobs"]  # tokens, offsets, log-probabilities
    assert choice["finish_reason"] == expected["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == expected["usage"]


@pytest.mark.llama
def test_the_model_is_served_under_its_name(gguf_example, served):
    launch, base = served
    status, models = http_json(f"{base}{launch.endpoint}/models")
    assert status == 200 and [m["id"] for m in models["data"]] == ["tiny-llama-gguf"]


@pytest.mark.llama
def test_a_split_build_serves_the_same_text(gguf_example, tmp_path):
    """convert-quantize with ``SHARD 60KB``: three shards, served from the first."""
    text = (EXAMPLES / "convert-quantize" / "Modelfile").read_text()
    text = text.replace("FROM ../tiny-llama/model", f"FROM {EXAMPLES / 'tiny-llama' / 'model'}")
    text = text.replace("NAME tiny-llama-gguf", "NAME tiny-llama-split") + "SHARD 60KB\n"
    (tmp_path / "Modelfile").write_text(text)
    import json

    result = json.loads(modelbuild(tmp_path / "home", "-f", str(tmp_path / "Modelfile"), "--json", "--progress",
                                   "quiet", cwd=tmp_path))
    split = engine_model(result, materialise(tmp_path / "home", result["tags"][0], tmp_path / "model"),
                         context_length=CONTEXT, params={"threads": "1", "seed": "42"})
    assert split.weights == ("model-00001-of-00003.gguf", "model-00002-of-00003.gguf", "model-00003-of-00003.gguf")
    assert ENGINE.accepts(split) is None
    launch = _python_launch(split, free_port())
    with serving(launch, tmp_path / "work", timeout=120):
        status, answer = http_json(f"http://{HOST}:{launch.port}/v1/completions", REQUEST)
    assert status == 200, answer
    expected = _in_process(Path(gguf_example.path) / "model.gguf")  # the single-file build
    assert answer["choices"][0]["text"] == expected["choices"][0]["text"]


@pytest.mark.llama
def test_sigterm_stops_the_server_and_leaves_no_process(gguf_example, tmp_path):
    """Started from an environment with HOST and PORT set elsewhere (which llama_cpp.server
    would prefer to its flags), it listens where the launch says; SIGTERM ends it cleanly."""
    import os

    launch = _python_launch(dataclasses.replace(gguf_example, params={"threads": "1"}), free_port())
    proc = start(launch, tmp_path / "work", environ={**os.environ, "HOST": "127.0.0.2", "PORT": str(free_port())})
    try:
        wait_healthy(f"http://{HOST}:{launch.port}{launch.health}", 120, proc)
        status, _answer = http_json(f"http://{HOST}:{launch.port}/v1/completions", {**REQUEST, "max_tokens": 2})
        assert status == 200
        tree = descendants(proc.pid) | {proc.pid}
    finally:
        rc = stop(proc)
    # uvicorn shuts down on SIGTERM, then re-raises it: killed by SIGTERM, not SIGKILL
    assert rc in (0, -15), proc.log_tail()
    assert "Application shutdown complete" in proc.log_path.read_text()
    assert not alive(tree), proc.log_tail()
