"""The safetensors plugin: strict header parsing, reads and writes, the cast / float8
quantizer and Hugging Face sharding, checked against the safetensors library and
huggingface_hub themselves, on real files."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors
from modelbuild_plugins import safetensors_format as stf
from safetensors.numpy import load_file, save, save_file

from modelbuild.errors import UsageError
from modelbuild.testing import plugin_host
from modelbuild.weights import FormatError, Output, WeightFile
from support import missing

REPO = Path(__file__).resolve().parent.parent.parent
TINY_LLAMA = REPO / "Modelfile.examples" / "tiny-llama" / "model"

FMT = stf.SafetensorsFormat()
CAST = stf.SafetensorsCast()
SHARD = stf.SafetensorsShard()


# -- helpers ------------------------------------------------------------------------------


def outputs_by_path(result: list) -> dict[str, str]:
    """artifact path -> where its bytes are, for outputs and passed-through inputs."""
    return {item.path: (item.file if isinstance(item, Output) else item.source) for item in result}


def materialize(out: dict[str, str], dest: Path) -> Path:
    """Copy a transform's result into a directory, as the next step would see it."""
    for rel, where in out.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(Path(where).read_bytes())
    return dest


def raw_header(path: Path | str) -> tuple[int, dict]:
    data = Path(path).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return n, json.loads(data[8:8 + n])


def read_all(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a file, through the safetensors library's own parser (deserialize
    validates the file; its numpy loader cannot give bfloat16/float8, so view the bytes)."""
    out = {}
    for name, view in safetensors.deserialize(Path(path).read_bytes()):
        dtype = stf._numpy_dtype(view["dtype"])
        out[name] = np.frombuffer(bytes(view["data"]), dtype=dtype).reshape(view["shape"])
    return out


def installed_data(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def bits(a: np.ndarray) -> np.ndarray:
    """The raw bytes of an array (NaN-safe, 0-d-safe comparison)."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def params_of(tensors: dict[str, np.ndarray]) -> int:
    return sum(int(a.size) for a in tensors.values())


def llama_like(rng: np.random.Generator, dtype=np.float32) -> dict[str, np.ndarray]:
    def w(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(dtype)

    t = {"model.embed_tokens.weight": w(64, 16), "lm_head.weight": w(64, 16), "model.norm.weight": w(16)}
    for i in range(2):
        p = f"model.layers.{i}."
        t |= {p + "input_layernorm.weight": w(16), p + "post_attention_layernorm.weight": w(16),
              p + "self_attn.q_proj.weight": w(16, 16), p + "self_attn.k_proj.weight": w(8, 16),
              p + "self_attn.v_proj.weight": w(8, 16), p + "self_attn.o_proj.weight": w(16, 16),
              p + "mlp.gate_proj.weight": w(40, 16), p + "mlp.up_proj.weight": w(40, 16),
              p + "mlp.down_proj.weight": w(16, 40)}
    return t


LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_attention_heads": 4,
                "torch_dtype": "float32", "transformers_version": "4.57.0"}


def write_model(root: Path, tensors: dict[str, np.ndarray], *, metadata=None, config=None,
                name: str = "model.safetensors") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(root / name), metadata=metadata)
    if config is not None:
        (root / "config.json").write_text(json.dumps(config, indent=2))
    return root


# -- registration, detection --------------------------------------------------------------


def test_the_plugin_registers_its_three_objects():
    host = plugin_host()
    assert host.formats.owner("safetensors") == "safetensors"
    assert host.quantizers.owner("safetensors-cast") == "safetensors"
    assert host.shard_strategies.owner("safetensors") == "safetensors"
    assert host.quantizer_for("safetensors", "bfloat16").name == "safetensors-cast"
    assert host.quantizer_for("safetensors", "float8_e4m3").name == "safetensors-cast"
    assert host.format_for_path("x/model-00001-of-00002.safetensors").name == "safetensors"


def test_detect(tmp_path):
    write_model(tmp_path, {"a": np.zeros(3, np.float32)})
    (tmp_path / "x.json").write_text('{"a": 1}')
    (tmp_path / "short").write_bytes(b"\x02\x00")
    (tmp_path / "gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    assert FMT.detect(str(tmp_path / "model.safetensors"))
    assert not FMT.detect(str(tmp_path / "x.json"))
    assert not FMT.detect(str(tmp_path / "short"))
    assert not FMT.detect(str(tmp_path / "gguf"))
    assert not FMT.detect(str(tmp_path / "missing"))


# -- writing: byte-identical with the library ---------------------------------------------

ALL_DTYPES = [np.float64, np.float32, np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn,
              ml_dtypes.float8_e5m2, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
              np.uint32, np.uint64, np.bool_, np.complex64]


@pytest.mark.parametrize("metadata", [None, {}, {"format": "pt"}, {"ünï": "cödé\n\"q\"\t/"}])
def test_write_is_byte_identical_to_safetensors_save(tmp_path, metadata):
    rng = np.random.default_rng(0)
    tensors = {}
    for i, dt in enumerate(ALL_DTYPES):
        tensors[f"t{i:02d}.{np.dtype(dt).name}"] = rng.standard_normal((3, i + 1)).astype(dt)
    tensors["scalar"] = np.array(2.5, np.float32)
    tensors["empty"] = np.zeros((0, 4), np.float32)
    tensors["ñame with spaces/ünïcode"] = np.arange(5, dtype=np.int32)
    tensors["big.endian"] = np.arange(6, dtype=">f4").reshape(2, 3)
    FMT.write(str(tmp_path / "ours.safetensors"), tensors.items(), metadata)
    assert (tmp_path / "ours.safetensors").read_bytes() == save(tensors, metadata=metadata)


def test_write_streams_lazy_tensors_loading_each_once(tmp_path):
    calls = []

    def lazy(name, arr):
        def load():
            calls.append(name)
            return arr
        return name, arr.dtype.name if arr.dtype.name != "float8_e4m3fn" else "float8_e4m3", arr.shape, load

    arrays = {"b": np.ones((4, 4), ml_dtypes.bfloat16), "a": np.ones(3, np.float32),
              "c": np.ones(2, ml_dtypes.float8_e4m3fn)}
    FMT.write(str(tmp_path / "x.safetensors"), [lazy(k, v) for k, v in arrays.items()], {"format": "pt"})
    assert sorted(calls) == ["a", "b", "c"] and len(calls) == 3
    assert (tmp_path / "x.safetensors").read_bytes() == save(arrays, metadata={"format": "pt"})


def test_iter_tensors_is_lazy_and_memory_mapped(tmp_path, weight_file):
    rng = np.random.default_rng(1)
    arrays = {"w": rng.standard_normal((8, 4)).astype(ml_dtypes.bfloat16),
              "f8": rng.standard_normal(16).astype(ml_dtypes.float8_e4m3fn),
              "i": np.arange(10, dtype=np.int64), "s": np.array(1.0, np.float16), "e": np.zeros((0,), np.float32)}
    path = tmp_path / "m.safetensors"
    save_file(arrays, str(path))
    seen = {}
    for name, precision, shape, load in FMT.iter_tensors(str(path)):
        arr = load()
        assert tuple(arr.shape) == shape
        assert stf._DTYPES[stf._code_of(arr.dtype)][1] == precision
        if arr.size:
            assert not arr.flags.writeable  # a read-only view of the mapping, not a copy
        seen[name] = arr
    assert seen.keys() == arrays.keys()
    for name, arr in arrays.items():
        assert seen[name].dtype == arr.dtype
        np.testing.assert_array_equal(bits(seen[name]), bits(arr))
    # the round trip through write gives the same file
    FMT.write(str(tmp_path / "again.safetensors"), FMT.iter_tensors(weight_file(tmp_path / "m.safetensors")), None)
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()


# -- strict header parsing ----------------------------------------------------------------


def _file(header: dict | bytes, data: bytes, *, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "I8", "shape": [4], "data_offsets": [8, 12]}}

BAD_FILES = {
    "shorter than 8 bytes": (b"\x10\x00\x00", "shorter than the 8-byte header length"),
    "header length beyond file": (_file(GOOD, b"\x00" * 12, length=4096), "runs past the end"),
    "header length over the limit": (_file(GOOD, b"", length=100_000_001), "exceeds safetensors' limit"),
    "truncated data": (_file(GOOD, b"\x00" * 7), "past the end"),
    "bad JSON": (_file(b'{"a": {"dtype": "F32",', b""), "not valid JSON"),
    "not UTF-8": (_file(b'{"\xff": 1}', b""), "not UTF-8"),
    "header not an object": (_file(b"[1, 2]", b""), "not an object"),
    "duplicate tensor": (_file(b'{"a":{"dtype":"I8","shape":[1],"data_offsets":[0,1]},'
                               b'"a":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}}', b"\x00"), "duplicate"),
    "unknown dtype": (_file({"a": {"dtype": "F12", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 8),
                      "unknown dtype"),
    "size mismatch": (_file({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\x00" * 8),
                      "needs 12"),
    "overlapping offsets": (_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\x00" * 12),
                            "overlaps"),
    "gap between tensors": (_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                   "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, b"\x00" * 12),
                            "gap"),
    "data not starting at 0": (_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\x00" * 8),
                               "gap"),
    "trailing bytes": (_file(GOOD, b"\x00" * 20), "after the last tensor"),
    "negative shape": (_file({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b""),
                       "non-negative"),
    "metadata not strings": (_file({"__metadata__": {"n": 1}, **GOOD}, b"\x00" * 12), "strings to strings"),
    "missing data_offsets": (_file({"a": {"dtype": "F32", "shape": [1]}}, b"\x00" * 4), "data_offsets"),
}

# serde_json keeps the last of two equal keys; a header naming a tensor twice is ambiguous
# (which bytes are it?), and no writer produces one, so we refuse what the library accepts.
LIBRARY_ACCEPTS = {"duplicate tensor"}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_format_error_naming_the_file(tmp_path, case):
    data, needle = BAD_FILES[case]
    path = tmp_path / "broken.safetensors"
    path.write_bytes(data)
    wf = WeightFile("sub/broken.safetensors", str(path), "sha256:x", len(data))
    with pytest.raises(FormatError) as err:
        FMT.read_info([wf], None)
    assert err.value.file == "sub/broken.safetensors"
    assert str(err.value).startswith("sub/broken.safetensors: ")
    assert needle in str(err.value)
    with pytest.raises(FormatError, match="broken.safetensors"):
        list(FMT.iter_tensors(str(path)))
    if case in LIBRARY_ACCEPTS:
        safetensors.deserialize(data)  # a deliberate difference, see LIBRARY_ACCEPTS
        return
    # the safetensors library refuses the same file: our parser is no more lenient
    with pytest.raises(Exception):  # noqa: B017 - the library raises its own error types
        safetensors.deserialize(data)


def test_the_library_and_our_parser_accept_the_same_good_file(tmp_path):
    data = _file(GOOD, b"\x00" * 12)
    path = tmp_path / "good.safetensors"
    path.write_bytes(data)
    assert sorted(n for n, _ in safetensors.deserialize(data)) == ["a", "b"]
    assert [t.name for t in stf.read_header(str(path)).tensors] == ["a", "b"]
    # offsets in any header order, and space padding, are fine for both
    shuffled = _file(b'{"b":{"dtype":"I8","shape":[4],"data_offsets":[8,12]},'
                     b'"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}   ', b"\x00" * 12)
    path.write_bytes(shuffled)
    assert [t.name for t in stf.read_header(str(path)).tensors] == ["a", "b"]
    safetensors.deserialize(shuffled)


# -- read_info ----------------------------------------------------------------------------


def test_read_info_tiny_llama(weight_file):
    config = json.loads((TINY_LLAMA / "config.json").read_text())
    info = FMT.read_info([weight_file(TINY_LLAMA / "model.safetensors")], config)
    loaded = load_file(str(TINY_LLAMA / "model.safetensors"))
    assert info.param_count == params_of(loaded) == 156_480
    assert info.dtype_params == {"float32": 156_480}
    assert info.precision == "float32"
    assert info.param_size == "156.5K"
    assert (info.format, info.family, info.architecture, info.quantization) == ("safetensors", "llama",
                                                                                "transformer", None)
    assert info.extra["tensor_count"] == len(loaded) == 21
    assert info.extra["metadata"] == {"format": "pt"}


def test_read_info_silero_vad(weight_file):
    root = installed_data("silero_vad")
    if root is None:
        missing("silero-vad is not installed (scripts/fetch-test-data)")
    path = root / "data" / "silero_vad_16k.safetensors"
    loaded = load_file(str(path))
    info = FMT.read_info([weight_file(path)], None)
    assert info.param_count == params_of(loaded)
    assert info.dtype_params == {"float32": params_of(loaded)}
    assert info.extra["tensor_count"] == len(loaded)
    assert info.extra["metadata"] is None
    assert (info.architecture, info.family, info.quantization) == (None, None, None)


def test_read_info_fracast_float_and_int8(weight_file):
    root = installed_data("fracast")
    if root is None:
        missing("fracast is not installed (scripts/fetch-test-data)")
    weights = root / "weights"
    full = load_file(str(weights / "model.safetensors"))
    int8 = load_file(str(weights / "model.int8.safetensors"))
    info = FMT.read_info([weight_file(weights / "model.safetensors")], None)
    assert info.param_count == params_of(full) == int(info.extra["metadata"]["parameter_count"])
    assert info.dtype_params == {"float32": params_of(full)}
    assert info.extra["metadata"]["model_name"] == "fracast-0"

    # int8: `P.scale` beside `P.qweight` are scales, not parameters; the rest count
    scales = {k for k in int8 if k.endswith(".scale") and k[:-6] + ".qweight" in int8}
    info8 = FMT.read_info([weight_file(weights / "model.int8.safetensors")], None)
    assert info8.param_count == params_of({k: v for k, v in int8.items() if k not in scales})
    assert info8.param_count == int(info8.extra["metadata"]["parameter_count"]) == info.param_count
    assert info8.dtype_params["int8"] == sum(v.size for v in int8.values() if v.dtype == np.int8)
    assert info8.extra["scale_tensors"] == len(scales)
    assert info8.extra["tensor_count"] == len(int8)

    both = FMT.read_info([weight_file(weights / "model.safetensors"), weight_file(weights / "model.int8.safetensors")],
                         None)
    assert both.param_count == info.param_count + info8.param_count
    assert "metadata_by_file" in both.extra and both.extra["metadata"]["model_name"] == "fracast-0"


def test_scales_beside_quantized_siblings_are_not_parameters(tmp_path, weight_file):
    w = np.ones((8, 16), np.int8)
    src = {"proj.weight.int8": w, "proj.weight.scale": np.ones(8, np.float32), "norm.weight": np.ones(16, np.float32),
           "layer.scale": np.ones(16, np.float32)}  # a learned scale with no quantized sibling: a parameter
    root = write_model(tmp_path, src)
    info = FMT.read_info([weight_file(root / "model.safetensors")], None)
    assert info.param_count == 8 * 16 + 16 + 16
    assert info.dtype_params == {"int8": 128, "float32": 32}
    assert info.extra["scale_tensors"] == 1


# -- casting ------------------------------------------------------------------------------


def mixed_model(rng) -> dict[str, np.ndarray]:
    t = llama_like(rng)
    t["model.layers.0.self_attn.o_proj.weight"] = t["model.layers.0.self_attn.o_proj.weight"].astype(np.float16)
    t["model.layers.1.mlp.down_proj.weight"] = t["model.layers.1.mlp.down_proj.weight"].astype(ml_dtypes.bfloat16)
    t["rope.inv_freq"] = rng.standard_normal(8)  # float64 stays
    t["position_ids"] = np.arange(32, dtype=np.int64)
    t["mask"] = np.array([True, False, True])
    t["odd"] = np.array([1 + 2**-8, 1 + 3 * 2**-8, 70000.0, -1e-40, np.nan, np.inf], np.float32)
    return t


@pytest.mark.parametrize("qtype, np_type", [("bfloat16", ml_dtypes.bfloat16), ("float16", np.float16)])
def test_cast_equals_numpy_conversion(tmp_path, qtype, np_type, weight_file, model_set, transform_context):
    rng = np.random.default_rng(2)
    src = mixed_model(rng)
    root = write_model(tmp_path / "in", src, metadata={"format": "pt", "note": "kept"}, config=LLAMA_CONFIG)
    (root / "tokenizer.json").write_text("{}")
    files = model_set(root)
    ctx = transform_context(jobs=2)
    result = CAST.quantize(files, qtype, {}, ctx)

    tok = next(r for r in result if r.path == "tokenizer.json")
    assert tok is next(f for f in files if f.path == "tokenizer.json")  # passed through, same object
    out = outputs_by_path(result)
    assert set(out) == {"model.safetensors", "config.json", "tokenizer.json"}
    got = read_all(out["model.safetensors"])
    assert got.keys() == src.keys()
    for name, arr in src.items():
        if arr.dtype.name in ("float32", "float16", "bfloat16"):
            with np.errstate(over="ignore"):  # 70000 does not fit float16: inf, as numpy makes it
                want = arr.astype(np_type)
        else:
            want = arr
        assert got[name].dtype == want.dtype, name
        np.testing.assert_array_equal(bits(got[name]), bits(want), err_msg=name)
    assert raw_header(out["model.safetensors"])[1]["__metadata__"] == {"format": "pt", "note": "kept"}
    if qtype == "float16":
        loaded = load_file(out["model.safetensors"])  # the library's numpy loader reads it
        assert loaded["odd"].dtype == np.float16
        assert any("odd" in line and "infinite" in line for line in ctx.logs)  # 70000 overflows
    config = json.loads(Path(out["config.json"]).read_text())
    assert config == {**LLAMA_CONFIG, "torch_dtype": qtype}
    assert Path(out["config.json"]).read_text() == json.dumps(config, indent=2, sort_keys=True) + "\n"
    assert ctx.total == sum(a.nbytes for a in src.values()) == ctx.done
    # the declared parameter count does not change with the dtype
    info = FMT.read_info([weight_file(Path(out["model.safetensors"]).parent / "model.safetensors")], config)
    assert info.param_count == params_of(src)
    assert info.precision.split(",")[0] == qtype


def test_cast_honours_keep_patterns(tmp_path, model_set, transform_context):
    rng = np.random.default_rng(3)
    src = llama_like(rng)
    root = write_model(tmp_path / "in", src)
    keep = ["lm_head.*", "*.layers.1.mlp.*"]
    result = CAST.quantize(model_set(root), "bfloat16", {"keep": keep}, transform_context(jobs=2))
    got = read_all(outputs_by_path(result)["model.safetensors"])
    for name, arr in src.items():
        kept = name.startswith("lm_head.") or ".layers.1.mlp." in name
        assert got[name].dtype == (np.float32 if kept else ml_dtypes.bfloat16), name
        if kept:
            np.testing.assert_array_equal(got[name], arr)


def test_cast_of_a_sharded_model_keeps_shard_names_and_rewrites_the_index(tmp_path, model_set, transform_context):
    rng = np.random.default_rng(4)
    src = llama_like(rng)
    root = tmp_path / "in"
    sharded = SHARD.shard(model_set(write_model(root, src, metadata={"format": "pt"}, config=LLAMA_CONFIG)),
                          6_000, transform_context(jobs=2))
    in_files = model_set(materialize(outputs_by_path(sharded), tmp_path / "sharded"))
    shard_names = sorted(f.path for f in in_files if f.path.endswith(".safetensors"))
    assert len(shard_names) > 2

    result = CAST.quantize(in_files, "float8_e4m3", {}, transform_context(jobs=2))
    out = outputs_by_path(result)
    assert sorted(p for p in out if p.endswith(".safetensors")) == shard_names
    index = json.loads(Path(out["model.safetensors.index.json"]).read_text())
    actual_map = {}
    total = 0
    for name in shard_names:
        tensors = read_all(out[name])
        actual_map |= {k: name for k in tensors}
        total += sum(a.nbytes for a in tensors.values())
    assert index["weight_map"] == actual_map
    assert index["metadata"]["total_size"] == total
    for name, shard in actual_map.items():
        if name.endswith(".weight_scale"):
            assert actual_map[name[: -len("_scale")]] == shard  # a scale lives with its weight


# -- float8 -------------------------------------------------------------------------------


def fp8_error_bound(x: np.ndarray, scale: float) -> np.ndarray:
    """|dequantized - x| for float8_e4m3fn with scale s: for |x/s| >= 2^-6 (normal numbers,
    3 mantissa bits) half an ulp is at most 2^-4 relative; below, the subnormal spacing is
    2^-9, so half of it, 2^-10, absolute (times s). A 1e-6 relative slack covers float32
    rounding of x/s and of q*s."""
    return np.maximum(np.abs(x) * 2.0**-4, scale * 2.0**-10) * (1 + 1e-6) + np.abs(x) * 1e-6


def test_fp8_layout_scales_and_error_bound(tmp_path, weight_file, model_set, transform_context):
    rng = np.random.default_rng(5)
    src = llama_like(rng, dtype=ml_dtypes.bfloat16)
    src["model.layers.0.mlp.down_proj.weight"] = (rng.standard_normal((16, 40)) * 3).astype(np.float32)
    src["model.layers.0.mlp.down_proj.weight"][0, :5] = [0, 1e-6, -1e-6, 3e-4, -3e-4]  # subnormal range
    src["model.layers.1.self_attn.o_proj.weight"][:] = 0  # an all-zero weight
    src["model.layers.0.self_attn.o_proj.bias"] = np.ones(16, ml_dtypes.bfloat16)
    root = write_model(tmp_path / "in", src, metadata={"format": "pt"}, config=LLAMA_CONFIG)
    result = CAST.quantize(model_set(root), "float8_e4m3", {}, transform_context(jobs=2))
    out = outputs_by_path(result)
    got = read_all(out["model.safetensors"])

    linear = {k for k, v in src.items() if k.endswith("proj.weight") and v.ndim == 2}
    assert len(linear) == 14
    assert set(got) == set(src) | {k[: -len(".weight")] + ".weight_scale" for k in linear}
    header = raw_header(out["model.safetensors"])[1]
    assert header["__metadata__"] == {"format": "pt"}
    for name, arr in src.items():
        if name in linear:
            assert header[name]["dtype"] == "F8_E4M3" and header[name]["shape"] == list(arr.shape)
            s_entry = header[name[: -len(".weight")] + ".weight_scale"]
            assert (s_entry["dtype"], s_entry["shape"]) == ("F32", [])
            scale = got[name[: -len(".weight")] + ".weight_scale"]
            x = arr.astype(np.float32)
            amax = float(np.max(np.abs(x)))
            assert scale.dtype == np.float32 and scale.shape == ()
            assert scale == np.float32(max(amax, 1e-12)) / np.float32(448.0)
            deq = got[name].astype(np.float32) * scale
            assert np.all(np.abs(deq - x) <= fp8_error_bound(x, float(scale))), name
            if amax:
                assert np.max(np.abs(got[name].astype(np.float32))) == 448.0  # the range is used fully
        else:  # embeddings, lm_head, norms, biases: untouched
            np.testing.assert_array_equal(bits(got[name]), bits(arr), err_msg=name)

    config = json.loads(Path(out["config.json"]).read_text())
    assert config["quantization_config"] == {"quant_method": "fp8", "activation_scheme": "dynamic",
                                             "ignored_layers": ["lm_head", "model.embed_tokens"]}
    assert config["torch_dtype"] == "float32"  # the activation dtype is not the storage dtype
    info = FMT.read_info([weight_file(Path(out["model.safetensors"]).parent / "model.safetensors")], config)
    assert info.quantization == "fp8"
    assert info.param_count == params_of(src)  # the scales are not parameters
    assert info.extra["scale_tensors"] == 14
    assert info.dtype_params["float8_e4m3"] == sum(src[k].size for k in linear)


def test_fp8_keep_patterns_fused_siblings_and_refusals(tmp_path, model_set, transform_context):
    rng = np.random.default_rng(6)
    src = llama_like(rng)
    root = write_model(tmp_path / "in", src, config=LLAMA_CONFIG)
    ctx = transform_context(jobs=2)
    keep = ["*.layers.1.self_attn.q_proj.*", "*.layers.0.mlp.down_proj.weight"]
    result = CAST.quantize(model_set(root), "float8_e4m3", {"keep": keep}, ctx)
    out = outputs_by_path(result)
    header = raw_header(out["model.safetensors"])[1]
    kept = {"model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj",
            "model.layers.0.mlp.down_proj"}
    for module in kept:
        assert header[module + ".weight"]["dtype"] == "F32"
        assert module + ".weight_scale" not in header
    assert header["model.layers.1.self_attn.o_proj.weight"]["dtype"] == "F8_E4M3"
    assert header["model.layers.0.mlp.gate_proj.weight"]["dtype"] == "F8_E4M3"  # down_proj is not fused
    ignored = json.loads(Path(out["config.json"]).read_text())["quantization_config"]["ignored_layers"]
    assert ignored == sorted(kept | {"lm_head", "model.embed_tokens"})
    assert sum("vLLM fuses" in line for line in ctx.logs) == 2

    # an already quantized model is refused, whatever the target; with or without its config
    requant = materialize(out, tmp_path / "requant")
    for qtype in ("float8_e4m3", "bfloat16"):
        with pytest.raises(UsageError, match="config.json has a quantization_config"):
            CAST.quantize(model_set(requant), qtype, {}, transform_context(jobs=2))
    (requant / "config.json").unlink()
    with pytest.raises(UsageError, match="is F8_E4M3: the model is quantized"):
        CAST.quantize(model_set(requant), "float16", {}, transform_context(jobs=2))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_fp8_refuses_non_finite_weights(tmp_path, bad, model_set, transform_context):
    src = {"layer.proj.weight": np.array([[1.0, bad], [0.0, 1.0]], np.float32)}
    root = write_model(tmp_path / "in", src, config=LLAMA_CONFIG)
    with pytest.raises(FormatError, match="layer.proj.weight.*inf or NaN"):
        CAST.quantize(model_set(root), "float8_e4m3", {}, transform_context(jobs=2))


def test_unknown_options_and_types_are_refused(tmp_path, model_set, transform_context):
    root = write_model(tmp_path / "in", {"a.weight": np.ones((2, 2), np.float32)})
    with pytest.raises(UsageError, match="cannot produce 'q8_0'"):
        CAST.quantize(model_set(root), "q8_0", {}, transform_context(jobs=2))


def test_casting_an_int8_checkpoint_leaves_its_scales_alone(tmp_path, weight_file, transform_context):
    root = installed_data("fracast")
    if root is None:
        missing("fracast is not installed (scripts/fetch-test-data)")
    src_path = root / "weights" / "model.int8.safetensors"
    src = load_file(str(src_path))
    result = CAST.quantize([weight_file(src_path)], "bfloat16", {}, transform_context(jobs=2))
    got = read_all(outputs_by_path(result)["model.int8.safetensors"])
    for name, arr in src.items():
        if name.endswith(".scale") or arr.dtype != np.float32:
            np.testing.assert_array_equal(bits(got[name]), bits(arr), err_msg=name)  # untouched
        else:
            np.testing.assert_array_equal(bits(got[name]), bits(arr.astype(ml_dtypes.bfloat16)), err_msg=name)


@pytest.mark.parametrize("qtype", ["bfloat16", "float8_e4m3"])
def test_quantize_is_deterministic_whatever_the_jobs_and_chunks(tmp_path, monkeypatch, qtype, model_set,
                                                                transform_context):
    rng = np.random.default_rng(7)
    src = llama_like(rng)
    src["model.layers.0.mlp.up_proj.weight"] = (rng.standard_normal((300, 200)) * 2).astype(np.float32)
    root = write_model(tmp_path / "in", src, metadata={"format": "pt", "b": "2", "a": "1"}, config=LLAMA_CONFIG)
    files = model_set(root)

    def run(name, jobs):
        result = CAST.quantize(files, qtype, {}, transform_context(jobs=jobs))
        return {p: Path(f).read_bytes() for p, f in outputs_by_path(result).items()}

    one = run("a", 1)
    assert run("b", 1) == one
    assert run("c", 4) == one
    monkeypatch.setattr(stf.io, "CHUNK_BYTES", 4096)  # many chunks per tensor, across processes
    assert run("d", 3) == one


# -- sharding -----------------------------------------------------------------------------


def hf_split(tensors: dict[str, np.ndarray], limit: int):
    hub = pytest.importorskip("huggingface_hub.serialization")
    ordered = {k: tensors[k] for k in sorted(tensors)}  # the order load_file / safe_open.keys() give
    return hub.split_state_dict_into_shards_factory(ordered, get_storage_size=lambda a: a.nbytes,
                                                    filename_pattern="model{suffix}.safetensors",
                                                    max_shard_size=limit)


def shard_model(rng) -> dict[str, np.ndarray]:
    t = llama_like(rng)
    t["model.layers.0.huge.weight"] = rng.standard_normal((100, 100)).astype(np.float32)  # > the limit
    t["model.layers.0.small_bf16"] = np.ones(7, ml_dtypes.bfloat16)
    t["model.layers.1.zero"] = np.zeros((0, 3), np.float32)
    t["a.int"] = np.arange(9, dtype=np.int64)
    return t


@pytest.mark.parametrize("limit", [5_000, 12_000, "2KB"])
def test_shard_matches_huggingface_hub_then_merge_restores(tmp_path, limit, model_set, transform_context):
    from modelbuild.weights import parse_size

    max_bytes = parse_size(limit) if isinstance(limit, str) else limit
    rng = np.random.default_rng(8)
    src = shard_model(rng)
    root = write_model(tmp_path / "in", src, metadata={"format": "pt"}, config=LLAMA_CONFIG)
    (root / "tokenizer.json").write_text("{}")
    files = model_set(root)
    ctx = transform_context(jobs=2)
    result = SHARD.shard(files, max_bytes, ctx)
    out = outputs_by_path(result)
    split = hf_split(src, max_bytes)
    assert split.is_sharded

    shard_files = sorted(p for p in out if p.endswith(".safetensors"))
    assert shard_files == sorted(split.filename_to_tensors)
    assert {"config.json", "tokenizer.json", "model.safetensors.index.json"} <= set(out)
    index_text = Path(out["model.safetensors.index.json"]).read_text()
    index = json.loads(index_text)
    assert index["weight_map"] == split.tensor_to_filename
    assert index["metadata"]["total_size"] == split.metadata["total_size"] == sum(a.nbytes for a in src.values())
    assert index["metadata"]["total_parameters"] == params_of(src)
    assert index_text == json.dumps(index, indent=2, sort_keys=True) + "\n"  # as transformers writes it
    for name, members in split.filename_to_tensors.items():
        loaded = read_all(out[name])
        assert sorted(loaded) == sorted(members)
        for k in members:
            np.testing.assert_array_equal(bits(loaded[k]), bits(src[k]))
        assert raw_header(out[name])[1]["__metadata__"] == {"format": "pt"}
        # each shard is byte for byte what safetensors writes for those tensors
        assert Path(out[name]).read_bytes() == save({k: src[k] for k in members}, metadata={"format": "pt"})
    assert ctx.total == ctx.done == sum(a.nbytes for a in src.values())

    # merge: shards + index -> one model.safetensors, the index gone
    sroot = materialize(out, tmp_path / "sharded")
    merged = outputs_by_path(SHARD.merge(model_set(sroot), transform_context(jobs=2)))
    assert set(merged) == {"model.safetensors", "config.json", "tokenizer.json"}
    assert Path(merged["model.safetensors"]).read_bytes() == save(src, metadata={"format": "pt"})


def test_single_shard_is_a_plain_file_without_index(tmp_path, model_set, transform_context):
    rng = np.random.default_rng(9)
    src = shard_model(rng)
    root = write_model(tmp_path / "in", src, metadata={"format": "pt"})
    files = model_set(root)
    split = hf_split(src, 10**9)
    assert not split.is_sharded and list(split.filename_to_tensors) == ["model.safetensors"]
    # one plain file that fits: nothing to do, the input passes through
    result = SHARD.shard(files, 10**9, transform_context(jobs=2))
    assert result == files
    assert SHARD.merge(files, transform_context(jobs=2)) == files

    # a sharded model re-sharded into one: model.safetensors, no index
    out = outputs_by_path(SHARD.shard(files, 3_000, transform_context(jobs=2)))
    sroot = materialize(out, tmp_path / "sharded")
    again = outputs_by_path(SHARD.shard(model_set(sroot), 10**9, transform_context(jobs=2)))
    assert set(again) == {"model.safetensors"}
    assert Path(again["model.safetensors"]).read_bytes() == save(src, metadata={"format": "pt"})


def test_groups_shard_independently(tmp_path, model_set, transform_context):
    rng = np.random.default_rng(10)
    a, b = llama_like(rng), llama_like(rng)
    root = tmp_path / "in"
    write_model(root, a, metadata={"format": "pt"})
    write_model(root, b, name="model.int8.safetensors")
    write_model(root / "text_encoder", a)
    result = outputs_by_path(SHARD.shard(model_set(root), 8_000, transform_context(jobs=2)))
    for prefix, tensors in (("model", a), ("model.int8", b), ("text_encoder/model", a)):
        split = hf_split(tensors, 8_000)
        index = json.loads(Path(result[f"{prefix}.safetensors.index.json"]).read_text())
        expected = {k: v.replace("model", prefix.rsplit("/", 1)[-1], 1) for k, v in split.tensor_to_filename.items()}
        assert index["weight_map"] == expected
        directory = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        for name in set(expected.values()):
            assert directory + name in result


def test_merge_rejects_an_index_naming_missing_shards(tmp_path, model_set, transform_context):
    rng = np.random.default_rng(11)
    src = llama_like(rng)
    out = outputs_by_path(SHARD.shard(model_set(write_model(tmp_path / "in", src)), 5_000, transform_context(jobs=2)))
    sroot = materialize(out, tmp_path / "sharded")
    files = [f for f in model_set(sroot) if not f.path.startswith("model-00001")]
    with pytest.raises(FormatError, match=r"model\.safetensors\.index\.json: names model-00001"):
        SHARD.merge(files, transform_context(jobs=2))
