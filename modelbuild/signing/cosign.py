"""cosign's signature format: a simple-signing payload, signed with ECDSA P-256, stored as a
layer of the manifest tagged ``sha256-<hex>.sig`` in the signed artifact's repository.

What is written, matched against what readers check (sources: sigstore/cosign
``pkg/types/media.go``, ``pkg/oci/static``; containers/image v5.23.1, what skopeo 1.9 runs,
``signature/internal/sigstore_payload.go``, ``docker/docker_image_dest.go``,
``docker/docker_image_src.go``, ``signature/policy_eval_sigstore.go``):

* The payload, a JSON object with exactly ``critical`` and ``optional``::

      {"critical": {"identity": {"docker-reference": "registry.example.com/team/model:1"},
                    "image": {"docker-manifest-digest": "sha256:…"},
                    "type": "cosign container image signature"},
       "optional": {"creator": "modelbuild 1.3.0", "timestamp": 1767225600}}

  containers-image reads it strictly: ``critical`` holds exactly ``type``, ``image`` and
  ``identity``, ``image`` exactly ``docker-manifest-digest``, ``identity`` exactly
  ``docker-reference``; ``optional`` may be ``null`` (cosign's) or an object whose
  ``timestamp`` is an integer. The reader here is as strict.
* ``docker-reference`` is the reference signed, with its tag: what skopeo writes and what its
  default ``signedIdentity`` (``matchRepoDigestOrExact``) requires when an image is pulled by
  tag. cosign writes the repository alone and ignores the field when it verifies; a
  repository-only identity is accepted here too (see :func:`identity_matches`).
* The signature: ECDSA over SHA-256 of the payload bytes, ASN.1 DER, standard base64, in the
  layer annotation ``dev.cosignproject.cosign/signature``; the layer's media type
  ``application/vnd.dev.cosign.simplesigning.v1+json`` (a layer of any other type is another
  kind of attachment and is skipped, as containers-image skips it).
* The manifest tagged ``sha256-<hex>.sig``: an OCI image manifest (skopeo refuses any other
  media type there), config ``application/vnd.oci.image.config.v1+json`` holding
  ``{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[…]}}`` (the
  layers' digests, as skopeo keeps them), one layer per signature. Signing again appends a
  layer; a signature already there (same payload and annotations) is not added twice; other
  signatures are never removed (read, extend, write back: two signers at the same instant may
  race, and the later write wins, as with cosign).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from modelbuild.errors import UsageError, VerificationError
from modelbuild.oci import mediatypes as mt

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MAX_PAYLOAD = 64 << 10  # a payload is a few hundred bytes; containers-image bounds signatures too
MAX_SIGNATURES = 64  # layers of one .sig manifest read


def signature_tag(digest: str) -> str:
    """``sha256:<hex>`` → ``sha256-<hex>.sig`` (containers-image ``sigstoreAttachmentTag``)."""
    return digest.replace(":", "-", 1) + ".sig"


# -- the payload ---------------------------------------------------------------------------
def make_payload(digest: str, reference: str, *, creator: str | None = None,
                 timestamp: int | None = None) -> bytes:
    """The simple-signing payload for *digest* signed as *reference* (see the module
    docstring). Its exact bytes are what is signed and stored."""
    if creator is None:
        from modelbuild import __version__

        creator = f"modelbuild {__version__}"
    optional = {"creator": creator, "timestamp": int(time.time()) if timestamp is None else timestamp}
    doc = {"critical": {"identity": {"docker-reference": reference},
                        "image": {"docker-manifest-digest": digest},
                        "type": SIGNATURE_TYPE},
           "optional": optional}
    return json.dumps(doc, separators=(",", ":")).encode()


def _exact(obj: Any, fields: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) != set(fields):
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise VerificationError(f"the signature payload's {what} has {got}, not exactly {sorted(fields)}")
    return obj


def parse_payload(data: bytes) -> dict[str, Any]:
    """``{"digest", "reference", "optional"}`` of a simple-signing payload, read as strictly as
    containers-image reads it; anything else is a VerificationError. Call only on a payload
    whose signature verified."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise VerificationError("the signature payload repeats a key")
        return dict(pairs)

    try:
        doc = json.loads(data, object_pairs_hook=no_duplicates)
    except (ValueError, UnicodeDecodeError):
        raise VerificationError("the signature payload is not JSON") from None
    doc = _exact(doc, ("critical", "optional"), "top level")
    critical = _exact(doc["critical"], ("identity", "image", "type"), "critical section")
    if critical["type"] != SIGNATURE_TYPE:
        raise VerificationError(f"the signature payload's type is {str(critical['type'])[:80]!r}, "
                                f"not {SIGNATURE_TYPE!r}")
    digest = _exact(critical["image"], ("docker-manifest-digest",), "critical.image")["docker-manifest-digest"]
    reference = _exact(critical["identity"], ("docker-reference",), "critical.identity")["docker-reference"]
    if not isinstance(digest, str) or not isinstance(reference, str):
        raise VerificationError("the signature payload's digest and reference are not strings")
    optional = doc["optional"]
    if optional is not None and not isinstance(optional, dict):
        raise VerificationError("the signature payload's optional section is neither null nor an object")
    optional = optional or {}
    stamp = optional.get("timestamp")
    if stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or int(stamp) != stamp):
        raise VerificationError("the signature payload's optional.timestamp is not an integer")
    return {"digest": digest, "reference": reference, "optional": optional}


# -- identities ----------------------------------------------------------------------------
def _split(reference: str) -> tuple[str, str | None, str | None]:
    """``(repository, tag, digest)`` of a docker reference, the repository normalised as
    docker normalises it (``docker.io/library/…``); ValueError for one that is not."""
    from modelbuild.oci.reference import parse_reference

    try:
        parsed = parse_reference(reference, default_tag=None)
    except UsageError:
        raise ValueError(reference) from None
    repo = parsed.repository
    host, _, rest = repo.partition("/")
    if not rest or not ("." in host or ":" in host or host == "localhost"):
        host, rest = "docker.io", repo
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = "docker.io"
    if host == "docker.io" and "/" not in rest:
        rest = f"library/{rest}"
    return f"{host}/{rest}", parsed.tag, parsed.digest


def identity_matches(signed: str, wanted: str) -> bool:
    """Whether a payload's ``docker-reference`` *signed* is acceptable for the reference the
    user named, *wanted*: the same repository always; when *wanted* has a tag and *signed*
    has one, the same tag (containers-image's ``matchRepoDigestOrExact``: a signature of
    ``:1`` is no signature of ``:latest``); a repository-only identity, as cosign writes,
    is accepted for any reference of its repository (cosign's own rule)."""
    try:
        s_repo, s_tag, s_digest = _split(signed)
        w_repo, w_tag, _w_digest = _split(wanted)
    except ValueError:
        return False
    if s_repo != w_repo:
        return False
    if w_tag is not None and s_tag is not None:
        return s_tag == w_tag
    return True


# -- the .sig manifest ---------------------------------------------------------------------
def _config(diff_ids: list[str]) -> bytes:
    return json.dumps({"architecture": "", "os": "", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": diff_ids}}, separators=(",", ":")).encode()


def signature_manifest(layers: list[dict[str, Any]], put_blob: Callable[[bytes, str], dict[str, Any]]) -> bytes:
    """The bytes of a ``.sig`` manifest listing *layers*; its config is uploaded with *put_blob*."""
    config = put_blob(_config([layer["digest"] for layer in layers]), OCI_CONFIG)
    return json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                       "config": {"mediaType": OCI_CONFIG, "digest": config["digest"], "size": config["size"]},
                       "layers": layers}, separators=(",", ":")).encode()


def same_layer(layer: Mapping[str, Any], digest: str, size: int, annotations: Mapping[str, str]) -> bool:
    """containers-image's ``layerMatchesSigstoreSignature``: the same payload and the same
    annotations, so signing twice with one key adds nothing."""
    return (layer.get("mediaType") == SIMPLESIGNING and layer.get("digest") == digest
            and layer.get("size") == size and dict(layer.get("annotations") or {}) == dict(annotations))


def decode_signature(layer: Mapping[str, Any]) -> bytes | None:
    """The signature bytes a layer's annotation holds, or None when it holds none that decodes."""
    value = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


__all__ = ["SIGNATURE_ANNOTATION", "SIGNATURE_TYPE", "SIMPLESIGNING", "decode_signature", "identity_matches",
           "make_payload", "parse_payload", "same_layer", "signature_manifest", "signature_tag"]
