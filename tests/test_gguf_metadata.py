"""hf-to-gguf's metadata, key by key, against llama.cpp's convert_hf_to_gguf.py.

The oracle is the gguf-py of llama.cpp's own tree, the package its converter writes with
(the pinned llama.cpp, vendored in llama-cpp-python 0.3.36's source archive;
scripts/fetch-test-data puts its gguf-py in tests/data/external/llama.cpp-gguf-py). It is
newer than PyPI's ``gguf`` of the same version number (0.19.0, what the suite imports),
whose ``SpecialVocab`` and ``Metadata`` differ from it, and it cannot be imported beside the
installed ``gguf``: tests/llama_cpp_oracle.py runs it in a subprocess: ``gguf.Metadata`` (its
``load`` and ``set_gguf_meta_model``, as ``prepare_metadata`` calls them) for ``general.*``,
``gguf.SpecialVocab`` for the special tokens. Each runs on the same checkpoint directory the
converter reads and writes into a ``GGUFWriter`` in memory, whose keys (order, type, value)
are compared with what hf-to-gguf wrote, read back with the installed ``gguf.GGUFReader``.
Without the vendored gguf-py those tests skip (fail under CI).

The rest compares in-process with the installed ``gguf``, where the two packages agree:
``Metadata.get_model_id_components``, ``Metadata.id_to_title`` and ``size_label``
(utility.py and those functions are identical in both), ``GGUFWriter.get_total_parameter_count``
and, for the llama tensors these tests write, ``get_tensor_name_map``. What llama.cpp's
converter needs the ``sentencepiece`` library for (the tokens, scores and types of a
``tokenizer.model``) is restated from its ``_create_vocab_sentencepiece`` in
:func:`expected_sentencepiece`; the ``tokenizer.model`` files are written by the protobuf
library (``models.sentencepiece_model``).

The checkpoints sit in a directory of the model set, as they sit in a directory on disk for
llama.cpp: the directory's name is one of the sources of the model's name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import gguf
import numpy as np
import pytest
from models import (
    SP_BYTE,
    SP_CONTROL,
    SP_NORMAL,
    SP_UNKNOWN,
    SP_UNUSED,
    SP_USER_DEFINED,
    copy_bundled,
    make_tiny_checkpoint,
    sentencepiece_model,
    spm_pieces,
)
from support import REPO, missing

from modelbuild.testing import plugin_host
from modelbuild.weights import Output

HOST = plugin_host()


@pytest.fixture
def convert(model_set, transform_context):
    """``convert(root, **options)``: the checkpoint under *root* (the model set) converted:
    (the GGUF file's path, the log messages)."""

    def run(root: Path, **options: Any) -> tuple[Path, list[str]]:
        converter = HOST.converters.get("hf-to-gguf")
        options.setdefault("outtype", "f16")
        ctx = transform_context(host=HOST)
        result = converter.convert(model_set(root), options, ctx)
        (out,) = [r for r in result if isinstance(r, Output)]
        return Path(out.file), ctx.logs

    return run


# -- reading and comparing keys -----------------------------------------------------------------


def written(path: Path) -> list[tuple[str, Any, list[Any]]]:
    """The file's keys in order: (key, value, GGUF value types)."""
    r = gguf.GGUFReader(str(path))
    return [(k, f.contents(), list(f.types)) for k, f in r.fields.items() if not k.startswith("GGUF.")]


def general_keys(path: Path) -> list[tuple[str, Any, list[Any]]]:
    """The metadata keys: the ``general.*`` keys before the architecture's."""
    out = []
    for key, value, types in written(path)[2:]:  # after general.architecture and general.type
        if not key.startswith("general.") or key == "general.file_type":
            break
        out.append((key, value, types))
    return out


class Expected(NamedTuple):
    """One key as llama.cpp's gguf-py would write it (GGUF value types as integers)."""

    type: int
    sub_type: int | None  # an array's element type
    value: Any


def same_keys(ours: list[tuple[str, Any, list[Any]]], theirs: list[tuple[str, Expected]]) -> None:
    """*ours* (read back) equal *theirs* (the oracle's): the same keys in the same order,
    each of the same GGUF type, with the same value."""
    assert [k for k, _, _ in ours] == [k for k, _ in theirs]
    for (key, value, types), (_, expected) in zip(ours, theirs):
        assert types[0] == expected.type, key
        want = expected.value
        if expected.type == gguf.GGUFValueType.ARRAY:
            assert types[-1] == expected.sub_type, key
        elif expected.type == gguf.GGUFValueType.FLOAT32:
            want = float(np.float32(want))
        assert value == want, (key, value, want)


ORACLE = REPO / "tests" / "llama_cpp_oracle.py"
LLAMA_CPP_GGUF_PY = REPO / "tests" / "data" / "external" / "llama.cpp-gguf-py"


def llama_cpp(*args: str) -> list[tuple[str, Expected]]:
    """The keys tests/llama_cpp_oracle.py computes with llama.cpp's own gguf-py."""
    if not (LLAMA_CPP_GGUF_PY / "gguf" / "vocab.py").is_file():
        missing(f"llama.cpp's gguf-py is not in {LLAMA_CPP_GGUF_PY.relative_to(REPO)} (scripts/fetch-test-data)")
    path = os.pathsep.join(p for p in (str(LLAMA_CPP_GGUF_PY), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, str(ORACLE), *args], env={**os.environ, "PYTHONPATH": path},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert Path(doc["gguf"]).resolve().is_relative_to(LLAMA_CPP_GGUF_PY.resolve()), doc["gguf"]
    return [(key, Expected(kind, sub, value)) for key, kind, sub, value in doc["keys"]]


def llama_cpp_general(directory: Path, path: Path, name: str | None = None) -> list[tuple[str, Expected]]:
    """The ``general.*`` keys llama.cpp's converter writes for *directory*, given the
    tensors hf-to-gguf wrote to *path* (what its ``prepare_metadata`` does, without the
    model)."""
    return llama_cpp("general", str(directory), str(path), *(["--name", name] if name is not None else []))


def llama_cpp_special(directory: Path, *, load_merges: bool, n_vocab: int | None) -> list[tuple[str, Expected]]:
    """The keys gguf-py's SpecialVocab adds for *directory* (merges, special token ids,
    ``add_*`` flags, chat template, normalizer flags), as llama.cpp's converter adds them."""
    return llama_cpp("special", str(directory), *(["--load-merges"] if load_merges else []),
                     *(["--n-vocab", str(n_vocab)] if n_vocab is not None else []))


_VOCABULARY = {"tokenizer.ggml.add_space_prefix", "tokenizer.ggml.model", "tokenizer.ggml.pre",
               "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"}


def special_keys(path: Path) -> list[tuple[str, Any, list[Any]]]:
    """The tokenizer keys SpecialVocab writes: all but the vocabulary's."""
    return [(k, v, t) for k, v, t in written(path) if k.startswith("tokenizer.") and k not in _VOCABULARY]


def vocab(path: Path) -> dict[str, Any]:
    return {k: v for k, v, _ in written(path) if k.startswith("tokenizer.")}


def _edit_json(path: Path, **changes: Any) -> None:
    """Set (None: remove) top-level keys of a JSON file."""
    doc = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False))


# -- general.*: name, base name, size label, license, tags… --------------------------------------

LLAMA2_CARD = """\
---
author: Jane Doe
license:
  - llama2
  - mit
license_link: https://example.invalid/LICENSE
tags: chat
pipeline_tag: text-generation
language:
  - en
  - no
base_model:
  - meta-llama/Llama-2-7b-chat-hf
  - https://huggingface.co/mistralai/Mistral-7B-v0.1
  - https://example.invalid/weights
datasets: tatsu-lab/alpaca
---

# A fine-tune

Body text; "---" below is not front matter.

---
"""

OVERRIDE_CARD = """\
---
model_name: Tiny Override
version: v0.3
basename: tiny
size_label: 160K
finetune: Instruct
organization: Example Org
description: a model card that says everything
model_creator: The Creator
repo_url: https://example.invalid/repo
license: other
license_name: example-license
languages: [fr, de]
datasets:
  - name: A Dataset
    organization: Someone
    repo_url: https://example.invalid/data
base_model_sources: []
---
"""


def _llama2_finetune(root: Path) -> Path:
    src = make_tiny_checkpoint(root / "my-finetune-v2", "llama")
    config = json.loads((src / "config.json").read_text())
    config["_name_or_path"] = "meta-llama/Llama-2-7b-chat-hf"
    (src / "config.json").write_text(json.dumps(config, indent=2))
    gen = json.loads((src / "generation_config.json").read_text())
    gen.update({"temperature": 0.6, "top_p": 0.9, "top_k": 50, "do_sample": True})
    (src / "generation_config.json").write_text(json.dumps(gen, indent=2))
    (src / "README.md").write_text(LLAMA2_CARD)
    return src


def _qwen_directory(root: Path) -> Path:
    return make_tiny_checkpoint(root / "Qwen2.5-0.5B-Instruct", "qwen2")


def _mistral_plain_readme(root: Path) -> Path:
    src = make_tiny_checkpoint(root / "Mistral-7B-v0.1", "mistral")
    (src / "README.md").write_text("# Mistral 7B\n\nNo front matter here.\n")
    return src


def _card_says_everything(root: Path) -> Path:
    src = make_tiny_checkpoint(root / "x", "llama")
    config = json.loads((src / "config.json").read_text())
    config["_name_or_path"] = "/home/someone/checkpoints/run-7/final"  # a local path: not a model id
    (src / "config.json").write_text(json.dumps(config, indent=2))
    (src / "README.md").write_text(OVERRIDE_CARD)
    return src


def _repetition_penalty(root: Path) -> Path:
    """Hugging Face's name for the repeat penalty (Qwen2.5's generation_config.json)."""
    src = _qwen_directory(root)
    _edit_json(src / "generation_config.json", repetition_penalty=1.05, temperature=0.7, top_k=20)
    return src


def _penalty_repeat_and_repetition_penalty(root: Path) -> Path:
    src = _qwen_directory(root)
    _edit_json(src / "generation_config.json", penalty_repeat=1.25, repetition_penalty=1.05)
    return src


CHECKPOINTS = {
    "bundled": lambda root: copy_bundled(root / "tiny-llama"),
    "llama2-finetune": _llama2_finetune,
    "qwen-directory-name": _qwen_directory,
    "mistral-readme-without-front-matter": _mistral_plain_readme,
    "card-says-everything": _card_says_everything,
    "repetition-penalty": _repetition_penalty,
    "penalty-repeat-and-repetition-penalty": _penalty_repeat_and_repetition_penalty,
}


@pytest.mark.parametrize("case", CHECKPOINTS)
def test_general_keys_are_llama_cpps(case, tmp_path, convert):
    src = CHECKPOINTS[case](tmp_path / "set")
    path, logs = convert(tmp_path / "set")
    ours = general_keys(path)
    same_keys(ours, llama_cpp_general(src, path))
    assert not [m for m in logs if "warning" in m]


def test_general_keys_of_the_bundled_example(tmp_path, convert):
    """What the oracle comparison means for the example: the README's name, license and
    tags (pipeline_tag after the tags), the size from the parameter count, no base name."""
    copy_bundled(tmp_path / "set" / "tiny-llama")
    path, _ = convert(tmp_path / "set")
    keys = {k: v for k, v, _ in general_keys(path)}
    assert keys == {"general.name": "Tiny Llama", "general.size_label": "156K", "general.license": "apache-2.0",
                    "general.tags": ["llama", "tiny", "random-weights", "testing", "text-generation"]}


def test_general_keys_of_a_model_id(tmp_path, convert):
    _llama2_finetune(tmp_path / "set")
    path, _ = convert(tmp_path / "set")
    keys = {k: v for k, v, _ in general_keys(path)}
    assert keys["general.name"] == "Llama 2 7b Chat Hf"  # config.json's _name_or_path, as a title
    assert keys["general.organization"] == "Meta Llama"
    # 7b is far from these ~100K parameters: not the size (a context length, say), so part of the finetune
    assert keys["general.basename"] == "Llama-2" and keys["general.finetune"] == "7b-chat-hf"
    assert keys["general.size_label"].endswith("K")  # from the parameter count
    assert keys["general.license"] == "llama2,mit"
    assert keys["general.tags"] == ["chat", "text-generation"] and keys["general.languages"] == ["en", "no"]
    assert keys["general.base_model.count"] == 3
    assert keys["general.base_model.1.repo_url"] == "https://huggingface.co/mistralai/Mistral-7B-v0.1"
    assert keys["general.sampling.top_k"] == 50 and abs(keys["general.sampling.temp"] - 0.6) < 1e-6


@pytest.mark.parametrize(("case", "penalty"), [("repetition-penalty", 1.05),
                                              ("penalty-repeat-and-repetition-penalty", 1.25)])
def test_repeat_penalty_is_read_under_either_name(case, penalty, tmp_path, convert):
    """``penalty_repeat``, else Hugging Face's ``repetition_penalty`` (llama.cpp's gguf-py;
    PyPI's gguf 0.19.0 reads only the former)."""
    CHECKPOINTS[case](tmp_path / "set")
    path, _ = convert(tmp_path / "set")
    keys = {k: (v, t) for k, v, t in general_keys(path)}
    value, types = keys["general.sampling.penalty_repeat"]
    assert value == float(np.float32(penalty)) and types == [gguf.GGUFValueType.FLOAT32]


def test_name_option_overrides_only_the_name(tmp_path, convert):
    src = _qwen_directory(tmp_path / "set")
    path, _ = convert(tmp_path / "set", name="My Model")
    same_keys(general_keys(path), llama_cpp_general(src, path, name="My Model"))
    assert general_keys(path)[0][:2] == ("general.name", "My Model")


def test_checkpoint_at_the_root_of_the_model_set(tmp_path, convert):
    """No directory name to go by (the directory the files are read from is not part of
    the conversion's key): ``model``, unless the README or config.json names it."""
    src = make_tiny_checkpoint(tmp_path / "m", "llama")
    path, _ = convert(src)
    keys = {k: v for k, v, _ in general_keys(path)}
    total = sum(int(t.n_elements) for t in gguf.GGUFReader(str(path)).tensors)
    assert keys == {"general.name": "model", "general.size_label": gguf.size_label(total, total, 0, 0)}
    (src / "README.md").write_text("---\nname: Named In The Card\n---\n")
    path, _ = convert(src)
    assert general_keys(path)[0][:2] == ("general.name", "Named In The Card")


def test_a_readme_that_is_not_yaml_is_ignored_with_a_warning(tmp_path, convert):
    src = make_tiny_checkpoint(tmp_path / "set" / "tiny", "llama")
    (src / "README.md").write_text("---\nlicense: [mit\ntags: {\n---\n")
    path, logs = convert(tmp_path / "set")
    assert [k for k, _, _ in general_keys(path)] == ["general.name", "general.size_label"]
    assert any("tiny/README.md: the front matter is not valid YAML" in m for m in logs), logs


def test_metadata_keys_come_before_the_architectures_and_file_type_where_llama_cpp_writes_it(tmp_path, convert):
    copy_bundled(tmp_path / "set" / "tiny-llama")
    path, _ = convert(tmp_path / "set")
    keys = [k for k, _, _ in written(path)]
    assert keys[:2] == ["general.architecture", "general.type"]
    # TextModel's keys, general.file_type, then LlamaModel's own (vocab size, rope dimensions)
    i = keys.index("general.file_type")
    assert keys[i - 2:i + 4] == ["llama.attention.key_length", "llama.attention.value_length", "general.file_type",
                                 "llama.vocab_size", "llama.rope.dimension_count", "general.quantization_version"]
    assert keys[i + 4] == "tokenizer.ggml.model"


def test_qwen2_keys_are_llama_cpps(tmp_path, convert):
    """llama.cpp's Qwen2 converter writes neither vocab_size nor rope.dimension_count."""
    _qwen_directory(tmp_path / "set")
    path, _ = convert(tmp_path / "set")
    keys = [k for k, _, _ in written(path)]
    assert "qwen2.vocab_size" not in keys and "qwen2.rope.dimension_count" not in keys
    assert keys[keys.index("general.file_type") + 1] == "general.quantization_version"


# -- the pieces: name parts, size labels, parameter counts --------------------------------------

MODEL_IDS = [
    "meta-llama/Llama-2-7b-chat-hf", "meta-llama/Meta-Llama-3.1-8B-Instruct", "mistralai/Mistral-7B-v0.1",
    "mistralai/Mixtral-8x7B-Instruct-v0.1", "bigscience/bloom-7b1", "Qwen/Qwen2.5-0.5B-Instruct",
    "Qwen/Qwen1.5-MoE-A2.7B", "microsoft/Phi-3-mini-4k-instruct", "google/gemma-2-9b-it",
    "TheBloke/Llama-2-7B-GGUF", "stabilityai/stablelm-2-zephyr-1_6b", "HuggingFaceTB/SmolLM2-135M-Instruct",
    "deepseek-ai/deepseek-coder-6.7b-instruct", "NousResearch/Hermes-2-Pro-Llama-3-8B", "Llama-3.2-1B-Q4_K_M",
    "tiny-llama", "tiny-llama-v0.3", "v2-model", "gpt2", "gpt2-xl", "model", "./local-7b", "../up/Thing-13B",
    "a model with spaces", "org/", "/lead", "x--y---z", "Llama-3-8B-LoRA", "t5-large", "Model-1_5B-bf16",
    "falcon-40b-instruct", "7B", "iter5-base", "TinyLlama-1.1B-Chat-v1.0",
]


@pytest.mark.parametrize("total", [0, 135_000_000, 7_000_000_000, 156_480, -7_000_000_000])
def test_name_parts_are_gguf_pys(total):
    from modelbuild_plugins.hf_to_gguf import name_parts, title

    for model_id in MODEL_IDS:
        parts = name_parts(model_id, total)
        ours = (parts.name, parts.organization, parts.basename, parts.finetune, parts.version, parts.size_label)
        assert ours == gguf.Metadata.get_model_id_components(model_id, total), model_id
        if parts.name:
            assert title(parts.name) == gguf.Metadata.id_to_title(parts.name), model_id
    assert name_parts(None) == name_parts(None, 5)


def test_size_labels_are_gguf_pys():
    from modelbuild_plugins.hf_to_gguf import size_label

    for n in (1, 999, 1_000, 1_499, 9_999, 99_950, 156_480, 999_999, 1_000_000, 1_000_001, 25_500_000,
              1_100_048_384, 7_241_732_096, 70_553_706_496, 999_999_999_999, 1_200_000_000_000):
        assert size_label(n, n, 0, 0) == gguf.size_label(n, n, 0, 0), n
    for shared, expert, count in ((1_600_000_000, 5_600_000_000, 8), (500_000, 100_000, 60)):
        assert size_label(0, shared, expert, count) == gguf.size_label(0, shared, expert, count)


def test_parameter_counts_are_gguf_writers():
    from modelbuild_plugins.hf_to_gguf import parameter_counts

    tensors = [("token_embd.weight", (512, 64)), ("blk.0.ffn_gate_exps.weight", (8, 172, 64)),
               ("blk.0.ffn_down_exps.bias", (8, 64)), ("blk.0.ffn_up_exps.weight", (8, 172, 64)),
               ("blk.0.exp_probs_b.bias", (8,)), ("output_norm.weight", (64,))]
    writer = gguf.GGUFWriter(path=None, arch="llama")
    for name, shape in tensors:
        writer.add_tensor_info(name, shape, np.dtype(np.float32), 4 * int(np.prod(shape)))
    assert parameter_counts(tensors) == writer.get_total_parameter_count()


# -- tokenizer.*: special tokens, add_* flags, chat templates ----------------------------------


def _roberta(src: Path) -> None:
    _edit_json(src / "tokenizer.json", post_processor={
        "type": "RobertaProcessing", "sep": ["</s>", 1], "cls": ["<s>", 0], "trim_offsets": True,
        "add_prefix_space": False})


def _sep_between_pairs(src: Path) -> None:
    """``<s> A </s> </s> B </s>`` (a RoBERTa-style pair template) and add_eos_token: true."""
    single = [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
              {"SpecialToken": {"id": "</s>", "type_id": 0}}]
    pair = [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "</s>", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "</s>", "type_id": 1}}]
    _edit_json(src / "tokenizer.json", post_processor={
        "type": "TemplateProcessing", "single": single, "pair": pair,
        "special_tokens": {t: {"id": t, "ids": [i], "tokens": [t]} for t, i in (("<s>", 0), ("</s>", 1))}})
    _edit_json(src / "tokenizer_config.json", add_eos_token=True, sep_token="</s>")


def _trailing_end_of_text(src: Path) -> None:
    """Llama 3 style, but the template ends with <|end_of_text|> while eos_token is <|eot_id|>:
    gguf-py makes <|end_of_text|> the EOS and <|eot_id|> the EOT."""
    doc = json.loads((src / "tokenizer.json").read_text())
    template = doc["post_processor"]["processors"][1]
    template["single"].append({"SpecialToken": {"id": "<|end_of_text|>", "type_id": 0}})
    end = next(a["id"] for a in doc["added_tokens"] if a["content"] == "<|end_of_text|>")
    template["special_tokens"]["<|end_of_text|>"] = {"id": "<|end_of_text|>", "ids": [end],
                                                     "tokens": ["<|end_of_text|>"]}
    (src / "tokenizer.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))


def _no_tokenizer_config(src: Path) -> None:
    (src / "tokenizer_config.json").unlink()


def _dict_tokens_and_add_flags(src: Path) -> None:
    """AddedToken dicts for the special tokens (as Llama 2's tokenizer_config.json has), and
    add_bos_token: false against the post-processor, which wins (the template's <s> is not
    the dict, so gguf-py takes it for the CLS token and adds it)."""
    _edit_json(src / "tokenizer_config.json", bos_token={"__type": "AddedToken", "content": "<s>"},
               eos_token={"__type": "AddedToken", "content": "</s>"}, add_bos_token=False,
               pad_token={"__type": "AddedToken", "content": "<unk>"})


def _add_flags_disagree(src: Path) -> None:
    """add_bos_token: false against the template ``<s> $A`` (the post-processor wins, with a
    warning), add_eos_token: true where the template says nothing of EOS (it stands)."""
    _edit_json(src / "tokenizer_config.json", add_bos_token=False, add_eos_token=True)


def _byte_level_against_add_eos(src: Path) -> None:
    """Qwen2's ByteLevel post-processor adds no EOS; tokenizer_config.json says it does."""
    _edit_json(src / "tokenizer_config.json", add_eos_token=True)


def _template(first: str, first_id: int) -> dict[str, Any]:
    """A TemplateProcessing ``FIRST $A`` (pair ``FIRST $A FIRST $B``)."""
    lead = {"SpecialToken": {"id": first, "type_id": 0}}
    return {"type": "TemplateProcessing",
            "single": [lead, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [lead, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": first, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {first: {"id": first, "ids": [first_id], "tokens": [first]}}}


def _template_leads_with_unset_bos(src: Path) -> None:
    """Qwen2 (bos_token: null) with ``<|im_start|> $A`` after its ByteLevel step: gguf-py
    makes <|im_start|> the BOS, ahead of config.json's bos_token_id, and adds it, against
    add_bos_token: false."""
    doc = json.loads((src / "tokenizer.json").read_text())
    tid = next(a["id"] for a in doc["added_tokens"] if a["content"] == "<|im_start|>")
    doc["post_processor"] = {"type": "Sequence",
                             "processors": [doc["post_processor"], _template("<|im_start|>", tid)]}
    (src / "tokenizer.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))


def _template_leads_with_neither_bos_nor_cls(src: Path) -> None:
    """A template ``</s> $A`` while bos_token is <s> and no cls_token: </s> becomes the CLS
    token, and add_bos_token (not in tokenizer_config.json here) true."""
    _edit_json(src / "tokenizer.json", post_processor=_template("</s>", 2))
    _edit_json(src / "tokenizer_config.json", add_bos_token=None)


def _normalizer(*steps: dict[str, Any]) -> Any:
    """A SentencePiece-style normalizer (prepend ▁, spaces to ▁) after *steps*."""
    def edit(src: Path) -> None:
        doc = json.loads((src / "tokenizer.json").read_text())
        doc["normalizer"]["normalizers"][:0] = list(steps)
        (src / "tokenizer.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    return edit


_BERT_NORMALIZER = {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                    "strip_accents": None, "lowercase": False}


SPECIAL_CASES = {
    "bundled": ("llama", "gpt-2", None),
    "qwen2": ("qwen2", "qwen2", None),
    "llama-bpe": ("llama", "llama-bpe", None),
    "llama-spm": ("mistral", "llama-spm", None),
    "roberta-processing": ("llama", "gpt-2", _roberta),
    "sep-between-pairs": ("llama", "gpt-2", _sep_between_pairs),
    "trailing-end-of-text": ("llama", "llama-bpe", _trailing_end_of_text),
    "no-tokenizer-config": ("llama", "gpt-2", _no_tokenizer_config),
    "dict-tokens-and-add-flags": ("mistral", "llama-spm", _dict_tokens_and_add_flags),
    "add-flags-disagree": ("mistral", "llama-spm", _add_flags_disagree),
    "byte-level-against-add-eos": ("qwen2", "qwen2", _byte_level_against_add_eos),
    "template-leads-with-unset-bos": ("qwen2", "qwen2", _template_leads_with_unset_bos),
    "template-leads-with-neither-bos-nor-cls": ("mistral", "llama-spm", _template_leads_with_neither_bos_nor_cls),
    "lowercase-normalizer": ("mistral", "llama-spm", _normalizer({"type": "Lowercase"}, {"type": "StripAccents"})),
    "bert-normalizer": ("mistral", "llama-spm", _normalizer(_BERT_NORMALIZER)),
    "bert-normalizer-then-lowercase": ("mistral", "llama-spm", _normalizer(_BERT_NORMALIZER, {"type": "Lowercase"})),
}


@pytest.mark.parametrize("case", SPECIAL_CASES)
def test_special_tokens_are_gguf_special_vocabs(case, tmp_path, convert):
    arch, kind, edit = SPECIAL_CASES[case]
    if case == "bundled":
        src = copy_bundled(tmp_path / "set" / "m")
    else:
        src = make_tiny_checkpoint(tmp_path / "set" / "m", arch, tokenizer=kind)
    if edit is not None:
        edit(src)
    path, _ = convert(tmp_path / "set")
    spm = kind == "llama-spm"
    n_vocab = len(vocab(path)["tokenizer.ggml.tokens"])
    theirs = llama_cpp_special(src, load_merges=not spm, n_vocab=n_vocab if spm else None)
    same_keys(special_keys(path), theirs)


def _special_case(case: str, root: Path, convert: Any) -> tuple[dict[str, Any], list[str]]:
    """One of SPECIAL_CASES converted: (its tokenizer keys, the log)."""
    arch, kind, edit = SPECIAL_CASES[case]
    src = make_tiny_checkpoint(root / "m", arch, tokenizer=kind)
    edit(src)
    path, logs = convert(root)
    return vocab(path), logs


def test_byte_level_post_processor_adds_neither_bos_nor_eos(tmp_path, convert):
    """Qwen2: add_eos_token false is written (PyPI's gguf 0.19.0 wrote none), whatever
    tokenizer_config.json says (a warning when it says otherwise)."""
    make_tiny_checkpoint(tmp_path / "plain" / "m", "qwen2")
    path, logs = convert(tmp_path / "plain")
    keys = vocab(path)
    assert (keys["tokenizer.ggml.add_bos_token"], keys["tokenizer.ggml.add_eos_token"]) == (False, False)
    assert not [m for m in logs if "warning" in m]
    keys, logs = _special_case("byte-level-against-add-eos", tmp_path / "set", convert)
    assert keys["tokenizer.ggml.add_eos_token"] is False
    assert any("add_eos_token=true" in m and "add_eos_token=false is written" in m for m in logs), logs


def test_post_processor_wins_over_tokenizer_config(tmp_path, convert):
    keys, logs = _special_case("add-flags-disagree", tmp_path, convert)
    assert (keys["tokenizer.ggml.add_bos_token"], keys["tokenizer.ggml.add_eos_token"]) == (True, True)
    warnings = [m for m in logs if "warning" in m]
    assert len(warnings) == 1 and "add_bos_token=false" in warnings[0], logs


def test_template_leading_token_that_is_neither_bos_nor_cls(tmp_path, convert):
    keys, _ = _special_case("template-leads-with-unset-bos", tmp_path / "a", convert)
    tokens = keys["tokenizer.ggml.tokens"]
    assert tokens[keys["tokenizer.ggml.bos_token_id"]] == "<|im_start|>"  # not config.json's <|endoftext|>
    assert keys["tokenizer.ggml.add_bos_token"] is True
    keys, _ = _special_case("template-leads-with-neither-bos-nor-cls", tmp_path / "b", convert)
    tokens = keys["tokenizer.ggml.tokens"]
    assert tokens[keys["tokenizer.ggml.bos_token_id"]] == "<s>" and keys["tokenizer.ggml.add_bos_token"] is True


def test_normalizer_flags(tmp_path, convert):
    """Written as llama.cpp's converter writes them, with a warning: llama.cpp reads them
    only for WordPiece and whitespace tokenizers, not for a SentencePiece-style one."""
    keys, logs = _special_case("lowercase-normalizer", tmp_path / "a", convert)
    assert (keys["tokenizer.ggml.normalizer.lowercase"], keys["tokenizer.ggml.normalizer.strip_accents"]) \
        == (True, True)
    assert any("the normalizer lowercases or strips accents" in m for m in logs), logs
    keys, logs = _special_case("bert-normalizer", tmp_path / "b", convert)
    assert keys["tokenizer.ggml.normalizer.lowercase"] is False
    assert "tokenizer.ggml.normalizer.strip_accents" not in keys  # null: unset
    assert not [m for m in logs if "warning" in m]
    keys, _ = _special_case("bert-normalizer-then-lowercase", tmp_path / "c", convert)
    assert keys["tokenizer.ggml.normalizer.lowercase"] is True  # the last step that says wins


def test_byte_level_tokenizer_with_a_lowercase_normalizer_is_refused(tmp_path, convert):
    """llama.cpp's byte-level BPE tokenizer does not lowercase: converting it would make a
    model that tokenizes otherwise than Hugging Face (llama.cpp's converter would convert it)."""
    from modelbuild.weights import FormatError

    src = make_tiny_checkpoint(tmp_path / "set" / "m", "qwen2")
    _edit_json(src / "tokenizer.json", normalizer={"type": "Sequence", "normalizers": [
        {"type": "NFC"}, {"type": "Lowercase"}]})
    with pytest.raises(FormatError, match=r"normalizer Sequence\[NFC\(\), Lowercase\(\)\] is not supported"):
        convert(tmp_path / "set")


def test_bundled_example_adds_no_separator(tmp_path, convert):
    """The pair template ``<s> A <s> B`` puts <s>, neither SEP nor EOS, between the two."""
    copy_bundled(tmp_path / "set" / "m")
    path, _ = convert(tmp_path / "set")
    keys = vocab(path)
    assert (keys["tokenizer.ggml.add_bos_token"], keys["tokenizer.ggml.add_sep_token"]) == (True, False)
    assert "tokenizer.ggml.add_eos_token" not in keys


def test_additional_chat_templates(tmp_path, convert):
    src = copy_bundled(tmp_path / "set" / "m")
    _edit_json(src / "tokenizer_config.json", chat_template=None)
    (src / "chat_template.jinja").write_text("{{ messages }}")
    (src / "additional_chat_templates").mkdir()
    (src / "additional_chat_templates" / "tool_use.jinja").write_text("{{ tools }}")
    (src / "additional_chat_templates" / "rag.jinja").write_text("{{ documents }}")
    path, _ = convert(tmp_path / "set")
    ours = special_keys(path)
    theirs = llama_cpp_special(src, load_merges=True, n_vocab=None)

    def by_key(keys: list[tuple[Any, ...]]) -> dict[str, Any]:  # gguf-py lists the names in set order
        return {k[0]: sorted(k[1]) if k[0] == "tokenizer.chat_templates" else k[1] for k in keys}

    assert by_key(ours) == by_key([(k, v.value) for k, v in theirs])
    assert by_key(ours)["tokenizer.chat_template.rag"] == "{{ documents }}"


# -- tokenizer.model: SentencePiece scores and types --------------------------------------------


def expected_sentencepiece(pieces: list[tuple[str, float, int]], vocab_size: int, added_tokens: dict[str, int],
                           tokenizer_config: dict[str, Any]) -> tuple[list[str], list[float], list[int]]:
    """llama.cpp's ``_create_vocab_sentencepiece`` on these pieces (what
    ``SentencePieceProcessor`` answers for them: IsUnknown, IsControl, IsUnused, IsByte)."""
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [SP_UNUSED] * vocab_size
    for i, (text, score, ptype) in enumerate(pieces[:vocab_size]):
        tokens[i], scores[i] = text, score
        types[i] = ptype if ptype in (SP_UNKNOWN, SP_CONTROL, SP_UNUSED, SP_BYTE) else SP_NORMAL
    for text, i in added_tokens.items():
        tokens[i], scores[i], types[i] = text, -1000.0, SP_USER_DEFINED
    for key, entry in tokenizer_config.get("added_tokens_decoder", {}).items():
        i, text = int(key), entry["content"]
        special = entry.get("special") or (text.startswith("<|") and text.endswith("|>"))
        tokens[i] = text if special else text.replace("▁", " ")
        scores[i], types[i] = -1000.0, SP_CONTROL if special else SP_USER_DEFINED
    return tokens, scores, types


def _spm_checkpoint(root: Path, *, decoder: bool) -> tuple[Path, list[tuple[str, float, int]]]:
    src = make_tiny_checkpoint(root, "mistral")
    pieces = spm_pieces()
    if not decoder:  # Llama 2's tokenizer_config.json has no added_tokens_decoder
        _edit_json(src / "tokenizer_config.json", added_tokens_decoder=None)
    (src / "tokenizer.model").write_bytes(sentencepiece_model(pieces))
    return src, pieces


@pytest.mark.parametrize("decoder", [False, True], ids=["llama2-config", "added-tokens-decoder"])
def test_tokenizer_model_gives_scores_and_types(decoder, tmp_path, convert):
    src, pieces = _spm_checkpoint(tmp_path / "set" / "m", decoder=decoder)
    n = len(pieces)
    # the model's last pieces typed USER_DEFINED and UNUSED, and two left out of tokenizer.model
    # (their ids pad), one of them named by added_tokens.json
    pieces[n - 4] = (pieces[n - 4][0], pieces[n - 4][1], SP_USER_DEFINED)
    pieces[n - 3] = (pieces[n - 3][0], pieces[n - 3][1], SP_UNUSED)
    (src / "tokenizer.model").write_bytes(sentencepiece_model(pieces[:n - 2]))
    added = {"<extra_0>": n - 1}
    (src / "added_tokens.json").write_text(json.dumps(added))
    path, _ = convert(tmp_path / "set")
    keys = vocab(path)
    tokenizer_config = json.loads((src / "tokenizer_config.json").read_text())
    tokens, scores, types = expected_sentencepiece(pieces[:n - 2], n, added, tokenizer_config)
    assert keys["tokenizer.ggml.tokens"] == tokens
    assert keys["tokenizer.ggml.token_type"] == types
    assert keys["tokenizer.ggml.scores"] == [float(np.float32(s)) for s in scores]
    unk = keys["tokenizer.ggml.unknown_token_id"]
    assert tokens[unk] == "<unk>"
    # llama.cpp writes UNKNOWN for the unknown piece, unless added_tokens_decoder marks it special
    assert types[unk] == (gguf.TokenType.CONTROL if decoder else gguf.TokenType.UNKNOWN)
    assert keys["tokenizer.ggml.scores"][300] == pieces[300][1] != 0
    assert keys["tokenizer.ggml.token_type"][n - 4] == gguf.TokenType.NORMAL  # user-defined piece: NORMAL
    assert (tokens[n - 2], scores[n - 2], tokens[n - 1]) == (f"[PAD{n - 2}]", -10000.0, "<extra_0>")
    same_keys(special_keys(path), llama_cpp_special(src, load_merges=False, n_vocab=n))


def test_tokenizer_model_without_it_scores_from_merges(tmp_path, convert):
    """Without tokenizer.model, the tokenizer.json path as before (scores from the merges)."""
    src = make_tiny_checkpoint(tmp_path / "set" / "m", "mistral")
    path, _ = convert(tmp_path / "set")
    types = vocab(path)["tokenizer.ggml.token_type"]
    assert types[:3] == [gguf.TokenType.CONTROL] * 3  # added special tokens, as llama.cpp's LlamaHfVocab
    assert not (src / "tokenizer.model").exists()


def test_tokenizer_model_beside_a_byte_level_tokenizer_is_not_used(tmp_path, convert):
    src = copy_bundled(tmp_path / "set" / "m")
    (src / "tokenizer.model").write_bytes(sentencepiece_model(spm_pieces()))
    path, logs = convert(tmp_path / "set")
    assert vocab(path)["tokenizer.ggml.model"] == "gpt2"
    assert any("m/tokenizer.model is not used" in m for m in logs), logs


def test_a_tokenizer_model_that_is_not_one(tmp_path, convert):
    from modelbuild.weights import FormatError

    src = make_tiny_checkpoint(tmp_path / "set" / "m", "mistral")
    (src / "tokenizer.model").write_bytes(b"IQ== 0\nIg== 1\n")  # tiktoken's format, not a protobuf
    with pytest.raises(FormatError, match=r"^m/tokenizer.model: not a SentencePiece model"):
        convert(tmp_path / "set")


def test_sentencepiece_reader_defaults_and_errors():
    from modelbuild_plugins.hf_to_gguf import ProtoError, read_pieces

    # a piece with neither score nor type: 0.0 and NORMAL, the proto's defaults
    assert [(p.text, p.score, p.type) for p in read_pieces(b"\n\x03\n\x01a")] == [("a", 0.0, SP_NORMAL)]
    for bad in (b"", b"\n\x05\n\x01a", b"\x0b", b"\n\x03\n\x01\xff", b"\x80"):
        with pytest.raises(ProtoError):
            read_pieces(bad)


@pytest.mark.llama
def test_llama_cpp_tokenizes_like_hugging_face_with_tokenizer_model(tmp_path, convert):
    """The scores from tokenizer.model make llama.cpp merge as Hugging Face does."""
    try:
        import llama_cpp
    except ImportError as exc:  # a failure, not a skip, as in tests/plugins/test_hf_to_gguf.py
        pytest.fail(f"llama-cpp-python is required ({exc})", pytrace=False)
    from tokenizers import Tokenizer

    src, _ = _spm_checkpoint(tmp_path / "set" / "m", decoder=False)
    path, _ = convert(tmp_path / "set")
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    hf = Tokenizer.from_file(str(src / "tokenizer.json"))
    for text in ("Hello, world! The quick brown fox jumps over the lazy dog.",
                 "Café, naïve; 你好，世界！ 🦙 42", "  leading spaces\n\nnewlines\ttabs"):
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == \
            hf.encode(text, add_special_tokens=False).ids, text


# -- tensor order ------------------------------------------------------------------------------


def _header_order(path: Path) -> list[str]:
    """The tensors of a safetensors file in its header's order: the order llama.cpp's
    converter reads, and writes, them in."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return [k for k in json.loads(raw[8:8 + n]) if k != "__metadata__"]


def test_tensors_are_in_llama_cpps_order(tmp_path, convert):
    src = copy_bundled(tmp_path / "set" / "m")
    path, _ = convert(tmp_path / "set")
    names = [t.name for t in gguf.GGUFReader(str(path)).tensors]
    mapping = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    order = _header_order(src / "model.safetensors")
    assert names == [mapping.get_name(n, try_suffixes=(".weight", ".bias")) for n in order]
    assert names[:2] == ["output.weight", "token_embd.weight"]


def test_mixed_dtypes_are_in_llama_cpps_order_and_sharding_does_not_matter(tmp_path, convert):
    """safetensors lays a file out by dtype (F32 before F16), then by name; a sharded
    checkpoint gives the same file as the checkpoint in one file."""
    from safetensors.numpy import load_file, save_file

    one = make_tiny_checkpoint(tmp_path / "one" / "m", "llama")
    weights = load_file(str(one / "model.safetensors"))
    mixed = {k: (v if k.endswith("norm.weight") else v.astype(np.float16)) for k, v in weights.items()}
    save_file(mixed, str(one / "model.safetensors"), metadata={"format": "pt"})
    sharded = tmp_path / "sharded" / "m"
    shutil.copytree(one, sharded)
    (sharded / "model.safetensors").unlink()
    names = sorted(mixed)
    halves = {"model-00001-of-00002.safetensors": names[len(names) // 2:],
              "model-00002-of-00002.safetensors": names[:len(names) // 2]}
    for shard, part in halves.items():
        save_file({k: mixed[k] for k in part}, str(sharded / shard), metadata={"format": "pt"})
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: s for s, part in halves.items() for k in part}}))

    a, _ = convert(tmp_path / "one")
    b, _ = convert(tmp_path / "sharded")
    assert a.read_bytes() == b.read_bytes()
    names = [t.name for t in gguf.GGUFReader(str(a)).tensors]
    mapping = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    order = _header_order(one / "model.safetensors")
    assert names == [mapping.get_name(n, try_suffixes=(".weight", ".bias")) for n in order]
    assert order[0].endswith("norm.weight")  # the F32 tensors first


def test_a_build_hands_the_doc_readme_to_the_converter(build, home, tiny_llama):
    """Through a real build of the bundled layout (README.md listed with DOC, as modctl and
    the example list it): the GGUF carries the card's name, license and tags; the README
    keeps its own doc layer, once; a README edit re-converts, while a cast chain, which
    reads no card, stays cached."""
    from helpers import blob, read_artifact

    modelfile = ("NAME tiny\nCONFIG config.json tokenizer.json tokenizer_config.json\n"
                 "MODEL model.safetensors\nDOC README.md\nCONVERT gguf\n")
    result = build(tiny_llama, modelfile)
    manifest, _config = read_artifact(home / "store", result["digest"])
    paths = [layer["annotations"]["org.cncf.model.filepath"] for layer in manifest["layers"]]
    assert paths.count("README.md") == 1
    (weights,) = [layer for layer in manifest["layers"] if layer["annotations"]["org.cncf.model.filepath"]
                  .endswith(".gguf")]
    gguf_file = tiny_llama / "out.gguf"
    gguf_file.write_bytes(blob(home / "store", weights["digest"]))
    keys = {k: v for k, v, _ in general_keys(gguf_file)}
    assert keys["general.name"] == "Tiny Llama" and keys["general.license"] == "apache-2.0"
    assert "testing" in keys["general.tags"]

    readme = tiny_llama / "README.md"
    readme.write_text(readme.read_text().replace("model_name: Tiny Llama", "model_name: Tiny Llama Two"))
    again = build(tiny_llama)
    assert any(step.startswith("transform") for step in again["stats"]["executed"])
    cast = modelfile.replace("CONVERT gguf", "QUANTIZE bfloat16")
    build(tiny_llama, cast)
    readme.write_text(readme.read_text() + "\nMore words.\n")
    assert not [s for s in build(tiny_llama, cast)["stats"]["executed"] if s.startswith("transform")]


def test_conversion_reports_progress_per_chunk_not_per_tensor(tmp_path, model_set, transform_context, monkeypatch):
    """A big tensor is converted in chunks, and each chunk is reported as it is written:
    the bar moves during an embedding of gigabytes, not after it."""
    from modelbuild_plugins.hf_to_gguf import convert as convert_module

    copy_bundled(tmp_path / "set" / "tiny-llama")
    monkeypatch.setattr(convert_module, "CHUNK_ELEMENTS", 4096)
    ctx = transform_context(host=HOST)
    result = HOST.converters.get("hf-to-gguf").convert(model_set(tmp_path / "set"), {"outtype": "f16"}, ctx)
    (out,) = [r for r in result if isinstance(r, Output)]
    tensors = gguf.GGUFReader(out.file).tensors
    assert ctx.done == ctx.total == sum(int(t.n_elements) for t in tensors)
    assert len(ctx.reports) > 2 * len(tensors)  # the big tensors are reported chunk by chunk
    widest = max(int(t.shape[0]) for t in tensors)
    assert max(ctx.reports) <= 4096 + widest  # no report larger than a chunk (whole rows of ≤ 4096 elements)
