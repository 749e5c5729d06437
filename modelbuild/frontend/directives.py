"""The Modelfile directives, declared once: the interpreter, the docs and ``--help`` read this.

Arguments are checked from these declarations (meson's habit), not by hand in each handler.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelbuild.description import FileKind


@dataclass(frozen=True, slots=True)
class Directive:
    name: str
    role: str  # "files", "scalar", "list", "from", "arg", "label", "capabilities", "target", "transform", "runtime"
    summary: str
    target: str = ""  # "descriptor.name", "config.format", … for scalar and list roles
    kind: FileKind | None = None
    min_args: int = 1
    max_args: int | None = None
    since: str = "0.1"
    modctl: bool = False


def _d(*args, **kw) -> Directive:  # noqa: ANN002, ANN003 - a table builder
    return Directive(*args, **kw)


DIRECTIVES: dict[str, Directive] = {
    d.name: d
    for d in [
        _d("FROM", "from", "the build context: a directory, relative to the Modelfile, or a remote source "
                           "(hf://, https://, oci://, ollama://) with --include=/--exclude= patterns"),
        _d("ARG", "arg", "declare a build argument, NAME or NAME=default; set it with --build-arg"),
        # modctl's file directives, one layer per file, a directory as one tar layer
        _d("CONFIG", "files", "configuration files (config.json, tokenizer.json, …)", kind=FileKind.CONFIG, modctl=True),
        _d("MODEL", "files", "weight files", kind=FileKind.MODEL, modctl=True),
        _d("CODE", "files", "code files", kind=FileKind.CODE, modctl=True),
        _d("DATASET", "files", "dataset files", kind=FileKind.DATASET, modctl=True),
        _d("DOC", "files", "documentation files", kind=FileKind.DOC, modctl=True),
        # modctl's scalar metadata
        _d("NAME", "scalar", "model name; also the default tag", "descriptor.name", max_args=1, modctl=True),
        _d("ARCH", "scalar", "architecture, e.g. transformer", "config.architecture", max_args=1, modctl=True),
        _d("FAMILY", "scalar", "model family, e.g. llama3", "descriptor.family", max_args=1, modctl=True),
        _d("FORMAT", "scalar", "file format, e.g. safetensors", "config.format", max_args=1, modctl=True),
        _d("PARAMSIZE", "scalar", "parameter count, e.g. 8B or 494M", "config.paramSize", max_args=1, modctl=True),
        _d("PRECISION", "scalar", "precision, e.g. bfloat16", "config.precision", max_args=1, modctl=True),
        _d("QUANTIZATION", "scalar", "quantization, e.g. awq", "config.quantization", max_args=1, modctl=True),
        # ModelPack descriptor fields modctl cannot set
        _d("VENDOR", "scalar", "who ships the model", "descriptor.vendor", max_args=1),
        _d("VERSION", "scalar", "model version", "descriptor.version", max_args=1),
        _d("TITLE", "scalar", "human-readable title", "descriptor.title", max_args=1),
        _d("DESCRIPTION", "scalar", "one-paragraph description", "descriptor.description", max_args=1),
        _d("DOCURL", "scalar", "documentation URL", "descriptor.docURL", max_args=1),
        _d("SOURCEURL", "scalar", "source code URL", "descriptor.sourceURL", max_args=1),
        _d("REVISION", "scalar", "source revision, e.g. a git commit", "descriptor.revision", max_args=1),
        _d("LICENSE", "list", "SPDX license identifier(s); repeatable", "descriptor.licenses"),
        _d("AUTHOR", "list", "author(s); repeatable", "descriptor.authors"),
        _d("DATASETURL", "list", "URL(s) of training datasets; repeatable", "descriptor.datasetsURL"),
        _d("CAPABILITIES", "capabilities", "model capabilities as key=value pairs; repeatable"),
        _d("LABEL", "label", "manifest annotations as key=value pairs; repeatable"),
        # multi-platform stages: TARGET NAME[/VARIANT] [CONSTRAINT…] [AS STAGE]
        _d("TARGET", "target", "start a stage building for a target: TARGET cuda cuda>=12.1 compute>=8.0",
           since="0.4"),
        # weight transforms, applied in order to the MODEL files (and config.json beside them)
        _d("CONVERT", "transform", "convert the weights to another format: CONVERT gguf [--outtype=f16]", since="0.3"),
        _d("QUANTIZE", "transform", "quantize or cast the weights: QUANTIZE TYPE [--keep=PATTERN]…", since="0.2"),
        _d("SHARD", "transform", "split the weights into shards of at most SIZE (SHARD 2GB), or merge them (SHARD none)",
           max_args=1, since="0.2"),
        # how a variant is served: its runtime description (docs/spec/runtime.md)
        _d("RUNTIME", "runtime", "an engine that serves the variant, with its parameters: RUNTIME llama.cpp "
           "n_gpu_layers=99; or the context length: RUNTIME context=8192", since="1.1"),
    ]
}

# ModelPack capability keys, by their lower-cased spelling (users may write any case,
# or with dashes/underscores: tool-usage, tool_usage, toolUsage).
CAPABILITY_KEYS = {
    "inputtypes": ("inputTypes", "modalities"),
    "outputtypes": ("outputTypes", "modalities"),
    "knowledgecutoff": ("knowledgeCutoff", "datetime"),
    "reasoning": ("reasoning", "bool"),
    "toolusage": ("toolUsage", "bool"),
    "reward": ("reward", "bool"),
    "languages": ("languages", "languages"),
}
MODALITIES = ("text", "image", "audio", "video", "embedding", "other")

# The spec's precision vocabulary; anything else builds, with a warning.
KNOWN_PRECISIONS = {
    "float64", "float32", "float16", "bfloat16", "float8_e4m3", "float8_e5m2", "float4_e2m1",
    "int64", "int32", "int16", "int8", "int4", "uint64", "uint32", "uint16", "uint8", "uint4", "bool",
}
