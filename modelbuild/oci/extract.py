"""Write a ModelPack artifact's files into a directory, at their ``org.cncf.model.filepath``.

Nothing is written outside the directory (absolute paths, ``..`` and links out are
refused), raw layers are copied by the kernel, tar layers are unpacked with the ``data``
extraction filter, and file modes come from the file-metadata annotation.

Artifacts written before model-spec moved to the CNCF (``application/vnd.cnai.model.*``
media types, ``org.cnai.model.*`` annotations) are read the same way. The helpers here are
shared with :mod:`modelbuild.oci.transfer`, which writes layers straight from a registry.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from modelbuild.errors import BuildError
from modelbuild.oci import mediatypes as mt

LEGACY_ANNOTATION_FILE_METADATA = "org.cnai.model.file.metadata+json"
_TAR = re.compile(r"[./]tar(\+(gzip|zstd))?$")


def safe_target(dest: Path, rel: str) -> Path:
    """``dest/rel``, refusing a path that would leave *dest*: absolute, ``..``, or through a
    symbolic link that points out of it."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel:
        raise BuildError(f"layer path {rel!r} would leave the output directory; refusing it")
    target = dest.joinpath(*pure.parts)
    root = dest.resolve()
    if not target.parent.resolve().is_relative_to(root):
        raise BuildError(f"layer path {rel!r} goes through a link out of the output directory; refusing it")
    return target


def layer_path(layer: dict[str, Any]) -> str | None:
    """The file path a layer is written to: ``org.cncf.model.filepath``, the legacy
    ``org.cnai.model.filepath``, else ``org.opencontainers.image.title``."""
    ann = layer.get("annotations") or {}
    return ann.get(mt.ANNOTATION_FILEPATH) or ann.get(mt.LEGACY_ANNOTATION_FILEPATH) or ann.get(mt.ANNOTATION_TITLE)


def is_tar(media_type: str) -> bool:
    """``…tar``, ``…tar+gzip``, ``…tar+zstd`` (ModelPack, legacy vnd.cnai and OCI image
    layers alike); anything else is the file's own bytes."""
    return bool(_TAR.search(media_type))


def file_mode(annotations: dict[str, str] | None) -> int | None:
    """The permission bits from the file-metadata annotation (new or legacy key), or None."""
    annotations = annotations or {}
    raw = annotations.get(mt.ANNOTATION_FILE_METADATA) or annotations.get(LEGACY_ANNOTATION_FILE_METADATA)
    if not raw:
        return None
    try:
        mode = json.loads(raw).get("mode")
    except (ValueError, AttributeError):
        return None
    return int(mode) & 0o777 if isinstance(mode, int) and not isinstance(mode, bool) else None


def extract_manifest(store: Any, manifest: dict[str, Any], dest: Path) -> list[str]:
    """Extract every layer of *manifest* (a parsed manifest) from *store* into *dest*."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for layer in manifest.get("layers", []):
        rel = layer_path(layer)
        if not rel:
            raise BuildError(f"layer {layer['digest']} has no file path annotation")
        src = store.blob_path(layer["digest"])
        media = layer["mediaType"]
        if not is_tar(media):
            target = safe_target(dest, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.partial")
            shutil.copyfile(src, tmp)
            mode = file_mode(layer.get("annotations"))
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, target)
        else:
            untar(src, media, dest)
        written.append(rel)
    return written


def _mode(annotations: dict[str, str]) -> int | None:  # kept for callers of the old name
    return file_mode(annotations)


def untar(src: Path, media: str, dest: Path) -> None:
    """Unpack a (possibly compressed) tar layer into *dest* with the ``data`` filter:
    nothing outside *dest*, no links out, no device files, no set-uid bits."""
    with open(src, "rb") as raw:
        if media.endswith("+gzip"):
            import gzip

            stream: Any = gzip.GzipFile(fileobj=raw)
        elif media.endswith("+zstd"):
            import zstandard

            stream = zstandard.ZstdDecompressor().stream_reader(raw)
        else:
            stream = raw
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                tf.extractall(dest, filter="data")
        except (tarfile.FilterError, tarfile.TarError, OSError, EOFError) as exc:
            raise BuildError(f"cannot extract layer: {exc}") from None


_untar = untar

__all__ = ["extract_manifest", "file_mode", "io", "is_tar", "layer_path", "safe_target", "untar"]
