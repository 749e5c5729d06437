"""Tiny Hugging Face checkpoints for tests, and a numpy reference forward pass.

:func:`make_tiny_checkpoint` writes a random ``llama``, ``mistral`` or ``qwen2`` checkpoint
in Hugging Face's layout (``config.json`` as transformers writes it, ``model.safetensors``
or two shards and an index, a real BPE ``tokenizer.json``, ``tokenizer_config.json``,
``generation_config.json``): hidden size 64, 2 layers, 4 heads, 2 KV heads, a fixed seed.
Weights are large enough (std 0.2 in attention) that attention is far from uniform, so a
wrong RoPE layout or head order changes the logits by a lot.

Tokenizers (``TOKENIZERS``), trained with the ``tokenizers`` library on :data:`CORPUS`:

``gpt-2``      the bundled example's byte-level BPE (Modelfile.examples/tiny-llama/model)
``llama-bpe``  Llama 3's layout: Split(Llama 3 regex) + ByteLevel, ignore_merges, <|begin_of_text|>
``qwen2``      Qwen2's layout: NFC, Split(Qwen2 regex) + ByteLevel, <|endoftext|>, <|im_start|>,
               <|im_end|> (special) and <tool_call> (not special) added after the vocabulary
``llama-spm``  Llama 2 / Mistral's SentencePiece-style BPE: byte fallback, <0x00>…<0xFF> tokens,
               ``▁`` normalizer, merges listing every pair whose concatenation is a token
               (what transformers' SentencePiece conversion writes)

:func:`forward` is the reference: the Hugging Face computation (RMSNorm, rotate-half RoPE,
grouped-query attention with a causal mask, SiLU-gated MLP, optional biases) in float64.
It was checked once against transformers 4.57.6 / torch 2.13.0 (CPU) on these checkpoints.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # deterministic BPE training
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "Modelfile.examples" / "tiny-llama" / "model"
ARCHS = ("llama", "mistral", "qwen2")
TOKENIZERS = ("gpt-2", "llama-bpe", "qwen2", "llama-spm")
DEFAULT_TOKENIZER = {"llama": "gpt-2", "mistral": "llama-spm", "qwen2": "qwen2"}

HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE = 64, 2, 4, 2, 128
TRANSFORMERS_VERSION = "4.57.6"

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog did not seem to mind.
A model is a file, a file is a blob, and a blob has a digest.
Build systems turn source files into artifacts; this one turns weights into images.
Hello, world! Hello again, world. Goodbye for now, world. I've been told it's fine.
Numbers appear too: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 2048 65536 3.14159 2.71828.
Code often looks like this: def main(argv: list[str]) -> int: return 0
    indented lines, tabs\tand  double  spaces, and newlines
JSON objects look like {"name": "tiny", "layers": 2, "heads": 4}.
Attention heads look at earlier tokens; key and value heads can be shared.
Rotary position embeddings rotate queries and keys by an angle per position.
Café, naïve, résumé, façade, jalapeño, São Paulo, Zürich, Kraków, Ærøskøbing.
Le cœur a ses raisons que la raison ne connaît point.
Über den Wolken muss die Freiheit wohl grenzenlos sein.
Привет, мир! Как дела? Всё хорошо, спасибо.
你好，世界！今天天气很好。模型文件很大，但是这个模型很小。
こんにちは、世界。これは小さなモデルです。
Emoji time: 🙂 😀 🚀 🐍 🦙 ✨ 👍 🎉 — and a thumbs up 👍 again 🙂.
The llama 🦙 walked up the mountain, carrying a tiny model in a tiny box.
"""


# -- tokenizers ---------------------------------------------------------------------------------


def _lines() -> list[str]:
    return CORPUS.splitlines() * 3


def _byte_level(regex: str | None, *, size: int, ignore_merges: bool = False, nfc: bool = False) -> Any:
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_lines(), trainer=trainer)
    return tok


@functools.cache
def tokenizer_files(kind: str) -> tuple[str, str]:
    """(tokenizer.json text, tokenizer_config.json text) of tokenizer *kind*."""
    if kind == "gpt-2":
        return ((BUNDLED / "tokenizer.json").read_text(encoding="utf-8"),
                (BUNDLED / "tokenizer_config.json").read_text(encoding="utf-8"))
    try:
        import tokenizers  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"the {kind} test tokenizer is trained with the tokenizers library: "
                          f"pip install tokenizers ({exc})") from exc
    if kind == "qwen2":
        from tokenizers import AddedToken, processors

        tok = _byte_level(QWEN2_REGEX, size=420, nfc=True)
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
        tok.add_tokens([AddedToken("<tool_call>", normalized=False, special=False)])
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        cfg = {"add_bos_token": False, "add_prefix_space": False, "bos_token": None, "eos_token": "<|im_end|>",
               "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace", "model_max_length": 32768,
               "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
               "chat_template": ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                                 "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
                                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")}
        return _dump(tok), _json(cfg)
    if kind == "llama-bpe":
        from tokenizers import AddedToken, processors

        tok = _byte_level(LLAMA3_REGEX, size=420, ignore_merges=True)
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>")])
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                          pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                          special_tokens=[("<|begin_of_text|>", bos)]),
        ])
        cfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": True,
               "model_max_length": 131072, "tokenizer_class": "PreTrainedTokenizerFast",
               "chat_template": ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
                                 "'<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}{% endfor %}")}
        return _dump(tok), _json(cfg)
    if kind == "llama-spm":
        return _sentencepiece_bpe()
    raise ValueError(f"unknown tokenizer kind {kind!r}")


def _sentencepiece_bpe() -> tuple[str, str]:
    """A Llama 2 / Mistral style tokenizer.json, built as transformers converts a
    SentencePiece BPE model: <unk> <s> </s>, the 256 byte tokens, then the pieces in score
    order; merges are every (a, b) whose concatenation is a piece, by the piece's rank."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=420, min_frequency=2, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(_lines(), trainer=trainer)
    trained = json.loads(tok.to_str())["model"]["vocab"]
    pieces = [t for t, _ in sorted(trained.items(), key=lambda kv: kv[1]) if t not in ("<unk>", "<s>", "</s>")]
    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    merges = []
    for t, tid in vocab.items():
        if tid < 259 or len(t) < 2:
            continue
        for k in range(1, len(t)):
            a, b = t[:k], t[k:]
            if vocab.get(a, 0) >= 259 and vocab.get(b, 0) >= 259:
                merges.append((tid, vocab[a], vocab[b], a, b))
    merges.sort()
    special = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True} for i, c in enumerate(("<unk>", "<s>", "</s>"))]
    doc = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": special,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": [[a, b] for *_, a, b in merges]},
    }
    text = json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
    Tokenizer.from_str(text)  # it must load
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
           "unk_token": "<unk>", "pad_token": None, "legacy": True, "model_max_length": 32768,
           "clean_up_tokenization_spaces": False, "tokenizer_class": "LlamaTokenizer",
           "added_tokens_decoder": {str(s["id"]): {k: v for k, v in s.items() if k != "id"} for s in special},
           "chat_template": "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"}
    return text, _json(cfg)


def _dump(tok: Any) -> str:
    return json.dumps(json.loads(tok.to_str()), ensure_ascii=False, indent=2) + "\n"


def _json(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def token_count(kind: str) -> tuple[int, dict[str, int]]:
    """(number of token ids, special token ids by text) of tokenizer *kind*."""
    doc = json.loads(tokenizer_files(kind)[0])
    ids = dict(doc["model"]["vocab"])
    ids.update({a["content"]: a["id"] for a in doc["added_tokens"]})
    return max(ids.values()) + 1, {a["content"]: a["id"] for a in doc["added_tokens"]}


# SentencePiece's piece types (sentencepiece_model.proto), the same numbers as gguf.TokenType
SP_NORMAL, SP_UNKNOWN, SP_CONTROL, SP_USER_DEFINED, SP_UNUSED, SP_BYTE = 1, 2, 3, 4, 5, 6


def spm_pieces() -> list[tuple[str, float, int]]:
    """The pieces (text, score, type) of the SentencePiece model the ``llama-spm`` tokenizer
    would have been converted from: ``<unk>`` UNKNOWN, ``<s>`` and ``</s>`` CONTROL, the byte
    pieces BYTE, then the merged pieces NORMAL with scores falling with their id (a BPE
    model's merge order, which its tokenizer.json's merges follow), in quarter steps."""
    vocab = json.loads(tokenizer_files("llama-spm")[0])["model"]["vocab"]
    out = []
    for text, tid in sorted(vocab.items(), key=lambda kv: kv[1]):
        if text == "<unk>":
            out.append((text, 0.0, SP_UNKNOWN))
        elif text in ("<s>", "</s>"):
            out.append((text, 0.0, SP_CONTROL))
        elif tid < 259:
            out.append((text, 0.0, SP_BYTE))
        else:
            out.append((text, -0.5 * (tid - 259) - 0.25, SP_NORMAL))
    return out


def sentencepiece_model(pieces: list[tuple[str, float, int]]) -> bytes:
    """A SentencePiece ``tokenizer.model`` holding *pieces* (text, score, type): a
    ``ModelProto`` serialized by the protobuf library from a descriptor of
    sentencepiece_model.proto's messages (an encoder independent of the converter's reader),
    with a trainer spec (a negative ``pad_id``: a 10-byte varint) and a normalizer spec
    (bytes, booleans) that a reader skips."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="tests_sentencepiece_model.proto", package="tests_sp",
                                               syntax="proto2")
    model = proto.message_type.add(name="ModelProto")
    piece = model.nested_type.add(name="SentencePiece")
    kind = piece.enum_type.add(name="Type")
    for name, number in (("NORMAL", 1), ("UNKNOWN", 2), ("CONTROL", 3), ("USER_DEFINED", 4), ("BYTE", 6),
                         ("UNUSED", 5)):
        kind.value.add(name=name, number=number)
    piece.field.add(name="piece", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    piece.field.add(name="score", number=2, type=f.TYPE_FLOAT, label=f.LABEL_OPTIONAL)
    piece.field.add(name="type", number=3, type=f.TYPE_ENUM, label=f.LABEL_OPTIONAL,
                    type_name=".tests_sp.ModelProto.SentencePiece.Type")
    trainer = proto.message_type.add(name="TrainerSpec")
    for name, number, ftype in (("input", 1, f.TYPE_STRING), ("model_type", 3, f.TYPE_INT32),
                                ("vocab_size", 4, f.TYPE_INT32), ("character_coverage", 10, f.TYPE_FLOAT),
                                ("unk_id", 40, f.TYPE_INT32), ("pad_id", 43, f.TYPE_INT32)):
        trainer.field.add(name=name, number=number, type=ftype, label=f.LABEL_OPTIONAL)
    normalizer = proto.message_type.add(name="NormalizerSpec")
    for name, number, ftype in (("name", 1, f.TYPE_STRING), ("precompiled_charsmap", 2, f.TYPE_BYTES),
                                ("add_dummy_prefix", 3, f.TYPE_BOOL)):
        normalizer.field.add(name=name, number=number, type=ftype, label=f.LABEL_OPTIONAL)
    model.field.add(name="pieces", number=1, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED,
                    type_name=".tests_sp.ModelProto.SentencePiece")
    model.field.add(name="trainer_spec", number=2, type=f.TYPE_MESSAGE, label=f.LABEL_OPTIONAL,
                    type_name=".tests_sp.TrainerSpec")
    model.field.add(name="normalizer_spec", number=3, type=f.TYPE_MESSAGE, label=f.LABEL_OPTIONAL,
                    type_name=".tests_sp.NormalizerSpec")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    message = message_factory.GetMessageClass(pool.FindMessageTypeByName("tests_sp.ModelProto"))()
    message.trainer_spec.input = "corpus.txt"  # type: ignore[attr-defined]
    message.trainer_spec.model_type = 2  # type: ignore[attr-defined]  # BPE
    message.trainer_spec.vocab_size = len(pieces)  # type: ignore[attr-defined]
    message.trainer_spec.character_coverage = 0.9995  # type: ignore[attr-defined]
    message.trainer_spec.unk_id = 0  # type: ignore[attr-defined]
    message.trainer_spec.pad_id = -1  # type: ignore[attr-defined]
    for text, score, ptype in pieces:
        p = message.pieces.add()  # type: ignore[attr-defined]
        p.piece, p.score, p.type = text, score, ptype
    message.normalizer_spec.name = "identity"  # type: ignore[attr-defined]
    message.normalizer_spec.precompiled_charsmap = b"\x00\x01\x02"  # type: ignore[attr-defined]
    message.normalizer_spec.add_dummy_prefix = True  # type: ignore[attr-defined]
    return message.SerializeToString()


# -- checkpoints --------------------------------------------------------------------------------


def make_config(arch: str, vocab_size: int, specials: dict[str, int], *, intermediate: int = INTERMEDIATE,
                dtype: str = "float32") -> dict[str, Any]:
    """config.json as transformers writes it for *arch*."""
    common = {
        "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": HIDDEN, "initializer_range": 0.02,
        "intermediate_size": intermediate, "max_position_embeddings": 256, "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS, "num_key_value_heads": KV_HEADS, "torch_dtype": dtype,
        "transformers_version": TRANSFORMERS_VERSION, "use_cache": True, "vocab_size": vocab_size,
    }
    if arch == "llama":
        bos, eos = specials.get("<s>", specials.get("<|begin_of_text|>")), specials.get("</s>", specials.get(
            "<|end_of_text|>"))
        return {**common, "architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": bos,
                "eos_token_id": eos, "head_dim": HIDDEN // HEADS, "mlp_bias": False, "model_type": "llama",
                "pretraining_tp": 1, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0,
                "tie_word_embeddings": False}
    if arch == "mistral":
        return {**common, "architectures": ["MistralForCausalLM"], "bos_token_id": specials.get("<s>", 1),
                "eos_token_id": specials.get("</s>", 2), "head_dim": HIDDEN // HEADS, "model_type": "mistral",
                "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": None, "tie_word_embeddings": False}
    if arch == "qwen2":
        end = specials.get("<|endoftext|>")
        return {**common, "architectures": ["Qwen2ForCausalLM"], "bos_token_id": end,
                "eos_token_id": specials.get("<|im_end|>", end), "max_window_layers": LAYERS, "model_type": "qwen2",
                "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None,
                "tie_word_embeddings": True, "use_sliding_window": False}
    raise ValueError(f"unknown architecture {arch!r}")


def make_weights(config: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint, by Hugging Face name, float32."""
    rng = np.random.default_rng(seed)
    h, v, f = config["hidden_size"], config["vocab_size"], config["intermediate_size"]
    nh, nkv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = config.get("head_dim") or h // nh
    qwen = config["model_type"] == "qwen2"

    def normal(*shape: int, std: float) -> np.ndarray:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + rng.normal(0.0, 0.1, size=(h,))).astype(np.float32)

    w: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal(v, h, std=1.0)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm()
        w[p + "self_attn.q_proj.weight"] = normal(nh * hd, h, std=0.2)
        w[p + "self_attn.k_proj.weight"] = normal(nkv * hd, h, std=0.2)
        w[p + "self_attn.v_proj.weight"] = normal(nkv * hd, h, std=0.2)
        if qwen:
            w[p + "self_attn.q_proj.bias"] = normal(nh * hd, std=0.5)
            w[p + "self_attn.k_proj.bias"] = normal(nkv * hd, std=0.5)
            w[p + "self_attn.v_proj.bias"] = normal(nkv * hd, std=0.5)
        w[p + "self_attn.o_proj.weight"] = normal(h, nh * hd, std=0.2)
        w[p + "post_attention_layernorm.weight"] = norm()
        w[p + "mlp.gate_proj.weight"] = normal(f, h, std=0.15)
        w[p + "mlp.up_proj.weight"] = normal(f, h, std=0.15)
        w[p + "mlp.down_proj.weight"] = normal(h, f, std=0.15)
    w["model.norm.weight"] = norm()
    if not config.get("tie_word_embeddings"):
        w["lm_head.weight"] = normal(v, h, std=0.2)
    return dict(sorted(w.items()))


def _round(weights: dict[str, np.ndarray], dtype: str) -> dict[str, Any]:
    if dtype == "float32":
        return weights
    if dtype == "float16":
        return {k: v.astype(np.float16) for k, v in weights.items()}
    if dtype == "bfloat16":
        import ml_dtypes

        return {k: v.astype(ml_dtypes.bfloat16) for k, v in weights.items()}
    raise ValueError(dtype)


def write_safetensors(dest: Path, weights: dict[str, Any], *, sharded: bool) -> None:
    """model.safetensors, or model-0000{1,2}-of-00002.safetensors and the index, as
    transformers writes them (``{"format": "pt"}`` metadata; index sorted, indent 2)."""
    from safetensors.numpy import save_file

    if not sharded:
        save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(weights)
    half = len(names) // 2
    parts = [names[:half], names[half:]]
    weight_map = {}
    for i, part in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file({n: weights[n] for n in part}, str(dest / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    index = {"metadata": {"total_parameters": int(sum(weights[n].size for n in names)),
                          "total_size": int(sum(weights[n].nbytes for n in names))},
             "weight_map": weight_map}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def make_tiny_checkpoint(dest: Path | str, arch: str, seed: int = 0, sharded: bool = False, *,
                         tokenizer: str | None = None, dtype: str = "float32",
                         intermediate: int = INTERMEDIATE) -> Path:
    """Write a tiny random *arch* checkpoint (``llama``, ``mistral`` or ``qwen2``) into *dest*."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    kind = tokenizer or DEFAULT_TOKENIZER[arch]
    tok_json, tok_cfg = tokenizer_files(kind)
    n, specials = token_count(kind)
    vocab_size = (n + 63) // 64 * 64 if arch == "qwen2" else n  # Qwen pads its embedding to a multiple of 64
    config = make_config(arch, vocab_size, specials, intermediate=intermediate, dtype=dtype)
    (dest / "config.json").write_text(_json(config))
    gen = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
           "transformers_version": TRANSFORMERS_VERSION}
    (dest / "generation_config.json").write_text(_json(gen))
    (dest / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    (dest / "tokenizer_config.json").write_text(tok_cfg, encoding="utf-8")
    write_safetensors(dest, _round(make_weights(config, seed), dtype), sharded=sharded)
    return dest


def copy_bundled(dest: Path | str) -> Path:
    """The bundled example checkpoint (Modelfile.examples/tiny-llama/model), copied."""
    dest = Path(dest)
    shutil.copytree(BUNDLED, dest)
    return dest


def load_checkpoint(path: Path | str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config, weights as float32) of a checkpoint directory."""
    from safetensors.numpy import load_file

    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    weights: dict[str, np.ndarray] = {}
    for f in sorted(path.glob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            weights[k] = np.asarray(v, dtype=np.float32)
    return config, weights


# -- the reference forward pass -----------------------------------------------------------------


def forward(config: dict[str, Any], weights: dict[str, np.ndarray], ids: list[int],
            activations: Any = None) -> np.ndarray:
    """Logits (len(ids) × vocab) of the Hugging Face computation, in float64.

    *activations*, when given, is called as ``activations(weight_name, x)`` on the input of
    every matrix product and returns it rounded (llama.cpp rounds activations to the
    weight's "vec_dot" type: F16 for F16 weights, BF16 for BF16, Q8_0 for Q8_0)."""
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    h, nh = config["hidden_size"], config["num_attention_heads"]
    nkv = config.get("num_key_value_heads") or nh
    hd = config.get("head_dim") or h // nh
    eps = float(config["rms_norm_eps"])
    theta = float(config.get("rope_theta", 10000.0))
    t = len(ids)

    def rms(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight

    def linear(x: np.ndarray, prefix: str) -> np.ndarray:
        if activations is not None:
            x = np.asarray(activations(prefix + ".weight", x), dtype=np.float64)
        y = x @ w[prefix + ".weight"].T
        return y + w[prefix + ".bias"] if prefix + ".bias" in w else y

    inv_freq = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    angles = np.arange(t, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos = np.cos(np.concatenate([angles, angles], axis=-1))[:, None, :]
    sin = np.sin(np.concatenate([angles, angles], axis=-1))[:, None, :]

    def rope(x: np.ndarray) -> np.ndarray:  # HF's rotate_half convention
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + np.concatenate([-x2, x1], axis=-1) * sin

    mask = np.triu(np.full((t, t), -np.inf), k=1)
    x = w["model.embed_tokens.weight"][np.asarray(ids)]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = rms(x, w[p + "input_layernorm.weight"])
        q = rope(linear(a, p + "self_attn.q_proj").reshape(t, nh, hd))
        k = rope(linear(a, p + "self_attn.k_proj").reshape(t, nkv, hd))
        v = linear(a, p + "self_attn.v_proj").reshape(t, nkv, hd)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        out = np.einsum("hqk,khd->qhd", probs, v).reshape(t, nh * hd)
        x = x + linear(out, p + "self_attn.o_proj")
        m = rms(x, w[p + "post_attention_layernorm.weight"])
        gate = linear(m, p + "mlp.gate_proj")
        x = x + linear(gate / (1.0 + np.exp(-gate)) * linear(m, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms(x, w["model.norm.weight"])
    head = "lm_head" if "lm_head.weight" in w else "model.embed_tokens"
    if activations is not None:
        x = np.asarray(activations(head + ".weight", x), dtype=np.float64)
    return x @ w[head + ".weight"].T
