"""Weight transforms in a build: QUANTIZE and SHARD as cached DAG steps, and a config
filled in from the weights themselves."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from support import age
from helpers import blob, validate_against_shared_schema

BASE = "NAME tiny\nCONFIG *.json\nMODEL *.safetensors\nDOC README.md\n"


@pytest.fixture
def ctx(tiny_llama):
    return tiny_llama


def layer_bytes(home, result, path):
    layer = next(l for l in result["layers"] if l["annotations"]["org.cncf.model.filepath"] == path)
    return blob(home / "store", layer["digest"])


def test_config_is_derived_from_the_weights(build, home, ctx):
    result = build(ctx, BASE)
    config = result["config"]
    validate_against_shared_schema(config)
    assert config["config"] == {"architecture": "transformer", "format": "safetensors", "paramSize": "156.5K",
                                "precision": "float32"}
    assert config["descriptor"]["family"] == "llama"


def test_explicit_values_win_and_contradictions_warn(build, ctx):
    result = build(ctx, BASE + "PRECISION bfloat16\nFORMAT safetensors\nPARAMSIZE 7B\n")
    assert result["config"]["config"]["precision"] == "bfloat16"
    assert result["config"]["config"]["paramSize"] == "7B"
    assert any("PRECISION bfloat16 contradicts the weights, which say float32" in w for w in result["warnings"])
    assert any("PARAMSIZE 7B contradicts" in w for w in result["warnings"])
    assert not any("FORMAT" in w for w in result["warnings"])


def test_quantize_bfloat16_replaces_the_weights_and_keeps_the_rest(build, home, ctx, tmp_path):
    result = build(ctx, BASE + "QUANTIZE bfloat16\n")
    assert result["config"]["config"]["precision"] == "bfloat16"
    assert result["config"]["config"]["paramSize"] == "156.5K"
    out = tmp_path / "out.safetensors"
    out.write_bytes(layer_bytes(home, result, "model.safetensors"))
    import ml_dtypes

    original = load_file(str(ctx / "model.safetensors"))
    converted = load_file(str(out))
    assert sorted(converted) == sorted(original)
    for name, arr in original.items():
        assert converted[name].dtype == ml_dtypes.bfloat16
        assert np.array_equal(converted[name].view(np.uint16), arr.astype(ml_dtypes.bfloat16).view(np.uint16))
    assert layer_bytes(home, result, "tokenizer.json") == (ctx / "tokenizer.json").read_bytes()
    assert sorted(l["annotations"]["org.cncf.model.filepath"] for l in result["layers"]) == sorted(
        p.name for p in ctx.iterdir() if p.suffix in (".json", ".safetensors") or p.name == "README.md")


def test_changing_the_quant_type_reruns_only_that_step_and_what_follows(build, ctx):
    build(ctx, BASE + "QUANTIZE float16\nSHARD 200KB\n")
    result = build(ctx, BASE + "QUANTIZE bfloat16\nSHARD 200KB\n")
    executed = result["stats"]["executed"]
    assert "transform:1" in executed and "transform:2" in executed
    assert not [s for s in executed if s.startswith(("digest:", "layer:"))]
    assert result["stats"]["bytes_hashed"] == 0
    # changing only the shard size keeps the quantized weights
    again = build(ctx, BASE + "QUANTIZE bfloat16\nSHARD 150KB\n")
    assert "transform:1" not in again["stats"]["executed"] and "transform:2" in again["stats"]["executed"]


def test_shard_and_merge_round_trip(build, home, ctx, tmp_path):
    sharded = build(ctx, BASE + "SHARD 200KB\n")
    names = sorted(l["annotations"]["org.cncf.model.filepath"] for l in sharded["layers"])
    shards = [n for n in names if n.startswith("model-")]
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names
    index = json.loads(layer_bytes(home, sharded, "model.safetensors.index.json"))
    assert set(index["weight_map"].values()) == set(shards)
    merged_tensors = {}
    for shard in shards:
        p = tmp_path / shard
        p.write_bytes(layer_bytes(home, sharded, shard))
        merged_tensors.update(load_file(str(p)))
    original = load_file(str(ctx / "model.safetensors"))
    assert sorted(merged_tensors) == sorted(original)
    assert all(np.array_equal(merged_tensors[k], original[k]) for k in original)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in original.values())
    # SHARD none merges back into one file with the same tensors
    merged = build(ctx, BASE + "SHARD 200KB\nSHARD none\n")
    out = tmp_path / "merged.safetensors"
    out.write_bytes(layer_bytes(home, merged, "model.safetensors"))
    again = load_file(str(out))
    assert all(np.array_equal(again[k], original[k]) for k in original)


@pytest.mark.parametrize(
    "line, message",
    [
        ("QUANTIZE q4_7", "Modelfile:5:1: unknown quant type q4_7 (known: "),
        ("QUANTIZE q8_0", "Modelfile:5:1: quant type q8_0 cannot be applied to safetensors weights (it is for gguf)"),
        ("SHARD 2XB", "Modelfile:5:7: bad size '2XB'"),
        ("QUANTIZE bfloat16 keep=x", "Modelfile:5:19: expected an option --name=value, got 'keep=x'"),
    ],
)
def test_impossible_transforms_fail_at_their_line(mb, ctx, line, message):
    (ctx / "Modelfile").write_text(BASE + line + "\n")
    run = mb("build", "-f", "Modelfile", cwd=ctx)
    assert run.rc == 2, run.err
    assert run.err.startswith(message), run.err
    assert run.err.count("\n") == 1


def test_a_truncated_weight_file_is_a_clear_error_naming_it(mb, ctx):
    data = (ctx / "model.safetensors").read_bytes()
    (ctx / "model.safetensors").write_bytes(data[: len(data) // 2])
    age(ctx / "model.safetensors")
    (ctx / "Modelfile").write_text(BASE)
    run = mb("build", "-f", "Modelfile", "--progress", "quiet", cwd=ctx)
    assert run.rc == 2, run.err
    assert "model.safetensors" in run.err and "Traceback" not in run.err


def test_gguf_q8_0_through_a_modelfile(build, home, tmp_path):
    import gguf

    rng = np.random.default_rng(1)
    ctx = tmp_path / "g"
    ctx.mkdir()
    writer = gguf.GGUFWriter(str(ctx / "model.gguf"), "llama")
    writer.add_block_count(1)
    tensors = {
        "token_embd.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "blk.0.attn_q.weight": rng.standard_normal((32, 32)).astype(np.float32),
        "blk.0.attn_norm.weight": np.ones(32, dtype=np.float32),
    }
    for name, arr in tensors.items():
        writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    age(ctx / "model.gguf")
    result = build(ctx, "NAME g\nMODEL model.gguf\nQUANTIZE q8_0\n")
    config = result["config"]["config"]
    assert config["format"] == "gguf" and config["quantization"] == "q8_0"
    assert config["precision"] == "q8_0,float32"
    out = tmp_path / "out.gguf"
    out.write_bytes(layer_bytes(home, result, "model.gguf"))
    reader = gguf.GGUFReader(str(out))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types == {"token_embd.weight": "Q8_0", "blk.0.attn_q.weight": "Q8_0", "blk.0.attn_norm.weight": "F32"}
    for t in reader.tensors:
        if t.tensor_type.name == "Q8_0":
            expected = gguf.quants.quantize(tensors[t.name], gguf.GGMLQuantizationType.Q8_0)
            assert np.array_equal(np.asarray(t.data).reshape(-1).view(np.uint8), expected.reshape(-1).view(np.uint8))
    # a GGUF split, then merged back: the tensors come back unchanged
    split = build(ctx, "NAME g\nMODEL model.gguf\nQUANTIZE q8_0\nSHARD 3KB\n")
    assert sorted(l["annotations"]["org.cncf.model.filepath"] for l in split["layers"])[0] == "model-00001-of-00002.gguf"


@pytest.mark.llama
def test_convert_to_gguf_and_run_it_in_llama_cpp(build, home, ctx, tmp_path):
    try:
        import llama_cpp
    except ImportError:
        pytest.fail("llama-cpp-python is not installed: pip install -e '.[test]'")
    result = build(ctx, BASE + "CONVERT gguf --outtype=f32\n")
    config = result["config"]
    assert config["config"]["format"] == "gguf" and config["descriptor"]["family"] == "llama"
    assert config["config"]["paramSize"] == "156.5K"
    out = tmp_path / "model.gguf"
    out.write_bytes(layer_bytes(home, result, "model.gguf"))
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, verbose=False)
    tokens = llm.tokenize(b"Hello world", add_bos=True)
    assert tokens[0] == 0 and len(tokens) > 2
    # a new quant type reuses the converted GGUF: only the quantize step and what follows run
    again = build(ctx, BASE + "CONVERT gguf --outtype=f32\nQUANTIZE q8_0\n")
    assert "transform:1" not in again["stats"]["executed"] and "transform:2" in again["stats"]["executed"]
    assert again["config"]["config"]["quantization"] == "q8_0"


def test_cpu_target_defaults_to_gguf_q8_0(build, ctx):
    result = build(ctx, BASE + "TARGET cpu\nTARGET cuda\n", progress="quiet")
    configs = {v["stage"]: v["config"]["config"] for v in result["variants"]}
    assert configs["cpu"]["format"] == "gguf" and configs["cpu"]["quantization"] == "q8_0"
    assert configs["cuda"]["format"] == "safetensors" and configs["cuda"]["precision"] == "bfloat16"
