"""llama.cpp's per-tensor type choice ("quantization mixes") for GGUF files, as pure functions.

``llama-quantize model.gguf out.gguf Q4_K_M`` does not give every tensor Q4_K: it keeps
norms and other small tensors as they are, gives ``output.weight`` Q6_K, some
``attn_v``/``ffn_down`` layers Q6_K or Q5_K, and falls back to a 32-block type where a row
is not a multiple of 256. :func:`tensor_types` reproduces that choice from the tensor names
and shapes and a few model facts (:class:`MixFacts`), without reading any tensor data.

Ported from llama.cpp's ``src/llama-quant.cpp`` (the copy vendored by llama-cpp-python
0.3.36; line numbers refer to that file):

* ``tensor_allows_quantization`` (l. 287-386): which tensors are converted at all (2-D/3-D
  ``*weight`` tensors except norms, expert routers, RWKV/Mamba/multimodal small tensors…)
  -> :func:`allows_quantization`, the one rule the ``gguf-quantize`` plugin also uses for
  its pure types.
* ``tensor_get_category`` (l. 119-155) and ``category_is_attn_v`` (l. 157-161).
* ``init_quantize_state_counters`` (l. 927-941): ``n_attention_wv`` counts the
  ``attn_v``/``attn_qkv``/``attn_kv_b`` tensors, ``n_ffn_down = n_ffn_gate = n_ffn_up =
  block_count``, embeddings are tied when no tensor is called ``output.weight``.
* ``llama_tensor_get_type`` (l. 717-773): not-allowed tensors keep their type; with a
  quantized default type, the mix (unless ``pure``), then ``tensor_type_fallback``.
* ``llama_tensor_get_type_impl`` (l. 446-714), for the non-IQ file types: the glm5-next
  Q8_0 floor (l. 472-486); ``output.weight`` and tied ``token_embd`` -> Q6_K, or Q8_0 when
  the row is not a multiple of the default type's block or the model is Falcon (l.
  488-511); ``attn_v`` (l. 567-604: Q2_K -> Q4_K/Q3_K by n_gqa, Q3_K_M -> Q5_K for the
  first two then Q4_K, Q3_K_L -> Q5_K, Q4_K_M/Q5_K_M -> Q6_K where ``use_more_bits``,
  Q4_K_S -> Q5_K for the first four, the 70B bump Q3_K/Q4_K -> Q5_K, 8 experts -> Q8_0);
  ``attn_k`` with 8 experts -> Q8_0 (l. 605-616); ``ffn_down`` (l. 624-668: Q2_K -> Q3_K,
  Q3_K_M -> Q5_K below n_layer/16 else Q4_K, Q3_K_L -> Q5_K, Q4_K_M -> Q6_K where
  ``use_more_bits`` (Falcon: Q6_K/Q5_K/Q4_K), Q5_K_M -> Q6_K where ``use_more_bits``,
  Q4_K_S -> Q5_K below n_layer/8); ``attn_output`` (l. 669-688: Q2_K -> Q3_K, Q3_K_M ->
  Q4_K, Q3_K_L -> Q5_K; 8 experts -> Q5_K for the K mixes; Falcon Q3_K_L -> Q4_K);
  ``ffn_gate``/``ffn_up`` only count (l. 695-712). The counters ``i_attention_wv`` and
  ``i_ffn_down`` advance in llama.cpp's tensor order, ``weight_name_comparer`` in
  src/llama-model-loader.h (l. 54-65): tensors outside ``blk.N.`` first, then by block
  number, each group by name; with more than one expert the layer comes from the name
  (``layer_info``, l. 456-470).
* ``tensor_type_fallback`` (l. 390-443): a row that is not a multiple of the block: Q2_K,
  Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, a 32-block type stays; F16 when
  that still does not fit.
* ``LLM_TYPE_70B`` (the ``load_arch_hparams`` of src/models/llama.cpp, qwen2.cpp,
  deci.cpp, olmo.cpp, jais2.cpp): 80 layers (68 for jais2; llama: and n_head != n_head_kv,
  and not 8 experts).
* ``llama_ftype_get_default_type`` (l. 881-925) and the names and aliases of
  tools/quantize/quantize.cpp's ``QUANT_OPTIONS`` (``Q3_K`` = Q3_K_M, ``Q4_K`` = Q4_K_M,
  ``Q5_K`` = Q5_K_M).

Covered file types: Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K, and
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, F16, BF16, F32 (non-pure, the legacy types get llama.cpp's
``output.weight`` Q6_K too). Not covered: the IQ*/TQ*/MXFP4/Q1_0/Q2_0 file types and Q2_K_S
(llama.cpp needs an importance matrix for it), imatrix-dependent rules, and
llama-quantize's ``--tensor-type``/``--output-tensor-type``/``--token-embedding-type``/
``--leave-output-tensor``/``--prune-layers`` options. Where llama.cpp has one quantize
parameter this module has none: ``keep`` patterns (modelbuild's ``--keep``) leave a tensor
as it is, as if ``tensor_allows_quantization`` said no (it does not advance a counter).
Checked tensor by tensor against ``llama_model_quantize`` (tests/plugins/test_gguf_mixes.py)
for llama (a 17-layer model, a 70B-shaped 80-layer one, an 8-expert MoE), qwen2 (tied
embeddings, rows that are not multiples of 256 or 32) and falcon, for every file type
above; other architectures get the same rules, unchecked.

No numpy, no gguf import: the CLI imports the plugins on every run.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# -- file types --------------------------------------------------------------------------------

# QUANTIZE type (llama-quantize's name, lower-cased) -> (LlamaFileType name, default ggml type)
FILE_TYPES: dict[str, tuple[str, str]] = {
    "f32": ("ALL_F32", "F32"),
    "f16": ("MOSTLY_F16", "F16"),
    "bf16": ("MOSTLY_BF16", "BF16"),
    "q8_0": ("MOSTLY_Q8_0", "Q8_0"),
    "q4_0": ("MOSTLY_Q4_0", "Q4_0"),
    "q4_1": ("MOSTLY_Q4_1", "Q4_1"),
    "q5_0": ("MOSTLY_Q5_0", "Q5_0"),
    "q5_1": ("MOSTLY_Q5_1", "Q5_1"),
    "q2_k": ("MOSTLY_Q2_K", "Q2_K"),
    "q3_k_s": ("MOSTLY_Q3_K_S", "Q3_K"),
    "q3_k_m": ("MOSTLY_Q3_K_M", "Q3_K"),
    "q3_k_l": ("MOSTLY_Q3_K_L", "Q3_K"),
    "q4_k_s": ("MOSTLY_Q4_K_S", "Q4_K"),
    "q4_k_m": ("MOSTLY_Q4_K_M", "Q4_K"),
    "q5_k_s": ("MOSTLY_Q5_K_S", "Q5_K"),
    "q5_k_m": ("MOSTLY_Q5_K_M", "Q5_K"),
    "q6_k": ("MOSTLY_Q6_K", "Q6_K"),
}
# tools/quantize/quantize.cpp QUANT_OPTIONS: "Q3_K" etc. are aliases of the _M mixes
ALIASES = {"q3_k": "q3_k_m", "q4_k": "q4_k_m", "q5_k": "q5_k_m"}

# ggml block sizes of the types a mix can pick (ggml_blck_size)
BLOCK_SIZE = {"F32": 1, "F16": 1, "BF16": 1, "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32,
              "Q2_K": 256, "Q3_K": 256, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256}
K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
_FLOATS = ("F32", "F16", "BF16")  # ggml_is_quantized() is false for these
# tensor_type_fallback(): the 32-block type a 256-block type falls back to
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def file_type(qtype: str) -> str:
    """The canonical QUANTIZE type of *qtype* (aliases resolved): ``q4_k`` -> ``q4_k_m``."""
    q = qtype.lower()
    q = ALIASES.get(q, q)
    if q not in FILE_TYPES:
        raise ValueError(f"no llama.cpp file type {qtype!r}; known: {', '.join(sorted({*FILE_TYPES, *ALIASES}))}")
    return q


def default_type(qtype: str) -> str:
    """llama_ftype_get_default_type(): the ggml type most tensors of the file type get."""
    return FILE_TYPES[file_type(qtype)][1]


# -- which tensors are converted at all (tensor_allows_quantization) --------------------------

# substrings that keep a tensor as it is
_NEVER_QUANTIZED = (
    "_norm.weight",  # norms
    "ffn_gate_inp.weight",  # expert gating
    "ffn_gate_tid2eid.weight",  # DeepSeek-V4 token-id -> expert-id table
    "altup", "laurel",  # Gemma 3n, tiny
    "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight",  # Mamba/Kimi/LFM2 conv1d
    "indexer.k_proj.weight", "indexer.q_proj.weight",  # MiniMax
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
    "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
    "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",  # RWKV
    "attn_rel_b.weight",  # T5 relative position bias
    ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd",
    ".patch_merger",  # multimodal
    "a.rvq.codebook", "mm.a.code_embd",  # audio codebooks
)
_NEVER_QUANTIZED_EXACT = ("position_embd.weight", "token_types.weight")  # LLM_TN(POS_EMBD/TOKEN_TYPES)
_NEVER_QUANTIZED_GLM5_NEXT = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
    "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)


def ggml_n_dims(ne: Sequence[int]) -> int:
    """ggml_n_dims(): dimensions up to the last one that is not 1 (at least 1)."""
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] != 1:
            return i + 1
    return 1


def allows_quantization(name: str, ne: Sequence[int], arch: str | None) -> bool:
    """llama.cpp's tensor_allows_quantization() with default parameters (quantize the output).
    *ne*: ggml order, ne[0] the row length."""
    if ggml_n_dims(ne) < 2:  # only 2-D and 3-D (expert) tensors
        return False
    if not name.endswith("weight"):
        return False
    if name in _NEVER_QUANTIZED_EXACT or any(s in name for s in _NEVER_QUANTIZED):
        return False
    return not (arch == "glm5-next" and any(s in name for s in _NEVER_QUANTIZED_GLM5_NEXT))


# -- model facts -------------------------------------------------------------------------------

# archs whose load_arch_hparams() sets LLM_TYPE_70B, and at which block count
_70B_LAYERS = {"llama": 80, "qwen2": 80, "deci": 80, "olmo": 80, "jais2": 68}


@dataclass(frozen=True)
class MixFacts:
    """What llama.cpp's mix reads from the model's hyper-parameters."""

    arch: str | None  # general.architecture
    n_layer: int  # <arch>.block_count (hparams.n_layer_all)
    n_head: int = 0  # <arch>.attention.head_count (layer 0 when an array)
    n_head_kv: int | None = None  # <arch>.attention.head_count_kv (layer 0); None: = n_head
    n_expert: int = 0  # <arch>.expert_count
    n_layer_nextn: int = 0  # <arch>.nextn_predict_layers

    @property
    def n_gqa(self) -> int:
        """hparams.n_gqa(0): n_head / n_head_kv, 0 when n_head_kv is 0."""
        kv = self.n_head if self.n_head_kv is None else self.n_head_kv
        return self.n_head // kv if kv else 0

    @property
    def is_70b(self) -> bool:
        """model.type == LLM_TYPE_70B."""
        layers = _70B_LAYERS.get(self.arch or "")
        if layers is None or self.n_layer - self.n_layer_nextn != layers:
            return False
        if self.arch == "llama":
            kv = self.n_head if self.n_head_kv is None else self.n_head_kv
            return self.n_expert != 8 and self.n_head != kv
        return True

    @classmethod
    def from_metadata(cls, get: Callable[[str], Any], arch: str | None = None) -> MixFacts:
        """From GGUF keys: *get(key)* returns a key's value or None."""
        arch = arch or get("general.architecture")
        if not isinstance(arch, str):
            arch = None

        def number(key: str, default: int | None) -> int | None:
            value = get(f"{arch}.{key}") if arch else None
            if isinstance(value, (list, tuple)):  # per-layer arrays: llama.cpp's n_gqa() looks at layer 0
                value = value[0] if value else None
            if isinstance(value, bool) or not isinstance(value, int):
                return default
            return int(value)

        return cls(arch=arch, n_layer=number("block_count", 0) or 0, n_head=number("attention.head_count", 0) or 0,
                   n_head_kv=number("attention.head_count_kv", None), n_expert=number("expert_count", 0) or 0,
                   n_layer_nextn=number("nextn_predict_layers", 0) or 0)


# -- tensor categories (tensor_get_category) ---------------------------------------------------

OUTPUT, TOKEN_EMBD, ATTN_QKV, ATTN_KV_B, ATTN_V, ATTN_K, ATTN_Q, ATTN_OUTPUT = range(8)
FFN_UP, FFN_GATE, FFN_DOWN, OTHER = 8, 9, 10, 11
_CATEGORY_SUBSTRINGS = ((ATTN_QKV, "attn_qkv.weight"), (ATTN_KV_B, "attn_kv_b.weight"), (ATTN_V, "attn_v.weight"),
                        (ATTN_K, "attn_k.weight"), (ATTN_Q, "attn_q.weight"), (ATTN_OUTPUT, "attn_output.weight"),
                        (FFN_UP, "ffn_up"), (FFN_GATE, "ffn_gate"), (FFN_DOWN, "ffn_down"))
_ATTN_V_LIKE = (ATTN_V, ATTN_QKV, ATTN_KV_B)


def category(name: str) -> int:
    if name == "output.weight":
        return OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return TOKEN_EMBD
    for cat, sub in _CATEGORY_SUBSTRINGS:
        if sub in name:
            return cat
    return OTHER


_BLK = re.compile(r"blk\.\s*([+-]?\d+)")  # sscanf(name, "blk.%d.", &layer)


def _layer_of(name: str) -> int | None:
    m = _BLK.match(name)
    return int(m.group(1)) if m else None


def llama_order(names: Iterable[str]) -> list[str]:
    """The order llama.cpp's model loader keeps tensors in (weight_name_comparer): names
    outside ``blk.N.`` first, then by block number; each group by name (bytewise)."""
    def key(name: str) -> tuple[int, bytes]:
        layer = _layer_of(name)
        return (-1 if layer is None else layer, name.encode("utf-8", "surrogateescape"))

    return sorted(names, key=key)


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def fallback(ncols: int, target: str) -> str:
    """tensor_type_fallback(): the type used when *ncols* is not a multiple of *target*'s block."""
    block = BLOCK_SIZE[target]
    if ncols % block == 0:
        return target
    result = _FALLBACK.get(target, target)  # a 32-block type has no smaller block to demote to
    if ncols % BLOCK_SIZE[result]:
        result = "F16"
    return result


class _State:
    """quantize_state_impl: the counters that make a mix depend on the tensor's position."""

    def __init__(self, names: Iterable[str], facts: MixFacts) -> None:
        names = list(names)
        self.n_attention_wv = sum(1 for n in names if category(n) in _ATTN_V_LIKE)
        self.has_tied_embeddings = not any(category(n) == OUTPUT for n in names)
        self.n_ffn = facts.n_layer
        self.i_attention_wv = self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0


def _layer_info(facts: MixFacts, i_layer: int, n_layer: int, name: str) -> tuple[int, int]:
    if max(1, facts.n_expert) > 1:  # experts: the layer comes from the name
        layer = _layer_of(name)
        if layer is None:
            raise ValueError(f"Failed to determine layer for tensor {name}")
        if not 0 <= layer < n_layer:
            raise ValueError(f"Bad layer {layer} for tensor {name}. Must be in [0, {n_layer})")
        i_layer = layer
    return i_layer, n_layer


def _mix_type(qs: _State, new_type: str, name: str, ne: Sequence[int], ftype: str, facts: MixFacts) -> str:
    """llama_tensor_get_type_impl() for the file types of FILE_TYPES (never the IQ ones)."""
    arch = facts.arch
    falcon = arch == "falcon"
    cat = category(name)

    if (arch == "glm5-next" and any(s in name for s in ("attn_q_a", "attn_q_b", "nextn.eh_proj"))
            and new_type not in _FLOATS):
        return "Q8_0"

    if cat == OUTPUT or (qs.has_tied_embeddings and cat == TOKEN_EMBD):
        if falcon or ne[0] % BLOCK_SIZE[new_type]:
            new_type = "Q8_0"
        elif new_type != "Q8_0":
            new_type = "Q6_K"
    elif cat == TOKEN_EMBD:
        pass  # only IQ/TQ file types change untied token embeddings
    elif cat in _ATTN_V_LIKE:
        if ftype == "q2_k":
            new_type = "Q4_K" if facts.n_gqa >= 4 else "Q3_K"
        elif ftype == "q3_k_m":
            new_type = "Q5_K" if qs.i_attention_wv < 2 else "Q4_K"
        elif ftype == "q3_k_l":
            new_type = "Q5_K"
        elif ftype in ("q4_k_m", "q5_k_m") and _use_more_bits(qs.i_attention_wv, qs.n_attention_wv):
            new_type = "Q6_K"
        elif ftype == "q4_k_s" and qs.i_attention_wv < 4:
            new_type = "Q5_K"
        if facts.is_70b and new_type in ("Q3_K", "Q4_K"):
            new_type = "Q5_K"  # 8 heads share attn_v in the 70B model: more bits are cheap
        if facts.n_expert == 8:
            new_type = "Q8_0"
        qs.i_attention_wv += 1
    elif cat == ATTN_K:
        if facts.n_expert == 8:
            new_type = "Q8_0"
    elif cat == ATTN_Q:
        pass  # only IQ3 file types
    elif cat == FFN_DOWN:
        i_layer, n_layer = _layer_info(facts, qs.i_ffn_down, qs.n_ffn, name)
        if ftype == "q2_k":
            new_type = "Q3_K"
        elif ftype == "q3_k_m":
            new_type = ("Q5_K" if i_layer < n_layer // 16
                        else "Q4_K" if not falcon or _use_more_bits(i_layer, n_layer) else "Q3_K")
        elif ftype == "q3_k_l":
            new_type = "Q4_K" if falcon else "Q5_K"
        elif ftype == "q4_k_m":
            if falcon:
                new_type = ("Q6_K" if i_layer < n_layer // 16
                            else "Q5_K" if _use_more_bits(i_layer, n_layer) else "Q4_K")
            elif _use_more_bits(i_layer, n_layer):
                new_type = "Q6_K"
        elif ftype == "q5_k_m" and _use_more_bits(i_layer, n_layer):
            new_type = "Q6_K"
        elif ftype == "q4_k_s" and not falcon and i_layer < n_layer // 8:
            new_type = "Q5_K"
        qs.i_ffn_down += 1
    elif cat == ATTN_OUTPUT:
        if not falcon:
            if facts.n_expert == 8:
                if ftype in ("q2_k", "q3_k_s", "q3_k_m", "q4_k_s", "q4_k_m"):
                    new_type = "Q5_K"
            elif ftype == "q2_k":
                new_type = "Q3_K"
            elif ftype == "q3_k_m":
                new_type = "Q4_K"
            elif ftype == "q3_k_l":
                new_type = "Q5_K"
        elif ftype == "q3_k_l":
            new_type = "Q4_K"
    # (llama.cpp's ATTENTION_QKV branch after this one is unreachable: attn_qkv is attn_v-like)
    elif cat == FFN_GATE:
        _layer_info(facts, qs.i_ffn_gate, qs.n_ffn, name)  # only IQ3_XS uses it; it may raise
        qs.i_ffn_gate += 1
    elif cat == FFN_UP:
        _layer_info(facts, qs.i_ffn_up, qs.n_ffn, name)
        qs.i_ffn_up += 1
    return new_type


def tensor_types(tensors: Iterable[tuple[str, Sequence[int]]], qtype: str, facts: MixFacts, *,
                 pure: bool = False, keep: Iterable[str] | Callable[[str], bool] = ()) -> dict[str, str | None]:
    """The ggml type llama.cpp's ``llama-quantize`` gives each tensor for file type *qtype*.

    *tensors*: (name, ne) of every tensor of the model (all shards of a split set), ne in
    ggml order (ne[0] is the row length, as gguf.GGUFReader's ``shape``). *qtype*: a
    QUANTIZE type (``q4_k_m``, an alias such as ``q4_k``, or a legacy ``q8_0``…). *pure*:
    ``llama-quantize --pure`` (no mix: every converted tensor gets the default type, subject
    to the row-length fallback). *keep*: fnmatch patterns (or a predicate) of tensors left as
    they are. Returns {name: ggml type name (``"Q6_K"``, ``"Q5_0"``, ``"F16"``…), or None
    for a tensor llama.cpp leaves as it is (norms, 1-D tensors…)}, in the order given.
    Raises ValueError for an unknown *qtype*, or a tensor whose layer cannot be read in a
    model of several experts (as llama.cpp does).
    """
    ftype = file_type(qtype)
    base = FILE_TYPES[ftype][1]
    if callable(keep):
        kept = keep
    else:
        patterns = list(keep)

        def kept(name: str) -> bool:
            return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    shapes = {}
    for name, ne in tensors:
        if name in shapes:
            raise ValueError(f"duplicate tensor {name!r}")
        shapes[name] = tuple(int(d) for d in ne)
    qs = _State(shapes, facts)
    chosen: dict[str, str | None] = {}
    for name in llama_order(shapes):
        ne = shapes[name]
        if not allows_quantization(name, ne, facts.arch) or kept(name):
            chosen[name] = None
            continue
        new_type = base
        if base not in _FLOATS:  # ggml_is_quantized(default_type)
            if not pure:
                new_type = _mix_type(qs, new_type, name, ne, ftype, facts)
            new_type = fallback(ne[0], new_type)
        chosen[name] = new_type
    return {name: chosen[name] for name in shapes}
