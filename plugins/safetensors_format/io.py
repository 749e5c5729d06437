"""Byte layout and file I/O: where each tensor goes, and moving bytes there.

:func:`layout` computes a file's header and tensor offsets as the safetensors library lays
them out; :func:`_create`, :func:`_pwrite_all` and :func:`_copy_range` write and copy at
those offsets. ``CHUNK_BYTES`` bounds the bytes a conversion or a write handles at a time:
it is read at call time, here (:func:`_chunks`) and by the format's writer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .header import _DTYPES, _RANK, MAX_HEADER_SIZE, Tensor

CHUNK_BYTES = 64 << 20  # conversions work on at most this many input bytes at a time


# -- writing ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spec:
    """A tensor to be written: its name, safetensors code and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = _DTYPES[self.dtype][0]
        for d in self.shape:
            n *= d
        return n // 8


@dataclass(frozen=True, slots=True)
class Layout:
    head: bytes  # the 8-byte length and the padded JSON header
    offsets: dict[str, int]  # absolute offset of each tensor's data
    order: tuple[Spec, ...]  # data order
    size: int  # total file size


def layout(specs: Iterable[Spec], metadata: dict[str, str] | None) -> Layout:
    """Header and offsets of a file holding *specs*, as the safetensors library writes it.

    Data order: descending dtype rank, then name (``prepare`` in safetensors/src/tensor.rs).
    Header: serde_json's compact output of ``{"__metadata__": …, name: {"dtype", "shape",
    "data_offsets"}, …}`` with tensors in data order, padded with spaces to a multiple of 8.
    ``metadata=None`` omits ``__metadata__``; ``{}`` writes ``"__metadata__":{}``, as the
    library does. Metadata keys are sorted (the library's order is HashMap order).
    """
    order = sorted(specs, key=lambda s: (-_RANK[s.dtype], s.name))
    names = [s.name for s in order]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"tensor names repeat: {', '.join(dup)}")
    if "__metadata__" in names:
        raise ValueError("a tensor cannot be called __metadata__")
    dumps = json.dumps
    parts = []
    if metadata is not None:
        md = {str(k): str(v) for k, v in sorted(metadata.items())}
        parts.append('"__metadata__":' + dumps(md, separators=(",", ":"), ensure_ascii=False))
    rel = 0
    rel_offsets = []
    for s in order:
        n = s.nbytes
        parts.append(dumps(s.name, ensure_ascii=False)
                     + f':{{"dtype":"{s.dtype}","shape":[{",".join(str(d) for d in s.shape)}],'
                       f'"data_offsets":[{rel},{rel + n}]}}')
        rel_offsets.append(rel)
        rel += n
    header = ("{" + ",".join(parts) + "}").encode("utf-8")
    header += b" " * (-len(header) % 8)
    if len(header) > MAX_HEADER_SIZE:
        raise ValueError(f"header of {len(header):,} bytes exceeds safetensors' limit")
    base = 8 + len(header)
    return Layout(len(header).to_bytes(8, "little") + header,
                  {s.name: base + r for s, r in zip(order, rel_offsets)}, tuple(order), base + rel)


def _create(path: str, lay: Layout) -> None:
    """Create the file: header written, data region allocated (sparse) for pwrite."""
    with open(path, "wb") as fh:
        fh.write(lay.head)
        fh.truncate(lay.size)


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _copy_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, count: int) -> None:
    """Copy raw bytes between files (copy_file_range where the kernel has it)."""
    fast = hasattr(os, "copy_file_range")
    while count > 0:
        done = 0
        if fast:
            try:
                done = os.copy_file_range(src_fd, dst_fd, min(count, 1 << 30), src_off, dst_off)
            except OSError:
                fast = False
        if not done:
            chunk = os.pread(src_fd, min(count, 8 << 20), src_off)
            if not chunk:
                raise OSError(f"source ended {count} bytes early")
            _pwrite_all(dst_fd, chunk, dst_off)
            done = len(chunk)
        count -= done
        src_off += done
        dst_off += done


def _chunks(t: Tensor) -> Iterator[tuple[int, int, int]]:
    """(element offset, element count, byte offset) slices of at most CHUNK_BYTES."""
    item = _DTYPES[t.dtype][0] // 8
    per = max(1, CHUNK_BYTES // item)
    for start in range(0, t.numel, per):
        yield start, min(per, t.numel - start), t.start + start * item
