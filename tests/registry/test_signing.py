"""Signatures through a real registry (Debian's docker-registry, conftest.py): ``modelbuild
key generate``, ``sign``, ``push --sign``, ``verify [--require]``, ``pull``/``run
--verify-key``; what other tools make of them and the reverse; and no secret anywhere.

Independent checkers, both directions:

* skopeo with a ``policy.json`` requiring ``sigstoreSigned`` (``use-sigstore-attachments`` in
  ``registries.d``) accepts what modelbuild signed and refuses it tampered; modelbuild
  verifies what ``skopeo copy --sign-by-sigstore-private-key`` signed with a key modelbuild
  generated. Debian 12's skopeo 1.9.3 is built with sigstore compiled out ("Debian-local
  change: sigstore disabled", for signing and for verifying alike), so scripts/setup-system
  unpacks Debian 13's skopeo 1.18 (which has it) into the virtualenv, run through its own
  loader as ``VENV/bin/skopeo-sigstore``. The skopeo used is ``MODELBUILD_TEST_SKOPEO``, else
  that one, else the system's; one without sigstore skips these tests outside CI and fails
  them under CI=true.
* OpenSSL verifies the signature modelbuild pushed, read from the registry over plain HTTP
  (not through modelbuild); and modelbuild verifies a ``.sig`` manifest this test writes by
  hand over HTTP around a payload OpenSSL signed. Signatures that cosign and skopeo
  themselves made are verified in tests/test_cosign_format.py (their own fixtures).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from modelbuild.oci.registry import Registry
from modelbuild.signing import dsse, keys
from modelbuild.signing.repository import RegistryRepository
from support import REPO, error_line, require_tool

EXAMPLE_MODELFILE = REPO / "Modelfile.examples" / "tiny-llama" / "Modelfile"
OCI = "application/vnd.oci.image.manifest.v1+json"
PASSPHRASE = "correct-Horse-battery-" + uuid.uuid4().hex[:8]
SKOPEO_VAR = "MODELBUILD_TEST_SKOPEO"  # a skopeo with sigstore, where the system's has none
SLSA = "https://slsa.dev/provenance/v1"
CYCLONEDX = "https://cyclonedx.org/bom"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Artifacts:
    """modelbuild's CLI in this process (``mb``), on the session's registry."""

    def __init__(self, mb: Any, registry: Any, tmp_path: Path) -> None:
        self.mb, self.registry, self.tmp = mb, registry, tmp_path
        self.env = {"COSIGN_PASSWORD": PASSPHRASE}

    def ref(self, name: str, tag: str = "1") -> str:
        return f"{self.registry.host}/sign/{name}-{uuid.uuid4().hex[:8]}:{tag}"

    def build(self, ref: str, version: str = "0.1.0") -> str:
        run = self.mb("build", "-f", str(EXAMPLE_MODELFILE), "-t", ref, "--build-arg", f"VERSION={version}",
                      "--progress", "quiet", "--json")
        assert run.rc == 0, run.err
        return run.json()["digest"]

    def push(self, ref: str, *extra: str) -> dict[str, Any]:
        run = self.mb("push", ref, "--plain-http", "--progress", "quiet", "--json", *extra, env=self.env)
        assert run.rc == 0, run.err
        return run.json()

    def key(self, prefix: str = "cosign") -> tuple[Path, Path]:
        run = self.mb("key", "generate", "--output-key-prefix", str(self.tmp / prefix), env=self.env)
        assert run.rc == 0, run.err
        return self.tmp / f"{prefix}.key", self.tmp / f"{prefix}.pub"

    def verify(self, ref: str, pub: Path, *extra: str) -> Any:
        return self.mb("verify", ref, "--key", str(pub), "--plain-http", *extra)

    def client(self) -> Registry:
        return Registry(self.registry.host, plain_http=True)


@pytest.fixture
def art(mb, registry, tmp_path) -> Artifacts:
    return Artifacts(mb, registry, tmp_path)


def _split(ref: str) -> tuple[str, str, str]:
    host, rest = ref.split("/", 1)
    repo, tag = rest.rsplit(":", 1)
    return host, repo, tag


# -- raw HTTP, not modelbuild's client: what another tool sees ---------------------------------
def _http_manifest(ref_host: str, repo: str, ref: str) -> bytes:
    resp = requests.get(f"http://{ref_host}/v2/{repo}/manifests/{ref}", headers={"Accept": OCI}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.content


def _http_blob(host: str, repo: str, digest: str) -> bytes:
    resp = requests.get(f"http://{host}/v2/{repo}/blobs/{digest}", timeout=30)
    assert resp.status_code == 200 and _sha(resp.content) == digest
    return resp.content


def _http_put_blob(host: str, repo: str, data: bytes) -> str:
    start = requests.post(f"http://{host}/v2/{repo}/blobs/uploads/", timeout=30)
    assert start.status_code == 202, start.text
    location = start.headers["Location"]
    location = location if location.startswith("http") else f"http://{host}{location}"
    digest = _sha(data)
    done = requests.put(location, params={"digest": digest}, data=data,
                        headers={"Content-Type": "application/octet-stream"}, timeout=30)
    assert done.status_code == 201, done.text
    return digest


def _http_put_manifest(host: str, repo: str, ref: str, data: bytes) -> None:
    resp = requests.put(f"http://{host}/v2/{repo}/manifests/{ref}", data=data, headers={"Content-Type": OCI},
                        timeout=30)
    assert resp.status_code == 201, resp.text


def _sig_tag(digest: str) -> str:
    return digest.replace(":", "-", 1) + ".sig"


# -- skopeo ------------------------------------------------------------------------------------
def _skopeo_sigstore_problem(skopeo: str, scratch: str) -> str | None:
    """Why this skopeo cannot sign or verify sigstore signatures, or None when it can: it signs
    a one-blob OCI layout into a ``dir:`` with a key modelbuild generated."""
    root = Path(scratch)
    layout = root / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)

    def put(data: bytes) -> dict[str, Any]:
        (layout / "blobs" / "sha256" / _sha(data)[7:]).write_bytes(data)
        return {"digest": _sha(data), "size": len(data)}

    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(b"{}")},
                           "layers": [{"mediaType": "application/octet-stream", **put(b"probe")}]}).encode()
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI, **put(manifest), "annotations": {"org.opencontainers.image.ref.name": "probe"}}]}))
    private, _ = keys.generate(b"probe")
    (root / "probe.key").write_bytes(private)
    (root / "probe.pass").write_text("probe")
    proc = subprocess.run([skopeo, "--insecure-policy", "copy", "--sign-by-sigstore-private-key",
                           str(root / "probe.key"), "--sign-passphrase-file", str(root / "probe.pass"),
                           "--sign-identity", "registry.example.com/probe:1", f"oci:{layout}:probe",
                           f"dir:{root / 'out'}"], capture_output=True, text=True, timeout=120)
    if proc.returncode == 0:
        return None
    if "sigstore disabled" in proc.stderr:
        return ("this skopeo is built without sigstore (Debian's \"Debian-local change: sigstore disabled\"): "
                "it can neither sign nor verify cosign signatures")
    pytest.fail(f"skopeo could not sign with a modelbuild key:\n{proc.stderr[-2000:]}")


@pytest.fixture(scope="module")
def skopeo_problem(tmp_path_factory) -> str | None:
    """Once per module: why skopeo cannot do sigstore here (None when it can)."""
    from support import require_tool as need

    skopeo = _chosen_skopeo() or need("skopeo", "apt-get install -y skopeo; scripts/setup-system installs it")
    return _skopeo_sigstore_problem(skopeo, str(tmp_path_factory.mktemp("skopeo-probe")))


def _chosen_skopeo() -> str | None:
    """``MODELBUILD_TEST_SKOPEO``, else the sigstore-enabled skopeo scripts/setup-system put in
    this virtualenv, else None (the system's)."""
    unpacked = Path(sys.prefix) / "bin" / "skopeo-sigstore"
    return os.environ.get(SKOPEO_VAR) or (str(unpacked) if os.access(unpacked, os.X_OK) else None)


@pytest.fixture
def sigstore_skopeo(skopeo, skopeo_problem) -> str:
    if skopeo_problem:
        message = f"{skopeo_problem}; scripts/setup-system VENV unpacks one, or set {SKOPEO_VAR}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return _chosen_skopeo() or skopeo


def _skopeo_config(tmp: Path, host: str, pub: Path) -> tuple[Path, Path]:
    policy = tmp / "policy.json"
    policy.write_text(json.dumps({
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {host: [{"type": "sigstoreSigned", "keyPath": str(pub),
                               "signedIdentity": {"type": "matchRepoDigestOrExact"}}]},
            "dir": {"": [{"type": "insecureAcceptAnything"}]},
        },
    }))
    registries = tmp / "registries.d"
    registries.mkdir(exist_ok=True)
    (registries / "modelbuild-test.yaml").write_text(f"docker:\n  {host}:\n    use-sigstore-attachments: true\n")
    return policy, registries


def test_skopeo_accepts_what_modelbuild_signed_and_refuses_it_tampered(art, sigstore_skopeo, tmp_path):
    private, pub = art.key()
    ref = art.ref("to-skopeo")
    digest = art.build(ref)
    assert art.push(ref, "--sign", "--key", str(private))["signed"][0]["digest"] == digest
    policy, registries = _skopeo_config(tmp_path, art.registry.host, pub)

    def copy(name: str) -> subprocess.CompletedProcess:
        return subprocess.run([sigstore_skopeo, "--policy", str(policy), "--registries.d", str(registries), "copy",
                               "--src-tls-verify=false", f"docker://{ref}", f"dir:{tmp_path / name}"],
                              capture_output=True, text=True, timeout=300)

    accepted = copy("accepted")
    assert accepted.returncode == 0, accepted.stderr
    assert _sha((tmp_path / "accepted" / "manifest.json").read_bytes()) == digest

    # another artifact under the signed tag, the first one's signature copied beside it
    host, repo, tag = _split(ref)
    other = art.build(ref, version="0.2.0")
    art.push(ref)
    _http_put_manifest(host, repo, _sig_tag(other), _http_manifest(host, repo, _sig_tag(digest)))
    refused = copy("retagged")
    assert refused.returncode != 0 and "rejected" in refused.stderr.lower(), refused.stderr
    assert "does not match" in refused.stderr, refused.stderr
    assert "it signs " + digest in error_line(art.verify(ref, pub), 1)

    # a signature whose payload was altered
    _tamper_payload(host, repo, other, digest_in_payload=other)
    refused = copy("altered")
    assert refused.returncode != 0 and "rejected" in refused.stderr.lower(), refused.stderr
    assert "does not verify with the key" in error_line(art.verify(ref, pub), 1)


def test_modelbuild_verifies_what_skopeo_signed(art, sigstore_skopeo, tmp_path):
    private, pub = art.key()
    source, signed = art.ref("unsigned"), art.ref("skopeo-signed")
    digest = art.build(source)
    art.push(source)
    (tmp_path / "pass").write_text(PASSPHRASE)
    registries = tmp_path / "registries.d"
    registries.mkdir()
    (registries / "t.yaml").write_text(f"docker:\n  {art.registry.host}:\n    use-sigstore-attachments: true\n")
    proc = subprocess.run([sigstore_skopeo, "--insecure-policy", "--registries.d", str(registries), "copy",
                           "--src-tls-verify=false", "--dest-tls-verify=false", "--sign-by-sigstore-private-key",
                           str(private), "--sign-passphrase-file", str(tmp_path / "pass"), f"docker://{source}",
                           f"docker://{signed}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run = art.verify(signed, pub, "--json")
    assert run.rc == 0, run.err
    result = run.json()
    assert result["digest"] == digest and result["signatures"][0]["identity"] == signed
    assert result["signatures"][0]["creator"].startswith("containers/image")
    host, repo, tag = _split(signed)
    _http_put_manifest(host, repo, "other", _http_manifest(host, repo, tag))  # the same digest, another tag
    assert f"it signs the identity '{signed}'" in error_line(art.verify(f"{host}/{repo}:other", pub), 1)


# -- OpenSSL, both ways --------------------------------------------------------------------------
def test_openssl_verifies_the_signature_modelbuild_pushed(art, tmp_path):
    openssl = require_tool("openssl", "apt-get install -y openssl")
    private, pub = art.key()
    ref = art.ref("openssl")
    digest = art.build(ref)
    art.push(ref, "--sign", "--key", str(private))
    host, repo, tag = _split(ref)
    sig_manifest = json.loads(_http_manifest(host, repo, _sig_tag(digest)))
    assert sig_manifest["mediaType"] == OCI
    (layer,) = sig_manifest["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    payload = _http_blob(host, repo, layer["digest"])
    (tmp_path / "payload").write_bytes(payload)
    (tmp_path / "sig").write_bytes(base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"]))
    proc = subprocess.run([openssl, "dgst", "-sha256", "-verify", str(pub), "-signature", str(tmp_path / "sig"),
                           str(tmp_path / "payload")], capture_output=True, text=True)
    assert proc.returncode == 0 and "Verified OK" in proc.stdout, proc.stdout + proc.stderr
    doc = json.loads(payload)
    assert doc["critical"] == {"identity": {"docker-reference": ref}, "image": {"docker-manifest-digest": digest},
                               "type": "cosign container image signature"}


def test_modelbuild_verifies_a_signature_openssl_made(art, tmp_path):
    """The ``.sig`` manifest written over plain HTTP, as cosign lays it out, around a payload
    signed by ``openssl dgst -sign`` with a key OpenSSL generated."""
    openssl = require_tool("openssl", "apt-get install -y openssl")
    ref = art.ref("by-openssl")
    digest = art.build(ref)
    art.push(ref)
    key, pub = tmp_path / "ec.pem", tmp_path / "ec.pub"
    subprocess.run([openssl, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key], check=True)
    subprocess.run([openssl, "ec", "-in", key, "-pubout", "-out", pub], check=True, capture_output=True)
    host, repo, tag = _split(ref)
    payload = json.dumps({"critical": {"identity": {"docker-reference": ref.rsplit(":", 1)[0]},
                                       "image": {"docker-manifest-digest": digest},
                                       "type": "cosign container image signature"}, "optional": None}).encode()
    (tmp_path / "payload").write_bytes(payload)
    signature = subprocess.run([openssl, "dgst", "-sha256", "-sign", str(key), str(tmp_path / "payload")],
                               check=True, capture_output=True).stdout
    layer_digest = _http_put_blob(host, repo, payload)
    config = b'{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":["%s"]}}' % (
        layer_digest.encode())
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": _http_put_blob(host, repo, config),
        "size": len(config)}, "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                                          "digest": layer_digest, "size": len(payload), "annotations": {
            "dev.cosignproject.cosign/signature": base64.b64encode(signature).decode()}}]}).encode()
    _http_put_manifest(host, repo, _sig_tag(digest), manifest)
    run = art.verify(ref, pub, "--json")
    assert run.rc == 0, run.err
    assert run.json()["signatures"][0]["identity"] == ref.rsplit(":", 1)[0]
    # modelbuild's own sign appends to it, keeping OpenSSL's signature first
    private, mine = art.key("mine")
    assert art.mb("sign", ref, "--key", str(private), "--plain-http", env=art.env).rc == 0
    layers = json.loads(_http_manifest(host, repo, _sig_tag(digest)))["layers"]
    assert len(layers) == 2 and layers[0]["digest"] == layer_digest
    assert art.verify(ref, pub).rc == 0 and art.verify(ref, mine).rc == 0


# -- verify: what is refused, one line each --------------------------------------------------------
def _tamper_payload(host: str, repo: str, subject: str, *, digest_in_payload: str) -> None:
    """Replace the ``.sig`` of *subject* by one whose payload was edited after signing."""
    doc = json.loads(_http_manifest(host, repo, _sig_tag(subject)))
    layer = doc["layers"][0]
    payload = json.loads(_http_blob(host, repo, layer["digest"]))
    payload["critical"]["image"]["docker-manifest-digest"] = digest_in_payload
    payload["optional"]["tampered"] = True
    data = json.dumps(payload).encode()
    layer.update(digest=_http_put_blob(host, repo, data), size=len(data))
    _http_put_manifest(host, repo, _sig_tag(subject), json.dumps(doc).encode())


def test_verify_refuses_wrong_key_missing_signature_and_digest_mismatch(art):
    private, pub = art.key()
    _, other_pub = art.key("other")
    ref, unsigned = art.ref("signed"), art.ref("unsigned")
    digest = art.build(ref)
    art.push(ref, "--sign", "--key", str(private))
    plain = art.build(unsigned, version="0.3.0")
    art.push(unsigned)

    ok = art.verify(ref, pub)
    assert ok.rc == 0 and ok.out.startswith(f"{digest}  {ref}: verified (cosign, key sha256:"), ok.out
    assert error_line(art.verify(ref, other_pub), 1) == (
        f"modelbuild: error: {ref.rsplit(':', 1)[0]}@{digest}: signature 0: it does not verify with the key "
        "(another key made it, or it was altered)")
    assert error_line(art.verify(unsigned, pub), 1) == (
        f"modelbuild: error: {unsigned.rsplit(':', 1)[0]}@{plain} is not signed: the repository has no "
        f"{_sig_tag(plain)}")
    # the signed artifact's signature, copied to where the unsigned one's would be
    host, repo, _ = _split(unsigned)
    _, signed_repo, _ = _split(ref)
    payload_layers = json.loads(_http_manifest(host, signed_repo, _sig_tag(digest)))
    for layer in payload_layers["layers"] + [payload_layers["config"]]:  # its blobs into this repository
        _http_put_blob(host, repo, _http_blob(host, signed_repo, layer["digest"]))
    _http_put_manifest(host, repo, _sig_tag(plain), _http_manifest(host, signed_repo, _sig_tag(digest)))
    assert f"it signs {digest}, not {plain}" in error_line(art.verify(unsigned, pub), 1)
    # a payload edited after signing
    _tamper_payload(host, signed_repo, digest, digest_in_payload=digest)
    assert "it does not verify with the key" in error_line(art.verify(ref, pub), 1)
    failed = art.verify(ref, pub, "--json")
    assert failed.rc == 1 and failed.json()["verified"] is False and "does not verify" in failed.json()["error"]


def test_verify_usage_errors(art, tmp_path):
    ref = art.ref("usage")
    assert "verify needs --key PUB" in error_line(art.mb("verify", ref), 2)
    assert "does not exist" in error_line(art.verify(ref, tmp_path / "none.pub"), 2)
    assert "names none" in error_line(art.mb("verify", "local:tag", "--key", "x.pub"), 2)
    private, pub = art.key()
    assert "pass the .pub file" in error_line(art.verify(ref, private), 2)
    assert "did you mean sbom?" in error_line(art.verify(ref, pub, "--require", "sbon"), 2)
    assert "sign needs --key FILE" in error_line(art.mb("sign", ref), 2)
    assert "--sign needs --key FILE" in error_line(art.mb("push", ref, "--sign"), 2)
    assert "pass --sign too" in error_line(art.mb("push", ref, "--key", str(private)), 2)


def test_sign_with_a_wrong_or_missing_passphrase_sends_nothing(art, monkeypatch):
    private, pub = art.key()
    ref = art.ref("no-pass")
    art.build(ref)
    wrong = art.mb("push", ref, "--sign", "--key", str(private), "--plain-http", env={"COSIGN_PASSWORD": "nope"})
    assert error_line(wrong, 2).startswith(f"modelbuild: error: cannot decrypt {private}: wrong passphrase")
    host, repo, _ = _split(ref)
    assert requests.get(f"http://{host}/v2/{repo}/tags/list", timeout=30).status_code == 404  # nothing pushed
    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)
    none = art.mb("sign", ref, "--key", str(private), "--plain-http", input=b"")
    assert "no terminal to ask for its passphrase (set COSIGN_PASSWORD)" in error_line(none, 2)


# -- attestations: --require ------------------------------------------------------------------------
def _attest(art: Artifacts, ref: str, digest: str, key_file: Path, predicate: str, *,
            about: str | None = None, passphrase: str = PASSPHRASE) -> str:
    """Push a DSSE-enveloped in-toto statement as a referrer of *digest* (what ``build --attest
    --sign`` pushes), signed with *key_file*; its referrer's digest."""
    host, repo, tag = _split(ref)
    key = keys.load_private_key(str(key_file), lambda: passphrase.encode())
    statement = json.dumps({"_type": "https://in-toto.io/Statement/v1",
                            "subject": [{"name": ref, "digest": {"sha256": (about or digest).split(":")[1]}}],
                            "predicateType": predicate, "predicate": {}}).encode()
    envelope = dsse.sign_statement(statement, key)
    with art.client() as registry:
        repository = RegistryRepository(registry, repo)
        layer = repository.put_blob(envelope, dsse.ENVELOPE_MEDIA_TYPE)
        empty = repository.put_blob(b"{}", "application/vnd.oci.empty.v1+json")
        data, media_type, _ = repository.manifest(digest)
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI, "artifactType": dsse.ENVELOPE_MEDIA_TYPE,
                               "config": empty, "layers": [{**layer, "annotations": {
                                   "in-toto.io/predicate-type": predicate}}],
                               "subject": {"mediaType": media_type, "digest": digest, "size": len(data)},
                               "annotations": {"in-toto.io/predicate-type": predicate}}).encode()
        return repository.put_referrer(digest, manifest, OCI)


def test_verify_require_checks_signed_attestations_of_the_digest(art):
    private, pub = art.key()
    other_private, _ = art.key("other")
    ref = art.ref("attested")
    digest = art.build(ref)
    art.push(ref, "--sign", "--key", str(private))

    missing = art.verify(ref, pub, "--require", "provenance,sbom")
    assert error_line(missing, 1).endswith(f"has no provenance attestation ({SLSA}) (build with --attest and "
                                           "--sign, and push its referrers)")
    provenance = _attest(art, ref, digest, private, SLSA)
    assert "has no sbom attestation" in error_line(art.verify(ref, pub, "--require", "provenance,sbom"), 1)
    _attest(art, ref, digest, other_private, CYCLONEDX)  # signed by another key
    assert "its sbom attestation is not accepted" in error_line(art.verify(ref, pub, "--require", "sbom"), 1)
    _attest(art, ref, digest, private, CYCLONEDX, about="sha256:" + "0" * 64)  # about another artifact
    wrong = error_line(art.verify(ref, pub, "--require", "sbom"), 1)
    assert "does not verify with the key" in wrong and "about another artifact" in wrong
    sbom = _attest(art, ref, digest, private, CYCLONEDX)
    run = art.verify(ref, pub, "--require", "provenance", "--require", "sbom", "--json")
    assert run.rc == 0, run.err
    assert [(a["name"], a["predicateType"], a["referrer"]) for a in run.json()["attestations"]] == [
        ("provenance", SLSA, provenance), ("sbom", CYCLONEDX, sbom)]


# -- pull and run --verify-key ----------------------------------------------------------------------
def _store_state(home: Path) -> list[str]:
    store = home / "store"
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file()) if store.exists() else []


def test_pull_verify_key_refuses_unsigned_and_materialises_nothing(art, home, tmp_path):
    private, pub = art.key()
    unsigned, signed = art.ref("pull-unsigned"), art.ref("pull-signed")
    art.build(unsigned, version="0.4.0")
    art.push(unsigned)
    digest = art.build(signed)
    art.push(signed, "--sign", "--key", str(private))
    import shutil

    shutil.rmtree(home / "store")  # what the builds left: the pulls start from nothing
    out = tmp_path / "out"
    for extra in ([], ["-o", str(out)]):
        run = art.mb("pull", unsigned, "--verify-key", str(pub), "--plain-http", "--progress", "quiet", *extra)
        assert "is not signed" in error_line(run, 1)
        assert _store_state(home) == [] and not out.exists()
    run = art.mb("pull", signed, "--verify-key", str(pub), "--require", "provenance", "--plain-http")
    assert "has no provenance attestation" in error_line(run, 1) and _store_state(home) == []

    run = art.mb("pull", signed, "--verify-key", str(pub), "--plain-http", "--progress", "quiet", "--json")
    assert run.rc == 0, run.err
    assert run.json()["digest"] == digest and run.json()["verified"]["verified"] is True
    assert run.json()["tag"] == signed  # stored under the tag, fetched by the verified digest
    run = art.mb("pull", signed, "--verify-key", str(pub), "--plain-http", "--progress", "quiet", "-o", str(out))
    assert run.rc == 0 and (out / "config.json").is_file(), run.err

    # the tag moved to an unsigned artifact after signing: refused
    art.build(signed, version="0.5.0")
    art.push(signed)
    before = _store_state(home)
    assert "is not signed" in error_line(art.mb("pull", signed, "--verify-key", str(pub), "--plain-http"), 1)
    assert _store_state(home) == before
    assert "checks a signature in a registry" in error_line(art.mb("pull", "local:1", "--verify-key", str(pub)), 2)
    assert "pass the public key too" in error_line(art.mb("pull", signed, "--require", "sbom"), 2)


def test_run_verify_key_refuses_unsigned_before_pulling(art, home):
    _, pub = art.key()
    unsigned = art.ref("run-unsigned")
    art.build(unsigned)
    art.push(unsigned)
    import shutil

    shutil.rmtree(home / "store")
    run = art.mb("run", unsigned, "--verify-key", str(pub), "--plain-http", "--dry-run", "--progress", "quiet")
    assert "is not signed" in error_line(run, 1)
    assert _store_state(home) == [] and not (home / "run").exists()
    assert "names none" in error_line(art.mb("run", "local:1", "--verify-key", str(pub), "--dry-run"), 2)


def test_push_sign_of_a_signed_artifact_verifies_by_tag_and_digest(art):
    private, pub = art.key()
    ref = art.ref("by-digest")
    digest = art.build(ref)
    result = art.push(ref, "--sign", "--key", str(private))
    assert result["signed"] == [{"digest": digest, "mediaType": OCI, "identity": ref,
                                 "signature": f"{ref.rsplit(':', 1)[0]}:{_sig_tag(digest)}"}]
    assert art.verify(ref, pub).rc == 0
    assert art.verify(f"{ref.rsplit(':', 1)[0]}@{digest}", pub).rc == 0  # by digest: the repository decides
    other_tag = ref.rsplit(":", 1)[0] + ":2"
    art.mb("tag", ref, other_tag)
    art.push(other_tag)
    assert "it signs the identity" in error_line(art.verify(other_tag, pub), 1)  # a signature of :1 is not of :2


# -- no secret anywhere -----------------------------------------------------------------------------
def test_no_passphrase_or_key_bytes_in_any_output_log_or_file(art, cli, home, tmp_path, monkeypatch, registry):
    started = time.time()
    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))
    (tmp_path / "user-home").mkdir()
    private, pub = art.key()
    ref = art.ref("no-leak")
    digest = art.build(ref)
    outputs = []

    def mb(*args: str, **kw: Any) -> Any:
        run = art.mb(*args, **kw)
        outputs.append(run.out + run.err)
        return run

    assert mb("push", ref, "--sign", "--key", str(private), "--plain-http", "--progress", "plain", "--json",
              env=art.env).rc == 0
    assert mb("sign", ref, "--key", str(private), "--plain-http", "--recursive", "--json", env=art.env).rc == 0
    assert mb("verify", ref, "--key", str(pub), "--plain-http", "--json").rc == 0
    assert mb("pull", ref, "--verify-key", str(pub), "--plain-http", "--progress", "plain").rc == 0
    assert mb("sign", ref, "--key", str(private), "--plain-http", env={"COSIGN_PASSWORD": PASSPHRASE + "x"}).rc == 2
    for args in (["sign", ref, "--key", str(private), "--plain-http"],
                 ["sign", ref, "--key", str(private), "--plain-http", "--signer", "cosing"]):
        proc = cli(*args, env={"COSIGN_PASSWORD": PASSPHRASE, "HOME": str(tmp_path / "user-home")})
        outputs.append(proc.out + proc.err)
    proc = cli("sign", ref, "--key", str(private), "--plain-http", env={"COSIGN_PASSWORD": PASSPHRASE[::-1]})
    outputs.append(proc.out + proc.err)
    assert proc.rc == 2

    der = keys.decrypt(keys.pem_decode(private.read_bytes(), "k")[1], PASSPHRASE.encode(), "k")
    from cryptography.hazmat.primitives import serialization

    scalar = serialization.load_der_private_key(der, None).private_numbers().private_value.to_bytes(32, "big")
    pem_body = b"".join(private.read_bytes().splitlines()[1:-1])
    secrets = {"passphrase": PASSPHRASE.encode(), "reversed passphrase": PASSPHRASE[::-1].encode(),
               "key file body": pem_body[:48], "PKCS#8 DER": der, "base64 DER": base64.b64encode(der)[:48],
               "private scalar": scalar, "private scalar (hex)": scalar.hex().encode(),
               "private scalar (decimal)": str(int.from_bytes(scalar, "big")).encode()}
    for text in outputs:
        for name, secret in secrets.items():
            assert secret not in text.encode(), f"the {name} is in a command's output:\n{text}"
    assert digest in outputs[0]

    scanned = 0
    for root in (tmp_path, home, Path(os.environ["DOCKER_CONFIG"]), registry.root, registry.log):
        for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
            if not path.is_file() or path.is_symlink() or path == private:
                continue
            if root == registry.root and path.stat().st_mtime < started - 1:
                continue  # another test's blobs
            data = path.read_bytes()
            scanned += 1
            for name, secret in secrets.items():
                assert secret not in data, f"the {name} is in {path}"
    assert scanned > 20


def test_run_verify_key_serves_exactly_the_verified_digest(art):
    private, pub = art.key()
    ref = art.ref("run-signed")
    digest = art.build(ref)
    art.push(ref, "--sign", "--key", str(private))
    run = art.mb("run", ref, "--verify-key", str(pub), "--plain-http", "--dry-run", "--json", "--progress", "quiet")
    assert run.rc == 0, run.err
    plan = run.json()
    assert plan["digest"] == digest and plan["reference"].endswith(f"@{digest}")
    assert f"verified {ref}: {digest}" in run.err


MULTI = ("NAME tiny\nCONFIG *.json\nMODEL *.safetensors\n"
         "TARGET cuda cuda>=12.1 compute>=8.0\nQUANTIZE bfloat16\nTARGET cpu\nQUANTIZE float16\n")


def test_push_sign_of_an_index_signs_it_and_each_variant(art, tiny_llama):
    """As ``cosign sign --recursive``: a verifier that fetches one variant by its digest finds
    its signature too; pull --verify-key checks the index, then fetches a variant under it."""
    private, pub = art.key()
    (tiny_llama / "Modelfile").write_text(MULTI)
    ref = art.ref("multi")
    run = art.mb("build", "-f", "Modelfile", "-t", ref, "--progress", "quiet", "--json", cwd=tiny_llama)
    assert run.rc == 0, run.err
    index = run.json()["digest"]
    signed = art.push(ref, "--sign", "--key", str(private))["signed"]
    assert signed[0]["digest"] == index and signed[0]["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert len(signed) == 3 and {s["identity"] for s in signed} == {ref}
    repo = ref.rsplit(":", 1)[0]
    for entry in signed:
        assert art.verify(f"{repo}@{entry['digest']}", pub).rc == 0
    out = art.tmp / "cpu"
    pulled = art.mb("pull", ref, "--verify-key", str(pub), "--platform", "cpu", "-o", str(out), "--plain-http",
                    "--progress", "quiet", "--json")
    assert pulled.rc == 0, pulled.err
    assert pulled.json()["index"] == index and pulled.json()["digest"] in {s["digest"] for s in signed[1:]}


# -- with the build's own attestations (modelbuild.attest) ----------------------------------------------
def test_verify_require_accepts_the_attestations_a_signed_build_attaches(art, home, tiny_llama):
    """``build(attest=…, sign=…)`` with ``sign_statement`` and a cosign key, pushed with its
    referrers: what ``build --attest provenance,sbom --sign --key`` does; an unsigned build's
    statements are named as unsigned."""
    from modelbuild.signing.dsse import sign_statement
    from modelbuild.testing import build_with

    private, pub = art.key()
    key = keys.load_private_key(str(private), lambda: PASSPHRASE.encode())
    signed_ref, unsigned_ref = art.ref("attested-build"), art.ref("unsigned-build")
    (tiny_llama / "Modelfile").write_text("NAME tiny\nCONFIG *.json\nMODEL *.safetensors\n")
    built = build_with(tiny_llama / "Modelfile", home, tags=[signed_ref], attest=["provenance", "sbom"],
                       sign=lambda statement: sign_statement(statement, key))
    art.push(signed_ref, "--sign", "--key", str(private))
    run = art.verify(signed_ref, pub, "--require", "provenance,sbom", "--json")
    assert run.rc == 0, run.err
    assert run.json()["digest"] == built.digest
    assert [a["name"] for a in run.json()["attestations"]] == ["provenance", "sbom"]

    (tiny_llama / "README.md").write_text("another artifact\n")
    (tiny_llama / "Modelfile").write_text("NAME tiny\nCONFIG *.json\nMODEL *.safetensors\nDOC README.md\n")
    build_with(tiny_llama / "Modelfile", home, tags=[unsigned_ref], attest=["provenance"])
    art.push(unsigned_ref, "--sign", "--key", str(private))
    line = error_line(art.verify(unsigned_ref, pub, "--require", "provenance"), 1)
    assert "its provenance attestation is not accepted" in line and "an unsigned statement (no DSSE envelope)" in line


def test_modelbuild_signs_with_a_key_skopeo_generated(art, sigstore_skopeo, tmp_path):
    """``skopeo generate-sigstore-key`` (skopeo ≥ 1.10) writes cosign's encrypted key:
    modelbuild decrypts it, signs with it, and the signature verifies with skopeo's .pub."""
    (tmp_path / "pass").write_text(PASSPHRASE)
    proc = subprocess.run([sigstore_skopeo, "generate-sigstore-key", "--output-prefix", str(tmp_path / "sk"),
                           "--passphrase-file", str(tmp_path / "pass")], capture_output=True, text=True, timeout=120)
    if "unknown command" in proc.stderr:
        pytest.skip("this skopeo has no generate-sigstore-key (added in skopeo 1.10)")
    assert proc.returncode == 0, proc.stderr
    ref = art.ref("skopeo-key")
    art.build(ref)
    art.push(ref)
    assert art.mb("sign", ref, "--key", str(tmp_path / "sk.private"), "--plain-http", env=art.env).rc == 0
    assert art.verify(ref, tmp_path / "sk.pub").rc == 0
    wrong = art.mb("sign", ref, "--key", str(tmp_path / "sk.private"), "--plain-http", env={"COSIGN_PASSWORD": "no"})
    assert "wrong passphrase" in error_line(wrong, 2)
