"""The numpy k-quants (Q2_K … Q6_K) against llama.cpp itself.

References come from the real llama.cpp shipped by llama-cpp-python: a tiny "llama" GGUF
holding the test tensors as F32 is run through ``llama_model_quantize`` with ``pure`` set
(every quantizable tensor becomes the ftype's base type, quantized by
``quantize_row_qN_K_ref`` since there is no importance matrix), and the output tensors'
raw bytes are read back with gguf.GGUFReader. Inputs whose block scales overflow float16
make llama_model_quantize stop ("quantized data validation failed"), so those go straight
to ``ggml_quantize_chunk`` in the same libggml-base the quantizer uses.

llama-cpp-python is a test requirement: without it these tests fail, they do not skip.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize
from modelbuild_plugins.gguf_format import kquants as gguf_kquants
from modelbuild_plugins.gguf_format.kquants import (
    BLOCK_BYTES,
    KQUANT_TYPES,
    dequantize_kquant,
    quantize_kquant,
    row_bytes,
)

REPO = Path(__file__).resolve().parents[2]
# qtype -> (llama_ftype whose base type it is, ggml type)
FTYPES = {
    "q2_k": ("LLAMA_FTYPE_MOSTLY_Q2_K", Q.Q2_K),
    "q3_k": ("LLAMA_FTYPE_MOSTLY_Q3_K_M", Q.Q3_K),
    "q4_k": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", Q.Q4_K),
    "q5_k": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", Q.Q5_K),
    "q6_k": ("LLAMA_FTYPE_MOSTLY_Q6_K", Q.Q6_K),
}


def _cases() -> dict[str, np.ndarray]:
    """Inputs llama_model_quantize accepts: every block scale fits float16."""
    rng = np.random.default_rng(20240611)
    f = np.float32
    c: dict[str, np.ndarray] = {}
    c["normal"] = rng.standard_normal((32, 1024)).astype(f)
    c["uniform"] = rng.uniform(-1, 1, (32, 512)).astype(f)
    c["positive"] = rng.uniform(0.5, 3, (8, 512)).astype(f)  # min > 0, clamped to 0
    c["negative"] = -rng.uniform(0.5, 3, (8, 256)).astype(f)
    z = rng.standard_normal((32, 512)).astype(f)
    z[rng.random(z.shape) < 0.3] = 0
    c["sparse"] = z
    z = rng.standard_normal((16, 512)).astype(f)
    z[:, :32] = 0  # whole sub-blocks of zeros
    z[:, 272:288] = 0
    z[2, 256:] = 0  # a zero super-block
    z[3] = 0  # a zero row
    z[5, 100:] = 0
    c["zero_blocks"] = z
    c["all_zero"] = np.zeros((4, 256), f)
    c["huge"] = (rng.standard_normal((16, 256)) * 3e4).astype(f)
    c["small"] = (rng.standard_normal((16, 256)) * 1e-6).astype(f)
    c["tiny"] = (rng.standard_normal((8, 256)) * 1e-30).astype(f)  # scales underflow f16
    c["subnormal"] = (rng.standard_normal((8, 256)) * 1e-40).astype(f)
    c["mixed_scale"] = (rng.standard_normal((16, 512)) * 10.0 ** rng.integers(-6, 4, (16, 512))).astype(f)
    o = rng.standard_normal((16, 512)).astype(f)
    o[np.arange(16), rng.integers(0, 512, 16)] = rng.choice([-1000, 1000], 16)
    c["outlier"] = o
    c["heavy_tail"] = rng.standard_t(2, (16, 512)).astype(f)
    c["lognormal"] = (rng.lognormal(0, 2, (16, 512)) * rng.choice([-1, 1], (16, 512))).astype(f)
    c["integers"] = rng.integers(-8, 8, (16, 256)).astype(f)  # ties everywhere
    c["halves"] = (rng.integers(-6, 7, (16, 256)) * 0.5).astype(f)
    c["constant"] = np.array([[0.5] * 256, [-2.0] * 256, [1e-3] * 256, [7.0] * 256], f)
    c["ramp"] = np.stack([np.linspace(-a, b, 512, dtype=f) for a, b in [(1, 1), (0, 5), (3, -1), (2, 0)]])
    t = rng.standard_normal((16, 512)).astype(f)
    for r in range(16):  # +m and -m in every 16-value sub-block, either one first
        for j in range(32):
            a, b = rng.choice(16, 2, replace=False)
            m = f(rng.uniform(2, 4))
            t[r, 16 * j + a], t[r, 16 * j + b] = m, -m
    c["sign_ties"] = t
    c["bf16_grid"] = (rng.standard_normal((8, 512)).astype(f).view(np.uint32) & 0xFFFF0000).view(f)
    return c


def _extreme_cases() -> dict[str, np.ndarray]:
    """Finite inputs whose scales overflow float16 (llama_model_quantize rejects them)."""
    rng = np.random.default_rng(99)
    f = np.float32
    c = {f"1e{e}": (rng.standard_normal((8, 256)) * 10.0**e).astype(f) for e in (8, 12, 20, 30, 37)}
    m = rng.standard_normal((8, 512)).astype(f)
    m[:, ::7] *= f(1e30)
    c["mixed_1e30"] = m
    m = rng.standard_normal((8, 512)).astype(f)
    m[:, 5] = f(3.4e38)
    m[:, 300] = f(-3.4e38)
    c["float_max"] = m
    return c


@dataclass
class LlamaRefs:
    error: str | None = None
    cases: dict[str, np.ndarray] = field(default_factory=dict)
    quantized: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (qtype, case)
    types: dict[tuple[str, str], Q] = field(default_factory=dict)
    ggml_quantize: object = None  # (x, qtype) -> bytes via libggml-base


def _write_model(path: Path, tensors: dict[str, np.ndarray]) -> None:
    # what llama_model_quantize needs to load a llama model: block_count, context_length,
    # embedding_length and layer_norm_rms_epsilon (head_count and feed_forward_length
    # are optional; no tokenizer, tensor names are free)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_embedding_length(256)
    w.add_feed_forward_length(1024)
    w.add_head_count(2)
    w.add_layer_norm_rms_eps(1e-5)
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _ggml_quantizer(llama_cpp):
    libdir = Path(llama_cpp.__file__).parent / "lib"
    libs = sorted(p for p in libdir.glob("*ggml-base*") if p.suffix in (".so", ".dylib", ".dll") or ".so." in p.name)
    if not libs:
        raise RuntimeError(f"no libggml-base in {libdir}")
    lib = ctypes.CDLL(str(libs[0]))
    fn = lib.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_void_p]

    def quantize(x: np.ndarray, qtype: str) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, k = x.shape
        out = np.zeros((n, row_bytes(k, qtype)), np.uint8)
        size = fn(int(FTYPES[qtype][1]), x.ctypes.data, out.ctypes.data, 0, n, k, None)
        assert size == out.size
        return out

    return quantize


@pytest.fixture(scope="session")
def llama_refs(tmp_path_factory) -> LlamaRefs:
    """llama.cpp's bytes for every case and type, built once per session."""
    try:
        import llama_cpp
    except ImportError as exc:  # CI installs it; a missing reference must not pass quietly
        return LlamaRefs(error=f"llama-cpp-python is needed for the k-quant reference tests "
                               f"(pip install llama-cpp-python==0.3.36): {exc}")
    refs = LlamaRefs(cases=_cases())
    tmp = tmp_path_factory.mktemp("kquants")
    names = {f"blk.0.case_{i:02d}.weight": case for i, case in enumerate(refs.cases)}
    src = tmp / "f32.gguf"
    _write_model(src, {name: refs.cases[case] for name, case in names.items()})
    for qtype, (ftype, _) in FTYPES.items():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, ftype)
        params.pure = True
        params.nthread = 2
        dst = tmp / f"{qtype}.gguf"
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
        if rc != 0:
            refs.error = f"llama_model_quantize({ftype}) returned {rc}"
            return refs
        for t in gguf.GGUFReader(dst).tensors:
            case = names[t.name]
            refs.types[qtype, case] = t.tensor_type
            refs.quantized[qtype, case] = np.asarray(t.data).reshape(len(refs.cases[case]), -1).copy()
    refs.ggml_quantize = _ggml_quantizer(llama_cpp)
    return refs


def _need(refs: LlamaRefs) -> LlamaRefs:
    if refs.error:
        pytest.fail(refs.error)
    return refs


def _mismatches(ours: np.ndarray, theirs: np.ndarray) -> str:
    bad = np.nonzero((ours != theirs).any(axis=1))[0]
    first = bad[0]
    cols = np.nonzero(ours[first] != theirs[first])[0]
    return f"{bad.size}/{len(ours)} rows differ (row {first}, bytes {cols[:8].tolist()}...)"


@pytest.mark.parametrize("qtype", KQUANT_TYPES)
def test_bytes_match_llama_model_quantize(llama_refs, qtype):
    refs = _need(llama_refs)
    failures = []
    for case, x in refs.cases.items():
        assert refs.types[qtype, case] == FTYPES[qtype][1], f"{case}: llama.cpp wrote {refs.types[qtype, case].name}"
        theirs = refs.quantized[qtype, case]
        ours = quantize_kquant(x, qtype)
        assert ours.shape == theirs.shape and ours.dtype == np.uint8
        if not np.array_equal(ours, theirs):
            failures.append(f"{case}: {_mismatches(ours, theirs)}")
        # one super-block at a time: the narrowest arrays the vectorised code sees
        one = quantize_kquant(x[-1, -256:], qtype)
        if not np.array_equal(one, theirs[-1, -BLOCK_BYTES[qtype]:]):
            failures.append(f"{case}: last super-block alone differs")
    assert not failures, f"{qtype} differs from llama.cpp:\n" + "\n".join(failures)


@pytest.mark.parametrize("qtype", KQUANT_TYPES)
def test_bytes_match_ggml_on_float16_overflow(llama_refs, qtype):
    """Scales beyond float16 (inf d, NaN intermediate values) still give llama.cpp's bytes."""
    refs = _need(llama_refs)
    failures = []
    for case, x in _extreme_cases().items():
        theirs = refs.ggml_quantize(x, qtype)
        ours = quantize_kquant(x, qtype)
        if not np.array_equal(ours, theirs):
            failures.append(f"{case}: {_mismatches(ours, theirs)}")
    assert not failures, f"{qtype} differs from ggml_quantize_chunk:\n" + "\n".join(failures)


@pytest.mark.parametrize("qtype", KQUANT_TYPES)
def test_chunking_and_layout_do_not_change_bytes(monkeypatch, qtype):
    x = np.random.default_rng(5).standard_normal((6, 768)).astype(np.float32)
    whole = quantize_kquant(x, qtype)
    monkeypatch.setitem(gguf_kquants._CHUNK, qtype, 2)  # 18 super-blocks in chunks of 2
    assert np.array_equal(quantize_kquant(x, qtype), whole)
    per_row = np.concatenate([quantize_kquant(r[None], qtype) for r in x])
    assert np.array_equal(per_row, whole)
    # any leading shape, any float dtype, non-contiguous input
    assert np.array_equal(quantize_kquant(x.reshape(2, 3, 768), qtype).reshape(6, -1), whole)
    assert np.array_equal(quantize_kquant(x[0], qtype), whole[0])
    assert np.array_equal(quantize_kquant(x.astype(np.float64), qtype), whole)
    wide = np.zeros((6, 1536), np.float32)
    wide[:, ::2] = x
    assert np.array_equal(quantize_kquant(wide[:, ::2], qtype), whole)
    assert quantize_kquant(np.zeros((0, 512), np.float32), qtype).shape == (0, 2 * BLOCK_BYTES[qtype])


# relative RMSE and largest error relative to the super-block's largest |x|, for
# normal, uniform and heavy-tailed data (observed: q2 .35/.41, q3 .19/.25, q4 .092/.099,
# q5 .047/.061, q6 .026/.023)
BOUNDS = {"q2_k": (0.40, 0.50), "q3_k": (0.22, 0.30), "q4_k": (0.11, 0.12), "q5_k": (0.06, 0.075),
          "q6_k": (0.032, 0.03)}


@pytest.mark.parametrize("qtype", KQUANT_TYPES)
def test_dequantized_values_are_close(qtype):
    rng = np.random.default_rng(11)
    rel_rmse, rel_max = BOUNDS[qtype]
    for x in (rng.standard_normal((16, 1024)), rng.uniform(-1, 1, (16, 1024)), rng.standard_t(3, (16, 1024))):
        x = x.astype(np.float32)
        q = quantize_kquant(x, qtype)
        y = dequantize_kquant(q, qtype, x.shape)
        assert y.dtype == np.float32 and y.shape == x.shape
        assert np.array_equal(y, dequantize(q, FTYPES[qtype][1]))
        err = y - x
        assert np.sqrt(np.mean(err**2) / np.mean(x**2)) < rel_rmse
        block_err = np.abs(err).reshape(-1, 256).max(1) / np.abs(x).reshape(-1, 256).max(1)
        assert block_err.max() < rel_max
    zeros = np.zeros((2, 512), np.float32)
    assert not dequantize_kquant(quantize_kquant(zeros, qtype), qtype, zeros.shape).any()


@pytest.mark.parametrize("shape", [(32, 1), (16, 3), (32, 8), (16, 16), (32, 4096), (16, 70001)])
def test_sums_run_in_index_order(shape):
    """C adds values one by one; numpy must reduce axis 0 row by row, not pairwise."""
    rng = np.random.default_rng(shape[1])
    a = (rng.standard_normal(shape) * 10.0 ** rng.integers(-4, 5, shape)).astype(np.float32)
    acc = np.zeros(shape[1], np.float32)
    for row in a:
        acc += row
    assert np.array_equal(gguf_kquants._seqsum(a), acc)
    assert np.array_equal(gguf_kquants._seqsum(np.asfortranarray(a)), acc)


@pytest.mark.parametrize("qtype", KQUANT_TYPES)
@pytest.mark.parametrize("k", [1, 32, 255, 257, 384, 1000])
def test_row_length_must_be_a_multiple_of_256(qtype, k):
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_kquant(np.ones((2, k), np.float32), qtype)


def test_sizes_and_type_names():
    assert {q: BLOCK_BYTES[q] for q in KQUANT_TYPES} == {
        q: gguf.GGML_QUANT_SIZES[t][1] for q, (_, t) in FTYPES.items()}
    assert row_bytes(4096, "Q4_K") == 16 * 144
    assert quantize_kquant(np.ones((1, 256), np.float32), "Q6_K").shape == (1, 210)
    with pytest.raises(ValueError, match="not a k-quant type"):
        quantize_kquant(np.ones((1, 256), np.float32), "q4_0")
    with pytest.raises(ValueError):
        quantize_kquant(np.float32(1), "q4_k")


def test_import_is_light():
    code = ("import sys; import modelbuild_plugins.gguf_format.kquants; "
            "print(sorted(m for m in ('numpy', 'gguf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
