"""Signing and verifying artifacts in a registry: what ``sign``, ``verify``, ``push --sign``
and ``pull``/``run --verify-key`` share.

Verification is a policy over one manifest digest, the *subject*:

1. the signer (``cosign`` unless ``--signer`` names another) finds a signature of the
   subject that verifies with the public key, whose payload names the subject's digest and an
   identity matching the reference asked for (:meth:`modelbuild.api.Signer.verify`);
2. for each attestation ``--require`` names (``provenance``, ``sbom``): a referrer of the
   subject (the referrers API, else the ``sha256-<hex>`` tag schema; cosign's
   ``sha256-<hex>.att`` tag is read too) with a DSSE envelope layer
   (``application/vnd.dsse.envelope.v1+json``) whose ``in-toto.io/predicate-type``
   annotation is the attestation's predicate type, whose signature verifies with the same
   key, and whose in-toto statement has that ``predicateType`` and names the subject's
   sha256 among its ``subject`` digests.

Anything missing or wrong is a :class:`~modelbuild.errors.VerificationError` (exit 1), one
line. ``pull``/``run`` verify the digest the tag names, then fetch that digest, never the tag
again: what is materialised is what was verified.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from modelbuild.api._signers import Signer, SigningKey, Subject, Verified, VerifyingKey
from modelbuild.errors import ModelbuildError, UsageError, VerificationError
from modelbuild.oci import mediatypes as mt
from modelbuild.oci.registry import Registry
from modelbuild.signing import dsse
from modelbuild.signing.repository import RegistryRepository

DEFAULT_SIGNER = "cosign"
PREDICATE_ANNOTATION = "in-toto.io/predicate-type"
COSIGN_PREDICATE_ANNOTATION = "predicateType"  # cosign's .att layers
STATEMENT_TYPES = ("https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1")
ATTESTATIONS = {
    "provenance": "https://slsa.dev/provenance/v1",
    "sbom": "https://cyclonedx.org/bom",
}
MAX_REFERRERS_READ = 64


# -- choosing things -----------------------------------------------------------------------
def parse_require(values: Iterable[str] | None) -> tuple[str, ...]:
    """``--require provenance,sbom`` (repeatable) → the attestation names, in order, once
    each; an unknown one is a usage error naming the known ones."""
    import difflib

    names: list[str] = []
    for value in values or ():
        for name in filter(None, (part.strip() for part in value.split(","))):
            if name not in ATTESTATIONS:
                close = difflib.get_close_matches(name, list(ATTESTATIONS), n=1)
                raise UsageError(f"--require {name}: not an attestation modelbuild checks",
                                 hint=f"did you mean {close[0]}?" if close else f"one of {', '.join(ATTESTATIONS)}")
            if name not in names:
                names.append(name)
    return tuple(names)


def get_signer(name: str | None = None) -> Signer:
    """The signer plugin called *name* (default ``cosign``)."""
    from modelbuild.plugins import make_plugin_manager

    return make_plugin_manager().signers.get(name or DEFAULT_SIGNER)


def load_signing_key(signer: Signer, path: str) -> SigningKey:
    """The private key at *path*, its passphrase from ``COSIGN_PASSWORD`` or the terminal."""
    from modelbuild.signing.keys import passphrase_for

    return signer.load_signing_key(path, passphrase=passphrase_for(path))


def subject_of(registry: Registry, repo: str, ref: str, reference: str) -> tuple[Subject, dict[str, Any]]:
    """The manifest ``repo:ref`` names, as a Subject signed or verified as *reference*, and its
    document."""
    data, media_type, digest = registry.get_manifest(repo, ref)  # verified and validated
    doc = json.loads(data)
    return Subject(digest=digest, size=len(data), media_type=doc.get("mediaType") or media_type,
                   reference=reference), doc


def children(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifests an index lists (none for a manifest)."""
    manifests = doc.get("manifests")
    return [m for m in manifests if isinstance(m, dict)] if isinstance(manifests, list) else []


# -- signing ---------------------------------------------------------------------------------
def sign_subjects(registry: Registry, repo: str, subjects: Sequence[Subject], key: SigningKey,
                  signer: Signer) -> list[dict[str, Any]]:
    """Sign each subject in ``registry/repo``; one result per subject."""
    repository = RegistryRepository(registry, repo)
    out = []
    for subject in subjects:
        where = signer.sign(repository, subject, key)
        out.append({"digest": subject.digest, "mediaType": subject.media_type, "identity": subject.reference,
                    "signature": f"{repository.name}:{where}" if not where.startswith("sha256:")
                    else f"{repository.name}@{where}"})
    return out


def sign_reference(registry: Registry, repo: str, ref: str, reference: str, key: SigningKey, signer: Signer, *,
                   recursive: bool = False) -> list[dict[str, Any]]:
    """Sign what ``repo:ref`` names (and, *recursive*, each manifest of an index) as
    *reference*."""
    subject, doc = subject_of(registry, repo, ref, reference)
    subjects = [subject]
    if recursive:
        for entry in children(doc):
            subjects.append(Subject(entry["digest"], int(entry.get("size") or 0), entry.get("mediaType") or "",
                                    reference))
    return sign_subjects(registry, repo, subjects, key, signer)


# -- verifying -------------------------------------------------------------------------------
def verify_reference(registry: Registry, repo: str, ref: str, reference: str, key: VerifyingKey, signer: Signer,
                     require: Sequence[str] = ()) -> dict[str, Any]:
    """Verify what ``repo:ref`` names, as the module docstring says; the result document
    (``verified: true``), or a VerificationError."""
    subject, _doc = subject_of(registry, repo, ref, reference)
    return verify_subject(registry, repo, subject, key, signer, require)


def verify_subject(registry: Registry, repo: str, subject: Subject, key: VerifyingKey, signer: Signer,
                   require: Sequence[str] = ()) -> dict[str, Any]:
    repository = RegistryRepository(registry, repo)
    verified = signer.verify(repository, subject, key)
    if not verified:  # a signer must raise rather than return nothing; never trust an empty list
        raise VerificationError(f"{repository.name}@{subject.digest}: no signature verifies")
    attestations = [check_attestation(repository, subject, key, name) for name in require]
    return {
        "reference": subject.reference,
        "digest": subject.digest,
        "mediaType": subject.media_type,
        "verified": True,
        "signer": signer.name,
        "key": getattr(key, "fingerprint", "") or key.keyid,
        "signatures": [_shown(v) for v in verified],
        "attestations": attestations,
    }


def _shown(v: Verified) -> dict[str, Any]:
    out = {"identity": v.identity, "digest": v.digest, "location": v.location}
    out.update({k: v.details[k] for k in ("creator", "timestamp") if k in v.details})
    return out


def check_attestation(repository: RegistryRepository, subject: Subject, key: VerifyingKey,
                      name: str) -> dict[str, Any]:
    """The referrer holding a verified *name* attestation of *subject* (see the module
    docstring); a VerificationError saying what was found instead."""
    predicate = ATTESTATIONS[name]
    where = f"{repository.name}@{subject.digest}"
    reasons: list[str] = []
    for location, layers in _attestation_layers(repository, subject):
        for index, layer in enumerate(layers):
            annotations = layer.get("annotations") if isinstance(layer.get("annotations"), dict) else {}
            declared = annotations.get(PREDICATE_ANNOTATION, annotations.get(COSIGN_PREDICATE_ANNOTATION))
            if layer.get("mediaType") == dsse.IN_TOTO and declared == predicate:
                reasons.append(f"{location} layer {index}: an unsigned statement (no DSSE envelope)")
                continue
            if layer.get("mediaType") != dsse.ENVELOPE_MEDIA_TYPE or (declared is not None and declared != predicate):
                continue
            reason = _check_envelope(repository, subject, key, predicate, layer)
            if reason is None:
                return {"name": name, "predicateType": predicate, "referrer": location, "layer": index}
            reasons.append(f"{location} layer {index}: {reason}")
    if not reasons:
        raise VerificationError(f"{where} has no {name} attestation ({predicate})",
                                hint="build with --attest and --sign, and push its referrers")
    raise VerificationError(f"{where}: its {name} attestation is not accepted: {'; '.join(reasons[:4])}")


def _attestation_layers(repository: RegistryRepository, subject: Subject) -> Iterable[tuple[str, list[dict]]]:
    """``(where, layers)`` of each referrer of *subject*, then of cosign's ``.att`` manifest."""
    listed = repository.referrers(subject.digest)[:MAX_REFERRERS_READ]
    for entry in listed:
        if entry.get("mediaType", mt.OCI_MANIFEST) != mt.OCI_MANIFEST:
            continue
        try:
            found = repository.manifest(entry["digest"])
        except ModelbuildError:
            continue  # listed but unreadable: not an attestation anyone can check
        if found is None:
            continue
        try:
            doc = json.loads(found[0])
        except ValueError:
            continue
        if (doc.get("subject") or {}).get("digest") != subject.digest:
            continue  # listed under the subject, yet naming another: not an attestation of it
        layers = doc.get("layers")
        if isinstance(layers, list):
            yield found[2], [layer for layer in layers if isinstance(layer, dict)]
    att = subject.digest.replace(":", "-", 1) + ".att"
    try:
        found = repository.manifest(att)
    except ModelbuildError:
        found = None
    if found is not None:
        try:
            layers = json.loads(found[0]).get("layers")
        except (ValueError, AttributeError):
            layers = None
        if isinstance(layers, list):
            yield f"{repository.name}:{att}", [layer for layer in layers if isinstance(layer, dict)]


def _check_envelope(repository: RegistryRepository, subject: Subject, key: VerifyingKey, predicate: str,
                    layer: dict[str, Any]) -> str | None:
    """Why the envelope *layer* is not a verified *predicate* attestation of *subject*, or None."""
    size, digest = layer.get("size"), layer.get("digest")
    if not isinstance(size, int) or not 0 <= size <= dsse.MAX_ENVELOPE or not isinstance(digest, str):
        return f"its envelope declares {size!r} bytes"
    try:
        statement_bytes = dsse.verify_envelope(repository.blob(digest, size), key)
    except VerificationError as exc:
        return exc.message
    except ModelbuildError as exc:  # an unreadable envelope: another one may still be good
        return f"its envelope cannot be read: {exc.render()}"
    try:
        statement = json.loads(statement_bytes)
    except (ValueError, UnicodeDecodeError):
        return "its statement is not JSON"
    if not isinstance(statement, dict) or statement.get("_type") not in STATEMENT_TYPES:
        return "its payload is not an in-toto statement"
    if statement.get("predicateType") != predicate:
        return f"its statement's predicateType is {str(statement.get('predicateType'))[:80]!r}"
    hexdigest = subject.digest.partition(":")[2]
    subjects = statement.get("subject") if isinstance(statement.get("subject"), list) else []
    if not any(isinstance(s, dict) and isinstance(s.get("digest"), dict) and s["digest"].get("sha256") == hexdigest
               for s in subjects):
        return f"its statement is about another artifact, not {subject.digest}"
    return None


__all__ = ["ATTESTATIONS", "DEFAULT_SIGNER", "PREDICATE_ANNOTATION", "check_attestation", "get_signer",
           "load_signing_key", "parse_require", "sign_reference", "sign_subjects", "subject_of", "verify_reference",
           "verify_subject"]
