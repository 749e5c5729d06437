"""The registry client against a malicious registry (``hostile_registry.py``): oversized and
chunked manifests, dripped and stalled bodies and headers, sizes that lie, JSON that is not
what it should be, hostile token services, uploads a registry reads slowly or never, a full
disk. What is asserted is what a user relies on: the client gives up within the bound
``docs/registry.md`` states (computed here from the same limits), with one line that names
the registry, the operation and the setting at fault, exit code 1 or 2 and never 70, and
nothing left under a final name that is not verified.

Limits are set small (through the constructor, or the environment for the CLI) so every case
takes seconds; the elapsed time is checked against :meth:`Limits.operation_bound`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_registry import Answer, HostileRegistry, json_answer

from modelbuild.errors import BuildError, UsageError
from modelbuild.oci import mediatypes as mt
from modelbuild.oci import download as registry_module
from modelbuild.oci.reference import parse_reference
from modelbuild.oci.registry import (
    Limits,
    Registry,
    RegistryAuthError,
    RegistryError,
    SizeMismatchError,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
REPO = "evil/model"
# Small limits: an attempt without the minimum rate ends within 1 + 1 + 2×1 = 4 s.
FAST = Limits(connect_timeout=1.0, read_timeout=0.5, stall_timeout=1.0, min_rate=2000.0, rate_window=1.0,
              retries=1)
FAST_ENV = {
    "MODELBUILD_REGISTRY_CONNECT_TIMEOUT": "1", "MODELBUILD_REGISTRY_READ_TIMEOUT": "0.5",
    "MODELBUILD_REGISTRY_STALL_TIMEOUT": "1", "MODELBUILD_REGISTRY_MIN_RATE": "2000",
    "MODELBUILD_REGISTRY_RATE_WINDOW": "1", "MODELBUILD_REGISTRY_RETRIES": "1",
}
CLI_START = 3.0  # seconds for the CLI's interpreter to start and import, on a loaded 2-core machine


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Artifact:
    """A small, valid model artifact served by the hostile registry: a config and one raw
    layer (a file ``w.bin``), each route replaceable by a test."""

    def __init__(self, hostile: HostileRegistry, layer: bytes = b"", *, tag: str = "v1") -> None:
        self.hostile, self.tag = hostile, tag
        self.layer = layer or os.urandom(300_000)
        self.config = json.dumps({"descriptor": {"name": "evil"}, "config": {}, "modelfs": {"type": "layers",
                                  "diffIds": [_sha(self.layer)]}}).encode()
        self.doc = {
            "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": mt.MODEL_ARTIFACT,
            "config": {"mediaType": mt.MODEL_CONFIG, "digest": _sha(self.config), "size": len(self.config)},
            "layers": [{"mediaType": "application/vnd.cncf.model.weight.v1.raw", "digest": _sha(self.layer),
                        "size": len(self.layer), "annotations": {mt.ANNOTATION_FILEPATH: "w.bin"}}],
        }
        self.manifest = json.dumps(self.doc).encode()
        self.ref = f"{hostile.host}/{REPO}:{tag}"
        self.manifest_path = f"/v2/{REPO}/manifests/{tag}"
        self.layer_path = f"/v2/{REPO}/blobs/{_sha(self.layer)}"
        self.serve_manifest(Answer(headers={"Content-Type": mt.OCI_MANIFEST}, body=self.manifest))
        hostile.route("GET", f"/v2/{REPO}/blobs/{_sha(self.config)}", Answer(body=self.config))
        self.serve_layer(Answer(body=self.layer))

    def serve_manifest(self, answer: Answer) -> None:
        self.hostile.route("GET", self.manifest_path, answer)

    def serve_layer(self, answer: Answer) -> None:
        self.hostile.route("GET", self.layer_path, answer)


def _client(hostile: HostileRegistry, limits: Limits = FAST, **kw) -> Registry:
    return Registry(hostile.host, plain_http=True, limits=limits, backoff=0.01, **kw)


def _one_line(exc: BaseException) -> str:
    text = exc.render() if hasattr(exc, "render") else str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def _pull_cli(ref: str, home: Path, *extra: str, env: dict[str, str] | None = None,
              preexec=None) -> tuple[int, str, float]:
    """``modelbuild pull REF --plain-http``: exit code, stderr and seconds taken."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "modelbuild", "pull", ref, "--plain-http", "--progress", "quiet",
                           *extra], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, preexec_fn=preexec,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "MODELBUILD_HOME": str(home),
                               **FAST_ENV, **(env or {})})
    return proc.returncode, proc.stderr.strip(), time.monotonic() - t0


def _assert_cli_failure(rc: int, stderr: str, *names: str) -> None:
    assert rc in (1, 2), (rc, stderr)
    assert len(stderr.splitlines()) == 1 and "internal error" not in stderr, stderr
    for name in names:
        assert name in stderr, (name, stderr)


def _assert_nothing_unverified(*roots: Path) -> None:
    """No file under a final name holds bytes other than its digest says: in the store every
    blob is named by its digest; under ``-o DIR`` no file but downloads in progress
    (``.modelbuild-partial``, named by digest and only ever resumed)."""
    for root in roots:
        if not root.exists():
            continue
        for path in root.rglob("*"):
            if not path.is_file() or "partial" in path.parts[-2]:
                continue
            if path.parent.name == "sha256" and path.parent.parent.name == "blobs":
                assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == "sha256:" + path.name, path
            elif path.name not in ("oci-layout", "index.json") and "tags" not in path.parts and \
                    not path.name.endswith((".lock", ".json", ".db")):
                raise AssertionError(f"unexpected file left behind: {path}")


# -- sanity: the hostile server can serve a good artifact ---------------------------------
def test_a_well_behaved_answer_pulls_through_the_cli(hostile, tmp_path):
    art = Artifact(hostile)
    rc, stderr, _ = _pull_cli(art.ref, tmp_path / "home", "-o", str(tmp_path / "out"))
    assert rc == 0, stderr
    assert (tmp_path / "out" / "w.bin").read_bytes() == art.layer


# -- manifests: size -----------------------------------------------------------------------
@pytest.mark.parametrize("framing", ["chunked", "close-delimited", "lying-length"])
def test_a_50_mb_manifest_is_refused_without_reading_it(hostile, framing):
    art = Artifact(hostile)
    answer = Answer(headers={"Content-Type": mt.OCI_MANIFEST}, body=b'{"layers": [', pad=50 * MiB)
    if framing == "chunked":
        answer.chunked = True
    elif framing == "close-delimited":
        answer.length = -1
    else:
        answer.length = 1000  # says small: the client reads 1000 bytes of it, and refuses them as JSON
    art.serve_manifest(answer)
    with _client(hostile) as reg, pytest.raises(RegistryError) as info:
        reg.get_manifest(REPO, "v1")
    text = _one_line(info.value)
    assert hostile.host in text and "pull manifest v1" in text
    if framing != "lying-length":
        assert "larger than 4194304 bytes" in text and "MODELBUILD_MAX_MANIFEST_BYTES" in text
    # Not buffered whole: the client hung up after the limit (kernel buffers hold a few MiB more).
    time.sleep(0.2)
    assert hostile.sent[art.manifest_path] < 4 * MiB + 8 * MiB, hostile.sent


def test_the_manifest_limit_is_settable(hostile, monkeypatch):
    art = Artifact(hostile)
    monkeypatch.setenv("MODELBUILD_MAX_MANIFEST_BYTES", "100")
    with Registry(hostile.host, plain_http=True) as reg, pytest.raises(RegistryError) as info:
        reg.get_manifest(REPO, "v1")
    assert "larger than 100 bytes" in _one_line(info.value)
    monkeypatch.setenv("MODELBUILD_MAX_MANIFEST_BYTES", "lots")
    with pytest.raises(UsageError) as usage:
        Registry(hostile.host, plain_http=True)
    assert "MODELBUILD_MAX_MANIFEST_BYTES" in _one_line(usage.value)
    assert art.manifest


def test_cli_refuses_a_chunked_50_mb_manifest(hostile, tmp_path):
    art = Artifact(hostile)
    art.serve_manifest(Answer(body=b"{", pad=50 * MiB, chunked=True))
    rc, stderr, _ = _pull_cli(art.ref, tmp_path / "home")
    _assert_cli_failure(rc, stderr, hostile.host, "MODELBUILD_MAX_MANIFEST_BYTES")
    _assert_nothing_unverified(tmp_path / "home")


# -- manifests: not what JSON they should be -----------------------------------------------
@pytest.mark.parametrize("body, says", [
    (b"not json at all", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"[" * 200_000 + b"]" * 200_000, "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'"a string"', "not a JSON object"),
    (b'{"layers": "w.bin"}', "layers"),
    (b'{"layers": [5]}', "layers[0]"),
    (b'{"layers": [{"digest": 5, "size": 1}]}', "digest"),
    (b'{"layers": [{"digest": "sha256:00", "size": "12"}]}', "size"),
    (b'{"layers": [{"digest": "sha256:00", "size": 1e400}]}', "size"),
    (b'{"layers": [{"digest": "sha256:00", "size": 99999999999999999999999999}]}', "size"),
    (b'{"config": {"digest": "sha256:00", "size": -1}}', "config"),
    (b'{"manifests": [{"digest": "sha256:00", "size": 1, "platform": "linux"}]}', "platform"),
    (b'{"mediaType": 7}', "mediaType"),
    (b'{"annotations": {"a": ["b"]}}', "annotations"),
    (b'{"schemaVersion": "2"}', "schemaVersion"),
])
def test_a_manifest_that_is_not_what_it_should_be_is_one_line(hostile, body, says):
    art = Artifact(hostile)
    art.serve_manifest(Answer(headers={"Content-Type": mt.OCI_MANIFEST}, body=body))
    with _client(hostile) as reg, pytest.raises(RegistryError) as info:
        reg.get_manifest(REPO, "v1")
    text = _one_line(info.value)
    assert hostile.host in text and says in text, text


def test_cli_refuses_a_manifest_of_the_wrong_shape(hostile, tmp_path):
    art = Artifact(hostile)
    art.serve_manifest(Answer(body=b'{"schemaVersion": 2, "layers": {"w.bin": 1}}'))
    rc, stderr, _ = _pull_cli(art.ref, tmp_path / "home", "-o", str(tmp_path / "out"))
    _assert_cli_failure(rc, stderr, hostile.host, "layers")
    _assert_nothing_unverified(tmp_path / "home", tmp_path / "out")


@pytest.mark.parametrize("ref", ["sha256:zz", "sha256:../../x", "../x", "v1\nv2"])
def test_a_manifest_ref_that_is_neither_tag_nor_digest_is_refused(hostile, ref):
    """An index's child digest is the registry's word: one that is not a digest must not be
    fetched as a tag (and so never verified)."""
    with _client(hostile) as reg, pytest.raises(RegistryError) as info:
        reg.get_manifest(REPO, ref)
    assert "neither a tag nor a sha256 digest" in _one_line(info.value) and not hostile.requests


@pytest.mark.parametrize("answer", [
    json_answer({"errors": {"code": "X"}}, 404),
    json_answer({"errors": [{"code": ["x"], "message": "line one\nline two\x1b[31m"}]}, 404),
    json_answer([1, 2, 3], 404),
    Answer(404, body=b"{", pad=20 * MiB, chunked=True),
    Answer(404, body=b"\xff" * 100),
])
def test_hostile_error_bodies_end_in_one_line(hostile, answer):
    hostile.route("GET", f"/v2/{REPO}/manifests/v1", answer)
    t0 = time.monotonic()
    with _client(hostile) as reg, pytest.raises(RegistryError) as info:
        reg.get_manifest(REPO, "v1")
    text = _one_line(info.value)
    assert "404" in text and hostile.host in text and "\x1b" not in text
    assert time.monotonic() - t0 < FAST.operation_bound()


# -- time: drips and stalls ------------------------------------------------------------------
def test_a_dripping_manifest_fails_within_the_bound(hostile):
    art = Artifact(hostile)
    art.serve_manifest(Answer(body=art.manifest, drip=0.2))
    t0 = time.monotonic()
    with _client(hostile) as reg, pytest.raises(RegistryError) as info:
        reg.get_manifest(REPO, "v1")
    elapsed = time.monotonic() - t0
    text = _one_line(info.value)
    assert "pull manifest v1" in text and "minimum rate" in text and "MODELBUILD_REGISTRY_MIN_RATE" in text
    assert "after 2 attempts" in text and hostile.count("GET", art.manifest_path) == 2
    assert 2 * FAST.rate_window <= elapsed < FAST.operation_bound(), elapsed


def test_a_dripping_blob_fails_within_the_bound(hostile, tmp_path):
    art = Artifact(hostile)
    art.serve_layer(Answer(body=art.layer, drip=0.2))
    dest = tmp_path / "w.bin"
    t0 = time.monotonic()
    with _client(hostile) as reg, pytest.raises(RegistryError) as info:
        reg.pull_blob(REPO, _sha(art.layer), len(art.layer), dest)
    elapsed = time.monotonic() - t0
    text = _one_line(info.value)
    assert f"pull blob {_sha(art.layer)}" in text and "MODELBUILD_REGISTRY_MIN_RATE" in text
    assert elapsed < FAST.operation_bound(), elapsed
    assert not dest.exists()
    partial = Path(f"{dest}.partial")  # what came is kept to resume, and it is the blob's start
    assert art.layer.startswith(partial.read_bytes())


def test_one_byte_per_connection_is_no_progress(hostile, tmp_path):
    """A registry answering each request with one more byte, then hanging up, must run out
    of retries: an attempt counts as progress only with PROGRESS bytes or a quarter of the rest."""
    art = Artifact(hostile)
    art.serve_layer(lambda h: Answer(206 if "Range" in h.headers else 200, body=art.layer[:1],
                                     length=len(art.layer) - int((h.headers.get("Range") or "bytes=0-")[6:-1]),
                                     headers={"Content-Range": f"bytes {(h.headers.get('Range') or 'bytes=0-')[6:-1]}-"
                                                               f"{len(art.layer) - 1}/{len(art.layer)}"}, close=True))
    with _client(hostile, retries=3) as reg, pytest.raises(RegistryError) as info:
        reg.pull_blob(REPO, _sha(art.layer), len(art.layer), tmp_path / "w.bin")
    assert "after 4 attempts" in _one_line(info.value) and hostile.count("GET", art.layer_path) == 4


@pytest.mark.parametrize("where", ["manifest", "blob"])
def test_a_registry_that_stalls_after_the_headers_fails_within_the_bound(hostile, tmp_path, where):
    art = Artifact(hostile)
    body = art.manifest if where == "manifest" else art.layer
    (art.serve_manifest if where == "manifest" else art.serve_layer)(Answer(body=body, stall=30))
    t0 = time.monotonic()
    with _client(hostile) as reg, pytest.raises(RegistryError) as info:
        if where == "manifest":
            reg.get_manifest(REPO, "v1")
        else:
            reg.pull_blob(REPO, _sha(art.layer), len(art.layer), tmp_path / "w.bin")
    elapsed = time.monotonic() - t0
    text = _one_line(info.value)
    assert "MODELBUILD_REGISTRY_READ_TIMEOUT" in text and "after 2 attempts" in text, text
    assert elapsed < FAST.operation_bound(), elapsed


def test_dripped_headers_are_cut_by_the_watchdog(hostile):
    """Each byte of a header line arrives well within the read timeout, so only the watchdog
    (nothing moved for the stall timeout) ends it."""
    art = Artifact(hostile)
    art.serve_manifest(Answer(drip_headers=0.1, pad=10_000))
    t0 = time.monotonic()
    with _client(hostile) as reg, pytest.raises(RegistryError) as info:
        reg.get_manifest(REPO, "v1")
    elapsed = time.monotonic() - t0
    text = _one_line(info.value)
    assert "stall timeout" in text and "MODELBUILD_REGISTRY_STALL_TIMEOUT" in text, text
    assert elapsed < FAST.operation_bound(), elapsed


def test_cli_gives_up_on_a_dripping_blob_within_the_bound(hostile, tmp_path):
    art = Artifact(hostile)
    art.serve_layer(Answer(body=art.layer, drip=0.2))
    rc, stderr, elapsed = _pull_cli(art.ref, tmp_path / "home")
    _assert_cli_failure(rc, stderr, hostile.host, _sha(art.layer), "MODELBUILD_REGISTRY_MIN_RATE")
    assert elapsed < FAST.operation_bound() + CLI_START, elapsed
    _assert_nothing_unverified(tmp_path / "home")


def test_cli_gives_up_on_a_stalling_manifest_within_the_bound(hostile, tmp_path):
    art = Artifact(hostile)
    art.serve_manifest(Answer(body=art.manifest, stall=30))
    rc, stderr, elapsed = _pull_cli(art.ref, tmp_path / "home", "-o", str(tmp_path / "out"))
    _assert_cli_failure(rc, stderr, hostile.host, "pull manifest v1", "MODELBUILD_REGISTRY_READ_TIMEOUT")
    assert elapsed < FAST.operation_bound() + CLI_START, elapsed
    assert not (tmp_path / "out").exists()


def test_cli_gives_up_on_a_dripping_manifest_within_the_bound(hostile, tmp_path):
    art = Artifact(hostile)
    art.serve_manifest(Answer(body=art.manifest, drip=0.2, chunked=True))
    rc, stderr, elapsed = _pull_cli(art.ref, tmp_path / "home", "-o", str(tmp_path / "out"))
    _assert_cli_failure(rc, stderr, hostile.host, "pull manifest v1", "MODELBUILD_REGISTRY_MIN_RATE")
    assert elapsed < FAST.operation_bound() + CLI_START, elapsed
    assert not (tmp_path / "out").exists()


# -- sizes that lie ------------------------------------------------------------------------------
def test_a_content_length_that_disagrees_with_the_descriptor_is_refused_at_once(hostile, tmp_path):
    art = Artifact(hostile)
    art.serve_layer(Answer(body=art.layer + b"x" * 1000))  # 1000 bytes more than the descriptor says
    with _client(hostile) as reg, pytest.raises(SizeMismatchError) as info:
        reg.pull_blob(REPO, _sha(art.layer), len(art.layer), tmp_path / "w.bin")
    text = _one_line(info.value)
    assert _sha(art.layer) in text and f"{len(art.layer) + 1000} bytes" in text
    assert hostile.count("GET", art.layer_path) == 1
    assert not (tmp_path / "w.bin").exists() and not (tmp_path / "w.bin.partial").exists()


def test_a_huge_descriptor_size_costs_one_request(hostile, tmp_path):
    art = Artifact(hostile)
    t0 = time.monotonic()
    with _client(hostile) as reg, pytest.raises(SizeMismatchError) as info:
        reg.pull_blob(REPO, _sha(art.layer), 2**62, tmp_path / "w.bin")
    assert _sha(art.layer) in _one_line(info.value) and time.monotonic() - t0 < 2
    assert hostile.count("GET", art.layer_path) == 1


def test_a_chunked_blob_longer_than_its_descriptor_is_refused(hostile, tmp_path):
    art = Artifact(hostile)
    art.serve_layer(Answer(body=art.layer, pad=30 * MiB, chunked=True))
    with _client(hostile) as reg, pytest.raises(SizeMismatchError) as info:
        reg.pull_blob(REPO, _sha(art.layer), len(art.layer), tmp_path / "w.bin")
    assert "larger than" in _one_line(info.value)
    assert not (tmp_path / "w.bin").exists() and not (tmp_path / "w.bin.partial").exists()
    time.sleep(0.2)
    assert hostile.sent[art.layer_path] < len(art.layer) + 8 * MiB


def test_cli_refuses_a_blob_whose_length_lies(hostile, tmp_path):
    art = Artifact(hostile)
    art.serve_layer(Answer(body=art.layer[:-10]))
    rc, stderr, _ = _pull_cli(art.ref, tmp_path / "home", "-o", str(tmp_path / "out"))
    _assert_cli_failure(rc, stderr, hostile.host, _sha(art.layer), "descriptor says")
    _assert_nothing_unverified(tmp_path / "home", tmp_path / "out")
    rc, stderr, _ = _pull_cli(art.ref, tmp_path / "home")
    _assert_cli_failure(rc, stderr, hostile.host, _sha(art.layer))
    _assert_nothing_unverified(tmp_path / "home")


# -- hostile token services -------------------------------------------------------------------
@pytest.mark.parametrize("token_answer, says", [
    (Answer(body=b"<html>not json</html>"), "not JSON"),
    (json_answer(["token"]), "not an object"),
    (json_answer({"token": 5}), "not a string"),
    (json_answer({"token": ["a", "b"]}), "not a string"),
    (json_answer({"token": "abc\r\nX-Evil: 1"}), "not a string of visible ASCII"),
    (json_answer({"access_token": ""}), "without a token"),
    (Answer(body=b'{"token": "', pad=50 * MiB, chunked=True), "more than"),
    (Answer(body=b'{"token": "abc"}', drip=0.2), "too slow"),
    (Answer(302, headers={"Location": "http://127.0.0.1:9/elsewhere"}), "302"),
])
def test_hostile_token_answers_end_in_one_line(hostile, token_answer, says):
    art = Artifact(hostile)
    art.serve_manifest(Answer(401, headers={"WWW-Authenticate": f'Bearer realm="http://{hostile.host}/token",'
                                                                f'service="evil"'}))
    hostile.route("GET", "/token", token_answer)
    t0 = time.monotonic()
    with _client(hostile) as reg, pytest.raises(RegistryError) as info:
        reg.get_manifest(REPO, "v1")
    text = _one_line(info.value)
    assert hostile.host in text and says in text, text
    assert time.monotonic() - t0 < FAST.operation_bound()


@pytest.mark.parametrize("realm", ["file:///etc/passwd", "/token", "gopher://x", ""])
def test_a_token_realm_that_is_not_http_is_refused(hostile, realm):
    art = Artifact(hostile)
    art.serve_manifest(Answer(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'}))
    with _client(hostile) as reg, pytest.raises(RegistryAuthError) as info:
        reg.get_manifest(REPO, "v1")
    assert hostile.host in _one_line(info.value)


@pytest.mark.parametrize("expires_in", [b'"soon"', b"1" + b"0" * 400, b"[1]", b"-1", b"1e999", b"NaN"])
def test_an_expires_in_that_is_nonsense_does_not_crash(hostile, expires_in):
    art = Artifact(hostile)
    challenge = {"WWW-Authenticate": f'Bearer realm="http://{hostile.host}/token"'}
    art.serve_manifest(lambda h: Answer(headers={"Content-Type": mt.OCI_MANIFEST}, body=art.manifest)
                       if h.headers.get("Authorization") == "Bearer good" else Answer(401, headers=challenge))
    hostile.route("GET", "/token", Answer(body=b'{"token": "good", "expires_in": ' + expires_in + b"}"))
    with _client(hostile) as reg:
        assert reg.get_manifest(REPO, "v1")[0] == art.manifest


def test_cli_with_a_hostile_token_service(hostile, tmp_path):
    art = Artifact(hostile)
    art.serve_manifest(Answer(401, headers={"WWW-Authenticate": f'Bearer realm="http://{hostile.host}/token"'}))
    hostile.route("GET", "/token", json_answer({"token": {"nested": True}}))
    rc, stderr, _ = _pull_cli(art.ref, tmp_path / "home")
    _assert_cli_failure(rc, stderr, hostile.host, "token service")


# -- redirects and upload URLs ---------------------------------------------------------------
@pytest.mark.parametrize("location, says", [
    ("/v2/evil/model/manifests/v1", "more than 10 redirects"),
    ("file:///etc/passwd", "not an HTTP URL"),
])
def test_hostile_redirects_end_in_one_line(hostile, location, says):
    hostile.route("GET", f"/v2/{REPO}/manifests/v1", Answer(302, headers={"Location": location}))
    with _client(hostile) as reg, pytest.raises(RegistryError) as info:
        reg.get_manifest(REPO, "v1")
    assert says in _one_line(info.value)


def test_an_upload_url_that_is_not_http_is_refused(hostile, tmp_path):
    src = tmp_path / "blob"
    src.write_bytes(b"x" * 1000)
    hostile.route("POST", f"/v2/{REPO}/blobs/uploads/", Answer(202, headers={"Location": "ftp://evil/upload"}))
    with _client(hostile) as reg, pytest.raises(RegistryError) as info:
        reg.push_blob(REPO, _sha(b"x" * 1000), 1000, src)
    assert "not HTTP" in _one_line(info.value)


# -- uploads to a registry that does not read ----------------------------------------------------
@pytest.mark.parametrize("read_body", ["never", 0.01])
@pytest.mark.parametrize("size", [300_000, 3 * MiB])  # one PUT; PATCH chunks of 1 MiB
def test_an_upload_the_registry_does_not_read_fails_within_the_bound(hostile, tmp_path, read_body, size):
    data = os.urandom(size)
    src = tmp_path / "blob"
    src.write_bytes(data)
    hostile.route("POST", f"/v2/{REPO}/blobs/uploads/", Answer(202, headers={"Location": f"/v2/{REPO}/up/1"}))
    hostile.route("PUT", f"/v2/{REPO}/up/1", Answer(201, read_body=read_body))
    hostile.route("PATCH", f"/v2/{REPO}/up/1", Answer(202, read_body=read_body, headers={"Range": f"0-{MiB - 1}"}))
    hostile.route("GET", f"/v2/{REPO}/up/1", Answer(204, headers={"Range": "0-0"}))
    t0 = time.monotonic()
    with _client(hostile, chunk_size=MiB, monolithic_max=MiB) as reg, pytest.raises(RegistryError) as info:
        reg.push_blob(REPO, _sha(data), len(data), src)
    elapsed = time.monotonic() - t0
    text = _one_line(info.value)
    assert f"push blob {_sha(data)}" in text and "MODELBUILD_REGISTRY_" in text, text
    assert elapsed < FAST.operation_bound(), elapsed


def test_an_upload_acknowledged_without_progress_ends(hostile, tmp_path):
    """A registry answering every PATCH with ``Range: 0-0`` would have us upload forever."""
    data = os.urandom(3 * MiB)
    src = tmp_path / "blob"
    src.write_bytes(data)
    hostile.route("POST", f"/v2/{REPO}/blobs/uploads/", Answer(202, headers={"Location": f"/v2/{REPO}/up/1"}))
    hostile.route("PATCH", f"/v2/{REPO}/up/1", Answer(202, headers={"Range": "0-0"}))
    with _client(hostile, chunk_size=MiB, monolithic_max=MiB, retries=3) as reg, pytest.raises(RegistryError) as info:
        reg.push_blob(REPO, _sha(data), len(data), src)
    assert "no byte past" in _one_line(info.value) and hostile.count("PATCH") == 4


# -- references -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ref", ["localhost:99999/x:y", "localhost:0/x:y", "[::1/x:y", "host:/x", "[1:2:3]:5000/x:y",
                                 "a" * 64 + ".example.com/x:y"])
def test_a_bad_registry_host_is_a_usage_error(ref):
    with pytest.raises(UsageError):
        parse_reference(ref)


def test_cli_bad_port_is_exit_2(tmp_path):
    for ref in ("localhost:99999/x:y", "localhost:0/x:y"):
        rc, stderr, _ = _pull_cli(ref, tmp_path / "home")
        assert rc == 2 and len(stderr.splitlines()) == 1 and "port" in stderr, (rc, stderr)


def test_cli_limit_that_is_not_a_number_is_exit_2(hostile, tmp_path):
    art = Artifact(hostile)
    rc, stderr, _ = _pull_cli(art.ref, tmp_path / "home", env={"MODELBUILD_REGISTRY_STALL_TIMEOUT": "forever"})
    assert rc == 2 and "MODELBUILD_REGISTRY_STALL_TIMEOUT" in stderr and len(stderr.splitlines()) == 1, stderr


# -- a full disk --------------------------------------------------------------------------------
def test_no_space_left_keeps_a_sound_partial_to_resume(hostile, tmp_path, monkeypatch):
    art = Artifact(hostile, os.urandom(3 * MiB))
    written = [0]
    real = registry_module._write_all

    def full_disk(fh, data):
        if written[0] + len(data) > 2 * MiB:
            real(fh, data[:1000])  # a short write, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fh, data)
        written[0] += len(data)

    monkeypatch.setattr(registry_module, "_write_all", full_disk)
    dest = tmp_path / "w.bin"
    with _client(hostile) as reg, pytest.raises(BuildError) as info:
        reg.pull_blob(REPO, _sha(art.layer), len(art.layer), dest)
    assert "no space left on device while writing" in _one_line(info.value)
    partial = Path(f"{dest}.partial")
    assert not dest.exists() and art.layer.startswith(partial.read_bytes()) and partial.stat().st_size > MiB
    monkeypatch.setattr(registry_module, "_write_all", real)
    with _client(hostile) as reg:
        reg.pull_blob(REPO, _sha(art.layer), len(art.layer), dest)
    assert dest.read_bytes() == art.layer and not partial.exists()


def test_a_writer_that_cannot_write_is_one_line_and_aborted(hostile):
    art = Artifact(hostile)

    class FullDisk:
        aborted = False

        def write(self, chunk: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def abort(self) -> None:
            FullDisk.aborted = True

    with _client(hostile) as reg, pytest.raises(BuildError) as info:
        reg.pull_blob(REPO, _sha(art.layer), len(art.layer), FullDisk())
    assert f"no space left on device while writing blob {_sha(art.layer)}" in _one_line(info.value)
    assert FullDisk.aborted


def _file_size_limit() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, MiB))


def test_cli_write_error_is_one_line(hostile, tmp_path):
    art = Artifact(hostile, os.urandom(3 * MiB))
    for extra in ([], ["-o", str(tmp_path / "out")]):
        rc, stderr, _ = _pull_cli(art.ref, tmp_path / "home", *extra, preexec=_file_size_limit)
        _assert_cli_failure(rc, stderr, "cannot write", "File too large")
        assert rc == 1
        _assert_nothing_unverified(tmp_path / "home", tmp_path / "out")
