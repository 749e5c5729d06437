"""Incremental rebuilds: unchanged inputs are never re-read, changed ones only are re-hashed."""

from __future__ import annotations

import os

import pytest

from support import age, safetensors_blob, write_model_dir

FILES = {
    "config.json": '{"model_type": "llama"}',
    "model-00001.safetensors": safetensors_blob(os.urandom(300_000)),
    "model-00002.safetensors": safetensors_blob(os.urandom(200_000)),
    "tokenizer.json": "{}",
    "README.md": "# m\n",
}
MODELFILE = "NAME m\nCONFIG *.json\nMODEL *.safetensors\nDOC README.md\n"


@pytest.fixture
def model(tmp_path):
    ctx = write_model_dir(tmp_path / "m", FILES)
    (ctx / "Modelfile").write_text(MODELFILE)
    return ctx


def build(cli, ctx, *extra):
    run = cli("build", "-f", "Modelfile", "--json", "--progress", "json", *extra, cwd=ctx)
    assert run.rc == 0, run.err
    return run


def kinds(run):
    """step label → final event kind ("cached" or "done")."""
    labels = {}
    out = {}
    for e in run.events():
        if e.get("label"):
            labels[e["step"]] = e["label"]
        if e["kind"] in ("cached", "done"):
            out[labels.get(e["step"], e["step"])] = e["kind"]
    return out


def test_cold_build_hashes_every_byte_once(cli, model):
    result = build(cli, model).json()
    total = sum(len(v if isinstance(v, bytes) else v.encode()) for v in FILES.values())
    assert result["stats"]["bytes_hashed"] == total
    assert sorted(result["stats"]["files_hashed"]) == sorted(FILES)
    assert result["stats"]["steps_cached"] <= 1  # only the build context, which needs no work


def test_unchanged_rebuild_is_all_cached_and_reads_nothing(cli, model):
    first = build(cli, model).json()
    again = build(cli, model)
    result = again.json()
    assert result["digest"] == first["digest"]
    assert set(kinds(again).values()) == {"cached"}
    assert len(kinds(again)) == 1 + 2 * len(FILES) + 4  # source, digest+layer per file, describe, config, manifest, export
    assert result["stats"]["bytes_hashed"] == 0
    assert result["stats"]["steps_run"] == 0


def test_touch_keeps_the_digest_and_writes_no_blob(cli, model, home):
    first = build(cli, model).json()
    blobs_before = sorted(os.listdir(home / "store" / "blobs" / "sha256"))
    for name in FILES:
        age(model / name, 5)  # mtime changes, content does not
    result = build(cli, model).json()
    assert result["digest"] == first["digest"]
    # mtime is in the stat-cache key, so each touched file is hashed once more to prove it is
    # unchanged; nothing is re-packed or re-written
    assert result["stats"]["bytes_written"] == 0
    assert not [s for s in result["stats"]["executed"] if not s.startswith("digest:")]
    assert sorted(os.listdir(home / "store" / "blobs" / "sha256")) == blobs_before
    # and the build after that reads nothing at all
    assert build(cli, model).json()["stats"]["bytes_hashed"] == 0


def test_changing_one_file_rehashes_only_that_file(cli, model):
    first = build(cli, model).json()
    target = model / "model-00002.safetensors"
    data = bytearray(target.read_bytes())
    data[-1000] ^= 0xFF
    target.write_bytes(bytes(data))
    age(target)
    second = build(cli, model)
    result = second.json()
    assert result["digest"] != first["digest"]
    assert result["stats"]["files_hashed"] == ["model-00002.safetensors"]
    assert result["stats"]["bytes_hashed"] == len(data)
    assert sorted(result["stats"]["executed"]) == [
        "config", "describe", "digest:model-00002.safetensors", "export", "layer:model-00002.safetensors", "manifest"]
    # the other layers are exactly what they were
    old = {l["annotations"]["org.cncf.model.filepath"]: l["digest"] for l in first["layers"]}
    new = {l["annotations"]["org.cncf.model.filepath"]: l["digest"] for l in result["layers"]}
    assert {k for k in old if old[k] != new[k]} == {"model-00002.safetensors"}


def test_content_not_path_is_the_key(cli, model, tmp_path):
    first = build(cli, model).json()
    moved = tmp_path / "copy"
    moved.mkdir()
    for name in FILES:
        (moved / name).write_bytes((model / name).read_bytes())
        age(moved / name)
    (moved / "Modelfile").write_text(MODELFILE)
    result = build(cli, moved).json()
    assert result["digest"] == first["digest"]
    # new inodes: hashed once, but every layer, the config and the manifest come from the cache
    assert not [s for s in result["stats"]["executed"] if not s.startswith("digest:")]


def test_no_cache_reruns_everything_with_the_same_result(cli, model):
    first = build(cli, model).json()
    result = build(cli, model, "--no-cache").json()
    assert result["digest"] == first["digest"]
    assert {"config", "manifest", "describe", *(f"digest:{n}" for n in FILES), *(f"layer:{n}" for n in FILES)} <= set(
        result["stats"]["executed"])
    assert result["stats"]["bytes_hashed"] > 0


def test_a_pruned_blob_is_rebuilt_not_trusted(cli, model, home):
    first = build(cli, model).json()
    assert cli("rm", "m").rc == 0
    assert cli("prune").rc == 0
    assert os.listdir(home / "store" / "blobs" / "sha256") == []
    result = build(cli, model).json()
    assert result["digest"] == first["digest"]
    assert result["stats"]["bytes_written"] > 0
    assert cli("prune", "--verify").rc == 0
