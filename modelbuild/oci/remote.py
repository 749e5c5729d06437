"""An artifact read in place in a registry, for ``inspect --remote``: manifests and configs
only, never a layer.

:class:`RemoteArtifact` answers the few reads ``inspect`` makes of a store (``read_blob``,
``read_json``, ``tags``) from a registry instead. Manifests come through
:meth:`Registry.get_manifest` (verified against their digest, validated); a config is
downloaded into memory only when its descriptor says it is small enough to be a JSON
document, and verified like every blob. Anything else asked for is refused: the point is
to look at a 140 GB artifact without fetching its weights.
"""

from __future__ import annotations

import io
from typing import Any

from modelbuild.oci.registry import Registry
from modelbuild.oci.verify import MAX_JSON, IntegrityError, parse_json_object


class RemoteArtifact:
    """What ``inspect`` reads of a store, read from *registry*'s *repo*; see the module docstring."""

    remote = True  # no layer may be read: ``inspect`` leaves out what needs one (the memory estimate)

    def __init__(self, registry: Registry, repo: str) -> None:
        self.registry, self.repo = registry, repo
        self.root = f"{registry.host}/{repo}"
        self._manifests: dict[str, bytes] = {}
        self.blobs_read = 0  # configs downloaded: what tests count

    def descriptor(self, ref: str) -> dict[str, Any]:
        """The descriptor of the manifest or index *ref* (a tag or digest) names."""
        data, media, digest = self.registry.get_manifest(self.repo, ref)
        self._manifests[digest] = data
        return {"mediaType": media, "digest": digest, "size": len(data)}

    def read_blob(self, digest: str, size: int | None = None, **_: Any) -> bytes:
        if digest not in self._manifests:
            data, _media, got = self.registry.get_manifest(self.repo, digest)  # verified against the digest
            self._manifests[got] = data
        data = self._manifests[digest]
        if size is not None and len(data) != size:
            raise IntegrityError(f"{self.root}: manifest {digest} has {len(data)} bytes, not the {size} named")
        return data

    def read_json(self, digest: str, size: int | None = None, **_: Any) -> dict[str, Any]:
        """A config blob, downloaded into memory and verified; at most :data:`MAX_JSON` bytes."""
        if size is None or size > MAX_JSON:
            raise IntegrityError(f"{self.root}: config {digest} of {size} bytes is larger than a config may be")
        buf = io.BytesIO()
        self.registry.pull_blob(self.repo, digest, size, buf)  # verified against digest and size
        self.blobs_read += 1
        return parse_json_object(buf.getvalue(), f"{self.root}: config {digest}")

    def tags(self) -> dict[str, Any]:
        return {}


__all__ = ["RemoteArtifact"]
