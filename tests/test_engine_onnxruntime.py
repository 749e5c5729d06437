"""The onnxruntime engine (plugins/engines/onnxruntime.py) and its MLServer runtime class
(plugins/engines/mlserver_onnx.py).

First what the engine decides, without a server: which variants it takes, the command and
the two MLServer settings files it writes (each key a field of mlserver/settings.py), its
parameters, its container. Then MLServer really started from the engine's Launch, as
``modelbuild run`` starts it, serving the bundled ``Modelfile.examples/onnx`` built and
materialised read-only: its answers must be bit-for-bit what ONNX Runtime gives in this
process for the original file, its metadata must be the graph's, and SIGTERM must leave no
process behind. The container's files are served the same way, as the image would.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from engines import alive, build_example, descendants, engine_model, free_port, http_json, materialise, serving, \
    start, stop, wait_healthy
from modelbuild.api import ENGINE_PROTOCOLS, Engine, EngineModel, UsageError
from modelbuild_plugins.engines.onnxruntime import OnnxRuntimeEngine
from support import EXAMPLES, REPO, require_module

ENGINE = OnnxRuntimeEngine()
RUNTIME_FILE = REPO / "plugins" / "engines" / "mlserver_onnx.py"
HOST = "127.0.0.1"


def model(**changes) -> EngineModel:
    fields = dict(name="tiny", path=PurePosixPath("/models/tiny"), files=("config.json", "model.onnx"),
                  weights=("model.onnx",), format="onnx")
    fields.update(changes)
    return EngineModel(**fields)


def settings_files(launch_or_container) -> tuple[dict, dict]:
    (server,) = [json.loads(t) for p, t in launch_or_container.files.items() if p.endswith("/settings.json")
                 or p == "settings.json"]
    (model_settings,) = [json.loads(t) for p, t in launch_or_container.files.items()
                         if p.endswith("/model-settings.json")]
    return server, model_settings


# -- what the engine decides ---------------------------------------------------------------------

def test_the_engine_is_registered_and_satisfies_the_protocol():
    from modelbuild.testing import plugin_host

    engine = plugin_host().engines.get("onnxruntime")
    assert isinstance(engine, OnnxRuntimeEngine) and isinstance(engine, Engine)
    assert engine.protocol in ENGINE_PROTOCOLS and engine.default_port == 8080
    assert engine.formats == ("onnx",) and engine.targets == ("cpu", "cuda")


@pytest.mark.parametrize("changes, reason", [
    (dict(format="gguf", weights=("model.gguf",)), "onnxruntime runs onnx files; this variant is gguf"),
    (dict(format="", weights=("model.safetensors",)), "this variant is of an unknown format"),
    (dict(target="rocm"), "onnxruntime has no rocm build here"),
    (dict(weights=("a.onnx", "b.onnx")), "this variant holds 2 .onnx files (a.onnx, b.onnx)"),
    (dict(weights=("model.onnx.data",)), "this variant has no .onnx weight file"),
])
def test_accepts_refuses_with_the_reason(changes, reason):
    assert reason in ENGINE.accepts(model(**changes))


@pytest.mark.parametrize("changes", [{}, dict(target="cpu"), dict(target="cuda"), dict(format=""),
                                     dict(weights=("model.onnx", "model.onnx.data"))])
def test_accepts_one_onnx_graph_for_cpu_or_cuda(changes):
    assert ENGINE.accepts(model(**changes)) is None


def test_launch_runs_mlserver_start_in_the_work_directory_with_its_settings():
    launch = ENGINE.launch(model(), host=HOST, port=9123)
    # mlserver/cli/main.py: `mlserver start FOLDER`; the console script is mlserver.cli:main
    assert launch.argv[0] == sys.executable and launch.argv[1] == "-c" and launch.argv[3:] == ("start", ".")
    assert "from mlserver.cli import main" in launch.argv[2]
    assert (launch.port, launch.health, launch.endpoint, launch.protocol) == (
        9123, "/v2/models/tiny/ready", "/v2/models/tiny", "open-inference-v2")
    assert set(launch.files) == {"settings.json", "model-repository/tiny/model-settings.json"}
    server, model_settings = settings_files(launch)
    # mlserver/settings.py Settings: host, http_port, grpc_port (0: any free port), metrics_endpoint
    # (None disables the metrics server on metrics_port 8082), parallel_workers (0: in process)
    assert server == {"host": HOST, "http_port": 9123, "grpc_port": 0, "metrics_endpoint": None,
                      "parallel_workers": 0}
    # ModelSettings: name, implementation, platform, parameters (ModelParameters: uri, extra)
    assert model_settings == {"name": "tiny",
                              "implementation": "modelbuild_plugins.engines.mlserver_onnx.OnnxRuntimeModel",
                              "platform": "onnxruntime_onnx",
                              "parameters": {"uri": "/models/tiny/model.onnx",
                                             "extra": {"providers": ["CPUExecutionProvider"]}}}


def test_every_settings_key_is_a_field_mlserver_reads():
    """pydantic ignores unknown keys in MLServer's settings (extra="ignore"): a misspelt key
    would silently do nothing, so each one is checked against MLServer's own models."""
    require_module("mlserver", "pip install mlserver")
    from mlserver.settings import ModelParameters, ModelSettings, Settings

    server, model_settings = settings_files(ENGINE.launch(model(), host=HOST, port=9123))
    assert set(server) <= set(Settings.model_fields)
    fields = set(ModelSettings.model_fields) | {"implementation"}  # implementation_'s alias
    assert set(model_settings) <= fields and set(model_settings["parameters"]) <= set(ModelParameters.model_fields)
    parsed = Settings.model_validate(server)
    assert (parsed.grpc_port, parsed.metrics_endpoint, parsed.parallel_workers) == (0, None, 0)


def test_a_relative_model_path_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    launch = ENGINE.launch(model(path=PurePosixPath("m")), host=HOST, port=9123)
    assert settings_files(launch)[1]["parameters"]["uri"] == str(tmp_path / "m" / "model.onnx")


def test_parameters_reach_settings_and_session_options():
    launch = ENGINE.launch(model(params={"threads": "2", "optimization": "Basic"}, target="cuda"), host=HOST,
                           port=9123)
    server, model_settings = settings_files(launch)
    assert server["parallel_workers"] == 0
    assert model_settings["parameters"]["extra"] == {
        "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "threads": 2, "optimization": "basic"}


@pytest.mark.parametrize("params, message", [
    ({"treads": "2"}, "onnxruntime has no parameter 'treads'"),
    ({"threads": "0"}, "threads=0: must be at least 1"),
    ({"threads": "two"}, "threads=two: not a whole number"),
    ({"optimization": "max"}, "optimization=max: one of disable, basic, extended, all"),
    ({"parallel_workers": "2"}, "onnxruntime has no parameter 'parallel_workers'"),
])
def test_bad_parameters_are_usage_errors(params, message):
    for call in (lambda m: ENGINE.launch(m, host=HOST, port=1), lambda m: ENGINE.container(m, port=1)):
        with pytest.raises(UsageError) as err:
            call(model(params=params))
        assert message in err.value.message
        if "no parameter" in message:
            assert err.value.hint == "its parameters: optimization, threads"


def test_container_mounts_the_settings_and_the_runtime_class_into_mlservers_image():
    container = ENGINE.container(model(), port=8080)
    # hack/build-images.sh tags seldonio/mlserver:<version> (every runtime) and <version>-slim
    assert container.image == "seldonio/mlserver:1.7.1"
    assert container.command == () and container.args == ()  # the image's CMD: mlserver start $MLSERVER_MODELS_DIR
    assert container.env == {"MLSERVER_MODELS_DIR": "/etc/modelbuild/mlserver"}
    assert (container.readiness, container.liveness, container.accelerator) == (
        "/v2/models/tiny/ready", "/v2/health/live", "")
    assert set(container.files) == {"/etc/modelbuild/mlserver/settings.json",
                                    "/etc/modelbuild/mlserver/tiny/model-settings.json",
                                    "/etc/modelbuild/mlserver/tiny/mlserver_onnx.py"}
    assert container.files["/etc/modelbuild/mlserver/tiny/mlserver_onnx.py"] == RUNTIME_FILE.read_text()
    server, model_settings = settings_files(container)
    assert server["host"] == "0.0.0.0" and server["http_port"] == 8080
    assert model_settings["implementation"] == "mlserver_onnx.OnnxRuntimeModel"
    assert model_settings["parameters"]["uri"] == "/models/tiny/model.onnx"
    with pytest.raises(UsageError, match="needs an image with onnxruntime-gpu"):
        ENGINE.container(model(target="cuda"), port=8080)


def test_an_odd_model_name_gets_a_plain_folder_and_a_quoted_url():
    launch = ENGINE.launch(model(name="my model"), host=HOST, port=1)
    assert "model-repository/model/model-settings.json" in launch.files
    assert launch.health == "/v2/models/my%20model/ready"


def test_the_runtime_module_stands_alone_on_python_3_10():
    """It is mounted into MLServer's image (Python 3.10) and imported there by file: no
    modelbuild import, no syntax newer than 3.10."""
    tree = ast.parse(RUNTIME_FILE.read_text(), feature_version=(3, 10))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.split(".")[0] in ("modelbuild", "modelbuild_plugins")}, imported


def test_importing_the_plugin_is_cheap():
    code = ("import sys, modelbuild_plugins.engines.onnxruntime; "
            "print(sorted(m for m in ('onnxruntime', 'mlserver', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- MLServer, really started ------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_example(tmp_path_factory):
    """The onnx example, built and materialised read-only: (EngineModel, original file)."""
    for name in ("onnxruntime", "mlserver", "numpy"):
        require_module(name, "pip install onnxruntime mlserver")
    root = tmp_path_factory.mktemp("onnx")
    result = build_example(root / "home", "onnx")
    path = materialise(root / "home", result["tags"][0], root / "model")
    return engine_model(result, path), EXAMPLES / "onnx" / "model" / "model.onnx"


@pytest.fixture(scope="module")
def served(onnx_example, tmp_path_factory):
    """MLServer started from the engine's Launch, while something holds ports 8081 and 8082
    (MLServer's gRPC and metrics defaults) on the same host: a second server must not clash."""
    engine_model_, _original = onnx_example
    launch = ENGINE.launch(engine_model_, host=HOST, port=free_port())
    with _holding(8081, 8082), serving(launch, tmp_path_factory.mktemp("work"), timeout=120) as proc:
        print(f"MLServer answered {launch.health} after {proc.ready_seconds:.1f}s")
        yield launch, f"http://{HOST}:{launch.port}"


def _holding(*ports: int):
    """Listen on *ports* of HOST for the duration (those already taken are taken anyway)."""
    import contextlib

    stack = contextlib.ExitStack()
    for port in ports:
        sock = socket.socket()
        try:
            sock.bind((HOST, port))
            sock.listen()
        except OSError:
            sock.close()
            continue
        stack.callback(sock.close)
    return stack


def _reference(original: Path, features):
    import onnxruntime as ort

    session = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    return session.run(None, {"features": features})[0]


def _infer(base: str, endpoint: str, features, **extra) -> tuple[int, dict]:
    body = {"inputs": [{"name": "features", "shape": list(features.shape), "datatype": "FP32",
                        "data": features.flatten().tolist()}], **extra}
    return http_json(f"{base}{endpoint}/infer", body)


@pytest.mark.parametrize("rows", [1, 7])
def test_inference_is_bit_for_bit_onnxruntimes(onnx_example, served, rows):
    import numpy as np

    _model, original = onnx_example
    launch, base = served
    features = np.random.default_rng(20261203 + rows).standard_normal((rows, 16), dtype=np.float32)
    status, answer = _infer(base, launch.endpoint, features)
    assert status == 200, answer
    assert answer["model_name"] == "tiny-onnx-mlp"
    (output,) = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("probabilities", "FP32", [rows, 4])
    got = np.array(output["data"], dtype=np.float32).reshape(output["shape"])
    expected = _reference(original, features)
    assert got.tobytes() == expected.astype(np.float32).tobytes()


def test_metadata_is_the_graphs(served):
    launch, base = served
    status, meta = http_json(f"{base}{launch.endpoint}")
    assert status == 200, meta
    assert meta["name"] == "tiny-onnx-mlp" and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 16]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]}]


def test_bad_requests_are_refused_with_the_reason(served):
    import numpy as np

    launch, base = served
    features = np.zeros((2, 16), dtype=np.float32)
    status, answer = _infer(base, launch.endpoint, features, outputs=[{"name": "probabilities"}])
    assert status == 200 and [o["name"] for o in answer["outputs"]] == ["probabilities"]
    status, answer = _infer(base, launch.endpoint, features, outputs=[{"name": "logits"}])
    assert status == 400 and "has no output logits" in answer["error"]
    body = {"inputs": [{"name": "features", "shape": [2, 16], "datatype": "FP64", "data": [0.0] * 32}]}
    status, answer = http_json(f"{base}{launch.endpoint}/infer", body)
    assert status == 400 and "input features is FP64; model tiny-onnx-mlp takes FP32" in answer["error"]
    body = {"inputs": [{"name": "features", "shape": [2, 8], "datatype": "FP32", "data": [0.0] * 16}]}
    status, answer = http_json(f"{base}{launch.endpoint}/infer", body)
    assert status == 400 and "ONNX Runtime could not run model tiny-onnx-mlp" in answer["error"]


def test_sigterm_stops_the_server_and_leaves_no_process(onnx_example, tmp_path):
    """The server, started as ``run`` starts it, answers; SIGTERM to its group ends it
    through MLServer's own handler (exit 0, no SIGKILL), with every process of its tree.
    MLSERVER_* variables in the environment (as a KServe pod sets them) do not move it:
    settings.json wins (``Settings.parse_file`` validates the file alone)."""
    import os

    import numpy as np

    engine_model_, original = onnx_example
    launch = ENGINE.launch(engine_model_, host=HOST, port=free_port())
    hostile = {"MLSERVER_HTTP_PORT": str(free_port()), "MLSERVER_GRPC_PORT": "8081", "MLSERVER_METRICS_PORT": "8082",
               "MLSERVER_PARALLEL_WORKERS": "1"}
    proc = start(launch, tmp_path / "work", environ={**os.environ, **hostile})
    try:
        wait_healthy(f"http://{HOST}:{launch.port}{launch.health}", 120, proc)
        features = np.ones((2, 16), dtype=np.float32)
        status, answer = _infer(f"http://{HOST}:{launch.port}", launch.endpoint, features)
        assert status == 200, answer
        assert np.array(answer["outputs"][0]["data"], dtype=np.float32).tobytes() == _reference(
            original, features).tobytes()
        tree = descendants(proc.pid) | {proc.pid}
    finally:
        rc = stop(proc)
    assert rc == 0, proc.log_tail()
    assert not alive(tree), proc.log_tail()
    with socket.socket() as sock:  # a new server can listen on the port (as servers do, past TIME_WAIT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, launch.port))


def test_the_container_files_serve_as_mlservers_image_would_start_them(onnx_example, tmp_path):
    """The container's files, written under a scratch root, started the way the image's CMD
    does (``mlserver start $MLSERVER_MODELS_DIR``): the runtime class comes from the mounted
    ``mlserver_onnx.py``, not from the installed package."""
    import numpy as np

    engine_model_, original = onnx_example
    container = ENGINE.container(engine_model_, port=free_port())
    root = tmp_path / "root"
    for path, text in container.files.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(text)
    models_dir = root / container.env["MLSERVER_MODELS_DIR"].lstrip("/")
    assert importlib.util.find_spec("mlserver_onnx") is None  # so only the mounted copy can load
    launch = ENGINE.launch(engine_model_, host=HOST, port=container.port)
    launch = dataclasses.replace(launch, argv=(*launch.argv[:3], "start", str(models_dir)), files={},
                                 health=container.readiness)
    with serving(launch, tmp_path / "work", timeout=120):
        features = np.full((3, 16), 0.5, dtype=np.float32)
        status, answer = _infer(f"http://{HOST}:{container.port}", launch.endpoint, features)
        assert status == 200, answer
        assert np.array(answer["outputs"][0]["data"], dtype=np.float32).tobytes() == _reference(
            original, features).tobytes()
