"""GGUF: format handler, quantizer and llama.cpp-compatible shard strategy.

Three plugins share one header parser:

``format:gguf`` (:class:`GGUFFormat`)
    ``read_info`` reads headers only. Parameters are tensor elements (``n_elements``) summed
    over every tensor of every file. ``dtype_params`` keys: ``F32/F16/BF16/F64`` become
    ``float32/float16/bfloat16/float64``, ``I8/I16/I32/I64`` become ``int8…int64``, and a
    block-quantized type is its lower-case ggml name (``Q8_0`` → ``q8_0``, ``Q4_K`` →
    ``q4_k``, ``IQ2_XXS`` → ``iq2_xxs``): each of its elements counts as one parameter.
    ``quantization`` is the ``general.file_type`` name (``MOSTLY_Q4_K_M`` → ``q4_k_m``);
    without a file type, or when the file type names a float type but tensors are
    quantized, it is the quantized tensor type holding most parameters; None for a model
    of float/integer tensors only. ``family`` is ``general.architecture``;
    ``architecture`` is ``transformer`` when ``<arch>.attention.head_count`` exists. The
    shards of a split set (``split.count`` > 1) are read together and must all be there.
    When a model set holds several GGUF models (say a model and its ``mmproj``), counts are
    summed and the facts (family, quantization, name) come from the one with most
    parameters.

``quantizer:gguf-quantize`` (:class:`GGUFQuantizer`)
    What ``llama-quantize`` does. Types: the k-quant file types ``q2_k``, ``q3_k_s``,
    ``q3_k_m``, ``q3_k_l``, ``q4_k_s``, ``q4_k_m``, ``q5_k_s``, ``q5_k_m``, ``q6_k`` (and
    llama-quantize's aliases ``q3_k``, ``q4_k``, ``q5_k`` for the _M mixes), and ``f16``,
    ``bf16``, ``q8_0``, ``q4_0``, ``q4_1``, ``q5_0``, ``q5_1``. Which type each tensor gets
    is llama.cpp's choice, ported in :mod:`modelbuild_plugins.gguf_mixes` (one copy of the
    rules: ``tensor_allows_quantization``, the mix, the fallback for rows that are not a
    multiple of the block): a k-quant file type uses llama.cpp's mix (``output.weight``
    Q6_K, some ``attn_v``/``ffn_down`` layers with more bits…) unless ``--pure=true``, then
    every tensor llama.cpp converts gets the file type's type, as ``llama-quantize --pure``
    does. The legacy types are ``--pure`` unless ``--pure=false`` is given (the output of
    version 1). Either way a row that is not a multiple of the block falls back as
    ``tensor_type_fallback`` does (Q4_K -> Q5_0, Q6_K -> Q8_0…, a 32-block type -> F16).
    Tensors matched by a ``keep`` pattern (fnmatch) keep their type and bytes, as do those
    llama.cpp never converts (norms, 1-D tensors…). K-quant tensors are quantized with
    ``modelbuild_plugins.gguf_kquants.quantize_kquant`` (llama.cpp's reference quantizers),
    the others with ``gguf.quants.quantize``; each quantized tensor is byte-identical to
    what ``llama_model_quantize`` writes (no importance matrix). Inputs must be
    F32/F16/BF16 where a tensor is to be converted (llama.cpp refuses to requantize);
    integer and F64 tensors are copied. Sets ``general.file_type`` (the LlamaFileType of
    the file type: ``MOSTLY_Q4_K_M``…) and ``general.quantization_version`` (as
    llama-quantize does), keeps every other key and its order, and keeps the input's tensor
    order (llama-quantize writes its own, sorted order); a split set is quantized shard by
    shard under the same names (``--keep-split``), with the mix computed over the whole
    model.

``shard:gguf`` (:class:`GGUFShard`)
    gguf-split's ``--split-max-size`` plan: tensors in file order, sized
    ``GGML_PAD(nbytes, 32)``, a new split when the running size would pass the limit; the
    first split carries every key of the input, then ``split.no`` (u16),
    ``split.tensors.count`` (i32) and ``split.count`` (u16) in that order (gguf's setters
    move a key to the end, and gguf-split sets ``split.count`` last); other splits have
    those three keys only. Files are ``<stem>-00001-of-00003.gguf``. Differences, all
    where gguf-split has no answer: a model that fits in one split is passed through
    unchanged (gguf-split would write ``-00001-of-00001``); a first tensor larger than the
    limit gets a split of its own (gguf-split stops with "one of splits have 0 tensors");
    tensor dimensions are copied as written (ggml would drop trailing 1s); a custom
    ``general.alignment`` is honoured by the split that declares it. ``merge`` reverses
    it: one ``<stem>.gguf``, the ``split.*`` keys removed (gguf-split --merge keeps them
    with split.count 0). Tensor bytes are copied with ``os.copy_file_range``.

Quantization runs in ``ctx.jobs`` forked processes: the parent plans the layout, writes
header, keys and tensor infos through ``gguf.GGUFWriter``, sizes the file, and workers
quantize chunks of rows and ``os.pwrite`` them at their precomputed offsets; no tensor data
crosses a pipe and a worker holds one chunk at a time.

numpy and gguf are imported inside functions: the CLI imports this module on every run.
"""

from __future__ import annotations

import errno
import functools
import mmap
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelbuild_plugins.gguf_mixes import allows_quantization, ggml_n_dims  # noqa: F401 (re-exported)

from modelbuild.errors import UsageError
from modelbuild.hookspecs import hookimpl
from modelbuild.weights import (
    FormatError,
    ModelInfo,
    Output,
    TransformContext,
    WeightFile,
)

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT
SPLIT_PAD = 32  # gguf-split sizes tensors with GGML_PAD(nbytes, GGUF_DEFAULT_ALIGNMENT)
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"
SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")

# GGUF value types (gguf.GGUFValueType) and their struct codes
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL = range(8)
T_STRING, T_ARRAY, T_UINT64, T_INT64, T_FLOAT64 = 8, 9, 10, 11, 12
_SCALARS = {T_UINT8: "B", T_INT8: "b", T_UINT16: "H", T_INT16: "h", T_UINT32: "I", T_INT32: "i",
            T_FLOAT32: "f", T_BOOL: "?", T_UINT64: "Q", T_INT64: "q", T_FLOAT64: "d"}
# ggml types by number (gguf.GGMLQuantizationType) used without importing gguf
G_F32, G_F16, G_BF16 = 0, 1, 30
_FLOAT_INPUTS = (G_F32, G_F16, G_BF16)
_PRECISION = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
              "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64"}
# Keys whose integer value has a fixed type in llama.cpp (used when encoding plain ints).
_KEY_TYPES = {"general.alignment": T_UINT32, "general.file_type": T_UINT32,
              "general.quantization_version": T_UINT32, SPLIT_NO: T_UINT16, SPLIT_COUNT: T_UINT16,
              SPLIT_TENSORS: T_INT32}

CHUNK_ELEMENTS = 4 << 20  # rows per work item: about 16 MiB of float32 input
COPY_CHUNK = 64 << 20


# -- llama.cpp's rules -----------------------------------------------------------------------
# tensor_allows_quantization() and the k-quant mixes live in gguf_mixes (one copy of the rules).

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
            head = os.pread(fd, 16, 0)
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


# -- copying and quantizing byte ranges ------------------------------------------------------

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


_FDS: dict[tuple[str, int], int] = {}


def _fd(path: str, flags: int) -> int:
    fd = _FDS.get((path, flags))
    if fd is None:
        fd = _FDS[(path, flags)] = os.open(path, flags)
    return fd


def _close_fds() -> None:
    while _FDS:
        os.close(_FDS.popitem()[1])


def _init_worker() -> None:
    _FDS.clear()  # inherited entries belong to the parent


def to_float32(data: bytes, ggml_type: int) -> Any:
    """float32 values of F32/F16/BF16 bytes, as ggml converts them."""
    import numpy as np

    if ggml_type == G_F32:
        return np.frombuffer(data, dtype=np.float32)
    if ggml_type == G_F16:
        return np.frombuffer(data, dtype=np.float16).astype(np.float32)
    if ggml_type == G_BF16:
        return (np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    raise ValueError(f"cannot convert ggml type {ggml_type}")


# ggml type number -> the qtype name modelbuild_plugins.gguf_kquants.quantize_kquant takes
_KQUANTS = {10: "q2_k", 11: "q3_k", 12: "q4_k", 13: "q5_k", 14: "q6_k"}


def _kquant_function() -> Callable[[Any, str], Any]:
    """modelbuild_plugins.gguf_kquants.quantize_kquant(rows float32 (n, k), qtype) -> uint8
    (n, k // 256 * block bytes), byte-identical to llama.cpp's reference quantizers."""
    try:
        from modelbuild_plugins.gguf_kquants import quantize_kquant
    except ImportError as exc:
        raise UsageError(f"gguf-quantize: the k-quant types need modelbuild_plugins.gguf_kquants ({exc})",
                         hint="use a legacy type (q8_0, q4_0…), or install a modelbuild with gguf_kquants") from None
    return quantize_kquant


def _run_task(task: tuple) -> int:
    """One work item: ("copy", src, src_off, dst, dst_off, nbytes, n) or
    ("convert", src, src_off, src_type, dst, dst_off, dst_type, rows, cols, n). Returns n."""
    if task[0] == "copy":
        _, src, src_off, dst, dst_off, nbytes, n = task
        copy_range(_fd(src, os.O_RDONLY), _fd(dst, os.O_WRONLY), src_off, dst_off, nbytes)
        return n
    _, src, src_off, src_type, dst, dst_off, dst_type, rows, cols, n = task
    item = {G_F32: 4, G_F16: 2, G_BF16: 2}[src_type]
    values = to_float32(_pread_all(_fd(src, os.O_RDONLY), rows * cols * item, src_off), src_type)
    kquant = _KQUANTS.get(dst_type)
    if kquant is not None:  # llama.cpp's reference k-quantizers
        out = _kquant_function()(values.reshape(rows, cols), kquant)
    else:  # gguf-py's: legacy types, F16, BF16
        from gguf import GGMLQuantizationType
        from gguf.quants import quantize

        out = quantize(values.reshape(rows, cols), GGMLQuantizationType(dst_type))
    _pwrite_all(_fd(dst, os.O_WRONLY), out.reshape(-1).view("uint8"), dst_off)
    return n


def run_tasks(tasks: list[tuple], ctx: TransformContext) -> None:
    """Run work items on up to ctx.jobs forked processes, reporting progress as they finish."""
    jobs = min(ctx.jobs, sum(1 for t in tasks if t[0] == "convert") or 1, len(tasks) or 1)
    if jobs <= 1:
        _init_worker()
        try:
            for task in tasks:
                ctx.advance(_run_task(task))
        finally:
            _close_fds()
        return
    import multiprocessing

    # big items first, so that the last ones keep every worker busy
    tasks = sorted(tasks, key=lambda t: -t[-1])
    with multiprocessing.get_context("fork").Pool(jobs, initializer=_init_worker) as pool:
        for n in pool.imap_unordered(_run_task, tasks, chunksize=1):
            ctx.advance(n)
        pool.close()
        pool.join()


# -- the plugins -----------------------------------------------------------------------------

def _read_models(files: list[WeightFile]) -> list[Model]:
    """The GGUF models of a model set (other files, configs included, are left alone)."""
    mine = [f for f in files if f.kind == "model" and (f.path.endswith(".gguf") or is_gguf(f.source))]
    return group_models(mine, [parse_header(f) for f in mine])


class GGUFFormat:
    name = "gguf"
    version = "1"
    summary = "GGUF (llama.cpp): header facts, lazy tensors, writer"
    extensions = (".gguf",)

    def detect(self, path: str) -> bool:
        return is_gguf(path)

    def read_info(self, files: list[WeightFile], config: dict[str, Any] | None) -> ModelInfo:
        models = group_models(list(files), [parse_header(f) for f in files])
        info = ModelInfo(format=self.name)
        if not models:
            return info
        for m in models:
            for _h, t in m.tensors:
                info.param_count += t.n_elements
                p = precision_name(t.ggml_type)
                info.dtype_params[p] = info.dtype_params.get(p, 0) + t.n_elements
        main = max(models, key=lambda m: m.param_count)  # the first on ties
        h = main.first
        arch = h.arch
        info.family = arch
        if arch and f"{arch}.attention.head_count" in h.kv:
            info.architecture = "transformer"
        info.quantization = _quantization(main)
        file_type = h.get("general.file_type")
        split = h.split
        info.extra = {
            "tensor_count": sum(len(x.tensors) for m in models for x in m.headers),
            "name": h.get("general.name"),
            "vocab_only": all(not x.tensors for m in models for x in m.headers),
            "gguf_version": h.version,
            "file_type": _file_type_name(file_type) if isinstance(file_type, int) else None,
            "split": None if split is None else {"count": split[1], "tensors_count": split[2],
                                                 "files": [f.path for f in main.files]},
            "models": len(models),
        }
        return info

    def iter_tensors(self, file: WeightFile | str | os.PathLike[str]) -> Iterator[tuple[str, str, tuple[int, ...], Callable[[], Any]]]:
        """(name, precision, numpy shape, load) per tensor. ``load()`` memory-maps: F32/F16/F64
        and integers as themselves, BF16 as ml_dtypes.bfloat16, block-quantized types as
        their raw uint8 blocks (rows of ``ne[0] / block * type_size`` bytes)."""
        h = parse_header(file)
        return self._iter(h)

    def _iter(self, h: Header) -> Iterator[tuple[str, str, tuple[int, ...], Callable[[], Any]]]:
        table = _type_table()
        for t in h.tensors:
            def load(t: TensorInfo = t) -> Any:
                return _load(h, t, table)

            yield t.name, precision_name(t.ggml_type), t.shape, load

    def read_metadata(self, file: WeightFile | str | os.PathLike[str]) -> dict[str, Any]:
        """Every key as a gguf.GGUFValue (value, type, sub_type), in file order: what
        :meth:`write` takes back."""
        from gguf import GGUFValueType
        from gguf.gguf_writer import GGUFValue

        h = parse_header(file)
        out: dict[str, Any] = {}
        for kv in h.kv.values():
            sub = None
            if kv.vtype == T_ARRAY:
                (sub,) = struct.unpack_from(kv.order + "I", kv.raw, 0)
            out[kv.key] = GGUFValue(kv.value, GGUFValueType(kv.vtype), None if sub is None else GGUFValueType(sub))
        return out

    def write(self, path: str, tensors: Iterable[tuple[Any, ...]], metadata: dict[str, Any] | None) -> None:
        """Stream tensors into a new GGUF file at *path*.

        *tensors*: ``(name, array)`` pairs, numpy shape order; float32/float16/float64,
        int8…int64 and ml_dtypes.bfloat16 arrays map to their ggml types. A block-quantized
        tensor is ``(name, raw uint8 blocks, "q8_0")`` (the precision name or a
        gguf.GGMLQuantizationType), as :meth:`iter_tensors` gives it. *metadata*: key →
        value in order; plain values get the usual GGUF types (int → i32, float → f32,
        bool, str, lists → arrays; ``general.alignment``/``file_type`` → u32), a
        gguf.GGUFValue fixes the type. Tensor data goes to a side file as it comes, so
        memory holds one tensor at a time.
        """
        import numpy as np

        md = dict(metadata or {})
        kvs = []
        for key, value in md.items():
            vtype, sub = _infer_type(value, key)
            kvs.append((key, vtype, encode_value(value, vtype, sub)))
        alignment = DEFAULT_ALIGNMENT
        if "general.alignment" in md:
            a = md["general.alignment"]
            alignment = int(getattr(a, "value", a))
        names = {v: k for k, v in _type_table().items()}
        by_precision = {precision_name(g): g for g in names.values()}
        infos = []
        side = path + ".tensors.tmp"
        try:
            with open(side, "wb") as out:
                for item in tensors:
                    name, array = item[0], item[1]
                    arr = np.ascontiguousarray(array)
                    if len(item) > 2:
                        qt = item[2]
                        gtype = int(qt) if not isinstance(qt, str) else by_precision.get(qt, names.get(qt.upper(), -1))
                        if gtype not in names.values():
                            raise ValueError(f"{name}: unknown tensor type {qt!r}")
                        _, block, tsize = _type_table()[gtype]
                        if arr.dtype == np.uint8 and (block > 1 or tsize > 1):  # raw bytes, rows of blocks
                            if arr.ndim == 0 or arr.shape[-1] % tsize:
                                raise ValueError(f"{name}: {arr.shape} is not rows of {tsize}-byte blocks")
                            shape = (*arr.shape[:-1], arr.shape[-1] // tsize * block)
                        elif block > 1:
                            raise ValueError(f"{name}: a {qt} tensor is given as its raw uint8 blocks")
                        elif str(arr.dtype) in (precision_name(gtype), "uint16" if gtype == G_BF16 else ""):
                            shape = arr.shape
                        else:
                            raise ValueError(f"{name}: a {arr.dtype} array is not {qt}")
                    else:
                        gtype = _ggml_type_of(arr.dtype, name)
                        shape = arr.shape
                    if not shape:
                        shape, arr = (1,), arr.reshape(1)
                    data = arr.reshape(-1).view(np.uint8)
                    out.write(data.data)
                    out.write(bytes(_pad(data.nbytes, alignment) - data.nbytes))
                    infos.append((name, tuple(int(d) for d in shape), gtype, int(data.nbytes)))
            layout = write_header(path, kvs, infos, alignment)
            with open(side, "rb") as src, open(path, "r+b") as dst:
                copy_range(src.fileno(), dst.fileno(), 0, layout.data_offset, os.fstat(src.fileno()).st_size)
        finally:
            if os.path.exists(side):
                os.remove(side)


_NUMPY_GGML = {"float32": 0, "float16": 1, "int8": 24, "int16": 25, "int32": 26, "int64": 27, "float64": 28,
               "bfloat16": 30}


def _ggml_type_of(dtype: Any, name: str) -> int:
    gtype = _NUMPY_GGML.get(str(dtype))
    if gtype is None:
        raise ValueError(f"{name}: no GGUF type for numpy {dtype}; pass (name, raw blocks, type) for a "
                         f"quantized tensor")
    return gtype


def _load(h: Header, t: TensorInfo, table: dict[int, tuple[str, int, int]]) -> Any:
    import numpy as np

    name, block, tsize = table[t.ggml_type]
    shape = t.shape
    if block > 1:
        dtype: Any = np.dtype(np.uint8)
        shape = (*shape[:-1], shape[-1] // block * tsize)
    elif name == "BF16":
        dtype = np.dtype(np.uint16)
    else:
        dtype = np.dtype({v: k for k, v in _NUMPY_GGML.items()}[t.ggml_type])
    dtype = dtype.newbyteorder(h.order) if dtype.itemsize > 1 else dtype
    if t.nbytes == 0:
        arr = np.empty(shape, dtype=dtype)
    else:
        arr = np.memmap(h.source, dtype=dtype, mode="r", offset=t.data_start, shape=shape)
    if name == "BF16":
        import ml_dtypes

        if h.order != "<":  # ml_dtypes.bfloat16 has no byte order: swap into memory
            arr = arr.astype("<u2")
        arr = arr.view(ml_dtypes.bfloat16)
    return arr


def _file_type_name(value: int) -> str:
    from gguf.constants import LlamaFileType

    base = value & ~1024  # LLAMA_FTYPE_GUESSED
    try:
        return LlamaFileType(base).name
    except ValueError:
        return f"UNKNOWN_{value}"


def _quantization(m: Model) -> str | None:
    ft = m.first.get("general.file_type")
    if isinstance(ft, int) and not isinstance(ft, bool):
        name = _file_type_name(ft)
        if name.startswith("MOSTLY_") and name not in ("MOSTLY_F16", "MOSTLY_BF16"):
            return name[len("MOSTLY_"):].lower()
    table = _type_table()
    per_type: dict[str, int] = {}
    for _h, t in m.tensors:
        tname, block, _ = table[t.ggml_type]
        if block > 1:
            per_type[tname.lower()] = per_type.get(tname.lower(), 0) + t.n_elements
    if not per_type:
        return None
    return max(sorted(per_type), key=lambda k: per_type[k])


@dataclass
class _TensorPlan:
    tensor: TensorInfo
    dst_type: int
    nbytes: int


_LEGACY_TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
_KQUANT_FILE_TYPES = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
                      "q3_k", "q4_k", "q5_k")  # the last three: llama-quantize's aliases of the _M mixes
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _flag(name: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise UsageError(f"gguf-quantize: --{name}={value} is not a boolean", hint=f"--{name}=true or --{name}=false")


class GGUFQuantizer:
    name = "gguf-quantize"
    version = "2"
    summary = ("llama.cpp-style quantization of F32/F16/BF16 GGUF files: llama-quantize's k-quant mixes "
               "(q4_k_m…) or --pure types")
    format = "gguf"
    types = _LEGACY_TYPES + _KQUANT_FILE_TYPES

    @staticmethod
    def default_pure(qtype: str) -> bool:
        """The legacy types (f16…q5_1) are --pure unless told otherwise (version 1's output);
        the k-quant file types use llama.cpp's mix."""
        return qtype.lower() in _LEGACY_TYPES

    def choose(self, headers: list[Header], qtype: str, keep: list[str], arch: str | None = None,
               pure: bool | None = None) -> dict[str, str | None]:
        """gguf_mixes.tensor_types() over every tensor of a model (all its shards, in order):
        {name: ggml type name, or None to keep the tensor as it is}."""
        from modelbuild_plugins.gguf_mixes import FILE_TYPES, MixFacts, file_type, tensor_types

        pure = self.default_pure(qtype) if pure is None else pure
        first = headers[0]
        facts = MixFacts.from_metadata(first.get, arch or first.arch)
        if not pure and FILE_TYPES[file_type(qtype)][1] not in ("F16", "BF16", "F32") and facts.n_layer <= 0:
            raise FormatError(first.label, f"the {qtype} mix needs general.architecture and <arch>.block_count "
                                           f"(as llama-quantize does)", hint="or --pure=true: one type for all")
        try:
            return tensor_types([(t.name, t.ne) for h in headers for t in h.tensors], qtype, facts, pure=pure,
                                keep=keep)
        except ValueError as exc:
            raise FormatError(first.label, str(exc)) from None

    def plan(self, h: Header, qtype: str, keep: list[str], arch: str | None = None, *, pure: bool | None = None,
             choice: dict[str, str | None] | None = None) -> list[_TensorPlan]:
        """The type each tensor of *h* gets, and its size. *arch*: the model's
        general.architecture, for the shards of a split set that do not carry it; *choice*:
        :meth:`choose` for the whole model (computed from *h* alone when not given)."""
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        if choice is None:
            choice = self.choose([h], qtype, keep, arch, pure)
        plans = []
        for t in h.tensors:
            dst = t.ggml_type
            chosen = choice.get(t.name)
            if chosen is not None:
                dst = int(GGMLQuantizationType[chosen])
            if dst != t.ggml_type and t.ggml_type not in _FLOAT_INPUTS:
                if GGML_QUANT_SIZES[GGMLQuantizationType(t.ggml_type)][0] > 1:
                    raise FormatError(h.label, f"tensor {t.name!r} is already {type_name(t.ggml_type)}: "
                                               f"requantizing is not supported", hint="quantize from F32/F16/BF16")
                dst = t.ggml_type  # integers and F64: not weights llama.cpp converts; copied
            b, s = GGML_QUANT_SIZES[GGMLQuantizationType(dst)]
            plans.append(_TensorPlan(t, dst, t.n_elements // b * s))
        return plans

    def quantize(self, files: list[WeightFile], qtype: str, options: dict[str, Any],
                 ctx: TransformContext) -> list[WeightFile | Output]:
        # imported here, once, so that the forked workers inherit them
        import gguf.quants  # noqa: F401
        import numpy  # noqa: F401
        from gguf.constants import GGML_QUANT_VERSION, LlamaFileType
        from modelbuild_plugins.gguf_mixes import FILE_TYPES, file_type

        qtype = qtype.lower()
        if qtype not in self.types:
            raise UsageError(f"gguf-quantize cannot produce {qtype!r}", hint=f"types: {', '.join(self.types)}")
        unknown = sorted(set(options) - {"keep", "pure"})
        if unknown:
            raise UsageError(f"gguf-quantize has no option {unknown[0]!r}",
                             hint="its options: --keep=PATTERN,… --pure=true|false")
        keep = options.get("keep", [])
        keep = [keep] if isinstance(keep, str) else list(keep)
        pure = _flag("pure", options.get("pure"), self.default_pure(qtype))
        ftype = int(LlamaFileType[FILE_TYPES[file_type(qtype)][0]])
        models = _read_models(files)
        rewritten: dict[str, Output] = {}
        tasks: list[tuple] = []
        total = 0
        for m in models:
            for h in m.headers:
                _require_little_endian(h, self.name)
            choice = self.choose(m.headers, qtype, keep, m.first.arch, pure)
            for f, h in zip(m.files, m.headers):
                plans = self.plan(h, qtype, keep, m.first.arch, pure=pure, choice=choice)
                kvs = _kv_list(h)
                if h.split is None or h.split[0] == 0:  # the file holding the model's keys
                    kvs = _set_kv(kvs, "general.quantization_version", T_UINT32, struct.pack("<I", GGML_QUANT_VERSION))
                    kvs = _set_kv(kvs, "general.file_type", T_UINT32, struct.pack("<I", ftype))
                out_path = ctx.output_path(f.path)
                infos = [(p.tensor.name, p.tensor.shape, p.dst_type, p.nbytes) for p in plans]
                layout = write_header(out_path, kvs, infos, h.alignment)
                _check_layout(out_path, layout, [p.tensor.name for p in plans])
                for p, dst_off in zip(plans, layout.offsets):
                    tasks.extend(_tasks_for(h, p, out_path, dst_off))
                    total += p.tensor.n_elements
                rewritten[f.path] = Output(f.path, out_path)
        if any(t[0] == "convert" and t[6] in _KQUANTS for t in tasks):
            _kquant_function()  # fails here, before any work, when the k-quantizers are missing
        ctx.set_total(total)
        ctx.log(f"gguf-quantize {qtype}{' (pure)' if pure else ''}: {len(tasks)} work items on up to "
                f"{ctx.jobs} processes")
        run_tasks(tasks, ctx)
        return [rewritten.get(f.path, f) for f in files]


def _set_kv(kvs: list[tuple[str, int, bytes]], key: str, vtype: int, raw: bytes) -> list[tuple[str, int, bytes]]:
    """Replace *key* where it is, or append it."""
    out = [(k, vtype, raw) if k == key else (k, t, r) for k, t, r in kvs]
    if not any(k == key for k, _, _ in kvs):
        out.append((key, vtype, raw))
    return out


def _tasks_for(h: Header, p: _TensorPlan, dst: str, dst_off: int) -> list[tuple]:
    t = p.tensor
    if p.dst_type == t.ggml_type:
        def elements(a: int) -> int:  # progress: elements before byte a
            return t.n_elements * a // t.nbytes if t.nbytes else 0

        return [("copy", h.source, t.data_start + a, dst, dst_off + a, min(COPY_CHUNK, t.nbytes - a),
                 elements(min(a + COPY_CHUNK, t.nbytes)) - elements(a))
                for a in range(0, t.nbytes, COPY_CHUNK)] or [("copy", h.source, t.data_start, dst, dst_off, 0,
                                                              t.n_elements)]
    cols = t.ne[0]
    rows = t.n_elements // cols if cols else 0
    in_row = t.nbytes // rows if rows else 0
    out_row = p.nbytes // rows if rows else 0
    step = max(1, CHUNK_ELEMENTS // max(cols, 1))
    return [("convert", h.source, t.data_start + r * in_row, t.ggml_type, dst, dst_off + r * out_row, p.dst_type,
             min(step, rows - r), cols, min(step, rows - r) * cols)
            for r in range(0, rows, step)]


class GGUFShard:
    name = "gguf"
    version = "1"
    summary = "llama.cpp gguf-split --split-max-size layout (<name>-00001-of-0000N.gguf) and merge"

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


@hookimpl
def modelbuild_register_formats(registry: Any) -> None:
    registry.add(GGUFFormat())


@hookimpl
def modelbuild_register_quantizers(registry: Any) -> None:
    registry.add(GGUFQuantizer())


@hookimpl
def modelbuild_register_shard_strategies(registry: Any) -> None:
    registry.add(GGUFShard())
