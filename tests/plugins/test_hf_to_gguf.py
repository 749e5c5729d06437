"""The hf-to-gguf converter: llama.cpp loads what it writes and computes what Hugging Face does.

Expectations come from outside the plugin: logits from the numpy forward pass in
``tests/models.py`` (checked once against transformers), token ids from the ``tokenizers``
library, files read back with ``gguf.GGUFReader``, and llama.cpp itself
(llama-cpp-python) loading and running every file. Without llama-cpp-python these tests
fail: they are the only proof that the output runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from modelbuild_plugins import hf_to_gguf
from modelbuild_plugins.hf_to_gguf import LlamaAdapter
from models import (
    ARCHS,
    TOKENIZERS,
    copy_bundled,
    forward,
    load_checkpoint,
    make_tiny_checkpoint,
    token_count,
)

from modelbuild.errors import UsageError
from modelbuild.testing import plugin_host
from modelbuild.weights import FormatError, Output, TransformContext, WeightFile

TEXTS = (
    "Hello, world! I've been told it's fine. WE'LL SEE, won't we?",
    "Café, naïve, résumé, Zürich, Ærøskøbing; Привет, мир! Γειά σου κόσμε",
    "你好，世界！今天天气很好。こんにちは、世界。안녕하세요",
    "Emoji: 🙂 🦙 👍🏽 🚀 ❤️ 😶‍🌫️ 🇫🇷",
    "numbers 12345 3.14159 2024-01-31 1000000",
    "  leading spaces\n\nnewlines\ttabs   and trailing  ",
    "def main(argv: list[str]) -> int:\n    return 0\n",
)
PROMPT = "The llama 🦙 walked up the mountain, carrying a tiny model. Café? 你好！ I'll see 42 of them."


# -- helpers ------------------------------------------------------------------------------------


def llama_cpp() -> Any:
    try:
        import llama_cpp as module
    except ImportError as exc:  # a failure, not a skip: nothing else proves the output runs
        pytest.fail(f"llama-cpp-python is required to test hf-to-gguf ({exc}); install it with "
                    f"`pip install llama-cpp-python==0.3.36`", pytrace=False)
    return module


def hf_tokenizer(path: Path) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        pytest.fail(f"the tokenizers library is required to test hf-to-gguf ({exc}); `pip install tokenizers`",
                    pytrace=False)
    return Tokenizer.from_file(str(path))


HOST = plugin_host()


@pytest.fixture
def convert(model_set, transform_context):
    """``convert(directory, files=None, host=HOST, jobs=1, logs=None, **options)``: the checkpoint
    in *directory* (or *files*) converted by hf-to-gguf: (the result, the one GGUF's path); the
    context's log messages are added to *logs*."""

    def run(directory: Path, *, files: list[WeightFile] | None = None, host: Any = HOST, jobs: int = 1,
            logs: list[str] | None = None, **options: Any) -> tuple[list[Any], Path]:
        converter = host.converters.get("hf-to-gguf")
        options.setdefault("outtype", converter.outtypes[0])
        ctx = transform_context(jobs=jobs, host=host)
        try:
            result = converter.convert(files if files is not None else model_set(directory), options, ctx)
        finally:
            if logs is not None:
                logs.extend(ctx.logs)
        ggufs = [r for r in result if isinstance(r, Output) and r.path.endswith(".gguf")]
        assert len(ggufs) == 1, result
        return result, Path(ggufs[0].file)

    return run


def load(path: Path, **kwargs: Any) -> Any:
    return llama_cpp().Llama(model_path=str(path), logits_all=True, n_ctx=64, verbose=False, n_threads=2,
                             type_k=0, type_v=0, **kwargs)  # F32 KV cache: no rounding beyond the weights'


def llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    llm = load(path)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def reader(path: Path) -> Any:
    import gguf

    return gguf.GGUFReader(str(path))


def kv(r: Any, key: str) -> Any:
    field = r.fields[key]
    return field.contents()


def tensor_types(r: Any) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in r.tensors}


def prompt_ids(directory: Path) -> list[int]:
    ids = hf_tokenizer(directory / "tokenizer.json").encode(PROMPT, add_special_tokens=False).ids
    assert 16 <= len(ids) <= 64
    return ids


def rounded(weights: dict[str, np.ndarray], outtype: str) -> dict[str, np.ndarray]:
    """The weights as the GGUF file holds them: 1-D tensors F32, the rest rounded row by row
    (q8_0 blocks lie along rows, so this commutes with the q/k row permutation)."""
    import gguf
    from gguf.quants import dequantize, quantize

    if outtype == "f32":
        return weights
    out = {}
    for name, w in weights.items():
        if w.ndim < 2:
            out[name] = w
        elif outtype == "f16" or (outtype == "q8_0" and w.shape[-1] % 32):
            out[name] = w.astype(np.float16).astype(np.float32)
        else:
            qtype = gguf.GGMLQuantizationType[outtype.upper()]
            out[name] = dequantize(quantize(w, qtype), qtype).reshape(w.shape)
    return out


def activations(weights: dict[str, np.ndarray], outtype: str) -> Any:
    """llama.cpp's CPU matrix products round their input to the weight's vec_dot type:
    F16 for F16 weights, BF16 for BF16, Q8_0 for Q8_0 (and F32 stays F32)."""
    import gguf
    from gguf.quants import dequantize, quantize

    def round_input(name: str, x: np.ndarray) -> np.ndarray:
        if outtype == "f32":
            return x
        if outtype == "f16" or (outtype == "q8_0" and weights[name].shape[-1] % 32):
            return x.astype(np.float32).astype(np.float16)
        qtype = gguf.GGMLQuantizationType[outtype.upper()]
        return dequantize(quantize(x.astype(np.float32), qtype), qtype).reshape(x.shape)

    return round_input


# -- registration -------------------------------------------------------------------------------


def test_registered_through_entry_points():
    converter = HOST.converters.get("hf-to-gguf")
    assert (converter.source_format, converter.target_format) == ("safetensors", "gguf")
    assert converter.outtypes == ("f16", "f32", "bf16", "q8_0")
    architectures = HOST.extension("modelbuild_register_architectures", "architecture")
    assert {"llama", "mistral", "qwen2"} <= set(architectures.names())
    assert architectures.owner("llama") == "hf-gguf"
    mistral = architectures.get("mistral")
    assert mistral.arch == "llama" and mistral.hf_architectures == ("MistralForCausalLM",)
    assert HOST.converter_for("safetensors", "gguf") is converter


# -- llama.cpp runs the converted model ---------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_llama_cpp_logits_match_reference(arch, tmp_path, convert):
    src = make_tiny_checkpoint(tmp_path / arch, arch)
    _, path = convert(src, outtype="f32")
    ids = prompt_ids(src)
    got = llama_logits(path, ids)
    config, weights = load_checkpoint(src)
    ref = forward(config, weights, ids)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-3, np.abs(got - ref).max()
    # the logits are not trivially close: different positions and tokens differ widely
    assert np.abs(ref).max() > 3 and np.std(ref[1:] - ref[:-1]) > 0.5
    r = reader(path)
    assert kv(r, "general.architecture") == ("qwen2" if arch == "qwen2" else "llama")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("outtype,tolerance", [("f16", 0.005), ("bf16", 0.01), ("q8_0", 0.015)])
def test_outtypes_load_and_compute(arch, outtype, tolerance, tmp_path, convert):
    import gguf

    src = make_tiny_checkpoint(tmp_path / arch, arch)
    _, path = convert(src, outtype=outtype)
    r = reader(path)
    types = tensor_types(r)
    for name, ttype in types.items():
        t = next(t for t in r.tensors if t.name == name)
        if len(t.shape) == 1 or name.endswith("_norm.weight"):
            assert ttype == "F32", name
        else:
            assert ttype == outtype.upper(), name
    assert "blk.0.attn_norm.weight" in types and types["blk.0.ffn_down.weight"] == outtype.upper()
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    assert kv(r, "general.file_type") == int(ftype)
    assert kv(r, "general.quantization_version") == gguf.GGML_QUANT_VERSION
    ids = prompt_ids(src)
    config, weights = load_checkpoint(src)
    got = llama_logits(path, ids)
    ref = forward(config, rounded(weights, outtype), ids, activations(weights, outtype))
    # weights and matrix-product inputs rounded as llama.cpp rounds them: what is left is
    # float32 arithmetic, amplified by attention this peaked (the rounding alone moves the
    # logits by 1-5 % of their range)
    assert np.abs(got - ref).max() < tolerance * np.abs(ref).max()


def test_default_outtype_is_f16(tmp_path, transform_context, model_set):
    src = make_tiny_checkpoint(tmp_path / "m", "llama")
    converter = HOST.converters.get("hf-to-gguf")
    result = converter.convert(model_set(src), {}, transform_context(host=HOST))
    path = next(r.file for r in result if isinstance(r, Output))
    assert tensor_types(reader(Path(path)))["blk.1.attn_q.weight"] == "F16"


def test_bundled_example_q8_0_falls_back_to_f16_for_odd_rows(tmp_path, convert):
    """tiny-llama's intermediate size 172 is not a multiple of Q8_0's 32-element block:
    ffn_down (rows of 172) is F16, as llama.cpp's converter falls back; the rest Q8_0."""
    src = copy_bundled(tmp_path / "tiny-llama")
    logs: list[str] = []
    _, path = convert(src, outtype="q8_0", logs=logs)
    types = tensor_types(reader(path))
    assert types["blk.0.ffn_down.weight"] == "F16" and types["blk.0.ffn_up.weight"] == "Q8_0"
    assert types["output.weight"] == "Q8_0" and types["output_norm.weight"] == "F32"
    assert any("blk.0.ffn_down.weight" in m and "F16" in m for m in logs)
    ids = prompt_ids(src)
    config, weights = load_checkpoint(src)
    got = llama_logits(path, ids)
    ref = forward(config, rounded(weights, "q8_0"), ids, activations(weights, "q8_0"))
    assert np.abs(got - ref).max() < 0.015 * np.abs(ref).max()


def test_bfloat16_checkpoint(tmp_path, convert):
    src = make_tiny_checkpoint(tmp_path / "bf", "qwen2", dtype="bfloat16")
    _, path = convert(src, outtype="f32")
    ids = prompt_ids(src)
    config, weights = load_checkpoint(src)  # the bfloat16 values, widened
    assert np.abs(llama_logits(path, ids) - forward(config, weights, ids)).max() < 1e-3


# -- the tokenizer ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_tokenization_matches_hugging_face(kind, tmp_path, convert):
    arch = {"qwen2": "qwen2", "llama-spm": "mistral"}.get(kind, "llama")
    src = make_tiny_checkpoint(tmp_path / kind, arch, tokenizer=kind)
    _, path = convert(src)
    llm = llama_cpp().Llama(model_path=str(path), vocab_only=True, verbose=False)
    hf = hf_tokenizer(src / "tokenizer.json")
    _, specials = token_count(kind)
    names = list(specials)
    texts = list(TEXTS) + [
        f"{names[0]}Hello{names[-1]} world",
        " ".join(f"{s}text {s}" for s in names) + " end",
        f"{names[-1]}\n{names[0]}  x",
    ]
    for text in texts:
        ours = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        theirs = hf.encode(text, add_special_tokens=False).ids
        assert ours == theirs, (text, ours, theirs)
        # and llama.cpp decodes them as Hugging Face does
        decoded = llm.detokenize(ours, special=True).decode("utf-8")
        if kind == "llama-spm":  # the decoder's Strip removes the prefix space, llama.cpp keeps it
            decoded = decoded.removeprefix(" ")
        assert decoded == hf.decode(theirs, skip_special_tokens=False)
    # add_bos as the tokenizer's post-processor says
    with_bos = llm.tokenize(b"hello", add_bos=True, special=False)
    assert with_bos == hf.encode("hello", add_special_tokens=True).ids


def _vocab_keys(path: Path) -> dict[str, Any]:
    r = reader(path)
    return {k: kv(r, k) for k in r.fields if k.startswith("tokenizer.")}


def test_byte_level_vocab_keys(tmp_path, convert):
    import gguf

    src = make_tiny_checkpoint(tmp_path / "q", "qwen2")
    _, path = convert(src)
    keys = _vocab_keys(path)
    doc = json.loads((src / "tokenizer.json").read_text())
    config = json.loads((src / "config.json").read_text())
    n, specials = token_count("qwen2")
    assert config["vocab_size"] > n  # padded, as Qwen's embeddings are
    tokens, types = keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == config["vocab_size"]
    assert keys["tokenizer.ggml.model"] == "gpt2" and keys["tokenizer.ggml.pre"] == "qwen2"
    for text, i in doc["model"]["vocab"].items():
        assert tokens[i] == text and types[i] == gguf.TokenType.NORMAL
    for name in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert tokens[specials[name]] == name and types[specials[name]] == gguf.TokenType.CONTROL
    assert types[specials["<tool_call>"]] == gguf.TokenType.USER_DEFINED
    assert tokens[n:] == [f"[PAD{i}]" for i in range(n, config["vocab_size"])]
    assert set(types[n:]) == {gguf.TokenType.UNUSED}
    assert keys["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m
                                             for m in doc["model"]["merges"]]
    assert "tokenizer.ggml.scores" not in keys  # as llama.cpp's gpt2 vocab
    # special ids: eos and pad from tokenizer_config.json, bos from config.json
    assert keys["tokenizer.ggml.eos_token_id"] == specials["<|im_end|>"]
    assert keys["tokenizer.ggml.padding_token_id"] == specials["<|endoftext|>"]
    assert keys["tokenizer.ggml.bos_token_id"] == specials["<|endoftext|>"]
    # a ByteLevel post-processor adds neither BOS nor EOS (llama.cpp's gguf-py), as tokenizer_config.json agrees
    assert keys["tokenizer.ggml.add_bos_token"] is False and keys["tokenizer.ggml.add_eos_token"] is False
    tc = json.loads((src / "tokenizer_config.json").read_text())
    assert keys["tokenizer.chat_template"] == tc["chat_template"]


def test_bundled_example_vocab_keys(tmp_path, convert):
    src = copy_bundled(tmp_path / "tiny-llama")
    _, path = convert(src)
    keys = _vocab_keys(path)
    assert keys["tokenizer.ggml.pre"] == "gpt-2"
    assert (keys["tokenizer.ggml.bos_token_id"], keys["tokenizer.ggml.eos_token_id"],
            keys["tokenizer.ggml.unknown_token_id"]) == (0, 1, 2)
    assert keys["tokenizer.ggml.add_bos_token"] is True  # TemplateProcessing "<s> $A"
    r = reader(path)
    assert kv(r, "llama.context_length") == 256 and kv(r, "llama.block_count") == 2
    assert kv(r, "llama.attention.head_count_kv") == 2 and kv(r, "llama.rope.dimension_count") == 16
    assert kv(r, "llama.feed_forward_length") == 172 and kv(r, "llama.vocab_size") == 512
    assert abs(kv(r, "llama.attention.layer_norm_rms_epsilon") - 1e-6) < 1e-12
    assert kv(r, "general.name") == "Tiny Llama"  # the README's model_name


def test_sentencepiece_vocab_keys(tmp_path, convert):
    import gguf

    src = make_tiny_checkpoint(tmp_path / "m", "mistral")
    _, path = convert(src)
    keys = _vocab_keys(path)
    assert keys["tokenizer.ggml.model"] == "llama" and keys["tokenizer.ggml.pre"] == "default"
    # the normalizer prepends ▁ and tokenizer_config.json says nothing: llama.cpp's default (true), unwritten
    assert "tokenizer.ggml.add_space_prefix" not in keys and "tokenizer.ggml.merges" not in keys
    tokens, types, scores = (keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.token_type"],
                             keys["tokenizer.ggml.scores"])
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and set(types[:3]) == {gguf.TokenType.CONTROL}
    assert tokens[3 + 0x0A] == "<0x0A>" and set(types[3:259]) == {gguf.TokenType.BYTE}
    doc = json.loads((src / "tokenizer.json").read_text())
    first = {}
    for rank, (a, b) in enumerate(doc["model"]["merges"]):
        first.setdefault(a + b, rank)
    for text, i in doc["model"]["vocab"].items():
        if text in first:
            assert scores[i] == -first[text]  # earlier merges score higher
    assert (keys["tokenizer.ggml.bos_token_id"], keys["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert keys["tokenizer.ggml.add_bos_token"] is True


def test_pre_tokenizer_derivation():
    derive = hf_to_gguf.derive_pre
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert derive({"pre_tokenizer": byte_level}, "t") == "gpt-2"

    def split(regex: str) -> dict[str, Any]:
        return {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {**byte_level, "use_regex": False}]}}

    for regex, name in hf_to_gguf.PRE_TOKENIZER_REGEXES.items():
        assert derive(split(regex), "t") == name
    digits = {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, byte_level]}}
    assert derive(digits, "t") == "starcoder"
    with pytest.raises(FormatError, match=r"t: pre-tokenizer .*not one llama.cpp implements.*llama-bpe") as info:
        derive(split(r"\w+|\s+"), "t")
    assert "--pre" in info.value.hint
    with pytest.raises(FormatError, match="add_prefix_space"):
        derive({"pre_tokenizer": {**byte_level, "add_prefix_space": True}}, "t")


def test_unknown_pre_tokenizer_is_an_error_unless_named(tmp_path, convert):
    src = make_tiny_checkpoint(tmp_path / "m", "llama")
    doc = json.loads((src / "tokenizer.json").read_text())
    doc["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\p{L}+|\p{N}+|\s+|[^\s\p{L}\p{N}]+"}, "behavior": "Isolated",
         "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (src / "tokenizer.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match="tokenizer.json: pre-tokenizer Sequence.*supported: .*gpt-2"):
        convert(src)
    _, path = convert(src, pre="gpt-2")
    assert _vocab_keys(path)["tokenizer.ggml.pre"] == "gpt-2"


# -- layout -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_sharded_input_gives_the_same_bytes(arch, tmp_path, convert):
    single = make_tiny_checkpoint(tmp_path / "single", arch)
    sharded = make_tiny_checkpoint(tmp_path / "sharded", arch, sharded=True)
    assert (sharded / "model.safetensors.index.json").exists() and not (sharded / "model.safetensors").exists()
    assert len(list(sharded.glob("model-0000?-of-00002.safetensors"))) == 2
    _, a = convert(single, outtype="q8_0")
    result, b = convert(sharded, outtype="q8_0", jobs=4)
    assert a.read_bytes() == b.read_bytes()
    assert not any(r.path.endswith((".safetensors", ".index.json")) for r in result)


def test_result_set(tmp_path, convert, model_set):
    src = make_tiny_checkpoint(tmp_path / "m", "llama", sharded=True)
    (src / "README.md").write_text("# tiny\n")
    files = model_set(src)
    result, path = convert(src)
    kept = [f for f in files if not f.path.endswith((".safetensors", ".index.json"))]
    assert [r for r in result if isinstance(r, WeightFile)] == kept  # passed through, unchanged
    out = [r for r in result if isinstance(r, Output)]
    assert [(o.path, o.kind) for o in out] == [("model.gguf", "model")]
    assert path.read_bytes()[:4] == b"GGUF"


def test_weights_beside_the_checkpoint_are_left_out(tmp_path, convert):
    """Mistral's repositories hold consolidated.safetensors beside the shards and index."""
    src = make_tiny_checkpoint(tmp_path / "m", "mistral", sharded=True)
    shutil.copy(src / "model-00001-of-00002.safetensors", src / "consolidated.safetensors")
    logs: list[str] = []
    result, _ = convert(src, logs=logs)
    assert not any(r.path.endswith(".safetensors") for r in result)
    assert any("consolidated.safetensors is not part of the checkpoint" in m for m in logs)


def test_model_in_a_subdirectory(tmp_path, convert, model_set):
    src = make_tiny_checkpoint(tmp_path / "repo" / "llm", "llama")
    files = model_set(tmp_path / "repo")
    assert files[0].path.startswith("llm/")
    result, _ = convert(src, files=files)
    assert "llm/model.gguf" in [r.path for r in result]


def test_tensor_names_and_order(tmp_path, convert):
    src = make_tiny_checkpoint(tmp_path / "q", "qwen2")
    _, path = convert(src)
    names = [t.name for t in reader(path).tensors]
    assert names[0] == "token_embd.weight" and names[-1] == "output_norm.weight"
    assert "output.weight" not in names  # tied: llama.cpp reuses token_embd
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= set(names)
    blocks = [int(n.split(".")[1]) for n in names if n.startswith("blk.")]
    assert blocks == sorted(blocks)


def test_q_and_k_are_permuted_for_llama_only(tmp_path, convert):
    from gguf.quants import dequantize

    for arch, permuted in (("llama", True), ("qwen2", False)):
        src = make_tiny_checkpoint(tmp_path / arch, arch)
        _, path = convert(src, outtype="f32")
        _, weights = load_checkpoint(src)
        tensors = {t.name: t for t in reader(path).tensors}
        for hf, gg, heads in (("q_proj", "attn_q", 4), ("k_proj", "attn_k", 2)):
            w = weights[f"model.layers.1.self_attn.{hf}.weight"]
            t = tensors[f"blk.1.{gg}.weight"]
            got = dequantize(t.data, t.tensor_type).reshape(w.shape)
            expect = hf_to_gguf.permute_rope(w, heads) if permuted else w
            assert np.array_equal(got, expect)
            assert np.array_equal(got, w) is (not permuted)


def test_parallel_writing_gives_the_same_bytes(tmp_path, convert):
    src = make_tiny_checkpoint(tmp_path / "m", "mistral")
    _, a = convert(src, outtype="bf16", jobs=1)
    _, b = convert(src, outtype="bf16", jobs=3)
    assert a.read_bytes() == b.read_bytes()


def test_llama3_rope_scaling_adds_rope_freqs(tmp_path, convert):
    src = make_tiny_checkpoint(tmp_path / "m", "llama", tokenizer="llama-bpe")
    config = json.loads((src / "config.json").read_text())
    config["rope_scaling"] = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 64, "rope_type": "llama3"}
    config["rope_theta"] = 500000.0
    (src / "config.json").write_text(json.dumps(config))
    _, path = convert(src)
    r = reader(path)
    t = next(t for t in r.tensors if t.name == "rope_freqs.weight")
    assert t.tensor_type.name == "F32" and list(t.shape) == [8]
    factors = np.asarray(t.data)
    assert factors[0] == 1.0 and factors[-1] == 8.0
    assert kv(r, "tokenizer.ggml.pre") == "llama-bpe"
    llm = load(path)
    llm.eval(prompt_ids(src))  # llama.cpp loads and runs it


def test_third_party_adapter(tmp_path, convert):
    """Adding an architecture is one small plugin."""
    from modelbuild.hookspecs import hookimpl

    class MyLlama(LlamaAdapter):
        name = "my-llama"
        gguf_arch = "llama"
        summary = "a renamed llama"
        hf_architectures = ("MyLlamaForCausalLM",)

    class Plugin:
        @staticmethod
        @hookimpl
        def modelbuild_register_architectures(registry):
            registry.add(MyLlama())

    host = plugin_host(Plugin())
    src = make_tiny_checkpoint(tmp_path / "m", "llama")
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["MyLlamaForCausalLM"]
    (src / "config.json").write_text(json.dumps(config))
    _, path = convert(src, host=host, outtype="f32")
    ids = prompt_ids(src)
    c, w = load_checkpoint(src)
    assert np.abs(llama_logits(path, ids) - forward(c, w, ids)).max() < 1e-3


# -- errors -------------------------------------------------------------------------------------


def test_unsupported_architecture(tmp_path, convert):
    src = make_tiny_checkpoint(tmp_path / "m", "llama")
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["GPTNeoXForCausalLM"]
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(FormatError, match="config.json: architecture GPTNeoXForCausalLM is not supported") as info:
        convert(src)
    assert "LlamaForCausalLM (llama)" in info.value.hint and "MistralForCausalLM (mistral)" in info.value.hint
    assert "Qwen2ForCausalLM (qwen2)" in info.value.hint


def test_missing_tokenizer(tmp_path, convert):
    src = make_tiny_checkpoint(tmp_path / "m", "llama")
    (src / "tokenizer.json").unlink()
    with pytest.raises(FormatError, match=r"^tokenizer.json: missing: .*tokenizer"):
        convert(src)


def test_missing_config(tmp_path, convert):
    src = make_tiny_checkpoint(tmp_path / "m", "qwen2")
    (src / "config.json").unlink()
    with pytest.raises(FormatError, match=r"^config.json: missing"):
        convert(src)


def test_index_names_a_missing_shard(tmp_path, convert, model_set):
    src = make_tiny_checkpoint(tmp_path / "m", "llama", sharded=True)
    files = [f for f in model_set(src) if f.path != "model-00002-of-00002.safetensors"]
    with pytest.raises(FormatError, match=r"^model.safetensors.index.json: names shard "
                                          r"'model-00002-of-00002.safetensors', which is not in the model set"):
        convert(src, files=files)


@pytest.mark.parametrize("key,value,tensor,expected,found", [
    ("num_key_value_heads", 4, "model.layers.0.self_attn.k_proj.weight", [64, 64], [32, 64]),
    ("intermediate_size", 100, "model.layers.0.mlp.gate_proj.weight", [100, 64], [128, 64]),
    ("vocab_size", 999, "model.embed_tokens.weight", [999, 64], None),
])
def test_shapes_contradicting_config(key, value, tensor, expected, found, tmp_path, convert):
    src = make_tiny_checkpoint(tmp_path / "m", "llama", sharded=True)
    config = json.loads((src / "config.json").read_text())
    config[key] = value
    (src / "config.json").write_text(json.dumps(config))
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shard = index["weight_map"][tensor]
    with pytest.raises(FormatError) as info:
        convert(src)
    message = str(info.value)
    assert message.startswith(f"{shard}: tensor {tensor!r} has shape ")
    if found is not None:
        assert f"has shape {found}, but config.json says {expected}" in message
    assert key in message


def test_missing_tensor(tmp_path, convert):
    from safetensors.numpy import load_file, save_file

    src = make_tiny_checkpoint(tmp_path / "m", "llama")
    weights = load_file(str(src / "model.safetensors"))
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, str(src / "model.safetensors"))
    with pytest.raises(FormatError, match=r"^model.safetensors: tensor 'model.layers.1.mlp.up_proj.weight' is "
                                          r"missing"):
        convert(src)


def test_unknown_tensor(tmp_path, convert):
    from safetensors.numpy import load_file, save_file

    src = make_tiny_checkpoint(tmp_path / "m", "llama")
    weights = load_file(str(src / "model.safetensors"))
    weights["model.vision_tower.proj.weight"] = np.zeros((2, 2), np.float32)
    save_file(weights, str(src / "model.safetensors"))
    with pytest.raises(FormatError, match="tensor 'model.vision_tower.proj.weight' has no GGUF name"):
        convert(src)


def test_vocab_larger_than_config(tmp_path, convert):
    from safetensors.numpy import load_file, save_file

    src = make_tiny_checkpoint(tmp_path / "m", "llama")
    config = json.loads((src / "config.json").read_text())
    config["vocab_size"] = 100
    (src / "config.json").write_text(json.dumps(config))
    weights = load_file(str(src / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        weights[name] = weights[name][:100]
    save_file(weights, str(src / "model.safetensors"))
    with pytest.raises(FormatError, match=r"^config.json: vocab_size=100 is smaller than the tokenizer's 512"):
        convert(src)


def test_options_and_context(tmp_path, convert, transform_context, model_set):
    src = make_tiny_checkpoint(tmp_path / "m", "llama")
    converter = HOST.converters.get("hf-to-gguf")
    bare = TransformContext(tmp_path / "bare")
    with pytest.raises(UsageError, match="ctx.plugins"):
        converter.convert(model_set(src), {"outtype": "f16"}, bare)
    _, path = convert(src, name="tiny test")
    assert kv(reader(path), "general.name") == "tiny test"


def test_no_weights(tmp_path, convert, model_set):
    src = make_tiny_checkpoint(tmp_path / "m", "llama")
    files = [f for f in model_set(src) if not f.path.endswith(".safetensors")]
    with pytest.raises(FormatError, match="no .safetensors weights"):
        convert(src, files=files)


def test_quantized_checkpoint_is_refused(tmp_path, convert):
    from safetensors.numpy import load_file, save_file

    src = make_tiny_checkpoint(tmp_path / "m", "llama")
    weights = load_file(str(src / "model.safetensors"))
    weights["model.layers.0.mlp.up_proj.weight"] = weights["model.layers.0.mlp.up_proj.weight"].astype(np.int8)
    save_file(weights, str(src / "model.safetensors"))
    with pytest.raises(FormatError, match="is I8: hf-to-gguf reads F32, F16, BF16"):
        convert(src)


def test_duplicate_token_texts_are_refused(tmp_path, convert):
    src = make_tiny_checkpoint(tmp_path / "m", "llama")
    doc = json.loads((src / "tokenizer.json").read_text())
    text = next(t for t, i in doc["model"]["vocab"].items() if i == 100)
    doc["added_tokens"].append({"id": 3, "content": text, "special": False, "normalized": False,
                                "lstrip": False, "rstrip": False, "single_word": False})
    (src / "tokenizer.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match="ids 3 and 100 both have the text"):
        convert(src)
