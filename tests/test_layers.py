"""Layer encodings, diffIds, reproducible tars, and byte-identical artifacts across machines."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest
import zstandard

from support import age, safetensors_blob, write_model_dir
from helpers import blob, read_artifact, validate_against_shared_schema

FILES = {
    "config.json": "{}",
    "model.safetensors": safetensors_blob(os.urandom(50_000)),
    "tok/vocab.txt": "a\nb\n",
    "tok/sub/merges.txt": "a b\n",
    "run.sh": "#!/bin/sh\n",
}
MODELFILE = "NAME enc\nCONFIG config.json\nCONFIG tok\nMODEL model.safetensors\nCODE run.sh\n"


def _uncompress(media_type: str, data: bytes) -> bytes:
    if media_type.endswith("+gzip"):
        return gzip.decompress(data)
    if media_type.endswith("+zstd"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


@pytest.mark.parametrize("fmt", ["raw", "tar", "tar+gzip", "tar+zstd"])
def test_layer_formats_and_diff_ids(build, home, tmp_path, fmt):
    ctx = write_model_dir(tmp_path / "m", FILES)
    os.chmod(ctx / "run.sh", 0o700)
    result = build(ctx, MODELFILE, "--layer-format", fmt, progress="quiet")
    manifest, config = read_artifact(home / "store", result["digest"])
    validate_against_shared_schema(config)
    assert len(config["modelfs"]["diffIds"]) == len(manifest["layers"]) == 4
    for layer, diff_id in zip(manifest["layers"], config["modelfs"]["diffIds"]):
        path = layer["annotations"]["org.cncf.model.filepath"]
        data = blob(home / "store", layer["digest"])
        is_dir = path == "tok"
        suffix = "tar" if (fmt == "raw" and is_dir) else fmt
        assert layer["mediaType"].endswith(".v1." + suffix)
        plain = _uncompress(layer["mediaType"], data)
        assert diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
        if suffix == "raw":
            assert plain == (ctx / path).read_bytes()
            continue
        with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
            members = tf.getmembers()
            names = [m.name for m in members]
            assert names == sorted(names)
            for m in members:
                assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
            if is_dir:
                assert names == ["tok", "tok/sub", "tok/sub/merges.txt", "tok/vocab.txt"]
                assert tf.extractfile("tok/vocab.txt").read() == b"a\nb\n"
                assert [m.mode for m in members] == [0o755, 0o755, 0o644, 0o644]
            else:
                assert names == [path]
                assert tf.extractfile(path).read() == (ctx / path).read_bytes()
                assert members[0].mode == (0o755 if path == "run.sh" else 0o644)


def test_unknown_layer_format_is_a_usage_error(mb, tmp_path):
    ctx = write_model_dir(tmp_path / "m", {"a": "a"})
    (ctx / "Modelfile").write_text("MODEL a\n")
    run = mb("build", "-f", "Modelfile", "--layer-format", "tar+xz", cwd=ctx)
    assert run.rc == 2
    assert run.err.strip().startswith("modelbuild: error: unknown layer format 'tar+xz'")
    assert "Traceback" not in run.err


def _tree_with_other_metadata(root, seed):
    """The same content as FILES, with different mtimes, umask-style modes and inode order."""
    names = sorted(FILES, reverse=bool(seed))
    for i, name in enumerate(names):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        data = FILES[name]
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chmod(p, 0o664 if seed else 0o600)
        t = 1_000_000_000 + 1000 * seed + i
        os.utime(p, (t, t))
    os.chmod(root / "run.sh", 0o775 if seed else 0o700)
    (root / "Modelfile").write_text(MODELFILE)


@pytest.mark.parametrize("fmt", ["raw", "tar+gzip", "tar+zstd"])
def test_same_inputs_give_byte_identical_artifacts(build, tmp_path, fmt):
    digests = []
    for seed in (0, 1):
        ctx = tmp_path / f"machine{seed}" / "src"
        ctx.mkdir(parents=True)
        _tree_with_other_metadata(ctx, seed)
        home = tmp_path / f"machine{seed}" / "home"
        result = build(ctx, None, "--layer-format", fmt, progress="quiet", env={"MODELBUILD_HOME": str(home)})
        manifest = json.loads(blob(home / "store", result["digest"]))
        digests.append((result["digest"], manifest["config"]["digest"]))
    assert digests[0] == digests[1]


def test_source_date_epoch_sets_created_and_tar_mtime(mb, home, tmp_path):
    ctx = write_model_dir(tmp_path / "m", {"d/x": "x"})
    (ctx / "Modelfile").write_text("MODEL d\n")
    run = mb("build", "-f", "Modelfile", "--json", "--progress", "quiet", cwd=ctx,
             env={"SOURCE_DATE_EPOCH": "86400"})
    manifest, config = read_artifact(home / "store", run.json()["digest"])
    assert config["descriptor"]["createdAt"] == "1970-01-02T00:00:00Z"
    meta = json.loads(manifest["layers"][0]["annotations"]["org.cncf.model.file.metadata+json"])
    assert meta["mtime"] == "1970-01-02T00:00:00Z"
    with tarfile.open(fileobj=io.BytesIO(blob(home / "store", manifest["layers"][0]["digest"]))) as tf:
        assert {m.mtime for m in tf.getmembers()} == {86400}
    # without it, no wall-clock time appears anywhere
    run2 = mb("build", "-f", "Modelfile", "--json", "--progress", "quiet", cwd=ctx)
    _, config2 = read_artifact(home / "store", run2.json()["digest"])
    assert "createdAt" not in config2["descriptor"]


def test_symlinked_files_are_packaged_by_content_under_the_link_path(build, home, tmp_path):
    blobs = write_model_dir(tmp_path / "hub" / "blobs", {"abc123": safetensors_blob(b"weights!")})
    snap = tmp_path / "hub" / "snapshots" / "main"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to(blobs / "abc123")
    age(blobs / "abc123")
    layer = build(snap, "MODEL model.safetensors\n", progress="quiet")["layers"][0]
    assert layer["annotations"]["org.cncf.model.filepath"] == "model.safetensors"
    assert blob(home / "store", layer["digest"]) == safetensors_blob(b"weights!")
