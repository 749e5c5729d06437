"""modctl's own Modelfiles build unchanged, as ModelPack artifacts that validate."""

from __future__ import annotations

import json

from support import safetensors_blob, write_model_dir
from helpers import blob, layer_paths, read_artifact, validate_against_shared_schema

# modctl docs/getting-started.md, verbatim
GETTING_STARTED = """\
# Model name (string), such as llama3-8b-instruct, gpt2-xl, qwen2-vl-72b-instruct, etc.
NAME gemma-2b

# Model architecture (string), such as transformer, cnn, rnn, etc.
ARCH transformer

# Model family (string), such as llama3, gpt2, qwen2, etc.
FAMILY gemma

# Model format (string), such as onnx, tensorflow, pytorch, etc.
FORMAT safetensors

# Number of parameters in the model (integer).
PARAMSIZE 16

# Model precision (string), such as bf16, fp16, int8, etc.
PRECISION bf16

# Model quantization (string), such as awq, gptq, etc.
QUANTIZATION awq

# Specify model configuration file, support glob path pattern.
CONFIG config.json

# Specify model configuration file, support glob path pattern.
CONFIG generation_config.json

# Model weight, support glob path pattern.
MODEL *.safetensors

# Specify code, support glob path pattern.
CODE *.py

# Specify documentation, support glob path pattern.
DOC *.md
"""

# modctl pkg/modelfile/modelfile_test.go, the first parser case, verbatim
PARSER_TEST = """
# This is a comment
CONFIG config1
MODEL model1
CODE code1
DATASET dataset1
DOC doc1
NAME name1
ARCH arch1
FAMILY family1
FORMAT format1
PARAMSIZE paramsize1
PRECISION precision1
QUANTIZATION quantization1
"""

MEDIA = "application/vnd.cncf.model.{}.v1.raw"


def test_getting_started_modelfile_builds_unchanged(build, home, tmp_path):
    ctx = write_model_dir(tmp_path / "gemma", {
        "config.json": '{"model_type": "gemma"}',
        "generation_config.json": "{}",
        "model-00001-of-00002.safetensors": safetensors_blob(b"\x08" * 4096),
        "model-00002-of-00002.safetensors": safetensors_blob(b"\x09" * 4096),
        "modeling.py": "print(1)\n",
        "README.md": "# gemma\n",
        "notes.txt": "not selected",
    })
    result = build(ctx, GETTING_STARTED)
    layout = home / "store"
    manifest, config = read_artifact(layout, result["digest"])
    validate_against_shared_schema(config)
    assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    assert layer_paths(manifest) == sorted([
        "README.md", "config.json", "generation_config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "modeling.py"])
    kinds = {l["annotations"]["org.cncf.model.filepath"]: l["mediaType"] for l in manifest["layers"]}
    assert kinds["config.json"] == MEDIA.format("weight.config")
    assert kinds["model-00001-of-00002.safetensors"] == MEDIA.format("weight")
    assert kinds["modeling.py"] == MEDIA.format("code")
    assert kinds["README.md"] == MEDIA.format("doc")
    for layer in manifest["layers"]:
        path = layer["annotations"]["org.cncf.model.filepath"]
        assert layer["annotations"]["org.opencontainers.image.title"] == path
        assert blob(layout, layer["digest"]) == (ctx / path).read_bytes()  # raw: the file itself
        meta = json.loads(layer["annotations"]["org.cncf.model.file.metadata+json"])
        assert meta["name"] == path and meta["size"] == (ctx / path).stat().st_size and meta["typeflag"] == 0
    assert config["modelfs"]["diffIds"] == [l["digest"] for l in manifest["layers"]]
    assert config["descriptor"] == {"name": "gemma-2b", "family": "gemma"}
    assert config["config"] == {"architecture": "transformer", "format": "safetensors", "paramSize": "16",
                                "precision": "bf16", "quantization": "awq"}
    assert result["tags"] == ["gemma-2b:latest"]
    # modctl's values are kept as written, with a warning pointing at the spec's spelling
    assert any("PARAMSIZE '16'" in w for w in result["warnings"])
    assert any("'bfloat16'" in w for w in result["warnings"])


def test_modctl_parser_test_modelfile_builds_unchanged(build, home, tmp_path):
    ctx = write_model_dir(tmp_path / "m", {n: n for n in ("config1", "model1", "code1", "dataset1", "doc1")})
    result = build(ctx, PARSER_TEST)
    manifest, config = read_artifact(home / "store", result["digest"])
    validate_against_shared_schema(config)
    assert [(l["annotations"]["org.cncf.model.filepath"], l["mediaType"]) for l in manifest["layers"]] == [
        ("code1", MEDIA.format("code")),
        ("config1", MEDIA.format("weight.config")),
        ("dataset1", MEDIA.format("dataset")),  # modctl drops DATASET; modelbuild packages it
        ("doc1", MEDIA.format("doc")),
        ("model1", MEDIA.format("weight")),
    ]
    assert config["descriptor"] == {"name": "name1", "family": "family1"}
    assert config["config"]["quantization"] == "quantization1"


def test_directories_and_recursive_globs_are_packaged(build, home, tmp_path):
    ctx = write_model_dir(tmp_path / "m", {
        "weights/a.safetensors": safetensors_blob(b"a" * 100),
        "weights/sub/b.safetensors": safetensors_blob(b"b" * 200),
        "tokenizer/vocab.txt": "v",
        "tokenizer/merges.txt": "m",
        "nested/deep/x.json": "{}",
    })
    result = build(ctx, "MODEL weights/**/*.safetensors\nCONFIG tokenizer\nCONFIG **/*.json\n")
    manifest, _ = read_artifact(home / "store", result["digest"])
    assert layer_paths(manifest) == ["nested/deep/x.json", "tokenizer", "weights/a.safetensors",
                                     "weights/sub/b.safetensors"]
    tok = manifest["layers"][1]
    assert tok["mediaType"] == "application/vnd.cncf.model.weight.config.v1.tar"
    assert json.loads(tok["annotations"]["org.cncf.model.file.metadata+json"])["typeflag"] == 5
