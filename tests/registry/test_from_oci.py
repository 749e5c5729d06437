"""``FROM oci://``: a ModelPack artifact in a registry (docker-registry on 127.0.0.1) as the
base of a build: one modelpack-client pushed, and one modelbuild pushed and then
re-quantized, keeping the unchanged layers' digests and mounting them on push."""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from pathlib import Path
from typing import Any


REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from support import require_module

EXAMPLES = REPO_ROOT / "Modelfile.examples"
BASE = "org.opencontainers.image.base.name"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _repo(name: str) -> str:
    return f"from-oci/{name}-{uuid.uuid4().hex[:8]}"


def _build(cli: Any, modelfile: Path, tag: str, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    r = cli("build", "-f", str(modelfile), "-t", tag, "--progress", "plain", "--json", *extra, env=env)
    assert r.rc == 0, r.err
    return r.json()


def _layers(result: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {l["annotations"]["org.cncf.model.filepath"]: (l["mediaType"], l["digest"]) for l in result["layers"]}


def _manifest(home: Path, digest: str) -> dict[str, Any]:
    return json.loads((home / "store" / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())


def test_a_modelpack_client_artifact_is_a_base(registry, cli, home, tmp_path: Path) -> None:
    mpc = require_module("modelpack_client", "pip install modelpack-client; the test extras include it")
    from modelpack_client import constants as c

    src = tmp_path / "src"
    (src / "tokenizer").mkdir(parents=True)
    files = {"model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ", "config.json": b'{"model_type":"x"}',
             "tokenizer/vocab.json": b'{"a":1}', "README.md": b"# pushed by modelpack-client\n"}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    layers = [mpc.ModelLayer(src / "model.safetensors", c.WEIGHT_RAW_MEDIA_TYPE),
              mpc.ModelLayer(src / "config.json", c.WEIGHT_CONFIG_RAW_MEDIA_TYPE),
              mpc.ModelLayer(src / "tokenizer", c.WEIGHT_CONFIG_RAW_MEDIA_TYPE),  # a directory: a tar layer
              mpc.ModelLayer(src / "README.md", c.DOC_RAW_MEDIA_TYPE)]
    config = mpc.ModelPackConfig(
        descriptor=mpc.ModelDescriptor(name="interop", family="llama", version="1.0", authors=("tests",)),
        config=mpc.ModelTechnicalConfig(architecture="transformer", format="safetensors", precision="uint8"))
    ref = f"{registry.host}/{_repo('mpc')}:1.0"
    pushed = mpc.ModelPackClient(insecure=True).push(ref, layers, config)
    base = {l["annotations"]["org.cncf.model.filepath"]: l["digest"] for l in pushed.manifest["layers"]}

    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM oci://{ref}\nVERSION 2.0\n")  # no file directive: the base's files, as their kinds
    built = _build(cli, mf, "derived:2.0")
    got = _layers(built)
    assert sorted(got) == ["README.md", "config.json", "model.safetensors", "tokenizer"]
    for rel in ("model.safetensors", "config.json", "README.md"):  # raw layers: the very same blobs
        assert got[rel][1] == base[rel] == _sha256(files[rel])
    assert got["tokenizer"] == ("application/vnd.cncf.model.weight.config.v1.tar", base["tokenizer"])  # the archive too
    assert got["model.safetensors"][0] == "application/vnd.cncf.model.weight.v1.raw"
    desc = built["config"]["descriptor"]
    assert (desc["name"], desc["family"], desc["authors"], desc["version"]) == ("interop", "llama", ["tests"], "2.0")
    annotations = _manifest(home, built["digest"])["annotations"]
    assert annotations[BASE] == ref and annotations["org.opencontainers.image.base.digest"] == pushed.digest


def test_requantizing_a_base_keeps_unchanged_layers_and_mounts_them(registry, cli, home, tmp_path: Path) -> None:
    base_ref = f"{registry.host}/{_repo('base')}:1.0"
    base = _build(cli, EXAMPLES / "tiny-llama" / "Modelfile", base_ref)
    r = cli("push", base_ref, "--plain-http", "--progress", "quiet", "--json")
    assert r.rc == 0, r.err
    base_layers = _layers(base)

    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM oci://{base_ref}\nNAME tiny-q4\nCONVERT gguf\nQUANTIZE q4_k_m\n")
    derived_ref = f"{registry.host}/{_repo('q4')}:1.0"
    derived = _build(cli, mf, derived_ref)
    got = _layers(derived)
    assert "model.gguf" in got and not any(p.endswith(".safetensors") for p in got)
    unchanged = [p for p in got if p != "model.gguf"]
    assert unchanged, got
    for rel in unchanged:  # same bytes, same media type, same digest: nothing re-hashed or re-uploaded
        assert got[rel] == base_layers[rel], rel
    assert derived["stats"]["files_hashed"] == []

    r = cli("push", derived_ref, "--plain-http", "--progress", "plain", "--json")
    assert r.rc == 0, r.err
    pushed = r.json()
    # only the new GGUF and the config go up; the rest is mounted from the base's repository
    assert pushed["uploaded"] == 2, (pushed, r.err)


def test_a_pinned_base_builds_again_with_the_registry_gone(registry, cli, home, tmp_path: Path) -> None:
    ref = f"{registry.host}/{_repo('pinned')}:1.0"
    _build(cli, EXAMPLES / "tiny-llama" / "Modelfile", ref)
    r = cli("push", ref, "--plain-http", "--progress", "quiet", "--json")
    assert r.rc == 0, r.err
    digest = r.json()["digest"]
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM oci://{ref.rsplit(':', 1)[0]}@{digest}\nNAME again\n")
    first = _build(cli, mf, "again:1")
    second = _build(cli, mf, "again:1", env={"MODELBUILD_INSECURE_REGISTRIES": "", "http_proxy": "http://127.0.0.1:9",
                                             "MODELBUILD_OFFLINE": "1"})
    assert second["digest"] == first["digest"]


def test_not_a_modelpack_artifact_is_one_line(registry, cli, home, tmp_path: Path) -> None:
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM oci://{registry.host}/nothing/here:1.0\nNAME x\n")
    r = cli("build", "-f", str(mf), "--progress", "quiet")
    assert r.rc == 1 and len(r.err.strip().splitlines()) == 1, r.err
    assert "nothing/here" in r.err


def test_generate_for_a_remote_source_pins_it_and_builds(registry, cli, home, tmp_path: Path) -> None:
    ref = f"{registry.host}/{_repo('gen')}:1.0"
    base = _build(cli, EXAMPLES / "tiny-llama" / "Modelfile", ref)
    assert cli("push", ref, "--plain-http", "--progress", "quiet").rc == 0
    out = tmp_path / "Modelfile"
    r = cli("modelfile", "generate", f"oci://{ref}", "-o", str(out), "--json")
    assert r.rc == 0, r.err
    text = out.read_text()
    pinned = f"oci://{ref.rsplit(':', 1)[0]}@"
    assert f"FROM {pinned}sha256:" in text, text
    kinds = {f["path"]: f["kind"] for f in r.json()["files"]}
    assert kinds["config.json"] == "config" and kinds["model.safetensors"] == "model" and kinds["README.md"] == "doc"
    assert "NAME tiny-llama" in text  # the base's name, not the snapshot directory's
    built = _build(cli, out, "regenerated:1", env={"MODELBUILD_OFFLINE": "1"})  # pinned and fetched: no network
    assert {p: d for p, (_, d) in _layers(built).items()} == {p: d for p, (_, d) in _layers(base).items()}


def test_archive_layers_of_a_base_are_kept_as_they_are(registry, cli, home, tmp_path: Path) -> None:
    """A base whose every file is a tar+zstd layer (as modctl and KitOps pack files): a build
    that packages them unchanged keeps each layer (media type, digest, diffId), whatever its
    own --layer-format; a file packaged as another kind is packed anew."""
    ref = f"{registry.host}/{_repo('zstd')}:1.0"
    base = _build(cli, EXAMPLES / "tiny-llama" / "Modelfile", ref, "--layer-format", "tar+zstd")
    assert cli("push", ref, "--plain-http", "--progress", "quiet").rc == 0
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM oci://{ref}\nNAME kept\nDOC config.json\nMODEL *.safetensors\nDOC README.md\n")
    built = _build(cli, mf, "kept:1")
    got, want = _layers(built), _layers(base)
    assert got["model.safetensors"] == want["model.safetensors"]
    assert got["README.md"] == want["README.md"]
    assert got["model.safetensors"][0] == "application/vnd.cncf.model.weight.v1.tar+zstd"
    assert got["config.json"][0] == "application/vnd.cncf.model.doc.v1.raw"  # another kind: packed anew
    ids = dict(zip([l["digest"] for l in base["layers"]], base["config"]["modelfs"]["diffIds"]))
    kept = dict(zip([l["digest"] for l in built["layers"]], built["config"]["modelfs"]["diffIds"]))
    assert kept[want["model.safetensors"][1]] == ids[want["model.safetensors"][1]]


def test_the_provenance_names_the_base_artifact_by_digest(registry, cli, home, tmp_path: Path) -> None:
    ref = f"{registry.host}/{_repo('prov')}:1.0"
    _build(cli, EXAMPLES / "tiny-llama" / "Modelfile", ref)
    pushed = cli("push", ref, "--plain-http", "--progress", "quiet", "--json")
    assert pushed.rc == 0, pushed.err
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM oci://{ref}\nNAME derived\n")
    built = _build(cli, mf, "derived:1", "--attest", "provenance")
    (attestation,) = built["attestations"]
    layer = _manifest(home, attestation["digest"])["layers"][0]
    statement = json.loads((home / "store" / "blobs" / "sha256" / layer["digest"].split(":")[1]).read_bytes())
    (base,) = [d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]
               if d.get("uri", "").startswith("oci://")]
    digest = pushed.json()["digest"]
    assert base["uri"].endswith("@" + digest) and base["digest"] == {"sha256": digest.split(":")[1]}
