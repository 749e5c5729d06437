#!/usr/bin/env python3
"""Generate the tiny llama-architecture model bundled as modelbuild's example.

Why this exists
---------------
modelbuild packages AI models as OCI artifacts, and its example, tests and
demos need a *real* Hugging Face model directory to work on: one whose
``config.json`` is a genuine ``LlamaConfig``, whose ``model.safetensors``
holds every tensor a llama checkpoint has (same names, same shapes), and
whose ``tokenizer.json`` is a genuine byte-level BPE tokenizer that
``transformers`` / ``tokenizers`` load and run.  Downloading such a model
from a hub is not possible everywhere (CI has no network) and even the
smallest published checkpoints are far too big to commit.

So this script *builds* one: 2 layers, hidden size 64, a ~512-token BPE
vocabulary trained on a small corpus embedded below, random weights.  The
whole directory is well under 1 MB.  It is useless as a language model, but
structurally it is the real thing.

Everything is deterministic: weights come from ``numpy.random.default_rng(0)``,
the tokenizer is trained single-threaded on a fixed corpus, and every JSON
file is written with ``indent=2, sort_keys=True`` and a trailing newline, so
running the script twice yields byte-identical files.  Regenerate with::

    python scripts/make_tiny_llama.py            # -> Modelfile.examples/tiny-llama/model
    python scripts/make_tiny_llama.py OUT_DIR

Requires ``numpy``, ``safetensors`` and ``tokenizers`` (not ``torch``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

# Pin the tokenizers trainer to one thread *before* tokenizers is imported
# (the import happens lazily inside build_tokenizer) so training order, and
# therefore the learned merges, can never depend on thread scheduling.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "Modelfile.examples" / "tiny-llama" / "model"

# --- architecture --------------------------------------------------------

HIDDEN_SIZE = 64
INTERMEDIATE_SIZE = 172
NUM_HIDDEN_LAYERS = 2
NUM_ATTENTION_HEADS = 4
NUM_KEY_VALUE_HEADS = 2
HEAD_DIM = HIDDEN_SIZE // NUM_ATTENTION_HEADS
MAX_POSITION_EMBEDDINGS = 256
RMS_NORM_EPS = 1e-6
ROPE_THETA = 10000.0
INIT_STD = 0.02
SEED = 0

# --- tokenizer -----------------------------------------------------------

TARGET_VOCAB_SIZE = 512
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN, UNK_TOKEN]  # ids 0, 1, 2

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# A few KB of varied text.  The accented, Cyrillic, Greek, CJK and emoji
# lines make sure multi-byte UTF-8 sequences are seen during training, so
# the byte-level model both learns some multi-byte merges and has to fall
# back to raw bytes for characters it never merged.
CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog did not seem to mind.
A model is a file, a file is a blob, and a blob has a digest.
Build systems turn source files into artifacts; this one turns weights into images.
Every layer of the image is addressed by the SHA-256 digest of its content.
When the registry already has a layer, the push skips it and moves on.
Reproducible builds mean the same inputs always give the same outputs, byte for byte.
Tokenizers split text into pieces, and models predict the next piece.
Hello, world! Hello again, world. Goodbye for now, world.
It was a bright cold day in April, and the clocks were striking thirteen.
She sells sea shells by the sea shore, and the shells she sells are surely sea shells.
How much wood would a woodchuck chuck if a woodchuck could chuck wood?
Numbers appear too: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 2048 65536 3.14159 2.71828.
Dates like 2024-01-31 and times like 12:34:56 show up in logs all the time.
Paths look like /usr/local/bin/python3 or C:\\Users\\model\\weights.bin on other systems.
Code often looks like this: def main(argv: list[str]) -> int: return 0
JSON objects look like {"name": "tiny-llama", "layers": 2, "heads": 4}.
The weather today is sunny with a light breeze from the west, later some rain.
Please remember to water the plants, feed the cat, and lock the door.
The train leaves at seven in the morning and arrives just before noon.
Learning to play the piano takes patience, practice, and a little bit of joy.
In the middle of difficulty lies opportunity, or so the saying goes.
Small models are useful for tests because they load in milliseconds.
Random weights produce random text, which is perfectly fine for a smoke test.
Attention heads look at earlier tokens; key and value heads can be shared.
Rotary position embeddings rotate queries and keys by an angle per position.
RMS normalization rescales each vector by the root mean square of its entries.
The feed-forward block uses a gated SiLU unit with gate, up and down projections.
Questions? Answers! Lists: apples, oranges, pears; and more: plums, figs, dates.
"Quoted text" and 'single quotes' and (parentheses) and [brackets] and {braces}.
UPPER CASE, lower case, Title Case, camelCase, snake_case, kebab-case.
Café, naïve, résumé, façade, jalapeño, São Paulo, Zürich, Kraków, Ærøskøbing.
Le cœur a ses raisons que la raison ne connaît point.
Über den Wolken muss die Freiheit wohl grenzenlos sein.
¿Dónde está la biblioteca? Está al lado de la estación.
Привет, мир! Как дела? Всё хорошо, спасибо.
Γειά σου κόσμε· η γνώση είναι δύναμη.
你好，世界！今天天气很好。我们一起去公园散步吧。
模型文件很大，但是这个模型很小。
こんにちは、世界。これは小さなモデルです。
안녕하세요, 세계! 작은 모델입니다.
مرحبا بالعالم
שלום עולם
Emoji time: 🙂 😀 🚀 🐍 🦙 ✨ 👍 🎉 ❤️ 🌍 — and a thumbs up 👍 again 🙂.
The llama 🦙 walked up the mountain, carrying a tiny model in a tiny box.
Once upon a time there was a little model that wanted to be big.
It read every book in the library, but it only remembered the first five hundred tokens.
The end. Or is it? The sequel is coming soon to a registry near you.
"""


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as stable, human-readable JSON with a trailing newline."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def build_tokenizer() -> Any:
    """Train a byte-level BPE tokenizer on :data:`CORPUS` and return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)

    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN}:1 $B:1",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return tokenizer


def build_config(vocab_size: int, bos_id: int, eos_id: int) -> dict[str, Any]:
    """Return a transformers ``LlamaConfig`` as a plain dict."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN_SIZE,
        "initializer_range": INIT_STD,
        "intermediate_size": INTERMEDIATE_SIZE,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": NUM_ATTENTION_HEADS,
        "num_hidden_layers": NUM_HIDDEN_LAYERS,
        "num_key_value_heads": NUM_KEY_VALUE_HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_scaling": None,
        "rope_theta": ROPE_THETA,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def build_weights(vocab_size: int) -> dict[str, np.ndarray]:
    """Return every tensor of a llama checkpoint, keyed by its HF name, sorted."""
    kv_dim = NUM_KEY_VALUE_HEADS * HEAD_DIM
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab_size, HIDDEN_SIZE),
        "model.norm.weight": (HIDDEN_SIZE,),
        "lm_head.weight": (vocab_size, HIDDEN_SIZE),
    }
    for i in range(NUM_HIDDEN_LAYERS):
        p = f"model.layers.{i}"
        shapes[f"{p}.input_layernorm.weight"] = (HIDDEN_SIZE,)
        shapes[f"{p}.post_attention_layernorm.weight"] = (HIDDEN_SIZE,)
        shapes[f"{p}.self_attn.q_proj.weight"] = (NUM_ATTENTION_HEADS * HEAD_DIM, HIDDEN_SIZE)
        shapes[f"{p}.self_attn.k_proj.weight"] = (kv_dim, HIDDEN_SIZE)
        shapes[f"{p}.self_attn.v_proj.weight"] = (kv_dim, HIDDEN_SIZE)
        shapes[f"{p}.self_attn.o_proj.weight"] = (HIDDEN_SIZE, NUM_ATTENTION_HEADS * HEAD_DIM)
        shapes[f"{p}.mlp.gate_proj.weight"] = (INTERMEDIATE_SIZE, HIDDEN_SIZE)
        shapes[f"{p}.mlp.up_proj.weight"] = (INTERMEDIATE_SIZE, HIDDEN_SIZE)
        shapes[f"{p}.mlp.down_proj.weight"] = (HIDDEN_SIZE, INTERMEDIATE_SIZE)

    # Draw in sorted-name order so each tensor's values depend only on the
    # set of names, never on the order they were listed above.
    rng = np.random.default_rng(SEED)
    tensors: dict[str, np.ndarray] = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith("norm.weight"):
            tensors[name] = np.ones(shape, dtype=np.float32)
        else:
            tensors[name] = (rng.standard_normal(shape) * INIT_STD).astype(np.float32)
    return tensors


def build_tokenizer_config() -> dict[str, Any]:
    return {
        "bos_token": BOS_TOKEN,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "model_max_length": MAX_POSITION_EMBEDDINGS,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": UNK_TOKEN,
    }


def build_readme(vocab_size: int, n_params: int) -> str:
    # The front matter is the model card: a GGUF converter (llama.cpp's, modelbuild's
    # hf-to-gguf) takes general.name from model_name, general.license and general.tags from
    # license, tags and pipeline_tag.
    return f"""\
---
model_name: Tiny Llama
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
tags:
  - llama
  - tiny
  - random-weights
  - testing
---

# tiny-llama (random weights, for testing only)

A deliberately tiny model with the real Llama architecture
(`LlamaForCausalLM`), bundled as modelbuild's example model.
**Its weights are random**: it produces gibberish and is meant only for
exercising tooling (packaging, pushing, pulling, loading) end to end.

| property | value |
| --- | --- |
| layers | {NUM_HIDDEN_LAYERS} |
| hidden size | {HIDDEN_SIZE} |
| intermediate size | {INTERMEDIATE_SIZE} |
| attention heads / KV heads | {NUM_ATTENTION_HEADS} / {NUM_KEY_VALUE_HEADS} |
| vocabulary | {vocab_size} (byte-level BPE) |
| context length | {MAX_POSITION_EMBEDDINGS} |
| parameters | {n_params:,} |
| dtype | float32 |

## Files

- `config.json`, `generation_config.json`: standard transformers configs.
- `model.safetensors`: every tensor of a Llama checkpoint under its
  Hugging Face name; weights drawn from N(0, {INIT_STD}²) with
  `numpy.random.default_rng({SEED})`, RMS-norm weights set to one.
- `tokenizer.json`, `tokenizer_config.json`: a real byte-level BPE tokenizer
  trained with the `tokenizers` library on a few KB of built-in multilingual
  text; special tokens `{BOS_TOKEN}`, `{EOS_TOKEN}`, `{UNK_TOKEN}`.

## How it was made

Generated deterministically by `scripts/make_tiny_llama.py` in the modelbuild
repository; rerunning the script reproduces every file byte for byte.

## License

Apache-2.0; see `LICENSE`.
"""


LICENSE_TEXT = """\
Copyright The modelbuild authors

Licensed under the Apache License, Version 2.0 (the "License");
you may not use these files except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
"""


def generate(out_dir: Path) -> list[Path]:
    """Write the whole model directory into ``out_dir``; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer()
    vocab_size = tokenizer.get_vocab_size()
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    # Re-serialise through json so tokenizer.json follows the same stable
    # formatting as every other JSON file here.
    write_json(out_dir / "tokenizer.json", json.loads(tokenizer.to_str()))
    write_json(out_dir / "tokenizer_config.json", build_tokenizer_config())

    write_json(out_dir / "config.json", build_config(vocab_size, bos_id, eos_id))
    write_json(
        out_dir / "generation_config.json",
        {
            "bos_token_id": bos_id,
            "do_sample": False,
            "eos_token_id": eos_id,
        },
    )

    tensors = build_weights(vocab_size)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    n_params = sum(int(t.size) for t in tensors.values())

    (out_dir / "README.md").write_text(build_readme(vocab_size, n_params), encoding="utf-8")
    (out_dir / "LICENSE").write_text(LICENSE_TEXT, encoding="utf-8")

    return sorted(out_dir.iterdir())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "out_dir",
        nargs="?",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output directory (default: {DEFAULT_OUT.relative_to(REPO_ROOT)} in the repository)",
    )
    args = parser.parse_args(argv)
    for path in generate(args.out_dir):
        print(f"{path.stat().st_size:>10}  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
