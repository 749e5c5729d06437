"""``modelbuild modelfile generate``: six differently shaped model directories, made from real
models, each classified file by file as a person would, and each generated Modelfile built
unchanged, its layers exactly the files of the directory that were not left out."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from helpers import layer_paths, read_artifact, validate_against_shared_schema
from support import EXAMPLES, age

TINY = EXAMPLES / "tiny-llama" / "model"
ONNX = EXAMPLES / "onnx" / "model"
MEDIA = {kind: f"application/vnd.cncf.model.{family}.v1.raw" for kind, family in
         {"config": "weight.config", "model": "weight", "code": "code", "dataset": "dataset", "doc": "doc"}.items()}
POINTER = ("version https://git-lfs.github.com/spec/v1\n"
           "oid sha256:4d3f6a1e0c7b2f9a8e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f\nsize 628072\n")
APACHE_CARD = "---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n# a model\n"
MIT = ("MIT License\n\nCopyright (c) 2025 Example\n\nPermission is hereby granted, free of charge, to any person "
       "obtaining a copy\nof this software...\n")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"


# -- building the directories from real models ----------------------------------------------
def put(root: Path, files: dict[str, bytes | str | Path]) -> Path:
    """Write *files* under *root*: bytes, text, or a Path to copy."""
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, Path):
            shutil.copyfile(data, p)
        else:
            p.write_bytes(data.encode() if isinstance(data, str) else data)
        age(p)
    return root


def tiny_files(*names: str) -> dict[str, Path]:
    return {n: TINY / n for n in names}


def shard_tiny_llama(root: Path) -> None:
    """tiny-llama's tensors in two safetensors shards, with Hugging Face's index."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(TINY / "model.safetensors")
    names = sorted(tensors)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map, total = {}, 0
    for i, part in enumerate(halves, 1):
        shard = f"model-{i:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(root / shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
        total += sum(tensors[n].nbytes for n in part)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_gguf(path: Path) -> None:
    """A small llama GGUF: float32 and float16 tensors, attention heads declared."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_head_count(4)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.arange(64 * 32, dtype=np.float32).reshape(64, 32))
    w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight", np.zeros((32, 32), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_onnx_with_external_data(root: Path) -> None:
    """The bundled ONNX perceptron, its initializers moved into an external data file whose
    name says nothing (only the model names it)."""
    import onnx

    model = onnx.load(str(ONNX / "model.onnx"))
    onnx.save_model(model, str(root / "mlp.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="tensors.dat", size_threshold=0)


# -- running generate, then the build --------------------------------------------------------
def generate(mb, directory: Path, *args: str) -> dict:
    result = mb("modelfile", "generate", str(directory), "--json", *args)
    assert result.rc == 0, result.err
    return result.json()


def generate_and_build(mb, home: Path, directory: Path, *args: str) -> tuple[dict, dict, dict, dict]:
    """Generate DIR/Modelfile, build it unchanged, and check the artifact holds exactly the
    classified files, each as the layer kind it was classified as."""
    plan = generate(mb, directory, "-o", str(directory / "Modelfile"), *args)
    assert (directory / "Modelfile").read_text() == plan["modelfile"]
    built = mb("build", "-f", str(directory / "Modelfile"), "--json", "--progress", "quiet")
    assert built.rc == 0, built.err
    result = built.json()
    manifest, config = read_artifact(home / "store", result["digest"])
    validate_against_shared_schema(config)
    kinds = {f["path"]: f["kind"] for f in plan["files"]}
    assert sorted(layer_paths(manifest)) == sorted(kinds)
    for layer in manifest["layers"]:
        assert layer["mediaType"] == MEDIA[kinds[layer["annotations"]["org.cncf.model.filepath"]]]
    return plan, result, manifest, config


def kinds_of(plan: dict) -> dict[str, str]:
    return {f["path"]: f["kind"] for f in plan["files"]}


def skipped_of(plan: dict) -> dict[str, str]:
    return {s["path"]: s["reason"] for s in plan["skipped"]}


# -- the six shapes --------------------------------------------------------------------------
def test_sharded_safetensors(mb, home, tmp_path):
    d = put(tmp_path / "Tiny-Llama Sharded", {
        **tiny_files("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "LICENSE"),
        "README.md": APACHE_CARD, ".gitattributes": "*.safetensors filter=lfs\n", ".git/HEAD": "ref: refs/heads/main\n",
    })
    shard_tiny_llama(d)
    plan, result, _manifest, config = generate_and_build(mb, home, d)
    assert kinds_of(plan) == {
        "LICENSE": "doc", "README.md": "doc", "config.json": "config", "generation_config.json": "config",
        "model-00001-of-00002.safetensors": "model", "model-00002-of-00002.safetensors": "model",
        "model.safetensors.index.json": "config", "tokenizer.json": "config", "tokenizer_config.json": "config",
    }
    assert skipped_of(plan) == {".git/": "hidden", ".gitattributes": "hidden"}
    # a complete shard series is one exact glob; everything else is named
    assert "MODEL model-*-of-00002.safetensors\n" in plan["modelfile"]
    assert plan["metadata"] == {"NAME": "tiny-llama-sharded", "FAMILY": "llama", "ARCH": "transformer",
                                "FORMAT": "safetensors", "PARAMSIZE": "156.5K", "PRECISION": "float32"}
    assert config["config"] == {"architecture": "transformer", "format": "safetensors", "paramSize": "156.5K",
                                "precision": "float32"}
    assert config["descriptor"] == {"name": "tiny-llama-sharded", "family": "llama", "licenses": ["Apache-2.0"]}
    assert result["tags"] == ["tiny-llama-sharded:latest"]
    assert result.get("warnings", []) == [] and plan["warnings"] == []


def test_gguf_and_a_gguf_that_is_not(mb, home, tmp_path):
    d = tmp_path / "gguf"
    d.mkdir()
    write_gguf(d / "tiny-f32.gguf")
    put(d, {"README.md": "---\nlicense: llama3.1\ntags: [gguf]\n---\n# tiny\n",
            "notes.gguf": "GGUF is llama.cpp's format; this file is a note about it.\n",
            "safetensors-inside.gguf": TINY / "model.safetensors"})
    plan, result, _manifest, config = generate_and_build(mb, home, d, "--name", "team/tiny-gguf:q")
    assert kinds_of(plan) == {"README.md": "doc", "tiny-f32.gguf": "model"}
    skipped = skipped_of(plan)
    assert "a GGUF file starts with b'GGUF'" not in skipped["notes.gguf"]  # the text starts with GGUF…
    assert "notes.gguf" in skipped and "safetensors-inside.gguf" in skipped
    assert skipped["safetensors-inside.gguf"] == \
        "named .gguf but holds safetensors weights (rename it to end in .safetensors)"
    assert any(w.startswith("notes.gguf: ") for w in plan["warnings"])
    assert plan["metadata"] == {"NAME": "team/tiny-gguf:q", "FAMILY": "llama", "ARCH": "transformer",
                                "FORMAT": "gguf", "PARAMSIZE": "3.1K", "PRECISION": "float32,float16"}
    assert config["config"]["format"] == "gguf" and config["config"]["paramSize"] == "3.1K"
    assert config["descriptor"]["licenses"] == ["LicenseRef-llama3.1"]
    assert result["tags"] == ["team/tiny-gguf:q"] and result.get("warnings", []) == []


def test_gguf_text_file_is_caught_by_its_header_not_its_name(mb, tmp_path):
    """notes.gguf starts with b'GGUF' but is no GGUF: the header reader, not the magic, decides."""
    d = put(tmp_path / "m", {"notes.gguf": "GGUF is llama.cpp's format; this file is a note about it.\n",
                             "README.md": "# x\n"})
    plan = generate(mb, d)
    assert kinds_of(plan) == {"README.md": "doc"}
    # the plugin's own words: the "version" is the text's next four bytes, b" is "
    assert skipped_of(plan)["notes.gguf"] == \
        "unsupported GGUF version: file has version 544434464, supported are 2 and 3"
    assert "no weight file found" in " ".join(plan["warnings"])


def test_a_truncated_download_is_left_out_with_the_readers_reason(mb, home, tmp_path):
    whole = (TINY / "model.safetensors").read_bytes()
    d = put(tmp_path / "m", {**tiny_files("config.json", "model.safetensors"),
                             "extra.safetensors": whole[:-100]})
    plan, *_ = generate_and_build(mb, home, d)
    assert kinds_of(plan) == {"config.json": "config", "model.safetensors": "model"}
    reason = skipped_of(plan)["extra.safetensors"]
    assert reason == "tensor data ends at byte 628,072, past the end of the 627,972-byte file (truncated?)"
    assert any(w.startswith("extra.safetensors: ") for w in plan["warnings"])
    assert plan["metadata"]["PARAMSIZE"] == "156.5K"


def test_onnx_with_external_data(mb, home, tmp_path):
    d = tmp_path / "onnx-ext"
    put(d, {"config.json": ONNX / "config.json", "LICENSE": MIT})
    write_onnx_with_external_data(d)
    plan, _result, _manifest, config = generate_and_build(mb, home, d)
    # tensors.dat has no weight extension: the model's own reference makes it MODEL
    assert kinds_of(plan) == {"LICENSE": "doc", "config.json": "config", "mlp.onnx": "model", "tensors.dat": "model"}
    why = {f["path"]: f["why"] for f in plan["files"]}
    assert why["tensors.dat"] == "external data of an ONNX model"
    assert plan["metadata"] == {"NAME": "onnx-ext", "FAMILY": "tiny-mlp", "ARCH": "mlp", "FORMAT": "onnx",
                                "PARAMSIZE": "1.3K", "PRECISION": "float32"}
    assert config["config"]["paramSize"] == "1.3K" and config["descriptor"]["licenses"] == ["MIT"]


def test_checkpoint_with_code_and_docs(mb, home, tmp_path):
    """A fine-tuning checkpoint: a .bin that is safetensors inside, code, notebooks, docs."""
    d = put(tmp_path / "checkpoint-500", {
        "pytorch_model.bin": TINY / "model.safetensors", "config.json": TINY / "config.json",
        "training_args.bin": b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.",
        "modeling_tiny.py": "import torch\n", "configuration_tiny.py": "CONFIG = {}\n",
        "requirements.txt": "torch>=2.1\n", "scripts/train.sh": "#!/bin/sh\npython train.py\n",
        "notebooks/demo.ipynb": '{"cells": [], "nbformat": 4}', "README.md": "# checkpoint 500\n",
        "LICENSE": TINY / "LICENSE", "docs/loss.png": PNG, "docs/notes.txt": "loss went down\n",
        "__pycache__/modeling_tiny.cpython-311.pyc": b"\x00\x00", "optimizer.pt": b"PK\x03\x04 not really",
    })
    plan, _result, _manifest, config = generate_and_build(mb, home, d)
    assert kinds_of(plan) == {
        "LICENSE": "doc", "README.md": "doc", "config.json": "config", "configuration_tiny.py": "code",
        "docs/loss.png": "doc", "docs/notes.txt": "doc", "modeling_tiny.py": "code",
        "notebooks/demo.ipynb": "code", "optimizer.pt": "model", "pytorch_model.bin": "model",
        "requirements.txt": "code", "scripts/train.sh": "code", "training_args.bin": "config",
    }
    formats = {f["path"]: f.get("format") for f in plan["files"]}
    assert formats["pytorch_model.bin"] == "safetensors" and formats["optimizer.pt"] is None
    assert skipped_of(plan)["__pycache__/"] == "a Python cache"
    # the build cannot read a .bin by its name; the Modelfile says what its header says
    assert plan["metadata"]["FORMAT"] == "safetensors" and plan["metadata"]["PARAMSIZE"] == "156.5K"
    assert config["config"]["format"] == "safetensors" and config["config"]["paramSize"] == "156.5K"
    assert config["descriptor"]["licenses"] == ["Apache-2.0"] and config["descriptor"]["family"] == "llama"


def test_nested_folders_and_hostile_entries(mb, home, tmp_path):
    outside = put(tmp_path / "outside", {"secret.txt": "not yours\n"})
    d = put(tmp_path / "nested", {
        "weights/model.safetensors": TINY / "model.safetensors", "weights/config.json": TINY / "config.json",
        "tokenizer/tokenizer.json": TINY / "tokenizer.json", "tokenizer/vocab.txt": "a\nb\n",
        "data/train.jsonl": '{"text": "a"}\n', "data/test.json": "[]", "data/README.md": "# data\n",
        "eval/results.csv": "task,score\nx,1\n", "docs/model card.md": "# card\n",
        "figures/plot[1].png": PNG, "notes $HOME.md": "dollar\n", 'say "hi".md': "quote\n",
        "#hash.md": "hash\n", "back\\slash.md": "backslash\n", "café.md": "unicode\n",
        "weights/.cache/huggingface/x.lock": "", "mystery.xyz": "?\n",
    })
    (d / "linked-secret.yaml").symlink_to(outside / "secret.txt")
    (d / "linked-readme.md").symlink_to(d / "data" / "README.md")
    (d / "linked-dir").symlink_to(d / "docs", target_is_directory=True)
    (d / "docs" / "loop").symlink_to(d, target_is_directory=True)
    (d / "broken.json").symlink_to(d / "missing.json")
    os.mkfifo(d / "pipe.safetensors")
    (d / "bad\nname.md").write_text("newline\n")
    plan, _result, _manifest, config = generate_and_build(mb, home, d)
    assert kinds_of(plan) == {
        "#hash.md": "doc", "café.md": "doc", "data/README.md": "doc",
        "data/test.json": "dataset", "data/train.jsonl": "dataset", "docs/model card.md": "doc",
        "eval/results.csv": "dataset", "figures/plot[1].png": "doc", "linked-readme.md": "doc",
        "notes $HOME.md": "doc", 'say "hi".md': "doc", "tokenizer/tokenizer.json": "config",
        "tokenizer/vocab.txt": "config", "weights/config.json": "config", "weights/model.safetensors": "model",
    }
    skipped = skipped_of(plan)
    assert skipped["linked-secret.yaml"] == "a link out of the directory (not followed)"
    assert skipped["linked-dir/"] == skipped["docs/loop/"] == "a link to a directory (not followed)"
    assert skipped["broken.json"].startswith("a broken link")
    assert skipped["pipe.safetensors"] == "a named pipe (FIFO), not a regular file"
    assert skipped["'bad\\nname.md'"] == "its name contains a control character (rename it)"
    assert skipped["back\\slash.md"] == "its name contains a backslash (rename it)"  # pull -o could not write it
    assert skipped["weights/.cache/"] == "hidden" and skipped["mystery.xyz"].startswith("no rule says")
    text = plan["modelfile"]
    assert "\n#   'bad\\nname.md': " in text  # one comment line, the newline escaped
    assert "not yours" not in json.dumps(plan)
    # the config beside the nested weights gives FAMILY and ARCH (the build reads only a top one)
    assert plan["metadata"]["FAMILY"] == "llama" and config["descriptor"]["family"] == "llama"
    assert config["config"]["architecture"] == "transformer"


def test_lfs_pointer_is_reported_with_the_fix_then_builds_after_the_pull(mb, home, tmp_path):
    d = put(tmp_path / "cloned", {**tiny_files("config.json", "tokenizer.json", "README.md"),
                                  "model.safetensors": POINTER})
    rc, out, err = mb("modelfile", "generate", str(d))
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "1 file(s) are Git LFS pointers, not the files they name: model.safetensors" in err
    assert "git lfs pull" in err and "--skip-lfs-pointers" in err
    # leaving them out is a choice: listed, warned about, and the rest builds
    plan, *_ = generate_and_build(mb, home, d, "--skip-lfs-pointers")
    assert kinds_of(plan) == {"README.md": "doc", "config.json": "config", "tokenizer.json": "config"}
    assert skipped_of(plan)["model.safetensors"].startswith("a Git LFS pointer")
    assert any("model.safetensors: a Git LFS pointer" in w for w in plan["warnings"])
    # `git lfs pull` puts the real file in place: now it is a weight
    put(d, {"model.safetensors": TINY / "model.safetensors"})
    plan, *_ = generate_and_build(mb, home, d, "--force")
    assert kinds_of(plan)["model.safetensors"] == "model" and plan["metadata"]["PARAMSIZE"] == "156.5K"


# -- the command line ------------------------------------------------------------------------
def test_output_is_refused_when_it_exists_and_replaced_with_force(mb, tmp_path):
    d = put(tmp_path / "m", tiny_files("config.json", "model.safetensors"))
    out = d / "Modelfile"
    out.write_text("NAME mine\n")
    rc, _out, err = mb("modelfile", "generate", str(d), "-o", str(out))
    assert rc == 2 and "exists (pass --force to replace it)" in err and out.read_text() == "NAME mine\n"
    rc, stdout, err = mb("modelfile", "generate", str(d), "-o", str(out), "--force")
    assert rc == 0 and stdout == "" and "MODEL model.safetensors" in out.read_text()
    assert sorted(p.name for p in d.iterdir()) == ["Modelfile", "config.json", "model.safetensors"]  # no temp file
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    rc, _out, err = mb("modelfile", "generate", str(d), "--force")
    assert rc == 2 and "there is no -o" in err


def test_a_modelfile_written_elsewhere_finds_the_directory_with_from(mb, home, tmp_path):
    d = put(tmp_path / "models" / "tiny", tiny_files("config.json", "model.safetensors"))
    elsewhere = tmp_path / "recipes"
    elsewhere.mkdir()
    assert mb("modelfile", "generate", str(d), "-o", str(elsewhere / "Modelfile.tiny")).rc == 0
    text = (elsewhere / "Modelfile.tiny").read_text()
    assert "\nFROM ../models/tiny\n" in text
    built = mb("build", "-f", "Modelfile.tiny", "--json", "--progress", "quiet", cwd=elsewhere)
    assert built.rc == 0, built.err
    assert sorted(layer_paths(read_artifact(home / "store", built.json()["digest"])[0])) == \
        ["config.json", "model.safetensors"]


def test_stdout_is_the_modelfile_and_names_are_checked(mb, tmp_path):
    d = put(tmp_path / "Qwen2 0.5B__Instruct!", tiny_files("config.json", "model.safetensors"))
    rc, out, err = mb("modelfile", "generate", str(d))
    assert rc == 0 and err == ""
    assert out.startswith("# syntax=modelfile\n") and "\nNAME qwen2-0.5b-instruct\n" in out
    rc, out, err = mb("modelfile", "generate", str(d), "--name", "Qwen2 Instruct")
    assert rc == 2 and out == "" and "--name 'Qwen2 Instruct' is not a valid repository name" in err
    assert "use 'qwen2-instruct'" in err
    rc, _out, err = mb("modelfile", "generate", str(tmp_path / "missing"))
    assert rc == 2 and "no such directory" in err
    rc, _out, err = mb("modelfile", "generate", str(d / "config.json"))
    assert rc == 2 and "not a directory" in err


def test_the_walk_is_bounded(mb, tmp_path):
    d = put(tmp_path / "many", {f"f{i}.md": "x\n" for i in range(5)})
    rc, out, err = mb("modelfile", "generate", str(d), env={"MODELBUILD_GENERATE_MAX_FILES": "4"})
    assert rc == 2 and out == "" and "holds more than 4 files and directories" in err
    assert "set MODELBUILD_GENERATE_MAX_FILES to raise the limit" in err
    assert mb("modelfile", "generate", str(d), env={"MODELBUILD_GENERATE_MAX_FILES": "5"}).rc == 0


def test_empty_directory_is_an_error_not_an_empty_modelfile(mb, tmp_path):
    d = put(tmp_path / "e", {".hidden": "x"})
    rc, out, err = mb("modelfile", "generate", str(d))
    assert rc == 2 and out == "" and "nothing to package" in err


def test_unreadable_file_is_left_out(mb, home, tmp_path):
    """A file the user cannot read is left out, named in the skipped list. root reads every
    file whatever its mode, so as root the command runs as nobody (setpriv), as
    tests/test_store_hardening.py does."""
    import subprocess
    import sys
    import tempfile

    from support import REPO, require_tool
    from test_store_hardening import _let_others_through

    if os.geteuid() != 0:
        d = put(tmp_path / "m", {**tiny_files("config.json", "model.safetensors"), "secret.md": "x\n"})
        (d / "secret.md").chmod(0)
        plan, *_ = generate_and_build(mb, home, d)
        assert skipped_of(plan)["secret.md"] == "not readable"
        return
    require_tool("setpriv", "apt-get install -y util-linux: setpriv acts as another user")
    base = Path(tempfile.mkdtemp(prefix="mb-unreadable-", dir="/tmp"))
    opened = _let_others_through([REPO, Path(sys.prefix)])
    try:
        base.chmod(0o755)
        d = put(base / "m", {**tiny_files("config.json", "model.safetensors"), "secret.md": "x\n"})
        for path in [d, *d.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        (d / "secret.md").chmod(0)
        env = {**os.environ, "MODELBUILD_HOME": str(base / "home"), "PYTHONPATH": str(REPO)}
        run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                              "modelbuild", "modelfile", "generate", str(d), "--json"], env=env, cwd=base,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        plan = json.loads(run.stdout)
        assert skipped_of(plan)["secret.md"] == "not readable"
        assert kinds_of(plan) == {"config.json": "config", "model.safetensors": "model"}
    finally:
        for directory, mode in opened:
            directory.chmod(mode)
        shutil.rmtree(base, ignore_errors=True)


def test_help_teaches(mb):
    rc, out, _err = mb("modelfile", "--help")
    assert rc == 0 and "generate DIR" in out and "examples:" in out
    rc, out, _err = mb("modelfile", "generate", "--help")
    assert rc == 0 and "--skip-lfs-pointers" in out and "Git LFS pointer" in out and "DATASET" in out
    rc, _out, err = mb("modelfile")
    assert rc == 2 and "SUBCOMMAND" in err
    rc, out, _err = mb("--help")
    assert "modelfile" in out


def test_a_safetensors_copy_in_a_bin_does_not_double_the_parameters(mb, home, tmp_path):
    """The build reads weights by extension; a .bin copy beside model.safetensors is packaged as a
    weight, and the metadata is what the build derives, so nothing warns as a contradiction."""
    d = put(tmp_path / "both", {**tiny_files("config.json", "model.safetensors"),
                                "pytorch_model.bin": TINY / "model.safetensors"})
    plan, result, _manifest, config = generate_and_build(mb, home, d)
    assert kinds_of(plan) == {"config.json": "config", "model.safetensors": "model", "pytorch_model.bin": "model"}
    assert plan["metadata"]["PARAMSIZE"] == config["config"]["paramSize"] == "156.5K"
    assert result.get("warnings", []) == []


# -- the parts, on their own -----------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    (TINY.joinpath("LICENSE").read_text(), "Apache-2.0"),
    (MIT, "MIT"),
    ("Copyright (c) X\n\nRedistribution and use in source and binary forms, with or without modification...\n"
     "3. Neither the name of the copyright holder nor ...", "BSD-3-Clause"),
    ("Redistribution and use in source and binary forms, with or without modification...", "BSD-2-Clause"),
    ("LLAMA 3.1 COMMUNITY LICENSE AGREEMENT\nLlama 3.1 Version Release Date: July 23, 2024", "LicenseRef-llama3.1"),
    ("META LLAMA 3 COMMUNITY LICENSE AGREEMENT\nMeta Llama 3 Version Release Date: April 18, 2024",
     "LicenseRef-llama3"),
    ("// SPDX-License-Identifier: MIT OR Apache-2.0\n", "MIT OR Apache-2.0"),
    ("All rights reserved. Do not copy.", None),
])
def test_license_file_text(text, expected):
    from modelbuild.generate.license import from_text

    assert from_text(text) == expected


@pytest.mark.parametrize("card, expected", [
    ("---\nlicense: apache-2.0\n---\n", ["Apache-2.0"]),
    ("---\nlicense: 'mit'  # the code\n---\n", ["MIT"]),
    ("---\nlicense:\n  - mit\n  - cc-by-4.0\ntags: [x]\n---\n", ["MIT", "CC-BY-4.0"]),
    ("---\nlicense: [gpl-3.0, bsd-3-clause]\n---\n", ["GPL-3.0-only", "BSD-3-Clause"]),
    ("---\nlicense: other\nlicense_name: tongyi qianwen\n---\n", ["LicenseRef-tongyi-qianwen"]),
    ("---\nlicense: other\n---\n", []),
    ("---\nlicense: gemma\n---\n", ["LicenseRef-gemma"]),
    ("# no front matter\nlicense: mit\n", []),
    ("---\nlicense: mit\n", []),  # never closed: not front matter
])
def test_model_card_front_matter(card, expected):
    from modelbuild.generate.license import from_front_matter

    assert from_front_matter(card) == expected


def test_card_and_license_file_disagreeing_warns_and_the_card_wins(mb, tmp_path):
    d = put(tmp_path / "m", {**tiny_files("config.json", "model.safetensors"), "README.md": APACHE_CARD,
                             "LICENSE": MIT})
    plan = generate(mb, d)
    assert plan["licenses"] == ["Apache-2.0"]
    assert plan["warnings"] == ["README.md declares license Apache-2.0, while LICENSE reads as MIT; writing Apache-2.0"]


def test_a_shard_glob_is_written_only_when_it_selects_exactly_the_series():
    from modelbuild.generate.render import compress

    three = [f"w/model-{i:05d}-of-00003.safetensors" for i in (1, 2, 3)]
    names = {p.rsplit("/", 1)[1] for p in three}
    assert compress(three, {"w": names}) == ["w/model-*-of-00003.safetensors"]
    # a fourth name the glob would also select (a left-out LFS pointer shard, a stray copy)
    assert compress(three, {"w": names | {"model-extra-of-00003.safetensors"}}) == three
    # an incomplete series stays a list
    assert compress(three[:2], {"w": names}) == three[:2]
    # hidden names are never matched by '*', so they do not spoil the glob
    assert compress(three, {"w": names | {".model-00001-of-00003.safetensors"}}) == ["w/model-*-of-00003.safetensors"]


def test_paths_read_back_as_themselves():
    from modelbuild.generate.render import quote

    assert quote("a b.md", literal_path=True) == '"a b.md"'
    assert quote("plot[1]*?.png", literal_path=True) == "plot[[]1][*][?].png"
    assert quote('say "$HOME".md', literal_path=True) == '"say \\"\\$HOME\\".md"'
    assert quote("#x.md", literal_path=True) == "\\#x.md"
