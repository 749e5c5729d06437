"""DSSE envelopes (secure-systems-lab/dsse, protocol 1.0.2): signed in-toto statements.

An attestation (SLSA provenance, an SBOM) is an in-toto Statement, signed as DSSE prescribes:
the signature covers the *pre-authentication encoding* of the payload type and the payload,
never the payload alone, so a signature over one type of document cannot be replayed as
another::

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

with ``LEN`` the decimal byte length, no leading zeros. The envelope is JSON::

    {"payloadType": "application/vnd.in-toto+json", "payload": BASE64(body),
     "signatures": [{"keyid": "", "sig": BASE64(signature)}]}

as cosign writes it (an empty ``keyid``; ``keyid`` is a hint that must not decide anything).
Standard and URL-safe base64 are both accepted on reading, as the protocol requires. The
statement handed back by :func:`verify_envelope` is the exact byte string whose signature
verified: never re-read from the envelope after the check.

``sign_statement(statement_bytes, key)`` is what ``build --attest … --sign`` calls; *key* is
any :class:`modelbuild.api.SigningKey` (the cosign signer's ECDSA P-256 keys, a plugin's).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Any

from modelbuild.api._signers import SigningKey, VerifyingKey
from modelbuild.errors import VerificationError

IN_TOTO = "application/vnd.in-toto+json"
ENVELOPE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
MAX_ENVELOPE = 16 << 20


def pae(payload_type: str | bytes, body: bytes) -> bytes:
    """The pre-authentication encoding the signature covers."""
    kind = payload_type.encode() if isinstance(payload_type, str) else payload_type
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def sign_envelope(body: bytes, payload_type: str, keys: Iterable[SigningKey]) -> bytes:
    """An envelope of *body* signed by each of *keys*."""
    message = pae(payload_type, body)
    signatures = [{"keyid": key.keyid or "", "sig": base64.b64encode(key.sign(message)).decode()} for key in keys]
    if not signatures:
        raise ValueError("an envelope needs at least one signature")
    return json.dumps({"payloadType": payload_type, "payload": base64.b64encode(body).decode(),
                       "signatures": signatures}, separators=(",", ":")).encode()


def sign_statement(statement_bytes: bytes, signer: SigningKey) -> bytes:
    """An in-toto statement's bytes in a DSSE envelope signed by *signer* (a loaded key)."""
    return sign_envelope(statement_bytes, IN_TOTO, [signer])


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise VerificationError(f"the envelope's {what} is not a string")
    try:
        padded = value + "=" * (-len(value) % 4)
        if "-" in value or "_" in value:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError(f"the envelope's {what} is not base64") from None


def parse_envelope(data: bytes) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    """``(payloadType, payload, [(keyid, signature)])`` of an envelope, undecided; a
    VerificationError for one that is not an envelope."""
    if len(data) > MAX_ENVELOPE:
        raise VerificationError(f"the envelope is {len(data)} bytes, more than {MAX_ENVELOPE}")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise VerificationError("the envelope is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("payloadType"), str):
        raise VerificationError("the envelope has no payloadType")
    signatures = doc.get("signatures")
    if not isinstance(signatures, list) or not signatures or not all(isinstance(s, dict) for s in signatures):
        raise VerificationError("the envelope has no signatures")
    payload = _b64(doc.get("payload"), "payload")
    sigs = [(str(s.get("keyid") or ""), _b64(s.get("sig"), "signature")) for s in signatures]
    return doc["payloadType"], payload, sigs


def verify_envelope(data: bytes, key: VerifyingKey, *, payload_type: str = IN_TOTO) -> bytes:
    """The payload of envelope *data* once a signature of it verifies with *key* and its type
    is *payload_type*; a one-line VerificationError otherwise."""
    kind, payload, signatures = parse_envelope(data)
    message = pae(kind, payload)
    if not any(key.verify(sig, message) for _keyid, sig in signatures):
        n = len(signatures)
        raise VerificationError(f"{'its signature does' if n == 1 else f'none of its {n} signatures does'} "
                                "not verify with the key")
    if kind != payload_type:
        raise VerificationError(f"its payload type is {kind[:80]!r}, not {payload_type!r}")
    return payload


__all__ = ["ENVELOPE_MEDIA_TYPE", "IN_TOTO", "pae", "parse_envelope", "sign_envelope", "sign_statement",
           "verify_envelope"]
