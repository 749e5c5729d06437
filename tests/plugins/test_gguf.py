"""The gguf plugin: header facts, quantization against gguf-py, gguf-split's layout, bad input.

Expectations are computed independently of the plugin: files are read back with
gguf.GGUFReader, quantized tensors compared with gguf.quants run on the input directly,
and the split plan re-derived from gguf-split.cpp's rule.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize
from modelbuild_plugins import gguf_format
from modelbuild_plugins.gguf_format import GGUFFormat, GGUFQuantizer, GGUFShard

from modelbuild.testing import plugin_host
from modelbuild.weights import FormatError, Output, WeightFile

REPO = Path(__file__).resolve().parents[2]
EXTERNAL = REPO / "tests" / "data" / "external"
FMT, QUANT, SHARD = GGUFFormat(), GGUFQuantizer(), GGUFShard()
TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")

# name, numpy shape. Which ones llama.cpp (tensor_allows_quantization) converts:
QUANTIZED = {"token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_up.weight", "blk.0.ffn_down.weight",
             "blk.0.ffn_up_exps.weight", "output.weight", "blk.0.odd.weight"}
TENSORS = [
    ("token_embd.weight", (64, 96)),
    ("blk.0.attn_norm.weight", (96,)),  # 1-D
    ("blk.0.attn_q.weight", (96, 96)),
    ("blk.0.attn_q.bias", (96,)),  # 1-D, not *weight
    ("blk.0.ffn_up.weight", (160, 96)),
    ("blk.0.ffn_down.weight", (96, 160)),
    ("blk.0.odd.weight", (8, 40)),  # rows of 40: not a multiple of 32 -> F16 fallback
    ("blk.0.ffn_gate_inp.weight", (4, 96)),  # expert router: never quantized
    ("blk.0.ffn_up_exps.weight", (2, 32, 64)),  # 3-D experts: quantized
    ("blk.0.ssm_conv1d.weight", (8, 32)),  # Mamba conv1d: never quantized
    ("blk.0.vec.weight", (1, 64)),  # ne = [64, 1]: ggml_n_dims 1, never quantized
    ("position_embd.weight", (16, 96)),  # never quantized
    ("output_norm.weight", (96,)),
    ("output.weight", (64, 96)),
]


# -- helpers -------------------------------------------------------------------------------

def make_model(path: Path, dtype: str = "f32", seed: int = 0, arch: str = "llama") -> dict[str, np.ndarray]:
    """A small llama-like GGUF; 2-D+ tensors in *dtype*, 1-D ones in F32 (as convert_hf_to_gguf
    writes them). Returns the float32 values each tensor holds."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test model")
    w.add_block_count(1)
    w.add_head_count(4)
    w.add_context_length(128)
    w.add_float32(f"{arch}.rope.freq_base", 10000.0)
    w.add_bool("test.flag", True)
    w.add_uint64("test.big", 2**40)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "héllo", "wörld"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.5, -2.25, 3.0])
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32))
    values: dict[str, np.ndarray] = {}
    for name, shape in TENSORS:
        x = (rng.standard_normal(shape) * rng.uniform(0.01, 2.0)).astype(np.float32)
        if len(shape) > 1:
            x.reshape(-1, shape[-1])[0] = 0.0  # an all-zero row: scale 0
            x.reshape(-1, shape[-1])[-1, :5] = [1e-3, -7.0, 7.0, 0.5, -0.5]
        if len(shape) == 1 or dtype == "f32":
            w.add_tensor(name, x)
        elif dtype == "f16":
            x = x.astype(np.float16)
            w.add_tensor(name, x)
            x = x.astype(np.float32)
        elif dtype == "bf16":
            raw = quantize(x, Q.BF16)
            w.add_tensor(name, raw, raw_dtype=Q.BF16)  # shape from the byte shape
            x = dequantize(raw, Q.BF16)
        values[name] = x
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return values


def fields(path: str | Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Every key as (types, contents), in file order, read by GGUFReader."""
    r = gguf.GGUFReader(str(path))
    return {k: (tuple(f.types), f.contents()) for k, f in r.fields.items()
            if not k.startswith("GGUF.") and k not in skip}


def tensors_of(path: str | Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    r = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape), t.data.tobytes()) for t in r.tensors}


def as_float32(t) -> np.ndarray:
    """A GGUFReader tensor's values as float32 in numpy shape."""
    shape = tuple(int(d) for d in reversed(t.shape))
    if t.tensor_type == Q.F32:
        return np.array(t.data, dtype=np.float32).reshape(shape)
    return dequantize(np.array(t.data), t.tensor_type).reshape(shape)


def error_bound(qtype: str, x: np.ndarray) -> np.ndarray:
    """Largest allowed |dequantized - x| per element, from each format's definition."""
    if qtype == "f16":
        return np.abs(x) * 2.0**-11 + 2.0**-24
    if qtype == "bf16":
        return np.abs(x) * 2.0**-8 + 1e-38
    blocks = x.reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    lo, hi = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)
    scale_err = 2.0**-10  # the block scale (and min) is stored as f16
    if qtype == "q8_0":  # d = amax/127, round to nearest
        bound = amax / 127 * (0.5 + 127 * scale_err)
    elif qtype in ("q4_0", "q5_0"):  # d = max/-8 (-16); the extreme value clips one step
        levels = 8 if qtype == "q4_0" else 16
        bound = amax / levels * (1 + levels * scale_err)
    else:  # q4_1 / q5_1: d = (max-min)/15 (31), offset min
        levels = 15 if qtype == "q4_1" else 31
        d = (hi - lo) / levels
        bound = d * (0.5 + levels * scale_err) + np.abs(lo) * scale_err
    return np.broadcast_to(bound + 1e-12, blocks.shape).reshape(x.shape)


@pytest.fixture
def quantized(tmp_path: Path, weight_file, transform_context):
    """``quantized(qtype, dtype="f32", jobs=2, options=None, name="model.gguf")``: a small model
    and config.json quantized: (source, quantized file, values, result, [done, total])."""

    def run(qtype: str, dtype: str = "f32", jobs: int = 2, options: dict | None = None,
            name: str = "model.gguf") -> tuple[Path, Path, dict[str, np.ndarray], list, list[int]]:
        src = tmp_path / f"in-{dtype}" / name
        src.parent.mkdir(parents=True, exist_ok=True)
        values = make_model(src, dtype) if not src.exists() else make_model(src.with_suffix(".tmp"), dtype)
        ctx = transform_context(jobs=jobs, name=f"work-{qtype}-{dtype}-{jobs}")
        cfg = tmp_path / "config.json"
        cfg.write_text("{}")
        files = [weight_file(cfg), weight_file(src, name)]
        out = QUANT.quantize(files, qtype, options or {}, ctx)
        return src, Path(out[1].file), values, out, [ctx.done, ctx.total]

    return run


# -- registration ------------------------------------------------------------------------

def test_registered_through_entry_point():
    host = plugin_host()
    assert host.formats.get("gguf").extensions == (".gguf",)
    assert host.formats.owner("gguf") == host.quantizers.owner("gguf-quantize") == "gguf"
    assert host.quantizer_for("gguf", "q8_0").name == "gguf-quantize"
    assert "gguf" in host.shard_strategies
    assert set(host.quant_types("gguf")) >= set(TYPES)
    assert (FMT.version, QUANT.version, SHARD.version) == ("1", "2", "1")  # 2: K-quant mixes


def test_module_imports_neither_numpy_nor_gguf():
    import subprocess
    import sys

    code = ("import sys, modelbuild_plugins.gguf_format; "
            "print(sorted(m for m in ('numpy', 'gguf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- read_info -----------------------------------------------------------------------------

def external(name: str) -> Path:
    path = EXTERNAL / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run scripts/fetch-test-data")
    return path


@pytest.mark.parametrize("name", ["ggml-vocab-llama-bpe.gguf", "ggml-vocab-qwen2.gguf"])
def test_read_info_real_vocab_files(name, weight_file):
    path = external(name)
    r = gguf.GGUFReader(str(path))
    arch = r.fields["general.architecture"].contents()
    info = FMT.read_info([weight_file(path, name)], None)
    assert info.format == "gguf"
    assert info.param_count == sum(t.n_elements for t in r.tensors) == 0
    assert info.dtype_params == {} and info.precision is None and info.param_size is None
    assert info.family == arch
    assert info.architecture == ("transformer" if f"{arch}.attention.head_count" in r.fields else None)
    ft = r.fields["general.file_type"].contents() if "general.file_type" in r.fields else None
    assert ft in (None, int(gguf.LlamaFileType.ALL_F32), int(gguf.LlamaFileType.MOSTLY_F16))
    assert info.quantization is None  # no quantized file type, no tensors
    assert info.extra["vocab_only"] is True
    assert info.extra["tensor_count"] == len(r.tensors) == 0
    assert info.extra["name"] == r.fields["general.name"].contents()
    assert info.extra["split"] is None
    assert FMT.detect(str(path))


def test_read_info_counts_tensors_by_type(tmp_path, weight_file):
    src = tmp_path / "m.gguf"
    make_model(src, "f16")
    r = gguf.GGUFReader(str(src))
    expected: dict[str, int] = {}
    for t in r.tensors:
        key = {"F32": "float32", "F16": "float16"}[t.tensor_type.name]
        expected[key] = expected.get(key, 0) + t.n_elements
    info = FMT.read_info([weight_file(src, "m.gguf")], None)
    assert info.param_count == sum(t.n_elements for t in r.tensors)
    assert info.dtype_params == expected
    assert info.quantization is None
    assert (info.family, info.architecture) == ("llama", "transformer")
    assert info.extra["tensor_count"] == len(TENSORS) and not info.extra["vocab_only"]


def test_read_info_of_quantized_output(weight_file, quantized):
    _src, out, values, _, _ = quantized("q4_1")
    info = FMT.read_info([weight_file(out, "model.gguf")], None)
    assert info.quantization == "q4_1"
    assert info.param_count == sum(v.size for v in values.values())
    assert set(info.dtype_params) == {"q4_1", "float32", "float16"}
    assert info.precision.split(",")[0] == "q4_1"
    assert info.extra["file_type"] == "MOSTLY_Q4_1"


def test_read_info_quantization_from_tensors_without_file_type(tmp_path, weight_file):
    path = tmp_path / "q.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    x = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    w.add_tensor("a.weight", quantize(x, Q.Q5_0), raw_dtype=Q.Q5_0)
    w.add_tensor("b.weight", quantize(x[:8], Q.Q8_0), raw_dtype=Q.Q8_0)
    w.add_tensor("n.weight", x[0])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    info = FMT.read_info([weight_file(path, "q.gguf")], None)
    assert info.quantization == "q5_0"
    assert info.dtype_params == {"q5_0": 4096, "q8_0": 512, "float32": 64}
    assert info.architecture is None  # no llama.attention.head_count


# -- quantize ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("qtype", TYPES)
def test_quantize_matches_gguf_quants(tmp_path, qtype, dtype, quantized):
    src, out, values, result, progress = quantized(qtype, dtype)
    target = Q[qtype.upper()]
    assert [type(x) for x in result] == [WeightFile, Output] and result[1].path == "model.gguf"
    assert Path(result[1].file).is_relative_to(tmp_path / f"work-{qtype}-{dtype}-2")
    src_r, out_r = gguf.GGUFReader(str(src)), gguf.GGUFReader(str(out))
    ins = {t.name: t for t in src_r.tensors}
    assert [t.name for t in out_r.tensors] == [t.name for t in src_r.tensors]
    for t in out_r.tensors:
        x = values[t.name]
        assert tuple(int(d) for d in t.shape) == tuple(int(d) for d in ins[t.name].shape)
        if t.name not in QUANTIZED:  # kept as it was: type and bytes
            assert t.tensor_type == ins[t.name].tensor_type, t.name
            assert t.data.tobytes() == ins[t.name].data.tobytes(), t.name
            continue
        want = target
        if t.name == "blk.0.odd.weight" and qtype not in ("f16", "bf16"):
            want = Q.F16  # llama.cpp's tensor_type_fallback for rows not a multiple of 32
        assert t.tensor_type == want, (t.name, t.tensor_type)
        if ins[t.name].tensor_type == want:  # already that type: copied
            assert t.data.tobytes() == ins[t.name].data.tobytes()
        else:
            assert t.data.tobytes() == quantize(x, want).tobytes(), t.name  # byte-identical to gguf-py
        got = as_float32(t)
        assert got.shape == x.shape
        bound = error_bound(want.name.lower(), x)
        assert np.all(np.abs(got - x) <= bound), (t.name, float(np.max(np.abs(got - x) - bound)))
    assert progress[0] == progress[1] == sum(v.size for v in values.values())


@pytest.mark.parametrize("qtype", ["q8_0", "f16"])
def test_quantize_metadata(qtype, quantized):
    src, out, _values, _, _ = quantized(qtype)
    before, after = fields(src), fields(out)
    ft = int(gguf.LlamaFileType[f"MOSTLY_{qtype.upper()}"])
    assert after["general.file_type"] == ((gguf.GGUFValueType.UINT32,), ft)
    assert after["general.quantization_version"] == ((gguf.GGUFValueType.UINT32,), gguf.GGML_QUANT_VERSION)
    assert list(after) == list(before) + ["general.quantization_version"]  # file_type replaced in place
    for key in before:
        if key != "general.file_type":
            assert after[key] == before[key], key


def test_quantize_is_deterministic_and_independent_of_jobs_and_chunks(monkeypatch, quantized):
    _, one, _, _, _ = quantized("q5_1", jobs=1)
    monkeypatch.setattr(gguf_format.quantize, "CHUNK_ELEMENTS", 100)  # a few rows per work item
    _, two, _, _, _ = quantized("q5_1", jobs=2)
    assert one.read_bytes() == two.read_bytes()


def test_keep_patterns(quantized):
    _src, out, values, _, _ = quantized("q8_0", options={"keep": ["blk.*.ffn_*", "output.weight"]})
    kept = {n for n in QUANTIZED if fnmatch.fnmatchcase(n, "blk.*.ffn_*") or n == "output.weight"}
    assert kept == {"blk.0.ffn_up.weight", "blk.0.ffn_down.weight", "blk.0.ffn_up_exps.weight", "output.weight"}
    for t in gguf.GGUFReader(str(out)).tensors:
        if t.name in kept:
            assert t.tensor_type == Q.F32 and np.array_equal(as_float32(t), values[t.name])
        elif t.name in QUANTIZED - {"blk.0.odd.weight"}:
            assert t.tensor_type == Q.Q8_0


def test_norms_and_one_dimensional_tensors_stay_f32(quantized):
    _src, out, _values, _, _ = quantized("q4_0", dtype="f16")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(out)).tensors}
    for name, shape in TENSORS:
        if len(shape) == 1 or name.endswith("_norm.weight"):
            assert types[name] == Q.F32, name
    assert types["blk.0.ffn_gate_inp.weight"] == Q.F16  # kept as given
    assert types["position_embd.weight"] == Q.F16


def test_quantize_leaves_other_files_and_rejects_quantized_input(tmp_path, weight_file, transform_context, quantized):
    _src, out, _, _, _ = quantized("q8_0")
    ctx = transform_context(jobs=2)
    with pytest.raises(FormatError, match=r"again\.gguf: tensor 'token_embd\.weight' is already Q8_0"):
        QUANT.quantize([weight_file(out, "again.gguf")], "q4_0", {}, ctx)
    other = tmp_path / "readme.md"
    other.write_text("hi")
    files = [weight_file(other, "readme.md")]
    assert QUANT.quantize(files, "q8_0", {}, ctx) == files


# -- shard and merge -----------------------------------------------------------------------

def reference_split(path: Path, max_bytes: int) -> list[list[str]]:
    """gguf-split.cpp's split_strategy in --split-max-size mode, restated."""
    splits: list[list[str]] = [[]]
    size = 0
    for t in gguf.GGUFReader(str(path)).tensors:
        n = (t.n_bytes + 31) // 32 * 32  # GGML_PAD(ggml_nbytes(t), GGUF_DEFAULT_ALIGNMENT)
        if size + n > max_bytes and splits[-1]:
            splits.append([])
            size = n
        else:
            size += n
        splits[-1].append(t.name)
    return splits


def test_split_and_merge_round_trip(tmp_path, weight_file, transform_context):
    src = tmp_path / "in" / "tiny.gguf"
    src.parent.mkdir()
    make_model(src, "f16")
    plan = reference_split(src, 40_000)
    n = len(plan)
    assert n >= 3
    cfg = tmp_path / "config.json"
    cfg.write_text("{}")
    files = [weight_file(cfg), weight_file(src, "gguf/tiny.gguf")]
    ctx = transform_context(jobs=2)
    out = SHARD.shard(files, 40_000, ctx)
    assert out[0] == files[0]
    names = [o.path for o in out[1:]]
    assert names == [f"gguf/tiny-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]
    assert ctx.done == ctx.total > 0
    original = fields(src)
    inputs = tensors_of(src)
    for i, o in enumerate(out[1:]):
        r = gguf.GGUFReader(o.file)
        assert [t.name for t in r.tensors] == plan[i]
        keys = fields(o.file)
        split_keys = list(keys)[-3:]
        assert split_keys == ["split.no", "split.tensors.count", "split.count"]  # gguf's set = move to end
        assert keys["split.no"] == ((gguf.GGUFValueType.UINT16,), i)
        assert keys["split.count"] == ((gguf.GGUFValueType.UINT16,), n)
        assert keys["split.tensors.count"] == ((gguf.GGUFValueType.INT32,), len(TENSORS))
        if i == 0:  # all metadata in the first split only
            assert {k: v for k, v in keys.items() if k not in SPLIT_KEYS} == original
        else:
            assert list(keys) == split_keys
        for name, t in tensors_of(o.file).items():
            assert t == inputs[name]

    info = FMT.read_info([weight_file(Path(o.file), o.path) for o in out[1:]], None)
    assert info.param_count == sum(n.n_elements for n in gguf.GGUFReader(str(src)).tensors)
    assert info.family == "llama" and info.extra["split"]["count"] == n

    shards = [weight_file(Path(o.file), o.path) for o in reversed(out[1:])]  # any order
    merged = SHARD.merge([files[0], *shards], transform_context(jobs=2))
    assert merged[0] == files[0] and [m.path for m in merged[1:]] == ["gguf/tiny.gguf"]
    assert fields(merged[1].file) == original
    assert tensors_of(merged[1].file) == inputs
    assert Path(merged[1].file).read_bytes() == src.read_bytes()  # same writer, same layout


def test_shard_that_fits_leaves_the_file(tmp_path, weight_file, transform_context):
    src = tmp_path / "m.gguf"
    make_model(src)
    files = [weight_file(src, "m.gguf")]
    assert SHARD.shard(files, 10**9, transform_context()) == files
    assert SHARD.merge(files, transform_context()) == files


def test_shard_oversized_tensors_each_get_a_split(tmp_path, weight_file, transform_context):
    src = tmp_path / "m.gguf"
    make_model(src)
    out = SHARD.shard([weight_file(src, "m.gguf")], 1, transform_context())
    assert len(out) == len(TENSORS)
    assert [t.name for o in out for t in gguf.GGUFReader(o.file).tensors] == [n for n, _ in TENSORS]


def test_reshard_a_split_set(tmp_path, weight_file, transform_context):
    src = tmp_path / "m.gguf"
    make_model(src)
    first = SHARD.shard([weight_file(src, "m.gguf")], 40_000, transform_context())
    again = SHARD.shard([weight_file(Path(o.file), o.path) for o in first], 20_000, transform_context())
    assert [o.path for o in again] == [f"m-{i:05d}-of-{len(again):05d}.gguf" for i in range(1, len(again) + 1)]
    assert len(again) == len(reference_split(src, 20_000))
    one = SHARD.shard([weight_file(Path(o.file), o.path) for o in again], 10**9, transform_context())
    assert [o.path for o in one] == ["m.gguf"] and Path(one[0].file).read_bytes() == src.read_bytes()


def test_missing_split_is_an_error(tmp_path, weight_file, transform_context):
    src = tmp_path / "m.gguf"
    make_model(src)
    out = SHARD.shard([weight_file(src, "m.gguf")], 40_000, transform_context())
    n = len(out)
    partial = [weight_file(Path(o.file), o.path) for o in out if "-00002-" not in o.path]
    with pytest.raises(FormatError, match=rf"^m-00001-of-{n:05d}\.gguf: split 2 of {n} is missing "
                                          rf"\(m-00002-of-{n:05d}\.gguf\)"):
        FMT.read_info(partial, None)
    with pytest.raises(FormatError, match=f"split 2 of {n} is missing"):
        SHARD.merge(partial, transform_context())


def test_quantize_a_split_set_keeps_the_names(tmp_path, weight_file, transform_context):
    src = tmp_path / "m.gguf"
    values = make_model(src)
    shards = SHARD.shard([weight_file(src, "m.gguf")], 40_000, transform_context())
    out = QUANT.quantize([weight_file(Path(o.file), o.path) for o in shards], "q8_0", {}, transform_context(jobs=2))
    assert [o.path for o in out] == [o.path for o in shards]
    first = fields(out[0].file)
    assert first["general.file_type"][1] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert "general.file_type" not in fields(out[1].file)
    merged = SHARD.merge([weight_file(Path(o.file), o.path) for o in out], transform_context())
    for t in gguf.GGUFReader(merged[0].file).tensors:
        if t.tensor_type == Q.Q8_0:
            assert t.data.tobytes() == quantize(values[t.name], Q.Q8_0).tobytes()


# -- iter_tensors / write ------------------------------------------------------------------

def test_iter_tensors_and_write_round_trip(tmp_path, weight_file, quantized):
    _src, out, values, _, _ = quantized("q8_0", dtype="bf16")
    listed = list(FMT.iter_tensors(str(out)))
    assert [n for n, *_ in listed] == [n for n, _ in TENSORS]
    for name, dtype, shape, load in listed:
        assert shape == values[name].shape
        arr = load()
        if dtype == "float32":
            assert np.array_equal(arr, values[name])
        elif dtype == "bfloat16":
            assert np.array_equal(arr.astype(np.float32), values[name])
    copy = tmp_path / "copy.gguf"
    FMT.write(str(copy), ((n, load(), d) for n, d, _s, load in FMT.iter_tensors(weight_file(out, "x.gguf"))),
              FMT.read_metadata(str(out)))
    assert copy.read_bytes() == out.read_bytes()


def test_write_plain_arrays_and_values(tmp_path):
    path = tmp_path / "w.gguf"
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(5, dtype=np.int32)
    FMT.write(str(path), [("a", a), ("b", b), ("h", a.astype(np.float16))],
              {"general.architecture": "llama", "general.alignment": 64, "x.list": [1, 2, 3], "x.f": 0.5,
               "x.s": "ü", "x.strs": ["a", "bc"], "x.b": False})
    r = gguf.GGUFReader(str(path))
    assert r.alignment == 64
    got = {t.name: (t.tensor_type, t.data) for t in r.tensors}
    assert got["a"][0] == Q.F32 and np.array_equal(got["a"][1], a)
    assert got["b"][0] == Q.I32 and np.array_equal(got["b"][1], b)
    assert got["h"][0] == Q.F16
    f = fields(path)
    assert f["general.alignment"] == ((gguf.GGUFValueType.UINT32,), 64)
    assert f["x.list"][1] == [1, 2, 3] and f["x.strs"][1] == ["a", "bc"] and f["x.s"][1] == "ü"
    assert f["x.b"][1] is False and f["x.f"][1] == 0.5


# -- bad input -----------------------------------------------------------------------------

def test_wrong_magic(tmp_path, weight_file, transform_context):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04" + bytes(100))
    assert not FMT.detect(str(bad))
    with pytest.raises(FormatError) as exc:
        FMT.read_info([weight_file(bad, "weights/model.gguf")], None)
    assert exc.value.file == "weights/model.gguf"
    assert "50 4b 03 04" in str(exc.value) and "b'GGUF'" in str(exc.value)
    with pytest.raises(FormatError, match=r"^weights/model\.gguf: not a GGUF file"):
        QUANT.quantize([weight_file(bad, "weights/model.gguf")], "q8_0", {}, transform_context())


@pytest.mark.parametrize("cut", [0, 3, 20, 100, "data"])
def test_truncated_file(tmp_path, cut, weight_file, transform_context):
    src = tmp_path / "m.gguf"
    make_model(src)
    data = src.read_bytes()
    n = len(data) - 10 if cut == "data" else cut
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:n])
    with pytest.raises(FormatError, match=r"^cut\.gguf: .*(truncated|empty)") as exc:
        FMT.read_info([weight_file(bad, "cut.gguf")], None)
    assert exc.value.file == "cut.gguf"
    with pytest.raises(FormatError, match=r"^cut\.gguf: "):
        SHARD.shard([weight_file(bad, "cut.gguf")], 1000, transform_context())


@pytest.mark.parametrize("version", [1, 4])
def test_unsupported_version(tmp_path, version, weight_file):
    src = tmp_path / "m.gguf"
    make_model(src)
    data = bytearray(src.read_bytes())
    data[4:8] = version.to_bytes(4, "little")
    bad = tmp_path / "v.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=rf"^v\.gguf: .*version {version}"):
        FMT.read_info([weight_file(bad, "v.gguf")], None)


def test_big_endian_file_is_read(tmp_path, weight_file, transform_context):
    path = tmp_path / "be.gguf"
    w = gguf.GGUFWriter(str(path), "llama", endianess=gguf.GGUFEndian.BIG)
    w.add_uint32("llama.attention.head_count", 4)
    w.add_tensor("a.weight", np.ones((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    info = FMT.read_info([weight_file(path, "be.gguf")], None)
    assert (info.param_count, info.family, info.architecture) == (128, "llama", "transformer")
    (name, dtype, shape, load), = FMT.iter_tensors(str(path))
    assert (name, dtype, shape) == ("a.weight", "float32", (4, 32)) and np.array_equal(load(), np.ones((4, 32)))
    with pytest.raises(FormatError, match="big-endian"):
        QUANT.quantize([weight_file(path, "be.gguf")], "q8_0", {}, transform_context())


def test_allows_quantization_rules():
    allows = gguf_format.allows_quantization
    assert allows("blk.0.attn_q.weight", (64, 64), "llama")
    assert not allows("blk.0.attn_q.bias", (64, 64), "llama")  # must end in "weight"
    assert not allows("blk.0.attn_norm.weight", (64,), "llama")
    assert not allows("blk.0.vec.weight", (64, 1), "llama")  # ggml_n_dims 1
    assert allows("blk.0.ffn_up_exps.weight", (64, 32, 8), "llama")
    for name in ("blk.0.ffn_norm.weight", "blk.0.ffn_gate_inp.weight", "position_embd.weight",
                 "token_types.weight", "blk.0.ssm_conv1d.weight", "blk.0.time_mix_w1.weight",
                 "enc.blk.0.attn_rel_b.weight", "v.patch_embd.weight", "v.position_embd.weight"):
        assert not allows(name, (64, 64), "llama"), name
    assert allows("blk.0.indexer.proj.weight", (64, 64), "llama")
    assert not allows("blk.0.indexer.proj.weight", (64, 64), "glm5-next")
