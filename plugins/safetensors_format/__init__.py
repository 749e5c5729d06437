"""Safetensors: a format handler, a dtype-cast / FP8 quantizer, and Hugging Face's sharding.

Three objects, each registered by its own hook:

* :class:`SafetensorsFormat` (format ``safetensors``) reads headers with a strict parser of
  its own that accepts exactly what the ``safetensors`` library accepts (see
  :func:`read_header`), reads tensors lazily through ``mmap``, and writes files byte for byte
  as ``safetensors.numpy.save_file`` does (see :func:`layout`).
* :class:`SafetensorsCast` (quantizer ``safetensors-cast``) casts to ``float16`` or
  ``bfloat16``, or quantizes linear weights to ``float8_e4m3`` in the layout vLLM loads as a
  ``"fp8"`` checkpoint with per-tensor scales.
* :class:`SafetensorsShard` (shard strategy ``safetensors``) splits and merges exactly as
  ``huggingface_hub.split_state_dict_into_shards_factory`` and ``transformers`` do.

**Model groups.** A model set can hold several safetensors models: ``model.safetensors`` and
``model.int8.safetensors`` side by side, or ``text_encoder/`` and ``unet/`` in a diffusers
layout. Files are grouped by directory and by *prefix*: the name without ``.safetensors`` and
without a ``-00001-of-00003`` shard suffix (``model-00001-of-00002.safetensors`` and
``model-00002-of-00002.safetensors`` form the group ``model``, whose index is
``model.safetensors.index.json``). Every transform works group by group.

**Determinism.** Output bytes depend only on the input tensors and metadata: the header is
compact JSON (``separators=(",", ":")``, UTF-8 unescaped, as serde_json writes it) with
``__metadata__`` first and its keys sorted (the library writes them in HashMap order, which
varies between runs; that is the only place our files may differ from the library's),
then the tensors in data order, padded with spaces to a multiple of 8 bytes; tensor data is
ordered by descending dtype alignment, then by name, as the library's ``prepare`` orders it.
Conversions are elementwise (``astype``, a per-tensor amax), so chunking and the number of
worker processes never change a byte.

Heavy imports (numpy, ml_dtypes) happen inside functions, and the quantizer and the shard
strategy (:mod:`.cast`, :mod:`.groups`, :mod:`.shard`) are imported when first used: a build
that only reads safetensors files (a no-op rebuild) imports the format handler alone.

Modules: :mod:`.header` (dtype table, header parser), :mod:`.io` (layout, pwrite and copy
helpers, chunking), :mod:`.format` (:class:`SafetensorsFormat`), :mod:`.groups` (model
groups and indexes), :mod:`.cast` (:class:`SafetensorsCast` and its worker functions),
:mod:`.shard` (:class:`SafetensorsShard`).
"""

from __future__ import annotations

import importlib
from typing import Any

from modelbuild.api import hookimpl

from .format import SafetensorsFormat, scale_companions
from .header import (
    _DTYPES,
    MAX_HEADER_SIZE,
    PLUGIN_VERSION,
    Header,
    Tensor,
    _code_of,
    _numpy_dtype,
    read_header,
)
from .io import Layout, Spec, layout

__all__ = [
    "FP8_DEFAULT_KEEP", "FP8_MAX", "MAX_HEADER_SIZE", "PLUGIN_VERSION", "Group", "Header", "Layout",
    "SafetensorsCast", "SafetensorsFormat", "SafetensorsShard", "Spec", "Task", "Tensor", "hf_split",
    "layout", "read_header", "scale_companions",
    "_DTYPES", "_code_of", "_numpy_dtype",  # used by tests/plugins/test_safetensors.py
]

# the names of the modules imported on first use
_LAZY = {"FP8_DEFAULT_KEEP": "cast", "FP8_MAX": "cast", "Task": "cast", "Group": "groups",
         "SafetensorsShard": "shard", "hf_split": "shard"}


def _cast_class() -> Any:
    """:class:`.cast.SafetensorsCast`, with the options QUANTIZE takes (what
    SafetensorsCast.quantize checks by hand). Declared here, not in the class body in cast.py,
    only while that module's worker pool is being reworked: move it there then."""
    from modelbuild.api import OptionSpec

    from .cast import SafetensorsCast

    if "options" not in SafetensorsCast.__dict__:
        SafetensorsCast.options = (
            OptionSpec("keep", list, help="tensor-name patterns (fnmatch) left in their dtype; float8_e4m3 also "
                                          "keeps embeddings, norms, lm_head and routers"),
        )
    return SafetensorsCast


def __getattr__(name: str) -> Any:
    if name == "SafetensorsCast":
        return _cast_class()
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- registration -------------------------------------------------------------------------


@hookimpl
def modelbuild_register_formats(registry: Any) -> None:
    registry.add(SafetensorsFormat())


@hookimpl
def modelbuild_register_quantizers(registry: Any) -> None:
    registry.add(_cast_class()())


@hookimpl
def modelbuild_register_shard_strategies(registry: Any) -> None:
    from .shard import SafetensorsShard

    registry.add(SafetensorsShard())
