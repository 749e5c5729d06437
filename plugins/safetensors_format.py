"""Safetensors: a format handler, a dtype-cast / FP8 quantizer, and Hugging Face's sharding.

Three objects, each registered by its own hook:

* :class:`SafetensorsFormat` (format ``safetensors``) reads headers with a strict parser of
  its own that accepts exactly what the ``safetensors`` library accepts (see
  :func:`read_header`), reads tensors lazily through ``mmap``, and writes files byte for byte
  as ``safetensors.numpy.save_file`` does (see :func:`layout`).
* :class:`SafetensorsCast` (quantizer ``safetensors-cast``) casts to ``float16`` or
  ``bfloat16``, or quantizes linear weights to ``float8_e4m3`` in the layout vLLM loads as a
  ``"fp8"`` checkpoint with per-tensor scales.
* :class:`SafetensorsShard` (shard strategy ``safetensors``) splits and merges exactly as
  ``huggingface_hub.split_state_dict_into_shards_factory`` and ``transformers`` do.

**Model groups.** A model set can hold several safetensors models: ``model.safetensors`` and
``model.int8.safetensors`` side by side, or ``text_encoder/`` and ``unet/`` in a diffusers
layout. Files are grouped by directory and by *prefix*: the name without ``.safetensors`` and
without a ``-00001-of-00003`` shard suffix (``model-00001-of-00002.safetensors`` and
``model-00002-of-00002.safetensors`` form the group ``model``, whose index is
``model.safetensors.index.json``). Every transform works group by group.

**Determinism.** Output bytes depend only on the input tensors and metadata: the header is
compact JSON (``separators=(",", ":")``, UTF-8 unescaped, as serde_json writes it) with
``__metadata__`` first and its keys sorted (the library writes them in HashMap order, which
varies between runs; that is the only place our files may differ from the library's),
then the tensors in data order, padded with spaces to a multiple of 8 bytes; tensor data is
ordered by descending dtype alignment, then by name, as the library's ``prepare`` orders it.
Conversions are elementwise (``astype``, a per-tensor amax), so chunking and the number of
worker processes never change a byte.

Heavy imports (numpy, ml_dtypes) happen inside functions: the CLI imports this module on
every start.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from modelbuild.errors import UsageError
from modelbuild.hookspecs import hookimpl
from modelbuild.weights import (
    FormatError,
    ModelInfo,
    Output,
    TransformContext,
    WeightFile,
)

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

_SHARD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.safetensors$")
_INDEX_SUFFIX = ".safetensors.index.json"

CHUNK_BYTES = 64 << 20  # conversions work on at most this many input bytes at a time


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
    label = label or source
    try:
        with open(source, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise FormatError(label, f"not a safetensors file: {size} bytes, shorter than the 8-byte header length")
            n = int.from_bytes(prefix, "little")
            if n > MAX_HEADER_SIZE:
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
    if isinstance(file, WeightFile):
        return file.source, file.path
    return os.fspath(file), os.fspath(file)


def _numpy_dtype(code: str, label: str = "", name: str = "") -> Any:
    import numpy as np

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


# -- the format handler -------------------------------------------------------------------


def scale_companions(tensors: Iterable[Tensor]) -> set[str]:
    """The names of tensors that hold quantization scales rather than model parameters:
    ``P.scale`` beside a quantized (int8, uint8, float8, float4) ``P.<anything>`` (fracast's
    ``P.qweight``, an int8 plugin's ``P.int8``), and, when the checkpoint holds quantized
    tensors, names ending in one of ``_SCALE_SUFFIXES`` (``weight_scale``, ``input_scale``…)."""
    tensors = list(tensors)
    quantized_parents = {t.name.rpartition(".")[0] for t in tensors if t.dtype in _QUANTIZED}
    out = set()
    for t in tensors:
        parent, _, leaf = t.name.rpartition(".")
        if (leaf == "scale" and parent in quantized_parents) or (quantized_parents and leaf in _SCALE_SUFFIXES):
            out.add(t.name)
    return out


class SafetensorsFormat:
    name = "safetensors"
    version = PLUGIN_VERSION
    summary = "Hugging Face safetensors (strict header parser, mmap reads, streaming writes)"
    extensions = (".safetensors",)

    def detect(self, path: str) -> bool:
        """An 8-byte little-endian length that fits the file, then ``{``: nine bytes read."""
        try:
            with open(path, "rb") as fh:
                head = fh.read(9)
                size = os.fstat(fh.fileno()).st_size
        except OSError:
            return False
        if len(head) < 9:
            return False
        n = int.from_bytes(head[:8], "little")
        return 2 <= n <= MAX_HEADER_SIZE and 8 + n <= size and head[8:9] == b"{"

    def read_info(self, files: list[WeightFile], config: dict[str, Any] | None) -> ModelInfo:
        """Facts from the headers of *files* (validated) and from ``config.json``.

        ``param_count`` is the sum of element counts over every tensor of every file, except
        quantization scales, which are not parameters of the model: a tensor ``P.scale``
        beside a quantized (float8, int8, uint8, float4) ``P.qweight``, ``P.int8`` or any
        ``P.*``, and, in a checkpoint holding quantized tensors, tensors named
        ``…weight_scale``, ``…weight_scale_inv``, ``…weight_scale_2``, ``…input_scale``,
        ``…output_scale`` and ``…k_scale`` / ``v_scale`` / ``q_scale`` / ``prob_scale``
        (vLLM's and compressed-tensors' names); see :func:`scale_companions`.
        So a float8 checkpoint counts what the model it came from counted. They are
        counted in ``extra["scale_tensors"]`` / ``extra["scale_params"]``.

        ``dtype_params`` maps ModelPack precisions (``float32``, ``bfloat16``,
        ``float8_e4m3``, …) to those parameters. ``quantization`` is
        ``config["quantization_config"]["quant_method"]`` when present, else ``"fp8"``
        when float8 tensors exist, else None. ``architecture`` is ``"transformer"`` when the
        config has ``transformers_version``, ``architectures`` or ``num_attention_heads``;
        ``family`` is its ``model_type``. ``extra`` holds ``tensor_count`` and ``metadata``
        (the ``__metadata__`` all files agree on; ``metadata_by_file`` when they differ).
        """
        headers = [read_header(f.source, f.path) for f in files]
        scales = scale_companions(t for h in headers for t in h.tensors)
        info = ModelInfo(format=self.name)
        scale_tensors = scale_params = count = 0
        has_float8 = False
        for h in headers:
            for t in h.tensors:
                count += 1
                if t.name in scales:
                    scale_tensors += 1
                    scale_params += t.numel
                    continue
                info.param_count += t.numel
                prec = _DTYPES[t.dtype][1]
                info.dtype_params[prec] = info.dtype_params.get(prec, 0) + t.numel
                has_float8 = has_float8 or t.dtype in _FLOAT8
        info.dtype_params = {k: v for k, v in info.dtype_params.items() if v}
        qc = (config or {}).get("quantization_config")
        if isinstance(qc, dict) and isinstance(qc.get("quant_method"), str):
            info.quantization = qc["quant_method"]
        elif has_float8:
            info.quantization = "fp8"
        if config:
            if any(k in config for k in ("transformers_version", "architectures", "num_attention_heads")):
                info.architecture = "transformer"
            if isinstance(config.get("model_type"), str):
                info.family = config["model_type"]
        info.extra["tensor_count"] = count
        mds = {h.label: h.metadata for h in headers}
        distinct = {json.dumps(m, sort_keys=True) for m in mds.values()}
        if len(distinct) <= 1:
            info.extra["metadata"] = next(iter(mds.values()), None)
        else:
            common = None
            for m in mds.values():
                items = set((m or {}).items())
                common = items if common is None else common & items
            info.extra["metadata"] = dict(sorted(common or ()))
            info.extra["metadata_by_file"] = mds
        if scale_tensors:
            info.extra["scale_tensors"] = scale_tensors
            info.extra["scale_params"] = scale_params
        return info

    def iter_tensors(self, file: WeightFile | str) -> Iterator[tuple[str, str, tuple[int, ...], Callable[[], Any]]]:
        """``(name, precision, shape, load)`` in data order; ``precision`` is the ModelPack
        name (``bfloat16``…). ``load()`` returns a read-only numpy array over an ``mmap`` of
        the file (bfloat16 and float8 as ml_dtypes types); nothing is read before it."""
        source, label = _source_and_label(file)
        header = read_header(source, label)
        mapped: list[Any] = []

        def loader(t: Tensor) -> Callable[[], Any]:
            def load() -> Any:
                import mmap

                import numpy as np

                dtype = _numpy_dtype(t.dtype, label, t.name)
                if t.nbytes == 0:
                    return np.zeros(t.shape, dtype)
                if not mapped:
                    with open(source, "rb") as fh:
                        mapped.append(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
                arr = np.frombuffer(mapped[0], dtype=dtype, count=t.numel, offset=t.start)
                return arr.reshape(t.shape)

            return load

        for t in header.tensors:
            yield t.name, _DTYPES[t.dtype][1], t.shape, loader(t)

    def write(self, path: str, tensors: Iterable[Any], metadata: dict[str, str] | None = None) -> None:
        """Write a safetensors file, laid out as ``safetensors.numpy.save_file`` lays it out.

        *tensors* yields ``(name, numpy array)`` pairs, or ``(name, dtype, shape, load)``
        tuples as :meth:`iter_tensors` yields them (``dtype`` a ModelPack precision or a
        safetensors code). The header is computed from names, dtypes and shapes first; then
        each tensor is fetched (``load()`` is called only then) and written in data order,
        so with the four-tuple form only one tensor is in memory at a time. Pairs are
        collected first: cheap for memory-mapped arrays.
        """
        import numpy as np

        items: list[tuple[Spec, Callable[[], Any]]] = []
        for item in tensors:
            if len(item) == 2:
                name, arr = item
                arr = np.asarray(arr)
                items.append((Spec(name, _code_of(arr.dtype), tuple(arr.shape)), lambda a=arr: a))
            else:
                name, dtype, shape, load = item
                code = dtype if dtype in _DTYPES else _BY_PRECISION.get(str(dtype)) or _code_of(dtype)
                items.append((Spec(name, code, tuple(int(d) for d in shape)), load))
        lay = layout([s for s, _ in items], metadata)
        loads = {s.name: load for s, load in items}
        with open(path, "wb") as fh:
            fh.write(lay.head)
            for spec in lay.order:
                arr = np.asarray(loads.pop(spec.name)())
                if _code_of(arr.dtype) != spec.dtype or tuple(arr.shape) != spec.shape:
                    raise ValueError(f"tensor {spec.name}: load() gave {arr.dtype} {arr.shape}, "
                                     f"announced {spec.dtype} {spec.shape}")
                arr = np.ascontiguousarray(arr.reshape(-1))
                if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and np.little_endian is False):
                    arr = arr.astype(arr.dtype.newbyteorder("<"))
                raw = arr.view(np.uint8)
                fh.writelines(raw[i:i + CHUNK_BYTES].data for i in range(0, raw.size, CHUNK_BYTES))


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


# -- parallel work ------------------------------------------------------------------------

# A task: (op, src, src_offset, count, src_code, dst, dst_offset, dst_code, scale, name).
#   "copy": copy *count* bytes.  "cast": convert *count* elements with astype.
#   "amax": return max |x| of *count* elements (as float32).  "fp8": x / scale, clipped to
#   ±448, cast to float8_e4m3fn.  Workers read with mmap and pwrite at the given offset:
#   no tensor data travels through pipes.
Task = tuple[str, str, int, int, str, str, int, str, float, str]


def _run_task(task: Task) -> tuple[int, float]:
    """Do one task; return (input bytes done, a value: amax, or new infinities for casts)."""
    op, src, src_off, count, src_code, dst, dst_off, dst_code, scale, _name = task
    if op == "copy":
        with open(src, "rb") as s, open(dst, "r+b") as d:
            _copy_range(s.fileno(), d.fileno(), src_off, dst_off, count)
        return count, 0.0
    import numpy as np

    x = np.memmap(src, dtype=_numpy_dtype(src_code), mode="r", offset=src_off, shape=(count,))
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is counted and logged instead
            return _convert(op, x, count, dst, dst_off, dst_code, scale)
    finally:
        del x


def _convert(op: str, x: Any, count: int, dst: str, dst_off: int, dst_code: str, scale: float
             ) -> tuple[int, float]:
    import numpy as np

    if op == "amax":  # from min and max: no temporary the size of the chunk
        if count == 0:
            return 0, 0.0
        lo, hi = float(np.min(x)), float(np.max(x))
        return 0, (float("nan") if np.isnan(lo) or np.isnan(hi) else max(-lo, hi))
    if op == "cast":
        y = x.astype(_numpy_dtype(dst_code))
        overflow = 0
        if dst_code == "F16":
            overflow = int(np.count_nonzero(np.isinf(y) & np.isfinite(x)))
    else:  # fp8
        t = x.astype(np.float32)  # a copy: the one float32 temporary, divided and clipped in place
        np.divide(t, np.float32(scale), out=t)
        np.clip(t, -FP8_MAX, FP8_MAX, out=t)
        y = t.astype(_numpy_dtype("F8_E4M3"))
        del t
        overflow = 0
    with open(dst, "r+b") as d:
        _pwrite_all(d.fileno(), y.view(np.uint8), dst_off)
    return x.nbytes, float(overflow)


def _run_all(tasks: list[Task], ctx: TransformContext, on_done: Callable[[Task, tuple[int, float]], None]) -> None:
    """Run *tasks* in up to ``ctx.jobs`` forked processes (in-process for one job)."""
    if ctx.jobs <= 1 or len(tasks) <= 1:
        for t in tasks:
            on_done(t, _run_task(t))
        return
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    pool = ProcessPoolExecutor(max_workers=min(ctx.jobs, len(tasks)), mp_context=multiprocessing.get_context("fork"))
    try:
        futures = {pool.submit(_run_task, t): t for t in tasks}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                on_done(futures[fut], fut.result())  # re-raises a worker's error
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _chunks(t: Tensor) -> Iterator[tuple[int, int, int]]:
    """(element offset, element count, byte offset) slices of at most CHUNK_BYTES."""
    item = _DTYPES[t.dtype][0] // 8
    per = max(1, CHUNK_BYTES // item)
    for start in range(0, t.numel, per):
        yield start, min(per, t.numel - start), t.start + start * item


# -- the quantizer ------------------------------------------------------------------------

_TARGETS = {"float16": "F16", "bfloat16": "BF16", "float8_e4m3": "F8_E4M3"}
FP8_MAX = 448.0  # largest finite float8_e4m3fn

# Never quantized to float8: embeddings and the LM head (not vLLM LinearBase layers),
# MoE routers (vLLM builds them with quant_config=None), norms.
FP8_DEFAULT_KEEP = ("lm_head.*", "*.lm_head.*", "*embed*", "*.wte.*", "*.wpe.*", "*norm*",
                    "*.gate.weight", "*shared_expert_gate*", "*router*")
# vLLM fuses these projections into one layer; all parts must share one precision.
_FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _keep_patterns(options: dict[str, Any]) -> list[str]:
    keep = options.get("keep", [])
    if isinstance(keep, str):
        keep = [p for p in keep.split(",") if p]
    return [str(p) for p in keep]


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _set_dtype_fields(doc: Any, value: str) -> bool:
    """Set ``torch_dtype`` / ``dtype`` (transformers v5) wherever they name a float type."""
    changed = False
    if isinstance(doc, dict):
        for key in ("torch_dtype", "dtype"):
            if doc.get(key) in ("float32", "float16", "bfloat16", "float64") and doc[key] != value:
                doc[key] = value
                changed = True
        for v in doc.values():
            changed = _set_dtype_fields(v, value) or changed
    return changed


def _scale_name(weight: str) -> str:
    return weight[: -len(".weight")] + ".weight_scale"


def _keep_fused_together(quantize: set[str], kept: set[str], ctx: TransformContext) -> None:
    """Keep every part of a vLLM-fused projection when one part is kept (one group)."""
    for name in sorted(kept):
        module = name[: -len(".weight")]
        parent, _, leaf = module.rpartition(".")
        for fused in _FUSED:
            if leaf not in fused:
                continue
            for sibling in fused:
                other = f"{parent}.{sibling}.weight" if parent else f"{sibling}.weight"
                if other in quantize:
                    quantize.discard(other)
                    kept.add(other)
                    ctx.log(f"keeping {other} too: vLLM fuses it with {name}")


class SafetensorsCast:
    """Cast safetensors weights to float16 / bfloat16, or quantize them to float8_e4m3.

    **float16, bfloat16.** Every F32, F16 and BF16 tensor becomes ``arr.astype(target)``
    (numpy / ml_dtypes: round to nearest even); tensors matching a ``keep`` pattern
    (``fnmatch``, case-sensitive, on the full tensor name) and all other dtypes stay as they
    are. ``__metadata__`` is kept. ``config.json`` beside the weights gets ``torch_dtype``
    (and ``dtype``, transformers v5) set to the target when they named a float type, as
    ``save_pretrained`` of the cast model would write. Casting to float16 logs tensors with
    values beyond its range (they become ±inf).

    **float8_e4m3** — the layout vLLM's ``Fp8Config`` loads as a serialized ``"fp8"``
    checkpoint with per-tensor scales (the layout AutoFP8 writes):

    * a tensor ``X.weight`` is quantized when it is 2-D, F32/F16/BF16, and matches neither
      ``keep`` nor :data:`FP8_DEFAULT_KEEP` (embeddings, ``lm_head``, norms, MoE routers
      ``*.gate.weight``, ``*shared_expert_gate*``, ``*router*``). It is stored as
      ``F8_E4M3`` (float8_e4m3fn: 4 exponent bits, 3 mantissa bits, max 448, no inf) in the
      same ``[out_features, in_features]`` shape, beside ``X.weight_scale``: ``F32``, shape
      ``[]`` (a scalar, as AutoFP8 writes it; vLLM's ``PerTensorScaleParameter`` takes
      ``[]`` or compressed-tensors' ``[1]``), ``scale = max(amax, 1e-12) / 448`` in float32
      with ``amax = max|X.weight|``. ``fp8 = clip(weight / scale, ±448)`` rounded to
      nearest even, so ``weight ≈ fp8 × scale``. No ``input_scale``: activations are scaled
      dynamically.
    * every other tensor stays as it was (biases, norms, embeddings keep their dtype).
    * ``config.json`` gets ``"quantization_config": {"quant_method": "fp8",
      "activation_scheme": "dynamic", "ignored_layers": [...]}``; ``ignored_layers`` lists
      the module (tensor name less ``.weight``) of every 2-D float ``.weight`` that was kept,
      e.g. ``["lm_head", "model.embed_tokens"]`` (vLLM compares a layer's prefix with this
      list; ``Fp8Config.from_config`` reads ``ignored_layers``, falling back to
      ``modules_to_not_convert``). ``torch_dtype`` is unchanged: it is the activation dtype.
      The config is written as transformers writes it: indent 2, sorted keys, newline.
    * vLLM fuses ``q_proj``/``k_proj``/``v_proj`` and ``gate_proj``/``up_proj`` and rejects
      a fused layer whose parts differ in precision, so keeping one part keeps its siblings
      (logged).
    * A model whose config already has a ``quantization_config``, or that holds float8
      tensors, is refused, whatever the target type; scale tensors of a quantized
      checkpoint (see :meth:`SafetensorsFormat.read_info`) are never cast. The only option
      is ``keep``; another is an error.
    * Transformers' own ``"fp8"`` loader (FineGrainedFP8) expects block-wise
      ``weight_scale_inv`` instead: this layout targets vLLM (and SGLang, whose loader
      derives from vLLM's).

    Output: the same file names (a sharded model stays sharded with its shard names), an
    index rewritten for the new dtypes, ``total_size`` and the scale tensors (which go to
    their weight's shard), ``config.json`` as an Output of kind ``config``; other files
    pass through untouched. Work is split into chunks of at most 64 MiB run in up to
    ``ctx.jobs`` forked processes that read the input through ``mmap`` and ``pwrite`` into
    the output at offsets computed beforehand.
    """

    name = "safetensors-cast"
    version = PLUGIN_VERSION
    summary = "cast safetensors to float16/bfloat16, or float8_e4m3 with per-tensor scales (vLLM fp8)"
    format = "safetensors"
    types = ("float16", "bfloat16", "float8_e4m3")

    def quantize(self, files: list[WeightFile], qtype: str, options: dict[str, Any],
                 ctx: TransformContext) -> list[WeightFile | Output]:
        if qtype not in _TARGETS:
            raise UsageError(f"safetensors-cast cannot produce {qtype!r}", hint=f"types: {', '.join(self.types)}")
        unknown = sorted(set(options) - {"keep"})
        if unknown:
            raise UsageError(f"safetensors-cast has no option --{unknown[0]}", hint="its only option is --keep=PATTERN")
        target = _TARGETS[qtype]
        fp8 = target == "F8_E4M3"
        keep = [*_keep_patterns(options), *(FP8_DEFAULT_KEEP if fp8 else ())]
        groups, others = _split_set(files)
        if not groups:
            raise UsageError("QUANTIZE: the model set has no .safetensors files")
        headers = {f.path: read_header(f.source, f.path) for g in groups for f in g.files}
        index_docs = [_check_group(g, [headers[f.path] for f in g.files]) for g in groups]
        configs = {f.path: f for f in others if posixpath.basename(f.path) == "config.json"}
        for directory in sorted({g.directory for g in groups}):
            path = posixpath.join(directory, "config.json") if directory else "config.json"
            if path in configs and _read_config(configs[path]).get("quantization_config"):
                raise UsageError(f"{path} has a quantization_config: the model is quantized already",
                                 hint="cast or quantize the unquantized model instead")
        for g in groups:
            for f in g.files:
                for t in headers[f.path].tensors:
                    if t.dtype in _FLOAT8:
                        raise UsageError(f"{f.path}: tensor {t.name} is {t.dtype}: the model is quantized already")
        # Scales of a quantized checkpoint (fracast's int8 `.scale`, …) are never cast.
        scale_sets = [scale_companions(t for f in g.files for t in headers[f.path].tensors) for g in groups]

        # Decide, group by group, which tensors become float8 and which linear weights stay.
        quantized: list[set[str]] = []
        kept_linear: dict[str, set[str]] = {}  # directory -> modules left unquantized
        for g in groups:
            q: set[str] = set()
            kept: set[str] = set()
            if fp8:
                for f in g.files:
                    for t in headers[f.path].tensors:
                        if t.name.endswith(".weight") and len(t.shape) == 2 and t.dtype in _CASTABLE:
                            (kept if _matches(t.name, keep) else q).add(t.name)
                _keep_fused_together(q, kept, ctx)
                kept_linear.setdefault(g.directory, set()).update(n[: -len(".weight")] for n in kept)
            quantized.append(q)

        # Plan the outputs: same names, new dtypes, scales beside their weights. Create them.
        outputs: list[WeightFile | Output] = list(others)
        copies_and_casts: list[Task] = []
        amax_tasks: list[Task] = []
        fp8_targets: list[tuple[str, Tensor, Header, int, int]] = []  # (out, tensor, header, data, scale off)
        index_facts: list[tuple[dict[str, str], int, int]] = []
        total = 0
        for g, q, scales in zip(groups, quantized, scale_sets):
            weight_map: dict[str, str] = {}
            total_size = total_params = 0
            for f in g.files:
                h = headers[f.path]
                names = {t.name for t in h.tensors}
                specs: list[Spec] = []
                for t in h.tensors:
                    if t.name in q:
                        scale_name = _scale_name(t.name)
                        if scale_name in names:
                            raise FormatError(f.path, f"tensor {scale_name!r} exists already")
                        specs += [Spec(t.name, "F8_E4M3", t.shape), Spec(scale_name, "F32", ())]
                    elif not fp8 and t.dtype in _CASTABLE and t.name not in scales and not _matches(t.name, keep):
                        specs.append(Spec(t.name, target, t.shape))
                    else:
                        specs.append(Spec(t.name, t.dtype, t.shape))
                lay = layout(specs, h.metadata)
                out = ctx.output_path(f.path)
                _create(out, lay)
                outputs.append(Output(f.path, out, "model"))
                base = posixpath.basename(f.path)
                for s in lay.order:
                    weight_map[s.name] = base
                    total_size += s.nbytes
                    total_params += _numel(s.shape)
                new_dtype = {s.name: s.dtype for s in lay.order}
                for t in h.tensors:
                    total += t.nbytes
                    dst = lay.offsets[t.name]
                    if t.name in q:
                        fp8_targets.append((out, t, h, dst, lay.offsets[_scale_name(t.name)]))
                        amax_tasks += [("amax", h.source, off, n, t.dtype, "", 0, "", 0.0, t.name)
                                       for _, n, off in _chunks(t)]
                    elif t.nbytes == 0:
                        continue
                    elif new_dtype[t.name] != t.dtype:
                        width = _DTYPES[new_dtype[t.name]][0] // 8
                        copies_and_casts += [("cast", h.source, off, n, t.dtype, out, dst + e0 * width,
                                              new_dtype[t.name], 0.0, t.name) for e0, n, off in _chunks(t)]
                    else:
                        copies_and_casts.append(("copy", h.source, t.start, t.nbytes, "", out, dst, "", 0.0, t.name))
            index_facts.append((weight_map, total_size, total_params))
        ctx.set_total(total)

        # Phase 1 (float8): amax of each tensor, reduced over its chunks; then the scales.
        tasks = copies_and_casts
        if fp8_targets:
            import numpy as np

            amax: dict[tuple[str, str], float] = {}

            def got_amax(task: Task, result: tuple[int, float]) -> None:
                key = (task[1], task[9])
                amax[key] = max(amax.get(key, 0.0), result[1]) if np.isfinite(result[1]) else float("nan")

            _run_all(amax_tasks, ctx, got_amax)
            for out, t, h, dst, scale_off in fp8_targets:
                m = amax.get((h.source, t.name), 0.0)
                if not np.isfinite(m):
                    raise FormatError(h.label, f"tensor {t.name!r} holds inf or NaN; it cannot be scaled to float8")
                scale = np.float32(max(m, 1e-12)) / np.float32(FP8_MAX)
                with open(out, "r+b") as d:
                    _pwrite_all(d.fileno(), np.asarray(scale, dtype="<f4").reshape(1).view(np.uint8), scale_off)
                tasks += [("fp8", h.source, off, n, t.dtype, out, dst + e0, "F8_E4M3", float(scale), t.name)
                          for e0, n, off in _chunks(t)]

        # Phase 2: casts, copies, float8 conversions.
        overflow: dict[str, int] = {}

        def done(task: Task, result: tuple[int, float]) -> None:
            ctx.advance(result[0])
            if result[1]:
                overflow[task[9]] = overflow.get(task[9], 0) + int(result[1])

        _run_all(tasks, ctx, done)
        for name, n in sorted(overflow.items()):
            ctx.log(f"warning: {name}: {n} values beyond float16's range became infinite")

        # Indexes and config.json.
        for g, doc, (weight_map, total_size, total_params) in zip(groups, index_docs, index_facts):
            if doc is not None and g.index is not None:
                md = dict(doc.get("metadata") or {})
                md["total_size"] = total_size
                if "total_parameters" in md:
                    md["total_parameters"] = total_params
                new_doc = {**doc, "metadata": md, "weight_map": weight_map}
                outputs.append(_write_output(ctx, g.index.path, _index_json(new_doc), "config"))
        return self._rewrite_configs(outputs, configs, groups, qtype, fp8, kept_linear, ctx)

    @staticmethod
    def _rewrite_configs(outputs: list[WeightFile | Output], configs: dict[str, WeightFile], groups: list[Group],
                         qtype: str, fp8: bool, kept: dict[str, set[str]], ctx: TransformContext
                         ) -> list[WeightFile | Output]:
        directories = sorted({g.directory for g in groups})
        for directory in directories:
            path = posixpath.join(directory, "config.json") if directory else "config.json"
            cfg_file = configs.get(path)
            if cfg_file is None:
                if fp8:
                    ctx.log(f"warning: no {path}: the float8 weights carry no quantization_config for vLLM")
                continue
            cfg = _read_config(cfg_file)
            if fp8:
                cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic",
                                              "ignored_layers": sorted(kept.get(directory, ()))}
            elif not _set_dtype_fields(cfg, qtype):
                continue
            outputs = [o for o in outputs if o.path != path]
            data = (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode("utf-8")
            outputs.append(_write_output(ctx, path, data, "config"))
        return outputs


def _read_config(file: WeightFile) -> dict[str, Any]:
    try:
        with open(file.source, "rb") as fh:
            cfg = json.load(fh)
    except (OSError, ValueError) as exc:
        raise FormatError(file.path, f"not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise FormatError(file.path, "not a JSON object")
    return cfg


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# -- the shard strategy -------------------------------------------------------------------


def hf_split(sizes: list[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """``split_state_dict_into_shards_factory``'s assignment of tensors to shards.

    Greedy in the given key order: a tensor that would tip the current shard over
    *max_bytes* closes it (when it is not empty) and starts the next; a tensor bigger than
    *max_bytes* gets a shard of its own, appended at once, *before* the shard being filled,
    which goes on filling. No optimisation beyond that, exactly as huggingface_hub does.
    """
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = 0
    for name, size in sizes:
        if size > max_bytes:
            shards.append([name])
            continue
        if current_size + size > max_bytes:
            shards.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += size
    if current:
        shards.append(current)
    return shards


def _shard_name(prefix: str, i: int, n: int) -> str:
    """``filename_pattern.format(suffix=…)`` with transformers' pattern ``{prefix}{suffix}.safetensors``."""
    return f"{prefix}.safetensors" if n == 1 else f"{prefix}-{i + 1:05d}-of-{n:05d}.safetensors"


@dataclass(frozen=True, slots=True)
class _Source:
    tensor: Tensor
    source: str


class SafetensorsShard:
    """Split a safetensors model into shards, or merge shards, as Hugging Face does.

    ``shard(files, max_bytes)`` follows ``huggingface_hub.split_state_dict_into_shards_factory``
    (which ``transformers.save_pretrained`` and ``save_torch_state_dict`` use) with the
    storage size of a tensor being its byte count: keys are taken in name order (what
    ``safetensors``' ``safe_open(...).keys()`` / ``load_file`` give, and the order of the
    ``weight_map`` transformers writes); see :func:`hf_split` for the greedy rule and the
    tensor bigger than the limit. Shards are named with the filename pattern
    ``{prefix}{suffix}.safetensors`` (``model-00001-of-00003.safetensors``; ``prefix`` is
    ``model`` for ``model.safetensors``). More than one shard gets an index
    ``{prefix}.safetensors.index.json`` = ``{"metadata": {"total_parameters": …,
    "total_size": …}, "weight_map": {tensor: shard file}}`` written as transformers writes
    it (``json.dumps(index, indent=2, sort_keys=True) + "\\n"``); ``total_size`` is the sum
    of tensor bytes, ``total_parameters`` the sum of element counts (recent transformers
    add it beside ``total_size``; huggingface_hub's ``save_torch_state_dict`` writes only
    ``total_size``). One shard is a plain
    ``{prefix}.safetensors`` with no index.

    ``merge(files)`` writes each group as one ``{prefix}.safetensors``, dropping its index.

    Both copy raw tensor bytes (``copy_file_range``; no dtype conversion) in up to
    ``ctx.jobs`` threads, lay each file out as the safetensors library does (tensors by
    descending dtype alignment, then name), and keep ``__metadata__``: every output file
    gets the union of its inputs' metadata (the first file in path order wins a conflict),
    so the ``{"format": "pt"}`` transformers puts in each shard survives. A group that is
    already what was asked for (one plain file, one shard wanted) passes through unchanged.
    """

    name = "safetensors"
    version = PLUGIN_VERSION
    summary = "split/merge safetensors as Hugging Face does (model-00001-of-00002.safetensors + index)"

    def shard(self, files: list[WeightFile], max_bytes: int, ctx: TransformContext) -> list[WeightFile | Output]:
        if max_bytes <= 0:
            raise UsageError(f"shard size must be positive, not {max_bytes}")
        return self._rewrite(files, max_bytes, ctx)

    def merge(self, files: list[WeightFile], ctx: TransformContext) -> list[WeightFile | Output]:
        return self._rewrite(files, None, ctx)

    def _rewrite(self, files: list[WeightFile], max_bytes: int | None,
                 ctx: TransformContext) -> list[WeightFile | Output]:
        groups, others = _split_set(files)
        if not groups:
            raise UsageError("SHARD: the model set has no .safetensors files")
        outputs: list[WeightFile | Output] = list(others)
        plans: list[tuple[str, Layout, list[_Source]]] = []
        for g in groups:
            headers = [read_header(f.source, f.path) for f in g.files]
            _check_group(g, headers)
            sources = sorted((_Source(t, h.source) for h in headers for t in h.tensors), key=lambda s: s.tensor.name)
            if max_bytes is None:
                shards = [[s.tensor.name for s in sources]]
            else:
                shards = hf_split([(s.tensor.name, s.tensor.nbytes) for s in sources], max_bytes) or [[]]
            plain = _shard_name(g.prefix, 0, 1)
            if len(shards) == 1 and g.index is None and len(g.files) == 1 and g.files[0].path == g.path(plain):
                outputs.append(g.files[0])  # already one plain file
                continue
            metadata = _merged_metadata(headers)
            by_name = {s.tensor.name: s for s in sources}
            weight_map: dict[str, str] = {}
            for i, names in enumerate(shards):
                fname = _shard_name(g.prefix, i, len(shards))
                specs = [Spec(n, by_name[n].tensor.dtype, by_name[n].tensor.shape) for n in names]
                lay = layout(specs, metadata)
                plans.append((g.path(fname), lay, [by_name[n] for n in names]))
                weight_map.update({n: fname for n in names})
            if len(shards) > 1:
                index = {"metadata": {"total_parameters": sum(s.tensor.numel for s in sources),
                                      "total_size": sum(s.tensor.nbytes for s in sources)},
                         "weight_map": weight_map}
                outputs.append(_write_output(ctx, g.path(f"{g.prefix}{_INDEX_SUFFIX}"), _index_json(index), "config"))
        ctx.set_total(sum(s.tensor.nbytes for _, _, srcs in plans for s in srcs))
        for path, lay, _ in plans:
            out = ctx.output_path(path)
            _create(out, lay)
            outputs.append(Output(path, out, "model"))
        self._copy(plans, ctx)
        return outputs

    @staticmethod
    def _copy(plans: list[tuple[str, Layout, list[_Source]]], ctx: TransformContext) -> None:
        from concurrent.futures import ThreadPoolExecutor

        fds: dict[str, int] = {}
        try:
            jobs: list[tuple[int, int, int, int, int]] = []
            for path, lay, srcs in plans:
                out = ctx.output_path(path)
                if out not in fds:
                    fds[out] = os.open(out, os.O_WRONLY)
                dst = fds[out]
                for s in srcs:
                    if s.source not in fds:
                        fds[s.source] = os.open(s.source, os.O_RDONLY)
                    if s.tensor.nbytes:
                        jobs.append((fds[s.source], dst, s.tensor.start, lay.offsets[s.tensor.name], s.tensor.nbytes))

            def run(job: tuple[int, int, int, int, int]) -> int:
                _copy_range(*job)
                return job[4]

            if ctx.jobs <= 1:
                for job in jobs:
                    ctx.advance(run(job))
            else:
                with ThreadPoolExecutor(max_workers=ctx.jobs) as pool:
                    for n in pool.map(run, jobs):
                        ctx.advance(n)
        finally:
            for fd in fds.values():
                os.close(fd)


# -- registration -------------------------------------------------------------------------


@hookimpl
def modelbuild_register_formats(registry: Any) -> None:
    registry.add(SafetensorsFormat())


@hookimpl
def modelbuild_register_quantizers(registry: Any) -> None:
    registry.add(SafetensorsCast())


@hookimpl
def modelbuild_register_shard_strategies(registry: Any) -> None:
    registry.add(SafetensorsShard())
