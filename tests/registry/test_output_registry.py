"""``build --output type=registry`` and ``build --push``: the layers go from the build context's
files to a real registry (Debian's docker-registry, conftest.py) without a second copy in the
store (modelbuild/oci/stream.py), pushing exactly what a build then a push would, a no-op
rebuild uploading nothing, and a file changed after its hash failing with one line and no tag
moved, here or there."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from support import age, error_line, safetensors_blob, write_model_dir

from modelbuild.build import parse_output
from modelbuild.errors import UsageError
from modelbuild.oci.output import registry_targets
from modelbuild.oci.registry import Registry, RegistryError
from modelbuild.oci.stream import STREAM_MIN

MiB = 1 << 20
WEIGHTS = {"model-00001-of-00002.safetensors": 96 * MiB, "model-00002-of-00002.safetensors": 64 * MiB}
MODELFILE = "NAME big\nCONFIG config.json\nMODEL *.safetensors\nDOC README.md\n"


def _disk_usage(root: Path) -> int:
    """Bytes of disk the files under *root* take (``du``), 0 when it does not exist."""
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*")) if root.exists() else 0


def _model(root: Path, weights: dict[str, int]) -> Path:
    files: dict[str, bytes | str] = {name: safetensors_blob(os.urandom(size)) for name, size in weights.items()}
    files.update({"config.json": json.dumps({"model_type": "llama", "hidden_size": 64}), "README.md": "# big\n",
                  "Modelfile": MODELFILE})
    return write_model_dir(root, files)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160 MiB of weights in two files (both streamed), a config and a model card (stored)."""
    return _model(tmp_path_factory.mktemp("big") / "model", WEIGHTS)


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """One weight file just over the streaming threshold: the quick cases."""
    return _model(tmp_path / "small", {"model.safetensors": STREAM_MIN + MiB})


def _repo() -> str:
    return f"out/m-{uuid.uuid4().hex[:10]}"


def _manifest(host: str, repo: str, ref: str) -> tuple[bytes, str] | None:
    with Registry(host, plain_http=True) as reg:
        try:
            data, _, digest = reg.get_manifest(repo, ref)
        except RegistryError:
            return None
    return data, digest


def _ok(run):
    assert run.rc == 0, run.err
    return run.json()


def test_output_registry_streams_the_weights_and_pushes_what_build_then_push_would(registry, proxy, mb, big,
                                                                                    tmp_path):
    model_size = sum((big / name).stat().st_size for name in WEIGHTS)
    repo = _repo()

    # the reference: a normal build into its own store, then a push from it
    normal_home = {"MODELBUILD_HOME": str(tmp_path / "normal")}
    built = _ok(mb("build", "-f", "Modelfile", "-t", "local/big:1", "--json", "--progress", "quiet", cwd=big,
                   env=normal_home))
    assert _disk_usage(tmp_path / "normal" / "store") > model_size  # that build keeps a copy
    pushed = _ok(mb("push", "local/big:1", f"{registry.host}/{repo}-normal:1", "--plain-http", "--json",
                    env=normal_home))
    assert pushed["digest"] == built["digest"]

    # the same Modelfile, streamed to another repository from an empty home
    home = tmp_path / "stream"
    env = {"MODELBUILD_HOME": str(home)}
    ref = f"{registry.host}/{repo}:1"
    run = mb("build", "-f", "Modelfile", "--output", f"type=registry,name={ref}", "--plain-http", "--json",
             "--progress", "plain", cwd=big, env=env)
    doc = _ok(run)
    grown = _disk_usage(home / "store")
    assert grown < model_size / 100, f"the store grew by {grown} bytes for a {model_size}-byte model"
    assert doc["digest"] == built["digest"]
    (push,) = doc["pushed"]
    assert push["reference"] == ref and push["digest"] == built["digest"]
    assert push["uploaded"] == push["blobs"] == 5  # config, two weights, config.json, README.md
    assert doc["stats"]["bytes_hashed"] == sum(p.stat().st_size for p in big.iterdir() if p.name != "Modelfile")
    assert "ingest model-00001-of-00002.safetensors" in run.err  # uploaded while hashed, in the digest step
    # the registry holds the very manifest a build then a push gave, layers and all
    normal_manifest = _manifest(registry.host, f"{repo}-normal", "1")
    assert normal_manifest is not None and _manifest(registry.host, repo, "1") == normal_manifest
    layers = {layer["digest"] for layer in json.loads(normal_manifest[0])["layers"]}
    assert layers == {layer["digest"] for layer in doc["layers"]}

    # the store holds no layer over the threshold, so it holds no tag (docs/registry.md)
    assert doc["tags"] == []
    assert ref not in mb("ls", env=env).out
    line = error_line(mb("inspect", ref, env=env), 2)
    assert line.startswith(f"modelbuild: error: no such model: {ref}"), line

    # a no-op rebuild, spelt --push, through a proxy that counts: no step runs, nothing is
    # hashed, no blob is uploaded; the registry is only asked (HEAD)
    proxy.reset()
    via = f"{proxy.host}/{repo}:1"
    again = _ok(mb("build", "-f", "Modelfile", "-t", via, "--push", "--plain-http", "--json", "--progress",
                   "quiet", cwd=big, env=env))
    assert again["stats"]["steps_run"] == 0 and again["stats"]["bytes_hashed"] == 0, again["stats"]
    assert again["pushed"][0]["uploaded"] == 0 and again["pushed"][0]["digest"] == built["digest"]
    assert proxy.count("POST") == 0 and proxy.count("PATCH") == 0 and proxy.bytes_up("/blobs/") == 0
    assert proxy.count("HEAD", "/blobs/") == 5


def test_a_file_changed_after_its_hash_fails_the_push_and_moves_no_tag(registry, mb, small, home):
    repo = _repo()
    first = _ok(mb("build", "-f", "Modelfile", "-t", f"{registry.host}/{repo}:1", "--push", "--plain-http",
                   "--json", cwd=small))
    (small / "README.md").write_text("# a new card: a new manifest\n")
    age(small / "README.md")
    index = (home / "store" / "index.json").read_bytes()
    # Change the weights in place and put the mtime back: the stat cache still has the old
    # digest, so only reading the bytes can tell. (A repository that has the old blob, or
    # can mount it, is sent nothing: the registry holds the bytes the digest names. A new
    # repository needs them.)
    weights = small / "model.safetensors"
    st = weights.stat()
    with open(weights, "r+b") as fh:
        fh.seek(st.st_size // 2)
        fh.write(os.urandom(16))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))

    new_repo = _repo()
    run = mb("build", "-f", "Modelfile", "-t", f"{registry.host}/{new_repo}:1", "--push", "--plain-http",
             "--progress", "quiet", cwd=small)
    line = error_line(run, 1)
    assert "model.safetensors changed since the build hashed it" in line, line
    assert _manifest(registry.host, new_repo, "1") is None  # no tag there
    assert (home / "store" / "index.json").read_bytes() == index  # nor here

    # built again, it pushes what the file holds now
    again = _ok(mb("build", "-f", "Modelfile", "-t", f"{registry.host}/{new_repo}:1", "--push", "--plain-http",
                   "--json", cwd=small))
    assert again["digest"] != first["digest"]
    assert _manifest(registry.host, new_repo, "1")[1] == again["digest"]
    assert _manifest(registry.host, repo, "1")[1] == first["digest"]


def test_a_file_changed_while_it_streams_fails_and_moves_no_tag(registry, mb, small, home, monkeypatch):
    """Changed while the digest step uploads it: the blob may reach the registry, no
    manifest and no tag does."""
    from modelbuild.oci import stream

    real = stream._HashedFile.read
    weights = small / "model.safetensors"

    def read(self, n=-1):
        data = real(self, n)
        if self.base >= MiB and not getattr(read, "done", False):
            read.done = True
            with open(weights, "r+b") as fh:  # a writer still at work: new bytes further on, a new mtime
                fh.seek(self.base + 2 * MiB)
                fh.write(os.urandom(16))
        return data

    monkeypatch.setattr(stream._HashedFile, "read", read)
    repo = _repo()
    line = error_line(mb("build", "-f", "Modelfile", "-t", f"{registry.host}/{repo}:1", "--push", "--plain-http",
                         "--progress", "quiet", cwd=small), 1)
    assert "model.safetensors changed while it was being read" in line, line
    assert _manifest(registry.host, repo, "1") is None
    assert mb("ls", "--json").out.strip() in ("[]", "")


def test_a_file_hashed_while_it_uploads_over_a_bad_network_gets_its_true_digest(registry, proxy, mb, tmp_path,
                                                                                  monkeypatch):
    """Chunks cut halfway, answers lost, 500s: the upload resumes or starts over, re-sent
    bytes are not hashed twice, a restart hashes from the first byte again; the digest is
    the file's, and the registry agrees."""
    import hashlib

    from modelbuild.oci import transfer

    monkeypatch.setattr(transfer, "open_registry", lambda host, **kw: Registry(host, chunk_size=MiB, backoff=0.01,
                                                                             **kw))
    ctx = _model(tmp_path / "flaky", {"model.safetensors": 24 * MiB})
    want = "sha256:" + hashlib.sha256((ctx / "model.safetensors").read_bytes()).hexdigest()
    # (a PATCH cut halfway makes distribution 2.x forget the upload: the client starts over)
    proxy.set_faults(drop_mid=0.04, drop_before=0.05, **{"500": 0.1})
    repo = _repo()
    doc = _ok(mb("build", "-f", "Modelfile", "-t", f"{proxy.host}/{repo}:1", "--push", "--plain-http", "--json",
                 cwd=ctx))
    proxy.set_faults()
    assert sum(proxy.faults.values()) >= 3, proxy.faults  # it did misbehave
    (weights,) = [layer for layer in doc["layers"] if layer["annotations"]["org.opencontainers.image.title"]
                  == "model.safetensors"]
    assert weights["digest"] == want
    assert _manifest(registry.host, repo, "1")[1] == doc["digest"]
    with Registry(registry.host, plain_http=True) as reg:
        assert reg.has_blob(repo, want)


def test_a_local_tag_or_another_output_keeps_the_copy_and_the_tag(registry, mb, small, home, tmp_path):
    """The weights stream only when nothing asks for them here: with a tag that names no
    registry, or an OCI layout beside the push, the build stores them and tags as ever."""
    repo = _repo()
    size = (small / "model.safetensors").stat().st_size
    doc = _ok(mb("build", "-f", "Modelfile", "-t", f"{registry.host}/{repo}:1", "-t", "local/small:1", "--push",
                 "--plain-http", "--json", cwd=small))
    assert sorted(doc["tags"]) == sorted([f"{registry.host}/{repo}:1", "local/small:1"])
    assert _disk_usage(home / "store") > size
    assert _ok(mb("inspect", f"{registry.host}/{repo}:1", "--json"))["digest"] == doc["digest"]
    other = {"MODELBUILD_HOME": str(tmp_path / "other")}
    doc = _ok(mb("build", "-f", "Modelfile", "-t", f"{registry.host}/{repo}:1", "--push", "--plain-http",
                 "-o", f"type=oci,dest={tmp_path / 'layout'}", "--json", cwd=small, env=other))
    assert _disk_usage(tmp_path / "other" / "store") > size and doc["tags"] == [f"{registry.host}/{repo}:1"]


def test_several_names_each_get_it_and_a_stale_local_tag_goes(registry, mb, small, home):
    """``"name=A,B"``: both repositories, the second mounting from the first; a tag of the
    store with a pushed name that names an older artifact is removed, not left to lie."""
    a, b = _repo(), _repo()
    old = _ok(mb("build", "-f", "Modelfile", "-t", f"{registry.host}/{a}:1", "--json", cwd=small))
    assert old["tags"] == [f"{registry.host}/{a}:1"]  # no push: a local build, tagged
    (small / "README.md").write_text("# big, second edition\n")
    age(small / "README.md")
    names = f"{registry.host}/{a}:1,{registry.host}/{b}:1"
    run = mb("build", "-f", "Modelfile", "--output", f'type=registry,"name={names}"', "--plain-http", "--json",
             cwd=small)
    doc = _ok(run)
    pa, pb = doc["pushed"]
    assert (pa["reference"], pb["reference"]) == (f"{registry.host}/{a}:1", f"{registry.host}/{b}:1")
    assert pa["digest"] == pb["digest"] == doc["digest"] != old["digest"]
    assert pb["uploaded"] == 0  # mounted from a
    assert "removed it" in run.err and f"{registry.host}/{a}:1" not in mb("ls").out
    for repo in (a, b):
        assert _manifest(registry.host, repo, "1")[1] == doc["digest"]


def test_a_small_model_is_whole_in_the_store_and_stays_tagged(registry, mb, tmp_path):
    """Files up to STREAM_MIN are stored as in any build: a model made of them is whole in
    the store after a push, so the store tags it, and `inspect` reads it there."""
    ctx = _model(tmp_path / "tiny", {"model.safetensors": 64 * 1024})
    ref = f"{registry.host}/{_repo()}:1"
    doc = _ok(mb("build", "-f", "Modelfile", "-t", ref, "--push", "--plain-http", "--json", cwd=ctx))
    assert doc["tags"] == [ref] and doc["pushed"][0]["uploaded"] == doc["pushed"][0]["blobs"]
    assert _ok(mb("inspect", ref, "--json"))["digest"] == doc["digest"]


# -- the option -----------------------------------------------------------------------------
@pytest.mark.parametrize("spec, names", [
    ("type=registry", []),
    ("type=registry,name=r.example.com/team/m:1", ["r.example.com/team/m:1"]),
    ("type=registry,ref=r.example.com/team/m", ["r.example.com/team/m:latest"]),
    ('type=registry,"name=r.example.com/a:1,localhost:5000/b:2",push=true',
     ["r.example.com/a:1", "localhost:5000/b:2"]),
])
def test_registry_output_specs(spec, names):
    out = parse_output(spec)
    assert out["type"] == "registry" and out["names"] == names and not out["plain_http"]


@pytest.mark.parametrize("spec, message", [
    ("type=registry,name=team/m:1", "is not a registry tag"),
    ("type=registry,name=r.example.com/m@sha256:" + "a" * 64, "is not a registry tag"),
    ("type=registry,push=false", "push='false'"),
    ("type=registry,dest=x", "unknown key 'dest'"),
    ("type=registry,name=", "names nothing"),
    ("type=docker,dest=x", "unsupported output type"),
])
def test_bad_registry_output_specs(spec, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        parse_output(spec)


def test_a_registry_output_needs_somewhere_to_go():
    registry = parse_output("type=registry")
    assert registry_targets([registry], ["r.example.com/m:1", "local:1"]) == ["r.example.com/m:1"]
    with pytest.raises(UsageError, match="needs a name"):
        registry_targets([registry], ["local:1"])
