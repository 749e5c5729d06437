"""GGUF: format handler, quantizer and llama.cpp-compatible shard strategy.

Three plugins share one header parser:

``format:gguf`` (:class:`GGUFFormat`)
    ``read_info`` reads headers only. Parameters are tensor elements (``n_elements``) summed
    over every tensor of every file. ``dtype_params`` keys: ``F32/F16/BF16/F64`` become
    ``float32/float16/bfloat16/float64``, ``I8/I16/I32/I64`` become ``int8…int64``, and a
    block-quantized type is its lower-case ggml name (``Q8_0`` → ``q8_0``, ``Q4_K`` →
    ``q4_k``, ``IQ2_XXS`` → ``iq2_xxs``): each of its elements counts as one parameter.
    ``quantization`` is the ``general.file_type`` name (``MOSTLY_Q4_K_M`` → ``q4_k_m``);
    without a file type, or when the file type names a float type but tensors are
    quantized, it is the quantized tensor type holding most parameters; None for a model
    of float/integer tensors only. ``family`` is ``general.architecture``;
    ``architecture`` is ``transformer`` when ``<arch>.attention.head_count`` exists. The
    shards of a split set (``split.count`` > 1) are read together and must all be there.
    When a model set holds several GGUF models (say a model and its ``mmproj``), counts are
    summed and the facts (family, quantization, name) come from the one with most
    parameters.

``quantizer:gguf-quantize`` (:class:`GGUFQuantizer`)
    What ``llama-quantize`` does. Types: the k-quant file types ``q2_k``, ``q3_k_s``,
    ``q3_k_m``, ``q3_k_l``, ``q4_k_s``, ``q4_k_m``, ``q5_k_s``, ``q5_k_m``, ``q6_k`` (and
    llama-quantize's aliases ``q3_k``, ``q4_k``, ``q5_k`` for the _M mixes), and ``f16``,
    ``bf16``, ``q8_0``, ``q4_0``, ``q4_1``, ``q5_0``, ``q5_1``. Which type each tensor gets
    is llama.cpp's choice, ported in :mod:`modelbuild_plugins.gguf_format.mixes` (one copy of the
    rules: ``tensor_allows_quantization``, the mix, the fallback for rows that are not a
    multiple of the block): a k-quant file type uses llama.cpp's mix (``output.weight``
    Q6_K, some ``attn_v``/``ffn_down`` layers with more bits…) unless ``--pure=true``, then
    every tensor llama.cpp converts gets the file type's type, as ``llama-quantize --pure``
    does. The legacy types are ``--pure`` unless ``--pure=false`` is given (the output of
    version 1). Either way a row that is not a multiple of the block falls back as
    ``tensor_type_fallback`` does (Q4_K -> Q5_0, Q6_K -> Q8_0…, a 32-block type -> F16).
    Tensors matched by a ``keep`` pattern (fnmatch) keep their type and bytes, as do those
    llama.cpp never converts (norms, 1-D tensors…). K-quant tensors are quantized with
    ``modelbuild_plugins.gguf_format.kquants.quantize_kquant`` (llama.cpp's reference quantizers),
    the others with ``gguf.quants.quantize``; each quantized tensor is byte-identical to
    what ``llama_model_quantize`` writes (no importance matrix). Inputs must be
    F32/F16/BF16 where a tensor is to be converted (llama.cpp refuses to requantize);
    integer and F64 tensors are copied. Sets ``general.file_type`` (the LlamaFileType of
    the file type: ``MOSTLY_Q4_K_M``…) and ``general.quantization_version`` (as
    llama-quantize does), keeps every other key and its order, and keeps the input's tensor
    order (llama-quantize writes its own, sorted order); a split set is quantized shard by
    shard under the same names (``--keep-split``), with the mix computed over the whole
    model.

``shard:gguf`` (:class:`GGUFShard`)
    gguf-split's ``--split-max-size`` plan: tensors in file order, sized
    ``GGML_PAD(nbytes, 32)``, a new split when the running size would pass the limit; the
    first split carries every key of the input, then ``split.no`` (u16),
    ``split.tensors.count`` (i32) and ``split.count`` (u16) in that order (gguf's setters
    move a key to the end, and gguf-split sets ``split.count`` last); other splits have
    those three keys only. Files are ``<stem>-00001-of-00003.gguf``. Differences, all
    where gguf-split has no answer: a model that fits in one split is passed through
    unchanged (gguf-split would write ``-00001-of-00001``); a first tensor larger than the
    limit gets a split of its own (gguf-split stops with "one of splits have 0 tensors");
    tensor dimensions are copied as written (ggml would drop trailing 1s); a custom
    ``general.alignment`` is honoured by the split that declares it. ``merge`` reverses
    it: one ``<stem>.gguf``, the ``split.*`` keys removed (gguf-split --merge keeps them
    with split.count 0). Tensor bytes are copied with ``os.copy_file_range``.

Quantization runs in ``ctx.jobs`` worker processes (from modelbuild's forkserver): the
parent plans the layout, writes header, keys and tensor infos through ``gguf.GGUFWriter``,
sizes the file, and workers quantize chunks of rows and ``os.pwrite`` them at their
precomputed offsets; no tensor data crosses a pipe and a worker holds one chunk at a time.

numpy and gguf are imported inside functions: the CLI imports this package on every run.

Modules: :mod:`.constants`, :mod:`.reader` (the header parser), :mod:`.models` (split sets),
:mod:`.writer` (value encoding, :func:`write_header`, byte-range copies), :mod:`.format`
(:class:`GGUFFormat`), :mod:`.quantize` (:class:`GGUFQuantizer` and its worker pipeline),
:mod:`.split` (:class:`GGUFShard`), :mod:`.kquants` (llama.cpp's k-quantizers in numpy),
:mod:`.mixes` (llama.cpp's per-tensor type choice).
"""

from __future__ import annotations

from typing import Any

from modelbuild.api import OptionSpec, hookimpl

from .constants import (
    DEFAULT_ALIGNMENT,
    G_BF16,
    G_F16,
    G_F32,
    MAGIC,
    MAX_DIMS,
    SPLIT_COUNT,
    SPLIT_NAME,
    SPLIT_NO,
    SPLIT_PAD,
    SPLIT_TENSORS,
    SUPPORTED_VERSIONS,
    T_ARRAY,
    T_BOOL,
    T_FLOAT32,
    T_FLOAT64,
    T_INT8,
    T_INT16,
    T_INT32,
    T_INT64,
    T_STRING,
    T_UINT8,
    T_UINT16,
    T_UINT32,
    T_UINT64,
)
from .format import GGUFFormat
from .mixes import allows_quantization, ggml_n_dims
from .models import Model, group_models
from .quantize import GGUFQuantizer, run_tasks, to_float32
from .reader import (
    KV,
    Header,
    TensorInfo,
    is_gguf,
    parse_header,
    precision_name,
    type_name,
)
from .split import GGUFShard
from .writer import (
    Layout,
    RawValue,
    copy_range,
    encode_value,
    write_header,
    writer_class,
)

__all__ = [
    "DEFAULT_ALIGNMENT", "G_BF16", "G_F16", "G_F32", "MAGIC", "MAX_DIMS", "SPLIT_COUNT", "SPLIT_NAME", "SPLIT_NO",
    "SPLIT_PAD", "SPLIT_TENSORS", "SUPPORTED_VERSIONS", "T_ARRAY", "T_BOOL", "T_FLOAT32", "T_FLOAT64", "T_INT8",
    "T_INT16", "T_INT32", "T_INT64", "T_STRING", "T_UINT8", "T_UINT16", "T_UINT32", "T_UINT64",
    "KV", "GGUFFormat", "GGUFQuantizer", "GGUFShard", "Header", "Layout", "Model", "RawValue", "TensorInfo",
    "allows_quantization", "copy_range", "encode_value", "ggml_n_dims", "group_models", "is_gguf", "parse_header",
    "precision_name", "run_tasks", "to_float32", "type_name", "write_header", "writer_class",
]

# The options QUANTIZE takes (what GGUFQuantizer.quantize checks by hand). Declared here, not
# in the class body in quantize.py, only while that module's worker pool is being reworked:
# move it there then.
GGUFQuantizer.options = (
    OptionSpec("keep", list, help="tensor-name patterns (fnmatch) whose tensors keep their type and bytes"),
    OptionSpec("pure", bool, help="one type for every tensor llama.cpp converts, as llama-quantize --pure; "
                                  "default: true for f16, bf16, q8_0, q4_0…q5_1, false for the k-quant mixes"),
)


@hookimpl
def modelbuild_register_formats(registry: Any) -> None:
    registry.add(GGUFFormat())


@hookimpl
def modelbuild_register_quantizers(registry: Any) -> None:
    registry.add(GGUFQuantizer())


@hookimpl
def modelbuild_register_shard_strategies(registry: Any) -> None:
    registry.add(GGUFShard())
