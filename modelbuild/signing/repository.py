"""One repository of a registry, as a signer sees it (:class:`modelbuild.api.SignatureRepository`).

A thin layer over the core's registry client (:class:`modelbuild.oci.registry.Registry`): the
same transport, credentials and limits as push and pull, the one upload path for blobs, and
manifests PUT with the exact bytes given. Reads are verified against their digest and small
by construction (a signature payload, a config, an attestation: at most :data:`MAX_BLOB` bytes).
"""

from __future__ import annotations

import io
from typing import Any

from modelbuild.digests import sha256_bytes
from modelbuild.oci import mediatypes as mt
from modelbuild.oci.pull import MemorySink
from modelbuild.oci.registry import Registry
from modelbuild.oci.verify import IntegrityError

MAX_BLOB = 16 << 20  # a DSSE envelope holding an SBOM; a signature payload is a few hundred bytes


class RegistryRepository:
    """``host/repository`` of an open :class:`Registry`."""

    def __init__(self, registry: Registry, repo: str) -> None:
        self.registry, self.repo = registry, repo
        self.name = f"{registry.host}/{repo}"

    def manifest(self, ref: str) -> tuple[bytes, str, str] | None:
        if self.registry.head_manifest(self.repo, ref) is None:
            return None
        return self.registry.get_manifest(self.repo, ref)

    def blob(self, digest: str, size: int) -> bytes:
        if not isinstance(size, int) or size < 0 or size > MAX_BLOB:
            raise IntegrityError(f"{self.name}: blob {digest} declares {size} bytes; a signature's blobs are "
                                 f"at most {MAX_BLOB}")
        buf = MemorySink()
        self.registry.pull_blob(self.repo, digest, size, buf)  # verified against the digest
        return bytes(buf.data)

    def put_blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = sha256_bytes(data)
        self.registry.push_blob(self.repo, digest, len(data), lambda: io.BytesIO(data))
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def put_manifest(self, ref: str, data: bytes, media_type: str) -> str:
        return self.registry.put_manifest(self.repo, ref, data, media_type)

    def referrers(self, digest: str) -> list[dict[str, Any]]:
        from modelbuild.oci.pull import remote_referrers

        listed, _api = remote_referrers(self.registry, self.repo, digest)
        return listed

    def put_referrer(self, subject: str, data: bytes, media_type: str) -> str:
        """PUT a manifest whose ``subject`` is *subject*, by digest, and make the registry list
        it: a registry with the referrers API does so by itself; for one without, the index
        under the ``sha256-<hex>`` tag is read, extended and written back."""
        import json

        from modelbuild.oci.pull import referrers_tag, remote_referrers
        from modelbuild.storage.referrers import referrers_index

        digest = self.registry.put_manifest(self.repo, sha256_bytes(data), data, media_type)
        listed, api = remote_referrers(self.registry, self.repo, subject)
        if not api and digest not in {d["digest"] for d in listed}:
            doc = json.loads(data)
            entry = {"mediaType": media_type, "digest": digest, "size": len(data),
                     "artifactType": doc.get("artifactType") or (doc.get("config") or {}).get("mediaType"),
                     "annotations": doc.get("annotations")}
            self.registry.put_manifest(self.repo, referrers_tag(subject), referrers_index([*listed, entry]),
                                       mt.OCI_INDEX)
        return digest


__all__ = ["RegistryRepository"]
