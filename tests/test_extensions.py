"""A Modelfile using every extension builds, and the config carries every field it set."""

from __future__ import annotations

from support import safetensors_blob, write_model_dir
from helpers import read_artifact, validate_against_shared_schema

EVERYTHING = r"""# syntax=modelfile
ARG SRC=model
ARG REV
FROM ./${SRC}
ARG VARIANT=base

NAME "my model ${VARIANT}"
FAMILY llama
ARCH transformer
FORMAT safetensors
PARAMSIZE 1.5B
PRECISION bfloat16
QUANTIZATION none
VENDOR "Example Labs"
VERSION 1.2.3
TITLE "My Model (${VARIANT})"
DESCRIPTION "A model with a \"quoted\" description"
DOCURL https://example.com/docs
SOURCEURL https://example.com/src
REVISION ${REV:-unknown}
LICENSE Apache-2.0 \
        MIT
AUTHOR "Ada Lovelace" "Alan Turing"
DATASETURL https://example.com/data
CAPABILITIES inputTypes=text,image outputTypes=text \
             reasoning=true tool-usage=yes reward=false
CAPABILITIES languages=en,fr knowledgeCutoff=2024-06-01
LABEL org.opencontainers.image.vendor="Example Labs" team=ml empty=
CONFIG config.json
MODEL weights/**/*.safetensors
DATASET data
CODE ${VARIANT:+code}/*.py
DOC README.md
"""


def test_every_extension_builds_and_lands_in_the_config(cli, home, tmp_path):
    ctx = tmp_path / "proj"
    write_model_dir(ctx / "model", {
        "config.json": "{}",
        "weights/part1/a.safetensors": safetensors_blob(b"1" * 10),
        "weights/b.safetensors": safetensors_blob(b"2" * 10),
        "data/train.jsonl": "{}\n",
        "code/run.py": "print()\n",
        "README.md": "hi\n",
    })
    (ctx / "Modelfile").write_text(EVERYTHING)
    # NAME is a display name here (spaces): the tag comes from -t, as with modctl
    run = cli("build", "-f", str(ctx / "Modelfile"), "-t", "my-model-base", "--build-arg", "REV=abc123", "--json",
              "--progress", "quiet", env={"SOURCE_DATE_EPOCH": "1700000000"}, cwd=tmp_path)
    assert run.rc == 0, run.err
    result = run.json()
    manifest, config = read_artifact(home / "store", result["digest"])
    validate_against_shared_schema(config)
    assert config["descriptor"] == {
        "name": "my model base",
        "family": "llama",
        "vendor": "Example Labs",
        "version": "1.2.3",
        "title": "My Model (base)",
        "description": 'A model with a "quoted" description',
        "docURL": "https://example.com/docs",
        "sourceURL": "https://example.com/src",
        "revision": "abc123",
        "licenses": ["Apache-2.0", "MIT"],
        "authors": ["Ada Lovelace", "Alan Turing"],
        "datasetsURL": ["https://example.com/data"],
        "createdAt": "2023-11-14T22:13:20Z",
    }
    assert config["config"] == {
        "architecture": "transformer",
        "format": "safetensors",
        "paramSize": "1.5B",
        "precision": "bfloat16",
        "quantization": "none",
        "capabilities": {
            "inputTypes": ["text", "image"],
            "outputTypes": ["text"],
            "reasoning": True,
            "toolUsage": True,
            "reward": False,
            "languages": ["en", "fr"],
            "knowledgeCutoff": "2024-06-01T00:00:00Z",
        },
    }
    assert manifest["annotations"] == {
        "empty": "",
        "org.opencontainers.image.created": "2023-11-14T22:13:20Z",
        "org.opencontainers.image.vendor": "Example Labs",
        "team": "ml",
    }
    paths = {l["annotations"]["org.cncf.model.filepath"]: l["mediaType"] for l in manifest["layers"]}
    assert paths == {
        "README.md": "application/vnd.cncf.model.doc.v1.raw",
        "code/run.py": "application/vnd.cncf.model.code.v1.raw",
        "config.json": "application/vnd.cncf.model.weight.config.v1.raw",
        "data": "application/vnd.cncf.model.dataset.v1.tar",
        "weights/b.safetensors": "application/vnd.cncf.model.weight.v1.raw",
        "weights/part1/a.safetensors": "application/vnd.cncf.model.weight.v1.raw",
    }
    assert result["tags"] == ["my-model-base:latest"]
    # the tiny stand-in weights are 20 uint8 values: the explicit values win, with warnings
    assert [w.split(" contradicts")[0] for w in result["warnings"]] == ["PARAMSIZE 1.5B", "PRECISION bfloat16"]


def test_build_arg_overrides_default_and_unused_args_warn(cli, tmp_path):
    ctx = write_model_dir(tmp_path / "m", {"a.bin": "a", "b.bin": "b"})
    (ctx / "Modelfile").write_text("ARG W=a.bin\nMODEL $W\n")
    run = cli("build", "-f", "Modelfile", "--build-arg", "W=b.bin", "--build-arg", "EXTRA=1", "--json",
              "--progress", "plain", cwd=ctx)
    assert run.rc == 0, run.err
    assert [l["annotations"]["org.cncf.model.filepath"] for l in run.json()["layers"]] == ["b.bin"]
    assert "WARNING: build argument(s) not declared by any ARG: EXTRA" in run.err


def test_modelfile_from_stdin_uses_cwd_as_context(cli, tmp_path):
    ctx = write_model_dir(tmp_path / "m", {"w.bin": "w"})
    run = cli("build", "-f", "-", "-t", "stdin:test", "--json", "--progress", "quiet", cwd=ctx, input=b"MODEL w.bin\n")
    assert run.rc == 0, run.err
    assert run.json()["tags"] == ["stdin:test"]


def test_context_argument_is_used_without_from(cli, tmp_path):
    ctx = write_model_dir(tmp_path / "ctx", {"w.bin": "w"})
    mf = tmp_path / "elsewhere" / "Modelfile"
    mf.parent.mkdir()
    mf.write_text("MODEL w.bin\n")
    run = cli("build", "-f", str(mf), str(ctx), "--json", "--progress", "quiet", cwd=tmp_path)
    assert run.rc == 0, run.err
