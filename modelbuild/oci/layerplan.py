"""The plan of a materialisation: an artifact's layers validated, and the paths they write.

Before a byte is fetched, every layer descriptor is validated
(:class:`~modelbuild.oci.verify.Descriptor`), every path checked against
:mod:`modelbuild.artifact_paths`, and conflicts refused: two layers writing one path, a file
where another layer needs a directory (``a`` and ``a/b``). :class:`PathTree` goes on checking
the members of tar layers as they are unpacked. Paths that differ only in case are a warning.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from modelbuild import artifact_paths as ap
from modelbuild.digests import is_digest
from modelbuild.oci import mediatypes as mt
from modelbuild.oci.verify import Descriptor, IntegrityError, shown

LEGACY_ANNOTATION_FILE_METADATA = "org.cnai.model.file.metadata+json"
EXPANSION_FLOOR = 64 << 20  # small layers may expand this much whatever their ratio
MARGIN = 1 << 20  # tar headers and padding beyond a declared file size


@dataclass(frozen=True)
class Layer:
    """One layer of the artifact, validated."""

    index: int
    desc: Descriptor
    path: str | None  # the annotated file path (required for a raw layer)
    compression: str | None  # None (raw bytes or plain tar), "gzip" or "zstd"
    is_tar: bool
    mode: int | None
    declared: int | None  # the file size its metadata annotation declares
    diff_id: str | None

    @property
    def label(self) -> str:
        return shown(self.path or self.desc.digest[7:19], 60)

    def expansion_limit(self, ratio: int) -> int:
        """How many bytes this layer's tar stream may have once decompressed."""
        if self.compression is None:
            return self.desc.size
        if self.declared is not None and self.declared > 0:
            return self.declared + self.declared // 100 + MARGIN
        return max(EXPANSION_FLOOR, self.desc.size * ratio)


def layer_path(layer: dict[str, Any]) -> str | None:
    """The file path a layer is written to: ``org.cncf.model.filepath``, the legacy
    ``org.cnai.model.filepath``, else ``org.opencontainers.image.title``."""
    ann = layer.get("annotations") or {}
    value = ann.get(mt.ANNOTATION_FILEPATH) or ann.get(mt.LEGACY_ANNOTATION_FILEPATH) or ann.get(mt.ANNOTATION_TITLE)
    return value if isinstance(value, str) else None


def _metadata(annotations: Any) -> dict[str, Any]:
    raw = annotations.get(mt.ANNOTATION_FILE_METADATA) or annotations.get(LEGACY_ANNOTATION_FILE_METADATA)
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def file_mode(annotations: Any) -> int | None:
    """The permission bits from the file-metadata annotation (new or legacy key), or None."""
    mode = _int(_metadata(annotations or {}).get("mode"))
    return None if mode is None else mode & 0o777


def _compression(media_type: str) -> tuple[bool, str | None]:
    for suffix, codec in (("tar+gzip", "gzip"), ("tar+zstd", "zstd"), ("tar", None)):
        if media_type.endswith(("." + suffix, "/" + suffix)):
            return True, codec
    return False, None


def diff_ids(config: dict[str, Any] | None) -> list[Any]:
    """The config's ``modelfs.diffIds`` (or the legacy ``diff_ids``), else an empty list."""
    fs = (config or {}).get("modelfs")
    if not isinstance(fs, dict):
        return []
    ids = fs.get("diffIds", fs.get("diff_ids"))
    return ids if isinstance(ids, list) else []


def plan(manifest: dict[str, Any], config: dict[str, Any] | None, where: str) -> tuple[list[Layer], list[str]]:
    """The layers of *manifest*, validated, and warnings; raises before any byte is written."""
    raw_layers = manifest.get("layers")
    if not isinstance(raw_layers, list):
        raise IntegrityError(f"{where} is not an artifact with layers")
    ids = diff_ids(config)
    ids = ids if len(ids) == len(raw_layers) else []
    layers: list[Layer] = []
    tree = PathTree(where)
    for i, obj in enumerate(raw_layers):
        desc = Descriptor.parse(obj, f"{where}: layer {i + 1}")
        is_tar, compression = _compression(desc.media_type)
        path = layer_path(dict(desc.raw))
        if path is not None and (problem := ap.path_problem(path)):
            raise IntegrityError(f"{where}: layer {desc.digest} has file path {shown(path)} that {problem}; refusing it")
        if path is None and not is_tar:
            raise IntegrityError(f"{where}: layer {desc.digest} has no file path annotation")
        meta = _metadata(desc.annotations)
        diff_id = ids[i] if ids and isinstance(ids[i], str) and is_digest(ids[i]) else None
        layer = Layer(i, desc, path, compression, is_tar, file_mode(desc.annotations), _int(meta.get("size")), diff_id)
        if not is_tar:
            tree.add(path, "file")  # type: ignore[arg-type]
        layers.append(layer)
    return layers, tree.case_warnings()


class PathTree:
    """The paths an artifact writes, refusing a second writer of one path and a file where a
    directory is needed (or the reverse); directories may be shared by several layers."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.kinds: dict[str, str] = {}
        self.folded: dict[str, str] = {}
        self.collisions: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def add(self, rel: str, kind: str) -> None:
        with self.lock:
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                parent = "/".join(parts[:depth])
                have = self.kinds.get(parent)
                if have is None:
                    self._record(parent, "dir")
                elif have != "dir":
                    raise IntegrityError(f"{self.where}: {shown(rel)} needs {shown(parent)} to be a directory, "
                                         f"but the artifact also writes a {have} there; refusing it")
            have = self.kinds.get(rel)
            if have is not None and not (have == "dir" and kind == "dir"):
                what = "two layers write" if have == kind == "file" else f"a {kind} and a {have} are both at"
                raise IntegrityError(f"{self.where}: {what} {shown(rel)}; refusing the artifact")
            self._record(rel, kind)

    def _record(self, rel: str, kind: str) -> None:
        self.kinds[rel] = kind
        folded = rel.casefold()
        other = self.folded.setdefault(folded, rel)
        if other != rel:
            self.collisions.append((other, rel))

    def case_warnings(self) -> list[str]:
        return [f"{shown(a)} and {shown(b)} differ only in case: they collide on case-insensitive file systems"
                for a, b in self.collisions]


__all__ = ["Layer", "PathTree", "diff_ids", "file_mode", "layer_path", "plan"]
