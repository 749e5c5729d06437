"""DSSE envelopes (modelbuild.signing.dsse): the protocol's own test vector
(secure-systems-lab/dsse protocol.md, version 1.0.2, "Test Vectors"), and envelopes exchanged
both ways with securesystemslib, an independent implementation (PyPI)."""

from __future__ import annotations

import base64
import json

import pytest

from modelbuild.errors import VerificationError
from modelbuild.signing import dsse
from modelbuild.signing.keys import EcdsaSigningKey, EcdsaVerifyingKey
from support import require_module

# protocol.md's vector: ECDSA over NIST P-256 and SHA-256, deterministic (RFC 6979), the
# signature as the raw concatenation of r and s
VECTOR_TYPE = "http://example.com/HelloWorld"
VECTOR_BODY = b"hello world"
VECTOR_PAE = b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
VECTOR_X = 46950820868899156662930047687818585632848591499744589407958293238635476079160
VECTOR_Y = 5640078356564379163099075877009565129882514886557779369047442380624545832820
VECTOR_D = 97358161215184420915383655311931858321456579547487070936769975997791359926199
VECTOR_SIG = "A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGAHTVeCUjW2JIZA=="


def _vector_keys() -> tuple[EcdsaSigningKey, EcdsaVerifyingKey]:
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.derive_private_key(VECTOR_D, ec.SECP256R1())
    numbers = private.public_key().public_numbers()
    assert (numbers.x, numbers.y) == (VECTOR_X, VECTOR_Y)
    return EcdsaSigningKey(private), EcdsaVerifyingKey(private.public_key())


def _der(raw: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def test_pae_of_the_protocol_vector():
    assert dsse.pae(VECTOR_TYPE, VECTOR_BODY) == VECTOR_PAE
    assert dsse.pae("", b"") == b"DSSEv1 0  0 "
    assert dsse.pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"  # lengths in bytes, not characters


def test_the_protocol_vector_signature_verifies_through_an_envelope():
    """The vector's signature (raw r‖s; modelbuild's and cosign's are DER) over the PAE."""
    _, public = _vector_keys()
    raw = base64.b64decode(VECTOR_SIG)
    assert public.verify(_der(raw), VECTOR_PAE)
    envelope = json.dumps({"payload": "aGVsbG8gd29ybGQ=", "payloadType": VECTOR_TYPE,
                           "signatures": [{"sig": base64.b64encode(_der(raw)).decode()}]}).encode()
    assert dsse.verify_envelope(envelope, public, payload_type=VECTOR_TYPE) == VECTOR_BODY


def test_signing_the_vector_deterministically_gives_the_vectors_signature():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    try:
        algorithm = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    except TypeError:
        pytest.skip("this cryptography has no deterministic ECDSA (cryptography >= 44 with OpenSSL >= 3.2)")
    private = ec.derive_private_key(VECTOR_D, ec.SECP256R1())
    r, s = decode_dss_signature(private.sign(dsse.pae(VECTOR_TYPE, VECTOR_BODY), algorithm))
    assert base64.b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode() == VECTOR_SIG


def test_sign_statement_round_trip_and_envelope_shape():
    signing, public = _vector_keys()
    statement = json.dumps({"_type": "https://in-toto.io/Statement/v1", "subject": [],
                            "predicateType": "https://slsa.dev/provenance/v1", "predicate": {}}).encode()
    envelope = dsse.sign_statement(statement, signing)
    doc = json.loads(envelope)
    assert list(doc) == ["payloadType", "payload", "signatures"]
    assert doc["payloadType"] == "application/vnd.in-toto+json"
    assert base64.b64decode(doc["payload"]) == statement
    assert [list(s) for s in doc["signatures"]] == [["keyid", "sig"]] and doc["signatures"][0]["keyid"] == ""
    assert dsse.verify_envelope(envelope, public) == statement


def _tampered(envelope: bytes, **changes) -> bytes:
    doc = json.loads(envelope)
    doc.update(changes)
    return json.dumps(doc).encode()


def test_verification_refuses_each_kind_of_tampering():
    signing, public = _vector_keys()
    from cryptography.hazmat.primitives.asymmetric import ec

    other = EcdsaVerifyingKey(ec.generate_private_key(ec.SECP256R1()).public_key())
    envelope = dsse.sign_statement(b'{"_type":"x"}', signing)
    cases = {
        "another key": (envelope, other, "its signature does not verify with the key"),
        "another payload": (_tampered(envelope, payload=base64.b64encode(b'{"_type":"y"}').decode()), public,
                            "does not verify"),
        "another type, same bytes": (_tampered(envelope, payloadType="application/json"), public,
                                     "does not verify"),  # PAE binds the type: no replay as another type
        "not JSON": (b"{", public, "the envelope is not JSON"),
        "no signatures": (_tampered(envelope, signatures=[]), public, "the envelope has no signatures"),
        "bad base64": (_tampered(envelope, payload="***"), public, "the envelope's payload is not base64"),
    }
    for name, (data, key, message) in cases.items():
        with pytest.raises(VerificationError) as info:
            dsse.verify_envelope(data, key)
        assert message in info.value.message, name


def test_a_wrong_payload_type_is_refused_after_the_signature_checks():
    signing, public = _vector_keys()
    envelope = dsse.sign_envelope(b"x", "application/json", [signing])
    with pytest.raises(VerificationError, match="its payload type is 'application/json', not "
                                                "'application/vnd.in-toto\\+json'"):
        dsse.verify_envelope(envelope, public)


def test_url_safe_base64_is_accepted_as_the_protocol_requires():
    signing, public = _vector_keys()
    body = bytes(range(250, 256)) * 3  # encodes with '+' and '/' in standard base64
    envelope = json.loads(dsse.sign_envelope(body, "t", [signing]))
    envelope["payload"] = base64.urlsafe_b64encode(body).decode().rstrip("=")
    envelope["signatures"][0]["sig"] = envelope["signatures"][0]["sig"].replace("+", "-").replace("/", "_")
    assert dsse.verify_envelope(json.dumps(envelope).encode(), public, payload_type="t") == body


# -- securesystemslib, both ways -----------------------------------------------------------------
def test_securesystemslib_verifies_what_modelbuild_signs():
    require_module("securesystemslib", "pip install securesystemslib; the test extras include it")
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import SSlibKey

    signing, _ = _vector_keys()
    statement = b'{"_type":"https://in-toto.io/Statement/v1"}'
    envelope = Envelope.from_dict(json.loads(dsse.sign_statement(statement, signing)))
    # cosign's envelopes, and modelbuild's, carry an empty keyid; securesystemslib matches keyids first
    key = SSlibKey.from_dict("", SSlibKey.from_crypto(signing._key.public_key()).to_dict())
    assert set(envelope.verify([key], 1)) == {""}
    assert envelope.payload == statement and envelope.payload_type == dsse.IN_TOTO


def test_modelbuild_verifies_what_securesystemslib_signs():
    require_module("securesystemslib", "pip install securesystemslib; the test extras include it")
    from cryptography.hazmat.primitives.asymmetric import ec
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner

    private = ec.generate_private_key(ec.SECP256R1())
    statement = b'{"_type":"https://in-toto.io/Statement/v1","predicateType":"https://cyclonedx.org/bom"}'
    envelope = Envelope(statement, dsse.IN_TOTO, {})
    envelope.sign(CryptoSigner(private))
    data = json.dumps(envelope.to_dict()).encode()
    assert dsse.verify_envelope(data, EcdsaVerifyingKey(private.public_key())) == statement
    other = EcdsaVerifyingKey(ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(VerificationError):
        dsse.verify_envelope(data, other)
