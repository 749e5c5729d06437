"""``FROM ollama://``: a model in an Ollama-format registry (docker-registry on 127.0.0.1,
holding a manifest this test writes with Ollama's documented media types) becomes a
ModelPack artifact whose GGUF layer is the registry's blob byte for byte, and llama.cpp
loads it. Template, system, parameters and license ride as docs/ollama.md says."""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from engines import build_example
from support import require_module

from modelbuild.oci.registry import Registry

TEMPLATE = "{{ if .System }}<|system|>{{ .System }}{{ end }}<|user|>{{ .Prompt }}<|assistant|>"
SYSTEM = "You are Mario from Super Mario Bros."
PARAMS = {"temperature": 0.7, "num_ctx": 4096, "stop": ["<|user|>", "<|end|>"]}
LICENSE = "MIT"
CONFIG = {"model_format": "gguf", "model_family": "llama", "model_families": ["llama"], "model_type": "tiny",
          "file_type": "Q4_K_M", "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> bytes:
    """A Q4_K_M GGUF llama.cpp can load: the convert-quantize example's."""
    root = tmp_path_factory.mktemp("gguf")
    result = build_example(root / "home", "convert-quantize")
    (layer,) = [l for l in result["layers"] if l["annotations"]["org.cncf.model.filepath"].endswith(".gguf")]
    return (root / "home" / "store" / "blobs" / "sha256" / layer["digest"].split(":")[1]).read_bytes()


def _push_ollama_model(host: str, repo: str, tag: str, gguf: bytes, tmp: Path) -> tuple[str, dict[str, str]]:
    """Upload the blobs and an Ollama manifest (schema 2, Ollama's layer media types, as
    ollama/ollama server/images.go writes them); its digest and the blob digests by kind."""
    blobs = {"model": gguf, "template": TEMPLATE.encode(), "system": SYSTEM.encode(),
             "params": json.dumps(PARAMS).encode(), "license": LICENSE.encode(), "config": json.dumps(CONFIG).encode()}
    reg = Registry(host, plain_http=True)
    digests = {}
    for kind, data in blobs.items():
        path = tmp / kind
        path.write_bytes(data)
        digests[kind] = _sha(data)
        reg.push_blob(repo, digests[kind], len(data), path)
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": digests["config"],
                   "size": len(blobs["config"])},
        "layers": [{"mediaType": f"application/vnd.ollama.image.{kind}", "digest": digests[kind],
                    "size": len(blobs[kind])} for kind in ("model", "template", "system", "params", "license")],
    }
    data = json.dumps(manifest).encode()
    reg.put_manifest(repo, tag, data, manifest["mediaType"])
    reg.close()
    return _sha(data), digests


def test_an_ollama_model_becomes_a_modelpack_artifact(registry, cli, home, tmp_path: Path, tiny_gguf: bytes) -> None:
    repo = f"library/tiny-{uuid.uuid4().hex[:8]}"
    manifest_digest, digests = _push_ollama_model(registry.host, repo, "q4", tiny_gguf, tmp_path)
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM ollama://{registry.host}/{repo}:q4\n")
    r = cli("build", "-f", str(mf), "-t", "tiny:q4", "--progress", "plain", "--json")
    assert r.rc == 0, r.err
    built = r.json()
    (layer,) = built["layers"]
    assert layer["annotations"]["org.cncf.model.filepath"] == "model.gguf"
    assert layer["mediaType"] == "application/vnd.cncf.model.weight.v1.raw"
    assert layer["digest"] == digests["model"] == _sha(tiny_gguf)  # the registry's blob, byte for byte
    blob = home / "store" / "blobs" / "sha256" / layer["digest"].split(":")[1]
    assert blob.read_bytes() == tiny_gguf

    desc = built["config"]["descriptor"]
    assert desc["name"] == repo.split("/")[1] and desc["version"] == "q4" and desc["licenses"] == ["MIT"]
    assert desc["family"] == "llama" and desc["revision"] == manifest_digest
    assert built["config"]["config"]["format"] == "gguf"
    manifest = json.loads((home / "store" / "blobs" / "sha256" / built["digest"].split(":")[1]).read_bytes())
    ann = manifest["annotations"]
    assert ann["dev.modelbuild.ollama.template"] == TEMPLATE
    assert ann["dev.modelbuild.ollama.system"] == SYSTEM
    assert json.loads(ann["dev.modelbuild.ollama.params"]) == PARAMS
    assert json.loads(ann["dev.modelbuild.ollama.license"]) == [LICENSE]

    llama_cpp = require_module("llama_cpp", "pip install 'llama-cpp-python[server]'")
    llm = llama_cpp.Llama(model_path=str(blob), n_ctx=64, n_threads=1, verbose=False)
    try:
        assert llm.n_vocab() > 0 and llm.tokenize(b"hello")
    finally:
        llm.close()


def test_a_pinned_ollama_model_builds_offline(registry, cli, home, tmp_path: Path, tiny_gguf: bytes) -> None:
    repo = f"library/pinned-{uuid.uuid4().hex[:8]}"
    manifest_digest, _ = _push_ollama_model(registry.host, repo, "latest", tiny_gguf, tmp_path)
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM ollama://{registry.host}/{repo}@{manifest_digest}\nNAME pinned\n")
    first = cli("build", "-f", str(mf), "--progress", "quiet", "--json")
    assert first.rc == 0, first.err
    again = cli("build", "-f", str(mf), "--progress", "quiet", "--json", env={"MODELBUILD_OFFLINE": "1"})
    assert again.rc == 0, again.err
    assert again.json()["digest"] == first.json()["digest"]


def test_a_missing_ollama_model_is_one_line(registry, cli, home, tmp_path: Path) -> None:
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM ollama://{registry.host}/library/absent:1b\n")
    r = cli("build", "-f", str(mf), "--progress", "quiet")
    assert r.rc == 1 and len(r.err.strip().splitlines()) == 1, r.err
    assert "library/absent" in r.err


def test_an_ollama_modelfile_layers_over_a_registry_model(registry, cli, home, tmp_path: Path,
                                                          tiny_gguf: bytes) -> None:
    """``FROM host/ns/model:tag`` in an Ollama Modelfile: the registry model through the
    ``ollama://`` source, with the file's own commands layered over it as ``ollama create``
    does (parameters merged by name, its SYSTEM replacing the base's)."""
    repo = f"library/layered-{uuid.uuid4().hex[:8]}"
    _, digests = _push_ollama_model(registry.host, repo, "q4", tiny_gguf, tmp_path)
    mf = tmp_path / "Ollama.Modelfile"
    mf.write_text(f"FROM {registry.host}/{repo}:q4\nPARAMETER temperature 0.2\nSYSTEM You are Luigi.\n")
    r = cli("build", "-f", str(mf), "-t", "luigi:1", "--progress", "quiet", "--json")
    assert r.rc == 0, r.err
    built = r.json()
    (layer,) = built["layers"]
    assert layer["digest"] == digests["model"]
    ann = json.loads((home / "store" / "blobs" / "sha256" / built["digest"].split(":")[1]).read_bytes())["annotations"]
    assert ann["dev.modelbuild.ollama.system"] == "You are Luigi."
    assert json.loads(ann["dev.modelbuild.ollama.params"]) == {**PARAMS, "temperature": 0.2}
    assert ann["dev.modelbuild.ollama.template"] == TEMPLATE
