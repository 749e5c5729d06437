"""The local store under a hostile or failing file system, and with damaged contents.

* A store that cannot be written (a read-only mount, permission denied, a full disk) or a
  home that is a file ends every command with one error line naming the path, exit 1 (2 for
  a home that is a file), never a bug report (exit 70). Read-only and full disks are real:
  tmpfs mounts (we run as root, and root ignores permission bits, so a chmod'ed directory is
  tested by running the command as another user).
* A damaged ``index.json`` is one error line naming it, in every command that reads it.
* A damaged blob (found by a verified read, or by the cheap check on reuse) is removed and
  named; the next build rebuilds it, so the store ends sound (``prune --verify`` clean).
* A failed build leaves every tag as it was.
* Pushing a damaged blob fails naming it, before or right after its first upload.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from support import REPO, Run, error_line, missing, require_tool, safetensors_blob, write_model_dir

from modelbuild.store import Store

FILES = {
    "config.json": '{"model_type": "llama"}',
    "model.safetensors": safetensors_blob(os.urandom(300_000)),
    "README.md": "# hardened\n",
}
MODELFILE = "NAME hard\nCONFIG config.json\nMODEL model.safetensors\nDOC README.md\n"
TAG = "hard:latest"


# -- helpers ------------------------------------------------------------------------------



@pytest.fixture
def model(tmp_path) -> Path:
    ctx = write_model_dir(tmp_path / "ctx", FILES)
    (ctx / "Modelfile").write_text(MODELFILE)
    return ctx


def build(mb, ctx: Path, *extra: str) -> Run:
    return mb("build", "-f", str(ctx / "Modelfile"), "--progress", "quiet", "--json", *extra)


def built(mb, ctx: Path, *extra: str) -> dict:
    run = build(mb, ctx, *extra)
    assert run.rc == 0, run.err
    return run.json()





def tags(home: Path) -> dict[str, str]:
    doc = json.loads((home / "store" / "index.json").read_text())
    return {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in doc["manifests"]}


def blob(home: Path, digest: str) -> Path:
    return home / "store" / "blobs" / "sha256" / digest[7:]


def model_layer(result: dict) -> dict:
    return next(layer for layer in result["layers"]
                if layer["annotations"]["org.cncf.model.filepath"] == "model.safetensors")


def damage(path: Path, how: str) -> None:
    """Damage a store blob as a careless user would: ``append`` or ``truncate`` (made writable
    first), ``flip`` one byte and leave it writable (same size: only the mode tells), or
    ``flip-ro``: flip one byte and make it read-only again (only hashing tells)."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    if how == "append":
        data += b"x"
    elif how == "truncate":
        data = data[:-1]
    else:
        data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    if how == "flip-ro":
        path.chmod(0o444)


def assert_sound(mb) -> None:
    """``prune --verify`` finds nothing corrupt and nothing missing."""
    run = mb("prune", "--verify", "--json")
    assert run.rc == 0, (run.out, run.err)
    report = json.loads(run.out)
    assert report["corrupt"] == [] and report["missing"] == [] and report["verified"] == report["blobs"]


def step_kinds(err: str) -> dict[str, str]:
    """step label → "cached" or "done", from ``--progress json`` output."""
    labels, out = {}, {}
    for line in err.splitlines():
        if not line.startswith("{"):
            continue
        e = json.loads(line)
        if e.get("label"):
            labels[e["step"]] = e["label"]
        if e["kind"] in ("cached", "done"):
            out[labels.get(e["step"], e["step"])] = e["kind"]
    return out


def warnings(err: str) -> list[str]:
    return [json.loads(line)["message"] for line in err.splitlines()
            if line.startswith("{") and json.loads(line)["kind"] == "warning"]


# -- mounts: a read-only store, a full disk -------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(name, size)``: a fresh tmpfs mounted at ``tmp_path/name``; unmounted after."""
    mounted: list[Path] = []

    def mount(name: str, size: str = "32m") -> Path:
        path = tmp_path / name
        path.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            missing(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount_read_only(path: Path) -> None:
    gc.collect()  # the build cache's SQLite connections of finished step threads hold files open
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


@pytest.fixture
def read_only_home(mb, model, tmpfs, monkeypatch) -> tuple[Path, dict]:
    """A home on a tmpfs holding one build, then remounted read-only."""
    home = tmpfs("ro") / "home"
    monkeypatch.setenv("MODELBUILD_HOME", str(home))
    result = built(mb, model)
    remount_read_only(home.parent)
    return home, result


@pytest.mark.parametrize("args", [
    ["build", "-f", "{modelfile}", "--progress", "quiet"],
    ["build", "-f", "{modelfile}", "--progress", "quiet", "--no-cache", "-t", "other:1"],
    ["tag", TAG, "other:1"],
    ["rm", TAG],
    ["prune"],
    ["prune", "--verify"],
    ["pull", "127.0.0.1:9/team/model:1", "--plain-http", "--progress", "quiet"],
], ids=["build", "build-no-cache", "tag", "rm", "prune", "prune-verify", "pull"])
def test_read_only_store_is_one_error_naming_it(mb, model, read_only_home, args):
    home, result = read_only_home
    line = error_line(mb(*[a.replace("{modelfile}", str(model / "Modelfile")) for a in args]), 1)
    assert str(home) in line and "read-only file system" in line, line
    assert tags(home) == {TAG: result["digest"]}


def test_read_only_store_can_still_be_listed_and_inspected(mb, read_only_home):
    home, result = read_only_home
    run = mb("ls")
    assert run.rc == 0 and TAG in run.out, run.err
    run = mb("inspect", TAG)
    assert run.rc == 0 and result["digest"] in run.out, run.err


def test_full_disk_is_one_error_and_leaves_the_store_sound(mb, tmp_path, tmpfs, monkeypatch):
    ctx = write_model_dir(tmp_path / "big", {"config.json": "{}",
                                             "model.safetensors": safetensors_blob(os.urandom(3 << 20))})
    (ctx / "Modelfile").write_text("NAME big\nCONFIG config.json\nMODEL model.safetensors\n")
    home = tmpfs("full", size="1m") / "home"
    monkeypatch.setenv("MODELBUILD_HOME", str(home))
    for layer_format in ("raw", "tar"):
        line = error_line(build(mb, ctx, "--layer-format", layer_format), 1)
        assert str(home) in line and "no space left on device" in line, line
        assert list((home / "store" / "ingest").iterdir()) == []  # no temp file left behind
    assert_sound(mb)
    assert tags(home) == {}


# -- a home or store that is a file ---------------------------------------------------------
COMMANDS = [["ls"], ["tag", "a", "b:1"], ["rm", "a"], ["prune"], ["inspect", "a"],
            ["build", "-f", "{modelfile}", "--progress", "quiet"],
            ["push", "localhost:9/team/a:1"], ["pull", "localhost:9/team/a:1", "--plain-http"]]


@pytest.mark.parametrize("args", COMMANDS, ids=[c[0] for c in COMMANDS])
@pytest.mark.parametrize("how", ["env", "flag", "under-a-file"])
def test_home_that_is_a_file_is_a_usage_error(mb, model, tmp_path, monkeypatch, args, how):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    home = afile / "home" if how == "under-a-file" else afile
    args = [a.replace("{modelfile}", str(model / "Modelfile")) for a in args]
    if how == "flag":
        monkeypatch.delenv("MODELBUILD_HOME")
        run = mb("--home", str(home), *args)
    else:
        monkeypatch.setenv("MODELBUILD_HOME", str(home))
        run = mb(*args)
    line = error_line(run, 2)
    assert str(home) in line and "not a directory" in line, line


@pytest.mark.parametrize("part", ["store", "cache", "store/index.json", "store/ingest"])
def test_store_part_that_is_not_what_it_should_be_is_one_error(mb, model, home, part):
    built(mb, model)
    path = home / part
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    if part == "store/index.json":
        path.mkdir()  # a directory where the index should be
    else:
        path.write_text("a file in the way")
    line = error_line(build(mb, model, "-t", "other:1"), 1)
    assert str(path) in line, line


def test_store_without_permission_is_one_error_naming_it(model, tmp_path):
    """A store whose directories are not writable (chmod a-w). root ignores permission bits,
    so as root the CLI runs as another user (nobody, through setpriv) against root's store."""
    root = os.geteuid() == 0
    if root:
        require_tool("setpriv", "apt-get install -y util-linux: setpriv acts as another user")
    base = Path(tempfile.mkdtemp(prefix="mb-perm-", dir="/tmp"))  # tmp_path is root's alone (0700)
    home = base / "home"
    # the other user must reach the checkout and the virtualenv: a clone made in `mktemp -d`
    # sits in a 0700 directory; let others search (not list) its ancestors while this runs
    opened = _let_others_through([REPO, Path(sys.prefix)]) if root else []
    try:
        base.chmod(0o755)
        ctx = shutil.copytree(model, base / "ctx")
        env = {**os.environ, "MODELBUILD_HOME": str(home), "PYTHONPATH": str(REPO)}
        env.pop("MODELBUILD_DEBUG", None)

        def cli(*args: str, user: bool = True) -> Run:
            prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if user and root else []
            proc = subprocess.run([*prefix, sys.executable, "-m", "modelbuild", *args], env=env, cwd=base,
                                  capture_output=True, text=True, timeout=120)
            return Run(proc.returncode, proc.stdout, proc.stderr)

        assert cli("build", "-f", str(ctx / "Modelfile"), "--progress", "quiet", user=False).rc == 0
        for d in [home, *home.rglob("*")]:
            if d.is_dir():
                d.chmod(0o555)
        for args in (["build", "-f", str(ctx / "Modelfile"), "--progress", "quiet"], ["tag", TAG, "x:1"],
                     ["rm", TAG], ["prune"]):
            line = error_line(cli(*args), 1)
            assert str(home) in line and "permission denied" in line, line
        run = cli("ls")  # reading needs no write access
        assert run.rc == 0 and TAG in run.out, run.err
    finally:
        for d in [home, *home.rglob("*")] if home.exists() else []:
            if d.is_dir():
                d.chmod(0o755)
        shutil.rmtree(base)
        for path, mode in reversed(opened):
            path.chmod(mode)


def _let_others_through(paths: list[Path]) -> list[tuple[Path, int]]:
    """Add the search bit for others to every ancestor of *paths* that lacks it; the
    (directory, old mode) pairs changed, to restore."""
    changed: list[tuple[Path, int]] = []
    seen: set[Path] = set()
    for path in paths:
        for directory in reversed([path.resolve(), *path.resolve().parents]):
            if directory in seen:
                continue
            seen.add(directory)
            mode = directory.stat().st_mode & 0o7777
            if not mode & 0o001:
                directory.chmod(mode | 0o001)
                changed.append((directory, mode))
    return changed


# -- a damaged index.json -------------------------------------------------------------------
BAD_INDEXES = {
    "a list": b"[]",
    "manifests not a list": b'{"manifests": "nope"}',
    "a null entry": b'{"manifests": [null]}',
    "no digest": b'{"manifests": [{"size": 3, "annotations": {"org.opencontainers.image.ref.name": "a"}}]}',
    "a bad digest": b'{"manifests": [{"digest": "sha256:nope", "size": 3}]}',
    "not JSON": b"{{{",
}
INDEX_COMMANDS = [["ls"], ["tag", TAG, "x:1"], ["rm", TAG], ["inspect", TAG], ["prune"],
                  ["build", "-f", "{modelfile}", "--progress", "quiet"]]


@pytest.mark.parametrize("content", BAD_INDEXES.values(), ids=BAD_INDEXES.keys())
@pytest.mark.parametrize("args", INDEX_COMMANDS, ids=[c[0] for c in INDEX_COMMANDS])
def test_damaged_store_index_is_one_error_naming_it(mb, model, home, content, args):
    built(mb, model)
    (home / "store" / "index.json").write_bytes(content)
    line = error_line(mb(*[a.replace("{modelfile}", str(model / "Modelfile")) for a in args]), 1)
    assert str(home / "store" / "index.json") in line, line
    assert (home / "store" / "index.json").read_bytes() == content  # left for the user to look at


# -- damaged blobs ----------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["append", "truncate", "flip"])
def test_damaged_raw_layer_is_rebuilt_not_reported_cached(mb, model, home, how):
    first = built(mb, model)
    digest = model_layer(first)["digest"]
    damage(blob(home, digest), how)
    run = mb("build", "-f", str(model / "Modelfile"), "--progress", "json", "--json")
    assert run.rc == 0, run.err
    assert run.json()["digest"] == first["digest"]
    kinds = step_kinds(run.err)
    assert kinds["ingest model.safetensors"] == "done", kinds  # hashed and stored again
    assert any(digest in w for w in warnings(run.err)), run.err
    assert stat.S_IMODE(blob(home, digest).stat().st_mode) == 0o444
    assert Store(home / "store").verify_blob(digest)
    assert_sound(mb)


@pytest.mark.parametrize("how", ["append", "flip"])
def test_damaged_tar_layer_reruns_its_pack_step(mb, model, home, how):
    first = built(mb, model, "--layer-format", "tar")
    digest = model_layer(first)["digest"]
    damage(blob(home, digest), how)
    run = mb("build", "-f", str(model / "Modelfile"), "--progress", "json", "--json", "--layer-format", "tar")
    assert run.rc == 0, run.err
    assert run.json()["digest"] == first["digest"]
    kinds = step_kinds(run.err)
    assert kinds["pack model.safetensors (tar)"] == "done", kinds
    assert [k for label, k in kinds.items() if label.startswith("write")] == ["cached", "cached"]
    assert Store(home / "store").verify_blob(digest)
    assert_sound(mb)


@pytest.mark.parametrize("part", ["config", "manifest"])
def test_corrupt_config_or_manifest_found_by_reading_is_removed_and_rebuilt(mb, model, home, part):
    first = built(mb, model)
    manifest = json.loads(blob(home, first["digest"]).read_bytes())
    digest = manifest["config"]["digest"] if part == "config" else first["digest"]
    damage(blob(home, digest), "flip-ro")  # same size, read-only: only a verified read tells
    line = error_line(mb("inspect", TAG), 1)
    assert digest in line and "does not match" in line, line
    assert not blob(home, digest).exists()  # removed, so the next build writes it again
    again = built(mb, model)
    assert again["digest"] == first["digest"] and Store(home / "store").verify_blob(digest)
    assert_sound(mb)


def test_store_reads_are_verified_and_bounded(tmp_path):
    store = Store(tmp_path / "store").ensure()
    data = json.dumps({"a": 1}).encode()
    digest = store.put_bytes(data)
    assert store.read_json(digest, len(data)) == {"a": 1}
    with pytest.raises(Exception, match="not the 3 its descriptor says") as exc:
        store.read_json(digest, 3)  # a descriptor that lies about the size: the blob is sound, kept
    assert exc.value.exit_code == 1 and store.verify_blob(digest)
    assert not store.check_blob(digest, 3) and store.check_blob(digest, len(data))
    path = store.blob_path(digest)
    path.chmod(0o644)
    path.write_bytes(data + b" ")
    with pytest.raises(Exception, match=f"{digest} .* was damaged") as exc:
        store.read_json(digest, len(data))  # the blob lies: removed
    assert exc.value.exit_code == 1 and not store.has_blob(digest)
    big = store.put_bytes(b"[" * (5 << 20))
    with pytest.raises(Exception, match="more than the") as exc:
        store.read_json(big)  # never read whole, never removed: it may be a layer
    assert exc.value.exit_code == 1 and store.verify_blob(big)


def test_output_layout_refuses_a_damaged_blob(mb, model, home, tmp_path):
    """``--output`` hard-links blobs without reading them: the cheap check guards each one."""
    from modelbuild.errors import BuildError
    from modelbuild.oci.layout import export_layout

    first = built(mb, model)
    digest = model_layer(first)["digest"]
    damage(blob(home, digest), "truncate")
    store = Store(home / "store")
    with pytest.raises(BuildError, match=digest):
        export_layout(store, {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": first["digest"],
                              "size": blob(home, first["digest"]).stat().st_size}, tmp_path / "out", "x:1")
    assert not blob(home, digest).exists()
    out = built(mb, model, "-o", f"type=oci,dest={tmp_path / 'out'}")  # the build repairs, then exports
    assert out["digest"] == first["digest"]
    assert (tmp_path / "out" / "blobs" / "sha256" / digest[7:]).stat().st_size == model_layer(first)["size"]
    assert_sound(mb)


# -- a failed build moves no tag -------------------------------------------------------------
def _changed(model: Path) -> None:
    (model / "README.md").write_text("# changed\n")
    os.utime(model / "README.md", (1_600_000_000, 1_600_000_000))


def test_failed_output_leaves_every_tag_as_it_was(mb, model, home, tmp_path):
    first = built(mb, model, "-t", "hard:1")
    (tmp_path / "afile").write_text("")
    _changed(model)
    line = error_line(build(mb, model, "-t", "hard:1", "-t", "hard:2", "-o", f"type=oci,dest={tmp_path}/afile/out"),
                      1)
    assert str(tmp_path / "afile") in line
    assert tags(home) == {"hard:1": first["digest"]}


def test_failed_cache_export_leaves_every_tag_as_it_was(mb, model, home, tmp_path):
    first = built(mb, model)
    (tmp_path / "afile").write_text("")
    _changed(model)
    run = build(mb, model, "--cache-to", f"type=local,dest={tmp_path}/afile/cache,ignore-error=false")
    assert "cannot export the cache" in error_line(run, 1)
    assert tags(home) == {TAG: first["digest"]}


def test_failed_transform_leaves_every_tag_as_it_was(mb, model, home):
    first = built(mb, model)
    header = json.dumps({"w": {"dtype": "F32", "shape": [2000], "data_offsets": [0, 8000]}}).encode()
    header += b" " * (-len(header) % 8)
    (model / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4000)
    (model / "Modelfile").write_text(MODELFILE + "TARGET cpu\nTARGET cuda cuda>=12.1 compute>=8.0\nQUANTIZE bfloat16\n")
    run = build(mb, model)
    assert run.rc in (1, 2) and "internal error" not in run.err, run.err  # two stages' steps may fail at once
    assert len([line for line in run.err.splitlines() if line.startswith("modelbuild: error: ")]) == 1, run.err
    assert tags(home) == {TAG: first["digest"]}


# -- push ------------------------------------------------------------------------------------
def _registry_support():
    """tests/registry/conftest.py's real-registry helpers (Debian's docker-registry)."""
    spec = importlib.util.spec_from_file_location("mb_registry_support", REPO / "tests" / "registry" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    support = _registry_support()
    server = support._start(tmp_path_factory.mktemp("registry"))
    yield server
    support._stop(server)


@pytest.fixture
def proxy(registry):
    sys.path.insert(0, str(REPO / "tests" / "registry"))
    from faultproxy import FaultProxy

    with FaultProxy(registry.address) as p:
        yield p


def test_push_of_a_damaged_blob_fails_before_sending_it(mb, model, home, proxy):
    first = built(mb, model)
    layer = model_layer(first)
    damage(blob(home, layer["digest"]), "append")
    line = error_line(mb("push", TAG, f"{proxy.host}/hard/damaged:1", "--plain-http", "--progress", "quiet"), 1)
    assert layer["digest"] in line and "removed" in line, line
    assert proxy.bytes_up() < layer["size"]  # the damaged blob never went out
    assert built(mb, model)["digest"] == first["digest"]  # rebuilt
    assert mb("push", TAG, f"{proxy.host}/hard/damaged:1", "--plain-http", "--progress", "quiet").rc == 0
    assert_sound(mb)


def test_push_of_a_corrupt_read_only_blob_fails_after_one_upload(mb, model, home, proxy):
    first = built(mb, model)
    layer = model_layer(first)
    damage(blob(home, layer["digest"]), "flip-ro")  # passes the cheap check: the registry refuses it
    line = error_line(mb("push", TAG, f"{proxy.host}/hard/corrupt:1", "--plain-http", "--progress", "quiet"), 1)
    assert layer["digest"] in line and "does not match" in line, line
    assert proxy.bytes_up() < 2 * layer["size"]  # sent once, not once per retry
    assert not blob(home, layer["digest"]).exists()
    assert built(mb, model)["digest"] == first["digest"]
    assert_sound(mb)


def test_push_from_a_read_only_store_works(mb, read_only_home, registry):
    home, result = read_only_home
    run = mb("push", TAG, f"{registry.host}/hard/readonly:1", "--plain-http", "--progress", "quiet", "--json")
    assert run.rc == 0, run.err
    assert run.json()["digest"] == result["digest"]
