"""vLLM: a Hugging Face safetensors variant on NVIDIA or AMD GPUs, behind vLLM's
OpenAI-compatible server (``vllm serve``).

Everything below was read in vLLM v0.34.0 (tag v0.34.0, commit 62d4bc3c7, as its PyPI
sdist's ``vllm/_version.py`` records); tests/test_engine_flags.py checks every flag this
module emits against the flag list vendored from that release in
tests/data/engine-flags/vllm.txt, which quotes the lines cited here.

Choices, and why:

- **safetensors only.** vLLM's own docs call its GGUF support "highly experimental and
  under-optimized", and since it moved to the out-of-tree ``vllm-gguf-plugin`` the
  published images do not include it (docs/features/quantization/gguf.md). A gguf variant
  is the llama.cpp engine's. A variant must be a Hugging Face model directory: vLLM reads
  ``config.json`` beside the weights.
- **cuda and rocm** (and ``""``: a single-platform checkpoint is portable). vLLM has a CPU
  backend, but it is a separate build and image (``vllm/vllm-openai-cpu``), so a ``cpu``
  variant is refused here rather than handed a command that fails on the default install.
- **precision → ``--dtype``** (``bfloat16``, ``float16``, ``float32``: values of
  ``ModelDType``, vllm/config/model.py) for an unquantized variant only. A quantized
  checkpoint (GPTQ, AWQ, compressed-tensors…) says so in ``config.json`` and vLLM reads it
  from there ("If `None`, we first check the `quantization_config` attribute in the model
  config file"), so the variant's quantization adds no flag; ``quantization=`` and
  ``dtype=`` parameters force one.
- **the image.** ``vllm/vllm-openai:v<version>`` (CUDA) and ``vllm/vllm-openai-rocm:v<version>``
  (ROCm), the tags .buildkite/scripts/publish-release-images.sh pushes; both Dockerfiles end
  in ``ENTRYPOINT ["vllm", "serve"]``, so the container's ``args`` start at the model
  directory. vLLM needs a large ``/dev/shm`` for its worker processes (``shm``).
"""

from __future__ import annotations

import os
from typing import Any

from modelbuild.api import Container, EngineModel, Launch, OptionSpec, UsageError, hookimpl
from modelbuild.api import engine_params as parse_params

#: The vLLM release whose flags and images this module was written against.
VERSION = "0.34.0"
IMAGES = {"cuda": f"vllm/vllm-openai:v{VERSION}", "rocm": f"vllm/vllm-openai-rocm:v{VERSION}"}
ACCELERATORS = {"cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu"}
#: ModelPack precisions (and their common spellings) → vLLM's ``--dtype`` values.
DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
          "f16": "float16", "float32": "float32", "fp32": "float32", "f32": "float32"}
#: Loading, torch.compile and CUDA-graph capture of a large model take minutes.
STARTUP_SECONDS = 1800

#: The parameters, each with the flag it becomes (``--`` + the name with ``-``).
OPTIONS = (
    OptionSpec("tensor_parallel_size", int, help="GPUs to split the model across (--tensor-parallel-size)"),
    OptionSpec("gpu_memory_utilization", float,
               help="fraction of each GPU's memory vLLM may use, 0 to 1 (--gpu-memory-utilization)"),
    OptionSpec("max_num_seqs", int, help="most sequences batched in one step (--max-num-seqs)"),
    OptionSpec("dtype", str, choices=("auto", "half", "float16", "bfloat16", "float", "float32"),
               help="weights and activations dtype, overriding the variant's precision (--dtype)"),
    OptionSpec("quantization", str, help="quantization method, when config.json does not name it (--quantization)"),
    OptionSpec("trust_remote_code", bool,
               help="run the model's own Python code from its directory (--trust-remote-code)"),
    OptionSpec("enforce_eager", bool,
               help="eager PyTorch: no CUDA graphs or torch.compile, faster start (--enforce-eager)"),
)




def _check_ranges(params: dict[str, Any]) -> None:
    """The bounds vLLM's own config declares (tensor_parallel_size ge=1, max_num_seqs
    ge=1, gpu_memory_utilization gt=0 le=1), checked before a GPU box finds out."""
    for key in ("tensor_parallel_size", "max_num_seqs"):
        if key in params and params[key] < 1:
            raise UsageError(f"engine vllm parameter {key}={params[key]}: must be at least 1")
    util = params.get("gpu_memory_utilization")
    if util is not None and not 0 < util <= 1:
        raise UsageError(f"engine vllm parameter gpu_memory_utilization={util}: must be in (0, 1]",
                         hint="0.9 lets vLLM use 90% of each GPU's memory")


class VLLMEngine:
    """vLLM's OpenAI-compatible server: see the module docstring."""

    name = "vllm"
    formats = ("safetensors",)
    targets = ("cuda", "rocm")
    protocol = "openai"
    install = "pip install vllm (Linux with an NVIDIA or AMD GPU)"
    default_port = 8000
    parameters = {spec.name: spec.help for spec in OPTIONS}

    def accepts(self, model: EngineModel) -> str | None:
        fmt = model.format or ("safetensors" if any(w.endswith(".safetensors") for w in model.weights) else "")
        if fmt != "safetensors":
            return (f"vLLM serves safetensors checkpoints here; this variant is {fmt or 'of unknown format'}"
                    + (" (the llama.cpp engine serves gguf)" if fmt == "gguf" else ""))
        if model.target and model.target not in self.targets:
            return (f"vLLM serves cuda and rocm variants; this one is for {model.target}"
                    + (" (vLLM's CPU backend is a separate build)" if model.target == "cpu" else ""))
        if model.files and "config.json" not in model.files:
            return ("vLLM loads a Hugging Face model directory, with config.json beside the weights; "
                    "this variant has none")
        return None

    def installed(self) -> str | None:
        import shutil

        return None if shutil.which("vllm") else "the vllm command is not on PATH"

    def launch(self, model: EngineModel, *, host: str, port: int) -> Launch:
        flags = self._flags(model, parse_params(self.name, OPTIONS, model.params))
        # absolute: the core starts the server in a work directory of its own
        argv = ("vllm", "serve", os.path.abspath(model.path), "--host", host, "--port", str(port), *flags)
        return Launch(argv=argv, port=port, health="/health", endpoint="/v1", protocol=self.protocol,
                      ready_timeout=float(STARTUP_SECONDS))

    def container(self, model: EngineModel, *, port: int) -> Container:
        params = parse_params(self.name, OPTIONS, model.params)
        flags = self._flags(model, params)
        target = model.target if model.target in IMAGES else "cuda"
        gpus = params.get("tensor_parallel_size", 1)
        args = (str(model.path), "--host", "0.0.0.0", "--port", str(port), *flags)
        return Container(image=IMAGES[target], port=port, readiness="/health", liveness="/health",
                         protocol=self.protocol, args=args, endpoint="/v1",
                         accelerator=ACCELERATORS[target], accelerator_count=gpus, shm=True,
                         startup_seconds=STARTUP_SECONDS)

    def _flags(self, model: EngineModel, params: dict[str, Any]) -> tuple[str, ...]:
        """The flags after the host and port: what to serve it as, the context, parameters."""
        _check_ranges(params)
        flags: list[str] = []
        if model.name:
            flags += ["--served-model-name", model.name]
        if model.context_length is not None:
            if model.context_length < 1:
                raise UsageError(f"context length {model.context_length}: must be at least 1")
            flags += ["--max-model-len", str(model.context_length)]
        dtype = params.get("dtype") or ("" if model.quantization else DTYPES.get(model.precision.lower(), ""))
        if dtype:
            flags += ["--dtype", dtype]
        for key in ("tensor_parallel_size", "gpu_memory_utilization", "max_num_seqs", "quantization"):
            if key in params:
                flags += [f"--{key.replace('_', '-')}", str(params[key])]
        for key in ("trust_remote_code", "enforce_eager"):
            if params.get(key):
                flags.append(f"--{key.replace('_', '-')}")
        return tuple(flags)


@hookimpl
def modelbuild_register_engines(registry: Any) -> None:
    registry.add(VLLMEngine())
