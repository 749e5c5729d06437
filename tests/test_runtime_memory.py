"""The memory a variant needs to serve (docs/spec/runtime.md §2): weights plus the KV cache,
each checked against the published formula worked out by hand here, for the bundled example
and for a Llama-3-8B-shaped checkpoint (header sizes only: no weights are needed)."""

from __future__ import annotations

import json

import gguf
import pytest

from helpers import read_artifact
from modelbuild.oci.verify import Descriptor
from modelbuild.runtime.memory import AttentionShape, estimate, for_artifact, from_gguf_keys, from_hf_config
from support import EXAMPLES, error_line

BUNDLED = EXAMPLES / "tiny-llama"
# meta-llama/Meta-Llama-3-8B's config.json, the fields that size it
LLAMA3_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "max_position_embeddings": 8192, "vocab_size": 128256,
             "torch_dtype": "bfloat16", "tie_word_embeddings": False}


def llama_params(c: dict) -> int:
    """Parameters of a Llama checkpoint from its config (embeddings, attention with GQA, the
    gated MLP, two norms per layer, the final norm, the output head)."""
    h, f, v, n = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    kv = c["num_key_value_heads"] * (h // c["num_attention_heads"])
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * f + 2 * h
    return v * h + n * per_layer + h + v * h


def hand_kv(layers: int, context: int, kv_heads: int, head_dim: int, bytes_per: float) -> float:
    """2 (K and V) × layers × context × KV heads × head size × bytes per element."""
    return 2 * layers * context * kv_heads * head_dim * bytes_per


def test_llama3_8b_shaped_checkpoint_is_within_10_percent_of_the_formula():
    params = llama_params(LLAMA3_8B)
    assert params == 8_030_261_248  # the published parameter count of Llama 3 8B
    header = 16_000  # a safetensors header of its 291 tensors is about this size
    layer = Descriptor("application/vnd.cncf.model.weight.v1.raw", "sha256:" + "0" * 64, params * 2 + header,
                       {"org.cncf.model.filepath": "model.safetensors"})
    config_bytes = json.dumps(LLAMA3_8B).encode()
    config = Descriptor("application/vnd.cncf.model.weight.config.v1.raw", "sha256:" + "1" * 64, len(config_bytes),
                        {"org.cncf.model.filepath": "config.json"})
    got = for_artifact([config, layer], lambda d: config_bytes)
    weights = params * 2  # bfloat16
    kv = hand_kv(32, 8192, 8, 128, 2)  # = 1 GiB
    assert kv == 2**30
    assert got is not None and got.context == 8192
    assert abs(got.total - (weights + kv)) / (weights + kv) < 0.10
    assert got.kv_cache == kv  # the cache term is exact
    # at 128K tokens, the cache is 16 GiB: the same formula
    assert for_artifact([config, layer], lambda d: config_bytes, context=131072).kv_cache == 16 * 2**30
    assert for_artifact([config, layer], lambda d: config_bytes, kv_type="q8_0").kv_cache == 2**30 * 34 // 64


def test_the_bundled_example_through_inspect(mb, home):
    built = mb("-f", str(BUNDLED / "Modelfile"), "--json", "--progress", "quiet").json()
    manifest, _config = read_artifact(home / "store", built["digest"])
    c = json.loads((BUNDLED / "model" / "config.json").read_text())
    weights = sum(layer["size"] for layer in manifest["layers"] if ".weight.v1." in layer["mediaType"])
    assert weights == (BUNDLED / "model" / "model.safetensors").stat().st_size
    kv = hand_kv(c["num_hidden_layers"], c["max_position_embeddings"], c["num_key_value_heads"], c["head_dim"], 2)
    memory = mb("inspect", "tiny-llama", "--json").json()["memory"]
    assert abs(memory["total"] - (weights + kv)) / (weights + kv) < 0.10
    assert memory == {"weights": weights, "kvCache": kv, "total": weights + kv, "contextLength": 256,
                      "kvCacheType": "f16"}
    longer = mb("inspect", "tiny-llama", "--json", "--context", "1024", "--kv-cache-type", "f32").json()["memory"]
    assert longer["kvCache"] == hand_kv(2, 1024, 2, 16, 4)
    for bad in ("0", str(10**400)):
        assert "a context length is at least 1 and at most 2**31" in error_line(mb("inspect", "tiny-llama",
                                                                                  "--context", bad), 2)
    assert "unknown" in error_line(mb("inspect", "tiny-llama", "--kv-cache-type", "f7"), 2)


def test_gguf_keys_give_the_same_shape_as_config_json(build, home, tiny_llama):
    """A conversion keeps the shape: the GGUF's keys and the config.json it came from agree."""
    from helpers import blob

    result = build(tiny_llama, "NAME tiny\nCONFIG config.json tokenizer.json tokenizer_config.json\n"
                               "MODEL model.safetensors\nCONVERT gguf\n")
    manifest, _ = read_artifact(home / "store", result["digest"])
    (layer,) = [x for x in manifest["layers"] if x["annotations"]["org.cncf.model.filepath"].endswith(".gguf")]
    path = tiny_llama / "m.gguf"
    path.write_bytes(blob(home / "store", layer["digest"]))
    reader = gguf.GGUFReader(str(path))
    keys = {k: f.contents() for k, f in reader.fields.items()}
    from_config = from_hf_config(json.loads((tiny_llama / "config.json").read_text()))
    assert from_gguf_keys(keys) == from_config == AttentionShape(2, 2, 16, 16, 256)


@pytest.mark.parametrize("config", [
    {},  # not a transformer's config
    {"num_hidden_layers": 2},  # no heads
    {"num_hidden_layers": "2", "num_attention_heads": 4, "hidden_size": 64},  # a string, from someone else
    {"num_hidden_layers": True, "num_attention_heads": 4, "hidden_size": 64},
])
def test_configs_that_give_no_shape(config):
    assert from_hf_config(config) is None


def test_a_multimodal_config_uses_its_text_config_and_defaults_apply():
    shape = from_hf_config({"text_config": {"num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 512}})
    assert shape == AttentionShape(4, 8, 64, 64, None)  # no GQA: KV heads = heads; head size = hidden / heads
    with pytest.raises(ValueError, match="no context length"):
        estimate(10, shape)
    assert estimate(10, shape, context=100).kv_cache == 4 * 100 * 8 * 128 * 2


def test_each_variant_of_an_index_has_its_estimate(mb):
    """The multi-platform example: every variant carries the same config.json, so the same
    KV cache; the weights differ (Q8_0 GGUF, bfloat16, float16), and so the totals."""
    assert mb("-f", str(EXAMPLES / "multi-platform" / "Modelfile"), "-q").rc == 0
    variants = mb("inspect", "tiny-llama-multi", "--json", "--context", "512").json()["variants"]
    kv = hand_kv(2, 512, 2, 16, 2)
    assert [v["memory"]["kvCache"] for v in variants] == [kv, kv, kv]
    cpu, cuda, rocm = (v["memory"]["weights"] for v in variants)
    assert cpu < min(cuda, rocm)  # 8.5 bits per weight against 16
    assert abs(cuda - rocm) < 100  # bfloat16 and float16: the same bytes but the headers' dtype names


def _config_layer(data: bytes, path: str = "config.json") -> Descriptor:
    return Descriptor("application/vnd.cncf.model.weight.config.v1.raw", "sha256:" + "2" * 64, len(data),
                      {"org.cncf.model.filepath": path})


@pytest.mark.parametrize("data", [
    b"[" * 100_000 + b"]" * 100_000,  # nested past Python's recursion limit
    b"\xff\xfe not json",
    b"[1, 2]",
    json.dumps({**LLAMA3_8B, "num_hidden_layers": 10**400}).encode(),  # would overflow a float
    json.dumps({**LLAMA3_8B, "num_key_value_heads": -8, "num_attention_heads": 0}).encode(),
])
def test_a_hostile_config_json_gives_no_estimate_and_no_crash(data):
    """config.json comes from the artifact: whatever it holds, the answer is None (or the
    estimate from the next config.json), never an exception."""
    assert for_artifact([_config_layer(data)], lambda d: data, kv_type="q8_0") is None
    good = json.dumps(LLAMA3_8B).encode()
    two = [_config_layer(data), _config_layer(good, "config.json")]  # the same path twice
    blobs = iter([data, good])
    assert for_artifact(two, lambda d: next(blobs)).kv_cache == 2**30
