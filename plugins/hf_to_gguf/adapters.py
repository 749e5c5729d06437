"""Architecture adapters: the interface the converter asks of an architecture
(:class:`ArchitectureAdapter`), the errors an adapter raises, and the built-in adapters
(llama, mistral, qwen2)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from modelbuild.api import FormatError

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


# In an adapter's hparams(): where general.file_type goes (llama.cpp writes it among the
# architecture's keys: after the generic ones, before those its model class adds). Without it,
# after the adapter's keys.
FILE_TYPE = ("general.file_type", None)


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
        type explicitly. ``general.*`` and ``tokenizer.*`` keys are the converter's, except
        :data:`FILE_TYPE`, which says where ``general.file_type`` goes (llama.cpp's order;
        after the adapter's keys when absent). Raise :func:`config_error` for a config it
        cannot convert.
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
            from modelbuild.api import PluginError

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
        keys.append(FILE_TYPE)
        return keys + self.model_keys(config, d)

    def model_keys(self, config: dict[str, Any], d: Dims) -> list[tuple[str, Any]]:
        """The keys llama.cpp's model class adds after the generic ones (and the file type)."""
        return []

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
    version = "2"
    summary = "Llama 1/2/3 (LlamaForCausalLM): q/k permuted for GGML's RoPE, Llama 3.1 rope_freqs"
    hf_architectures = ("LlamaForCausalLM",)
    permute_qk = True
    rope_types = ("default", "linear", "yarn", "llama3")

    def model_keys(self, config: dict[str, Any], d: Dims) -> list[tuple[str, Any]]:
        return [("{arch}.vocab_size", d.vocab), ("{arch}.rope.dimension_count", d.head_dim)]

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
    version = "2"
    summary = "Mistral (MistralForCausalLM), written as GGUF architecture llama as llama.cpp does"
    hf_architectures = ("MistralForCausalLM",)
    rope_types = ("default", "linear", "yarn")


class Qwen2Adapter(LlamaFamilyAdapter):
    name = "qwen2"
    version = "2"
    summary = "Qwen2 / Qwen2.5 (Qwen2ForCausalLM): q/k/v biases, no q/k permutation"
    hf_architectures = ("Qwen2ForCausalLM",)
    permute_qk = False  # llama.cpp's qwen2 graph uses NEOX-style RoPE on HF's layout
    # no model_keys: llama.cpp's Qwen2 converter writes neither vocab_size nor rope.dimension_count
    # (the runtime takes them from the token list and the head size)

    def qkv_bias(self, config: dict[str, Any]) -> bool:
        return True

    def o_bias(self, config: dict[str, Any]) -> bool:
        return False

    def mlp_bias(self, config: dict[str, Any]) -> bool:
        return False


BUILTIN_ADAPTERS = (LlamaAdapter, MistralAdapter, Qwen2Adapter)
