"""The llama.cpp engine: a GGUF variant behind llama.cpp's OpenAI-compatible server.

Two servers speak for llama.cpp, and the engine takes whichever this machine has:

* ``llama-server``, llama.cpp's own C++ server, when it is on ``PATH`` (preferred: it is
  what the project ships, batches requests across slots and loads faster);
* else llama-cpp-python's ``python -m llama_cpp.server`` (``pip install
  'llama-cpp-python[server]'``), run with this interpreter.

Their flags differ in spelling (``--ctx-size`` against ``--n_ctx``), and a few exist in one
only, so each parameter below names the flag of each server, with where it is documented:
llama.cpp's ``tools/server/README.md`` (the ``llama-server --help`` table), and for
llama-cpp-python the ``ModelSettings``/``ServerSettings`` fields of
``llama_cpp/server/settings.py``, which ``llama_cpp/server/cli.py`` turns into ``--<field>``
flags one for one. A parameter the chosen server lacks is a usage error, never a flag the
server would refuse at start-up.

A split GGUF (``NAME-00001-of-00003.gguf``…, llama.cpp's ``gguf-split`` naming) is served
from its first shard: llama.cpp's loader finds the others from that name
(``llama_split_prefix`` with ``"%s-%05d-of-%05d.gguf"``, src/llama.cpp), in both servers,
since llama-cpp-python calls the same loader.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from modelbuild.api import Container, EngineModel, Launch, UsageError, hookimpl

#: llama.cpp's split-file naming (src/llama.cpp, ``llama_split_path``: "%s-%05d-of-%05d.gguf").
SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")

#: The llama.cpp build whose images ``deploy`` uses. Images are tagged ``server`` (moving)
#: and ``server-b<build>`` (fixed), with ``-cuda``/``-rocm`` after ``server`` for the GPU
#: builds (.github/workflows/docker.yml: ``server${TYPE}${TAG_POSTFIX}``, TAG_POSTFIX
#: ``-b<git rev-list --count HEAD>``; docs/docker.md lists the flavours).
LLAMA_CPP_BUILD = "b11206"
IMAGE = "ghcr.io/ggml-org/llama.cpp"
IMAGE_FLAVOURS = {"cpu": "server", "cuda": "server-cuda", "rocm": "server-rocm"}
ACCELERATORS = {"cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu"}

#: What the python server needs importable: llama_cpp and the ``[server]`` extra's modules
#: (llama-cpp-python's metadata: ``Requires-Dist: uvicorn, fastapi, pydantic-settings,
#: sse-starlette, starlette-context; extra == "server"``; its PyYAML is only for YAML
#: config files, which the engine does not use). Found, not imported: imports are slow.
PYTHON_SERVER_MODULES = ("llama_cpp", "fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")

LLAMA_SERVER = "llama-server"
PYTHON_SERVER = "llama_cpp.server"


def _count(minimum: int) -> Callable[[str, str], tuple[str, str]]:
    """A parser for an integer parameter of at least *minimum*: the same text for both servers."""

    def parse(key: str, value: str) -> tuple[str, str]:
        try:
            number = int(value)
        except ValueError:
            raise UsageError(f"llama.cpp parameter {key}={value}: not a whole number") from None
        if number < minimum:
            raise UsageError(f"llama.cpp parameter {key}={value}: must be at least {minimum}")
        return str(number), str(number)

    return parse


def _switch(key: str, value: str) -> tuple[str, str]:
    """on/off: llama-server's ``--flash-attn`` takes ``on|off``, llama-cpp-python's bools
    ``true|false`` (cli.py ``_parse_bool_arg``)."""
    word = value.strip().lower()
    if word in ("1", "on", "true", "yes"):
        return "on", "true"
    if word in ("0", "off", "false", "no"):
        return "off", "false"
    raise UsageError(f"llama.cpp parameter {key}={value}: on or off")


def _name(key: str, value: str) -> tuple[str, str]:
    if not value.strip():
        raise UsageError(f"llama.cpp parameter {key}: needs a value")
    return value, value


@dataclass(frozen=True)
class Param:
    """One engine parameter: what it means, and its flag in each server (None: that server
    has no such setting)."""

    meaning: str
    llama_server: str | None
    python_server: str | None
    parse: Callable[[str, str], tuple[str, str]]


# Sources: llama-server flags from tools/server/README.md ("Common params", "Sampling params",
# "Server-specific params"); llama_cpp.server flags from llama_cpp/server/settings.py
# (ModelSettings fields) through cli.py's add_args_from_model (``--<field name>``).
PARAMS: dict[str, Param] = {
    "n_gpu_layers": Param("layers to offload to the GPU (999: all of them)",
                          "--n-gpu-layers",  # README: `-ngl, --gpu-layers, --n-gpu-layers N`
                          "--n_gpu_layers",  # settings.py: n_gpu_layers: int (ge=-1)
                          _count(0)),
    "threads": Param("CPU threads for generation",
                     "--threads",  # README: `-t, --threads N`
                     "--n_threads",  # settings.py: n_threads: int (ge=1)
                     _count(1)),
    "batch_size": Param("logical batch size for prompt processing",
                        "--batch-size",  # README: `-b, --batch-size N`
                        "--n_batch",  # settings.py: n_batch: int (ge=1)
                        _count(1)),
    "ubatch_size": Param("physical batch size",
                         "--ubatch-size",  # README: `-ub, --ubatch-size N`
                         "--n_ubatch",  # settings.py: n_ubatch: int (ge=1)
                         _count(1)),
    "flash_attn": Param("flash attention, on or off",
                        "--flash-attn",  # README: `-fa, --flash-attn [on|off|auto]`
                        "--flash_attn",  # settings.py: flash_attn: bool
                        _switch),
    "seed": Param("the default random seed of sampling",
                  "--seed",  # README: `-s, --seed SEED`
                  "--seed",  # settings.py: seed: int
                  _count(-1)),
    "parallel": Param("request slots served at once (llama-server only)",
                      "--parallel",  # README: `-np, --parallel N`
                      None,  # llama_cpp.server serves one request at a time (app.py's llama_outer_lock)
                      _count(1)),
    "chat_format": Param("chat template by name, e.g. chatml (llama_cpp.server only)",
                         None,  # llama-server's --chat-template takes other names (llama2, not llama-2)
                         "--chat_format",  # settings.py: chat_format: Optional[str]
                         _name),
}


class LlamaCppEngine:
    """llama.cpp's server for GGUF variants: see the module docstring."""

    name = "llama.cpp"
    formats = ("gguf",)
    targets = ("cpu", "cuda", "rocm", "metal")
    protocol = "openai"
    install = "pip install 'llama-cpp-python[server]'"
    default_port = 8080
    parameters: Mapping[str, str] = {key: p.meaning for key, p in PARAMS.items()}

    # -- choosing ----------------------------------------------------------------------------

    def accepts(self, model: EngineModel) -> str | None:
        ggufs = [w for w in model.weights if w.lower().endswith(".gguf")]
        if model.format not in ("gguf", "") or (not model.format and not ggufs):
            return f"llama.cpp runs gguf files; this variant is {model.format or 'of an unknown format'}"
        if model.target and model.target not in self.targets:
            return f"llama.cpp has no {model.target} build (it runs {', '.join(self.targets)} variants)"
        _file, why = model_file(ggufs)
        return why

    def installed(self) -> str | None:
        if shutil.which(LLAMA_SERVER):
            return None
        import importlib.util

        missing = [m for m in PYTHON_SERVER_MODULES if importlib.util.find_spec(m) is None]
        if not missing:
            return None
        return f"neither {LLAMA_SERVER} on PATH nor llama-cpp-python's server (missing: {', '.join(missing)})"

    # -- starting ----------------------------------------------------------------------------

    def launch(self, model: EngineModel, *, host: str, port: int) -> Launch:
        """The server's command line. The model path is absolute: the core starts the server
        in a work directory of its own."""
        binary = shutil.which(LLAMA_SERVER)
        server = LLAMA_SERVER if binary else PYTHON_SERVER
        flags = server_flags(model, server)
        weights = os.path.abspath(os.fspath(model.path / _weight(model)))
        if binary:
            argv = [binary, "-m", weights, "--host", host, "--port", str(port), *flags]  # README: -m, --host, --port
            return Launch(argv=tuple(argv), port=port, health="/health", endpoint="/v1", protocol=self.protocol)
        argv = [sys.executable, "-m", PYTHON_SERVER, "--model", weights, "--host", host, "--port", str(port), *flags]
        # llama_cpp/server/__main__.py runs uvicorn on os.getenv("HOST", …) and
        # os.getenv("PORT", …): the environment wins over --host/--port, so set it too.
        # /v1/models answers once the model is loaded: create_app() loads it (LlamaProxy)
        # before uvicorn listens. The server has no /health route. CONFIG_FILE, when set,
        # replaces every flag (__main__.py reads settings from it instead): unset it.
        return Launch(argv=tuple(argv), port=port, health="/v1/models", endpoint="/v1", protocol=self.protocol,
                      env={"HOST": host, "PORT": str(port)}, unset_env=("CONFIG_FILE",))

    def container(self, model: EngineModel, *, port: int) -> Container:
        """llama.cpp's own server image, pinned to :data:`LLAMA_CPP_BUILD`; its entry point
        is ``llama-server``, so the flags are the arguments (docs/docker.md: ``docker run …
        ghcr.io/ggml-org/llama.cpp:server -m /models/… --port 8080 --host 0.0.0.0``)."""
        target = model.target or "cpu"
        if target not in IMAGE_FLAVOURS:
            raise UsageError(f"llama.cpp publishes no container image for {target}",
                             hint=f"images exist for {', '.join(IMAGE_FLAVOURS)} variants")
        args = ["-m", str(model.path / _weight(model)), "--host", "0.0.0.0", "--port", str(port),
                *server_flags(model, LLAMA_SERVER)]
        return Container(image=f"{IMAGE}:{IMAGE_FLAVOURS[target]}-{LLAMA_CPP_BUILD}", port=port, readiness="/health",
                         liveness="/health", protocol=self.protocol, args=tuple(args),
                         accelerator=ACCELERATORS.get(target, ""))


def model_file(ggufs: list[str]) -> tuple[str | None, str | None]:
    """The GGUF to hand llama.cpp among a variant's .gguf weights, and None; or None and why
    there is none: one file, or the first shard of one complete split set."""
    if not ggufs:
        return None, "this variant has no .gguf weight file"
    shards = [(m, w) for w in ggufs if (m := SPLIT.match(PurePath(w).name))]
    if len(ggufs) == 1 and (not shards or int(shards[0][0]["count"]) == 1):
        return ggufs[0], None
    if len(shards) != len(ggufs):
        return None, (f"this variant holds {len(ggufs)} .gguf files ({', '.join(sorted(ggufs))}); llama.cpp loads one "
                      "model file, or the shards of one split file")
    sets = {(str(PurePath(w).parent / m["prefix"]), m["count"]) for m, w in shards}
    if len(sets) > 1:
        return None, f"this variant holds shards of {len(sets)} split files; llama.cpp loads one"
    ((_prefix, count),) = sets
    numbers = sorted(int(m["no"]) for m, _w in shards)
    if numbers != list(range(1, int(count) + 1)):
        missing = sorted(set(range(1, int(count) + 1)) - set(numbers))
        shown = ", ".join(map(str, missing)) or "(duplicates)"
        return None, f"the split GGUF is incomplete: shard {shown} of {int(count)}"
    return next(w for m, w in shards if int(m["no"]) == 1), None


def _weight(model: EngineModel) -> str:
    """The file to load, for a model :meth:`LlamaCppEngine.accepts` took."""
    found, why = model_file([w for w in model.weights if w.lower().endswith(".gguf")])
    if found is None:
        raise UsageError(f"llama.cpp cannot serve {model.name}: {why}")
    return found


def server_flags(model: EngineModel, server: str) -> list[str]:
    """The flags for *model*'s name, context and parameters, as *server* spells them."""
    flags: list[str] = []
    if model.name:  # README: `-a, --alias STRING`; settings.py: model_alias
        flags += ["--alias" if server == LLAMA_SERVER else "--model_alias", model.name]
    if model.context_length is not None:  # README: `-c, --ctx-size N`; settings.py: n_ctx
        flags += ["--ctx-size" if server == LLAMA_SERVER else "--n_ctx", str(model.context_length)]
    for key, value in model.params.items():
        param = PARAMS.get(key)
        if param is None:
            raise UsageError(f"llama.cpp has no parameter {key!r}", hint=f"its parameters: {', '.join(sorted(PARAMS))}")
        flag = param.llama_server if server == LLAMA_SERVER else param.python_server
        if flag is None:
            other = PYTHON_SERVER if server == LLAMA_SERVER else LLAMA_SERVER
            raise UsageError(f"llama.cpp parameter {key}: {server} has no such setting (only {other} does)",
                             hint=f"drop {key}, or serve with {other}")
        native, python = param.parse(key, str(value))
        flags += [flag, native if server == LLAMA_SERVER else python]
    return flags


@hookimpl
def modelbuild_register_engines(registry: Any) -> None:
    registry.add(LlamaCppEngine())


__all__ = ["LlamaCppEngine"]
