"""How much memory a variant needs to serve: its weights plus the KV cache at a context length.

The published formula (docs/spec/runtime.md §2): an engine keeps the weights resident and,
for every layer, a key and a value vector per KV head per position of the context::

    kv_cache = layers × context × kv_heads × (head_dim_k + head_dim_v) × bytes_per_element
    total    = weights + kv_cache

``bytes_per_element`` is the KV cache's type (f16 by default in llama.cpp and vLLM: 2).
Grouped-query attention is why ``kv_heads`` (``num_key_value_heads``) and not the attention
heads count: Llama 3 8B has 32 attention heads but 8 KV heads, a quarter of the cache.
Activations and the engine's own buffers are not counted: they depend on the engine and
its batch size, and are small beside these two at the context lengths that matter.

The shape comes from the checkpoint's ``config.json`` (Hugging Face's names) or from a
GGUF file's keys (llama.cpp's ``{arch}.block_count``, ``{arch}.attention.head_count_kv``…);
both describe the same model, and a conversion keeps them equal (tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# bytes per KV cache element, by the type names engines take (llama.cpp --cache-type-k,
# vLLM --kv-cache-dtype)
KV_TYPES = {"f32": 4, "float32": 4, "f16": 2, "float16": 2, "bf16": 2, "bfloat16": 2, "q8_0": 34 / 32,
            "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "q4_0": 18 / 32}


@dataclass(frozen=True, slots=True)
class AttentionShape:
    """What sizes the KV cache: layers, KV heads, the key and value head sizes, and the
    longest context the model was trained for (the default context length)."""

    layers: int
    kv_heads: int
    head_dim_k: int
    head_dim_v: int
    context_length: int | None = None

    def kv_cache_bytes(self, context: int, kv_type: str = "f16") -> int:
        """The KV cache for one sequence of *context* positions, in bytes."""
        if context < 1:
            raise ValueError(f"context length {context} must be at least 1")
        per_element = KV_TYPES.get(kv_type.lower())
        if per_element is None:
            raise ValueError(f"unknown KV cache type {kv_type!r}: one of {', '.join(sorted(KV_TYPES))}")
        return round(self.layers * context * self.kv_heads * (self.head_dim_k + self.head_dim_v) * per_element)


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """Weights and KV cache, in bytes, at *context* positions."""

    weights: int
    kv_cache: int
    context: int
    kv_type: str

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache

    def as_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "kvCache": self.kv_cache, "total": self.total, "contextLength": self.context,
                "kvCacheType": self.kv_type}


def estimate(weights_bytes: int, shape: AttentionShape, context: int | None = None,
             kv_type: str = "f16") -> MemoryEstimate:
    """Memory to serve one sequence: *context* defaults to the model's own context length."""
    n = context or shape.context_length
    if not n:
        raise ValueError("no context length: the model does not say, so pass one")
    return MemoryEstimate(weights_bytes, shape.kv_cache_bytes(n, kv_type), n, kv_type)


# No model has more of anything (layers, heads, head size, positions): a config.json from
# someone else with 10**400 layers is not a model, and would overflow a float
_MAX_DIMENSION = 2**31


def _positive(value: Any) -> int | None:
    """A dimension from an untrusted document: a positive integer in range, else None."""
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_DIMENSION
    return value if ok else None


def from_hf_config(config: Mapping[str, Any]) -> AttentionShape | None:
    """The shape a Hugging Face ``config.json`` gives (``text_config`` of a multimodal one
    too); None when it names no layers or heads (not a decoder transformer)."""
    text = config.get("text_config")
    if isinstance(text, Mapping) and "num_hidden_layers" not in config:
        config = text
    layers = _positive(config.get("num_hidden_layers"))
    heads = _positive(config.get("num_attention_heads"))
    hidden = _positive(config.get("hidden_size"))
    if layers is None or heads is None:
        return None
    kv_heads = _positive(config.get("num_key_value_heads")) or heads
    head_dim = _positive(config.get("head_dim")) or (hidden // heads if hidden else None)
    if head_dim is None:
        return None
    return AttentionShape(layers, kv_heads, head_dim, head_dim, _positive(config.get("max_position_embeddings")))


def from_gguf_keys(keys: Mapping[str, Any]) -> AttentionShape | None:
    """The shape a GGUF file's keys give (``general.architecture`` names the prefix); None
    when they name no block count or heads."""
    arch = keys.get("general.architecture")
    if not isinstance(arch, str):
        return None

    def key(name: str) -> int | None:
        return _positive(keys.get(f"{arch}.{name}"))

    layers, heads = key("block_count"), key("attention.head_count")
    if layers is None or heads is None:
        return None
    kv_heads = key("attention.head_count_kv") or heads
    embedding = key("embedding_length")
    dim_k = key("attention.key_length") or (embedding // heads if embedding else None)
    dim_v = key("attention.value_length") or dim_k
    if dim_k is None or dim_v is None:
        return None
    return AttentionShape(layers, kv_heads, dim_k, dim_v, key("context_length"))





# -- an artifact's estimate ------------------------------------------------------------------
def for_artifact(layers: list[Any], read: Any, context: int | None = None,
                 kv_type: str = "f16") -> MemoryEstimate | None:
    """The estimate for a manifest's *layers* (verified descriptors): the weights are the
    weight layers' bytes (a raw layer's size is its file's; an archive's is close), the
    shape the packaged ``config.json`` nearest the root. ``read(descriptor)`` returns a
    small blob's verified bytes. None when there is no config.json with an attention shape
    (an ONNX model, a classifier), or it is not a JSON object (it comes from the artifact:
    any bytes, any nesting)."""
    from modelbuild.oci import mediatypes as mt
    from modelbuild.oci.verify import MAX_JSON, IntegrityError, parse_json_object

    def path(layer: Any) -> str:
        ann = layer.annotations or {}
        return ann.get(mt.ANNOTATION_FILEPATH) or ann.get(mt.LEGACY_ANNOTATION_FILEPATH) or ""

    weights = sum(layer.size for layer in layers if ".weight.v1." in layer.media_type)
    configs = sorted((layer for layer in layers if path(layer).rsplit("/", 1)[-1] == "config.json"
                      and layer.size <= MAX_JSON and layer.media_type.endswith(".raw")),
                     key=lambda layer: (path(layer).count("/"), path(layer)))
    for layer in configs:
        data = read(layer)  # a blob that does not match its digest is an error, as every verified read
        try:
            shape = from_hf_config(parse_json_object(data, path(layer)))
        except IntegrityError:  # not a JSON object: no shape to read
            continue
        if shape is not None and (context or shape.context_length):
            return estimate(weights, shape, context, kv_type)
    return None


__all__ = ["KV_TYPES", "AttentionShape", "MemoryEstimate", "estimate", "for_artifact", "from_gguf_keys", "from_hf_config"]
