"""Hugging Face (safetensors) → GGUF: the ``hf-to-gguf`` converter and its architecture adapters.

``converter:hf-to-gguf`` (:class:`HfToGguf`) does what llama.cpp's ``convert_hf_to_gguf.py``
does for the architectures it knows, without torch or transformers:

* **Input**: the model set of one Hugging Face checkpoint: ``config.json``, the weights
  (one ``*.safetensors`` file, or the shards a ``*.safetensors.index.json`` names),
  ``tokenizer.json``, and where present ``tokenizer_config.json``, ``generation_config.json``
  and ``chat_template.jinja`` / ``chat_template.json``.
* **Output**: the same set with every ``.safetensors`` file and the index replaced by one
  ``model.gguf`` in the checkpoint's directory. Every other file (``config.json``, the
  tokenizer files, ``generation_config.json``, a README…) is passed through unchanged: the
  GGUF file is self-contained, but the JSON files stay useful to tools that read them.
* **Options**: ``--outtype=f16|f32|bf16|q8_0`` (f16 is the default, as it was llama.cpp's);
  ``--name=TEXT`` for ``general.name`` (default: the base name of ``_name_or_path`` in
  config.json, else ``model``); ``--pre=NAME`` to name llama.cpp's pre-tokenizer for a
  byte-level tokenizer whose structure is not recognised (see below).

What the file holds, in llama.cpp's order: ``general.architecture``, ``general.type``,
``general.name``; the architecture's hyperparameters (from its adapter);
``general.file_type``; ``general.quantization_version`` (llama.cpp's converter writes it
for every output type, so this does too); the tokenizer; then the tensors. Tensor types
follow llama.cpp's converter: tensors of one dimension and ``*_norm.weight`` are F32,
every other tensor is the output type; a q8_0 tensor whose rows are not a multiple of 32
falls back to F16 (as ``gguf.QuantError`` makes llama.cpp's converter do). F16 is numpy's
``astype(float16)``; BF16 and Q8_0 are ``gguf.quants.quantize`` of the float32 values
(llama.cpp's converter uses the same functions, so bytes match).

Tensors are written in an order that depends only on the tensors, never on how the input
was sharded: extra tensors an adapter generates (``rope_freqs``), the token embedding,
the blocks in order (by Hugging Face name within a block), then the rest (output norm,
output). A sharded checkpoint and the same checkpoint in one file give identical bytes.

**Streaming.** Headers are read first (:func:`modelbuild_plugins.safetensors_format.read_header`),
the GGUF header, keys and tensor infos are written with the data region sized, and each
tensor is then read from a memory map, transformed by the adapter (the q/k permutation),
converted in chunks of rows and written at its offset. At most ``ctx.jobs`` tensors are in
flight at a time (threads), so memory stays at a few tensors.

**Tokenizer** (read from ``tokenizer.json`` with the json module; no transformers). Two
kinds of BPE tokenizer are supported:

``gpt2`` (byte-level BPE: GPT-2, Llama 3, Qwen2, the bundled tiny-llama)
    Tokens are the vocabulary by id; ``config.json``'s ``vocab_size`` sets the count and
    ids without a token become ``[PAD{id}]`` of type UNUSED (as llama.cpp pads). Added
    tokens are CONTROL when ``special`` (or when they look special: ``<|…|>``, ``<pad>``,
    ``<unusedN>``…, llama.cpp's ``does_token_look_special``), USER_DEFINED otherwise; the
    rest NORMAL. Merges come from ``model.merges`` (both the ``"a b"`` and the ``["a",
    "b"]`` forms; a space inside a pair part is written as U+0120 as gguf-py does).

    ``tokenizer.ggml.pre`` is derived from the ``pre_tokenizer`` structure, not from
    llama.cpp's hash of a test string: a ``ByteLevel`` pre-tokenizer with ``use_regex``
    is GPT-2's regex (``gpt-2``); ``Sequence[Digits(individual), ByteLevel(use_regex)]``
    is ``starcoder``; ``Sequence[Split(Regex R, Isolated), ByteLevel(use_regex=false)]``
    is looked up by R among the regexes llama.cpp implements (``src/llama-vocab.cpp``
    quotes each one "from tokenizer.json"): GPT-2's (``gpt-2``), Llama 3's
    (``llama-bpe``), Qwen2's (``qwen2``), Qwen3.5's (``qwen35``), Tekken's (``tekken``)
    and GPT-4o's (``gpt-4o``). ``ByteLevel(add_prefix_space=true)`` and any other
    structure are a :class:`FormatError` listing the supported ones (llama.cpp would
    tokenize such a model differently from Hugging Face, silently); ``--pre=NAME`` names
    the pre-tokenizer yourself. The normalizer must be absent or NFC (Qwen2's; llama.cpp
    does not normalize, which is the same for text already in NFC).

``llama`` (SentencePiece-style BPE with byte fallback, as in the ``tokenizer.json`` of
Llama 2 and Mistral 7B)
    Recognised by ``byte_fallback`` with a ``▁`` normalizer (``Prepend("▁")`` +
    ``Replace(" ", "▁")``) or a ``Metaspace`` pre-tokenizer that does not split.
    ``<0xXX>`` tokens are BYTE. llama.cpp's SPM tokenizer merges the adjacent pair whose
    concatenation has the highest *score*; the scores are derived from the merges, the
    token made by merge *r* (its first) scoring ``-r``, so that llama.cpp merges in the
    order Hugging Face does (llama.cpp's own tokenizer.json path writes -1000 for every
    token, which merges left to right instead). Added tokens score -1000.
    ``tokenizer.ggml.add_space_prefix`` is written (true when the normalizer prepends ▁).
    As in llama.cpp, the prefix space is added at the start and after each special token
    (Hugging Face's legacy behaviour; a ``Metaspace`` with ``prepend_scheme: first``
    differs after special tokens).

Special tokens follow gguf-py's ``SpecialVocab``: ``bos/eos/unk/sep/pad/mask`` from
``tokenizer_config.json``'s ``*_token`` strings (looked up among ``added_tokens``), then
``config.json``'s ``*_token_id``, then (beyond llama.cpp) ``generation_config.json``'s, the
first found winning, integers only, below the vocabulary size; ``add_bos_token`` /
``add_eos_token`` from a ``TemplateProcessing`` post-processor (a ``ByteLevel`` one means
false) and then ``tokenizer_config.json``; the chat template from
``tokenizer_config.json``, else ``chat_template.jinja``, else ``chat_template.json`` (a list
of named templates becomes ``tokenizer.chat_template.NAME`` keys, as gguf-py writes them).

**Architectures** are adapters (:class:`ArchitectureAdapter`), registered through the
``modelbuild_register_architectures`` hook; the converter finds them in
``ctx.architectures`` (the registry the hook filled) by ``config.json``'s
``architectures[0]``. Built in: ``llama`` (LlamaForCausalLM), ``mistral``
(MistralForCausalLM, written as GGUF architecture ``llama`` as llama.cpp does) and
``qwen2`` (Qwen2ForCausalLM).

numpy and gguf are imported inside functions: the CLI imports this module on every run.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from modelbuild.errors import UsageError
from modelbuild.hookspecs import hookimpl
from modelbuild.weights import FormatError, Output, TransformContext, WeightFile

OUTTYPES = ("f16", "f32", "bf16", "q8_0")
OUTPUT_NAME = "model.gguf"
OPTIONS = ("outtype", "name", "pre")
CHUNK_ELEMENTS = 4 << 20  # elements converted at a time (16 MiB of float32)

_INDEX_SUFFIX = ".safetensors.index.json"
_SHARD = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.safetensors$")
# safetensors dtypes the converter reads (as numpy dtype names; BF16 through ml_dtypes)
_READABLE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}

# GGUF value types (gguf.GGUFValueType)
_T_UINT32, _T_INT32, _T_FLOAT32, _T_BOOL, _T_STRING, _T_ARRAY = 4, 5, 6, 7, 8, 9
_T_UINT64, _T_INT64 = 10, 11
# gguf.TokenType
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


# -- errors an adapter raises ------------------------------------------------------------------


class ShapeMismatch(Exception):
    """Raised by :meth:`ArchitectureAdapter.check`: a tensor contradicts ``config.json``.

    ``found`` is None when a required tensor is missing. The converter turns it into a
    :class:`FormatError` naming the file that holds the tensor (or the weights, when it is
    missing)."""

    def __init__(self, tensor: str, expected: tuple[int, ...] | None, found: tuple[int, ...] | None,
                 why: str = "") -> None:
        self.tensor, self.expected, self.found, self.why = tensor, expected, found, why
        super().__init__(self.describe())

    def describe(self) -> str:
        because = f" ({self.why})" if self.why else ""
        if self.found is None:
            return f"tensor {self.tensor!r} is missing: config.json needs it{because}"
        return (f"tensor {self.tensor!r} has shape {list(self.found)}, but config.json says "
                f"{list(self.expected or ())}{because}")


def config_error(message: str, *, hint: str | None = None) -> FormatError:
    """The error an adapter raises for a ``config.json`` it cannot use."""
    return FormatError("config.json", message, hint=hint)


# -- the adapter interface ---------------------------------------------------------------------


class ArchitectureAdapter:
    """What the converter asks of an architecture. Subclass it (or write any object with
    these attributes and methods) and register an instance::

        @hookimpl
        def modelbuild_register_architectures(registry):
            registry.add(MyAdapter())

    Attributes:

    ``name``
        Unique registry key (``llama``, ``mistral``, ``qwen2``).
    ``gguf_arch``
        The GGUF ``general.architecture`` llama.cpp knows it by (``mistral`` writes
        ``llama``); empty means ``name``. Must be a ``gguf.MODEL_ARCH_NAMES`` value for the
        default :meth:`tensor_name`.
    ``version``
        Enters the conversion's cache key: bump it when output bytes change.
    ``summary``
        One line.
    ``hf_architectures``
        The ``config.json`` ``architectures[0]`` values it handles
        (``("LlamaForCausalLM",)``). Two adapters claiming one is an error at conversion.

    Methods (``config`` is the parsed ``config.json``; "shape" is the safetensors / numpy
    shape, outermost first):

    ``block_count(config) -> int``
        Number of transformer blocks (for the tensor-name map).
    ``hparams(config) -> list[tuple[str, Any]]``
        The architecture's GGUF keys, in writing order. A key is the full GGUF key;
        ``{arch}`` in it is replaced by ``gguf_arch``, so ``gguf.Keys.LLM.*`` constants
        can be used as they are. Values: ``bool`` → BOOL, ``int`` → UINT32 (INT32 when
        negative, 64-bit when large), ``float`` → FLOAT32, ``str`` → STRING, a list →
        ARRAY (int items INT32, float FLOAT32, str STRING); a ``gguf.GGUFValue`` gives the
        type explicitly. ``general.*`` and ``tokenizer.*`` keys are the converter's.
        Raise :func:`config_error` for a config it cannot convert.
    ``tensor_name(hf_name, n_blocks) -> str | None``
        The GGUF name of a checkpoint tensor (``model.layers.0.self_attn.q_proj.weight``
        → ``blk.0.attn_q.weight``), or None to leave the tensor out (rotary caches).
        Raise ``KeyError`` for a tensor it does not know; the converter reports it.
    ``transform(hf_name, array, config) -> array``
        The tensor as GGUF stores it: a numpy array of the same shape, in any float dtype
        (the q/k row permutation llama.cpp's RoPE expects for llama-style attention).
        ``array`` is the checkpoint's tensor as it is stored (float32, float16 or
        ml_dtypes.bfloat16, read-only, memory-mapped): return it unchanged when there is
        nothing to do, so that no copy is made. The converter converts the result to the
        output type in chunks of rows.
    ``check(config, shapes) -> None``
        ``shapes`` maps every tensor of the checkpoint to its shape. Raise
        :class:`ShapeMismatch` for a tensor whose shape contradicts ``config.json`` or
        that is missing.
    ``extra_tensors(config) -> list[tuple[str, array]]``
        Tensors the checkpoint does not hold but GGUF needs (``rope_freqs.weight`` for
        Llama 3.1's rope scaling), by GGUF name, as float32 numpy arrays.

    The base class implements :meth:`tensor_name` with ``gguf.get_tensor_name_map``,
    :meth:`transform` as the identity, :meth:`check` from :meth:`expected_shapes`
    (``{hf_name: (shape, required)}``), and nothing extra.
    """

    name: str = ""
    gguf_arch: str = ""
    version: str = "1"
    summary: str = ""
    hf_architectures: tuple[str, ...] = ()

    # tensors a checkpoint may carry that GGUF does not hold (llama.cpp's converter skips them)
    skipped_suffixes: tuple[str, ...] = (".rotary_emb.inv_freq", ".attention.masked_bias")

    @property
    def arch(self) -> str:
        return self.gguf_arch or self.name

    def block_count(self, config: dict[str, Any]) -> int:
        return _int(config, "num_hidden_layers")

    def hparams(self, config: dict[str, Any]) -> list[tuple[str, Any]]:
        return []

    def tensor_name(self, hf_name: str, n_blocks: int) -> str | None:
        if hf_name.endswith(self.skipped_suffixes):
            return None
        new = _tensor_map(self.arch, n_blocks).get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise KeyError(hf_name)
        return new

    def transform(self, hf_name: str, array: Any, config: dict[str, Any]) -> Any:
        return array

    def expected_shapes(self, config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], bool]]:
        return {}

    def check(self, config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
        for tensor, (shape, required) in self.expected_shapes(config).items():
            found = shapes.get(tensor)
            if found is None:
                if required:
                    raise ShapeMismatch(tensor, shape, None)
            elif tuple(found) != tuple(shape):
                raise ShapeMismatch(tensor, shape, tuple(found), self.explain(tensor, config))

    def explain(self, tensor: str, config: dict[str, Any]) -> str:
        """Which config.json fields give *tensor*'s expected shape (for error messages)."""
        return ""

    def extra_tensors(self, config: dict[str, Any]) -> list[tuple[str, Any]]:
        return []


_MAPS: dict[tuple[str, int], Any] = {}


def _tensor_map(arch: str, n_blocks: int) -> Any:
    key = (arch, n_blocks)
    if key not in _MAPS:
        import gguf

        by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
        if arch not in by_name:
            from modelbuild.errors import PluginError

            raise PluginError(f"GGUF architecture {arch!r} is unknown to gguf-py {_gguf_version()}: an adapter "
                              f"for it must give its own tensor_name()")
        _MAPS[key] = gguf.get_tensor_name_map(by_name[arch], n_blocks)
    return _MAPS[key]


def _gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gguf")
    except PackageNotFoundError:
        return "?"


def _int(config: dict[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if value is None:
        raise config_error(f"{key} is missing")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise config_error(f"{key} must be a positive integer, not {value!r}")
    return value


def _float(config: dict[str, Any], key: str, default: float | None = None) -> float | None:
    value = config.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise config_error(f"{key} must be a number, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Dims:
    """The sizes of a llama-style decoder, from config.json."""

    n_layers: int
    hidden: int
    n_head: int
    n_head_kv: int
    head_dim: int
    ffn: int
    vocab: int
    context: int | None


class LlamaFamilyAdapter(ArchitectureAdapter):
    """Decoder-only transformers in Llama's layout: RMSNorm, RoPE, grouped-query attention,
    a gated SiLU MLP. Subclasses say whether q/k are permuted and which biases exist."""

    permute_qk = False  # llama.cpp's LlamaModel.permute: HF's rotate_half → GGML's interleaved pairs
    rope_types = ("default", "linear", "yarn")

    def qkv_bias(self, config: dict[str, Any]) -> bool:
        return bool(config.get("attention_bias", False))

    def o_bias(self, config: dict[str, Any]) -> bool:
        return bool(config.get("attention_bias", False))

    def mlp_bias(self, config: dict[str, Any]) -> bool:
        return bool(config.get("mlp_bias", False))

    def dims(self, config: dict[str, Any]) -> Dims:
        hidden = _int(config, "hidden_size")
        n_head = _int(config, "num_attention_heads")
        n_head_kv = _int(config, "num_key_value_heads", n_head)
        if n_head % n_head_kv:
            raise config_error(f"num_attention_heads={n_head} is not a multiple of num_key_value_heads={n_head_kv}")
        if config.get("head_dim") is not None:
            head_dim = _int(config, "head_dim")
        elif hidden % n_head:
            raise config_error(f"hidden_size={hidden} is not a multiple of num_attention_heads={n_head}")
        else:
            head_dim = hidden // n_head
        if self.permute_qk and head_dim % 2:
            raise config_error(f"head_dim={head_dim} must be even for rotary embeddings")
        ctx = config.get("max_position_embeddings")
        return Dims(self.block_count(config), hidden, n_head, n_head_kv, head_dim,
                    _int(config, "intermediate_size"), _int(config, "vocab_size"),
                    ctx if isinstance(ctx, int) and not isinstance(ctx, bool) else None)

    # -- keys

    def rope(self, config: dict[str, Any]) -> tuple[float | None, str, dict[str, Any]]:
        """(rope theta, rope type, rope parameters) from transformers' ``rope_scaling`` or
        ``rope_parameters`` (v5) and ``rope_theta``."""
        params = config.get("rope_parameters") or config.get("rope_scaling") or {}
        if not isinstance(params, dict):
            raise config_error(f"rope_scaling must be an object, not {params!r}")
        params = params.get("full_attention", params)
        theta = config.get("rope_theta", params.get("rope_theta"))
        if theta is not None and (isinstance(theta, bool) or not isinstance(theta, (int, float))):
            raise config_error(f"rope_theta must be a number, not {theta!r}")
        rtype = params.get("rope_type", params.get("type")) or "default"
        if rtype not in self.rope_types:
            raise config_error(f"rope type {rtype!r} is not supported by the {self.name} adapter",
                               hint=f"supported: {', '.join(self.rope_types)}")
        return (None if theta is None else float(theta)), str(rtype), params

    def hparams(self, config: dict[str, Any]) -> list[tuple[str, Any]]:
        d = self.dims(config)
        keys: list[tuple[str, Any]] = [("{arch}.block_count", d.n_layers)]
        if d.context is not None:
            keys.append(("{arch}.context_length", d.context))
        keys += [("{arch}.embedding_length", d.hidden),
                 ("{arch}.feed_forward_length", d.ffn),
                 ("{arch}.attention.head_count", d.n_head),
                 ("{arch}.attention.head_count_kv", d.n_head_kv)]
        theta, rtype, params = self.rope(config)
        factor = params.get("factor")
        if rtype == "linear" and factor is not None:
            keys += [("{arch}.rope.scaling.type", "linear"), ("{arch}.rope.scaling.factor", float(factor))]
        elif rtype == "yarn" and factor is not None:
            orig = params.get("original_max_position_embeddings", config.get("original_max_position_embeddings"))
            if not isinstance(orig, int):
                raise config_error("yarn rope scaling needs original_max_position_embeddings")
            keys += [("{arch}.rope.scaling.type", "yarn"), ("{arch}.rope.scaling.factor", float(factor)),
                     ("{arch}.rope.scaling.original_context_length", orig)]
            for src, dst in (("extrapolation_factor", "yarn_ext_factor"), ("attention_factor", "yarn_attn_factor"),
                             ("attn_factor", "yarn_attn_factor"), ("beta_fast", "yarn_beta_fast"),
                             ("beta_slow", "yarn_beta_slow")):
                if params.get(src) is not None and not any(k.endswith(dst) for k, _ in keys):
                    keys.append((f"{{arch}}.rope.scaling.{dst}", float(params[src])))
        if theta is not None:
            keys.append(("{arch}.rope.freq_base", theta))
        eps = _float(config, "rms_norm_eps")
        if eps is not None:
            keys.append(("{arch}.attention.layer_norm_rms_epsilon", eps))
        if config.get("head_dim") is not None:
            keys += [("{arch}.attention.key_length", d.head_dim), ("{arch}.attention.value_length", d.head_dim)]
        keys += [("{arch}.vocab_size", d.vocab), ("{arch}.rope.dimension_count", d.head_dim)]
        return keys

    # -- tensors

    def expected_shapes(self, config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], bool]]:
        d = self.dims(config)
        q, kv = d.n_head * d.head_dim, d.n_head_kv * d.head_dim
        tied = bool(config.get("tie_word_embeddings", False))
        out: dict[str, tuple[tuple[int, ...], bool]] = {
            "model.embed_tokens.weight": ((d.vocab, d.hidden), True),
            "model.norm.weight": ((d.hidden,), True),
            "lm_head.weight": ((d.vocab, d.hidden), not tied),
        }
        qkv_bias, o_bias, mlp_bias = self.qkv_bias(config), self.o_bias(config), self.mlp_bias(config)
        for i in range(d.n_layers):
            p = f"model.layers.{i}."
            shapes = {
                "input_layernorm.weight": (d.hidden,),
                "post_attention_layernorm.weight": (d.hidden,),
                "self_attn.q_proj.weight": (q, d.hidden),
                "self_attn.k_proj.weight": (kv, d.hidden),
                "self_attn.v_proj.weight": (kv, d.hidden),
                "self_attn.o_proj.weight": (d.hidden, q),
                "mlp.gate_proj.weight": (d.ffn, d.hidden),
                "mlp.up_proj.weight": (d.ffn, d.hidden),
                "mlp.down_proj.weight": (d.hidden, d.ffn),
            }
            for name, shape in shapes.items():
                out[p + name] = (shape, True)
            for name, shape in (("self_attn.q_proj.bias", (q,)), ("self_attn.k_proj.bias", (kv,)),
                                ("self_attn.v_proj.bias", (kv,))):
                out[p + name] = (shape, qkv_bias)
            out[p + "self_attn.o_proj.bias"] = ((d.hidden,), o_bias)
            for name, shape in (("mlp.gate_proj.bias", (d.ffn,)), ("mlp.up_proj.bias", (d.ffn,)),
                                ("mlp.down_proj.bias", (d.hidden,))):
                out[p + name] = (shape, mlp_bias)
        return out

    def explain(self, tensor: str, config: dict[str, Any]) -> str:
        leaf = tensor.rsplit(".", 2)
        part = ".".join(leaf[-2:]) if len(leaf) >= 2 else tensor
        d = self.dims(config)
        why = {
            "embed_tokens.weight": f"vocab_size={d.vocab}, hidden_size={d.hidden}",
            "lm_head.weight": f"vocab_size={d.vocab}, hidden_size={d.hidden}",
            "q_proj.weight": f"num_attention_heads={d.n_head} × head_dim={d.head_dim}, hidden_size={d.hidden}",
            "k_proj.weight": f"num_key_value_heads={d.n_head_kv} × head_dim={d.head_dim}, hidden_size={d.hidden}",
            "v_proj.weight": f"num_key_value_heads={d.n_head_kv} × head_dim={d.head_dim}, hidden_size={d.hidden}",
            "o_proj.weight": f"hidden_size={d.hidden}, num_attention_heads={d.n_head} × head_dim={d.head_dim}",
            "gate_proj.weight": f"intermediate_size={d.ffn}, hidden_size={d.hidden}",
            "up_proj.weight": f"intermediate_size={d.ffn}, hidden_size={d.hidden}",
            "down_proj.weight": f"hidden_size={d.hidden}, intermediate_size={d.ffn}",
        }
        return why.get(part, f"hidden_size={d.hidden}" if part.endswith("norm.weight") else "")

    def transform(self, hf_name: str, array: Any, config: dict[str, Any]) -> Any:
        if not self.permute_qk:
            return array
        if hf_name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            return permute_rope(array, _int(config, "num_attention_heads"))
        if hf_name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
            n_head = _int(config, "num_attention_heads")
            return permute_rope(array, _int(config, "num_key_value_heads", n_head))
        return array


def permute_rope(array: Any, n_head: int) -> Any:
    """llama.cpp's ``LlamaModel.permute``: within each head, rows ``[x0…x(d/2-1), y0…]``
    (Hugging Face's rotate-half layout) become ``[x0, y0, x1, y1, …]`` (GGML's RoPE rotates
    adjacent pairs)."""
    shape = array.shape
    return (array.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
            .swapaxes(1, 2)
            .reshape(shape))


class LlamaAdapter(LlamaFamilyAdapter):
    name = "llama"
    version = "1"
    summary = "Llama 1/2/3 (LlamaForCausalLM): q/k permuted for GGML's RoPE, Llama 3.1 rope_freqs"
    hf_architectures = ("LlamaForCausalLM",)
    permute_qk = True
    rope_types = ("default", "linear", "yarn", "llama3")

    def extra_tensors(self, config: dict[str, Any]) -> list[tuple[str, Any]]:
        theta, rtype, params = self.rope(config)
        if rtype != "llama3":
            return []
        import numpy as np

        base = theta if theta is not None else 10000.0
        dim = self.dims(config).head_dim
        freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
        factor = float(params.get("factor", 8.0))
        low = float(params.get("low_freq_factor", 1.0))
        high = float(params.get("high_freq_factor", 4.0))
        old_ctx = float(params.get("original_max_position_embeddings", 8192))
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        factors = []
        for f in freqs:
            wavelen = 2 * math.pi / float(f)
            if wavelen < high_wavelen:
                factors.append(1.0)
            elif wavelen > low_wavelen:
                factors.append(factor)
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        return [("rope_freqs.weight", np.asarray(factors, dtype=np.float32))]


class MistralAdapter(LlamaAdapter):
    name = "mistral"
    gguf_arch = "llama"
    version = "1"
    summary = "Mistral (MistralForCausalLM), written as GGUF architecture llama as llama.cpp does"
    hf_architectures = ("MistralForCausalLM",)
    rope_types = ("default", "linear", "yarn")


class Qwen2Adapter(LlamaFamilyAdapter):
    name = "qwen2"
    version = "1"
    summary = "Qwen2 / Qwen2.5 (Qwen2ForCausalLM): q/k/v biases, no q/k permutation"
    hf_architectures = ("Qwen2ForCausalLM",)
    permute_qk = False  # llama.cpp's qwen2 graph uses NEOX-style RoPE on HF's layout

    def qkv_bias(self, config: dict[str, Any]) -> bool:
        return True

    def o_bias(self, config: dict[str, Any]) -> bool:
        return False

    def mlp_bias(self, config: dict[str, Any]) -> bool:
        return False


BUILTIN_ADAPTERS = (LlamaAdapter, MistralAdapter, Qwen2Adapter)


# -- GGUF keys ---------------------------------------------------------------------------------


def gguf_value(value: Any, key: str) -> tuple[int, bytes]:
    """(GGUF value type, encoded bytes) for an adapter's or the tokenizer's value."""
    from modelbuild_plugins.gguf_format import encode_value

    if hasattr(value, "type") and hasattr(value, "value") and hasattr(value, "sub_type"):  # gguf.GGUFValue
        vtype = int(value.type)
        sub = None if value.sub_type is None else int(value.sub_type)
        return vtype, encode_value(value.value, vtype, sub)
    vtype = _scalar_type(value, key)
    if vtype != _T_ARRAY:
        return vtype, encode_value(value, vtype)
    items = list(value)
    if not items:
        raise ValueError(f"{key}: an empty list needs its item type: give a gguf.GGUFValue")
    first = items[0]
    if isinstance(first, bool):
        sub = _T_BOOL
    elif isinstance(first, int):
        sub = _T_INT32
    elif isinstance(first, float):
        sub = _T_FLOAT32
    elif isinstance(first, str):
        sub = _T_STRING
    else:
        raise TypeError(f"{key}: no GGUF array type for {type(first).__name__} items")
    return _T_ARRAY, encode_value(items, _T_ARRAY, sub)


def _scalar_type(value: Any, key: str) -> int:
    if isinstance(value, bool):
        return _T_BOOL
    if isinstance(value, int):
        if 0 <= value < 2**32:
            return _T_UINT32
        if -(2**31) <= value < 0:
            return _T_INT32
        return _T_UINT64 if value > 0 else _T_INT64
    if isinstance(value, float):
        return _T_FLOAT32
    if isinstance(value, str):
        return _T_STRING
    if isinstance(value, (list, tuple)):
        return _T_ARRAY
    raise TypeError(f"{key}: no GGUF type for {type(value).__name__}")


# -- the tokenizer -----------------------------------------------------------------------------

GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Split regexes (as tokenizer.json writes them) that llama.cpp implements, and its name for each.
PRE_TOKENIZER_REGEXES: dict[str, str] = {
    GPT2_REGEX: "gpt-2",
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""":
        "llama-bpe",
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""":
        "qwen2",
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""":
        "qwen35",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""":
        "tekken",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""":
        "gpt-4o",
}
SUPPORTED_PRE_TOKENIZERS = (
    "ByteLevel(use_regex=true) → gpt-2",
    "Sequence[Digits(individual_digits=true), ByteLevel(use_regex=true)] → starcoder",
    "Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)] with the regex of "
    + ", ".join(f"{name}" for name in PRE_TOKENIZER_REGEXES.values()),
)
_SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "mask")
# gguf.Keys.Tokenizer's names for them (note llama.cpp's spelling of "seperator")
SPECIAL_ID_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
                   "unk": "tokenizer.ggml.unknown_token_id", "sep": "tokenizer.ggml.seperator_token_id",
                   "pad": "tokenizer.ggml.padding_token_id", "mask": "tokenizer.ggml.mask_token_id"}
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@dataclass
class Vocab:
    """What goes under ``tokenizer.*``."""

    model: str  # "gpt2" or "llama"
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    add_space_prefix: bool | None = None
    special_ids: dict[str, int] = field(default_factory=dict)
    add_special: dict[str, bool] = field(default_factory=dict)
    chat_template: Any = None

    def keys(self) -> list[tuple[str, Any]]:
        import gguf

        out: list[tuple[str, Any]] = [("tokenizer.ggml.model", self.model), ("tokenizer.ggml.pre", self.pre),
                                      ("tokenizer.ggml.tokens", self.tokens)]
        if self.scores is not None:
            out.append(("tokenizer.ggml.scores",
                        gguf.GGUFValue(self.scores, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32)))
        out.append(("tokenizer.ggml.token_type",
                    gguf.GGUFValue(self.types, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32)))
        if self.add_space_prefix is not None:
            out.append(("tokenizer.ggml.add_space_prefix", self.add_space_prefix))
        if self.merges:
            out.append(("tokenizer.ggml.merges", self.merges))
        for typ, tid in self.special_ids.items():
            out.append((SPECIAL_ID_KEYS[typ], gguf.GGUFValue(tid, gguf.GGUFValueType.UINT32)))
        for typ, value in self.add_special.items():
            out.append((f"tokenizer.ggml.add_{typ}_token", bool(value)))
        template = self.chat_template
        if isinstance(template, list):
            default = None
            names = []
            for choice in template:
                if not isinstance(choice, dict):
                    continue
                name = "".join(c if c.isascii() and c.isalnum() else "_" for c in str(choice.get("name", "")))
                text = choice.get("template")
                if name and isinstance(text, str):
                    if name == "default":
                        default = text
                    else:
                        names.append(name)
                        out.append((f"tokenizer.chat_template.{name}", text))
            if names:
                out.append(("tokenizer.chat_templates", names))
            template = default
        if isinstance(template, str):
            out.append(("tokenizer.chat_template", template))
        return out


def looks_special(token: str) -> bool:
    """llama.cpp's ``does_token_look_special``."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _steps(node: Any, list_key: str) -> list[dict[str, Any]]:
    """A pre-tokenizer/normalizer as a flat list of steps (Sequence flattened)."""
    if node is None:
        return []
    if not isinstance(node, dict):
        return [{"type": repr(node)}]
    if node.get("type") == "Sequence":
        out: list[dict[str, Any]] = []
        for item in node.get(list_key) or []:
            out.extend(_steps(item, list_key))
        return out
    return [node]


def _describe(steps: list[dict[str, Any]]) -> str:
    if not steps:
        return "none"
    parts = []
    for s in steps:
        args = {k: v for k, v in s.items() if k != "type"}
        if "pattern" in args and isinstance(args["pattern"], dict):
            args["pattern"] = next(iter(args["pattern"].values()), "")
        inner = ", ".join(f"{k}={v!r}" for k, v in args.items() if k not in ("trim_offsets",))
        parts.append(f"{s.get('type')}({inner})")
    return "Sequence[" + ", ".join(parts) + "]" if len(parts) > 1 else parts[0]


def derive_pre(tok: dict[str, Any], label: str) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a byte-level tokenizer, from its structure."""
    steps = _steps(tok.get("pre_tokenizer"), "pretokenizers")
    types = [s.get("type") for s in steps]

    def byte_level_ok(s: dict[str, Any]) -> None:
        if s.get("add_prefix_space"):
            raise FormatError(label, "a ByteLevel pre-tokenizer with add_prefix_space=true: llama.cpp's BPE "
                                     "tokenizer cannot add a prefix space, and would tokenize differently",
                              hint="pass --pre=NAME to convert anyway")

    if types == ["ByteLevel"]:
        byte_level_ok(steps[0])
        if steps[0].get("use_regex", True):
            return "gpt-2"
    elif types == ["Digits", "ByteLevel"]:
        byte_level_ok(steps[1])
        if steps[0].get("individual_digits") and steps[1].get("use_regex", True):
            return "starcoder"
    elif types == ["Split", "ByteLevel"]:
        split, bl = steps
        byte_level_ok(bl)
        pattern = split.get("pattern") or {}
        regex = pattern.get("Regex") if isinstance(pattern, dict) else None
        if (regex in PRE_TOKENIZER_REGEXES and split.get("behavior") == "Isolated" and not split.get("invert")
                and not bl.get("use_regex", True)):
            return PRE_TOKENIZER_REGEXES[regex]
    raise FormatError(label, f"pre-tokenizer {_describe(steps)} is not one llama.cpp implements; supported: "
                             + "; ".join(SUPPORTED_PRE_TOKENIZERS),
                      hint="pass --pre=NAME to name llama.cpp's pre-tokenizer yourself")


def _is_sentencepiece_bpe(tok: dict[str, Any]) -> bool:
    model = tok.get("model") or {}
    if not model.get("byte_fallback"):
        return False
    norm = _steps(tok.get("normalizer"), "normalizers")
    pre = _steps(tok.get("pre_tokenizer"), "pretokenizers")
    prepends = any(s.get("type") == "Prepend" and s.get("prepend") == "▁" for s in norm)
    replaces = any(s.get("type") == "Replace" and (s.get("pattern") or {}).get("String") == " "
                   and s.get("content") == "▁" for s in norm)
    metaspace = [s for s in pre if s.get("type") == "Metaspace"]
    if pre and not (len(pre) == 1 and metaspace):
        return False
    return replaces or prepends or bool(metaspace)


def _merges(model: dict[str, Any], label: str) -> list[str]:
    merges = model.get("merges") or []
    out = []
    for m in merges:
        if isinstance(m, str):
            out.append(m)
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m):
            out.append(" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in p) for p in m))
        else:
            raise FormatError(label, f"model.merges holds {m!r}, neither \"a b\" nor [\"a\", \"b\"]")
    return out


def _token_text(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def read_vocab(tok: dict[str, Any], n_vocab: int | None, *, label: str, tok_config: dict[str, Any] | None,
               config: dict[str, Any], gen_config: dict[str, Any] | None, chat_template_alt: Any,
               pre_override: str | None, log: Any) -> Vocab:
    model = tok.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise FormatError(label, "no model.vocab: not a tokenizers tokenizer.json")
    if model.get("type", "BPE") != "BPE":
        raise FormatError(label, f"a {model.get('type')} tokenizer model is not supported",
                          hint="hf-to-gguf converts BPE tokenizers (byte-level, or SentencePiece-style with byte "
                               "fallback)")
    steps = _steps(tok.get("pre_tokenizer"), "pretokenizers")
    if any(s.get("type") == "ByteLevel" for s in steps):
        kind = "gpt2"
        normalizer = _steps(tok.get("normalizer"), "normalizers")
        if any(s.get("type") != "NFC" for s in normalizer):
            raise FormatError(label, f"normalizer {_describe(normalizer)} is not supported for a byte-level "
                                     f"tokenizer (llama.cpp does not normalize; NFC alone is accepted)")
        pre = pre_override or derive_pre(tok, label)
    elif _is_sentencepiece_bpe(tok):
        kind = "llama"
        for s in steps:
            if s.get("split"):
                raise FormatError(label, "a Metaspace pre-tokenizer with split=true: llama.cpp's SentencePiece "
                                         "tokenizer does not split words")
        pre = "default"
    else:
        raise FormatError(label, f"tokenizer with pre-tokenizer {_describe(steps)} and normalizer "
                                 f"{_describe(_steps(tok.get('normalizer'), 'normalizers'))} is not supported",
                          hint="hf-to-gguf converts byte-level BPE (GPT-2, Llama 3, Qwen2) and SentencePiece-style "
                               "BPE with byte fallback (Llama 2, Mistral)")

    vocab: dict[str, int] = model["vocab"]
    added = {}
    for a in tok.get("added_tokens") or []:
        if isinstance(a, dict) and isinstance(a.get("id"), int) and isinstance(a.get("content"), str):
            added[a["id"]] = a
    by_id: dict[int, str] = {}
    for text, tid in vocab.items():
        if not isinstance(tid, int) or tid < 0:
            raise FormatError(label, f"token {text!r} has id {tid!r}")
        if tid in by_id:
            raise FormatError(label, f"tokens {by_id[tid]!r} and {text!r} share id {tid}")
        by_id[tid] = text
    for tid, a in added.items():
        by_id[tid] = a["content"]
    largest = max(by_id) + 1 if by_id else 0
    if n_vocab is None:
        n_vocab = largest
    elif largest > n_vocab:
        raise FormatError("config.json", f"vocab_size={n_vocab} is smaller than the tokenizer's {largest} token ids "
                                         f"(tokenizer.json)")

    merges = _merges(model, label)
    first_merge: dict[str, int] = {}
    if kind == "llama":
        for rank, m in enumerate(merges):
            a, _, b = m.partition(" ")
            first_merge.setdefault(a + b, rank)

    tokens: list[str] = []
    types: list[int] = []
    scores: list[float] = []
    seen: dict[str, int] = {}
    for i in range(n_vocab):
        text = by_id.get(i)
        score = 0.0
        if text is None:
            text, ttype, score = f"[PAD{i}]", TOKEN_UNUSED, -1000.0
        elif i in added:
            a = added[i]
            if a.get("special") or looks_special(text):
                ttype = TOKEN_CONTROL
            else:
                text = text.replace("▁", " ")  # llama.cpp's converter pre-normalizes user-defined spaces
                ttype = TOKEN_USER_DEFINED
            score = -1000.0
        elif kind == "llama" and _BYTE_TOKEN.match(text):
            ttype = TOKEN_BYTE
        else:
            ttype = TOKEN_NORMAL
            if text in first_merge:
                score = -float(first_merge[text])
        if text in seen:
            raise FormatError(label, f"ids {seen[text]} and {i} both have the text {text!r}: llama.cpp needs "
                                     f"distinct token texts")
        if not text:
            raise FormatError(label, f"token {i} is empty")
        seen[text] = i
        tokens.append(text)
        types.append(ttype)
        scores.append(score)

    v = Vocab(kind, pre, tokens, types)
    if kind == "gpt2":
        if not merges:
            raise FormatError(label, "a byte-level BPE tokenizer without merges")
        v.merges = merges
    else:
        v.scores = scores
        norm = _steps(tok.get("normalizer"), "normalizers")
        prefix = any(s.get("type") == "Prepend" and s.get("prepend") == "▁" for s in norm)
        for s in steps:
            if s.get("type") == "Metaspace":
                prefix = s.get("prepend_scheme", "always" if s.get("add_prefix_space", True) else "never") != "never"
        if tok_config and isinstance(tok_config.get("add_prefix_space"), bool):
            prefix = tok_config["add_prefix_space"]
        v.add_space_prefix = prefix
    _special_tokens(v, tok, tok_config, config, gen_config, n_vocab, log)
    template = (tok_config or {}).get("chat_template", chat_template_alt)
    if isinstance(template, (str, list)):
        v.chat_template = template
    return v


def _special_tokens(v: Vocab, tok: dict[str, Any], tok_config: dict[str, Any] | None, config: dict[str, Any],
                    gen_config: dict[str, Any] | None, n_vocab: int, log: Any) -> None:
    """gguf-py's SpecialVocab, reading the same files."""
    tc = dict(tok_config or {})
    added = [a for a in tok.get("added_tokens") or [] if isinstance(a, dict)]

    def set_id(typ: str, tid: Any) -> None:
        if isinstance(tid, bool) or not isinstance(tid, int) or typ in v.special_ids:
            return
        if 0 <= tid < n_vocab:
            v.special_ids[typ] = tid
        else:
            log(f"warning: hf-to-gguf: {typ} token id {tid} is outside the vocabulary of {n_vocab}; not written")

    bos = _token_text(tc.get("bos_token")) or _token_text(tc.get("cls_token"))
    eos = _token_text(tc.get("eos_token")) or _token_text(tc.get("sep_token"))
    post = tok.get("post_processor")
    if isinstance(post, dict):
        processors = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
        for p in processors:
            if not isinstance(p, dict):
                continue
            if p.get("type") == "ByteLevel":
                v.add_special.setdefault("bos", False)
                v.add_special.setdefault("eos", False)
            elif p.get("type") == "TemplateProcessing":
                single = p.get("single") or []
                if len(single) > 1:
                    first = (single[0].get("SpecialToken") or {}).get("id")
                    if first:
                        if not tc or not bos:
                            bos = first
                        v.add_special["bos"] = first == bos
                    last = (single[-1].get("SpecialToken") or {}).get("id")
                    if last:
                        if not tc or not eos:
                            eos = last
                        v.add_special["eos"] = last == eos
    for typ in _SPECIAL_TYPES:
        add_entry = tc.get(f"add_{typ}_token")
        if isinstance(add_entry, bool) and typ not in v.add_special:
            v.add_special[typ] = add_entry
    names = {"bos": bos, "eos": eos}
    for typ in _SPECIAL_TYPES:
        text = names.get(typ) or _token_text(tc.get(f"{typ}_token"))
        if text is None:
            continue
        set_id(typ, next((a.get("id") for a in added if a.get("content") == text), None))
    for source in (config, gen_config or {}):
        for typ in _SPECIAL_TYPES:
            set_id(typ, source.get(f"{typ}_token_id"))
    order = {t: i for i, t in enumerate(_SPECIAL_TYPES)}
    v.special_ids = dict(sorted(v.special_ids.items(), key=lambda kv: order[kv[0]]))
    v.add_special = {t: v.add_special[t] for t in ("bos", "eos", "sep") if t in v.add_special}


# -- reading the model set ---------------------------------------------------------------------


@dataclass
class _Source:
    """One checkpoint tensor: where its bytes are."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: WeightFile
    start: int
    end: int


@dataclass
class _Planned:
    order: tuple
    gguf_name: str
    shape: tuple[int, ...]
    ggml_type: int
    nbytes: int
    source: _Source | None = None  # None for an extra tensor
    array: Any = None  # an extra tensor's values


def _load_json(f: WeightFile) -> Any:
    try:
        with open(f.source, "rb") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise FormatError(f.path, f"not valid JSON ({exc})") from None


def _json_object(f: WeightFile) -> dict[str, Any]:
    doc = _load_json(f)
    if not isinstance(doc, dict):
        raise FormatError(f.path, "not a JSON object")
    return doc


class HfToGguf:
    """The converter. See the module docstring."""

    name = "hf-to-gguf"
    version = "1"
    summary = "Hugging Face safetensors checkpoint → one GGUF file llama.cpp loads (llama, mistral, qwen2, …)"
    source_format = "safetensors"
    target_format = "gguf"
    outtypes = OUTTYPES

    def convert(self, files: list[WeightFile], options: dict[str, Any],
                ctx: TransformContext) -> list[WeightFile | Output]:
        outtype = str(options.get("outtype") or OUTTYPES[0]).lower()
        if outtype not in OUTTYPES:
            raise UsageError(f"hf-to-gguf cannot write --outtype={outtype}", hint=f"one of {', '.join(OUTTYPES)}")
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise UsageError(f"hf-to-gguf has no option --{unknown[0]}",
                             hint="its options: --outtype=" + "|".join(OUTTYPES) + ", --name=TEXT, --pre=NAME")
        registry = getattr(ctx, "architectures", None)
        if registry is None:
            raise UsageError("hf-to-gguf needs the architecture registry (ctx.architectures); this modelbuild "
                             "does not pass it")

        directory, weights, index = self._weights(files)
        ignored = [f for f in files if f.path.endswith(".safetensors") and f not in weights]
        for f in ignored:
            ctx.log(f"hf-to-gguf: {f.path} is not part of the checkpoint "
                    f"({'not named by ' + index.path if index else 'not model.safetensors'}); left out")
        by_path = {f.path: f for f in files}

        def beside(name: str) -> WeightFile | None:
            return by_path.get(posixpath.join(directory, name) if directory else name)

        def label(name: str) -> str:
            return posixpath.join(directory, name) if directory else name

        cfg_file = beside("config.json")
        if cfg_file is None:
            raise FormatError(label("config.json"), "missing: hf-to-gguf needs the checkpoint's config.json",
                              hint="add it with CONFIG, beside the weights")
        config = _json_object(cfg_file)
        adapter = self._adapter(config, registry, cfg_file.path)
        tok_file = beside("tokenizer.json")
        if tok_file is None:
            raise FormatError(label("tokenizer.json"), "missing: hf-to-gguf needs the tokenizer (tokenizer.json) "
                                                       "to write a GGUF file llama.cpp can run",
                              hint="add tokenizer.json (and tokenizer_config.json) beside the weights with CONFIG")

        try:
            sources = self._tensors(weights, index)
            try:
                adapter.check(config, {s.name: s.shape for s in sources.values()})
            except ShapeMismatch as exc:
                where = sources[exc.tensor].file.path if exc.tensor in sources else (
                    index.path if index else weights[0].path)
                raise FormatError(where, exc.describe()) from None
            n_blocks = adapter.block_count(config)
            hparams = adapter.hparams(config)
            extras = adapter.extra_tensors(config)
            vocab = self._vocab(tok_file, config, beside, adapter, options, ctx)
        except FormatError as exc:
            if exc.file == "config.json":  # adapters name config.json by its bare name
                raise FormatError(cfg_file.path, exc.message.split(": ", 1)[1], hint=exc.hint) from None
            raise

        consumed = {f.path for f in weights + ignored} | ({index.path} if index else set())
        result: list[WeightFile | Output] = [f for f in files if f.path not in consumed]
        out_path = label(OUTPUT_NAME)
        if out_path in by_path:
            raise FormatError(out_path, "the model set already holds a file of this name: hf-to-gguf writes "
                                        "the converted model there")
        plan = self._plan(sources, extras, adapter, n_blocks, outtype, ctx)
        kvs = self._keys(adapter, config, options, hparams, vocab, outtype)
        out = ctx.output_path(out_path)
        self._write(out, kvs, plan, adapter, config, ctx)
        result.append(Output(out_path, out, "model"))
        return result

    # -- inputs

    @staticmethod
    def _weights(files: list[WeightFile]) -> tuple[str, list[WeightFile], WeightFile | None]:
        """The checkpoint's directory, its weight files (in shard order) and its index."""
        st = [f for f in files if f.path.endswith(".safetensors")]
        indexes = [f for f in files if f.path.endswith(_INDEX_SUFFIX)]
        if not st and not indexes:
            raise FormatError("model set", "no .safetensors weights to convert")
        dirs = sorted({posixpath.dirname(f.path) for f in st + indexes})
        if len(dirs) > 1:
            raise FormatError(st[0].path if st else indexes[0].path,
                              f"the model set holds checkpoints in several directories ({', '.join(dirs)}): "
                              f"hf-to-gguf converts one")
        directory = dirs[0]
        if len(indexes) > 1:
            names = [f.path for f in indexes]
            pick = [f for f in indexes if posixpath.basename(f.path) == "model" + _INDEX_SUFFIX]
            if len(pick) != 1:
                raise FormatError(names[0], f"several indexes ({', '.join(names)}): hf-to-gguf converts one model")
            indexes = pick
        if indexes:
            index = indexes[0]
            doc = _json_object(index)
            wm = doc.get("weight_map")
            if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
                raise FormatError(index.path, "weight_map must map tensor names to shard file names")
            by_name = {posixpath.basename(f.path): f for f in st}
            shards = []
            for shard in sorted(set(wm.values())):
                if shard not in by_name:
                    raise FormatError(index.path, f"names shard {shard!r}, which is not in the model set",
                                      hint="every shard the index names must be selected by MODEL")
                shards.append(by_name[shard])
            return directory, shards, index
        if len(st) == 1:
            return directory, st, None
        plain = [f for f in st if posixpath.basename(f.path) == "model.safetensors"]
        if plain:
            return directory, plain, None
        raise FormatError(st[0].path, f"{len(st)} .safetensors files and no *.safetensors.index.json saying which "
                                      f"form the model", hint="add the index with CONFIG")

    @staticmethod
    def _tensors(weights: list[WeightFile], index: WeightFile | None) -> dict[str, _Source]:
        from modelbuild_plugins.safetensors_format import read_header

        sources: dict[str, _Source] = {}
        for f in weights:
            h = read_header(f.source, f.path)
            for t in h.tensors:
                if t.name in sources:
                    raise FormatError(f.path, f"tensor {t.name!r} is also in {sources[t.name].file.path}")
                if t.dtype not in _READABLE:
                    raise FormatError(f.path, f"tensor {t.name!r} is {t.dtype}: hf-to-gguf reads F32, F16, BF16 "
                                              f"and F64 checkpoints", hint="convert a float checkpoint")
                sources[t.name] = _Source(t.name, t.dtype, tuple(t.shape), f, t.start, t.end)
        if index is not None:
            wm = _json_object(index)["weight_map"]
            for tensor, shard in wm.items():
                s = sources.get(tensor)
                if s is None or posixpath.basename(s.file.path) != shard:
                    raise FormatError(index.path, f"says tensor {tensor!r} is in {shard}, but "
                                                  + ("no shard holds it" if s is None else f"{s.file.path} does"))
        return sources

    @staticmethod
    def _adapter(config: dict[str, Any], registry: Any, path: str) -> Any:
        archs = config.get("architectures")
        arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
        supported = sorted(f"{hf} ({a.name})" for a in registry for hf in getattr(a, "hf_architectures", ()))
        hint = f"supported: {', '.join(supported) or 'none installed'}"
        if arch is None:
            raise FormatError(path, "no \"architectures\" entry: cannot tell which architecture to convert",
                              hint=hint)
        found = [a for a in registry if arch in getattr(a, "hf_architectures", ())]
        if not found:
            raise FormatError(path, f"architecture {arch} is not supported by hf-to-gguf", hint=hint)
        if len(found) > 1:
            raise FormatError(path, f"architecture {arch} is claimed by several adapters: "
                                    f"{', '.join(a.name for a in found)}")
        return found[0]

    def _vocab(self, tok_file: WeightFile, config: dict[str, Any], beside: Any, adapter: Any,
               options: dict[str, Any], ctx: TransformContext) -> Vocab:
        tok = _json_object(tok_file)
        tc_file = beside("tokenizer_config.json")
        gen_file = beside("generation_config.json")
        alt: Any = None
        jinja, cjson = beside("chat_template.jinja"), beside("chat_template.json")
        if jinja is not None:
            with open(jinja.source, encoding="utf-8") as fh:
                alt = fh.read()
        elif cjson is not None:
            doc = _load_json(cjson)
            alt = doc.get("chat_template") if isinstance(doc, dict) else None
        n_vocab = config.get("vocab_size")
        pre = options.get("pre")
        return read_vocab(tok, n_vocab if isinstance(n_vocab, int) else None, label=tok_file.path,
                          tok_config=_json_object(tc_file) if tc_file else None, config=config,
                          gen_config=_json_object(gen_file) if gen_file else None, chat_template_alt=alt,
                          pre_override=str(pre) if pre else None, log=ctx.log)

    # -- planning

    @staticmethod
    def _plan(sources: dict[str, _Source], extras: list[tuple[str, Any]], adapter: Any, n_blocks: int,
              outtype: str, ctx: TransformContext) -> list[_Planned]:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        target = GGMLQuantizationType[outtype.upper()]
        plans: list[_Planned] = []
        names: dict[str, str] = {}

        def type_for(gguf_name: str, shape: tuple[int, ...]) -> Any:
            if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
                return GGMLQuantizationType.F32
            block = GGML_QUANT_SIZES[target][0]
            if shape[-1] % block:
                ctx.log(f"hf-to-gguf: {gguf_name}: rows of {shape[-1]} are not a multiple of {block}: F16 "
                        f"instead of {target.name}")
                return GGMLQuantizationType.F16
            return target

        def size(gtype: Any, shape: tuple[int, ...]) -> int:
            block, tsize = GGML_QUANT_SIZES[gtype]
            n = 1
            for d in shape:
                n *= d
            return n // block * tsize

        for i, (gname, array) in enumerate(extras):
            shape = tuple(int(d) for d in array.shape)
            gtype = type_for(gname, shape)
            plans.append(_Planned((0, 0, i, gname), gname, shape, int(gtype), size(gtype, shape), array=array))
            names[gname] = "(generated)"
        for s in sources.values():
            try:
                gname = adapter.tensor_name(s.name, n_blocks)
            except KeyError:
                raise FormatError(s.file.path, f"tensor {s.name!r} has no GGUF name in architecture "
                                               f"{adapter.arch} (adapter {adapter.name})") from None
            if gname is None:
                continue
            if gname in names:
                raise FormatError(s.file.path, f"tensors {names[gname]!r} and {s.name!r} both map to {gname!r}")
            names[gname] = s.name
            bid = next((int(p) for p in gname.split(".") if p.isdecimal()), None)
            group = (1, 0) if gname.startswith("token_embd") else (2, bid) if bid is not None else (3, 0)
            gtype = type_for(gname, s.shape)
            plans.append(_Planned((*group, s.name), gname, s.shape, int(gtype), size(gtype, s.shape), source=s))
        plans.sort(key=lambda p: p.order)
        return plans

    @staticmethod
    def _keys(adapter: Any, config: dict[str, Any], options: dict[str, Any], hparams: list[tuple[str, Any]],
              vocab: Vocab, outtype: str) -> list[tuple[str, int, bytes]]:
        from gguf.constants import GGML_QUANT_VERSION, LlamaFileType

        ftype = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
                 "bf16": LlamaFileType.MOSTLY_BF16, "q8_0": LlamaFileType.MOSTLY_Q8_0}[outtype]
        name = options.get("name")
        if not name:
            path = config.get("_name_or_path")
            name = posixpath.basename(str(path).rstrip("/")) if isinstance(path, str) and path.strip("/") else "model"
        items: list[tuple[str, Any]] = [("general.architecture", adapter.arch), ("general.type", "model"),
                                        ("general.name", str(name))]
        for key, value in hparams:
            key = key.replace("{arch}", adapter.arch)
            if key.startswith(("general.", "tokenizer.")):
                raise ValueError(f"adapter {adapter.name} set {key}: general.* and tokenizer.* keys are the "
                                 f"converter's")
            items.append((key, value))
        items += [("general.file_type", int(ftype)), ("general.quantization_version", GGML_QUANT_VERSION)]
        items += vocab.keys()
        out: list[tuple[str, int, bytes]] = []
        seen: set[str] = set()
        for key, value in items:
            if key in seen:
                raise ValueError(f"GGUF key {key} set twice (adapter {adapter.name})")
            seen.add(key)
            vtype, raw = gguf_value(value, key)
            out.append((key, vtype, raw))
        return out

    # -- writing

    def _write(self, out: str, kvs: list[tuple[str, int, bytes]], plan: list[_Planned], adapter: Any,
               config: dict[str, Any], ctx: TransformContext) -> None:
        from modelbuild_plugins.gguf_format import DEFAULT_ALIGNMENT, write_header

        layout = write_header(out, kvs, [(p.gguf_name, p.shape, p.ggml_type, p.nbytes) for p in plan],
                              DEFAULT_ALIGNMENT)
        total = sum(_numel(p.shape) for p in plan)
        ctx.set_total(total)
        fd = os.open(out, os.O_WRONLY)
        maps = _Maps()
        try:
            def one(item: tuple[_Planned, int]) -> int:
                p, offset = item
                done = 0
                for chunk, n in _converted(p, adapter, config, maps):
                    _pwrite_all(fd, chunk, offset)
                    offset += len(chunk)
                    done += n
                return done

            items = list(zip(plan, layout.offsets))
            if ctx.jobs <= 1:
                for item in items:
                    ctx.advance(one(item))
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(max_workers=ctx.jobs) as pool:
                    for n in pool.map(one, items):
                        ctx.advance(n)
        finally:
            os.close(fd)
            maps.close()


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class _Maps:
    """Memory maps of the input files, opened once and shared by the writer threads."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._maps: dict[str, Any] = {}

    def get(self, path: str) -> Any:
        import mmap

        with self._lock:
            m = self._maps.get(path)
            if m is None:
                with open(path, "rb") as fh:
                    m = self._maps[path] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            return m

    def close(self) -> None:
        for m in self._maps.values():
            try:
                m.close()
            except BufferError:  # a view is still alive somewhere: the GC closes it
                pass
        self._maps.clear()


def _array(s: _Source, maps: _Maps) -> Any:
    """The tensor's values as a read-only float32-compatible numpy array over a memory map."""
    import numpy as np

    name = _READABLE[s.dtype]
    if name == "bfloat16":
        import ml_dtypes

        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype(name).newbyteorder("<")
    if s.end == s.start:
        return np.zeros(s.shape, dtype)
    m = maps.get(s.file.source)
    return np.frombuffer(m, dtype=dtype, count=_numel(s.shape), offset=s.start).reshape(s.shape)


def _converted(p: _Planned, adapter: Any, config: dict[str, Any], maps: _Maps) -> Iterator[tuple[bytes, int]]:
    """The tensor's GGUF bytes, in chunks of rows: (bytes, elements)."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if p.source is not None:
        values = _array(p.source, maps)
        transformed = adapter.transform(p.source.name, values, config)
        if transformed is not values:
            values = np.asarray(transformed)
            if tuple(values.shape) != p.shape:
                raise ValueError(f"adapter {adapter.name} changed the shape of {p.source.name} "
                                 f"from {list(p.shape)} to {list(values.shape)}")
    else:
        values = np.asarray(p.array)
    gtype = GGMLQuantizationType(p.ggml_type)
    cols = p.shape[-1] if p.shape else 1
    rows = _numel(p.shape) // cols if cols else 0
    flat = values.reshape(rows, cols) if p.shape else values.reshape(1, 1)
    step = max(1, CHUNK_ELEMENTS // max(cols, 1))
    for r in range(0, rows, step):
        block = np.asarray(flat[r:r + step], dtype=np.float32)
        if gtype == GGMLQuantizationType.F32:
            data = block.astype("<f4", copy=False)
        elif gtype == GGMLQuantizationType.F16:
            data = block.astype("<f2")
        else:
            data = quantize(block, gtype)
        yield np.ascontiguousarray(data).reshape(-1).view(np.uint8).data, block.size


# -- registration ------------------------------------------------------------------------------


@hookimpl
def modelbuild_register_converters(registry: Any) -> None:
    registry.add(HfToGguf())


@hookimpl
def modelbuild_register_architectures(registry: Any) -> None:
    for cls in BUILTIN_ADAPTERS:
        registry.add(cls())
