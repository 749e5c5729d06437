"""Model groups: the safetensors files of one model (one directory, one prefix) and its index."""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from modelbuild.api import FormatError, Output, TransformContext, WeightFile

from .header import Header

_SHARD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.safetensors$")
_INDEX_SUFFIX = ".safetensors.index.json"


# -- model groups -------------------------------------------------------------------------


@dataclass
class Group:
    """The safetensors files of one model (one directory, one prefix) and its index."""

    directory: str
    prefix: str
    files: list[WeightFile]
    index: WeightFile | None = None

    def path(self, name: str) -> str:
        return posixpath.join(self.directory, name) if self.directory else name


def _group_key(path: str) -> tuple[str, str]:
    directory, base = posixpath.split(path)
    m = _SHARD_NAME.match(base)
    if m:
        return directory, m.group("prefix")
    if base.endswith(_INDEX_SUFFIX):
        return directory, base[: -len(_INDEX_SUFFIX)]
    return directory, base[: -len(".safetensors")]


def _split_set(files: list[WeightFile]) -> tuple[list[Group], list[WeightFile]]:
    """The model groups of *files*, and the files that are no part of any."""
    groups: dict[tuple[str, str], Group] = {}
    indexes: list[WeightFile] = []
    others: list[WeightFile] = []
    for f in sorted(files, key=lambda f: f.path):
        if f.path.endswith(".safetensors"):
            key = _group_key(f.path)
            groups.setdefault(key, Group(key[0], key[1], [])).files.append(f)
        elif f.path.endswith(_INDEX_SUFFIX):
            indexes.append(f)
        else:
            others.append(f)
    for idx in indexes:
        group = groups.get(_group_key(idx.path))
        if group is None:
            others.append(idx)  # an index without its shards: leave it be
        else:
            group.index = idx
    return [groups[k] for k in sorted(groups)], others


def _read_index(index: WeightFile) -> dict[str, Any]:
    try:
        with open(index.source, "rb") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise FormatError(index.path, f"not a readable JSON index: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
        raise FormatError(index.path, "not a safetensors index: no weight_map object")
    return doc


def _check_group(group: Group, headers: list[Header]) -> dict[str, Any] | None:
    """Validate a group: no tensor twice; the index names only files of the group."""
    seen: dict[str, str] = {}
    for h in headers:
        for t in h.tensors:
            if t.name in seen:
                raise FormatError(h.label, f"tensor {t.name!r} is also in {seen[t.name]}")
            seen[t.name] = h.label
    if group.index is None:
        return None
    doc = _read_index(group.index)
    present = {posixpath.basename(f.path) for f in group.files}
    missing = sorted({str(v) for v in doc["weight_map"].values()} - present)
    if missing:
        raise FormatError(group.index.path, f"names {', '.join(missing)}, not in the model set")
    return doc


def _merged_metadata(headers: list[Header]) -> dict[str, str] | None:
    """The union of the files' ``__metadata__`` (the first file in path order wins a
    conflict); None when no file has any."""
    if all(h.metadata is None for h in headers):
        return None
    merged: dict[str, str] = {}
    for h in headers:
        for k, v in (h.metadata or {}).items():
            merged.setdefault(k, v)
    return merged


def _index_json(doc: dict[str, Any]) -> bytes:
    """An index as transformers' ``save_pretrained`` writes it: indent=2, sorted keys, a
    trailing newline (huggingface_hub's own ``save_torch_state_dict`` omits the last two)."""
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _write_output(ctx: TransformContext, path: str, data: bytes, kind: str) -> Output:
    target = ctx.output_path(path)
    with open(target, "wb") as fh:
        fh.write(data)
    return Output(path, target, kind)
