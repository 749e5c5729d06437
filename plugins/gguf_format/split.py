"""The shard strategy ``gguf``: llama.cpp's gguf-split plan, and merge."""

from __future__ import annotations

import os
import struct

from modelbuild.api import Output, TransformContext, UsageError, WeightFile

from .constants import (
    COPY_CHUNK,
    DEFAULT_ALIGNMENT,
    SPLIT_COUNT,
    SPLIT_NO,
    SPLIT_PAD,
    SPLIT_TENSORS,
    T_INT32,
    T_UINT16,
)
from .models import Model, _read_models
from .reader import Header, TensorInfo, _pad
from .writer import _kv_list, _require_little_endian, copy_range, write_header


class GGUFShard:
    name = "gguf"
    version = "1"
    summary = "llama.cpp gguf-split --split-max-size layout (<name>-00001-of-0000N.gguf) and merge"
    options = ()  # SHARD takes none

    def plan(self, m: Model, max_bytes: int) -> list[list[tuple[Header, TensorInfo]]]:
        """gguf-split's greedy plan: GGML_PAD(nbytes, 32), a new split past *max_bytes*."""
        splits: list[list[tuple[Header, TensorInfo]]] = [[]]
        current = 0
        for h, t in m.tensors:
            n = _pad(t.nbytes, SPLIT_PAD)
            if current + n > max_bytes and splits[-1]:
                splits.append([])
                current = n
            else:
                current += n
            splits[-1].append((h, t))
        return splits

    def shard(self, files: list[WeightFile], max_bytes: int, ctx: TransformContext) -> list[WeightFile | Output]:
        models = _read_models(files)
        replaced: dict[str, list[Output]] = {}
        jobs = []
        for m in models:
            for h in m.headers:
                _require_little_endian(h, "gguf shard")
            splits = self.plan(m, max_bytes)
            if len(splits) == 1 and not m.split:
                continue  # fits: left as it is
            if len(splits) == 1:
                jobs.append((m, [self._merged(m, ctx)]))
                continue
            n = len(splits)
            total_tensors = sum(len(s) for s in splits)
            if n > 0xFFFF:
                raise UsageError(f"{m.files[0].path}: {n} splits of {max_bytes} bytes: split.count is a u16",
                                 hint="use a larger SHARD size")
            outputs = []
            for i, split in enumerate(splits):
                kvs = _kv_list(m.first, _is_split_key) if i == 0 else []
                kvs += [(SPLIT_NO, T_UINT16, struct.pack("<H", i)),
                        (SPLIT_TENSORS, T_INT32, struct.pack("<i", total_tensors)),
                        (SPLIT_COUNT, T_UINT16, struct.pack("<H", n))]
                alignment = m.first.alignment if i == 0 and "general.alignment" in m.first.kv else DEFAULT_ALIGNMENT
                path = f"{m.stem}-{i + 1:05d}-of-{n:05d}.gguf"
                outputs.append((path, kvs, split, alignment))
            jobs.append((m, outputs))
        total = sum(t.nbytes for m, outs in jobs for _p, _k, split, _a in outs for _h, t in split)
        ctx.set_total(total)
        for m, outs in jobs:
            replaced[m.files[0].path] = [self._write(path, kvs, split, alignment, ctx)
                                         for path, kvs, split, alignment in outs]
            for f in m.files[1:]:
                replaced[f.path] = []
        return _substitute(files, replaced)

    def merge(self, files: list[WeightFile], ctx: TransformContext) -> list[WeightFile | Output]:
        models = _read_models(files)
        jobs = []
        for m in models:
            if m.split:
                for h in m.headers:
                    _require_little_endian(h, "gguf merge")
                jobs.append((m, self._merged(m, ctx)))
        ctx.set_total(sum(t.nbytes for m, _ in jobs for _h, t in m.tensors))
        replaced: dict[str, list[Output]] = {}
        for m, (path, kvs, tensors, alignment) in jobs:
            replaced[m.files[0].path] = [self._write(path, kvs, tensors, alignment, ctx)]
            for f in m.files[1:]:
                replaced[f.path] = []
        return _substitute(files, replaced)

    def _merged(self, m: Model, ctx: TransformContext) -> tuple[str, list, list, int]:
        first = m.first
        alignment = first.alignment if "general.alignment" in first.kv else DEFAULT_ALIGNMENT
        return f"{m.stem}.gguf", _kv_list(first, _is_split_key), list(m.tensors), alignment

    def _write(self, path: str, kvs: list, tensors: list[tuple[Header, TensorInfo]], alignment: int,
               ctx: TransformContext) -> Output:
        out = ctx.output_path(path)
        layout = write_header(out, kvs, [(t.name, t.shape, t.ggml_type, t.nbytes) for _h, t in tensors], alignment)
        fds: dict[str, int] = {}
        try:
            dst = os.open(out, os.O_WRONLY)
            try:
                for (h, t), dst_off in zip(tensors, layout.offsets):
                    src = fds.get(h.source)
                    if src is None:
                        src = fds[h.source] = os.open(h.source, os.O_RDONLY)
                    for a in range(0, t.nbytes, COPY_CHUNK):
                        n = min(COPY_CHUNK, t.nbytes - a)
                        copy_range(src, dst, t.data_start + a, dst_off + a, n)
                        ctx.advance(n)
            finally:
                os.close(dst)
        finally:
            for fd in fds.values():
                os.close(fd)
        return Output(path, out)


def _is_split_key(key: str) -> bool:
    return key.startswith("split.")


def _substitute(files: list[WeightFile], replaced: dict[str, list[Output]]) -> list[WeightFile | Output]:
    out: list[WeightFile | Output] = []
    for f in files:
        if f.path in replaced:
            out.extend(replaced[f.path])
        else:
            out.append(f)
    return out
