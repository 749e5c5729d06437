"""llama.cpp's k-quant mixes (gguf_mixes) and the gguf-quantize k-quant types, against llama.cpp.

The reference is llama.cpp itself: ``llama_cpp.llama_model_quantize`` (llama-cpp-python
0.3.36, ``nthread=2``, not pure unless a test says so) run on the same small GGUF files,
read back with gguf.GGUFReader. For every mix the type of every tensor must be the same,
and the bytes of every tensor too (the k-quant tensors come from
``modelbuild_plugins.gguf_format.kquants``, the others from gguf.quants). llama.cpp missing is a
failure, not a skip: these tests are the proof that the port matches.

The models (written with gguf.GGUFWriter, loadable by llama.cpp's quantizer):

* ``llama``: 17 layers (so n_layer/16 and n_layer/8 are both 1 and 2, and use_more_bits
  picks a pattern), n_embd 256, 8 heads over 2 KV heads (n_gqa 4), n_ff 288: ffn_down rows
  of 288 are not a multiple of 256 and fall back to a 32-block type; separate output.weight.
* ``qwen2``: 9 layers, F16 input, n_embd 288 (nothing is a multiple of 256: every
  fallback, output Q8_0 by the row rule), n_gqa 1, rows of 300 in ffn_down (not a multiple
  of 32: F16), attention biases, tied embeddings (no output.weight: token_embd gets the
  output's type), tensors written in a shuffled order.
* ``llama70b``: 80 layers, n_head != n_head_kv: LLM_TYPE_70B (attn_v Q3_K/Q4_K -> Q5_K);
  small tensors.
* ``moe``: llama with 8 experts (3-D ffn_*_exps, the router ffn_gate_inp): the 8-expert
  rules and layers read from names.
* ``falcon``: attn_qkv (attn_v-like), the Falcon branches.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
import numpy as np
import pytest
from modelbuild_plugins.gguf_format import mixes as gguf_mixes
from modelbuild_plugins.gguf_format import GGUFQuantizer
from modelbuild_plugins.gguf_format.mixes import MixFacts, llama_order, tensor_types

from modelbuild.weights import WeightFile

MIXES = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
QUANT = GGUFQuantizer()


def llama_cpp():
    """llama_cpp, or a test failure saying how to get it."""
    try:
        import llama_cpp as lc
    except ImportError as exc:
        why = str(exc)
    else:
        return lc
    pytest.fail(f"llama_cpp is not importable ({why}): these tests compare with llama.cpp's "
                f"llama_model_quantize; install it into the venv: pip install llama-cpp-python==0.3.36",
                pytrace=False)


# -- the models ------------------------------------------------------------------------------

def _vocab(w: gguf.GGUFWriter, n: int) -> None:
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>" for i in range(n)])
    w.add_token_scores([0.0] * n)
    w.add_token_types([1] * n)


def _llama_like(n_layer: int, n_embd: int, n_head: int, n_head_kv: int, n_ff: int, vocab: int, *,
                output: bool = True, bias: bool = False, rows: int | None = None) -> list[tuple[str, tuple]]:
    """(name, numpy shape) of a llama/qwen2 model. *rows*: every 2-D tensor gets this many
    rows instead (row lengths kept): a small model with many layers."""
    head = n_embd // n_head
    kv = head * n_head_kv

    def r(n: int) -> int:
        return rows or n

    t = [("token_embd.weight", (r(vocab), n_embd))]
    for i in range(n_layer):
        b = f"blk.{i}."
        t += [(b + "attn_norm.weight", (n_embd,)),
              (b + "attn_q.weight", (r(n_embd), n_embd)),
              (b + "attn_k.weight", (r(kv), n_embd)),
              (b + "attn_v.weight", (r(kv), n_embd)),
              (b + "attn_output.weight", (r(n_embd), n_embd)),
              (b + "ffn_norm.weight", (n_embd,)),
              (b + "ffn_gate.weight", (r(n_ff), n_embd)),
              (b + "ffn_up.weight", (r(n_ff), n_embd)),
              (b + "ffn_down.weight", (r(n_embd), n_ff))]
        if bias:
            t += [(b + "attn_q.bias", (n_embd,)), (b + "attn_k.bias", (kv,)), (b + "attn_v.bias", (kv,))]
    t += [("output_norm.weight", (n_embd,))]
    if output:
        t += [("output.weight", (r(vocab), n_embd))]
    return t


def _moe(n_layer: int, n_embd: int, n_expert: int, n_ff: int, vocab: int) -> list[tuple[str, tuple]]:
    t = [("token_embd.weight", (4, n_embd))]
    for i in range(n_layer):
        b = f"blk.{i}."
        t += [(b + "attn_norm.weight", (n_embd,)), (b + "attn_q.weight", (2, n_embd)),
              (b + "attn_k.weight", (2, n_embd)), (b + "attn_v.weight", (2, n_embd)),
              (b + "attn_output.weight", (2, n_embd)), (b + "ffn_norm.weight", (n_embd,)),
              (b + "ffn_gate_inp.weight", (n_expert, n_embd)),
              (b + "ffn_gate_exps.weight", (n_expert, 2, n_embd)),
              (b + "ffn_up_exps.weight", (n_expert, 2, n_embd)),
              (b + "ffn_down_exps.weight", (n_expert, 2, n_ff))]
    return t + [("output_norm.weight", (n_embd,)), ("output.weight", (vocab, n_embd))]


def _falcon(n_layer: int, n_embd: int) -> list[tuple[str, tuple]]:
    t = [("token_embd.weight", (4, n_embd))]
    for i in range(n_layer):
        b = f"blk.{i}."
        t += [(b + "attn_norm.weight", (n_embd,)), (b + "attn_norm.bias", (n_embd,)),
              (b + "attn_qkv.weight", (2, n_embd)), (b + "attn_output.weight", (2, n_embd)),
              (b + "ffn_up.weight", (2, n_embd)), (b + "ffn_down.weight", (2, n_embd))]
    return t + [("output_norm.weight", (n_embd,)), ("output_norm.bias", (n_embd,)), ("output.weight", (4, n_embd))]


MODELS = {
    # name: (arch, hyper-parameters, tensors, 2-D dtype)
    "llama": ("llama", {"n_layer": 17, "n_embd": 256, "n_head": 8, "n_head_kv": 2, "n_ff": 288},
              _llama_like(17, 256, 8, 2, 288, 320), "f32"),
    "qwen2": ("qwen2", {"n_layer": 9, "n_embd": 288, "n_head": 4, "n_head_kv": 4, "n_ff": 300},
              _llama_like(9, 288, 4, 4, 300, 320, output=False, bias=True), "f16"),
    "llama70b": ("llama", {"n_layer": 80, "n_embd": 256, "n_head": 8, "n_head_kv": 1, "n_ff": 512},
                 _llama_like(80, 256, 8, 1, 512, 8, rows=2), "f32"),
    "moe": ("llama", {"n_layer": 4, "n_embd": 256, "n_head": 4, "n_head_kv": 4, "n_ff": 256, "n_expert": 8,
                      "n_expert_used": 2},
            _moe(4, 256, 8, 256, 4), "f32"),
    "falcon": ("falcon", {"n_layer": 8, "n_embd": 256, "n_head": 4, "n_head_kv": 1, "n_ff": 1024},
               _falcon(8, 256), "f32"),
}


def write_model(path: Path, name: str, seed: int = 0) -> None:
    arch, hp, tensors, dtype = MODELS[name]
    if name == "qwen2":  # not in llama.cpp's order: the mix must not depend on the file's order
        rng = np.random.default_rng(7)
        tensors = [tensors[i] for i in rng.permutation(len(tensors))]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"mix test {name}")
    w.add_context_length(256)
    w.add_embedding_length(hp["n_embd"])
    w.add_block_count(hp["n_layer"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_head_kv"])
    if arch == "falcon":
        w.add_layer_norm_eps(1e-5)
    else:
        w.add_layer_norm_rms_eps(1e-5)
    if "n_expert" in hp:
        w.add_expert_count(hp["n_expert"])
        w.add_expert_used_count(hp["n_expert_used"])
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32))
    vocab = max(s[0] for n, s in tensors if n == "token_embd.weight")
    _vocab(w, vocab)
    rng = np.random.default_rng(seed)
    for tname, shape in tensors:
        x = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if len(shape) == 1:
            w.add_tensor(tname, x)
            continue
        x.reshape(-1, shape[-1])[0] = 0.0  # an all-zero row
        x.reshape(-1, shape[-1])[-1, :4] = [1.0, -1.0, 1e-4, -3.0]  # an outlier
        w.add_tensor(tname, x.astype(np.float16) if dtype == "f16" else x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mix-models")
    out = {}
    for name in MODELS:
        out[name] = d / f"{name}.gguf"
        write_model(out[name], name)
    return out


# -- the two quantizers ------------------------------------------------------------------------

def read_back(path: Path) -> tuple[dict[str, tuple[str, bytes]], int | None]:
    """{tensor name: (ggml type name, bytes)} and general.file_type of a GGUF file."""
    r = gguf.GGUFReader(str(path))
    f = r.fields.get("general.file_type")
    return ({t.name: (t.tensor_type.name, t.data.tobytes()) for t in r.tensors},
            None if f is None else int(f.contents()))


_LLAMA_CACHE: dict[tuple, tuple] = {}


def llama_quantize(src: Path, qtype: str, pure: bool = False) -> tuple[dict[str, tuple[str, bytes]], int]:
    """llama_model_quantize(src, ftype of *qtype*, nthread=2), read back."""
    key = (str(src), qtype, pure)
    if key not in _LLAMA_CACHE:
        lc = llama_cpp()
        ftype = int(gguf.LlamaFileType[gguf_mixes.FILE_TYPES[gguf_mixes.file_type(qtype)][0]])
        params = lc.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = 2
        params.pure = pure
        dst = src.with_name(f"{src.stem}.llama.{qtype}{'.pure' if pure else ''}.gguf")
        rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
        assert rc == 0, f"llama_model_quantize({src.name}, {qtype}) failed"
        _LLAMA_CACHE[key] = read_back(dst)
        dst.unlink()
    return _LLAMA_CACHE[key]


@pytest.fixture
def ours(weight_file, transform_context):
    """``ours(src, qtype, options=None, jobs=2)``: *src* quantized by the plugin, read back."""

    def run(src: Path, qtype: str, options: dict | None = None, jobs: int = 2):
        (out,) = QUANT.quantize([weight_file(src)], qtype, options or {}, transform_context(jobs=jobs))
        return read_back(Path(out.file))

    return run


def assert_same(got: dict[str, tuple[str, bytes]], want: dict[str, tuple[str, bytes]], what: str) -> None:
    assert set(got) == set(want), what
    types_got = {n: t for n, (t, _) in got.items()}
    types_want = {n: t for n, (t, _) in want.items()}
    wrong = {n: (types_got[n], types_want[n]) for n in llama_order(want) if types_got[n] != types_want[n]}
    assert not wrong, f"{what}: tensor types differ from llama.cpp's (ours, llama.cpp): {wrong}"
    bad = [n for n in llama_order(want) if got[n][1] != want[n][1]]
    assert not bad, (f"{what}: the bytes of {len(bad)} tensors differ from llama.cpp's: "
                     f"{[(n, types_want[n]) for n in bad][:8]}")


# -- against llama.cpp -------------------------------------------------------------------------

@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("qtype", MIXES)
def test_mix_types_and_bytes_match_llama_cpp(models, model, qtype, ours):
    want, want_ftype = llama_quantize(models[model], qtype)
    # the pure function first: gguf_mixes alone, from names and shapes
    r = gguf.GGUFReader(str(models[model]))
    facts = MixFacts.from_metadata(lambda k: r.fields[k].contents() if k in r.fields else None)
    inputs = {t.name: t.tensor_type.name for t in r.tensors}
    chosen = tensor_types([(t.name, tuple(int(d) for d in t.shape)) for t in r.tensors], qtype, facts)
    expected = {n: (c or inputs[n]) for n, c in chosen.items()}
    assert expected == {n: t for n, (t, _) in want.items()}, f"gguf_mixes.tensor_types, {model} {qtype}"
    # then the quantizer end to end: types and bytes
    got, got_ftype = ours(models[model], qtype)
    assert got_ftype == want_ftype == int(gguf.LlamaFileType[f"MOSTLY_{qtype.upper()}"])
    assert_same(got, want, f"{model} {qtype}")


@pytest.mark.parametrize("model", ["llama", "qwen2"])
@pytest.mark.parametrize("qtype", ["q2_k", "q4_k_m", "q6_k"])
def test_pure_matches_llama_cpp_pure(models, model, qtype, ours):
    want, _ = llama_quantize(models[model], qtype, pure=True)
    got, _ = ours(models[model], qtype, {"pure": True})
    assert_same(got, want, f"{model} {qtype} --pure")
    base = gguf_mixes.default_type(qtype)
    assert {t for t, _ in want.values()} <= {base, "F32", "F16", "Q4_0", "Q5_0", "Q5_1", "Q8_0"}


@pytest.mark.parametrize("model", ["llama", "qwen2"])
@pytest.mark.parametrize("qtype", ["q4_0", "q8_0", "q5_1"])
def test_legacy_types_with_the_mix_match_llama_cpp(models, model, qtype, ours):
    """--pure=false on a legacy type: llama-quantize's default (output.weight Q6_K…)."""
    want, _ = llama_quantize(models[model], qtype)
    got, _ = ours(models[model], qtype, {"pure": False})
    assert_same(got, want, f"{model} {qtype} mix")


@pytest.mark.parametrize("alias,full", [("q3_k", "q3_k_m"), ("q4_k", "q4_k_m"), ("q5_k", "q5_k_m")])
def test_aliases_are_the_m_mixes(models, alias, full, ours):
    want, want_ftype = llama_quantize(models["llama"], full)
    got, got_ftype = ours(models["llama"], alias)
    assert got_ftype == want_ftype
    assert_same(got, want, f"{alias} = {full}")


def test_jobs_and_chunks_do_not_change_the_output(models, monkeypatch, ours):
    from modelbuild_plugins.gguf_format import quantize

    one, _ = ours(models["llama"], "q4_k_m", jobs=1)
    monkeypatch.setattr(quantize, "CHUNK_ELEMENTS", 256 * 7)  # 7-row work items
    many, _ = ours(models["llama"], "q4_k_m", jobs=3)
    assert one == many


# -- the pure function on its own --------------------------------------------------------------

def test_keep_patterns_and_unknown_types():
    facts = MixFacts("llama", n_layer=2, n_head=8, n_head_kv=2)
    tensors = [(n, tuple(reversed(s))) for n, s in _llama_like(2, 256, 8, 2, 512, 16)]
    types = tensor_types(tensors, "q4_k_m", facts, keep=["blk.1.*"])
    assert all(types[n] is None for n in types if n.startswith("blk.1."))
    assert types["output.weight"] == "Q6_K" and types["blk.0.attn_norm.weight"] is None
    assert tensor_types(tensors, "Q4_K", facts) == tensor_types(tensors, "q4_k_m", facts)
    with pytest.raises(ValueError, match="no llama.cpp file type"):
        tensor_types(tensors, "iq2_xxs", facts)


def test_llama_order_and_facts():
    assert llama_order(["blk.10.a", "blk.2.b", "output.weight", "blk.2.a", "token_embd.weight"]) == \
        ["output.weight", "token_embd.weight", "blk.2.a", "blk.2.b", "blk.10.a"]
    f = MixFacts.from_metadata({"general.architecture": "llama", "llama.block_count": 80,
                                "llama.attention.head_count": [64] * 80, "llama.attention.head_count_kv": 8}.get)
    assert (f.n_layer, f.n_head, f.n_head_kv, f.n_gqa, f.is_70b) == (80, 64, 8, 8, True)
    assert not MixFacts("llama", 80, 64, 64).is_70b  # n_head == n_head_kv: the 65B
    assert MixFacts("qwen2", 80, 64, 64).is_70b


def test_experts_need_layer_numbers():
    facts = MixFacts("llama", n_layer=2, n_head=4, n_expert=8)
    with pytest.raises(ValueError, match="Failed to determine layer"):
        tensor_types([("ffn_down_exps.weight", (256, 2, 8)), ("output.weight", (256, 4))], "q4_k_m", facts)


def test_a_split_set_gets_the_mix_of_the_whole_model(models, weight_file, transform_context):
    """Each shard's tensors get the types of the unsplit model (the counters run over all shards)."""
    from modelbuild_plugins.gguf_format import GGUFShard

    src = models["llama"]
    shards = GGUFShard().shard([weight_file(src, "model.gguf")], 4_000_000, transform_context(jobs=1))
    assert len(shards) > 2
    inputs = [WeightFile(o.path, o.file, "sha256:" + "0" * 64, Path(o.file).stat().st_size) for o in shards]
    outs = QUANT.quantize(inputs, "q4_k_m", {}, transform_context(jobs=2))
    got: dict[str, tuple[str, bytes]] = {}
    for o in outs:
        got.update(read_back(Path(o.file))[0])
    want, _ = llama_quantize(src, "q4_k_m")
    assert_same(got, want, "split llama q4_k_m")


def test_a_model_without_block_count_is_refused(models, tmp_path, ours):
    from modelbuild.weights import FormatError

    bare = tmp_path / "bare.gguf"  # no block_count: llama.cpp would not load it either
    w = gguf.GGUFWriter(str(bare), "llama")
    w.add_tensor("blk.0.ffn_down.weight", np.zeros((4, 256), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(FormatError, match="block_count"):
        ours(bare, "q4_k_m")
    got, _ = ours(bare, "q4_k_m", {"pure": "true"})  # --pure needs no facts
    assert got["blk.0.ffn_down.weight"][0] == "Q4_K"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("qtype", ["q2_k", "q3_k_m", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m"])
def test_mixes_on_the_converted_tiny_checkpoint_match_llama_cpp(tmp_path, arch, qtype, ours, transform_context,
                                                                 model_set):
    """The issue's own check: convert the tiny HF checkpoint, then quantize it both ways."""
    import shutil

    from models import make_tiny_checkpoint

    from modelbuild.testing import plugin_host

    llama_cpp()
    src = tmp_path / "hf"
    make_tiny_checkpoint(src, arch)
    files = model_set(src)
    host = plugin_host()
    ctx = transform_context(jobs=2, host=host)  # hf-to-gguf finds its architectures through ctx.plugins
    out = host.converters.get("hf-to-gguf").convert(files, {"outtype": "f32"}, ctx)
    gguf_out = next(o for o in out if o.path.endswith(".gguf"))
    f32 = tmp_path / "tiny-f32.gguf"
    shutil.copyfile(gguf_out.file, f32)
    got, _ = ours(f32, qtype)
    want, _ = llama_quantize(f32, qtype)
    assert_same(got, want, f"{arch} {qtype}")
