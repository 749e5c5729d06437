"""``modelbuild push / pull / login / logout / tag`` and ``build --push``, run as users run
them (the CLI in a subprocess, its own MODELBUILD_HOME) against a real registry (Debian's
docker-registry, see conftest.py), through the fault proxy where bytes are counted or the
network must misbehave. What is asserted: the registry holds the store's exact bytes, a pull
gives back the same digests and files (bytes and modes), a second push sends no blob, a
killed pull resumes, a bad network still ends well, and a password never shows."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import EXAMPLES, REPO, age, safetensors_blob, write_model_dir

from modelbuild.oci import mediatypes as mt
from modelbuild.oci.registry import Registry

MiB = 1 << 20
EXAMPLE_MODELFILE = EXAMPLES / "tiny-llama" / "Modelfile"
EXAMPLE_FILES = EXAMPLES / "tiny-llama" / "model"
HEAD = "NAME tiny\nCONFIG *.json\nMODEL *.safetensors\nDOC README.md\n"
STAGES = {
    "cpu": "TARGET cpu\nQUANTIZE float16\n",
    "cuda": "TARGET cuda cuda>=12.1 compute>=8.0\nQUANTIZE bfloat16\nSHARD 200KB\n",
    "rocm": "TARGET rocm rocm>=6.0 gfx=gfx942,gfx90a\nQUANTIZE float16 --keep=lm_head.weight\n",
}
needs_skopeo = pytest.mark.usefixtures("skopeo")  # skip outside CI, fail in CI (tests/support.py)


# -- helpers ----------------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _ok(run, what: str = ""):
    assert run.rc == 0, f"{what} exit {run.rc}\nstdout: {run.out[-2000:]}\nstderr: {run.err[-4000:]}"
    return run


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


def _blob(home: Path, digest: str) -> bytes:
    return (home / "store" / "blobs" / "sha256" / digest[7:]).read_bytes()


def _layers_by_path(home: Path, manifest_digest: str) -> dict[str, bytes]:
    manifest = json.loads(_blob(home, manifest_digest))
    return {layer["annotations"][mt.ANNOTATION_FILEPATH]: _blob(home, layer["digest"]) for layer in manifest["layers"]}


def _one_error_line(run) -> str:
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert "Traceback" not in run.err and "internal error" not in run.err, run.err
    errors = [line for line in lines if line.startswith("modelbuild: error:")]
    assert len(errors) == 1, run.err
    return errors[0]


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    """A copy of the tiny example model, plus an executable script and a data directory
    (a tar layer), so modes and archives are round-tripped too."""
    dest = tmp_path / "model"
    shutil.copytree(EXAMPLE_FILES, dest)
    (dest / "run.sh").write_text("#!/bin/sh\necho tiny\n")
    (dest / "run.sh").chmod(0o755)
    write_model_dir(dest / "data", {"train.jsonl": '{"text": "a"}\n', "sub/eval.jsonl": '{"text": "b"}\n'})
    for p in dest.rglob("*"):
        age(p)
    return dest


def _build(cli, ctx: Path, tag: str, *extra: str, text: str | None = None, env: dict | None = None) -> dict:
    (ctx / "Modelfile").write_text(text or (HEAD + "DOC LICENSE\nCODE run.sh\nDATASET data\n"))
    run = _ok(cli("build", "-f", "Modelfile", "-t", tag, "--json", "--progress", "plain", *extra, cwd=ctx, env=env),
              "build")
    return run.json()


def _skopeo_raw(ref: str) -> bytes:
    return subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                          capture_output=True, check=True).stdout


def _mb(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelbuild", *args]


# A small launcher runs the command with a real fork() and reports the child's own peak RSS
# from os.wait4. Spawned straight from pytest (vfork + exec), the child would inherit
# pytest's peak RSS in ru_maxrss; a fork of a small process starts from that process's size.
_LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_pid, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}, fh)
"""


def _run_measured(cmd: list[str], env: dict, report: Path) -> tuple[int, float, float, str]:
    """Run *cmd*; (exit code, seconds, peak RSS in MB of the process itself, stderr)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, str(report), *cmd], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=900, check=False)
    seconds = time.perf_counter() - t0
    measured = json.loads(report.read_text())
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return measured["rc"], seconds, measured["maxrss_kib"] * 1024 / 1e6, proc.stderr.decode(errors="replace")


# -- build --push, pull, skopeo ------------------------------------------------------------
@needs_skopeo
def test_build_push_then_pull_round_trips_the_example(registry, cli, home, tmp_path):
    ref = f"{registry.host}/cli/tiny-llama:0.1"
    run = _ok(cli("build", "-f", str(EXAMPLE_MODELFILE), "-t", ref, "--push", "--plain-http", "--json",
                  "--progress", "plain"), "build --push")
    built = run.json()
    (pushed,) = built["pushed"]
    assert pushed["digest"] == built["digest"] and pushed["reference"] == ref
    assert pushed["uploaded"] == pushed["blobs"] == 8  # config + 7 files
    assert "push model.safetensors" in run.err  # one progress line per blob
    # The registry serves the store's exact bytes (an independent client says so).
    assert _skopeo_raw(ref) == _blob(home, built["digest"])
    # No blob was written to the store twice: what the store has is exactly what a build writes.
    assert not (home / "store" / "partial").exists()

    fresh = tmp_path / "fresh-home"
    run = _ok(cli("pull", ref, "--plain-http", "--json", env={"MODELBUILD_HOME": str(fresh)}), "pull")
    got = run.json()
    assert got["digest"] == built["digest"] and got["tag"] == ref and got["downloaded"] == 8
    assert _blob(fresh, built["digest"]) == _blob(home, built["digest"])
    listed = _ok(cli("ls", "--json", env={"MODELBUILD_HOME": str(fresh)})).out
    assert ref in listed
    # The pulled artifact is a normal local one.
    shown = _ok(cli("inspect", ref, "--json", env={"MODELBUILD_HOME": str(fresh)})).json()
    assert shown["digest"] == built["digest"] and shown["config"] == built["config"]
    out = tmp_path / "from-store"
    _ok(cli("tag", ref, "local-copy:1", env={"MODELBUILD_HOME": str(fresh)}))
    _ok(cli("pull", "local-copy:1", "-o", str(out), env={"MODELBUILD_HOME": str(fresh)}), "pull -o of a local tag")
    # A second pull finds every blob in the store and downloads nothing.
    again = _ok(cli("pull", ref, "--plain-http", "--json", env={"MODELBUILD_HOME": str(fresh)})).json()
    assert again["downloaded"] == 0 and again["digest"] == built["digest"]

    direct = tmp_path / "direct"
    got = _ok(cli("pull", ref, "--plain-http", "-o", str(direct), "--json"), "pull -o").json()
    assert got["digest"] == built["digest"]
    assert _tree(direct) == _tree(EXAMPLE_FILES) == _tree(out)
    assert set(_modes(direct).values()) == {0o644}


def test_pull_o_restores_modes_and_unpacks_tar_layers_and_skips_what_is_there(registry, proxy, cli, home, ctx,
                                                                             tmp_path):
    ref = f"{registry.host}/cli/modes:1"
    built = _build(cli, ctx, ref, "--push", "--plain-http")
    files = {p: d for p, d in _tree(ctx).items() if p != "Modelfile"}
    out = tmp_path / "out"
    via_proxy = f"{proxy.host}/cli/modes:1"
    got = _ok(cli("pull", via_proxy, "--plain-http", "-o", str(out), "--json")).json()
    assert got["digest"] == built["digest"]
    assert _tree(out) == files
    modes = _modes(out)
    assert modes["run.sh"] == 0o755 and modes["config.json"] == 0o644
    assert sorted(got["files"]) == sorted(["LICENSE", "README.md", "config.json", "data", "generation_config.json",
                                           "model.safetensors", "run.sh", "tokenizer.json", "tokenizer_config.json"])
    assert not [p for p in out.rglob("*") if p.name.endswith(".partial") or p.name.startswith(".modelbuild")]
    # Pulled again into the same directory: every raw file already has its bytes and is not
    # fetched; only the tar layer is (nothing on disk tells whether its unpacking is whole).
    proxy.reset()
    again = _ok(cli("pull", via_proxy, "--plain-http", "-o", str(out), "--json")).json()
    tar = next(layer for layer in built["layers"] if layer["mediaType"].endswith(".tar"))
    config_size = _ok(cli("inspect", ref, "--json")).json()["manifest"]["config"]["size"]
    # the tar layer, and the config whose diffIds its unpacked content is checked against
    assert again["downloaded"] == 1 and proxy.bytes_down("/blobs/") == tar["size"] + config_size
    assert _tree(out) == files


def test_layer_formats_tar_zstd_round_trip(registry, cli, ctx, tmp_path):
    ref = f"{registry.host}/cli/zstd:1"
    _build(cli, ctx, ref, "--push", "--plain-http", "--layer-format", "tar+zstd")
    out = tmp_path / "out"
    _ok(cli("pull", ref, "--plain-http", "-o", str(out)))
    assert _tree(out) == {p: d for p, d in _tree(ctx).items() if p != "Modelfile"}
    assert _modes(out)["run.sh"] == 0o755


@needs_skopeo
def test_multi_platform_index_push_pull_and_platform_choice(registry, cli, home, ctx, tmp_path):
    ref = f"{registry.host}/cli/multi:1"
    text = HEAD + "\n" + "\n".join(STAGES[k] for k in ("cuda", "cpu", "rocm"))
    built = _build(cli, ctx, ref, "--push", "--plain-http", text=text)
    index_bytes = _blob(home, built["digest"])
    index = json.loads(index_bytes)
    assert index["mediaType"] == mt.OCI_INDEX and len(index["manifests"]) == 3
    assert _skopeo_raw(ref) == index_bytes
    for entry in index["manifests"]:
        assert _skopeo_raw(f"{registry.host}/cli/multi@{entry['digest']}") == _blob(home, entry["digest"])
    # The per-stage tags went too.
    assert sorted(p["reference"] for p in built["pushed"]) == [ref, f"{ref}-cpu", f"{ref}-cuda", f"{ref}-rocm"]
    assert sum(p["uploaded"] for p in built["pushed"][1:]) == 0  # blobs went once, with the first tag

    fresh = tmp_path / "fresh"
    got = _ok(cli("pull", ref, "--plain-http", "--json", env={"MODELBUILD_HOME": str(fresh)})).json()
    assert got["digest"] == built["digest"] and got["stage"] is None
    for entry in index["manifests"]:  # every variant came along
        assert _blob(fresh, entry["digest"]) == _blob(home, entry["digest"])
        for rel, data in _layers_by_path(home, entry["digest"]).items():
            assert _layers_by_path(fresh, entry["digest"])[rel] == data

    by_stage = {e["annotations"]["dev.modelbuild.platform.stage"]: e["digest"] for e in index["manifests"]}
    for stage in ("cpu", "cuda"):
        out = tmp_path / f"out-{stage}"
        got = _ok(cli("pull", ref, "--plain-http", "--platform", stage, "-o", str(out), "--json")).json()
        assert got["stage"] == stage and got["digest"] == by_stage[stage] and got["index"] == built["digest"]
        assert _tree(out) == _layers_by_path(home, by_stage[stage])
    assert (tmp_path / "out-cuda" / "model.safetensors.index.json").exists()
    assert not (tmp_path / "out-cuda" / "model.safetensors").exists()
    auto = _ok(cli("pull", ref, "--plain-http", "-o", str(tmp_path / "auto"), "--json")).json()
    assert auto["stage"] == "cpu"  # this machine has no GPU

    # Into the store with --platform: only that variant, tagged locally.
    one = tmp_path / "one"
    got = _ok(cli("pull", ref, "--plain-http", "--platform", "cuda", "--json", env={"MODELBUILD_HOME": str(one)})).json()
    assert got["digest"] == by_stage["cuda"] and got["stage"] == "cuda"
    assert not (one / "store" / "blobs" / "sha256" / built["digest"][7:]).exists()
    inspect = _ok(cli("inspect", ref, "--json", env={"MODELBUILD_HOME": str(one)})).json()
    assert inspect["digest"] == by_stage["cuda"]


# -- counting bytes: HEAD-skip, mount ---------------------------------------------------------
def test_second_push_uploads_no_blob_and_another_repo_mounts(proxy, cli, home, ctx):
    built = _build(cli, ctx, "local/model:1")
    total = sum(layer["size"] for layer in built["layers"]) + len(_blob(home, json.loads(
        _blob(home, built["digest"]))["config"]["digest"]))
    ref = f"{proxy.host}/count/model:1"
    first = _ok(cli("push", "local/model:1", ref, "--plain-http", "--json")).json()
    assert first["digest"] == built["digest"] and first["uploaded"] == first["blobs"]
    assert proxy.bytes_up("/blobs/") == total + first["referrerBytes"]  # and the runtime description

    proxy.reset()
    second = _ok(cli("push", "local/model:1", ref, "--plain-http", "--json")).json()
    assert second["uploaded"] == 0 and second["bytes"] == 0
    assert proxy.bytes_up("/blobs/") == 0 and proxy.count("POST") == 0 and proxy.count("PATCH") == 0
    assert proxy.count("HEAD", "/blobs/") == second["blobs"]

    # build --push to two repositories of one registry: the second mounts, sends no blob.
    proxy.reset()
    a, b = f"{proxy.host}/count/a-{os.getpid()}:1", f"{proxy.host}/count/b-{os.getpid()}:1"
    (ctx / "extra.md").write_text(f"new in this build {time.time()}\n")
    age(ctx / "extra.md")
    built2 = _build(cli, ctx, a, "-t", b, "--push", "--plain-http", text=HEAD + "DOC LICENSE\nCODE run.sh\nDATASET data\nDOC extra.md\n")
    pa, pb = built2["pushed"]
    assert pa["uploaded"] == pa["blobs"] and pb["uploaded"] == 0  # b mounted every blob from a
    assert any("mount=" in q and "from=count%2Fa-" in q for _, q in proxy.queries)
    sizes = sum(layer["size"] for layer in built2["layers"]) + len(_blob(home, json.loads(
        _blob(home, built2["digest"]))["config"]["digest"]))
    assert proxy.bytes_up("/blobs/") == sizes + pa["referrerBytes"]  # each blob crossed the network once


def test_tag_then_push_and_clear_errors(registry, cli, home, ctx):
    built = _build(cli, ctx, "local/tagme:1")
    ref = f"{registry.host}/cli/tagged:2"
    _ok(cli("tag", "local/tagme:1", ref))
    assert _ok(cli("push", ref, "--plain-http", "--json")).json()["digest"] == built["digest"]
    with Registry(registry.host, plain_http=True) as reg:
        assert reg.get_manifest("cli/tagged", "2")[2] == built["digest"]

    run = cli("push", "local/tagme:1")
    assert run.rc == 2 and "names no registry" in _one_error_line(run)
    run = cli("push", f"{registry.host}/cli/nothing:1", "--plain-http")
    assert run.rc == 2 and "no such model" in _one_error_line(run)
    run = cli("pull", f"{registry.host}/cli/nothing:1", "--plain-http")
    assert run.rc == 1 and "MANIFEST_UNKNOWN" in _one_error_line(run)
    run = cli("build", "-f", "Modelfile", "-t", "local/x:1", "--push", cwd=ctx)
    assert run.rc == 2 and "--push needs a tag that names a registry" in _one_error_line(run)
    run = cli("tag", "local/none:1", "x:1")
    assert run.rc == 2 and "no such model" in _one_error_line(run)


def test_tls_registry_needs_insecure(tls_registry, cli, ctx):
    _build(cli, ctx, "local/tls:1")
    ref = f"{tls_registry.host}/cli/tls:1"
    run = cli("push", "local/tls:1", ref)
    line = _one_error_line(run)
    assert run.rc == 1 and "TLS error" in line and "insecure" in line
    _ok(cli("push", "local/tls:1", ref, "--insecure"))


# -- credentials ---------------------------------------------------------------------------
def test_login_push_pull_logout_and_the_password_never_shows(auth_registry, cli, ctx, helpers, empty_docker_config,
                                                              tmp_path):
    host = auth_registry.host
    password = helpers.password
    secrets = [password, base64.b64encode(f"{helpers.user}:{password}".encode()).decode()]
    runs = []
    _build(cli, ctx, "local/private:1")
    ref = f"{host}/private/model:1"

    run = cli("push", "local/private:1", ref, "--plain-http")
    runs.append(run)
    line = _one_error_line(run)
    assert run.rc in (1, 2) and host in line and "modelbuild login" in line

    wrong = "Wr0ng-Password-zz"
    run = cli("login", host, "-u", helpers.user, "--password-stdin", "--plain-http", input=f"{wrong}\n".encode())
    runs.append(run)
    line = _one_error_line(run)
    assert run.rc == 1 and "refused" in line and wrong not in run.out + run.err
    assert not (empty_docker_config / "config.json").exists()

    run = _ok(cli("login", host, "-u", helpers.user, "--password-stdin", "--plain-http", input=f"{password}\n".encode()))
    runs.append(run)
    config_path = empty_docker_config / "config.json"
    config = json.loads(config_path.read_text())
    assert base64.b64decode(config["auths"][host]["auth"]).decode() == f"{helpers.user}:{password}"
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    assert not [p for p in empty_docker_config.iterdir() if p.name != "config.json"]  # no temp file left

    runs.append(_ok(cli("push", "local/private:1", ref, "--plain-http")))
    out = tmp_path / "out"
    runs.append(_ok(cli("pull", ref, "--plain-http", "-o", str(out))))
    assert (out / "run.sh").read_bytes() == (ctx / "run.sh").read_bytes()
    runs.append(_ok(cli("pull", ref, "--plain-http", env={"MODELBUILD_HOME": str(tmp_path / "h2")})))

    run = _ok(cli("logout", host))
    runs.append(run)
    assert host not in json.loads(config_path.read_text()).get("auths", {})
    run = _ok(cli("logout", host))
    assert "Not logged in" in run.out
    run = cli("pull", ref, "--plain-http", "-o", str(tmp_path / "out2"))
    runs.append(run)
    assert run.rc in (1, 2) and "modelbuild login" in _one_error_line(run)

    # Nowhere but the credential store: not in any output, not in the registry's log, not in
    # the modelbuild home.
    seen = "".join(r.out + r.err for r in runs) + auth_registry.log.read_text(errors="replace")
    assert not any(s in seen for s in secrets)
    for p in (tmp_path / "mbhome").rglob("*"):
        if p.is_file() and p.stat().st_size < 10 * MiB:
            assert not any(s.encode() in p.read_bytes() for s in secrets), p


def test_login_with_a_credential_helper_stores_nothing_in_config(auth_registry, cli, helpers, empty_docker_config,
                                                                 tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    vault = tmp_path / "vault.json"
    helper = bindir / "docker-credential-mbvault"
    helper.write_text(f"""#!{sys.executable}
import json, sys
vault = {str(vault)!r}
try:
    data = json.load(open(vault))
except FileNotFoundError:
    data = {{}}
action = sys.argv[1]
if action == "store":
    entry = json.load(sys.stdin)
    data[entry["ServerURL"]] = [entry["Username"], entry["Secret"]]
elif action == "get":
    host = sys.stdin.read().strip()
    if host not in data:
        print("credentials not found in native keychain")
        sys.exit(1)
    print(json.dumps({{"ServerURL": host, "Username": data[host][0], "Secret": data[host][1]}}))
elif action == "erase":
    host = sys.stdin.read().strip()
    if host not in data:
        print("credentials not found in native keychain")
        sys.exit(1)
    del data[host]
json.dump(data, open(vault, "w"))
""")
    helper.chmod(0o755)
    config_path = empty_docker_config / "config.json"
    config_path.write_text(json.dumps({"credsStore": "mbvault"}))
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    env: dict[str, str] = {}
    host = auth_registry.host
    run = _ok(cli("login", host, "-u", helpers.user, "--password-stdin", "--plain-http",
                  input=helpers.password.encode(), env=env))
    assert "docker-credential-mbvault" in run.out and helpers.password not in run.out + run.err
    assert json.loads(vault.read_text())[host] == [helpers.user, helpers.password]
    assert helpers.password not in config_path.read_text()
    with Registry(host, plain_http=True) as reg:  # the client finds them through the helper
        assert reg.has_blob("private/helper", _sha(b"nothing")) is False
    _ok(cli("logout", host, env=env))
    assert host not in json.loads(vault.read_text())


# -- a bad network -------------------------------------------------------------------------
def test_push_and_pull_through_ten_percent_faults(registry, proxy, cli, home, ctx, tmp_path):
    """10% of requests fail (dropped connections, truncated bodies, 500s, 429s): push and
    pull both complete, with the same digest and the same bytes."""
    built = _build(cli, ctx, "local/faults:1")
    proxy.rng.seed(7)
    proxy.set_faults(drop=0.025, truncate=0.025, **{"500": 0.025, "429": 0.025})
    ref = f"{proxy.host}/faults/cli:1"
    _ok(cli("push", "local/faults:1", ref, "--plain-http"), "push through faults")
    out = tmp_path / "out"
    got = _ok(cli("pull", ref, "--plain-http", "-o", str(out), "--json"), "pull -o through faults").json()
    assert got["digest"] == built["digest"]
    assert _tree(out) == {p: d for p, d in _tree(ctx).items() if p != "Modelfile"}
    fresh = tmp_path / "fresh"
    got = _ok(cli("pull", ref, "--plain-http", "--json", env={"MODELBUILD_HOME": str(fresh)}), "pull").json()
    assert got["digest"] == built["digest"]
    for digest in [built["digest"], *(layer["digest"] for layer in built["layers"])]:
        assert _sha(_blob(fresh, digest)) == digest
    assert sum(proxy.faults.values()) > 0, proxy.faults


@pytest.mark.slow
def test_rounds_through_a_very_bad_network_end_well_or_clearly(registry, proxy, cli, home, ctx, tmp_path):
    """10% of requests failing in *each* way (40% in all): every round ends with identical
    bytes or a one-line error after the retry budget; never a corrupt file."""
    built = _build(cli, ctx, "local/bad:1")
    want = {p: d for p, d in _tree(ctx).items() if p != "Modelfile"}
    proxy.rng.seed(11)
    proxy.set_faults(drop=0.1, truncate=0.1, **{"500": 0.1, "429": 0.1})
    ok = 0
    for i in range(5):
        ref = f"{proxy.host}/faults/bad{i}:1"
        out = tmp_path / f"out{i}"
        push = cli("push", "local/bad:1", ref, "--plain-http", "-j", "2")
        if push.rc != 0:
            assert push.rc == 1 and proxy.host in _one_error_line(push)
            continue
        pull = cli("pull", ref, "--plain-http", "-o", str(out), "--json", "-j", "2")
        if pull.rc != 0:
            assert pull.rc == 1 and proxy.host in _one_error_line(pull)
        else:
            assert pull.json()["digest"] == built["digest"]
            ok += 1
        for rel, data in _tree(out).items() if out.exists() else []:
            if not rel.startswith(".modelbuild-partial/"):  # a failed pull keeps what it can resume
                assert data == want[rel], rel
    print(f"{ok}/5 rounds complete; faults: {dict(proxy.faults)}")
    assert ok >= 3


@pytest.mark.parametrize("into", ["store", "dir"])
def test_pull_killed_halfway_resumes_with_the_remaining_half(registry, proxy, cli, home, tmp_path, into):
    size = 48 * MiB
    ctx = write_model_dir(tmp_path / "big", {"w.safetensors": safetensors_blob(os.urandom(size)), "config.json": "{}"})
    (ctx / "Modelfile").write_text("NAME big\nCONFIG config.json\nMODEL w.safetensors\n")
    ref = f"{registry.host}/resume/{into}:1"
    built = _ok(cli("build", "-f", "Modelfile", "-t", ref, "--push", "--plain-http", "--json", cwd=ctx)).json()
    weight = next(layer for layer in built["layers"] if layer["annotations"][mt.ANNOTATION_FILEPATH] == "w.safetensors")
    total = weight["size"]

    fresh, out = tmp_path / "fresh", tmp_path / "out"
    via_proxy = f"{proxy.host}/resume/{into}:1"
    args = ["pull", via_proxy, "--plain-http", "--progress", "quiet"] + (["-o", str(out)] if into == "dir" else [])
    partial = (fresh / "store" / "partial" / weight["digest"][7:]) if into == "store" else out / ".modelbuild-partial" / weight["digest"][7:]
    env = {**os.environ, "MODELBUILD_HOME": str(fresh), "PYTHONPATH": str(REPO)}
    proxy.reset()
    proxy.throttle = 16 * MiB  # bytes per second: ~3 s for the weights
    proc = subprocess.Popen(_mb(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size >= total // 2):
        assert proc.poll() is None, "the pull ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    have = partial.stat().st_size
    assert 0.4 * total < have < 0.9 * total

    proxy.throttle = None
    proxy.wait_idle()
    proxy.reset()
    run = subprocess.run(_mb(*args, "--json"), env=env, capture_output=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr.decode()
    assert json.loads(run.stdout)["digest"] == built["digest"]
    assert not partial.exists()
    # Only the missing part of the weights crossed the network again (plus, at most, the
    # small blobs the killed pull had not finished).
    small = sum(layer["size"] for layer in built["layers"]) - total + 4096
    got = proxy.bytes_down("/blobs/")
    assert total - have <= got <= total - have + small, (got, total - have)
    data = (out / "w.safetensors").read_bytes() if into == "dir" else _blob(fresh, weight["digest"])
    assert _sha(data) == weight["digest"]
    print(f"killed at {have / total:.0%}; resumed with {got / MiB:.1f} MiB")


# -- legacy and hostile artifacts ---------------------------------------------------------------
def _legacy(doc: dict, modes: dict[str, int]) -> dict:
    """*doc* as modctl wrote it before model-spec moved to the CNCF: vnd.cnai media types,
    org.cnai annotations, no image title."""
    legacy = json.loads(json.dumps(doc).replace("application/vnd.cncf.model.", "application/vnd.cnai.model.")
                        .replace("org.cncf.model.", "org.cnai.model."))
    for layer in legacy["layers"]:
        ann = layer["annotations"]
        ann.pop(mt.ANNOTATION_TITLE, None)
        rel = ann[mt.LEGACY_ANNOTATION_FILEPATH]
        if rel in modes:
            meta = json.loads(ann["org.cnai.model.file.metadata+json"])
            meta["mode"] = modes[rel]
            ann["org.cnai.model.file.metadata+json"] = json.dumps(meta, separators=(",", ":"))
    return legacy


def test_legacy_cnai_artifact_pulls_and_extracts(registry, cli, home, ctx, tmp_path):
    built = _build(cli, ctx, "local/legacy:1")
    legacy = _legacy(json.loads(_blob(home, built["digest"])), {"model.safetensors": 0o600, "README.md": 0o640})
    assert legacy["artifactType"] == mt.LEGACY_MODEL_ARTIFACT and legacy["config"]["mediaType"] == mt.LEGACY_MODEL_CONFIG
    data = json.dumps(legacy, indent=1).encode()
    with Registry(registry.host, plain_http=True) as reg:
        for d in [legacy["config"], *legacy["layers"]]:
            reg.push_blob("legacy/model", d["digest"], d["size"], home / "store" / "blobs" / "sha256" / d["digest"][7:])
        digest = reg.put_manifest("legacy/model", "1", data, mt.OCI_MANIFEST)
    ref = f"{registry.host}/legacy/model:1"
    out = tmp_path / "out"
    got = _ok(cli("pull", ref, "--plain-http", "-o", str(out), "--json")).json()
    assert got["digest"] == digest
    assert _tree(out) == {p: d for p, d in _tree(ctx).items() if p != "Modelfile"}
    modes = _modes(out)
    assert modes["model.safetensors"] == 0o600 and modes["README.md"] == 0o640 and modes["run.sh"] == 0o755

    fresh = tmp_path / "fresh"
    env = {"MODELBUILD_HOME": str(fresh)}
    assert _ok(cli("pull", ref, "--plain-http", "--json", env=env)).json()["digest"] == digest
    shown = _ok(cli("inspect", ref, env=env)).out
    assert "model.safetensors" in shown and mt.LEGACY_MODEL_ARTIFACT in shown
    out2 = tmp_path / "out2"
    _ok(cli("tag", ref, "legacy-copy:1", env=env))
    _ok(cli("pull", "legacy-copy:1", "-o", str(out2), env=env))  # from the local store, same files
    assert _tree(out2) == _tree(out) and _modes(out2)["model.safetensors"] == 0o600


@pytest.mark.parametrize("path", ["../escape.txt", "/tmp/abs-escape.txt", "a/../../escape.txt"])
def test_a_layer_path_out_of_the_directory_is_refused(registry, cli, tmp_path, path):
    payload, config = b"should never be written", b"{}"
    manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": mt.MODEL_ARTIFACT,
                "config": {"mediaType": mt.MODEL_CONFIG, "digest": _sha(config), "size": len(config)},
                "layers": [{"mediaType": "application/vnd.cncf.model.doc.v1.raw", "digest": _sha(payload),
                            "size": len(payload), "annotations": {mt.ANNOTATION_FILEPATH: path}}]}
    data = json.dumps(manifest).encode()
    with Registry(registry.host, plain_http=True) as reg:
        for blob in (payload, config):
            reg.push_blob("hostile/model", _sha(blob), len(blob), lambda b=blob: __import__("io").BytesIO(b))
        reg.put_manifest("hostile/model", "1", data, mt.OCI_MANIFEST)
    out = tmp_path / "deep" / "out"
    run = cli("pull", f"{registry.host}/hostile/model:1", "--plain-http", "-o", str(out))
    assert run.rc == 1 and "refusing" in _one_error_line(run)
    assert not (tmp_path / "deep" / "escape.txt").exists() and not Path("/tmp/abs-escape.txt").exists()
    assert not list(out.rglob("*")) if out.exists() else True


# -- a big model ------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_gigabyte_round_trips_every_byte_in_little_memory(own_registry, cli, home, tmp_path):
    """At most three copies of the gigabyte on disk at once (the store, the registry, and one
    pulled copy), all gone with the test: a CI machine's disk is not ours to fill."""
    registry = own_registry
    size = 1 << 30
    ctx = tmp_path / "big"
    ctx.mkdir()
    weights = ctx / "model.safetensors"
    # Made in a child, so that this process (and so the launcher's fork) stays small.
    make = ("import sys, numpy as np; sys.path.insert(0, sys.argv[3]); from support import safetensors_blob; "
            "open(sys.argv[1], 'wb').write(safetensors_blob(np.random.default_rng(6).bytes(int(sys.argv[2]))))")
    subprocess.run([sys.executable, "-c", make, str(weights), str(size), str(REPO / "tests")], check=True, timeout=300)
    want = hashlib.sha256()
    with open(weights, "rb") as fh:
        while chunk := fh.read(8 * MiB):
            want.update(chunk)
    (ctx / "config.json").write_text("{}")
    for p in ctx.iterdir():
        age(p)
    (ctx / "Modelfile").write_text("NAME big\nCONFIG config.json\nMODEL model.safetensors\n")
    built = _ok(cli("build", "-f", "Modelfile", "-t", "local/big:1", "--json", "--progress", "quiet", cwd=ctx,
                    timeout=900)).json()
    weights.unlink()  # the store has its copy
    ref = f"{registry.host}/big/model:1"
    env = {**os.environ, "MODELBUILD_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("MODELBUILD_DEBUG", None)
    rc, push_s, push_mb, err = _run_measured(_mb("push", "local/big:1", ref, "--plain-http"), env,
                                                 tmp_path / "push.json")
    assert rc == 0, err
    weight = next(layer for layer in built["layers"] if layer["annotations"][mt.ANNOTATION_FILEPATH] == "model.safetensors")
    assert weight["digest"] == "sha256:" + want.hexdigest()

    def check(path: Path) -> None:
        got = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(8 * MiB):
                got.update(chunk)
        assert "sha256:" + got.hexdigest() == weight["digest"], path

    fresh = dict(env, MODELBUILD_HOME=str(tmp_path / "fresh"))
    rc, pull_s, pull_mb, err = _run_measured(_mb("pull", ref, "--plain-http"), fresh, tmp_path / "pull.json")
    assert rc == 0, err
    check(tmp_path / "fresh" / "store" / "blobs" / "sha256" / weight["digest"][7:])
    shutil.rmtree(tmp_path / "fresh")
    out = tmp_path / "out"
    rc, dir_s, dir_mb, err = _run_measured(_mb("pull", ref, "--plain-http", "-o", str(out)), env,
                                             tmp_path / "pull-o.json")
    assert rc == 0, err
    check(out / "model.safetensors")
    print(f"1 GiB: push {push_s:.1f}s / {push_mb:.0f} MB RSS, pull {pull_s:.1f}s / {pull_mb:.0f} MB, "
          f"pull -o {dir_s:.1f}s / {dir_mb:.0f} MB")
    assert max(push_mb, pull_mb, dir_mb) <= 200, (push_mb, pull_mb, dir_mb)
