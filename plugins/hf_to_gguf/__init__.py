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
``modelbuild_register_architectures`` hook, which this plugin declares itself
(:mod:`.hookspecs`, added in ``modelbuild_addhooks``); the converter finds them in
``ctx.plugins.extension("modelbuild_register_architectures", …)`` by ``config.json``'s
``architectures[0]``, and keys a conversion on the one adapter it uses. Built in: ``llama`` (LlamaForCausalLM), ``mistral``
(MistralForCausalLM, written as GGUF architecture ``llama`` as llama.cpp does) and
``qwen2`` (Qwen2ForCausalLM).

numpy and gguf are imported inside functions: the CLI imports this package on every run.

Modules: :mod:`.adapters` (:class:`ArchitectureAdapter` and the llama, mistral and qwen2
adapters), :mod:`.tokenizer` (vocabulary, pre-tokenizer, special tokens), :mod:`.keys`
(GGUF value types of the keys), :mod:`.convert` (:class:`HfToGguf` and its streaming writer).
"""

from __future__ import annotations

from typing import Any

from modelbuild.api import hookimpl

from .adapters import (
    BUILTIN_ADAPTERS,
    ArchitectureAdapter,
    Dims,
    LlamaAdapter,
    LlamaFamilyAdapter,
    MistralAdapter,
    Qwen2Adapter,
    ShapeMismatch,
    config_error,
    permute_rope,
)
from .convert import OPTIONS, OUTPUT_NAME, OUTTYPES, HfToGguf
from .keys import gguf_value
from .tokenizer import (
    GPT2_REGEX,
    PRE_TOKENIZER_REGEXES,
    SPECIAL_ID_KEYS,
    SUPPORTED_PRE_TOKENIZERS,
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNKNOWN,
    TOKEN_UNUSED,
    TOKEN_USER_DEFINED,
    Vocab,
    derive_pre,
    looks_special,
    read_vocab,
)

__all__ = [
    "BUILTIN_ADAPTERS", "GPT2_REGEX", "OPTIONS", "OUTPUT_NAME", "OUTTYPES", "PRE_TOKENIZER_REGEXES",
    "SPECIAL_ID_KEYS", "SUPPORTED_PRE_TOKENIZERS", "TOKEN_BYTE", "TOKEN_CONTROL", "TOKEN_NORMAL",
    "TOKEN_UNKNOWN", "TOKEN_UNUSED", "TOKEN_USER_DEFINED", "ArchitectureAdapter", "Dims", "HfToGguf",
    "LlamaAdapter", "LlamaFamilyAdapter", "MistralAdapter", "Qwen2Adapter", "ShapeMismatch", "Vocab",
    "config_error", "derive_pre", "gguf_value", "looks_special", "permute_rope", "read_vocab",
]


# -- registration ------------------------------------------------------------------------------


@hookimpl
def modelbuild_addhooks(pluginmanager: Any) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def modelbuild_register_converters(registry: Any) -> None:
    registry.add(HfToGguf())


@hookimpl
def modelbuild_register_architectures(registry: Any) -> None:
    for cls in BUILTIN_ADAPTERS:
        registry.add(cls())
