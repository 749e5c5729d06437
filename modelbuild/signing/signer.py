"""The ``cosign`` signer: cosign's key-based signatures, as a :class:`modelbuild.api.Signer`.

The built-in ``cosign`` plugin registers the object :func:`modelbuild.api.cosign_signer`
returns (as the ``modelfile`` plugin registers the core's frontend); the format is
:mod:`modelbuild.signing.cosign`, the keys :mod:`modelbuild.signing.keys`.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from modelbuild.api._signers import SignatureRepository, SigningKey, Subject, Verified, VerifyingKey
from modelbuild.errors import BuildError, ModelbuildError, VerificationError
from modelbuild.oci import mediatypes as mt
from modelbuild.signing import cosign, keys


def _signature_manifest(repository: SignatureRepository, tag: str) -> tuple[list[dict[str, Any]], str] | None:
    """The layers of the manifest under *tag*, and its digest; None when there is none."""
    found = repository.manifest(tag)
    if found is None:
        return None
    data, media_type, digest = found
    try:
        doc = json.loads(data)
    except ValueError:
        raise VerificationError(f"{repository.name}:{tag} is not JSON") from None
    if doc.get("mediaType", media_type) != mt.OCI_MANIFEST:
        raise VerificationError(f"{repository.name}:{tag} is a {str(doc.get('mediaType', media_type))[:80]!r}, "
                                "not an OCI image manifest of signatures")
    layers = doc.get("layers")
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise VerificationError(f"{repository.name}:{tag} has no list of layers")
    return layers, digest


class CosignSigner:
    """Signs a manifest digest with an ECDSA P-256 key in cosign's format; verifies the
    signatures under its ``sha256-<hex>.sig`` tag."""

    name = "cosign"

    def load_signing_key(self, path: str, *, passphrase: keys.PassphraseFn) -> keys.EcdsaSigningKey:
        return keys.load_private_key(path, passphrase)

    def load_verifying_key(self, path: str) -> keys.EcdsaVerifyingKey:
        return keys.load_public_key(path)

    def sign(self, repository: SignatureRepository, subject: Subject, key: SigningKey) -> str:
        """Append a signature of *subject* to its ``.sig`` manifest; the tag written."""
        if not subject.reference:
            raise BuildError(f"{repository.name}@{subject.digest}: a signature needs the reference it is signed as")
        payload = cosign.make_payload(subject.digest, subject.reference)
        annotations = {cosign.SIGNATURE_ANNOTATION: base64.b64encode(key.sign(payload)).decode()}
        tag = cosign.signature_tag(subject.digest)
        existing = _signature_manifest(repository, tag)
        layers = list(existing[0]) if existing else []
        blob = repository.put_blob(payload, cosign.SIMPLESIGNING)
        if not any(cosign.same_layer(layer, blob["digest"], blob["size"], annotations) for layer in layers):
            layers.append({"mediaType": cosign.SIMPLESIGNING, "digest": blob["digest"], "size": blob["size"],
                           "annotations": annotations})
        repository.put_manifest(tag, cosign.signature_manifest(layers, repository.put_blob), mt.OCI_MANIFEST)
        return tag

    def verify(self, repository: SignatureRepository, subject: Subject, key: VerifyingKey) -> list[Verified]:
        """The signatures of *subject* that *key* made, for its digest and a matching
        identity; a VerificationError saying why when there is none."""
        tag = cosign.signature_tag(subject.digest)
        where = f"{repository.name}@{subject.digest}"
        found = _signature_manifest(repository, tag)
        if found is None:
            raise VerificationError(f"{where} is not signed: the repository has no {tag}")
        layers, _digest = found
        signatures = [(i, layer) for i, layer in enumerate(layers) if layer.get("mediaType") == cosign.SIMPLESIGNING]
        if not signatures:
            raise VerificationError(f"{where} is not signed: {tag} holds no {cosign.SIMPLESIGNING} layer")
        verified: list[Verified] = []
        reasons: list[str] = []
        for index, layer in signatures[:cosign.MAX_SIGNATURES]:
            reason = self._check(repository, subject, key, layer)
            if isinstance(reason, str):
                reasons.append(f"signature {index}: {reason}")
            else:
                verified.append(Verified(self.name, reason["digest"], reason["reference"],
                                         keyid=getattr(key, "fingerprint", key.keyid), location=f"{tag} layer {index}",
                                         details=dict(reason["optional"])))
        if verified:
            return verified
        if len(reasons) == 1:
            raise VerificationError(f"{where}: {reasons[0]}")
        raise VerificationError(f"{where}: none of its {len(reasons)} signatures is accepted: {'; '.join(reasons)}")

    @staticmethod
    def _check(repository: SignatureRepository, subject: Subject, key: VerifyingKey,
               layer: dict[str, Any]) -> str | dict[str, Any]:
        """The payload of a signature layer that verifies for *subject*, or why it does not."""
        signature = cosign.decode_signature(layer)
        if signature is None:
            return f"no base64 {cosign.SIGNATURE_ANNOTATION} annotation"
        size, digest = layer.get("size"), layer.get("digest")
        if not isinstance(size, int) or not 0 <= size <= cosign.MAX_PAYLOAD or not isinstance(digest, str):
            return f"its payload declares {size!r} bytes, not at most {cosign.MAX_PAYLOAD}"
        try:
            payload = repository.blob(digest, size)
        except ModelbuildError as exc:  # one unreadable signature does not hide a good one
            return f"its payload cannot be read: {exc.render()}"
        if not key.verify(signature, payload):
            return "it does not verify with the key (another key made it, or it was altered)"
        try:
            parsed = cosign.parse_payload(payload)
        except VerificationError as exc:
            return exc.message
        if parsed["digest"] != subject.digest:
            return f"it signs {parsed['digest'][:80]}, not {subject.digest}"
        if subject.reference and not cosign.identity_matches(parsed["reference"], subject.reference):
            return f"it signs the identity {parsed['reference'][:200]!r}, not {subject.reference!r}"
        return parsed


__all__ = ["CosignSigner"]
