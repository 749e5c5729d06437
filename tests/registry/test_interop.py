"""Interoperability with other OCI / ModelPack clients, through a real registry (Debian's
``docker-registry``, see conftest.py): what modelbuild pushes, ``skopeo`` and
``modelpack-client`` (PyPI) read back file for file, byte for byte; what they push, and
ModelPack artifacts with the legacy ``vnd.cnai`` media types, modelbuild pulls.

Both tools are needed: without them these tests skip locally and FAIL under ``CI=true``
(``apt-get install skopeo``, ``pip install modelpack-client``), so a
missing install step cannot hide.

modelbuild's side is its CLI, as users run it: ``modelbuild build``, ``modelbuild push REF``,
``modelbuild pull REF [-o DIR]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from modelbuild.oci import mediatypes as mt
from modelbuild.oci.registry import Registry, split_reference
from modelbuild.store import Store

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from support import require_module, safetensors_blob

EXAMPLE = REPO_ROOT / "Modelfile.examples" / "tiny-llama"
EXAMPLE_MODELFILE = EXAMPLE / "Modelfile"
EXAMPLE_FILES = EXAMPLE / "model"
MiB = 1 << 20


# -- tools ------------------------------------------------------------------------------
@pytest.fixture
def modelpack_client() -> Any:
    """The ``modelpack_client`` module (PyPI ``modelpack-client``)."""
    return require_module("modelpack_client", "pip install modelpack-client; the test extras include it")


def _run(*cmd: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tree(root: Path) -> dict[str, bytes]:
    """Every regular file under *root*: relative POSIX path → bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_same_tree(got: Path, want: dict[str, bytes]) -> None:
    files = _tree(got)
    assert sorted(files) == sorted(want), f"files differ: got {sorted(files)}, want {sorted(want)}"
    for rel, data in want.items():
        assert files[rel] == data, f"{rel}: {len(files[rel])} bytes, digest {_sha256(files[rel])}, " \
                                   f"want {len(data)} bytes, {_sha256(data)}"


def _repo(name: str) -> str:
    """A fresh repository name: the registry is shared by the session."""
    return f"interop/{name}-{uuid.uuid4().hex[:8]}"


# -- modelbuild's side ------------------------------------------------------------------
class Modelbuild:
    """modelbuild as a user runs it: its CLI, in a subprocess, with its own MODELBUILD_HOME."""

    def __init__(self, cli: Any, home: Path) -> None:
        self.cli, self.home = cli, home

    def build(self, ref: str, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        r = self.cli("build", "-f", str(EXAMPLE_MODELFILE), "-t", ref, "--progress", "quiet", "--json", *extra, env=env)
        assert r.rc == 0, r.err
        return r.json()

    @property
    def store(self) -> Store:
        return Store(self.home / "store")

    def push(self, ref: str) -> dict[str, Any]:
        """``modelbuild push REF``: the store's tag *ref* to the registry it names."""
        r = self.cli("push", ref, "--plain-http", "--progress", "quiet", "--json")
        assert r.rc == 0, f"modelbuild push {ref}: exit {r.rc}\n{r.err}"
        return r.json()

    def pull(self, ref: str, out: Path | None = None) -> str:
        """``modelbuild pull REF -o OUT`` (files), or into the store without *out*; the
        manifest digest it reports."""
        r = self.cli("pull", ref, *(["-o", str(out)] if out else []), "--plain-http", "--progress", "quiet", "--json")
        assert r.rc == 0, f"modelbuild pull {ref}{f' -o {out}' if out else ''}: exit {r.rc}\n{r.err}"
        return r.json()["digest"]


@pytest.fixture
def mb(cli: Any, home: Path) -> Modelbuild:
    return Modelbuild(cli, home)


@pytest.fixture
def example_files() -> dict[str, bytes]:
    return _tree(EXAMPLE_FILES)


# -- modelbuild → others -----------------------------------------------------------------
def test_skopeo_copies_what_modelbuild_pushed(registry, mb, skopeo, example_files, tmp_path):
    ref = f"{registry.host}/{_repo('to-skopeo')}:0.1"
    built = mb.build(ref)
    assert mb.push(ref)["digest"] == built["digest"]
    layout = tmp_path / "skopeo-layout"
    _run(skopeo, "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:copied")

    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["digest"] == built["digest"]  # the registry kept modelbuild's exact manifest bytes
    blob = lambda digest: (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
    manifest_bytes = blob(entry["digest"])
    assert _sha256(manifest_bytes) == built["digest"]
    assert manifest_bytes == mb.store.read_blob(built["digest"])
    manifest = json.loads(manifest_bytes)
    assert manifest["artifactType"] == mt.MODEL_ARTIFACT
    assert blob(manifest["config"]["digest"]) == mb.store.read_blob(manifest["config"]["digest"])

    paths = {}
    for layer in manifest["layers"]:
        assert layer["mediaType"].endswith(".raw"), layer["mediaType"]
        data = blob(layer["digest"])
        assert len(data) == layer["size"] and _sha256(data) == layer["digest"]
        paths[layer["annotations"][mt.ANNOTATION_FILEPATH]] = data
    assert sorted(paths) == sorted(example_files)
    for rel, data in example_files.items():
        assert paths[rel] == data, rel


def test_modelpack_client_pulls_what_modelbuild_pushed(registry, mb, modelpack_client, example_files, tmp_path):
    ref = f"{registry.host}/{_repo('to-modelpack')}:0.1"
    built = mb.build(ref, env={"SOURCE_DATE_EPOCH": "1700000000"})  # with createdAt, which it validates
    mb.push(ref)
    out = tmp_path / "pulled"
    result = modelpack_client.ModelPackClient(insecure=True).pull(ref, out)

    assert sorted(p.relative_to(out.resolve()).as_posix() for p in result.files) == sorted(example_files)
    _assert_same_tree(out, example_files)
    manifest = mb.store.read_json(built["digest"])
    assert dict(result.manifest) == manifest
    assert dict(result.config) == mb.store.read_json(manifest["config"]["digest"])
    assert result.config["descriptor"]["createdAt"] == "2023-11-14T22:13:20Z"


def test_modelpack_client_pulls_modelbuild_tar_layers(registry, mb, modelpack_client, example_files, tmp_path):
    """``--layer-format tar+zstd``: modelpack-client unpacks modelbuild's archives and checks
    each against its diffID (the digest of the uncompressed tar) in the config."""
    ref = f"{registry.host}/{_repo('to-modelpack-zstd')}:0.1"
    mb.build(ref, "--layer-format", "tar+zstd")
    mb.push(ref)
    out = tmp_path / "pulled"
    result = modelpack_client.ModelPackClient(insecure=True).pull(ref, out)
    assert {layer["mediaType"].rsplit(".", 1)[1] for layer in result.manifest["layers"]} == {"tar+zstd"}
    _assert_same_tree(out, example_files)


# -- others → modelbuild -----------------------------------------------------------------
def _modelpack_source(root: Path) -> tuple[dict[str, bytes], dict[str, int]]:
    """A model directory the way a modelpack-client user has one: two safetensors shards,
    a config, a tokenizer directory, a docs file, and a scripts directory with an executable.
    Returns its files and the modes the raw layers must come back with."""
    rng = os.urandom
    files = {
        "model-00001-of-00002.safetensors": safetensors_blob(rng(3 * MiB + 7), "layers.0.weight"),
        "model-00002-of-00002.safetensors": safetensors_blob(rng(MiB), "lm_head.weight"),
        "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64}).encode(),
        "tokenizer/tokenizer.json": json.dumps({"model": {"type": "BPE"}, "n": rng(8).hex()}).encode(),
        "tokenizer/special_tokens_map.json": b'{"bos_token": "<s>"}',
        "README.md": b"# interop\n\npushed by modelpack-client\n",
        "scripts/run.sh": b"#!/bin/sh\necho hello\n",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "scripts" / "run.sh").chmod(0o755)
    (root / "model-00002-of-00002.safetensors").chmod(0o640)
    raw = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "config.json", "README.md")
    return files, {rel: stat.S_IMODE((root / rel).stat().st_mode) for rel in raw}


def test_modelbuild_pulls_what_modelpack_client_pushed(registry, mb, modelpack_client, tmp_path):
    mpc = modelpack_client
    from modelpack_client import constants as c

    src = tmp_path / "src"
    files, modes = _modelpack_source(src)
    layers = [
        mpc.ModelLayer(src / "model-00001-of-00002.safetensors", c.WEIGHT_RAW_MEDIA_TYPE),
        mpc.ModelLayer(src / "model-00002-of-00002.safetensors", c.WEIGHT_RAW_MEDIA_TYPE),
        mpc.ModelLayer(src / "config.json", c.WEIGHT_CONFIG_RAW_MEDIA_TYPE),
        mpc.ModelLayer(src / "tokenizer", c.WEIGHT_CONFIG_RAW_MEDIA_TYPE),  # a directory: packed as .tar
        mpc.ModelLayer(src / "README.md", c.DOC_RAW_MEDIA_TYPE),
        mpc.ModelLayer(src / "scripts", c.CODE_TAR_GZIP_MEDIA_TYPE),  # a directory, gzip'd
    ]
    config = mpc.ModelPackConfig(
        descriptor=mpc.ModelDescriptor(name="interop", family="llama", version="1.0", authors=("tests",)),
        config=mpc.ModelTechnicalConfig(architecture="transformer", format="safetensors", precision="uint8"),
    )
    ref = f"{registry.host}/{_repo('from-modelpack')}:1.0"
    pushed = mpc.ModelPackClient(insecure=True).push(ref, layers, config)
    kinds = sorted(layer["mediaType"] for layer in pushed.manifest["layers"])
    assert c.WEIGHT_CONFIG_TAR_MEDIA_TYPE in kinds and c.CODE_TAR_GZIP_MEDIA_TYPE in kinds

    out = tmp_path / "out"
    assert mb.pull(ref, out) == pushed.digest
    _assert_same_tree(out, files)
    assert mb.pull(ref) == pushed.digest  # into the store: the same manifest bytes
    assert _sha256(mb.store.read_blob(pushed.digest)) == pushed.digest
    assert mb.store.read_json(pushed.digest) == dict(pushed.manifest)
    for rel, mode in modes.items():  # raw layers: from the file-metadata annotation
        assert stat.S_IMODE((out / rel).stat().st_mode) == mode, rel
    assert (out / "scripts" / "run.sh").stat().st_mode & 0o111  # tar layers: from the tar header


# -- legacy vnd.cnai artifacts ------------------------------------------------------------
def _to_legacy(text: str) -> str:
    return text.replace("application/vnd.cncf.model.", "application/vnd.cnai.model.").replace(
        "org.cncf.model.", "org.cnai.model.")


def _legacy_manifest(manifest: dict[str, Any], modes: dict[str, int] | None = None) -> dict[str, Any]:
    """*manifest* as modctl wrote artifacts before model-spec moved to the CNCF: ``vnd.cnai``
    media types, ``org.cnai.model.*`` layer annotations, no ``org.opencontainers.image.title``
    (so the file path can only come from the legacy annotation). *modes* rewrites the file
    modes in the legacy metadata annotation."""
    doc = json.loads(_to_legacy(json.dumps(manifest)))
    for layer in doc["layers"]:
        ann = layer["annotations"]
        ann.pop(mt.ANNOTATION_TITLE, None)
        rel = ann[mt.LEGACY_ANNOTATION_FILEPATH]
        if modes and rel in modes:
            meta = json.loads(ann["org.cnai.model.file.metadata+json"])
            meta["mode"] = modes[rel]
            ann["org.cnai.model.file.metadata+json"] = json.dumps(meta, separators=(",", ":"))
    assert doc["artifactType"] == mt.LEGACY_MODEL_ARTIFACT and doc["config"]["mediaType"] == mt.LEGACY_MODEL_CONFIG
    assert not any("cncf" in json.dumps(layer) for layer in doc["layers"])
    return doc


def _push_legacy(mb: Modelbuild, built_digest: str, target: str,
                 modes: dict[str, int] | None = None) -> tuple[str, dict[str, Any]]:
    """Push the store's artifact *built_digest* under *target* with legacy media types, by
    hand with the registry client; the new manifest's digest and the manifest."""
    store = mb.store
    doc = _legacy_manifest(store.read_json(built_digest), modes)
    data = json.dumps(doc, indent=2).encode()
    host, repo, parsed = split_reference(target)
    with Registry(host, plain_http=True) as reg:
        for d in [doc["config"], *doc["layers"]]:
            reg.push_blob(repo, d["digest"], d["size"], store.blob_path(d["digest"]))
        assert reg.put_manifest(repo, parsed.tag, data, mt.OCI_MANIFEST) == _sha256(data)
    return _sha256(data), doc


@pytest.mark.parametrize("layer_format", ["raw", "tar"])
def test_modelbuild_pulls_legacy_cnai_artifact(registry, mb, example_files, tmp_path, layer_format):
    local = f"legacy-src-{layer_format}:1"
    built = mb.build(local, "--layer-format", layer_format)
    target = f"{registry.host}/{_repo('legacy-' + layer_format)}:1"
    digest, doc = _push_legacy(mb, built["digest"], target)
    assert {layer["mediaType"].rsplit(".v1.", 1)[1] for layer in doc["layers"]} == {layer_format}

    out = tmp_path / "out"
    assert mb.pull(target, out) == digest
    _assert_same_tree(out, example_files)


def test_modelbuild_restores_modes_of_legacy_raw_layers(registry, mb, tmp_path):
    """The legacy ``org.cnai.model.file.metadata+json`` annotation carries the file mode as
    the CNCF one does; a pull restores it from either."""
    local = "legacy-modes:1"
    built = mb.build(local)
    target = f"{registry.host}/{_repo('legacy-modes')}:1"
    _push_legacy(mb, built["digest"], target, modes={"model.safetensors": 0o600, "README.md": 0o640})
    out = tmp_path / "out"
    mb.pull(target, out)
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "README.md").stat().st_mode) == 0o640


# -- skopeo → modelbuild -----------------------------------------------------------------
def test_modelbuild_pulls_what_skopeo_copied_from_its_oci_layout(registry, mb, skopeo, example_files, tmp_path):
    layout = tmp_path / "layout"
    built = mb.build("layout-src:1", "--output", f"type=oci,dest={layout}")
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    tag = entry["annotations"]["org.opencontainers.image.ref.name"]
    ref = f"{registry.host}/{_repo('from-skopeo')}:1"
    _run(skopeo, "copy", "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{ref}")

    out = tmp_path / "out"
    assert mb.pull(ref, out) == built["digest"]  # skopeo sent the layout's manifest bytes unchanged
    _assert_same_tree(out, example_files)

    fresh = tmp_path / "fresh-home"  # into an empty store: every blob comes from the registry
    r = mb.cli("pull", ref, "--plain-http", "--progress", "quiet", "--json", env={"MODELBUILD_HOME": str(fresh)})
    assert r.rc == 0, r.err
    assert r.json()["digest"] == built["digest"]
    store = Store(fresh / "store")
    manifest = store.read_json(built["digest"])
    for d in [manifest["config"], *manifest["layers"]]:
        assert _sha256(store.read_blob(d["digest"])) == d["digest"]
    assert store.read_blob(built["digest"]) == (layout / "blobs" / "sha256" / built["digest"][7:]).read_bytes()
