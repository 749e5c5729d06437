"""Typed step results: what flows along the build graph's edges.

Each op returns one of these frozen values, and the steps after it receive it as an input,
so a step reads fields, not dictionary keys, and nothing re-reads from the store what a step
already produced (the index takes each variant's format and quantization from its manifest
input, not from the config blob).

At rest, in the step index and in ``--cache-to`` records, a result is its JSON form
(``to_json``); an op turns it back with ``decode``. The JSON form holds only what a cached
result may carry: content digests and sizes, never a path on this machine (``source``, where
to read a file now, is attached by the op's ``finalize`` after a cache hit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from modelbuild.oci.mediatypes import ANNOTATION_FILEPATH


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A blob of the store that a result references: what a cache export carries with it."""

    digest: str
    size: int
    media_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"digest": self.digest, "size": self.size}
        if self.media_type is not None:
            out["mediaType"] = self.media_type
        return out


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI descriptor that a build wrote (trusted: the build made the blob)."""

    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    annotations: Mapping[str, str] | None = None
    platform: Mapping[str, str] | None = None

    def to_oci(self) -> dict[str, Any]:
        """The descriptor as it appears in a manifest or index (only the fields it has)."""
        out: dict[str, Any] = {"mediaType": self.media_type}
        if self.artifact_type is not None:
            out["artifactType"] = self.artifact_type
        out["digest"] = self.digest
        out["size"] = self.size
        if self.platform is not None:
            out["platform"] = dict(self.platform)
        if self.annotations is not None:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_oci(cls, doc: Mapping[str, Any]) -> "Descriptor":
        return cls(doc["mediaType"], doc["digest"], doc["size"], doc.get("artifactType"),
                   doc.get("annotations"), doc.get("platform"))

    @property
    def blob(self) -> BlobRef:
        return BlobRef(self.digest, self.size, self.media_type)


# -- the build context ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContextRoot:
    """The build context, available as a local directory (``source``)."""

    root: str

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root}


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One member of a directory packed whole: what its tar layer holds."""

    name: str
    kind: str  # "file", "dir" or "symlink"
    mode: int
    size: int
    digest: str  # "" for anything but a file
    linkname: str | None
    abspath: str


@dataclass(frozen=True, slots=True)
class FileDigest:
    """A file or directory of the build context, by content (``digest``; never cached)."""

    path: str
    kind: str  # a FileKind value
    digest: str  # of the file; of a directory, the key of its members
    size: int
    mode: int
    is_dir: bool
    source: str | None = None  # where the file lies (None for a directory)
    members: tuple[TreeEntry, ...] = ()  # a directory's, in archive order

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "digest": self.digest, "size": self.size, "mode": self.mode,
                "is_dir": self.is_dir}


# -- the model set -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelFile:
    """A file of a model set: an input of the context, or a transform's output in the store."""

    path: str
    kind: str
    digest: str
    size: int
    origin: str  # "input" or "blob"
    mode: int = 0o644
    source: str | None = None  # where to read it now: attached after a cache hit, never stored

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "digest": self.digest, "size": self.size,
                "origin": self.origin, "mode": self.mode, "is_dir": False}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "ModelFile":
        return cls(doc["path"], doc["kind"], doc["digest"], doc["size"], doc["origin"], doc.get("mode", 0o644))


@dataclass(frozen=True, slots=True)
class FileSet:
    """A transformed model set, in path order."""

    files: tuple[ModelFile, ...]

    def to_json(self) -> dict[str, Any]:
        return {"files": [f.to_json() for f in self.files]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "FileSet":
        return cls(tuple(ModelFile.from_json(f) for f in doc["files"]))

    def blobs(self) -> list[BlobRef]:
        return [BlobRef(f.digest, f.size) for f in self.files if f.origin == "blob"]


@dataclass(frozen=True, slots=True)
class Metadata:
    """What ``describe`` read from the weights' headers (format, paramSize, precision, …)."""

    derived: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"derived": dict(self.derived)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Metadata":
        return cls(dict(doc["derived"]))

    def blobs(self) -> list[BlobRef]:
        return []


# -- the artifact ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layer:
    """One layer blob of the artifact and the digest of its uncompressed content."""

    descriptor: Descriptor
    diff_id: str

    @property
    def path(self) -> str:
        return (self.descriptor.annotations or {})[ANNOTATION_FILEPATH]

    def to_json(self) -> dict[str, Any]:
        return {"descriptor": self.descriptor.to_oci(), "diffId": self.diff_id}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Layer":
        return cls(Descriptor.from_oci(doc["descriptor"]), doc["diffId"])


@dataclass(frozen=True, slots=True)
class LayerSet:
    """The layers a ``layer`` or ``layerset`` step packed."""

    layers: tuple[Layer, ...]

    def to_json(self) -> dict[str, Any]:
        return {"layers": [layer.to_json() for layer in self.layers]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "LayerSet":
        return cls(tuple(Layer.from_json(layer) for layer in doc["layers"]))

    def blobs(self) -> list[BlobRef]:
        return [layer.descriptor.blob for layer in self.layers]


@dataclass(frozen=True, slots=True)
class ConfigBlob:
    """The ModelPack config a build wrote, with what the index annotates from it."""

    descriptor: Descriptor
    format: str | None = None
    quantization: str | None = None
    warnings: tuple[str, ...] = ()  # explicit values the weights contradict, shown every build

    def to_json(self) -> dict[str, Any]:
        return {"descriptor": self.descriptor.to_oci(), "format": self.format, "quantization": self.quantization,
                "warnings": list(self.warnings)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "ConfigBlob":
        return cls(Descriptor.from_oci(doc["descriptor"]), doc.get("format"), doc.get("quantization"),
                   tuple(doc.get("warnings", ())))

    def blobs(self) -> list[BlobRef]:
        return [self.descriptor.blob]


@dataclass(frozen=True, slots=True)
class ManifestBlob:
    """A variant's image manifest, with the config it names."""

    descriptor: Descriptor
    config: ConfigBlob

    def to_json(self) -> dict[str, Any]:
        return {"descriptor": self.descriptor.to_oci(), "config": self.config.to_json()}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "ManifestBlob":
        return cls(Descriptor.from_oci(doc["descriptor"]), ConfigBlob.from_json(doc["config"]))

    def blobs(self) -> list[BlobRef]:
        return [self.descriptor.blob]


@dataclass(frozen=True, slots=True)
class IndexBlob:
    """The image index of a multi-platform build."""

    descriptor: Descriptor

    def to_json(self) -> dict[str, Any]:
        return {"descriptor": self.descriptor.to_oci()}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "IndexBlob":
        return cls(Descriptor.from_oci(doc["descriptor"]))

    def blobs(self) -> list[BlobRef]:
        return [self.descriptor.blob]


@dataclass(frozen=True, slots=True)
class Exported:
    """What the build produced and the tags it will set once everything succeeded."""

    descriptor: Descriptor
    tags: tuple[str, ...]
    tag_entries: tuple[tuple[str, Mapping[str, Any]], ...]  # (reference, OCI descriptor)

    def to_json(self) -> dict[str, Any]:
        return {"descriptor": self.descriptor.to_oci(), "tags": list(self.tags),
                "tag_entries": [[ref, dict(d)] for ref, d in self.tag_entries]}
