"""Writing GGUF: values encoded as GGUF stores them, :func:`write_header` (header, keys and
tensor infos through ``gguf.GGUFWriter``, the file sized for the data), and the helpers that
copy and write byte ranges."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelbuild.api import FormatError

from .constants import (
    _KEY_TYPES,
    _SCALARS,
    COPY_CHUNK,
    T_ARRAY,
    T_BOOL,
    T_FLOAT32,
    T_FLOAT64,
    T_INT8,
    T_INT16,
    T_INT32,
    T_INT64,
    T_STRING,
    T_UINT8,
    T_UINT16,
    T_UINT32,
    T_UINT64,
)
from .reader import Header, _pad, parse_header

# -- values, writer --------------------------------------------------------------------------

class RawValue:
    """A value already encoded (GGUF bytes, little-endian, without its type tag)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


_WRITER: Any = None


def writer_class() -> Any:
    """gguf.GGUFWriter that also takes :class:`RawValue`: keys copied byte for byte."""
    global _WRITER
    if _WRITER is None:
        from gguf import GGUFWriter

        class _Writer(GGUFWriter):  # type: ignore[misc]
            def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
                if isinstance(val, RawValue):
                    return (self._pack("I", vtype) if add_vtype else b"") + val.data
                return super()._pack_val(val, vtype, add_vtype, sub_type=sub_type)

        _WRITER = _Writer
    return _WRITER


def _infer_type(value: Any, key: str | None = None) -> tuple[int, int | None]:
    """(value type, array item type) of a plain Python/numpy value."""
    import numpy as np

    if hasattr(value, "type") and hasattr(value, "value") and hasattr(value, "sub_type"):  # gguf.GGUFValue
        return int(value.type), None if value.sub_type is None else int(value.sub_type)
    if isinstance(value, (bool, np.bool_)):
        return T_BOOL, None
    if isinstance(value, np.generic):
        codes = {np.uint8: T_UINT8, np.int8: T_INT8, np.uint16: T_UINT16, np.int16: T_INT16,
                 np.uint32: T_UINT32, np.int32: T_INT32, np.float32: T_FLOAT32, np.uint64: T_UINT64,
                 np.int64: T_INT64, np.float64: T_FLOAT64}
        for np_type, code in codes.items():
            if isinstance(value, np_type):
                return code, None
        raise ValueError(f"{key}: no GGUF type for numpy {value.dtype}")
    if isinstance(value, int):
        if key in _KEY_TYPES:
            return _KEY_TYPES[key], None
        if -(2**31) <= value < 2**31:
            return T_INT32, None
        return (T_INT64 if value < 2**63 else T_UINT64), None
    if isinstance(value, float):
        return T_FLOAT32, None
    if isinstance(value, (str, bytes, bytearray)):
        return T_STRING, None
    if isinstance(value, np.ndarray):
        item, _ = _infer_type(value.dtype.type(0)) if value.dtype != object else (T_STRING, None)
        return T_ARRAY, item
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{key}: give an empty array its item type, e.g. gguf.GGUFValue([], ARRAY, INT32)")
        return T_ARRAY, _infer_type(value[0])[0]
    raise ValueError(f"{key}: no GGUF type for {type(value).__name__}")


def encode_value(value: Any, vtype: int, sub_type: int | None = None) -> bytes:
    """GGUF bytes of *value* as *vtype* (little-endian, without the type tag)."""
    import numpy as np

    if hasattr(value, "type") and hasattr(value, "value") and hasattr(value, "sub_type"):
        return encode_value(value.value, int(value.type), None if value.sub_type is None else int(value.sub_type))
    code = _SCALARS.get(vtype)
    if code is not None:
        return struct.pack("<" + code, value)
    if vtype == T_STRING:
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        return struct.pack("<Q", len(data)) + data
    if vtype == T_ARRAY:
        items = list(value) if not isinstance(value, np.ndarray) else value
        if sub_type is None:
            sub_type = _infer_type(items[0])[0] if len(items) else T_INT32
        head = struct.pack("<IQ", sub_type, len(items))
        code = _SCALARS.get(sub_type)
        if code is not None and isinstance(items, np.ndarray):
            return head + items.astype(np.dtype("<" + code) if code != "?" else np.bool_).tobytes()
        if code is not None:
            return head + struct.pack(f"<{len(items)}{code}", *[x.item() if isinstance(x, np.generic) else x
                                                                 for x in items])
        if sub_type == T_STRING:
            return head + b"".join(encode_value(x, T_STRING) for x in items)
        if sub_type == T_ARRAY:
            return head + b"".join(encode_value(x, T_ARRAY, None) for x in items)
    raise ValueError(f"unknown GGUF value type {vtype}")


@dataclass
class Layout:
    data_offset: int
    offsets: list[int]  # absolute, per tensor
    size: int


def write_header(path: str, kvs: list[tuple[str, int, bytes]], infos: list[tuple[str, tuple[int, ...], int, int]],
                 alignment: int) -> Layout:
    """Write header, keys and tensor infos through gguf.GGUFWriter; size the file for the data.

    *kvs*: (key, value type, encoded value); *infos*: (name, numpy shape, ggml type, nbytes).
    The data section is left to the caller (zeros until written, padding included).
    """
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFValueType

    w = writer_class()(path, arch="")  # an empty arch adds no key
    w.data_alignment = alignment
    for key, vtype, raw in kvs:
        w.add_key_value(key, RawValue(raw), GGUFValueType(vtype))
    for name, shape, gtype, nbytes in infos:
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=GGMLQuantizationType(gtype))
    w.write_header_to_file(path=Path(path))
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    end = w.fout[0].tell()
    w.close()
    data_offset = _pad(end, alignment)
    offsets, pos = [], data_offset
    for _name, _shape, _gtype, nbytes in infos:
        offsets.append(pos)
        pos += _pad(nbytes, alignment)
    os.truncate(path, pos)
    return Layout(data_offset, offsets, pos)


def _check_layout(path: str, layout: Layout, names: list[str]) -> None:
    h = parse_header(path)
    got = [(t.name, t.data_start) for t in h.tensors]
    if got != list(zip(names, layout.offsets)) or h.data_offset != layout.data_offset:
        raise RuntimeError(f"gguf: {path}: written tensor offsets do not match the plan")


def _kv_list(h: Header, drop: Callable[[str], bool] = lambda k: False) -> list[tuple[str, int, bytes]]:
    return [(kv.key, kv.vtype, kv.raw) for kv in h.kv.values() if not drop(kv.key)]


def _require_little_endian(h: Header, what: str) -> None:
    if h.order != "<":
        raise FormatError(h.label, f"big-endian GGUF files are not supported by {what}")


# -- copying and writing byte ranges --------------------------------------------------------

def copy_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, n: int) -> None:
    """Copy *n* bytes between files, in the kernel where it can."""
    fast = hasattr(os, "copy_file_range")
    while n > 0:
        if fast:
            try:
                k = os.copy_file_range(src_fd, dst_fd, min(n, 1 << 30), src_off, dst_off)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM):
                    raise
                fast = False
                continue
        else:
            data = os.pread(src_fd, min(n, COPY_CHUNK), src_off)
            k = len(data) and _pwrite_all(dst_fd, data, dst_off)
        if k <= 0:
            raise OSError(errno.EIO, "unexpected end of file while copying tensor data")
        n -= k
        src_off += k
        dst_off += k


def _pwrite_all(fd: int, data: Any, off: int) -> int:
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], off + done)
    return done


def _pread_all(fd: int, n: int, off: int) -> bytes:
    data = os.pread(fd, n, off)
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = os.pread(fd, n - got, off + got)
        if not more:
            raise OSError(errno.EIO, "unexpected end of file while reading tensor data")
        parts.append(more)
        got += len(more)
    return b"".join(parts)
