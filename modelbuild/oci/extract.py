"""Write a ModelPack artifact's files into a directory, at their ``org.cncf.model.filepath``.

Nothing is written outside the directory (absolute paths, ``..`` and links out are
refused), raw layers are copied by the kernel, tar layers are unpacked with the ``data``
extraction filter, and file modes come from the file-metadata annotation.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from modelbuild.errors import BuildError
from modelbuild.oci import mediatypes as mt


def safe_target(dest: Path, rel: str) -> Path:
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts:
        raise BuildError(f"layer path {rel!r} would leave the output directory; refusing it")
    return dest.joinpath(*pure.parts)


def extract_manifest(store: Any, manifest: dict[str, Any], dest: Path) -> list[str]:
    """Extract every layer of *manifest* (a parsed manifest) from *store* into *dest*."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for layer in manifest.get("layers", []):
        ann = layer.get("annotations", {})
        rel = ann.get(mt.ANNOTATION_FILEPATH) or ann.get(mt.LEGACY_ANNOTATION_FILEPATH) or ann.get(mt.ANNOTATION_TITLE)
        if not rel:
            raise BuildError(f"layer {layer['digest']} has no file path annotation")
        src = store.blob_path(layer["digest"])
        media = layer["mediaType"]
        if media.endswith(".raw"):
            target = safe_target(dest, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.partial")
            shutil.copyfile(src, tmp)
            mode = _mode(ann)
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, target)
        else:
            _untar(src, media, dest)
        written.append(rel)
    return written


def _mode(annotations: dict[str, str]) -> int | None:
    raw = annotations.get(mt.ANNOTATION_FILE_METADATA)
    if not raw:
        return None
    try:
        mode = json.loads(raw).get("mode")
    except ValueError:
        return None
    return int(mode) & 0o777 if isinstance(mode, int) else None


def _untar(src: Path, media: str, dest: Path) -> None:
    with open(src, "rb") as raw:
        if media.endswith("+gzip"):
            import gzip

            stream: Any = gzip.GzipFile(fileobj=raw)
        elif media.endswith("+zstd"):
            import zstandard

            stream = zstandard.ZstdDecompressor().stream_reader(raw)
        else:
            stream = raw
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            try:
                tf.extractall(dest, filter="data")
            except (tarfile.FilterError, tarfile.TarError, OSError) as exc:
                raise BuildError(f"cannot extract layer: {exc}") from None


__all__ = ["extract_manifest", "safe_target", "io"]
