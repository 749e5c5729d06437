"""The safetensors header: the dtype table and a strict parser.

:func:`read_header` accepts exactly what the ``safetensors`` library accepts and returns a
:class:`Header` of :class:`Tensor` entries in data order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

# FormatError, WeightFile and lfs_pointer_hint are imported where a header is read: a build
# that only chooses this format (a no-op rebuild) does not import modelbuild's weights module

PLUGIN_VERSION = "1"

# The safetensors library's limit on the JSON header (``MAX_HEADER_SIZE``).
MAX_HEADER_SIZE = 100_000_000

# safetensors dtypes in the order of the library's ``Dtype`` enum ("increasing alignment"):
# code -> (bits per element, ModelPack precision, numpy dtype name or None when packed).
# The writer orders tensor data by *descending* rank in this list, then by name.
_DTYPES: dict[str, tuple[int, str, str | None]] = {
    "BOOL": (8, "bool", "bool"),
    "F4": (4, "float4_e2m1", None),
    "F6_E2M3": (6, "float6_e2m3", None),
    "F6_E3M2": (6, "float6_e3m2", None),
    "U8": (8, "uint8", "uint8"),
    "I8": (8, "int8", "int8"),
    "F8_E5M2": (8, "float8_e5m2", "float8_e5m2"),
    "F8_E4M3": (8, "float8_e4m3", "float8_e4m3fn"),
    "F8_E8M0": (8, "float8_e8m0", "float8_e8m0fnu"),
    "F8_E4M3FNUZ": (8, "float8_e4m3fnuz", "float8_e4m3fnuz"),
    "F8_E5M2FNUZ": (8, "float8_e5m2fnuz", "float8_e5m2fnuz"),
    "I16": (16, "int16", "int16"),
    "U16": (16, "uint16", "uint16"),
    "F16": (16, "float16", "float16"),
    "BF16": (16, "bfloat16", "bfloat16"),
    "I32": (32, "int32", "int32"),
    "U32": (32, "uint32", "uint32"),
    "F32": (32, "float32", "float32"),
    "C64": (64, "complex64", "complex64"),
    "F64": (64, "float64", "float64"),
    "I64": (64, "int64", "int64"),
    "U64": (64, "uint64", "uint64"),
}
_RANK = {code: i for i, code in enumerate(_DTYPES)}
_BY_PRECISION = {prec: code for code, (_, prec, _) in _DTYPES.items()}
_BY_NUMPY = {np_name: code for code, (_, _, np_name) in _DTYPES.items() if np_name}
_FLOAT8 = {"F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ"}
_CASTABLE = {"F32", "F16", "BF16"}  # what the quantizer converts; F64 and the rest stay
_QUANTIZED = _FLOAT8 | {"I8", "U8", "F4"}

# Tensors that hold quantization scales, not model parameters (see read_info).
_SCALE_SUFFIXES = ("weight_scale", "weight_scale_inv", "weight_scale_2", "input_scale", "output_scale",
                   "k_scale", "v_scale", "q_scale", "prob_scale")


# -- reading headers ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tensor:
    """One header entry. ``start``/``end`` are absolute byte offsets in the file."""

    name: str
    dtype: str  # safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True, slots=True)
class Header:
    label: str  # the name errors use: the artifact path
    source: str  # where the bytes are
    size: int  # file size
    metadata: dict[str, str] | None  # None when the header has no __metadata__
    tensors: tuple[Tensor, ...]  # in data order


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _is_uint(value: Any) -> bool:
    return type(value) is int and 0 <= value < 2**64


def read_header(source: str, label: str | None = None) -> Header:
    """Parse and validate the header of the safetensors file at *source*.

    Accepts what ``safetensors`` (``SafeTensors::read_metadata``) accepts, and raises
    :class:`FormatError` naming *label* for everything it rejects: a file shorter than the
    8-byte length prefix; a header length over 100,000,000 bytes or past the end of the
    file; a header that is not UTF-8, not JSON or not an object (duplicate keys included);
    ``__metadata__`` that is not a string-to-string map; an entry without a known
    ``dtype``, a ``shape`` of non-negative integers, or two ``data_offsets``; a byte range
    whose length is not dtype × shape; byte ranges that, sorted by offset, do not tile the
    data region contiguously from 0 (an overlap or a gap); and tensor data that runs past,
    or stops short of, the end of the file (the library rejects trailing bytes too).
    """
    from modelbuild.api import FormatError, lfs_pointer_hint

    label = label or source
    try:
        with open(source, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise FormatError(label, f"not a safetensors file: {size} bytes, shorter than the 8-byte header length")
            n = int.from_bytes(prefix, "little")
            if n > MAX_HEADER_SIZE:
                hint = lfs_pointer_hint(prefix + fh.read(64))
                if hint:
                    raise FormatError(label, "not a safetensors file", hint=hint)
                raise FormatError(label, f"header length {n:,} exceeds safetensors' limit of {MAX_HEADER_SIZE:,} bytes")
            if 8 + n > size:
                raise FormatError(label, f"header length {n:,} runs past the end of the {size:,}-byte file (truncated?)")
            raw = fh.read(n)
    except OSError as exc:
        raise FormatError(label, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) != n:
        raise FormatError(label, "file shrank while its header was read")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(label, f"header is not UTF-8 ({exc.reason} at byte {8 + exc.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicates)
    except ValueError as exc:
        raise FormatError(label, f"header is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FormatError(label, f"header is JSON {type(doc).__name__}, not an object")

    metadata = doc.pop("__metadata__", None)
    if metadata is not None and (not isinstance(metadata, dict)
                                 or not all(isinstance(v, str) for v in metadata.values())):
        raise FormatError(label, "__metadata__ must map strings to strings")

    base = 8 + n
    entries: list[tuple[int, int, str, str, tuple[int, ...]]] = []
    for name, info in doc.items():
        if not isinstance(info, dict):
            raise FormatError(label, f"tensor {name!r}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _DTYPES:
            raise FormatError(label, f"tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise FormatError(label, f"tensor {name!r}: shape must be a list of non-negative integers, not {shape!r}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_uint(o) for o in offsets):
            raise FormatError(label, f"tensor {name!r}: data_offsets must be two non-negative integers, not {offsets!r}")
        entries.append((offsets[0], offsets[1], name, dtype, tuple(shape)))

    entries.sort(key=lambda e: (e[0], e[1]))  # the library sorts by data_offsets, then checks
    tensors: list[Tensor] = []
    expected = 0
    for s, e, name, dtype, shape in entries:
        if s != expected or e < s:
            if e < s:
                what = f"ends before it starts ({s}..{e})"
            elif s < expected:
                what = f"overlaps the previous tensor (starts at {s}, previous data ends at {expected})"
            else:
                what = f"leaves a gap: starts at {s}, previous data ends at {expected}"
            raise FormatError(label, f"tensor {name!r}: invalid data_offsets: {what}")
        numel = 1
        for d in shape:
            numel *= d
        bits = numel * _DTYPES[dtype][0]
        if bits % 8:
            raise FormatError(label, f"tensor {name!r}: {numel} × {dtype} is not a whole number of bytes")
        if e - s != bits // 8:
            raise FormatError(label, f"tensor {name!r}: data_offsets [{s}, {e}] hold {e - s} bytes, "
                                     f"but {dtype} {list(shape)} needs {bits // 8}")
        expected = e
        tensors.append(Tensor(name, dtype, shape, base + s, base + e))
    if base + expected > size:
        raise FormatError(label, f"tensor data ends at byte {base + expected:,}, past the end of the "
                                 f"{size:,}-byte file (truncated?)")
    if base + expected < size:
        raise FormatError(label, f"{size - base - expected:,} bytes after the last tensor: the data region "
                                 f"must end where the file ends")
    return Header(label, source, size, metadata, tuple(tensors))


def _source_and_label(file: Any) -> tuple[str, str]:
    from modelbuild.api import WeightFile

    if isinstance(file, WeightFile):
        return file.source, file.path
    return os.fspath(file), os.fspath(file)


def _numpy_dtype(code: str, label: str = "", name: str = "") -> Any:
    import numpy as np

    from modelbuild.api import FormatError

    np_name = _DTYPES[code][2]
    if np_name is None:
        raise FormatError(label, f"tensor {name!r}: {code} packs elements below a byte; numpy cannot hold it")
    if np_name.startswith(("float8", "bfloat16")):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, np_name))
    return np.dtype(np_name).newbyteorder("<")


def _code_of(dtype: Any) -> str:
    """The safetensors code for a numpy dtype (what the library's numpy binding accepts)."""
    import numpy as np

    name = np.dtype(dtype).name
    if name not in _BY_NUMPY:
        raise ValueError(f"safetensors cannot store numpy dtype {name}")
    return _BY_NUMPY[name]
