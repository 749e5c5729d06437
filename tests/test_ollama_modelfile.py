"""The ``ollama`` frontend (``plugins/ollama/``): Ollama Modelfiles build into ModelPack
artifacts that carry every command they set, as docs/ollama.md says, and bad ones fail at
the token, in one line, with exit code 2.

Upstream, read at ollama/ollama commit fb30760996871fa9460115c753afd2c60d4ab0f7:

* ``tests/data/ollama/docs/``: three Modelfiles from Ollama's docs/modelfile.mdx, each
  citing its place; only a FROM line is changed, to name a GGUF file the test writes;
* the parser cases below are ported from parser/parser_test.go (each test names its Go
  test); the parameter types are api/types.go's ``Options`` and ``Runner``;
* ``tests/data/ollama/errors/<case>/``: an Ollama Modelfile, the exact line the user sees
  in ``expected.txt`` (``{context}`` is the directory it is built in) and the files around
  it in ``setup.json``, as tests/test_kitfile.py does for Kitfiles.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from helpers import read_artifact, validate_against_shared_schema
from support import EXAMPLES, age, safetensors_blob, write_model_dir

from modelbuild.api import FileKind, ModelfileError, OpenedSource, RemoteFile, SourceListing, Span
from modelbuild_plugins.ollama import _carriage as carriage
from modelbuild_plugins.ollama._frontend import OllamaFrontend, ollama_reference
from modelbuild_plugins.ollama._parse import MAX_CHARS, MAX_COMMANDS, MAX_VALUE, parse

DATA = Path(__file__).resolve().parent / "data" / "ollama"
TINY = EXAMPLES / "tiny-llama" / "model"
ERROR_CASES = sorted(p for p in (DATA / "errors").iterdir() if p.is_dir())
MT = "application/vnd.cncf.model."
WEIGHT, CONFIG = MT + "weight.v1.raw", MT + "weight.config.v1.raw"
P = carriage.PREFIX


# -- helpers -----------------------------------------------------------------------------------
def write_gguf(path: Path, *, adapter: bool = False) -> Path:
    """A tiny llama GGUF (a LoRA adapter's, with *adapter*), aged past the racy window."""
    import gguf
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-lora" if adapter else "tiny")
    if adapter:
        writer.add_type("adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", 16.0)
        writer.add_tensor("blk.0.attn_q.weight.lora_a", np.ones((4, 32), dtype=np.float32))
        writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((32, 4), dtype=np.float32))
    else:
        writer.add_head_count(4)
        writer.add_block_count(1)
        writer.add_tensor("token_embd.weight", np.arange(64 * 32, dtype=np.float32).reshape(64, 32))
        writer.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    age(path)
    return path


def docs_context(name: str, tmp_path: Path, *ggufs: str) -> Path:
    """A copy of ``tests/data/ollama/docs/NAME`` with the GGUF files its FROM (and ADAPTER) name."""
    ctx = tmp_path / name
    shutil.copytree(DATA / "docs" / name, ctx)
    for file in ggufs:
        write_gguf(ctx / file, adapter="lora" in file)
    for path in ctx.rglob("*"):
        age(path)
    return ctx


def build(mb, home: Path, ctx: Path, tag: str, build_file: str = "Ollama.Modelfile") -> tuple[dict, dict, dict]:
    """``modelbuild build -f BUILD_FILE -t TAG`` in *ctx*: the manifest and config stored,
    and ``inspect --json`` (for the runtime description)."""
    run = mb("build", "-f", build_file, "-t", tag, "--json", "--progress", "quiet", cwd=ctx, timeout=300)
    assert run.rc == 0, run.err
    manifest, config = read_artifact(home / "store", run.json()["digest"])
    validate_against_shared_schema(config)
    inspected = mb("inspect", tag, "--json")
    assert inspected.rc == 0, inspected.err
    return manifest, config, inspected.json()


def layers(manifest: dict) -> list[tuple[str, str]]:
    return [(l["annotations"]["org.cncf.model.filepath"], l["mediaType"]) for l in manifest["layers"]]


def ollama_annotations(manifest: dict) -> dict[str, str]:
    """The manifest's ``dev.modelbuild.ollama.*`` annotations, as stored (text)."""
    return {k[len(P):]: v for k, v in manifest.get("annotations", {}).items() if k.startswith(P)}


def is_canonical(text: str) -> bool:
    return text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


# -- three Modelfiles from Ollama's documentation ------------------------------------------------
def test_the_docs_basic_mario_modelfile_builds_with_every_field(mb, home, tmp_path):
    """docs/modelfile.mdx "Basic Modelfile": PARAMETER temperature and num_ctx, SYSTEM, comments."""
    ctx = docs_context("basic", tmp_path, "model.gguf")
    manifest, config, inspected = build(mb, home, ctx, "mario:1")
    assert layers(manifest) == [("model.gguf", WEIGHT)]  # FROM ./model.gguf: one MODEL layer
    assert config["config"]["format"] == "gguf"
    assert "licenses" not in config["descriptor"]  # no LICENSE
    assert ollama_annotations(manifest) == {
        # PARAMETER temperature 1 (a Go float32: 1.0) and PARAMETER num_ctx 4096 (an int64)
        "params": '{"num_ctx":4096,"temperature":1.0}',
        # SYSTEM, unquoted: the rest of the line, trimmed
        "system": "You are Mario from super mario bros, acting as an assistant.",
    }
    assert inspected["runtime"]["contextLength"] == 4096  # num_ctx is also RUNTIME context=4096


def test_the_docs_ollama_show_output_builds_with_every_field(mb, home, tmp_path):
    """docs/modelfile.mdx, ``ollama show --modelfile llama3.2``: a TEMPLATE block over
    several lines, four PARAMETER stop lines, comment lines before FROM."""
    ctx = docs_context("show-modelfile", tmp_path, "model.gguf")
    manifest, config, inspected = build(mb, home, ctx, "llama3.2-show:1")
    assert layers(manifest) == [("model.gguf", WEIGHT)]
    assert config["config"]["format"] == "gguf"
    ann = ollama_annotations(manifest)
    assert set(ann) == {"template", "params"}
    assert ann["template"] == (  # inside the """ block, exactly
        "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
        "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>")
    assert json.loads(ann["params"]) == {  # stop, repeated: a list, in order, the quotes removed
        "stop": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|reserved_special_token"]}
    assert is_canonical(ann["params"])
    assert inspected["runtime"]["contextLength"] is None  # no num_ctx: no RUNTIME context either


def test_the_docs_instructions_build_with_every_field(mb, home, tmp_path):
    """docs/modelfile.mdx "Instructions": every documented example at once, parameters of
    every type, TEMPLATE, SYSTEM, ADAPTER, LICENSE, MESSAGE and REQUIRES."""
    ctx = docs_context("instructions", tmp_path, "ollama-model.gguf", "ollama-lora.gguf")
    manifest, config, inspected = build(mb, home, ctx, "instructions:1")
    assert layers(manifest) == [("ollama-lora.gguf", WEIGHT), ("ollama-model.gguf", WEIGHT)]  # ADAPTER: MODEL too
    assert config["config"]["format"] == "gguf"
    assert "licenses" not in config["descriptor"]  # "<license text>" is no SPDX identifier
    ann = ollama_annotations(manifest)
    assert json.loads(ann["params"]) == {
        "num_ctx": 4096, "repeat_last_n": 64, "repeat_penalty": 1.1, "temperature": 0.7, "seed": 42,
        "stop": ["AI assistant:"], "num_predict": 42, "draft_num_predict": 4, "top_k": 40, "top_p": 0.9,
        "min_p": 0.05}
    assert ann["params"] == ('{"draft_num_predict":4,"min_p":0.05,"num_ctx":4096,"num_predict":42,'
                             '"repeat_last_n":64,"repeat_penalty":1.1,"seed":42,"stop":["AI assistant:"],'
                             '"temperature":0.7,"top_k":40,"top_p":0.9}')  # float32s as their shortest decimals
    assert ann["template"] == ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
                               "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
                               "<|im_start|>assistant\n")
    assert ann["system"] == "<system message>"
    assert ann["adapter"] == "ollama-lora.gguf"  # its path in the artifact
    assert json.loads(ann["license"]) == ["\n<license text>\n"]  # the block's line breaks kept
    assert json.loads(ann["messages"]) == [
        {"role": "user", "content": "Is Toronto in Canada?"}, {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "Is Sacramento in Canada?"}, {"role": "assistant", "content": "no"},
        {"role": "user", "content": "Is Ontario in Canada?"}, {"role": "assistant", "content": "yes"}]
    assert ann["requires"] == "0.14.0"
    assert set(ann) == {"params", "template", "system", "adapter", "license", "messages", "requires"}
    assert all(is_canonical(ann[k]) for k in ("params", "license", "messages"))
    assert inspected["runtime"]["contextLength"] == 4096


# -- FROM a safetensors directory, ADAPTER, choosing the frontend ----------------------------------
def test_from_a_safetensors_directory(mb, home, tmp_path):
    """``FROM ./model``: the directory is the context; weights are MODEL, the config and
    tokenizer files CONFIG; README.md and LICENSE are not packaged. A LICENSE that is an
    SPDX identifier is also the descriptor's."""
    shutil.copytree(TINY, tmp_path / "model")
    (tmp_path / "Ollama.Modelfile").write_text('FROM ./model\nLICENSE Apache-2.0\nLICENSE """\nAll rights\n"""\n'
                                               "PARAMETER num_ctx 64\nPARAMETER use_mmap false\n")
    for path in tmp_path.rglob("*"):
        age(path)
    manifest, config, inspected = build(mb, home, tmp_path, "tiny-ollama:1")
    assert layers(manifest) == [("config.json", CONFIG), ("generation_config.json", CONFIG),
                                ("model.safetensors", WEIGHT), ("tokenizer.json", CONFIG),
                                ("tokenizer_config.json", CONFIG)]
    assert config["config"]["format"] == "safetensors"
    assert config["descriptor"]["licenses"] == ["Apache-2.0"]  # the SPDX one only
    ann = ollama_annotations(manifest)
    assert json.loads(ann["license"]) == ["Apache-2.0", "\nAll rights\n"]
    assert ann["params"] == '{"num_ctx":64,"use_mmap":false}'
    assert inspected["runtime"]["contextLength"] == 64


def test_a_safetensors_adapter_directory(mb, home, tmp_path):
    """``ADAPTER ./lora``: its safetensors weights MODEL, adapter_config.json CONFIG, and the
    annotation names the directory."""
    write_gguf(tmp_path / "model.gguf")
    write_model_dir(tmp_path / "lora", {"adapter_model.safetensors": safetensors_blob(b"\x00" * 16),
                                        "adapter_config.json": '{"r": 4, "lora_alpha": 16}\n'})
    (tmp_path / "Ollama.Modelfile").write_text("FROM ./model.gguf\nADAPTER ./lora\n")
    age(tmp_path / "Ollama.Modelfile")
    manifest, config, _ = build(mb, home, tmp_path, "with-lora:1")
    assert layers(manifest) == [("lora/adapter_config.json", CONFIG), ("lora/adapter_model.safetensors", WEIGHT),
                                ("model.gguf", WEIGHT)]
    assert config["config"]["format"] == "gguf"  # FROM's
    assert ollama_annotations(manifest) == {"adapter": "lora"}


def test_a_gguf_adapter_in_a_subdirectory_and_a_second_from(mb, home, tmp_path):
    """A second FROM (a vision model's projector) adds its file; an adapter below the
    context keeps its relative path."""
    write_gguf(tmp_path / "model.gguf")
    write_gguf(tmp_path / "mmproj.gguf")
    write_gguf(tmp_path / "adapters" / "lora.gguf", adapter=True)
    (tmp_path / "Ollama.Modelfile").write_text("FROM ./model.gguf\nFROM ./mmproj.gguf\nADAPTER adapters/lora.gguf\n")
    manifest, _, _ = build(mb, home, tmp_path, "vision:1")
    assert layers(manifest) == [("adapters/lora.gguf", WEIGHT), ("mmproj.gguf", WEIGHT), ("model.gguf", WEIGHT)]
    assert ollama_annotations(manifest) == {"adapter": "adapters/lora.gguf"}


MARIO = "FROM ./model.gguf\nSYSTEM You are Mario.\n"


@pytest.mark.parametrize("name", ["Ollama.Modelfile", "mario.Ollama.Modelfile", "Ollamafile", "mario.ollama"])
def test_the_frontend_is_chosen_by_the_files_name(name, mb, home, tmp_path):
    write_gguf(tmp_path / "model.gguf")
    (tmp_path / name).write_text(MARIO)
    manifest, _, _ = build(mb, home, tmp_path, "mario:1", build_file=name)
    assert ollama_annotations(manifest) == {"system": "You are Mario."}


def test_a_syntax_line_chooses_it_whatever_the_name(mb, home, tmp_path):
    """``# syntax=ollama`` (an Ollama comment) makes any file an Ollama Modelfile; a plain
    ``Modelfile`` without it stays the core's, whose FROM names a directory."""
    write_gguf(tmp_path / "model.gguf")
    (tmp_path / "build.txt").write_text("# syntax=ollama\n" + MARIO)
    (tmp_path / "Modelfile").write_text("# syntax=ollama\n" + MARIO)
    for build_file in ("build.txt", "Modelfile"):
        manifest, _, _ = build(mb, home, tmp_path, "mario:1", build_file=build_file)
        assert layers(manifest) == [("model.gguf", WEIGHT)]
        assert ollama_annotations(manifest) == {"system": "You are Mario."}
    (tmp_path / "Modelfile").write_text(MARIO)
    run = mb("build", "-f", "Modelfile", "-t", "mario:2", "--progress", "quiet", cwd=tmp_path)
    assert run.rc == 2 and run.err.startswith("Modelfile:1:6: FROM ./model.gguf: not a directory"), run.err


def test_the_plugin_is_listed(mb):
    run = mb("plugins")
    assert run.rc == 0
    assert re.search(r"^ollama +\S+ +modelbuild +frontend:ollama, source:ollama$", run.out, re.M), run.out


# -- FROM an Ollama model name --------------------------------------------------------------------
@pytest.mark.parametrize("name, reference", [
    ("llama3.2", "ollama://registry.ollama.ai/library/llama3.2:latest"),
    ("qwen2:0.5b", "ollama://registry.ollama.ai/library/qwen2:0.5b"),
    ("library/qwen2:0.5b", "ollama://registry.ollama.ai/library/qwen2:0.5b"),
    ("jmorganca/mario", "ollama://registry.ollama.ai/jmorganca/mario:latest"),
    ("host.example/ns/model:tag", "ollama://host.example/ns/model:tag"),
    ("localhost:5000/ns/model", "ollama://localhost:5000/ns/model:latest"),
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
     "ollama://hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"),
    ("llama3:7b-instruct-q4_K_M", "ollama://registry.ollama.ai/library/llama3:7b-instruct-q4_K_M"),
    ("what?is:this", None), ("ns.with.dots/model", None), ("-model", None), ("a/b/c/d", None), ("m:", None),
    ("x" * 81, None),
    ("qwen2@sha256:" + "a" * 64, "ollama://registry.ollama.ai/library/qwen2@sha256:" + "a" * 64),
    ("qwen2:0.5b@sha256:" + "a" * 64, "ollama://registry.ollama.ai/library/qwen2:0.5b@sha256:" + "a" * 64),
    ("qwen2@sha256:abc", None),
])
def test_ollama_model_names_become_references(name, reference):
    """types/model/name.go's parts: host (may hold ``.`` and ``:``), namespace (no ``.``),
    model, tag, each starting with a letter, digit or ``_``; defaults filled in."""
    assert ollama_reference(name) == reference


class FakeSources:
    """A SourceRegistry's ``open``, as a registry source would answer it."""

    def __init__(self, root: Path, listing: SourceListing | None) -> None:
        self.root, self.listing, self.calls = root, listing, []

    def open(self, reference: str, *, base_dir: Path) -> OpenedSource:
        self.calls.append((reference, base_dir))
        return OpenedSource(root=self.root, listing=self.listing, source="ollama")


BASE_LABELS = {
    carriage.TEMPLATE: "{{ .Prompt }}",
    carriage.SYSTEM: "You are Qwen.",
    carriage.PARAMS: '{"num_ctx":2048,"stop":["<|im_end|>"],"temperature":0.7}',
    carriage.LICENSE: '["Apache-2.0"]',
    "org.opencontainers.image.base.name": "qwen2",
}


def load(text: str, tmp_path: Path, sources=None, filename: str = "Ollama.Modelfile"):
    return OllamaFrontend().load(text, filename=filename, base_dir=tmp_path, default_context=tmp_path,
                                 build_args={}, sources=sources)


def test_a_model_name_is_opened_as_an_ollama_reference_and_layered_over(tmp_path):
    """``FROM qwen2:0.5b`` asks the source registry for its ollama:// reference; the
    listing's files are packaged with their kinds and its defaults are the base the file's
    own values go over, as ``ollama create`` layers a Modelfile over its FROM model."""
    listing = SourceListing(
        files=(RemoteFile("model.gguf", 8608, kind="model"), RemoteFile("params.json", 10, kind="")),
        descriptor={"name": "qwen2", "version": "0.5b", "licenses": ["Apache-2.0"]},
        config={"format": "gguf"}, labels=BASE_LABELS, name="qwen2")
    sources = FakeSources(tmp_path / "snapshot", listing)
    desc = load("FROM qwen2:0.5b\nPARAMETER temperature 0.2\nPARAMETER stop </s>\nSYSTEM \"\"\nLICENSE MIT\n"
                "MESSAGE user hi\n", tmp_path, sources)
    assert sources.calls == [("ollama://registry.ollama.ai/library/qwen2:0.5b", tmp_path)]
    assert desc.context == tmp_path / "snapshot"
    assert [(f.path, f.kind, f.is_dir) for f in desc.files] == [("model.gguf", FileKind.MODEL, False)]
    assert desc.name is None
    assert desc.descriptor == {"name": "qwen2", "version": "0.5b", "licenses": ["Apache-2.0", "MIT"]}
    assert desc.config == {"format": "gguf"}
    assert desc.labels == {
        carriage.TEMPLATE: "{{ .Prompt }}",  # the base's: the file sets none
        # SYSTEM "" removes the base's system message, as in Ollama
        carriage.PARAMS: '{"num_ctx":2048,"stop":["</s>"],"temperature":0.2}',  # merged by name, the file's win
        carriage.LICENSE: '["Apache-2.0","MIT"]',  # licenses add up
        carriage.MESSAGES: '[{"content":"hi","role":"user"}]',
        "org.opencontainers.image.base.name": "qwen2",
    }
    assert desc.runtime.context == 2048  # the base's num_ctx sizes the runtime too
    assert desc.runtime.context_origin == Span("Ollama.Modelfile", 1, 6)


# -- parsing: ported from parser/parser_test.go ----------------------------------------------------
def go_commands(text: str) -> list[tuple[str, str]]:
    """The commands as Ollama's parser.Command {Name, Args} shows them: FROM is "model", a
    PARAMETER's name is the command's, a MESSAGE's args are "role: content"."""
    out = []
    for c in parse(text, "Modelfile"):
        if c.name == "from":
            out.append(("model", c.value.text))
        elif c.name == "parameter":
            out.append((c.key.text, c.value.text))
        elif c.name == "message":
            out.append(("message", f"{c.key.text}: {c.value.text}"))
        else:
            out.append((c.name, c.value.text))
    return out


LLAMA3_TEMPLATE = ("{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
                   "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>")


def test_parse_file():
    """TestParseFileFile: a TEMPLATE block with blank lines inside, trailing blanks after."""
    text = ("\nFROM model1\nADAPTER adapter1\nLICENSE MIT\nPARAMETER param1 value1\nPARAMETER param2 value2\n"
            'TEMPLATE """' + LLAMA3_TEMPLATE + '"""    \n')
    assert go_commands(text) == [("model", "model1"), ("adapter", "adapter1"), ("license", "MIT"),
                                 ("param1", "value1"), ("param2", "value2"), ("template", LLAMA3_TEMPLATE)]


def test_parse_file_trim_space():
    """TestParseFileTrimSpace: unquoted values are trimmed, blanks inside quotes are kept."""
    text = ('\nFROM "     model 1"\nADAPTER      adapter3\nLICENSE "MIT       "\nPARAMETER param1        value1\n'
            'PARAMETER param2    value2\nTEMPLATE """   ' + LLAMA3_TEMPLATE + '   """    \n')
    assert go_commands(text) == [("model", "     model 1"), ("adapter", "adapter3"), ("license", "MIT       "),
                                 ("param1", "value1"), ("param2", "value2"),
                                 ("template", "   " + LLAMA3_TEMPLATE + "   ")]


@pytest.mark.parametrize("text, expected", [
    ('FROM "FOO  BAR  "', [("model", "FOO  BAR  ")]),
    ('FROM "FOO BAR"\nPARAMETER param1 value1', [("model", "FOO BAR"), ("param1", "value1")]),
    ("FROM     FOOO BAR    ", [("model", "FOOO BAR")]),
    ("FROM /what/is/the path ", [("model", "/what/is/the path")]),
    ("FROM foo", [("model", "foo")]),
    ("FROM /path/to/model/fp16.bin", [("model", "/path/to/model/fp16.bin")]),
    ("FROM llama3:latest", [("model", "llama3:latest")]),
    ("FROM llama3:7b-instruct-q4_K_M", [("model", "llama3:7b-instruct-q4_K_M")]),
    ("PARAMETER param1 value1\nFROM foo", [("param1", "value1"), ("model", "foo")]),
    ("PARAMETER what the \nFROM lemons make lemonade ", [("what", "the"), ("model", "lemons make lemonade")]),
])
def test_parse_file_from(text, expected):
    """TestParseFileFrom (its missing-FROM cases are the frontend's: error case 04)."""
    assert go_commands(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("\nFROM foo\nMESSAGE system You are a file parser. Always parse things.\n",
     [("model", "foo"), ("message", "system: You are a file parser. Always parse things.")]),
    ("\nFROM foo\nMESSAGE system You are a file parser. Always parse things.",
     [("model", "foo"), ("message", "system: You are a file parser. Always parse things.")]),
    ("\nFROM foo\nMESSAGE system You are a file parser. Always parse things.\nMESSAGE user Hey there!\n"
     "MESSAGE assistant Hello, I want to parse all the things!\n",
     [("model", "foo"), ("message", "system: You are a file parser. Always parse things."),
      ("message", "user: Hey there!"), ("message", "assistant: Hello, I want to parse all the things!")]),
    ('\nFROM foo\nMESSAGE system """\nYou are a multiline file parser. Always parse things.\n"""\n\t\t\t',
     [("model", "foo"), ("message", "system: \nYou are a multiline file parser. Always parse things.\n")]),
])
def test_parse_file_messages(text, expected):
    """TestParseFileMessages (its error cases: error cases 18 and 20, and below)."""
    assert go_commands(text) == expected


@pytest.mark.parametrize("text, expected", [
    ('SYSTEM """\nThis is a\nmultiline system.\n"""\n\t\t\t', "\nThis is a\nmultiline system.\n"),
    ('SYSTEM """\nThis is a\nmultiline system."""\n\t\t\t', "\nThis is a\nmultiline system."),
    ('SYSTEM """This is a\nmultiline system."""\n\t\t\t', "This is a\nmultiline system."),
    ('SYSTEM """This is a multiline system."""\n\t\t\t', "This is a multiline system."),
    ('SYSTEM """\nThis is a multiline system with "quotes".\n"""\n', '\nThis is a multiline system with "quotes".\n'),
    ('SYSTEM """"""\n', ""),
    ('SYSTEM ""\n', ""),
    ('SYSTEM "\'"\n', "'"),
    ('SYSTEM """\'\'"\'""\'""\'"\'\'\'\'\'""\'""\'"""\n', '\'\'"\'""\'""\'"\'\'\'\'\'""\'""\''),
    ('TEMPLATE """\n{{ .Prompt }}\n"""', "\n{{ .Prompt }}\n"),
    # not in parser_test.go, Ollama's rules all the same: no escapes; a quote inside a line
    # ends nothing; a one-quote string may span lines; a # inside a value is text
    ('SYSTEM "say \\"hi\\""\n', 'say \\"hi\\"'),
    ('SYSTEM """a""" b\nc"""\n', 'a""" b\nc'),
    ('SYSTEM "first\nsecond"\n', "first\nsecond"),
    ("SYSTEM Use # for headings\n", "Use # for headings"),
    ('SYSTEM """\n# not a comment\n\n"""\n', "\n# not a comment\n\n"),
])
def test_parse_file_quoted(text, expected):
    """TestParseFileQuoted: multi-line blocks, quotes inside, empty values."""
    (command,) = [c for c in parse("FROM foo\n" + text, "Modelfile") if c.name != "from"]
    assert command.value.text == expected


@pytest.mark.parametrize("line, name, value", [
    ("numa true", "numa", "true"), ("num_ctx 1", "num_ctx", "1"), ("num_batch 1", "num_batch", "1"),
    ("num_gqa 1", "num_gqa", "1"), ("num_gpu 1", "num_gpu", "1"), ("main_gpu 1", "main_gpu", "1"),
    ("use_mmap true", "use_mmap", "true"), ("num_thread 1", "num_thread", "1"), ("num_keep 1", "num_keep", "1"),
    ("seed 1", "seed", "1"), ("num_predict 1", "num_predict", "1"), ("top_k 1", "top_k", "1"),
    ("top_p 1.0", "top_p", "1.0"), ("min_p 0.05", "min_p", "0.05"), ("typical_p 1.0", "typical_p", "1.0"),
    ("repeat_last_n 1", "repeat_last_n", "1"), ("temperature 1.0", "temperature", "1.0"),
    ("repeat_penalty 1.0", "repeat_penalty", "1.0"), ("presence_penalty 1.0", "presence_penalty", "1.0"),
    ("frequency_penalty 1.0", "frequency_penalty", "1.0"), ("penalize_newline true", "penalize_newline", "true"),
    ("stop ### User:", "stop", "### User:"), ("stop ### User: ", "stop", "### User:"),
    ('stop "### User:"', "stop", "### User:"), ('stop "### User: "', "stop", "### User: "),
    ('stop """### User:"""', "stop", "### User:"), ('stop """### User:\n"""', "stop", "### User:\n"),
    ("stop <|endoftext|>", "stop", "<|endoftext|>"), ("stop <|eot_id|>", "stop", "<|eot_id|>"),
    ("stop </s>", "stop", "</s>"),
])
def test_parse_file_parameters(line, name, value):
    """TestParseFileParameters: the parser takes any name; which exist is the frontend's."""
    assert go_commands(f"FROM foo\nPARAMETER {line}\n") == [("model", "foo"), (name, value)]


def test_parse_file_comments_case_and_multibyte():
    """TestParseFileComments, TestParseMultiByte, and the docs' note: commands are not case
    sensitive (a role is: see error case 19)."""
    assert go_commands("\n# comment\nFROM foo\n\t") == [("model", "foo")]
    assert go_commands("FROM test\n\tSYSTEM 你好👋") == [("model", "test"), ("system", "你好👋")]
    assert go_commands("from foo\nParameter top_k 1\nsYsTeM hi\nmessage user yo\n") == [
        ("model", "foo"), ("top_k", "1"), ("system", "hi"), ("message", "user: yo")]
    # a BOM-less CRLF file: the same commands, a CR inside a block kept as Ollama keeps it
    assert go_commands('FROM foo\r\nSYSTEM """a\r\nb"""\r\n') == [("model", "foo"), ("system", "a\r\nb")]


def test_every_token_has_its_line_and_column():
    text = '# c\nFROM ./m.gguf\n  PARAMETER  stop   "x y"\nMESSAGE\tuser\t"""\nhi\n"""\n'
    from_, stop, message = parse(text, "F")
    assert (from_.keyword.span, from_.value.span) == (Span("F", 2, 1), Span("F", 2, 6))
    assert (stop.keyword.span, stop.key.span, stop.value.span) == (Span("F", 3, 3), Span("F", 3, 14),
                                                                   Span("F", 3, 21))
    assert (message.key.span, message.value.span, message.value.text) == (Span("F", 4, 9), Span("F", 4, 14),
                                                                          "\nhi\n")


def test_parse_errors_from_parser_test():
    """The error cases of TestParseFileMessages and TestParseFileQuoted (io.ErrUnexpectedEOF
    and ParserError there), located here."""
    cases = {
        "FROM foo\nMESSAGE system": "F:2:9: MESSAGE system needs a message",
        "FROM foo\nMESSAGE badguy I'm a bad guy!\n": "F:2:9: unknown MESSAGE role 'badguy'",
        'FROM foo\nSYSTEM """This is a multiline system.""\n': 'F:2:8: this """ block is never closed',
        'FROM foo\nSYSTEM "\n': 'F:2:8: this " string is never closed',
        "FROM foo\nBADCOMMAND param1 value1\n": "F:2:1: unknown command 'BADCOMMAND'",
        "FROM foo\nPARAMETER param1\n": "F:2:11: PARAMETER param1 needs a value",
        "FROM": "F:1:1: FROM needs a model",
    }
    for text, start in cases.items():
        with pytest.raises(ModelfileError) as caught:
            parse(text, "F")
        assert caught.value.render().startswith(start), (text, caught.value.render())


# -- parameters, typed as Ollama types them ----------------------------------------------------------
@pytest.mark.parametrize("name, text, value", [
    ("num_ctx", "4096", 4096), ("seed", "-1", -1), ("top_k", "+40", 40), ("num_keep", "007", 7),
    ("main_gpu", "0", 0), ("draft_num_predict", "4", 4),
    ("temperature", "0.7", 0.7), ("temperature", "1", 1.0), ("top_p", ".9", 0.9), ("min_p", "5e-2", 0.05),
    ("repeat_penalty", "0x1.8p0", 1.5), ("typical_p", "0.1", 0.1), ("presence_penalty", "-1.5", -1.5),
    ("frequency_penalty", "3.4028235e38", 3.4028235e38),
    ("use_mmap", "true", True), ("use_mmap", "T", True), ("use_mmap", "1", True), ("use_mmap", "False", False),
    ("use_mmap", "f", False), ("stop", "  spaced  ", "  spaced  "),
])
def test_parameters_are_typed_as_ollama_types_them(name, text, value):
    """api.FormatParams: ints with strconv.ParseInt (int64), floats with ParseFloat(…, 32),
    bools with ParseBool; a float32 is kept as its shortest decimal."""
    got = carriage.parse_parameter(name, text)
    assert got == value and type(got) is type(value)


def test_float32_values_are_their_shortest_decimal():
    assert carriage.float32(0.7) == 0.7 and carriage.float32(0.1) == 0.1
    assert carriage.float32(1 / 3) == 0.33333334  # what Go prints for float32(1.0/3)
    assert carriage.float32(16777217.0) == 16777216.0  # past float32's integers
    with pytest.raises(OverflowError):
        carriage.float32(1e39)
    assert carriage.float32(3.4028235e38) == carriage.float32(-3.4028235e38) * -1 == 3.4028235e38  # FLT_MAX


@pytest.mark.parametrize("name, text", [
    ("top_k", "1.0"), ("top_k", "1_000"), ("top_k", "0x10"), ("top_k", " 1"), ("seed", "9223372036854775808"),
    ("temperature", "hot"), ("temperature", "1_0.0"), ("temperature", "inf"), ("temperature", "NaN"),
    ("temperature", "1e39"), ("temperature", "0x1.8"), ("use_mmap", "yes"), ("use_mmap", "on"),
])
def test_bad_parameter_values_are_refused(name, text):
    with pytest.raises(ModelfileError):
        carriage.parse_parameter(name, text)


def test_multiple_stop_and_deprecated_parameters(tmp_path):
    """stop repeats into a list; a deprecated parameter (parser.go's list) is dropped with a
    warning at its name, as Ollama warns and drops it."""
    write_gguf(tmp_path / "model.gguf")
    desc = load("FROM ./model.gguf\nPARAMETER stop a\nPARAMETER mirostat 2\nPARAMETER stop \"b c\"\n"
                "PARAMETER stop a\n", tmp_path)
    assert desc.labels == {carriage.PARAMS: '{"stop":["a","b c","a"]}'}
    assert desc.warnings == ("Ollama.Modelfile:3:11: parameter mirostat is deprecated: Ollama ignores it, "
                             "and it is not carried",)
    assert desc.runtime.context is None
    # an empty TEMPLATE is carried (it replaces a base model's); an empty SYSTEM is not
    assert load('FROM ./model.gguf\nTEMPLATE ""\nSYSTEM """"""\n', tmp_path).labels == {carriage.TEMPLATE: ""}


# -- the carriage, shared with FROM ollama:// ---------------------------------------------------------
def test_labels_from_ollama_blobs_are_the_frontends(tmp_path):
    """What an Ollama registry stores (the params blob as Go's encoder writes it: a float32
    1 as ``1``) gives the annotations a Modelfile with the same commands gives."""
    params = b'{"num_ctx":4096,"temperature":1,"top_p":0.9,"stop":["<|eot_id|>"],"mirostat":0,"future_knob":3}\n'
    messages = b'[{"role":"user","content":"Is Toronto in Canada?"},{"role":"assistant","content":"yes","images":null}]'
    ignored: list[str] = []
    labels = carriage.labels_from_blobs("{{ .Prompt }}", "You are Mario.", params, messages, ["MIT"],
                                        adapters=["adapter.gguf"], ignored=ignored)
    assert ignored == ["future_knob", "mirostat"]
    assert labels == {
        carriage.TEMPLATE: "{{ .Prompt }}", carriage.SYSTEM: "You are Mario.",
        carriage.PARAMS: '{"num_ctx":4096,"stop":["<|eot_id|>"],"temperature":1.0,"top_p":0.9}',
        carriage.MESSAGES: '[{"content":"Is Toronto in Canada?","role":"user"},{"content":"yes","role":"assistant"}]',
        carriage.LICENSE: '["MIT"]', carriage.ADAPTER: "adapter.gguf",
    }
    same = load('FROM ./m.gguf\nTEMPLATE """{{ .Prompt }}"""\nSYSTEM You are Mario.\nPARAMETER num_ctx 4096\n'
                "PARAMETER temperature 1\nPARAMETER top_p 0.9\nPARAMETER stop <|eot_id|>\n"
                "MESSAGE user Is Toronto in Canada?\nMESSAGE assistant yes\nLICENSE MIT\n",
                write_gguf(tmp_path / "m.gguf").parent).labels
    assert same == {k: v for k, v in labels.items() if k != carriage.ADAPTER}
    back = carriage.read_labels(labels)
    assert back.params["temperature"] == 1.0 and back.licenses == ["MIT"] and back.adapters == ["adapter.gguf"]
    assert carriage.spdx_licenses(["MIT", " Apache-2.0\n", "GPL-2.0+", "LicenseRef-llama", "MIT",
                                   "Llama 3 License", "\nlong text\n"]) == ["MIT", "Apache-2.0", "GPL-2.0+",
                                                                            "LicenseRef-llama"]


@pytest.mark.parametrize("params, error", [
    (b'{"temperature":"hot"}', "parameter temperature must be a finite number, not a string"),
    (b'{"top_k":1.5}', "parameter top_k must be a whole number, not the number 1.5"),
    (b'{"use_mmap":1}', "parameter use_mmap must be true or false, not the number 1"),
    (b'{"stop":[1]}', "parameter stop must be a list of strings"),
    (b'{"temperature":NaN}', "parameter temperature must be a finite number"),
    (b'[1]', "the params blob holds a list, not an object"),
    (b'{"x":', "the params blob is not JSON"),
])
def test_bad_params_blobs_are_refused(params, error):
    with pytest.raises(ModelfileError) as caught:
        carriage.labels_from_blobs(None, None, params, None, [])
    assert caught.value.render().startswith(error)


def test_adapter_paths_round_trip():
    for paths in (["a.gguf"], ["a.gguf", "b.gguf"], ["[odd].gguf"]):
        assert carriage.read_paths(carriage.paths_value(paths)) == paths
    assert carriage.paths_value(["lora"]) == "lora" and carriage.paths_value(["a", "b"]) == '["a","b"]'


# -- errors ------------------------------------------------------------------------------------------
def test_enough_error_cases():
    assert len(ERROR_CASES) >= 15
    for case in ERROR_CASES:
        assert (case / "expected.txt").is_file(), f"{case.name}: no expected.txt"


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.name for c in ERROR_CASES])
def test_ollama_modelfile_error(case: Path, mb, tmp_path: Path):
    """One located line on standard error, exit code 2, no traceback, nothing on stdout."""
    root = tmp_path / "ctx"
    root.mkdir()
    shutil.copyfile(case / "Ollama.Modelfile", root / "Ollama.Modelfile")
    setup = json.loads((case / "setup.json").read_text()) if (case / "setup.json").exists() else {}
    write_model_dir(root, setup.get("files", {}))
    run = mb("build", "-f", "Ollama.Modelfile", "--progress", "plain", cwd=root, timeout=60)
    expected = (case / "expected.txt").read_text(encoding="utf-8").strip().replace("{context}", str(root.resolve()))
    assert "Traceback" not in run.err, run.err
    assert run.rc == 2, f"exit code {run.rc}, stderr:\n{run.err}"
    assert run.err.strip() == expected
    assert len(run.err.strip().splitlines()) == 1 and run.out == ""


# -- hostile input: one line, exit code 2, bounded time ----------------------------------------------
HOSTILE = {
    "larger than the core's limit": ("FROM ./m.gguf\n" + "# padding\n" * 120_000, "larger than 1048576 bytes"),
    "a block never closed": ('FROM ./m.gguf\nSYSTEM """\n' + "text line\n" * 25_000,
                             'Ollama.Modelfile:2:8: this """ block is never closed'),
    "a block never closed, a megabyte on": ('FROM ./m.gguf\nSYSTEM """\n' + "text line\n" * 100_000,
                                            f"Ollama.Modelfile:2:8: a value longer than {MAX_VALUE} characters"),
    "NUL bytes": ("FROM ./m.gguf\nSYSTEM a\x00b\n", "Ollama.Modelfile:2:9: not a text file (NUL byte)"),
    "a control character": ("FROM ./m.gguf\nSYSTEM \x1b[31m\n", "Ollama.Modelfile:2:8: not a text file"),
    "one long value": ("FROM ./m.gguf\nSYSTEM " + "x" * (MAX_VALUE + 1) + "\n",
                       f"Ollama.Modelfile:2:8: a value longer than {MAX_VALUE} characters"),
    "a long block": ('FROM ./m.gguf\nLICENSE """\n' + ("y" * 1000 + "\n") * 300 + '"""\n',
                     f"Ollama.Modelfile:2:9: a value longer than {MAX_VALUE} characters"),
    "half a million quotes": ("FROM ./m.gguf\nSYSTEM " + '"' * 500_000 + "\n",
                              f"Ollama.Modelfile:2:8: a value longer than {MAX_VALUE} characters"),
    "too many commands": ("FROM ./m.gguf\n" + "PARAMETER stop x\n" * (MAX_COMMANDS + 1),
                          f"Ollama.Modelfile:{MAX_COMMANDS + 1}:1: more than {MAX_COMMANDS} commands"),
    "a keyword of 60,000 letters": ("F" * 60_000 + " x\n", "Ollama.Modelfile:1:1: unknown command 'FFFF"),
    "a parameter name of 60,000 letters": ("FROM ./m.gguf\nPARAMETER " + "n" * 60_000 + " 1\n",
                                           "Ollama.Modelfile:2:11: PARAMETER: 'nnnn"),
    "a million line feeds": ("\n" * 1_000_000, "Ollama.Modelfile:1:1: no FROM line"),
    "UTF-16, which Ollama reads": ("\ufeffFROM ./m.gguf\n".encode("utf-16-le"), "not a text file"),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_input_fails_in_one_line_quickly(case, mb, tmp_path):
    text, start = HOSTILE[case]
    path = tmp_path / "Ollama.Modelfile"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    run = mb("build", "-f", "Ollama.Modelfile", "--progress", "plain", cwd=tmp_path, timeout=30)
    assert run.rc == 2 and "Traceback" not in run.err, run.err[-2000:]
    line = run.err.strip()
    assert len(line.splitlines()) == 1 and len(line) < 600, line[:2000]
    assert start in line, line
    assert run.seconds < 10, f"{case}: {run.seconds:.1f}s"


def test_the_parser_bounds_what_the_core_does_not_see():
    """The parser's own bounds hold when it is called without the core's reader."""
    start = time.monotonic()
    with pytest.raises(ModelfileError, match=f"longer than {MAX_CHARS} characters"):
        parse("# x\n" * (MAX_CHARS // 4 + 1), "F")
    with pytest.raises(ModelfileError, match="NUL"):
        parse("FROM a\x00", "F")
    assert time.monotonic() - start < 5
