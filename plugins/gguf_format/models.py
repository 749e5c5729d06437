"""The GGUF models of a model set: single files, and the shards of split sets grouped in order."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from modelbuild.api import FormatError, WeightFile

from .constants import SPLIT_NAME
from .reader import Header, TensorInfo, is_gguf, parse_header

# -- split sets ------------------------------------------------------------------------------

@dataclass
class Model:
    """One GGUF model of a model set: a single file, or every shard of a split set in order."""

    files: list[WeightFile]
    headers: list[Header]
    split: bool  # the input carries split.* keys
    stem: str  # the artifact path without ".gguf" (or without "-0000i-of-0000n.gguf")

    @property
    def first(self) -> Header:
        return self.headers[0]

    @property
    def tensors(self) -> Iterator[tuple[Header, TensorInfo]]:
        for h in self.headers:
            for t in h.tensors:
                yield h, t

    @property
    def param_count(self) -> int:
        return sum(t.n_elements for h in self.headers for t in h.tensors)


def _stem(path: str) -> str:
    return path.removesuffix(".gguf")


def group_models(files: list[WeightFile], headers: list[Header]) -> list[Model]:
    """Group split shards into models (in the order their first file appears)."""
    models: list[Model] = []
    sets: dict[tuple[str, int], list[tuple[int, WeightFile, Header]]] = {}
    order: list[tuple[str, int] | Model] = []
    for f, h in zip(files, headers):
        split = h.split
        if split is None:
            m = Model([f], [h], False, _stem(f.path))
            order.append(m)
            continue
        no, count, _ = split
        directory, base = os.path.split(f.path)
        match = SPLIT_NAME.match(base)
        if match and (int(match["no"]) != no + 1 or int(match["count"]) != count):
            raise FormatError(f.path, f"the name says split {int(match['no'])} of {int(match['count'])} but "
                                      f"the keys say split.no={no} (0-based), split.count={count}")
        if not match and count > 1:
            raise FormatError(f.path, f"split {no + 1} of {count} must be named "
                                      f"<name>-{no + 1:05d}-of-{count:05d}.gguf, as llama.cpp finds the others")
        prefix = os.path.join(directory, match["prefix"]) if match else _stem(f.path)
        key = (prefix, count)
        if key not in sets:
            sets[key] = []
            order.append(key)
        sets[key].append((no, f, h))
    for item in order:
        if isinstance(item, Model):
            models.append(item)
            continue
        prefix, count = item
        shards = sorted(sets[item], key=lambda s: s[0])
        present = [s[0] for s in shards]
        if present != list(range(count)):
            missing = sorted(set(range(count)) - set(present))
            dup = sorted({n for n in present if present.count(n) > 1})
            what = (f"split {missing[0] + 1} of {count} is missing "
                    f"({os.path.basename(prefix)}-{missing[0] + 1:05d}-of-{count:05d}.gguf)" if missing
                    else f"split.no {dup[0]} appears twice")
            raise FormatError(shards[0][1].path, what, hint="a split GGUF model is read with all its shards")
        m = Model([s[1] for s in shards], [s[2] for s in shards], True, prefix)
        declared = m.first.split[2] if m.first.split else None
        total = sum(len(h.tensors) for h in m.headers)
        if declared is not None and declared != total:
            raise FormatError(m.files[0].path, f"split.tensors.count is {declared} but the {count} shards "
                                               f"hold {total} tensors")
        models.append(m)
    return models


def _read_models(files: list[WeightFile]) -> list[Model]:
    """The GGUF models of a model set (other files, configs included, are left alone)."""
    mine = [f for f in files if f.kind == "model" and (f.path.endswith(".gguf") or is_gguf(f.source))]
    return group_models(mine, [parse_header(f) for f in mine])
