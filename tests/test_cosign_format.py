"""cosign's signature format (modelbuild.signing.cosign, .signer): the payload, identities,
the ``.sig`` manifest, and signatures that cosign and containers-image (skopeo's library) made
verified by modelbuild (tests/data/signing/README.md names them). No registry here: the
signer works on a :class:`modelbuild.api.SignatureRepository`, given one in memory."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from modelbuild.api import SignatureRepository, Signer, Subject, cosign_signer
from modelbuild.errors import VerificationError
from modelbuild.signing import cosign, keys
from support import REPO

DATA = REPO / "tests" / "data" / "signing"
FIXTURE_DIGEST = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00"
OCI = "application/vnd.oci.image.manifest.v1+json"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class MemoryRepository:
    """A repository in memory: manifests by tag and by digest, blobs by digest."""

    def __init__(self, name: str = "registry.example.com/team/model") -> None:
        self.name = name
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.blobs: dict[str, bytes] = {}

    def manifest(self, ref: str) -> tuple[bytes, str, str] | None:
        found = self.manifests.get(ref)
        return None if found is None else (found[0], found[1], _sha(found[0]))

    def blob(self, digest: str, size: int) -> bytes:
        data = self.blobs[digest]
        assert len(data) == size
        return data

    def put_blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        self.blobs[_sha(data)] = data
        return {"mediaType": media_type, "digest": _sha(data), "size": len(data)}

    def put_manifest(self, ref: str, data: bytes, media_type: str) -> str:
        self.manifests[ref] = self.manifests[_sha(data)] = (data, media_type)
        return _sha(data)

    def referrers(self, digest: str) -> list[dict[str, Any]]:
        return []

    def put_referrer(self, subject: str, data: bytes, media_type: str) -> str:
        return self.put_manifest(_sha(data), data, media_type)


def _attach(repo: MemoryRepository, digest: str, *signature_files: str) -> None:
    """What cosign or skopeo would have in the registry: the fixtures' payloads as layers of
    the ``.sig`` manifest, their signature annotations kept."""
    layers = []
    for name in signature_files:
        sig = json.loads((DATA / name).read_text())
        blob = repo.put_blob(base64.b64decode(sig["payload"]), sig["mimeType"])
        layers.append({**blob, "annotations": sig["annotations"]})
    repo.put_manifest(cosign.signature_tag(digest), cosign.signature_manifest(layers, repo.put_blob), OCI)


@pytest.fixture
def fixture_key() -> keys.EcdsaVerifyingKey:
    return keys.load_public_key(str(DATA / "containers-image-cosign.pub"))


def test_the_fixture_manifest_is_the_signed_digest():
    assert _sha((DATA / "containers-image-manifest.json").read_bytes()) == FIXTURE_DIGEST


def test_a_signature_cosign_made_verifies(fixture_key):
    """cosign's identity is the repository alone (no tag) and its ``optional`` is null."""
    repo = MemoryRepository()
    _attach(repo, FIXTURE_DIGEST, "containers-image-valid.json")
    subject = Subject(FIXTURE_DIGEST, 428, "application/vnd.docker.distribution.manifest.v2+json",
                      "192.168.64.2:5000/cosign-signed-single-sample:latest")
    (verified,) = cosign_signer().verify(repo, subject, fixture_key)
    assert verified.identity == "192.168.64.2:5000/cosign-signed-single-sample"
    assert verified.digest == FIXTURE_DIGEST and verified.details == {}


def test_a_signature_skopeo_made_verifies(fixture_key):
    """containers-image's signer (what ``skopeo copy --sign-by-sigstore-private-key`` runs):
    identity with its tag, ``optional`` with creator and timestamp."""
    repo = MemoryRepository()
    _attach(repo, FIXTURE_DIGEST, "containers-image-valid-with-tag.json")
    subject = Subject(FIXTURE_DIGEST, 428, OCI, "192.168.64.2:5000/skopeo-signed:tag")
    (verified,) = cosign_signer().verify(repo, subject, fixture_key)
    assert verified.identity == "192.168.64.2:5000/skopeo-signed:tag"
    assert verified.details["creator"].startswith("containers/image ")
    # the same signature is no signature of another tag, nor of another repository
    for other in ("192.168.64.2:5000/skopeo-signed:other", "192.168.64.2:5000/elsewhere:tag"):
        with pytest.raises(VerificationError, match="it signs the identity '192.168.64.2:5000/skopeo-signed:tag'"):
            cosign_signer().verify(repo, Subject(FIXTURE_DIGEST, 428, OCI, other), fixture_key)


def test_fixture_signatures_fail_for_another_digest_or_another_key(fixture_key):
    repo = MemoryRepository()
    other_digest = "sha256:" + "1" * 64
    _attach(repo, other_digest, "containers-image-valid.json")  # a signature moved to another subject
    with pytest.raises(VerificationError, match=f"signature 0: it signs {FIXTURE_DIGEST}, not {other_digest}"):
        cosign_signer().verify(repo, Subject(other_digest, 1, OCI, "192.168.64.2:5000/x:1"), fixture_key)
    _attach(repo, FIXTURE_DIGEST, "containers-image-unknown-key.json")
    with pytest.raises(VerificationError, match="it does not verify with the key"):
        cosign_signer().verify(repo, Subject(FIXTURE_DIGEST, 1, OCI, "192.168.64.2:5000/x:1"), fixture_key)


def test_one_good_signature_among_bad_ones_is_enough(fixture_key):
    repo = MemoryRepository()
    _attach(repo, FIXTURE_DIGEST, "containers-image-unknown-key.json", "containers-image-valid.json")
    subject = Subject(FIXTURE_DIGEST, 1, OCI, "192.168.64.2:5000/cosign-signed-single-sample:1")
    (verified,) = cosign_signer().verify(repo, subject, fixture_key)
    assert verified.location.endswith(".sig layer 1")


# -- writing -----------------------------------------------------------------------------------
def _key() -> keys.EcdsaSigningKey:
    return keys.load_private_key(str(DATA / "cosign-sigstore-type.key"), lambda: b"hello")


def test_sign_writes_what_containers_image_reads_and_appends():
    repo = MemoryRepository()
    digest = "sha256:" + "a" * 64
    subject = Subject(digest, 10, OCI, "registry.example.com/team/model:1")
    signer: Signer = cosign_signer()
    assert isinstance(repo, SignatureRepository)
    tag = signer.sign(repo, subject, _key())
    assert tag == "sha256-" + "a" * 64 + ".sig"
    data, media_type, _ = repo.manifest(tag)
    doc = json.loads(data)
    assert media_type == OCI and doc["mediaType"] == OCI and doc["schemaVersion"] == 2
    assert doc["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    config = json.loads(repo.blobs[doc["config"]["digest"]])
    assert config == {"architecture": "", "os": "", "config": {},
                      "rootfs": {"type": "layers", "diff_ids": [doc["layers"][0]["digest"]]}}
    (layer,) = doc["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    assert set(layer["annotations"]) == {"dev.cosignproject.cosign/signature"}
    payload = json.loads(repo.blobs[layer["digest"]])
    assert payload["critical"] == {"identity": {"docker-reference": "registry.example.com/team/model:1"},
                                   "image": {"docker-manifest-digest": digest},
                                   "type": "cosign container image signature"}
    assert set(payload["optional"]) == {"creator", "timestamp"} and isinstance(payload["optional"]["timestamp"], int)
    # a second key appends; the first signature stays
    from cryptography.hazmat.primitives.asymmetric import ec

    second = keys.EcdsaSigningKey(ec.generate_private_key(ec.SECP256R1()))
    signer.sign(repo, subject, second)
    assert len(json.loads(repo.manifest(tag)[0])["layers"]) == 2
    assert signer.verify(repo, subject, _key().public())[0].location.endswith("layer 0")
    assert signer.verify(repo, subject, second.public())[0].location.endswith("layer 1")


def test_no_signature_and_no_signature_layer_are_named():
    repo = MemoryRepository()
    digest = "sha256:" + "b" * 64
    subject = Subject(digest, 1, OCI, "registry.example.com/team/model:1")
    with pytest.raises(VerificationError, match=f"@{digest} is not signed: the repository has no sha256-b+\\.sig"):
        cosign_signer().verify(repo, subject, _key().public())
    repo.put_manifest(cosign.signature_tag(digest), cosign.signature_manifest([], repo.put_blob), OCI)
    with pytest.raises(VerificationError, match="holds no application/vnd.dev.cosign.simplesigning.v1\\+json layer"):
        cosign_signer().verify(repo, subject, _key().public())


# -- the payload, read strictly ------------------------------------------------------------------
def _payload(**critical_changes: Any) -> bytes:
    doc = json.loads(cosign.make_payload("sha256:" + "c" * 64, "r.example.com/a:1", timestamp=1))
    doc["critical"].update(critical_changes)
    return json.dumps(doc).encode()


def test_payload_round_trip():
    parsed = cosign.parse_payload(cosign.make_payload("sha256:" + "c" * 64, "r.example.com/a:1", creator="me",
                                                      timestamp=7))
    assert parsed == {"digest": "sha256:" + "c" * 64, "reference": "r.example.com/a:1",
                      "optional": {"creator": "me", "timestamp": 7}}


@pytest.mark.parametrize("data, message", [
    (_payload(type="something else"), "type is 'something else'"),
    (_payload(extra=1), "critical section has"),
    (_payload(image={"docker-manifest-digest": "sha256:" + "c" * 64, "more": 1}), "critical.image has"),
    (b'{"critical": {}, "optional": null, "x": 1}', "top level has"),
    (b'{"critical": {}, "critical": {}, "optional": null}', "repeats a key"),
    (b'[1]', "top level has list"),
    (b'{"critical":{"identity":{"docker-reference":"a"},"image":{"docker-manifest-digest":"d"},'
     b'"type":"cosign container image signature"},"optional":{"timestamp":1.5}}', "timestamp is not an integer"),
    (b"\xff", "is not JSON"),
])
def test_payload_is_read_as_strictly_as_containers_image_reads_it(data, message):
    with pytest.raises(VerificationError, match=message):
        cosign.parse_payload(data)


@pytest.mark.parametrize("signed, wanted, ok", [
    ("r.example.com/a:1", "r.example.com/a:1", True),
    ("r.example.com/a:1", "r.example.com/a:2", False),  # a signature of :1 is no signature of :2
    ("r.example.com/a", "r.example.com/a:2", True),  # cosign's identity: the repository alone
    ("r.example.com/a:1", "r.example.com/a@sha256:" + "d" * 64, True),  # by digest: the repository decides
    ("r.example.com/b:1", "r.example.com/a:1", False),
    ("r2.example.com/a:1", "r.example.com/a:1", False),
    ("ubuntu:22.04", "docker.io/library/ubuntu:22.04", True),  # docker's normalisation
    ("not a reference", "r.example.com/a:1", False),
])
def test_identity_matching(signed, wanted, ok):
    assert cosign.identity_matches(signed, wanted) is ok


def test_signature_tag():
    assert cosign.signature_tag("sha256:" + "e" * 64) == "sha256-" + "e" * 64 + ".sig"
