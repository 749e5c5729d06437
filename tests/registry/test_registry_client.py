"""The registry client against a real registry (Debian's docker-registry), through a proxy
that counts bytes and injects faults. What is asserted is what a user relies on: bytes
round-trip identically, nothing is sent twice that need not be, interrupted transfers
resume, a bad network ends in a clear error and never in a corrupt file, and secrets never
show."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from faultproxy import FaultProxy

from modelbuild.errors import EXIT_BUILD_FAILED, UsageError
from modelbuild.oci import mediatypes as mt
from modelbuild.oci.auth import (
    Auth,
    Credentials,
    credentials_from_docker_config,
    parse_challenge,
)
from modelbuild.oci.registry import (
    DigestMismatchError,
    RegistryAuthError,
    RegistryError,
    split_reference,
    transfer_all,
)
from modelbuild.store import Store

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest_bytes(config: bytes, layers: list[tuple[str, int]]) -> bytes:
    """A manifest serialised on purpose unlike any canonical form (indent 3, odd key order,
    trailing whitespace): the registry must keep these exact bytes."""
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": mt.MODEL_ARTIFACT,
        "config": {"mediaType": mt.MODEL_CONFIG, "digest": _sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.cncf.model.weight.v1.raw", "digest": d, "size": s,
                    "annotations": {mt.ANNOTATION_FILEPATH: f"w{i}.bin"}} for i, (d, s) in enumerate(layers)],
    }
    return json.dumps(doc, indent=3).encode() + b"\n  \n"


# -- blobs ------------------------------------------------------------------------------
@pytest.mark.slow
def test_large_blob_round_trips_and_second_push_sends_nothing(proxy, client, blob_file, helpers, tmp_path):
    size = 105 * MiB + 12345  # not a multiple of the chunk size
    path, digest = blob_file(size)
    reg = client(proxy.host, chunk_size=32 * MiB)
    tracemalloc.start()
    t0 = time.monotonic()
    assert reg.push_blob("big/model", digest, size, path) is True
    push_s = time.monotonic() - t0
    push_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    assert proxy.bytes_up("/blobs/uploads/") == size  # streamed once, in 4 PATCHes
    assert proxy.count("PATCH") == 4 and proxy.count("PUT") == 1

    proxy.reset()
    assert reg.push_blob("big/model", digest, size, path) is False
    assert proxy.bytes_up() == 0 and proxy.count("HEAD") == 1 and sum(proxy.requests.values()) == 1

    out = tmp_path / "out.bin"
    t0 = time.monotonic()
    assert reg.pull_blob("big/model", digest, size, out) == out
    pull_s = time.monotonic() - t0
    pull_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # Streamed both ways: never more than a few read buffers in memory, for any blob size.
    assert push_peak < 8 * MiB and pull_peak < 8 * MiB, (push_peak, pull_peak)
    assert helpers.sha256_file(out) == digest and out.stat().st_size == size
    assert not (tmp_path / "out.bin.partial").exists()
    print(f"105 MiB push {push_s:.2f}s, pull {pull_s:.2f}s; peak Python memory "
          f"{push_peak / MiB:.1f} / {pull_peak / MiB:.1f} MiB")


def test_small_blob_is_one_put(proxy, client, blob_file, helpers, tmp_path):
    path, digest = blob_file(3 * MiB)
    reg = client(proxy.host)
    assert reg.push_blob("small/one", digest, 3 * MiB, path)
    assert proxy.count("PATCH") == 0 and proxy.count("PUT") == 1 and proxy.bytes_up() == 3 * MiB
    reg.pull_blob("small/one", digest, 3 * MiB, tmp_path / "o")
    assert helpers.sha256_file(tmp_path / "o") == digest


def test_push_from_an_opener_and_empty_blob(registry, client, tmp_path):
    reg = client(registry.host)
    empty = _sha(b"")
    assert reg.push_blob("small/empty", empty, 0, lambda: open(os.devnull, "rb"))
    reg.pull_blob("small/empty", empty, 0, tmp_path / "e")
    assert (tmp_path / "e").read_bytes() == b""


def test_bad_sources_are_clear_errors(registry, client, blob_file, tmp_path):
    reg = client(registry.host)
    path, digest = blob_file(1000)
    with pytest.raises(UsageError, match="1000 bytes, not the 999"):
        reg.push_blob("bad/src", digest, 999, path)
    with pytest.raises(RegistryError, match="cannot read the blob"):
        reg.push_blob("bad/src", digest, 1000, tmp_path / "missing")
    with pytest.raises(UsageError):
        reg.pull_blob("bad/src", "sha256:nothex", 1, tmp_path / "x")


def test_cross_repository_mount_sends_no_bytes(proxy, client, blob_file):
    path, digest = blob_file(2 * MiB + 7)
    reg = client(proxy.host)
    reg.push_blob("team/source", digest, 2 * MiB + 7, path)
    proxy.reset()
    assert reg.push_blob("team/target", digest, 2 * MiB + 7, path, mount_from="team/source") is False
    assert proxy.bytes_up() == 0
    assert any("mount=" in q and "from=team%2Fsource" in q for _, q in proxy.queries)
    assert reg.has_blob("team/target", digest)
    # A repository that does not have the blob: the registry opens an upload instead (202).
    _, other_digest = blob_file(1000)
    assert reg.mount_blob("team/target2", other_digest, "team/source") is False
    assert not reg.has_blob("team/target2", other_digest)


def test_chunked_upload_resumes_where_the_registry_got_to(proxy, client, blob_file, helpers, tmp_path):
    size = 5 * MiB + 3
    path, digest = blob_file(size)
    reg = client(proxy.host, chunk_size=1 * MiB, monolithic_max=1 * MiB)
    # HEAD, POST, PATCH ok, then: a 500 and a connection dropped before the registry saw it.
    proxy.script([None, None, None, "500", None, "drop_before"])
    pushed: list[int] = []
    assert reg.push_blob("resume/push", digest, size, path, progress=pushed.append)
    assert sum(pushed) == size  # progress counts each byte once
    assert proxy.faults["500"] == 1 and proxy.faults["drop_before"] == 1
    assert proxy.bytes_up("/blobs/uploads/") == size  # no byte sent twice
    assert proxy.count("GET", "/blobs/uploads/") == 2  # asked where to go on, twice
    reg.pull_blob("resume/push", digest, size, tmp_path / "o")
    assert helpers.sha256_file(tmp_path / "o") == digest


def test_upload_cut_mid_chunk_still_completes(proxy, client, blob_file, helpers, tmp_path):
    """distribution 2.x forgets an upload whose size no longer matches its state token: the
    client must notice and start the upload again, not push a wrong blob."""
    size = 4 * MiB
    path, digest = blob_file(size)
    reg = client(proxy.host, chunk_size=1 * MiB, monolithic_max=1 * MiB)
    proxy.script([None, None, None, "drop_mid"])
    assert reg.push_blob("resume/cut", digest, size, path)
    reg.pull_blob("resume/cut", digest, size, tmp_path / "o")
    assert helpers.sha256_file(tmp_path / "o") == digest


def test_pull_resumes_within_a_process_after_truncation(proxy, client, blob_file, helpers, tmp_path):
    size = 6 * MiB
    path, digest = blob_file(size)
    reg = client(proxy.host)
    reg.push_blob("resume/pull", digest, size, path)
    proxy.reset()
    proxy.script(["truncate", "truncate"])
    pulled: list[int] = []
    reg.pull_blob("resume/pull", digest, size, tmp_path / "o", progress=pulled.append)
    assert sum(pulled) == size
    assert helpers.sha256_file(tmp_path / "o") == digest
    assert proxy.count("GET") == 3 and proxy.bytes_down("/blobs/") == size  # no byte twice


@pytest.mark.slow
def test_pull_killed_halfway_resumes_with_the_remaining_half(own_proxy, client, blob_file, helpers, tmp_path):
    proxy = own_proxy  # a registry of the test's own: the gigabyte leaves the disk with the test
    size = 1024 * MiB  # the 1 GB blob
    path, digest = blob_file(size)
    reg = client(proxy.host)
    reg.push_blob("resume/kill", digest, size, path)
    dest = tmp_path / "pulled"
    partial = tmp_path / "pulled.partial"
    script = ("import sys; from modelbuild.oci.registry import Registry; "
              "Registry(sys.argv[1], plain_http=True).pull_blob('resume/kill', sys.argv[2], int(sys.argv[3]), sys.argv[4])")
    proxy.reset()
    proxy.throttle = 400 * MiB  # bytes per second: 2.5 s for the whole blob
    proc = subprocess.Popen([sys.executable, "-c", script, proxy.host, digest, str(size), str(dest)],
                            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size >= size // 2):
        assert proc.poll() is None, "the pull ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not dest.exists()
    have = partial.stat().st_size
    assert 0.4 * size < have < 0.8 * size

    proxy.throttle = None
    proxy.wait_idle()  # the proxy may still be writing to the dead pull's socket
    proxy.reset()
    reg.pull_blob("resume/kill", digest, size, dest)
    assert helpers.sha256_file(dest) == digest and not partial.exists()
    # Only the missing part crossed the network again.
    assert proxy.bytes_down("/blobs/") == size - have
    print(f"killed at {have / size:.0%}; resumed with {(size - have) / MiB:.1f} MiB")


def test_corrupt_download_is_an_error_and_leaves_nothing(proxy, client, blob_file, tmp_path):
    size = 2 * MiB
    path, digest = blob_file(size)
    reg = client(proxy.host)
    reg.push_blob("corrupt/x", digest, size, path)
    dest = tmp_path / digest.split(":")[1]
    proxy.script(["corrupt"])
    with pytest.raises(DigestMismatchError) as info:
        reg.pull_blob("corrupt/x", digest, size, dest)
    assert "corrupt/x" in str(info.value) and proxy.host in str(info.value)
    assert not dest.exists() and not Path(str(dest) + ".partial").exists()
    # Into the store: the writer is aborted, no blob, no temp file.
    store = Store(tmp_path / "store").ensure()
    proxy.script(["corrupt"])
    with pytest.raises(DigestMismatchError):
        reg.pull_blob("corrupt/x", digest, size, store.writer())
    assert not store.has_blob(digest) and list(store.ingest_dir.iterdir()) == []
    reg.pull_blob("corrupt/x", digest, size, store.writer())
    assert store.has_blob(digest) and store.verify_blob(digest)


def test_corrupt_partial_file_is_redownloaded(proxy, client, blob_file, helpers, tmp_path):
    size = 3 * MiB
    path, digest = blob_file(size)
    reg = client(proxy.host)
    reg.push_blob("corrupt/partial", digest, size, path)
    dest = tmp_path / "d"
    Path(str(dest) + ".partial").write_bytes(b"\0" * MiB)  # garbage a crash might leave
    reg.pull_blob("corrupt/partial", digest, size, dest, mode=0o444)
    assert helpers.sha256_file(dest) == digest and dest.stat().st_mode & 0o777 == 0o444


# -- manifests --------------------------------------------------------------------------
def test_manifest_and_index_keep_our_exact_bytes(proxy, client, blob_file):
    reg = client(proxy.host)
    config = b'{"descriptor": {"name": "m"}, "modelfs": {"type": "layers", "diffIds": []}}'
    reg.push_blob("mf/model", _sha(config), len(config), lambda: __import__("io").BytesIO(config))
    path, layer = blob_file(1000)
    reg.push_blob("mf/model", layer, 1000, path)
    manifest = _manifest_bytes(config, [(layer, 1000)])
    assert json.loads(manifest)  # valid JSON, yet not what json.dumps would give by default

    proxy.reset()
    digest = reg.put_manifest("mf/model", "v1", manifest, mt.OCI_MANIFEST)
    assert digest == _sha(manifest)
    assert proxy.bytes_up("/manifests/") == len(manifest)
    assert reg.head_manifest("mf/model", "v1")[0] == digest
    data, media_type, got = reg.get_manifest("mf/model", "v1")
    assert (data, media_type, got) == (manifest, mt.OCI_MANIFEST, digest)
    assert reg.get_manifest("mf/model", digest)[0] == manifest

    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": digest, "size": len(manifest),
         "platform": {"architecture": "amd64", "os": "linux"},
         "annotations": {"nvidia.com/cuda.runtime.major": "12"}}]}, indent=1).encode() + b"\n"
    index_digest = reg.put_manifest("mf/model", "multi", index, mt.OCI_INDEX)
    assert index_digest == _sha(index)
    assert reg.get_manifest("mf/model", "multi") == (index, mt.OCI_INDEX, index_digest)
    assert reg.head_manifest("mf/model", "nope") is None


def test_index_with_a_missing_child_fails_clearly(registry, client):
    reg = client(registry.host)
    ghost = _sha(b"not pushed")
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": ghost, "size": 10}]}).encode()
    with pytest.raises(RegistryError) as info:
        reg.put_manifest("mf/broken", "x", index, mt.OCI_INDEX)
    text = info.value.render()
    assert "push manifest x" in text and "mf/broken" in text and registry.host in text
    assert info.value.exit_code == EXIT_BUILD_FAILED


def test_skopeo_reads_what_we_push_and_we_read_what_it_pushes(registry, client, tmp_path, skopeo):
    """An independent client (containers/image) agrees with ours, both ways."""
    reg = client(registry.host)
    config, layer = b'{"descriptor": {"name": "interop"}}', os.urandom(70_000)
    store = Store(tmp_path / "store").ensure()
    for blob in (config, layer):
        store.put_bytes(blob)
        reg.push_blob("interop/ours", _sha(blob), len(blob), store.blob_path(_sha(blob)))
    manifest = _manifest_bytes(config, [(_sha(layer), len(layer))])
    digest = reg.put_manifest("interop/ours", "v1", manifest, mt.OCI_MANIFEST)
    skopeo = ["skopeo", "--insecure-policy"]
    raw = subprocess.run([*skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/interop/ours:v1"],
                         capture_output=True, check=True).stdout
    assert raw == manifest
    layout = tmp_path / "layout"
    subprocess.run([*skopeo, "copy", "--src-tls-verify=false", f"docker://{registry.host}/interop/ours:v1",
                    f"oci:{layout}:v1"], capture_output=True, check=True)
    assert (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes() == manifest
    assert (layout / "blobs" / "sha256" / _sha(layer).split(":")[1]).read_bytes() == layer

    # The other way: skopeo pushes our local store (an OCI layout), we pull and verify.
    store.put_bytes(manifest)
    store.tag("v1", {"mediaType": mt.OCI_MANIFEST, "digest": digest, "size": len(manifest)})
    subprocess.run([*skopeo, "copy", "--dest-tls-verify=false", f"oci:{store.root}:v1",
                    f"docker://{registry.host}/interop/theirs:v1"], capture_output=True, check=True)
    assert reg.get_manifest("interop/theirs", "v1") == (manifest, mt.OCI_MANIFEST, digest)
    pulled = Store(tmp_path / "pulled").ensure()
    reg.pull_blob("interop/theirs", _sha(layer), len(layer), pulled.writer())
    assert pulled.read_blob(_sha(layer)) == layer


# -- faults -----------------------------------------------------------------------------
def test_twenty_rounds_through_a_bad_network(proxy, client, helpers, tmp_path):
    """10% each of dropped connections, 500s, 429s and truncated bodies: every round ends
    with identical bytes or a clear RegistryError, never with a corrupt file."""
    import random

    rng = random.Random(1234)
    proxy.rng.seed(99)
    proxy.set_faults(drop=0.1, truncate=0.1, **{"500": 0.1, "429": 0.1})
    reg = client(proxy.host, chunk_size=512 * 1024, monolithic_max=1 * MiB, retries=8, backoff=0.005)
    ok, failed = 0, []
    t0 = time.monotonic()
    for i in range(20):
        data = rng.randbytes(rng.randrange(100_000, 3 * MiB))
        src = tmp_path / f"src{i}"
        src.write_bytes(data)
        digest = _sha(data)
        dest = tmp_path / f"dst{i}"
        try:
            reg.push_blob(f"faults/r{i % 4}", digest, len(data), src)
            manifest = _manifest_bytes(b"{}", [(digest, len(data))])
            reg.push_blob(f"faults/r{i % 4}", _sha(b"{}"), 2, lambda: __import__("io").BytesIO(b"{}"))
            mdigest = reg.put_manifest(f"faults/r{i % 4}", f"t{i}", manifest, mt.OCI_MANIFEST)
            assert reg.get_manifest(f"faults/r{i % 4}", f"t{i}") == (manifest, mt.OCI_MANIFEST, mdigest)
            reg.pull_blob(f"faults/r{i % 4}", digest, len(data), dest)
            assert helpers.sha256_file(dest) == digest
            ok += 1
        except RegistryError as exc:
            failed.append(exc.render())
            assert "Traceback" not in exc.render() and proxy.host in exc.render()
            assert not dest.exists() or helpers.sha256_file(dest) == digest
    print(f"{ok}/20 rounds ok in {time.monotonic() - t0:.1f}s; faults injected: {dict(proxy.faults)}; failures: {failed}")
    assert all(proxy.faults[k] > 0 for k in ("drop", "truncate", "500", "429"))
    assert ok >= 18, failed


def test_retry_budget_ends_in_a_clear_error(proxy, client):
    proxy.set_faults(**{"500": 1.0})
    reg = client(proxy.host, retries=2)
    with pytest.raises(RegistryError) as info:
        reg.has_blob("budget/repo", _sha(b"x"))
    text = info.value.render()
    assert proxy.host in text and "budget/repo" in text and "check blob" in text and "after 3 attempts" in text
    assert proxy.count("HEAD") == 3


def test_429_waits_as_long_as_retry_after_says(proxy, client):
    proxy.retry_after = "1"
    proxy.script(["429"])
    reg = client(proxy.host)
    t0 = time.monotonic()
    assert reg.has_blob("slow/repo", _sha(b"y")) is False
    assert time.monotonic() - t0 >= 0.95 and proxy.faults["429"] == 1


def test_self_signed_tls_needs_insecure(tls_registry, client, blob_file, recwarn):
    with pytest.raises(RegistryError) as info:
        client(tls_registry.host, plain_http=False).has_blob("tls/x", _sha(b"z"))
    assert "TLS error" in info.value.render() and "insecure" in info.value.render()
    reg = client(tls_registry.host, plain_http=False, insecure=True)
    path, digest = blob_file(5000)
    assert reg.push_blob("tls/x", digest, 5000, path) and reg.has_blob("tls/x", digest)
    assert not [w for w in recwarn if "Unverified HTTPS" in str(w.message)]  # the user asked for it


def test_unreachable_registry_is_a_clear_error(client):
    reg = client("127.0.0.1:9", retries=1)  # the discard port: nothing listens
    with pytest.raises(RegistryError) as info:
        reg.has_blob("x/y", _sha(b"z"))
    assert "connection error" in info.value.render() and "127.0.0.1:9" in info.value.render()


def test_transfer_all_runs_in_parallel_and_raises_the_first_failure(registry, client, blob_file):
    reg = client(registry.host)
    blobs = [blob_file(200_000 + i) for i in range(6)]
    results = transfer_all([lambda p=p, d=d: reg.push_blob("par/x", d, os.path.getsize(p), p) for p, d in blobs], 3)
    assert results == [True] * 6 and all(reg.has_blob("par/x", d) for _, d in blobs)

    def boom() -> bool:
        raise RegistryError("boom")

    with pytest.raises(RegistryError, match="boom"):
        transfer_all([boom] + [lambda: time.sleep(0.05) or True] * 10, 2)


# -- authentication ---------------------------------------------------------------------
def test_basic_auth_with_credentials_from_docker_config(auth_registry, client, blob_file, helpers,
                                                        empty_docker_config, tmp_path):
    helpers.write_docker_config(empty_docker_config, auth_registry.host)
    reg = client(auth_registry.host)
    path, digest = blob_file(1234)
    assert reg.push_blob("private/model", digest, 1234, path)
    manifest = _manifest_bytes(b"{}", [(digest, 1234)])
    reg.push_blob("private/model", _sha(b"{}"), 2, lambda: __import__("io").BytesIO(b"{}"))
    assert reg.put_manifest("private/model", "v1", manifest, mt.OCI_MANIFEST) == _sha(manifest)
    reg.pull_blob("private/model", digest, 1234, tmp_path / "o")
    assert helpers.sha256_file(tmp_path / "o") == digest


def test_basic_auth_through_a_credential_helper(auth_registry, client, helpers, empty_docker_config, tmp_path,
                                                monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-mbtest"
    helper.write_text("#!/bin/sh\nread host\n"
                      f"printf '{{\"ServerURL\":\"%s\",\"Username\":\"{helpers.user}\",\"Secret\":\"{helpers.password}\"}}' \"$host\"\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    (empty_docker_config / "config.json").write_text(json.dumps({"credHelpers": {auth_registry.host: "mbtest"}}))
    reg = client(auth_registry.host)
    reg.ping()
    assert reg.has_blob("private/helper", _sha(b"none")) is False


def test_no_credentials_is_a_clear_error(auth_registry, client, blob_file, empty_docker_config):
    path, digest = blob_file(100)
    with pytest.raises(RegistryAuthError) as info:
        client(auth_registry.host).push_blob("private/none", digest, 100, path)
    text = info.value.render()
    assert auth_registry.host in text and "no credentials" in text and "docker login" in text
    assert info.value.exit_code == EXIT_BUILD_FAILED


def test_wrong_password_is_refused_and_never_shown(auth_registry, client, helpers, empty_docker_config):
    wrong = "WrongPassw0rd-xyz"
    helpers.write_docker_config(empty_docker_config, auth_registry.host, password=wrong)
    with pytest.raises(RegistryAuthError) as info:
        client(auth_registry.host).has_blob("private/wrong", _sha(b"q"))
    text = f"{info.value.render()} {info.value!r} {info.value.args}"
    assert "refused" in text and helpers.user in text
    assert wrong not in text and base64.b64encode(f"{helpers.user}:{wrong}".encode()).decode() not in text


def test_credentials_never_appear_in_errors(auth_registry, client, helpers):
    creds = Credentials(helpers.user, helpers.password)
    secrets = [helpers.password, base64.b64encode(f"{helpers.user}:{helpers.password}".encode()).decode()]
    assert helpers.password not in repr(creds)
    reg = client(auth_registry.host, auth=Auth(creds))
    with pytest.raises(RegistryError) as info:
        reg.get_manifest("private/missing", "nope")
    assert "MANIFEST_UNKNOWN" in info.value.render() or "404" in info.value.render()
    with FaultProxy(auth_registry.address, **{"500": 1.0}) as bad:
        with pytest.raises(RegistryError) as info2:
            client(bad.host, auth=Auth(creds), retries=1).has_blob("private/x", _sha(b"q"))
    for exc in (info.value, info2.value):
        text = f"{exc.render()} {exc!r} {exc.args}"
        assert not any(s in text for s in secrets)
    # And an Auth masks whatever it knows, wherever it shows up.
    assert Auth(creds).mask(f"user:{helpers.password} {secrets[1]}") == "user:*** ***"


def test_bearer_token_auth_with_a_token_service(token_registry, client, blob_file, helpers, empty_docker_config,
                                                tmp_path):
    server, tokens = token_registry
    helpers.write_docker_config(empty_docker_config, server.host)
    reg = client(server.host)
    path, digest = blob_file(3 * MiB)
    tokens.issued.clear()
    assert reg.push_blob("bearer/model", digest, 3 * MiB, path)
    manifest = _manifest_bytes(b"{}", [(digest, 3 * MiB)])
    reg.push_blob("bearer/model", _sha(b"{}"), 2, lambda: __import__("io").BytesIO(b"{}"))
    mdigest = reg.put_manifest("bearer/model", "v1", manifest, mt.OCI_MANIFEST)
    assert reg.get_manifest("bearer/model", "v1") == (manifest, mt.OCI_MANIFEST, mdigest)
    reg.pull_blob("bearer/model", digest, 3 * MiB, tmp_path / "o")
    assert helpers.sha256_file(tmp_path / "o") == digest
    # Tokens are cached per scope: one for pull, one for pull+push, not one per request.
    assert len(tokens.issued) == 2 and all(user == helpers.user for user, _ in tokens.issued)
    # Mount across repositories asks for both scopes at once.
    assert reg.push_blob("bearer/other", digest, 3 * MiB, path, mount_from="bearer/model") is False
    assert reg.has_blob("bearer/other", digest)

    # Anonymous: the token service grants pull only, so a push is refused, clearly.
    (empty_docker_config / "config.json").unlink()
    anon = client(server.host)
    assert anon.get_manifest("bearer/model", mdigest)[2] == mdigest
    other, other_digest = blob_file(100)
    with pytest.raises(RegistryAuthError) as info:
        anon.push_blob("bearer/model", other_digest, 100, other)
    assert server.host in info.value.render() and "bearer/model" in info.value.render()
    assert "none were found" in info.value.render() and "docker login" in info.value.render()
    # A wrong password is refused by the token service, and never shown.
    helpers.write_docker_config(empty_docker_config, server.host, password="nope-Wrong-1")
    with pytest.raises(RegistryAuthError) as info:
        client(server.host).has_blob("bearer/model", digest)
    assert "refused" in info.value.render() and "nope-Wrong-1" not in info.value.render()


def test_a_flaky_token_service_is_retried(token_registry, client, helpers, empty_docker_config):
    server, tokens = token_registry
    helpers.write_docker_config(empty_docker_config, server.host)
    tokens.proxy.reset()
    tokens.proxy.script(["500", "drop_before"])
    assert client(server.host).has_blob("bearer/flaky", _sha(b"none")) is False
    assert tokens.proxy.count("GET", "/token") == 3
    tokens.proxy.set_faults(**{"500": 1.0})
    try:
        with pytest.raises(RegistryError) as info:
            client(server.host, retries=2).has_blob("bearer/flaky", _sha(b"none"))
    finally:
        tokens.proxy.set_faults()
    assert "token service" in info.value.render() and "after 3 attempts" in info.value.render()


# -- pieces -----------------------------------------------------------------------------
def test_docker_config_lookup(empty_docker_config, tmp_path, monkeypatch):
    auth = base64.b64encode(b"u:p:with:colons").decode()
    (empty_docker_config / "config.json").write_text(json.dumps({
        "auths": {"https://reg.example.com/v1/": {"auth": auth}, "other.example.com": {"username": "a", "password": "b"}},
        "credsStore": "mbmissing-helper-not-found"}))
    assert credentials_from_docker_config("reg.example.com") == Credentials("u", "p:with:colons")
    assert credentials_from_docker_config("other.example.com") == Credentials("a", "b")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-nothing"
    helper.write_text("#!/bin/sh\necho 'credentials not found in native keychain'\nexit 1\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    (empty_docker_config / "config.json").write_text(json.dumps({"credsStore": "nothing"}))
    assert credentials_from_docker_config("third.example.com") is None


def test_challenge_and_reference_parsing():
    assert parse_challenge('Bearer realm="https://auth.example.com/token",service="reg",'
                           'scope="repository:a/b:pull,push"') == (
        "bearer", {"realm": "https://auth.example.com/token", "service": "reg", "scope": "repository:a/b:pull,push"})
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})
    host, repo, ref = split_reference("localhost:5000/team/model:v1")
    assert (host, repo, ref.tag, ref.digest) == ("localhost:5000", "team/model", "v1", None)
    with pytest.raises(UsageError):
        split_reference("team/model:v1")
