"""``FROM oci://`` and ``FROM ollama://`` against a registry that lies (tests/registry/
hostile_registry.py): every failure is one line, exit 1 or 2, and nothing is stored."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostile_registry import Answer

DOCKER = "application/vnd.docker.distribution.manifest.v2+json"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest(hostile, repo: str, ref: str, doc: dict, media_type: str = DOCKER) -> str:
    data = json.dumps(doc).encode()
    digest = _sha(data)
    for r in (ref, digest):
        hostile.route("GET", f"/v2/{repo}/manifests/{r}",
                      Answer(200, {"Content-Type": media_type, "Docker-Content-Digest": digest}, data))
        hostile.route("HEAD", f"/v2/{repo}/manifests/{r}",
                      Answer(200, {"Content-Type": media_type, "Docker-Content-Digest": digest}, b""))
    return digest


def _blob(hostile, repo: str, data: bytes, *, send: bytes | None = None) -> dict:
    digest = _sha(data)
    hostile.route("GET", f"/v2/{repo}/blobs/{digest}", Answer(200, {}, data if send is None else send))
    return {"digest": digest, "size": len(data)}


def _ollama(hostile, repo: str, layers: list[tuple[str, dict]]) -> None:
    config = _blob(hostile, repo, b'{"model_format":"gguf"}')
    _manifest(hostile, repo, "1", {
        "schemaVersion": 2, "mediaType": DOCKER,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **config},
        "layers": [{"mediaType": f"application/vnd.ollama.image.{kind}", **blob} for kind, blob in layers]})


def _build(mb, tmp_path: Path, ref: str):
    (tmp_path / "Modelfile").write_text(f"FROM {ref}\n")
    return mb("build", "-f", str(tmp_path / "Modelfile"), "-t", "x:1", "--progress", "quiet")


def _assert_failed(run, home: Path, *phrases: str) -> None:
    assert run.rc in (1, 2), (run.rc, run.err)
    assert len(run.err.strip().splitlines()) == 1, run.err
    for phrase in phrases:
        assert phrase in run.err, run.err
    blobs = home / "store" / "blobs" / "sha256"
    assert not blobs.exists() or not any(blobs.iterdir()), "a failed fetch stored something"


def test_a_gguf_blob_with_other_bytes_stores_nothing(hostile, mb, home, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("modelbuild.fetch.BACKOFF", 0.01)
    gguf = b"GGUF" + b"\0" * 200
    _ollama(hostile, "library/liar", [("model", _blob(hostile, "library/liar", gguf, send=b"GGUF" + b"\1" * 200))])
    run = _build(mb, tmp_path, f"ollama://{hostile.host}/library/liar:1")
    _assert_failed(run, home, "model.gguf", "nothing was stored")


def test_a_blob_longer_than_listed_is_cut_off(hostile, mb, home, tmp_path) -> None:
    gguf = b"GGUF" + b"\0" * 100
    _ollama(hostile, "library/long", [("model", _blob(hostile, "library/long", gguf, send=gguf + b"x" * 10000))])
    run = _build(mb, tmp_path, f"ollama://{hostile.host}/library/long:1")
    _assert_failed(run, home, "more than the 104 bytes listed")


def test_a_huge_template_is_refused(hostile, mb, home, tmp_path) -> None:
    repo = "library/huge"
    template = {"digest": _sha(b"x"), "size": 64 << 20}
    _ollama(hostile, repo, [("model", _blob(hostile, repo, b"GGUF")), ("template", template)])
    run = _build(mb, tmp_path, f"ollama://{hostile.host}/{repo}:1")
    _assert_failed(run, home, "more than 1048576 for a metadata blob")


def test_a_manifest_without_a_model_layer_is_refused(hostile, mb, home, tmp_path) -> None:
    repo = "library/empty"
    _ollama(hostile, repo, [("license", _blob(hostile, repo, b"MIT"))])
    run = _build(mb, tmp_path, f"ollama://{hostile.host}/{repo}:1")
    _assert_failed(run, home, "no application/vnd.ollama.image.model layer")


def test_params_that_are_not_json_are_refused(hostile, mb, home, tmp_path) -> None:
    repo = "library/params"
    _ollama(hostile, repo, [("model", _blob(hostile, repo, b"GGUF")), ("params", _blob(hostile, repo, b"{nope"))])
    run = _build(mb, tmp_path, f"ollama://{hostile.host}/{repo}:1")
    _assert_failed(run, home, "params")


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "a/../../b"])
def test_an_oci_layer_path_outside_the_context_is_refused(hostile, mb, home, tmp_path, path) -> None:
    repo = "team/evil"
    config = _blob(hostile, repo, json.dumps({"descriptor": {"name": "evil"}, "config": {}, "modelfs": {
        "type": "layers", "diffIds": []}}).encode())
    layer = _blob(hostile, repo, b"payload")
    _manifest(hostile, repo, "1", {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.cncf.model.manifest.v1+json",
        "config": {"mediaType": "application/vnd.cncf.model.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.cncf.model.weight.v1.raw", **layer,
                    "annotations": {"org.cncf.model.filepath": path}}]},
        media_type="application/vnd.oci.image.manifest.v1+json")
    run = _build(mb, tmp_path, f"oci://{hostile.host}/{repo}:1")
    _assert_failed(run, home, "refusing it")
    assert not (tmp_path.parent / "etc").exists()


def test_a_manifest_whose_digest_lies_is_refused(hostile, mb, home, tmp_path) -> None:
    repo = "team/digest"
    data = b'{"schemaVersion":2,"layers":[]}'
    hostile.route("GET", f"/v2/{repo}/manifests/1",
                  Answer(200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                               "Docker-Content-Digest": _sha(b"other")}, data))
    run = _build(mb, tmp_path, f"oci://{hostile.host}/{repo}:1")
    _assert_failed(run, home, "digest")
