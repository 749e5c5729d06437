"""The ONNX Runtime engine: an ONNX variant behind MLServer, speaking the Open Inference
Protocol (KServe v2: ``POST /v2/models/{name}/infer``).

MLServer (Seldon's ``mlserver`` package) serves the HTTP API; the model itself runs in
:mod:`modelbuild_plugins.engines.mlserver_onnx`, an MLServer runtime class that opens the
file with ONNX Runtime. The engine writes MLServer's two settings files into the launch's
work directory and starts ``mlserver start .`` there (mlserver/cli/main.py: ``start
FOLDER``; ``load_settings`` reads ``FOLDER/settings.json`` and finds every
``model-settings.json`` below it, mlserver/repository/repository.py).

Settings, each a field of mlserver/settings.py's ``Settings`` (server) or ``ModelSettings``
(model), chosen so that two servers run side by side on one machine:

* ``host``, ``http_port``: where the V2 HTTP API listens (the launch's host and port);
* ``grpc_port: 0``: MLServer always starts its gRPC server (mlserver/server.py), on 8081 by
  default, which a second server would find taken; port 0 lets the system pick a free one
  (grpc's ``add_insecure_port``), since ``run`` only offers HTTP;
* ``metrics_endpoint: null``: no Prometheus server on ``metrics_port`` (8082 by default,
  another clash); the field's docstring says null disables it;
* ``parallel_workers: 0``: inference runs in the server process. The default (1) runs it
  in a pool of worker processes, which MLServer 1.7.1 cannot start under uvloop 0.21 and
  later (``Worker._ignore_signals`` calls ``asyncio.get_event_loop()`` with no loop set:
  "RuntimeError: There is no current event loop"), so it is not offered as a parameter;
* the model's ``name``, ``implementation``, ``platform`` and ``parameters.uri`` (the absolute
  path of the .onnx file) and ``parameters.extra`` (what the runtime class reads: providers,
  threads, optimisation level).

Health is ``/v2/models/{name}/ready``, which answers 200 only once the model is loaded;
``/v2/health/ready`` answers 200 before any model is registered (``all([])``).

An ONNX graph has no context length: ``EngineModel.context_length`` is not used.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.parse
from collections.abc import Mapping
from typing import Any

from modelbuild.api import Container, EngineModel, Launch, UsageError, hookimpl

RUNTIME_MODULE = "mlserver_onnx"
RUNTIME_CLASS = "OnnxRuntimeModel"
#: The runtime class as the installed package provides it (``run``).
IMPLEMENTATION = f"modelbuild_plugins.engines.{RUNTIME_MODULE}.{RUNTIME_CLASS}"
#: KServe's platform name for ONNX Runtime (``onnxruntime_onnx``), reported in the metadata.
PLATFORM = "onnxruntime_onnx"
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}

#: ``seldonio/mlserver`` tags: ``<version>`` (every runtime MLServer ships, which brings
#: ONNX Runtime through the HuggingFace runtime's ``optimum[onnxruntime]``),
#: ``<version>-slim`` (none) and ``<version>-<runtime>`` (hack/build-images.sh). The image
#: runs ``mlserver start $MLSERVER_MODELS_DIR`` (Dockerfile, CMD) on Python 3.10.
MLSERVER_IMAGE = "seldonio/mlserver:1.7.1"
CONTAINER_SETTINGS = "/etc/modelbuild/mlserver"

#: The command ``mlserver start .``, run with this interpreter: mlserver has no
#: ``__main__`` module, and its console script may not be on PATH (a venv not activated).
MLSERVER_MAIN = "import sys; sys.argv[0] = 'mlserver'; from mlserver.cli import main; main()"

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def _whole(key: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"onnxruntime parameter {key}={value}: not a whole number") from None
    if number < minimum:
        raise UsageError(f"onnxruntime parameter {key}={value}: must be at least {minimum}")
    return number


class OnnxRuntimeEngine:
    """ONNX Runtime behind MLServer: see the module docstring."""

    name = "onnxruntime"
    formats = ("onnx",)
    # The onnxruntime package runs on the CPU; onnxruntime-gpu adds CUDA. ROCm's provider
    # left ONNX Runtime in 1.23 (MIGraphX replaces it), so rocm variants are not claimed.
    targets = ("cpu", "cuda")
    protocol = "open-inference-v2"
    install = "pip install onnxruntime mlserver"
    default_port = 8080
    parameters: Mapping[str, str] = {
        "threads": "ONNX Runtime's threads within an operator (SessionOptions.intra_op_num_threads)",
        "optimization": "graph optimisation level: disable, basic, extended or all (ONNX Runtime's default: all)",
    }

    def accepts(self, model: EngineModel) -> str | None:
        onnx = _onnx_files(model)
        if model.format not in ("onnx", "") or (not model.format and not onnx):
            return f"onnxruntime runs onnx files; this variant is {model.format or 'of an unknown format'}"
        if model.target and model.target not in self.targets:
            return (f"onnxruntime has no {model.target} build here (it runs {', '.join(self.targets)} variants; "
                    "cuda with the onnxruntime-gpu package)")
        if len(onnx) != 1:
            return (f"this variant holds {len(onnx)} .onnx files ({', '.join(onnx)}); the engine serves one graph"
                    if onnx else "this variant has no .onnx weight file")
        return None

    def installed(self) -> str | None:
        import importlib.util

        missing = [m for m in ("onnxruntime", "mlserver") if importlib.util.find_spec(m) is None]
        return f"missing Python packages: {', '.join(missing)}" if missing else None

    def launch(self, model: EngineModel, *, host: str, port: int) -> Launch:
        server = self._server_settings(model)
        server.update(host=host, http_port=port)
        uri = os.path.abspath(os.fspath(model.path / _onnx(model)))  # the server runs in its own work directory
        folder = f"model-repository/{_folder(model.name)}"
        files = {"settings.json": _json(server),
                 f"{folder}/model-settings.json": _json(_model_settings(model, IMPLEMENTATION, uri))}
        argv = (sys.executable, "-c", MLSERVER_MAIN, "start", ".")
        return Launch(argv=argv, port=port, health=f"/v2/models/{_quoted(model.name)}/ready",
                      endpoint=f"/v2/models/{_quoted(model.name)}", protocol=self.protocol, files=files)

    def container(self, model: EngineModel, *, port: int) -> Container:
        """MLServer's own image, with the settings mounted in :data:`CONTAINER_SETTINGS`
        (``MLSERVER_MODELS_DIR`` points the image's command there) and the runtime class
        mounted beside ``model-settings.json`` as ``mlserver_onnx.py``, where MLServer
        imports it from: nothing of modelbuild needs installing in the image. The image
        must have ONNX Runtime, which ``seldonio/mlserver:<version>`` does (not ``-slim``);
        a derived image with ``pip install onnxruntime`` works with ``-slim`` too."""
        if (model.target or "cpu") != "cpu":
            raise UsageError(f"onnxruntime: the MLServer image runs ONNX Runtime on the CPU; a {model.target} "
                             "variant needs an image with onnxruntime-gpu",
                             hint="deploy the cpu variant (--platform cpu), or serve it with Triton")
        server = self._server_settings(model)
        server.update(host="0.0.0.0", http_port=port)
        folder = f"{CONTAINER_SETTINGS}/{_folder(model.name)}"
        files = {
            f"{CONTAINER_SETTINGS}/settings.json": _json(server),
            f"{folder}/model-settings.json": _json(_model_settings(model, f"{RUNTIME_MODULE}.{RUNTIME_CLASS}",
                                                                   str(model.path / _onnx(model)))),
            f"{folder}/{RUNTIME_MODULE}.py": runtime_source(),
        }
        return Container(image=MLSERVER_IMAGE, port=port, readiness=f"/v2/models/{_quoted(model.name)}/ready",
                         liveness="/v2/health/live", protocol=self.protocol, files=files,
                         env={"MLSERVER_MODELS_DIR": CONTAINER_SETTINGS})

    def _server_settings(self, model: EngineModel) -> dict[str, Any]:
        """settings.json without host and port, after checking every parameter."""
        for key in model.params:
            if key not in self.parameters:
                raise UsageError(f"onnxruntime has no parameter {key!r}",
                                 hint=f"its parameters: {', '.join(sorted(self.parameters))}")
        _extra(model)  # threads and optimization are checked here, not when the server loads
        return {"grpc_port": 0, "metrics_endpoint": None, "parallel_workers": 0}


def _model_settings(model: EngineModel, implementation: str, uri: str) -> dict[str, Any]:
    return {"name": model.name, "implementation": implementation, "platform": PLATFORM,
            "parameters": {"uri": uri, "extra": _extra(model)}}


def _extra(model: EngineModel) -> dict[str, Any]:
    """What :class:`~modelbuild_plugins.engines.mlserver_onnx.OnnxRuntimeModel` reads from
    ``parameters.extra``."""
    extra: dict[str, Any] = {"providers": PROVIDERS.get(model.target or "cpu", PROVIDERS["cpu"])}
    if "threads" in model.params:
        extra["threads"] = _whole("threads", model.params["threads"], 1)
    if "optimization" in model.params:
        level = model.params["optimization"].strip().lower()
        if level not in OPTIMIZATION_LEVELS:
            raise UsageError(f"onnxruntime parameter optimization={model.params['optimization']}: "
                             f"one of {', '.join(OPTIMIZATION_LEVELS)}")
        extra["optimization"] = level
    return extra


def _onnx_files(model: EngineModel) -> list[str]:
    return [w for w in model.weights if w.lower().endswith(".onnx")]


def _onnx(model: EngineModel) -> str:
    found = _onnx_files(model)
    if len(found) != 1:
        raise UsageError(f"onnxruntime cannot serve {model.name}: it needs exactly one .onnx weight file")
    return found[0]


def _folder(name: str) -> str:
    """The model's folder in the model repository: its name when that is a plain file name
    (MLServer warns when the folder and the name differ), else ``model``."""
    return name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) else "model"


def _quoted(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def runtime_source() -> str:
    """The text of :mod:`modelbuild_plugins.engines.mlserver_onnx`, mounted into containers."""
    from importlib.resources import files

    return files(__package__ or "modelbuild_plugins.engines").joinpath(f"{RUNTIME_MODULE}.py").read_text()


@hookimpl
def modelbuild_register_engines(registry: Any) -> None:
    registry.add(OnnxRuntimeEngine())


__all__ = ["OnnxRuntimeEngine"]
