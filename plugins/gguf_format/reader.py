"""The GGUF header reader: :func:`parse_header` reads the header, keys and tensor infos of a
file (through ``mmap``) and checks that the tensor data is there."""

from __future__ import annotations

import functools
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

from modelbuild.api import FormatError, WeightFile, lfs_pointer_hint

from .constants import (
    _PRECISION,
    _SCALARS,
    DEFAULT_ALIGNMENT,
    MAGIC,
    MAX_DIMS,
    SPLIT_COUNT,
    SPLIT_NO,
    SPLIT_TENSORS,
    SUPPORTED_VERSIONS,
    T_ARRAY,
    T_STRING,
    T_UINT32,
)

# -- the header parser ---------------------------------------------------------------------

class _Truncated(Exception):
    pass


@dataclass
class KV:
    key: str
    vtype: int
    raw: bytes  # the value as stored, without its type tag
    order: str  # "<" or ">"

    @property
    def value(self) -> Any:
        value, _ = _decode(self.raw, 0, self.vtype, self.order)
        return value


@dataclass
class TensorInfo:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    ggml_type: int
    offset: int  # relative to the data section
    n_elements: int
    nbytes: int
    data_start: int = 0  # absolute

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order."""
        return tuple(reversed(self.ne))


@dataclass
class Header:
    label: str  # for messages: the artifact path
    source: str
    size: int
    version: int
    order: str
    kv: dict[str, KV]
    tensors: list[TensorInfo]
    alignment: int
    data_offset: int

    def get(self, key: str, default: Any = None) -> Any:
        kv = self.kv.get(key)
        return default if kv is None else kv.value

    @property
    def arch(self) -> str | None:
        arch = self.get("general.architecture")
        return arch if isinstance(arch, str) else None

    @property
    def split(self) -> tuple[int, int, int | None] | None:
        """(split.no, split.count, split.tensors.count) when the file is one of a split set."""
        if SPLIT_COUNT not in self.kv:
            return None
        return int(self.get(SPLIT_NO, 0)), int(self.get(SPLIT_COUNT)), self.get(SPLIT_TENSORS)


@functools.lru_cache(maxsize=1)
def _type_table() -> dict[int, tuple[str, int, int]]:
    """ggml type number -> (name, block size, type size), from gguf-py."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    return {int(t): (t.name, *GGML_QUANT_SIZES[t]) for t in GGMLQuantizationType if t in GGML_QUANT_SIZES}


def type_name(ggml_type: int) -> str:
    return _type_table()[ggml_type][0]


def precision_name(ggml_type: int) -> str:
    """The ModelPack precision name of a ggml type: float32, bfloat16, int8, q8_0, q4_k…"""
    name = type_name(ggml_type)
    return _PRECISION.get(name, name.lower())


def _decode(buf: Any, off: int, vtype: int, order: str) -> tuple[Any, int]:
    """Decode one value at *off*; returns (value, end). Strings stay bytes when not UTF-8."""
    code = _SCALARS.get(vtype)
    if code is not None:
        (value,) = struct.unpack_from(order + code, buf, off)
        return value, off + struct.calcsize(code)
    if vtype == T_STRING:
        (n,) = struct.unpack_from(order + "Q", buf, off)
        data = bytes(buf[off + 8:off + 8 + n])
        if len(data) != n:
            raise _Truncated
        try:
            return data.decode("utf-8"), off + 8 + n
        except UnicodeDecodeError:
            return data, off + 8 + n
    if vtype == T_ARRAY:
        sub, count = struct.unpack_from(order + "IQ", buf, off)
        off += 12
        code = _SCALARS.get(sub)
        if code is not None:
            size = struct.calcsize(code) * count
            if off + size > len(buf):
                raise _Truncated
            values = list(struct.unpack_from(f"{order}{count}{code}", buf, off)) if count else []
            return values, off + size
        items = []
        for _ in range(count):
            item, off = _decode(buf, off, sub, order)
            items.append(item)
        return items, off
    raise ValueError(f"unknown value type {vtype}")


def _skip(buf: Any, off: int, vtype: int, order: str, size: int) -> int:
    """The end of the value at *off*, without decoding it (fast for big string arrays)."""
    code = _SCALARS.get(vtype)
    if code is not None:
        return off + struct.calcsize(code)
    if vtype == T_STRING:
        (n,) = struct.unpack_from(order + "Q", buf, off)
        return off + 8 + n
    if vtype == T_ARRAY:
        sub, count = struct.unpack_from(order + "IQ", buf, off)
        off += 12
        code = _SCALARS.get(sub)
        if code is not None:
            return off + struct.calcsize(code) * count
        if count > (size - off) // 8:
            raise _Truncated
        if sub == T_STRING:
            unpack = struct.Struct(order + "Q").unpack_from
            for _ in range(count):
                off += 8 + unpack(buf, off)[0]
            return off
        if sub == T_ARRAY:
            for _ in range(count):
                off = _skip(buf, off, T_ARRAY, order, size)
            return off
        raise ValueError(f"unknown array item type {sub}")
    raise ValueError(f"unknown value type {vtype}")


def _label(file: WeightFile | str | os.PathLike[str]) -> tuple[str, str]:
    if isinstance(file, WeightFile):
        return file.path, file.source
    return str(file), str(file)


def _describe_bytes(data: bytes) -> str:
    shown = " ".join(f"{b:02x}" for b in data)
    return f"{shown} ({data!r})" if data else "nothing (empty file)"


def _not_gguf_hint(head: bytes) -> str | None:
    if lfs_pointer_hint(head):
        return lfs_pointer_hint(head)
    if head.startswith(b"PK\x03\x04"):
        return "it looks like a zip archive (a PyTorch checkpoint?)"
    if len(head) >= 10 and head[8:10] == b'{"':
        return "it looks like a safetensors file"
    if head[:4] in (b"lmgg", b"tjgg", b"fmgg", b"algg"):
        return "it looks like a legacy GGML/GGJT file: convert it to GGUF first"
    return None


def parse_header(file: WeightFile | str | os.PathLike[str]) -> Header:
    """Parse the header, keys and tensor infos of a GGUF file; check that the data is there."""
    label, source = _label(file)
    try:
        fd = os.open(source, os.O_RDONLY)
    except OSError as exc:
        raise FormatError(label, f"cannot open: {exc.strerror or exc}") from None
    try:
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, 64, 0)  # enough to tell what else the file is
        except OSError as exc:
            raise FormatError(label, f"cannot read: {exc.strerror or exc}") from None
        if head[:4] != MAGIC:
            if len(head) < 4 and MAGIC.startswith(head) and head:
                raise FormatError(label, f"truncated file: {size} bytes, not even a GGUF header")
            raise FormatError(label, f"not a GGUF file: it starts with {_describe_bytes(head[:4])}, "
                                     f"a GGUF file starts with b'GGUF'", hint=_not_gguf_hint(head))
        if size < 24:
            raise FormatError(label, f"truncated file: {size} bytes, shorter than a GGUF header")
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
            try:
                return _parse(mm, label, source, size)
            except (_Truncated, struct.error):
                raise FormatError(label, f"truncated file: the header runs past its end ({size} bytes)") from None
    finally:
        os.close(fd)


def _parse(mm: mmap.mmap, label: str, source: str, size: int) -> Header:
    (version,) = struct.unpack_from("<I", mm, 4)
    order = "<"
    if version & 0xFFFF == 0:  # written on a machine of the other byte order
        order = ">"
        (version,) = struct.unpack_from(">I", mm, 4)
    if version not in SUPPORTED_VERSIONS:
        why = "GGUF v1 is no longer supported" if version == 1 else "unsupported GGUF version"
        raise FormatError(label, f"{why}: file has version {version}, supported are 2 and 3")
    n_tensors, n_kv = struct.unpack_from(order + "QQ", mm, 8)
    off = 24
    if n_kv > (size - off) // 12 or n_tensors > (size - off) // 24:
        raise _Truncated
    kvs: dict[str, KV] = {}
    for _ in range(n_kv):
        (klen,) = struct.unpack_from(order + "Q", mm, off)
        key_bytes = mm[off + 8:off + 8 + klen]
        if len(key_bytes) != klen:
            raise _Truncated
        off += 8 + klen
        key = key_bytes.decode("utf-8", errors="replace")
        (vtype,) = struct.unpack_from(order + "I", mm, off)
        off += 4
        try:
            end = _skip(mm, off, vtype, order, size)
        except ValueError as exc:
            raise FormatError(label, f"key {key!r}: {exc}") from None
        if end > size:
            raise _Truncated
        if key in kvs:
            raise FormatError(label, f"duplicate key {key!r}")
        kvs[key] = KV(key, vtype, bytes(mm[off:end]), order)
        off = end

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in kvs:
        kv = kvs["general.alignment"]
        alignment = kv.value if kv.vtype == T_UINT32 else 0
        if alignment <= 0 or alignment & (alignment - 1):
            raise FormatError(label, "general.alignment must be a u32 power of two")

    table = _type_table()
    tensors: list[TensorInfo] = []
    names: set[str] = set()
    for _ in range(n_tensors):
        (nlen,) = struct.unpack_from(order + "Q", mm, off)
        name_bytes = mm[off + 8:off + 8 + nlen]
        if len(name_bytes) != nlen:
            raise _Truncated
        off += 8 + nlen
        name = name_bytes.decode("utf-8", errors="replace")
        (n_dims,) = struct.unpack_from(order + "I", mm, off)
        off += 4
        if not 1 <= n_dims <= MAX_DIMS:
            raise FormatError(label, f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        ne = struct.unpack_from(f"{order}{n_dims}Q", mm, off)
        off += 8 * n_dims
        gtype, offset = struct.unpack_from(order + "IQ", mm, off)
        off += 12
        if gtype not in table:
            raise FormatError(label, f"tensor {name!r} has unknown ggml type {gtype}")
        tname, block, tsize = table[gtype]
        if ne[0] % block:
            raise FormatError(label, f"tensor {name!r}: row length {ne[0]} is not a multiple of the "
                                     f"{tname} block size {block}")
        if offset % alignment:
            raise FormatError(label, f"tensor {name!r}: data offset {offset} is not aligned to {alignment}")
        if name in names:
            raise FormatError(label, f"duplicate tensor {name!r}")
        names.add(name)
        n = 1
        for d in ne:
            n *= d
        tensors.append(TensorInfo(name, tuple(ne), gtype, offset, n, n // block * tsize))
    if off > size:
        raise _Truncated
    data_offset = _pad(off, alignment)
    for t in tensors:
        t.data_start = data_offset + t.offset
        end = t.data_start + t.nbytes
        if end > size:
            raise FormatError(label, f"truncated file: tensor {t.name!r} ends at byte {end} but the file "
                                     f"has {size} bytes")
    return Header(label, source, size, version, order, kvs, tensors, alignment, data_offset)


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def is_gguf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False
