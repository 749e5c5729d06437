"""Hostile artifacts pulled with ``pull -o``: from an OCI layout, the local store and a real
registry, through the one materialisation (modelbuild/oci/materialize.py).

Each case is an artifact written by hand, as an attacker would: layers whose paths collide
with the names modelbuild uses while it writes, descriptors that lie about digest or size,
decompression bombs, conflicting paths, links out. What is asserted: the exit code (1 or 2,
never 70), one line naming the digest or path at fault, and that the target directory holds
nothing but files matching their descriptors (or nothing at all when the pull was refused).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import write_model_dir

from modelbuild.oci import mediatypes as mt
from modelbuild.oci.registry import Registry

MiB = 1 << 20
RAW = "application/vnd.cncf.model.weight.v1.raw"
DOC_RAW = "application/vnd.cncf.model.doc.v1.raw"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- artifacts made by hand ---------------------------------------------------------------------
@dataclass
class Artifact:
    layers: list[dict] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    diff_ids: list[str] = field(default_factory=list)

    def raw(self, path: str | None, data: bytes, media: str = RAW, *, size: int | None = None,
            digest: str | None = None, mode: int | None = None) -> Artifact:
        ann = {mt.ANNOTATION_FILEPATH: path} if path is not None else {}
        if mode is not None:
            ann[mt.ANNOTATION_FILE_METADATA] = json.dumps({"name": path, "mode": mode, "size": len(data)})
        self.blobs[sha(data)] = data
        self.layers.append({"mediaType": media, "digest": digest or sha(data),
                            "size": len(data) if size is None else size, "annotations": ann})
        self.diff_ids.append(sha(data))
        return self

    def tar(self, path: str, tar_bytes: bytes, codec: str = "", *, declared: int | None = None,
            diff_id: str | None = None) -> Artifact:
        blob = {"": lambda b: b, "gzip": lambda b: gzip.compress(b, mtime=0),
                "zstd": lambda b: __import__("zstandard").ZstdCompressor().compress(b)}[codec](tar_bytes)
        return self.compressed(path, blob, codec, declared=declared, diff_id=diff_id or sha(tar_bytes))

    def compressed(self, path: str, blob: bytes, codec: str, *, declared: int | None, diff_id: str) -> Artifact:
        media = "application/vnd.cncf.model.dataset.v1.tar" + (f"+{codec}" if codec else "")
        ann = {mt.ANNOTATION_FILEPATH: path}
        if declared is not None:
            ann[mt.ANNOTATION_FILE_METADATA] = json.dumps({"name": path, "mode": 0o644, "size": declared})
        self.blobs[sha(blob)] = blob
        self.layers.append({"mediaType": media, "digest": sha(blob), "size": len(blob), "annotations": ann})
        self.diff_ids.append(diff_id)
        return self

    def config_bytes(self) -> bytes:
        return json.dumps({"descriptor": {"name": "hostile"}, "config": {},
                           "modelfs": {"type": "layers", "diffIds": self.diff_ids}}).encode()

    def manifest(self) -> tuple[bytes, bytes]:
        config = self.config_bytes()
        doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": mt.MODEL_ARTIFACT,
               "config": {"mediaType": mt.MODEL_CONFIG, "digest": sha(config), "size": len(config)},
               "layers": self.layers}
        return json.dumps(doc).encode(), config

    def to_layout(self, root: Path, tag: str = "1") -> str:
        data, config = self.manifest()
        blobs = root / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        for blob in [*self.blobs.values(), config, data]:
            (blobs / sha(blob)[7:]).write_bytes(blob)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        entry = {"mediaType": mt.OCI_MANIFEST, "digest": sha(data), "size": len(data),
                 "annotations": {"org.opencontainers.image.ref.name": tag}}
        (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
        return f"{root}:{tag}"

    def to_registry(self, host: str, repo: str, tag: str = "1") -> str:
        data, config = self.manifest()
        with Registry(host, plain_http=True) as reg:
            for blob in [*self.blobs.values(), config]:
                reg.push_blob(repo, sha(blob), len(blob), lambda b=blob: io.BytesIO(b))
            reg.put_manifest(repo, tag, data, mt.OCI_MANIFEST)
        return f"{host}/{repo}:{tag}"


def tar_of(*members: tuple) -> bytes:
    """A tar of (name, data) files, (name, None) directories, (name, "->", target) links."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for member in members:
            info = tarfile.TarInfo(member[0])
            if len(member) == 3:
                info.type, info.linkname = tarfile.SYMTYPE, member[2]
                tf.addfile(info)
            elif member[1] is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size, info.mode = len(member[1]), 0o644
                tf.addfile(info, io.BytesIO(member[1]))
    return buf.getvalue()


def bomb(codec: str, expanded: int) -> tuple[bytes, str]:
    """A tar of one file of *expanded* zero bytes, compressed: (blob, diffId). Made in pieces,
    never whole in memory."""
    info = tarfile.TarInfo("data/zeros.bin")
    info.size = expanded
    head = info.tobuf(format=tarfile.PAX_FORMAT)
    tail = bytes((-expanded) % 512) + bytes(1024)
    diff = hashlib.sha256(head)
    zero = bytes(4 * MiB)
    if codec == "gzip":
        comp = zlib.compressobj(9, zlib.DEFLATED, 31)
        out = [comp.compress(head)]
        for _ in range(expanded // len(zero)):
            out.append(comp.compress(zero))
            diff.update(zero)
        out += [comp.compress(tail), comp.flush()]
    else:
        import zstandard

        comp = zstandard.ZstdCompressor(level=3).compressobj()
        out = [comp.compress(head)]
        for _ in range(expanded // len(zero)):
            out.append(comp.compress(zero))
            diff.update(zero)
        out += [comp.compress(tail), comp.flush()]
    diff.update(tail)
    return b"".join(out), "sha256:" + diff.hexdigest()


# -- running the CLI in-process (the ``mb`` fixture of tests/conftest.py) ---------------------------
def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("modelbuild: error") or ": error" in line
             or line.startswith("modelbuild:")]
    assert len(lines) == 1, err
    return lines[0]


def files_in(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_sound(out: Path, art: Artifact) -> None:
    """Every file in *out* holds the bytes of a raw layer written at that path; nothing else."""
    want = {layer["annotations"][mt.ANNOTATION_FILEPATH]: layer["digest"] for layer in art.layers
            if layer["mediaType"].endswith(".raw")}
    for rel, data in files_in(out).items():
        assert rel in want, f"{rel} is not a file of the artifact"
        assert sha(data) == want[rel], f"{rel} does not hold the bytes its descriptor names"


def pull_args(source: str, ref: str, out: Path, progress: str = "quiet") -> list[str]:
    return ["pull", ref, "-o", str(out), "--progress", progress] + (["--plain-http"] if source == "registry" else [])


@pytest.fixture(params=["layout", "registry"])
def publish(request, tmp_path):
    """Put an artifact where a pull reads it: an OCI layout directory, or the real registry."""
    counter = iter(range(1000))

    def put(art: Artifact) -> tuple[str, str]:
        n = next(counter)
        if request.param == "layout":
            return request.param, art.to_layout(tmp_path / f"layout{n}")
        registry = request.getfixturevalue("registry")
        return request.param, art.to_registry(registry.host, f"hostile/m{os.getpid()}-{time.time_ns()}")

    return put


# -- temp names chosen by the artifact ---------------------------------------------------------------
def temp_name_pairs(path: str, digest: str) -> list[str]:
    """Layer paths an attacker derives from every temp-name pattern the pull code uses or used."""
    hexd = digest[7:]
    return [f"{path}.partial", f".{path}.partial", f".{path}.tmp1", f".modelbuild-partial/{hexd}",
            f".modelbuild-partial/{hexd}.partial", f".modelbuild-staging-abc/tree/{path}",
            f".modelbuild-layer-{hexd}", f"{hexd}", "blobs/00000", "tree/" + path]


@pytest.mark.parametrize("index", range(10))
def test_a_layer_named_like_a_temp_file_cannot_plant_bytes(mb, publish, tmp_path, index):
    big = os.urandom(4 * MiB)  # large enough that a download is in flight while the small one lands
    small = b"planted bytes"
    second = temp_name_pairs("w.bin", sha(big))[index]
    art = Artifact().raw("w.bin", big).raw(second, small)
    source, ref = publish(art)
    out = tmp_path / "out"
    rc, _, err = mb(*pull_args(source, ref, out))
    if rc == 0:
        assert files_in(out)["w.bin"] == big
        assert_sound(out, art)
    else:
        assert rc == 1 and "refusing" in one_line(err)
        assert files_in(out) == {}
    assert not [p for p in out.rglob(".modelbuild-*")] if out.exists() else True


def test_the_w_bin_partial_artifact_pulls_both_files_intact(mb, publish, tmp_path):
    big, small = os.urandom(8 * MiB), b"x" * 100
    art = Artifact().raw("w.bin", big).raw("w.bin.partial", small)
    source, ref = publish(art)
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        rc, _, err = mb(*pull_args(source, ref, out))
        assert rc == 0, err
        assert files_in(out) == {"w.bin": big, "w.bin.partial": small}


# -- descriptors that lie ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [10, 1000, -1, 2**62, "12", True])
def test_a_lying_size_is_refused(mb, tmp_path, size):
    data = os.urandom(5000)
    art = Artifact().raw("model.bin", data, size=size)
    ref = art.to_layout(tmp_path / "layout")
    out = tmp_path / "out"
    rc, _, err = mb(*pull_args("layout", ref, out))
    assert rc == 1, err
    assert sha(data) in one_line(err)
    assert files_in(out) == {}


def test_a_lying_size_from_the_registry_is_refused(mb, registry, tmp_path):
    data = os.urandom(5000)
    for size in (10, 4999, 5001):
        art = Artifact().raw("model.bin", data, size=size)
        out = tmp_path / f"out{size}"
        rc, _, err = mb(*pull_args("registry", art.to_registry(registry.host, f"hostile/size{size}"), out))
        assert rc == 1, err
        assert sha(data) in one_line(err)
        assert files_in(out) == {}


def test_bytes_that_do_not_match_their_digest_are_refused(mb, tmp_path):
    good, evil = os.urandom(3000), os.urandom(3000)
    art = Artifact().raw("config.json", b"{}").raw("model.bin", good)
    ref = art.to_layout(tmp_path / "layout")
    (tmp_path / "layout" / "blobs" / "sha256" / sha(good)[7:]).write_bytes(evil)
    out = tmp_path / "out"
    rc, _, err = mb(*pull_args("layout", ref, out))
    assert rc == 1 and sha(good) in one_line(err) and "does not match" in err
    assert files_in(out) == {}  # not even the good config.json: nothing moves until all is verified


def test_a_corrupted_store_blob_is_not_handed_out(mb, home, tmp_path):
    data = os.urandom(2 * MiB)
    ref = Artifact().raw("model.bin", data).to_layout(tmp_path / "layout")
    out = tmp_path / "first"
    assert mb(*pull_args("layout", ref, out)).rc == 0
    ctx = write_model_dir(tmp_path / "ctx", {"model.bin": data})
    (ctx / "Modelfile").write_text("NAME corrupt\nMODEL model.bin\n")
    rc, _, err = mb("build", "-f", str(ctx / "Modelfile"), "-t", "corrupt:1", "--progress", "quiet")
    assert rc == 0, err
    blob = home / "store" / "blobs" / "sha256" / sha(data)[7:]
    blob.chmod(0o644)
    with open(blob, "r+b") as fh:
        fh.seek(12345)
        fh.write(b"\xff" * 8)
    blob.chmod(0o444)  # same size, same mode: only reading it tells
    out = tmp_path / "second"
    rc, _, err = mb("pull", "corrupt:1", "-o", str(out), "--progress", "quiet")
    assert rc == 1 and sha(data) in one_line(err)
    assert files_in(out) == {}


def test_a_malformed_descriptor_is_a_clean_error(mb, tmp_path):
    art = Artifact().raw("a.bin", b"a")
    art.layers[0]["digest"] = "sha256:nothex"
    out = tmp_path / "out"
    rc, _, err = mb(*pull_args("layout", art.to_layout(tmp_path / "layout"), out))
    assert rc == 1 and "not a sha256 digest" in one_line(err)


# -- conflicting paths: refused the same way from every source -----------------------------------------
@pytest.mark.parametrize("second", ["w.bin", "w.bin/inner", "./w.bin"])
def test_two_layers_writing_one_path_are_refused(mb, publish, tmp_path, second):
    art = Artifact().raw("w.bin", b"first").raw(second, b"second")
    source, ref = publish(art)
    out = tmp_path / "out"
    rc, _, err = mb(*pull_args(source, ref, out))
    assert rc == 1 and "refusing" in one_line(err), err
    assert files_in(out) == {}


def test_a_tar_member_conflicting_with_a_raw_layer_is_refused(mb, publish, tmp_path):
    art = Artifact().raw("data/a.txt", b"raw").tar("data", tar_of(("data", None), ("data/a.txt", b"from the tar")))
    source, ref = publish(art)
    out = tmp_path / "out"
    rc, _, err = mb(*pull_args(source, ref, out))
    assert rc == 1 and "data/a.txt" in one_line(err)
    assert files_in(out) == {}


def test_paths_differing_only_in_case_warn(mb, publish, tmp_path):
    art = Artifact().raw("Model.bin", b"upper").raw("model.bin", b"lower")
    source, ref = publish(art)
    out = tmp_path / "out"
    rc, _, err = mb(*pull_args(source, ref, out, progress="plain"))
    assert rc == 0 and "differ only in case" in err
    assert files_in(out) == {"Model.bin": b"upper", "model.bin": b"lower"}


def test_every_source_unpacks_one_artifact_into_the_same_tree(mb, registry, tmp_path):
    art = (Artifact().raw("config.json", b"{}", mode=0o640)
           .tar("data", tar_of(("data", None), ("data/x.txt", b"x"), ("data/sub", None), ("data/sub/y", b"y"),
                               ("data/link", "->", "sub")), "gzip")
           .raw("z.bin", os.urandom(1000), mode=0o755))
    trees = []
    for source, ref in (("layout", art.to_layout(tmp_path / "layout")),
                        ("registry", art.to_registry(registry.host, "hostile/same"))):
        out = tmp_path / f"out-{source}"
        rc, _, err = mb(*pull_args(source, ref, out))
        assert rc == 0, err
        trees.append({p.relative_to(out).as_posix(): (p.is_symlink(), os.lstat(p).st_mode & 0o777,
                                                       None if p.is_symlink() or p.is_dir() else p.read_bytes())
                      for p in sorted(out.rglob("*"))})
    assert trees[0] == trees[1]
    assert trees[0]["data/link"][0] and trees[0]["config.json"][1] == 0o640 and trees[0]["z.bin"][1] == 0o755


# -- links and names -----------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["/etc", "../..", "../../outside", "sub/../../.."])
def test_a_link_out_of_the_artifact_is_refused(mb, publish, tmp_path, target):
    art = Artifact().tar("data", tar_of(("data", None), ("data/evil", "->", target)))
    source, ref = publish(art)
    out = tmp_path / "deep" / "out"
    rc, _, err = mb(*pull_args(source, ref, out))
    assert rc == 1 and "refusing" in one_line(err)
    assert not (out / "data").exists()


def test_nothing_is_written_through_a_link_the_artifact_made(mb, publish, tmp_path):
    art = Artifact().tar("data", tar_of(("data", None), ("data/l", "->", "."), ("data/l/x", b"through the link")))
    source, ref = publish(art)
    out = tmp_path / "out"
    rc, _, err = mb(*pull_args(source, ref, out))
    assert rc == 1 and "refusing" in one_line(err)
    assert files_in(out) == {}


@pytest.mark.parametrize("name", ["evil\nname.bin", "esc\x1b[31m.bin", "nul\x00.bin", "a" * 300, "a/" * 2499 + "a",
                                  ".modelbuild-staging-x/y"])
def test_names_an_artifact_cannot_carry_are_refused_and_printed_escaped(mb, tmp_path, name):
    art = Artifact().raw(name, b"data")
    out = tmp_path / "out"
    rc, _, err = mb(*pull_args("layout", art.to_layout(tmp_path / "layout"), out))
    assert rc == 1, err
    line = one_line(err)
    assert "\x1b" not in line and "\x00" not in line
    assert files_in(out) == {}


def test_a_failed_unpack_leaves_nothing_half_extracted(mb, publish, tmp_path):
    members = [(f"data/f{i}", os.urandom(1000)) for i in range(20)] + [("data/../../escape", b"evil")]
    art = Artifact().raw("first.bin", b"first").tar("data", tar_of(("data", None), *members), "gzip")
    source, ref = publish(art)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's own file")
    rc, _, err = mb(*pull_args(source, ref, out))
    assert rc == 1 and "refusing" in one_line(err)
    assert files_in(out) == {"mine.txt": b"the user's own file"}
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


# -- decompression bombs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", ["gzip", "zstd"])
@pytest.mark.parametrize("declared", [1000, None])
def test_a_decompression_bomb_stops_at_the_declared_size(mb, publish, tmp_path, codec, declared):
    """The limit this test expects: a layer whose metadata declares N bytes may expand to
    N + N/100 + 1 MiB; one declaring nothing, to max(64 MiB, 32 × its compressed size)."""
    expanded = 256 * MiB
    blob, diff_id = bomb(codec, expanded)
    limit = (declared + declared // 100 + MiB) if declared else max(64 * MiB, 32 * len(blob))
    assert limit < expanded
    art = Artifact().compressed("data", blob, codec, declared=declared, diff_id=diff_id)
    source, ref = publish(art)
    out = tmp_path / "out"
    start = time.monotonic()
    rc, _, err = mb(*pull_args(source, ref, out))
    elapsed = time.monotonic() - start
    assert rc == 1 and f"more than {limit} bytes" in one_line(err) and "MODELBUILD_MAX_EXPANSION_RATIO" in err
    assert files_in(out) == {}
    assert elapsed < 30, elapsed


def test_the_expansion_limit_can_be_raised(mb, tmp_path, monkeypatch):
    blob, diff_id = bomb("gzip", 80 * MiB)
    art = Artifact().compressed("data", blob, "gzip", declared=None, diff_id=diff_id)
    ref = art.to_layout(tmp_path / "layout")
    assert mb(*pull_args("layout", ref, tmp_path / "refused")).rc == 1
    monkeypatch.setenv("MODELBUILD_MAX_EXPANSION_RATIO", "100000")
    rc, _, err = mb(*pull_args("layout", ref, tmp_path / "out"))
    assert rc == 0, err
    assert (tmp_path / "out" / "data" / "zeros.bin").stat().st_size == 80 * MiB


def test_a_tar_layer_whose_content_contradicts_its_diff_id_is_refused(mb, publish, tmp_path):
    tar = tar_of(("data", None), ("data/a", b"a"))
    art = Artifact().tar("data", tar, "gzip", diff_id=sha(b"something else"))
    source, ref = publish(art)
    out = tmp_path / "out"
    rc, _, err = mb(*pull_args(source, ref, out))
    assert rc == 1 and "diffId" in one_line(err)
    assert files_in(out) == {}


# -- the target directory ---------------------------------------------------------------------------------
def test_pull_onto_an_existing_file_is_a_usage_error(mb, tmp_path):
    ref = Artifact().raw("a.bin", b"a").to_layout(tmp_path / "layout")
    target = tmp_path / "file"
    target.write_text("keep me")
    rc, _, err = mb(*pull_args("layout", ref, target))
    assert rc == 2 and "not a directory" in one_line(err)
    assert target.read_text() == "keep me"


def test_a_file_where_the_target_has_a_directory_is_a_usage_error(mb, tmp_path):
    ref = Artifact().raw("a.bin", b"a").raw("b.bin", b"b").to_layout(tmp_path / "layout")
    out = tmp_path / "out"
    (out / "b.bin").mkdir(parents=True)
    (out / "b.bin" / "mine").write_text("mine")
    rc, _, err = mb(*pull_args("layout", ref, out))
    assert rc == 2 and "b.bin" in one_line(err) and "is a directory" in err
    assert files_in(out) == {"b.bin/mine": b"mine"}


# -- what build accepts, pull -o accepts ----------------------------------------------------------------------
def test_build_refuses_a_link_its_own_pull_would_refuse(mb, tmp_path):
    ctx = write_model_dir(tmp_path / "ctx", {"model.bin": b"weights", "data/sub/file.txt": "x"})
    (ctx / "data" / "abs").symlink_to("/usr")
    (ctx / "Modelfile").write_text("NAME links\nMODEL model.bin\nDATASET data\n")
    rc, _, err = mb("build", "-f", str(ctx / "Modelfile"), "--progress", "quiet")
    assert rc == 2 and "Modelfile:3:" in err and "data/abs" in err and "absolute" in err


def test_a_relative_link_inside_the_directory_builds_and_pulls(mb, tmp_path):
    ctx = write_model_dir(tmp_path / "ctx", {"model.bin": b"weights", "data/sub/file.txt": "x"})
    (ctx / "data" / "rel").symlink_to("sub")
    (ctx / "Modelfile").write_text("NAME links\nMODEL model.bin\nDATASET data\n")
    rc, _, err = mb("build", "-f", str(ctx / "Modelfile"), "-t", "links:1", "--progress", "quiet")
    assert rc == 0, err
    out = tmp_path / "out"
    rc, _, err = mb("pull", "links:1", "-o", str(out), "--progress", "quiet")
    assert rc == 0, err
    assert os.readlink(out / "data" / "rel") == "sub" and (out / "data" / "rel" / "file.txt").read_text() == "x"


def test_build_refuses_a_file_name_with_a_newline(mb, tmp_path):
    ctx = write_model_dir(tmp_path / "ctx", {"model.bin": b"weights", "data/bad\nname.txt": "x"})
    (ctx / "Modelfile").write_text("NAME names\nMODEL model.bin\nDATASET data\n")
    rc, _, err = mb("build", "-f", str(ctx / "Modelfile"), "--progress", "quiet")
    assert rc == 2 and "bad\\nname.txt" in err and "control character" in err
    assert len(err.strip().splitlines()) == 1


def test_an_integer_layer_path_is_a_clean_error(mb, tmp_path):
    art = Artifact().raw("a.bin", b"a")
    art.layers[0]["annotations"][mt.ANNOTATION_FILEPATH] = 12345
    out = tmp_path / "out"
    rc, _, err = mb(*pull_args("layout", art.to_layout(tmp_path / "layout"), out))
    assert rc == 1 and "annotations that are not strings" in one_line(err)
    assert not out.exists()


# -- a full disk ------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs: writes past it fail with ENOSPC. Needs root and mount; CI has both, so
    the test never skips there."""
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        from support import missing

        missing(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("source", ["layout", "registry"])
def test_a_full_disk_is_a_one_line_error_and_leaves_nothing(mb, request, tiny_tmpfs, tmp_path, source):
    art = Artifact().raw("small.txt", b"fits").raw("big.bin", os.urandom(3 * MiB))
    if source == "layout":
        ref = art.to_layout(tmp_path / "layout")
    else:
        ref = art.to_registry(request.getfixturevalue("registry").host, "hostile/enospc")
    out = tiny_tmpfs / "out"
    rc, _, err = mb(*pull_args(source, ref, out))
    assert rc == 1 and "no space left on device" in one_line(err)
    # a partial download may stay to be resumed once there is room, but never under a file's name
    assert not [p for p in out.rglob("*") if not p.relative_to(out).as_posix().startswith(".modelbuild-partial")] \
        if out.exists() else True


def test_a_store_blob_found_corrupt_by_pull_is_removed_and_comes_back_with_a_rebuild(mb, home, tmp_path):
    data = os.urandom(MiB)
    ctx = write_model_dir(tmp_path / "ctx", {"model.bin": data})
    (ctx / "Modelfile").write_text("NAME heal\nMODEL model.bin\n")
    assert mb("build", "-f", str(ctx / "Modelfile"), "-t", "heal:1", "--progress", "quiet").rc == 0
    blob = home / "store" / "blobs" / "sha256" / sha(data)[7:]
    blob.chmod(0o644)
    with open(blob, "r+b") as fh:
        fh.write(b"\0" * 16)
    blob.chmod(0o444)
    rc, _, err = mb("pull", "heal:1", "-o", str(tmp_path / "bad"), "--progress", "quiet")
    assert rc == 1 and "removed it" in one_line(err) and sha(data) in err
    assert not blob.exists()
    rc, _, err = mb("build", "-f", str(ctx / "Modelfile"), "-t", "heal:1", "--progress", "quiet")
    assert rc == 0, err
    rc, _, err = mb("pull", "heal:1", "-o", str(tmp_path / "good"), "--progress", "quiet")
    assert rc == 0 and (tmp_path / "good" / "model.bin").read_bytes() == data
