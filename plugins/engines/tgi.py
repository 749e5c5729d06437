"""Hugging Face Text Generation Inference: a safetensors variant on NVIDIA or AMD GPUs,
behind TGI's router (its own ``/generate`` API, and an OpenAI-compatible
``/v1/chat/completions``).

Everything below was read in TGI v3.3.5 (tag v3.3.5, commit
8d029d2fc36c814e1464278b414d2d414f71cacf): the launcher's flags in
``launcher/src/main.rs`` and their generated reference ``docs/source/reference/launcher.md``,
vendored in tests/data/engine-flags/tgi.txt, which tests/test_engine_flags.py checks every
flag of this module against. 3.3.5 is the image tag the README and the installation pages of
the newest tag (v3.3.7) still tell users to run; TGI is in maintenance mode since 3.3.7.

Choices, and why:

- **context → two limits.** TGI has no single context flag: ``--max-total-tokens`` is "the
  memory budget" of a request (prompt plus generated tokens: the context), and the launcher
  refuses a ``--max-input-tokens`` that is not smaller ("… must be < `max_total_tokens`…"),
  so a context of N gives N and N-1, as TGI's own defaults do ("Default to
  min(max_allocatable, max_position_embeddings)", and that "- 1" for the input). When N-1
  exceeds TGI's default prefill budget (4096 tokens), the budget is raised to N-1 too:
  without prefill chunking (the ROCm image turns it off) the router refuses a
  ``max_input_tokens`` above ``max_batch_prefill_tokens`` (backends/v3/src/main.rs).
- **precision → ``--dtype``** only for ``float16`` and ``bfloat16``, the two values TGI
  accepts, and only for an unquantized variant: "It is not necessary to specify this option
  for pre-quantized models, since the quantization method is read from the model
  configuration", and ``--dtype`` "cannot be used with `--quantize`".
- **the port.** The launcher's own default is 3000 and the image sets ``PORT=80``; the docs
  publish it as 8080 (``-p 8080:80``), which is this engine's default. The command always
  passes ``--port``, so neither default matters.
- **the image.** ``ghcr.io/huggingface/text-generation-inference:<version>`` and
  ``…:<version>-rocm`` (the tags .github/workflows/build.yaml derives: ``{{version}}`` plus
  the hardware's label extension). Its entry point ``/tgi-entrypoint.sh`` runs
  ``exec text-generation-launcher $@``, so the container's ``args`` are the launcher's flags.
  TGI shards across processes that share tensors through ``/dev/shm`` (``shm``).
"""

from __future__ import annotations

import os
from typing import Any

from modelbuild.api import Container, EngineModel, Launch, OptionSpec, UsageError, hookimpl
from modelbuild.api import engine_params as parse_params

#: The TGI release whose flags and images this module was written against.
VERSION = "3.3.5"
IMAGES = {"cuda": f"ghcr.io/huggingface/text-generation-inference:{VERSION}",
          "rocm": f"ghcr.io/huggingface/text-generation-inference:{VERSION}-rocm"}
ACCELERATORS = {"cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu"}
DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16", "f16": "float16"}
#: ``max_batch_prefill_tokens`` when the launcher cannot compute one (launcher/src/main.rs).
DEFAULT_PREFILL_TOKENS = 4096
#: Sharded loading and TGI's warm-up (it measures the largest batch that fits) take minutes.
STARTUP_SECONDS = 1800
#: ``--quantize``'s possible values (docs/source/reference/launcher.md).
QUANTIZE = ("awq", "compressed-tensors", "eetq", "exl2", "gptq", "marlin", "bitsandbytes", "bitsandbytes-nf4",
            "bitsandbytes-fp4", "fp8")

OPTIONS = (
    OptionSpec("num_shard", int, help="GPUs to shard the model across; TGI's default is all it sees (--num-shard)"),
    OptionSpec("quantize", str, choices=QUANTIZE,
               help="quantize on load, or name a checkpoint's method when config.json does not (--quantize)"),
    OptionSpec("dtype", str, choices=("float16", "bfloat16"),
               help="dtype forced upon the model, overriding the variant's precision (--dtype)"),
    OptionSpec("max_batch_prefill_tokens", int, help="most tokens prefilled in one batch (--max-batch-prefill-tokens)"),
    OptionSpec("max_concurrent_requests", int,
               help="requests served at once before refusing more (--max-concurrent-requests)"),
    OptionSpec("cuda_memory_fraction", float,
               help="fraction of each GPU's memory TGI may use (--cuda-memory-fraction)"),
    OptionSpec("trust_remote_code", bool,
               help="run the model's own Python code from its directory (--trust-remote-code)"),
    OptionSpec("usage_stats", str, choices=("on", "off", "no-stack"),
               help="TGI's anonymous usage statistics: on (its default), off, no-stack (--usage-stats)"),
)


class TGIEngine:
    """Hugging Face TGI's launcher: see the module docstring."""

    name = "tgi"
    formats = ("safetensors",)
    targets = ("cuda", "rocm")
    protocol = "tgi"
    install = (f"run the image ghcr.io/huggingface/text-generation-inference:{VERSION} "
               "(a local install builds TGI from source: see its README)")
    default_port = 8080
    parameters = {spec.name: spec.help for spec in OPTIONS}

    def accepts(self, model: EngineModel) -> str | None:
        fmt = model.format or ("safetensors" if any(w.endswith(".safetensors") for w in model.weights) else "")
        if fmt != "safetensors":
            return f"TGI serves safetensors checkpoints; this variant is {fmt or 'of unknown format'}"
        if model.target and model.target not in self.targets:
            return f"TGI serves cuda and rocm variants here; this one is for {model.target}"
        if model.files and "config.json" not in model.files:
            return ("TGI loads a Hugging Face model directory, with config.json beside the weights; "
                    "this variant has none")
        return None

    def installed(self) -> str | None:
        import shutil

        if shutil.which("text-generation-launcher"):
            return None
        return "the text-generation-launcher command is not on PATH"

    def launch(self, model: EngineModel, *, host: str, port: int) -> Launch:
        flags = self._flags(model, parse_params(self.name, OPTIONS, model.params))
        # absolute: the core starts the launcher in a work directory of its own
        argv = ("text-generation-launcher", "--model-id", os.path.abspath(model.path), "--hostname", host,
                "--port", str(port), *flags)
        return Launch(argv=argv, port=port, health="/health", endpoint="/", protocol=self.protocol,
                      ready_timeout=float(STARTUP_SECONDS))

    def container(self, model: EngineModel, *, port: int) -> Container:
        params = parse_params(self.name, OPTIONS, model.params)
        flags = self._flags(model, params)
        target = model.target if model.target in IMAGES else "cuda"
        shards = params.get("num_shard", 1)
        args = ("--model-id", str(model.path), "--hostname", "0.0.0.0", "--port", str(port), *flags)
        return Container(image=IMAGES[target], port=port, readiness="/health", liveness="/health",
                         protocol=self.protocol, args=args, endpoint="/", accelerator=ACCELERATORS[target],
                         accelerator_count=shards, shm=True,
                         startup_seconds=STARTUP_SECONDS)

    def _flags(self, model: EngineModel, params: dict[str, Any]) -> tuple[str, ...]:
        """The flags after the model, host and port: context limits, dtype, parameters."""
        for key in ("num_shard", "max_batch_prefill_tokens", "max_concurrent_requests"):
            if key in params and params[key] < 1:
                raise UsageError(f"engine tgi parameter {key}={params[key]}: must be at least 1")
        fraction = params.get("cuda_memory_fraction")
        if fraction is not None and not 0 < fraction <= 1:
            raise UsageError(f"engine tgi parameter cuda_memory_fraction={fraction}: must be in (0, 1]")
        if "dtype" in params and "quantize" in params:
            raise UsageError("engine tgi parameters dtype and quantize: TGI's --dtype cannot be used with --quantize",
                             hint="give one of them")
        flags = list(_context_flags(model.context_length, params.get("max_batch_prefill_tokens")))
        dtype = params.get("dtype") or ("" if model.quantization or "quantize" in params
                                        else DTYPES.get(model.precision.lower(), ""))
        if dtype:
            flags += ["--dtype", dtype]
        for key in ("num_shard", "quantize", "max_batch_prefill_tokens", "max_concurrent_requests",
                    "cuda_memory_fraction", "usage_stats"):
            if key in params:
                flags += [f"--{key.replace('_', '-')}", str(params[key])]
        if params.get("trust_remote_code"):
            flags.append("--trust-remote-code")
        return tuple(flags)


def _context_flags(context: int | None, prefill: int | None) -> tuple[str, ...]:
    """``--max-input-tokens N-1 --max-total-tokens N`` for a context of N, and the prefill
    budget raised to N-1 when TGI's default would refuse it (see the module docstring); a
    budget the user gives is theirs (with prefill chunking, TGI accepts a smaller one)."""
    if context is None:
        return ()
    if context < 2:
        raise UsageError(f"context length {context}: TGI needs at least 2 (one prompt token and one generated)")
    flags = ("--max-input-tokens", str(context - 1), "--max-total-tokens", str(context))
    if prefill is None and context - 1 > DEFAULT_PREFILL_TOKENS:
        flags += ("--max-batch-prefill-tokens", str(context - 1))
    return flags


@hookimpl
def modelbuild_register_engines(registry: Any) -> None:
    registry.add(TGIEngine())
