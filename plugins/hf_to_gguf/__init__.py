"""Hugging Face (safetensors) → GGUF: the ``hf-to-gguf`` converter and its architecture adapters.

``converter:hf-to-gguf`` (:class:`HfToGguf`) does what llama.cpp's ``convert_hf_to_gguf.py``
does for the architectures it knows, without torch or transformers:

* **Input**: the model set of one Hugging Face checkpoint: ``config.json``, the weights
  (one ``*.safetensors`` file, or the shards a ``*.safetensors.index.json`` names),
  ``tokenizer.json``, and where present ``tokenizer_config.json``, ``generation_config.json``,
  ``tokenizer.model`` and ``added_tokens.json`` (SentencePiece), ``chat_template.jinja`` (and
  ``additional_chat_templates/*.jinja``) / ``chat_template.json``, and ``README.md`` (its YAML
  front matter: the model card; in a Modelfile, list it with ``CONFIG``: ``DOC`` files are
  not part of the model set a converter gets).
* **Output**: the same set with every ``.safetensors`` file and the index replaced by one
  ``model.gguf`` in the checkpoint's directory. Every other file (``config.json``, the
  tokenizer files, ``generation_config.json``, a README…) is passed through unchanged: the
  GGUF file is self-contained, but the JSON files stay useful to tools that read them.
* **Options**: ``--outtype=f16|f32|bf16|q8_0`` (f16 is the default, as it was llama.cpp's);
  ``--name=TEXT`` for ``general.name`` (llama.cpp's ``--model-name``; default: as below);
  ``--pre=NAME`` to name llama.cpp's pre-tokenizer for a
  byte-level tokenizer whose structure is not recognised (see below).

What the file holds, in llama.cpp's order: ``general.architecture``, ``general.type``; the
metadata (:mod:`.metadata`: ``general.sampling.*`` from generation_config.json, then
``general.name``, ``basename``, ``size_label``, ``license``, ``tags``… from the model
card, config.json's ``_name_or_path``, the checkpoint's directory name in the model set
and the parameter count, by gguf-py's ``gguf.Metadata`` rules); the architecture's
hyperparameters (from its adapter) with ``general.file_type`` where llama.cpp puts it;
``general.quantization_version`` (llama.cpp's converter writes it for every output type,
so this does too); the tokenizer; then the tensors. Tensor types
follow llama.cpp's converter: tensors of one dimension and ``*_norm.weight`` are F32,
every other tensor is the output type; a q8_0 tensor whose rows are not a multiple of 32
falls back to F16 (as ``gguf.QuantError`` makes llama.cpp's converter do). F16 is numpy's
``astype(float16)``; BF16 and Q8_0 are ``gguf.quants.quantize`` of the float32 values
(llama.cpp's converter uses the same functions, so bytes match).

Tensors are written in llama.cpp's order for a checkpoint in one file: the extra tensors an
adapter generates (``rope_freqs``), then the checkpoint's tensors as safetensors lays them
out in a file (by dtype: F64, F32, BF16, F16; then by Hugging Face name, so ``lm_head``
→ ``output.weight`` comes first and ``model.layers.10`` before ``model.layers.2``). The
order depends only on the tensors, never on how the input was sharded: a sharded
checkpoint and the same checkpoint in one file give identical bytes (llama.cpp's
converter writes a sharded checkpoint shard by shard instead).

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
    token, which merges left to right instead). Added tokens score -1000. (With a
    ``tokenizer.model`` beside it, the vocabulary comes from that instead: see below.)
    As in llama.cpp, the prefix space is added at the start and after each special token
    (Hugging Face's legacy behaviour; a ``Metaspace`` with ``prepend_scheme: first``
    differs after special tokens).

``tokenizer.model`` (SentencePiece), when it is beside a ``llama`` tokenizer.json, gives the
tokens, scores and types as llama.cpp's converter takes them (:mod:`.sentencepiece` reads
its protobuf): each piece's own score, UNKNOWN for the unknown piece, CONTROL, BYTE and
UNUSED pieces as typed, the rest NORMAL; ids up to ``vocab_size`` past the pieces are
``[PAD{id}]`` (UNUSED, -10000); ``added_tokens.json`` and ``tokenizer_config.json``'s
``added_tokens_decoder`` then override the tokens they name (score -1000; CONTROL when
special, which makes ``<unk>`` CONTROL too where they mark it special, as in llama.cpp).
Beside a byte-level tokenizer.json, ``tokenizer.model`` is not used (llama.cpp's converter
would build a SentencePiece vocabulary from it instead).

Special tokens follow gguf-py's ``SpecialVocab`` as in llama.cpp's own tree (its gguf-py is
newer than PyPI's ``gguf`` 0.19.0, whose rules differ): ``bos/eos/unk/sep/pad/mask`` (and
``eot``/``eom`` when the post-processor's trailing token replaces the EOS; a leading token
that is neither the BOS nor the CLS becomes whichever of them is unset) from
``tokenizer_config.json``'s ``*_token`` (looked up among ``added_tokens``), then
``config.json``'s ``*_token_id``, then (beyond llama.cpp) ``generation_config.json``'s, the
first found winning, integers only, below the vocabulary size, written in the order found;
``add_bos_token`` / ``add_eos_token`` / ``add_sep_token`` from a ``TemplateProcessing`` (or
``RobertaProcessing``) post-processor, false for BOS and EOS after a ``ByteLevel`` one
(Qwen2's: ``add_eos_token`` false is written), else ``tokenizer_config.json``'s
``add_*_token`` (where the two disagree, the post-processor wins, with a warning);
``tokenizer.ggml.normalizer.lowercase`` / ``strip_accents`` from the normalizer's
``Lowercase``, ``StripAccents`` or ``BertNormalizer`` (written as llama.cpp writes them, with
a warning: llama.cpp reads them only for WordPiece and whitespace tokenizers, so a ``llama``
tokenizer that lowercases will not tokenize as Hugging Face does; a byte-level one is refused
above); the chat template from ``tokenizer_config.json`` (only when there is one),
else ``chat_template.jinja`` (with ``additional_chat_templates/*.jinja``, by name), else
``chat_template.json`` (a list of named templates becomes ``tokenizer.chat_template.NAME``
keys, as gguf-py writes them). ``tokenizer.ggml.add_space_prefix`` of a ``llama`` tokenizer
is ``tokenizer_config.json``'s ``add_prefix_space`` when it has one (written first, as
llama.cpp's converter does), else false when the normalizer does not prepend ``▁``, else
not written (llama.cpp's default is true).

**Architectures** are adapters (:class:`ArchitectureAdapter`), registered through the
``modelbuild_register_architectures`` hook, which this plugin declares itself
(:mod:`.hookspecs`, added in ``modelbuild_addhooks``); the converter finds them in
``ctx.plugins.extension("modelbuild_register_architectures", …)`` by ``config.json``'s
``architectures[0]``, and keys a conversion on the one adapter it uses. Built in: ``llama`` (LlamaForCausalLM), ``mistral``
(MistralForCausalLM, written as GGUF architecture ``llama`` as llama.cpp does) and
``qwen2`` (Qwen2ForCausalLM).

numpy and gguf are imported inside functions: the CLI imports this package on every run.

Modules: :mod:`.adapters` (:class:`ArchitectureAdapter` and the llama, mistral and qwen2
adapters), :mod:`.tokenizer` (vocabulary, pre-tokenizer, special tokens),
:mod:`.sentencepiece` (``tokenizer.model``'s pieces), :mod:`.metadata` (the ``general.*``
keys), :mod:`.keys` (GGUF value types of the keys), :mod:`.convert` (:class:`HfToGguf` and
its streaming writer).
"""

from __future__ import annotations

from typing import Any

from modelbuild.api import hookimpl

from .adapters import (
    BUILTIN_ADAPTERS,
    FILE_TYPE,
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
from .metadata import Metadata, NameParts, name_parts, parameter_counts, read_metadata, size_label, title
from .sentencepiece import Piece, ProtoError, read_pieces
from .special import SPECIAL_ID_KEYS
from .tokenizer import (
    GPT2_REGEX,
    PRE_TOKENIZER_REGEXES,
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
    "BUILTIN_ADAPTERS", "FILE_TYPE", "GPT2_REGEX", "OPTIONS", "OUTPUT_NAME", "OUTTYPES", "PRE_TOKENIZER_REGEXES",
    "SPECIAL_ID_KEYS", "SUPPORTED_PRE_TOKENIZERS", "TOKEN_BYTE", "TOKEN_CONTROL", "TOKEN_NORMAL",
    "TOKEN_UNKNOWN", "TOKEN_UNUSED", "TOKEN_USER_DEFINED", "ArchitectureAdapter", "Dims", "HfToGguf",
    "LlamaAdapter", "LlamaFamilyAdapter", "MistralAdapter", "Qwen2Adapter", "ShapeMismatch", "Vocab",
    "config_error", "derive_pre", "gguf_value", "looks_special", "permute_rope", "read_vocab",
    "Metadata", "NameParts", "Piece", "ProtoError", "name_parts", "parameter_counts", "read_metadata",
    "read_pieces", "size_label", "title",
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
