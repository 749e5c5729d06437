"""NVIDIA Triton Inference Server: a variant's ONNX model through Triton's onnxruntime
backend, over the Open Inference Protocol (KServe v2), on CPU or an NVIDIA GPU.

Read in Triton 2.71.0 (triton-inference-server/server tag v2.71.0, commit
819ee37770df2fcd6d799d2a5d1dacf812f7d62c; its container is ``26.07-py3``): the flags in
``src/command_line_parser.cc``, vendored in tests/data/engine-flags/triton.txt, which
tests/test_engine_flags.py checks every flag of this module against; the model repository
and configuration in ``docs/user_guide/model_repository.md`` and ``model_configuration.md``;
how the backend finds and loads the file in triton-inference-server/onnxruntime_backend
``src/onnxruntime.cc`` (commit 00fd3e87a0918193d7921871f2e872efdb8d9c9a).

**The model repository.** Triton serves ``<repository>/<name>/config.pbtxt`` with the model
in a numbered version directory, ``<name>/1/``. Here the version directory is a symbolic
link to the directory that holds the variant's ``.onnx`` file, and ``config.pbtxt`` names
the file with ``default_model_filename``. Linking the directory, not the file, keeps an
ONNX model with external data working: the backend loads the model *by path*
(``OnnxLoader::LoadSession(true /* is_path */, …)``), so ONNX Runtime looks for external
data beside the path it was given, and the files the link leads to sit there. Triton's
local file system follows the link (``IsDirectory`` is a ``stat``).

``config.pbtxt`` gives ``backend: "onnxruntime"`` and an ``instance_group`` of ``KIND_CPU``
or ``KIND_GPU`` for the variant's target, and leaves the inputs and outputs out: "By
default, Triton will try to complete these sections" and it "can derive all the required
settings automatically for most of the … ONNX models". That completion also turns on
batching, up to 4, when every input and output has a variable first dimension; the
``max_batch_size`` parameter sets that limit, and ``max_batch_size=0`` turns batching off
(``--backend-config=onnxruntime,default-max-batch-size=0``: a ``max_batch_size: 0`` in
the file reads as "not given"). gRPC (port 8001) and metrics (8002) are off unless asked
for (``grpc_port=``, ``metrics_port=``), so two servers on one machine do not collide.

**run:** the repository is ``repo/`` in the launch's work directory (``Launch.files`` and
``Launch.links``). **deploy:** the model volume is read-only, and a pod spec cannot declare
a symbolic link, so the container starts with ``/bin/sh -c`` and a three-step script that
builds the repository in ``/tmp`` (the ``config.pbtxt`` mounted from the ConfigMap, the
version link to the model's mount) and then ``exec``s ``tritonserver`` with the
container's ``args`` (``"$0" "$@"``). The image's ``PATH`` holds ``/opt/tritonserver/bin``
(build.py). A pod with ``readOnlyRootFilesystem`` needs an ``emptyDir`` at ``/tmp``.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import PurePosixPath
from typing import Any

from modelbuild.api import Container, EngineModel, Launch, OptionSpec, UsageError, hookimpl
from modelbuild.api import engine_params as parse_params

#: The Triton release (and its NGC container) whose flags this module was written against.
VERSION = "2.71.0"
IMAGE = "nvcr.io/nvidia/tritonserver:26.07-py3"
#: Where the deploy script builds the model repository, and where the ConfigMap puts config.pbtxt.
REPO_DIR = "/tmp/modelbuild-triton"
CONFIG_DIR = "/etc/modelbuild/triton"
VERSION_DIR = "1"

OPTIONS = (
    OptionSpec("instance_count", int,
               help="model instances (instance_group count; Triton's default: 2 on CPU, 1 per GPU)"),
    OptionSpec("max_batch_size", int,
               help="largest batch Triton's dynamic batcher forms; 0 turns batching off "
                    "(default: 4 when the model allows)"),
    OptionSpec("grpc_port", int, help="also serve the KServe v2 gRPC API on this port (default: off)"),
    OptionSpec("metrics_port", int, help="serve Prometheus metrics on this port (default: off)"),
    OptionSpec("log_verbose", int, help="Triton's verbose logging level, 0 (off) and up (--log-verbose)"),
)


def serving_name(name: str) -> str:
    """The model's name in Triton: a directory of the repository and a URL segment, so
    anything but letters, digits, ``_``, ``.`` and ``-`` becomes ``-`` (``acme/tiny`` →
    ``acme-tiny``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip(".-") or "model"


def onnx_files(model: EngineModel) -> list[str]:
    """The variant's ``.onnx`` files (its weights, else its files)."""
    return [f for f in (model.weights or model.files) if f.lower().endswith(".onnx")]


def model_config(model: EngineModel, params: dict[str, Any], filename: str) -> str:
    """``config.pbtxt``: see the module docstring for what it leaves to Triton."""
    kind = "KIND_GPU" if model.target == "cuda" else "KIND_CPU"
    lines = ["# Written by modelbuild; Triton's onnxruntime backend completes the inputs and outputs.",
             f'name: "{serving_name(model.name)}"',
             'backend: "onnxruntime"',
             f"default_model_filename: {_quoted(filename)}"]
    if params.get("max_batch_size"):
        lines.append(f"max_batch_size: {params['max_batch_size']}")
    count = f"    count: {params['instance_count']}\n" if "instance_count" in params else ""
    lines.append(f"instance_group [\n  {{\n{count}    kind: {kind}\n  }}\n]")
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    """A protobuf text-format string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class TritonEngine:
    """Triton Inference Server with its onnxruntime backend: see the module docstring."""

    name = "triton"
    formats = ("onnx",)
    targets = ("cpu", "cuda")
    protocol = "open-inference-v2"
    install = f"Triton is not on PyPI: run the image {IMAGE} (docs: github.com/triton-inference-server/server)"
    default_port = 8000
    parameters = {spec.name: spec.help for spec in OPTIONS}

    def accepts(self, model: EngineModel) -> str | None:
        found = onnx_files(model)
        fmt = model.format or ("onnx" if found else "")
        if fmt != "onnx":
            return f"Triton serves onnx models here; this variant is {fmt or 'of unknown format'}"
        if model.target and model.target not in self.targets:
            return f"Triton's onnxruntime backend serves cpu and cuda variants; this one is for {model.target}"
        if len(found) != 1:
            return (f"Triton serves one .onnx file per model; this variant has {len(found)}"
                    + (f" ({', '.join(found[:3])}{'…' if len(found) > 3 else ''})" if found else ""))
        return None

    def installed(self) -> str | None:
        import shutil

        return None if shutil.which("tritonserver") else "the tritonserver command is not on PATH"

    def launch(self, model: EngineModel, *, host: str, port: int) -> Launch:
        params, onnx = self._checked(model)
        name = serving_name(model.name)
        folder, filename = _split(os.path.abspath(model.path / onnx))  # a link's target is absolute
        argv = ("tritonserver", "--model-repository=repo", f"--http-address={host}", f"--http-port={port}",
                *_flags(params))
        files = {f"repo/{name}/config.pbtxt": model_config(model, params, filename)}
        return Launch(argv=argv, port=port, health="/v2/health/ready", endpoint=f"/v2/models/{name}",
                      protocol=self.protocol, files=files, links={f"repo/{name}/{VERSION_DIR}": folder})

    def container(self, model: EngineModel, *, port: int) -> Container:
        params, onnx = self._checked(model)
        name = serving_name(model.name)
        folder, filename = _split(model.path / onnx)
        config = f"{CONFIG_DIR}/{name}/config.pbtxt"
        home = f"{REPO_DIR}/{name}"
        script = (f"mkdir -p {shlex.quote(home)}"
                  f" && ln -sfn {shlex.quote(folder)} {shlex.quote(home + '/' + VERSION_DIR)}"
                  f" && ln -sf {shlex.quote(config)} {shlex.quote(home + '/config.pbtxt')}"
                  ' && exec "$0" "$@"')
        args = ("tritonserver", f"--model-repository={REPO_DIR}", f"--http-port={port}", *_flags(params))
        return Container(image=IMAGE, port=port, readiness="/v2/health/ready", liveness="/v2/health/live",
                         protocol=self.protocol, command=("/bin/sh", "-c", script), args=args,
                         files={config: model_config(model, params, filename)},
                         accelerator="nvidia.com/gpu" if model.target == "cuda" else "")

    def _checked(self, model: EngineModel) -> tuple[dict[str, Any], str]:
        """The typed parameters and the one .onnx file, or a UsageError."""
        params = parse_params(self.name, OPTIONS, model.params)
        for key, low in (("instance_count", 1), ("max_batch_size", 0), ("log_verbose", 0)):
            if key in params and params[key] < low:
                raise UsageError(f"engine triton parameter {key}={params[key]}: must be at least {low}")
        for key in ("grpc_port", "metrics_port"):
            if key in params and not 0 < params[key] < 65536:
                raise UsageError(f"engine triton parameter {key}={params[key]}: not a port (1-65535)")
        found = onnx_files(model)
        if len(found) != 1:
            raise UsageError(f"Triton serves one .onnx file per model; this variant has {len(found)}")
        return params, found[0]


def _flags(params: dict[str, Any]) -> tuple[str, ...]:
    """The flags after the repository and HTTP port: gRPC, metrics, batching, logging."""
    flags: list[str] = []
    for api in ("grpc", "metrics"):
        port = params.get(f"{api}_port")
        flags += [f"--allow-{api}=true", f"--{api}-port={port}"] if port else [f"--allow-{api}=false"]
    if params.get("max_batch_size") == 0:
        flags.append("--backend-config=onnxruntime,default-max-batch-size=0")
    if "log_verbose" in params:
        flags.append(f"--log-verbose={params['log_verbose']}")
    return tuple(flags)


def _split(weight: Any) -> tuple[str, str]:
    """The directory holding the model file, and the file's name."""
    path = PurePosixPath(str(weight))
    return str(path.parent), path.name


@hookimpl
def modelbuild_register_engines(registry: Any) -> None:
    registry.add(TritonEngine())
