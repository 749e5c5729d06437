"""The ONNX weight format: model facts from the protobuf, without loading external tensor data.

Decisions, in one place (the tests hold each of them):

* **What counts as a parameter.** Every numeric tensor the model stores, wherever it stores
  it: graph initializers, sparse initializers (counted at their *dense* size: a pruned model
  keeps its parameter count), and the tensors held by node attributes — above all the
  ``value`` of ``Constant`` nodes (including its literal forms ``value_float(s)`` and
  ``value_int(s)``), in the main graph, in every subgraph (``If``/``Loop``/``Scan`` bodies),
  in model-local functions and in training graphs. Some exporters (spox, ``onnxscript``,
  constant-folding passes) keep *all* weights in ``Constant`` nodes: silero-vad's
  ``silero_vad.onnx`` has no initializer at all, and counting initializers alone would call
  it a zero-parameter model. Small shape and index constants (``int64``) are counted too: a
  few hundred elements at most, and counting what the file stores keeps the rule the same as
  the safetensors one (every tensor in the file). ``STRING`` tensors are not parameters and
  are skipped. Counts come from ``dims``, which the protobuf holds even when the data lives
  in an external file, so the data files are never read.
* **Precision names.** ONNX data types map to ModelPack precisions (``FLOAT`` → ``float32``,
  ``FLOAT8E4M3FN`` → ``float8_e4m3``, …). Types the ModelPack vocabulary lacks keep a
  descriptive name (``float8_e4m3fnuz``, ``float8_e8m0``, ``complex64``, ``int2``).
* **Quantization.** A model is quantized when any graph or function uses a quantization op:
  ``QuantizeLinear``, ``DequantizeLinear``, ``DynamicQuantizeLinear``, ``QLinear*``,
  ``MatMulInteger``, ``ConvInteger`` or one of ONNX Runtime's quantized contrib ops
  (``MatMulNBits``, ``DynamicQuantizeMatMul``, ``MatMulIntegerToFloat``, ``QGemm``,
  ``QAttention``, ``QOrderedMatMul``, ``GatherBlockQuantized``). The scheme is then named
  after the storage type: ``int{bits}`` for ``MatMulNBits`` (4 when the attribute is
  absent); otherwise the low-precision type (int8, uint8, int16, uint16, int4, uint4, int2,
  uint2, float8_*, float4_e2m1) holding the most stored parameters, e.g. ``int8`` or
  ``uint8``; ``uint8`` (the ``QuantizeLinear`` default) when no tensor of such a type is
  stored. Without such an op the answer is None, whatever the dtypes (an fp16 model is not
  quantized; an ``int8`` lookup table is not either).
* **architecture / family** come only from ``config``: ``config["architecture"]``;
  ``config["family"]``, else ``config["model_type"]`` (Hugging Face's name for it). ONNX
  itself has no such field.
* **extra** (JSON-ready): ``ir_version``, ``opsets`` (domain → version, the default domain
  spelled ``ai.onnx``), ``producer`` ({``name``, ``version``}), ``inputs`` and ``outputs``
  (graph inputs that are initializers — the IR < 4 habit — are left out), each
  ``{"name", "dtype", "shape"}`` with a shape of ints, ``dim_param`` names and None for
  unknown dims (``shape`` None when the rank is unknown; non-tensor types get ``type``
  instead), ``external_data`` (the sorted data files, relative to the .onnx file),
  ``param_sources`` (parameters per place: initializer, sparse_initializer, constant), plus
  ``metadata`` (``metadata_props``), ``domain`` and ``model_version`` when set. When the set
  holds several .onnx files, ``extra`` is ``{"models": {artifact path: the above}}`` and the
  counts are summed.
* **External data.** A tensor whose ``data_location`` is EXTERNAL names a file relative to
  the .onnx file. It is resolved through the model set, by artifact path — never next to
  ``source``, which may be a content-addressed blob. Absolute locations and ``..`` are
  refused; so are data files missing from the set or from disk, or too short for the bytes
  the tensor needs (checked by size, not read).
* **iter_tensors** yields the same tensors the count covers, in file order, so the sizes of
  what it yields add up to ``param_count``. Names: the initializer's name, a ``Constant``'s
  output name, ``<node>/<attribute>`` for other attribute tensors, prefixed by
  ``<function>/`` inside a model-local function. Sparse tensors load densified. External
  data of plain numeric types is memory-mapped; other external tensors read only their own
  bytes.
* **write** is not supported: an ONNX file is a graph, and a set of named arrays does not
  make one. Rewriting the weights of an existing ONNX graph (quantize, shard) would need the
  graph, which ``write(path, tensors, metadata)`` does not pass. It raises
  NotImplementedError; ``writable = False`` says so up front.

onnx and numpy are imported inside the functions: the CLI imports every plugin module on
every start.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterator
from typing import Any

from modelbuild.api import FormatError, ModelInfo, WeightFile, hookimpl, lfs_pointer_hint

# Bump when read_info's answers change for the same file: it enters cache keys.
FORMAT_VERSION = "1"

# protobuf cannot parse a message of 2 GiB or more; such models keep weights outside.
_PROTOBUF_LIMIT = 2**31 - 1

# TensorProto.DataType name → precision name (ModelPack's where it has one).
_DTYPE_NAMES = {
    "FLOAT": "float32", "DOUBLE": "float64", "FLOAT16": "float16", "BFLOAT16": "bfloat16",
    "FLOAT8E4M3FN": "float8_e4m3", "FLOAT8E5M2": "float8_e5m2", "FLOAT4E2M1": "float4_e2m1",
    "FLOAT8E4M3FNUZ": "float8_e4m3fnuz", "FLOAT8E5M2FNUZ": "float8_e5m2fnuz", "FLOAT8E8M0": "float8_e8m0",
    "FLOAT6E2M3": "float6_e2m3", "FLOAT6E3M2": "float6_e3m2",
    "INT8": "int8", "UINT8": "uint8", "INT16": "int16", "UINT16": "uint16", "INT32": "int32",
    "UINT32": "uint32", "INT64": "int64", "UINT64": "uint64", "INT4": "int4", "UINT4": "uint4",
    "INT2": "int2", "UINT2": "uint2", "BOOL": "bool", "COMPLEX64": "complex64", "COMPLEX128": "complex128",
    "STRING": "string",
}
# Bytes per element; packed types as (elements per byte) negative markers below.
_ITEM_BYTES = {
    "float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "float8_e4m3": 1, "float8_e5m2": 1,
    "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1, "float8_e8m0": 1, "int8": 1, "uint8": 1, "int16": 2,
    "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8, "bool": 1, "complex64": 8, "complex128": 16,
}
_PER_BYTE = {"int4": 2, "uint4": 2, "float4_e2m1": 2, "int2": 4, "uint2": 4}
# Memory-mappable external data: raw ONNX bytes are little-endian.
_NUMPY_DTYPES = {
    "float32": "<f4", "float64": "<f8", "float16": "<f2", "int8": "i1", "uint8": "u1", "int16": "<i2",
    "uint16": "<u2", "int32": "<i4", "uint32": "<u4", "int64": "<i8", "uint64": "<u8", "bool": "?",
    "complex64": "<c8", "complex128": "<c16",
}

_QUANT_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    "MatMulNBits", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "QAttention",
    "QOrderedMatMul", "GatherBlockQuantized",
})
_QUANT_DTYPES = ("int8", "uint8", "int16", "uint16", "int4", "uint4", "int2", "uint2", "float8_e4m3",
                 "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float4_e2m1")

# ModelProto's first field as protobuf writes it: field number → wire type.
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}


def _dtype_name(code: int) -> str:
    from onnx import TensorProto

    try:
        return _DTYPE_NAMES.get(TensorProto.DataType.Name(code), f"onnx_type_{code}")
    except ValueError:  # a type newer than this onnx
        return f"onnx_type_{code}"


def _varint(data: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None


class _Tensor:
    """One stored tensor: where it is and how to count and load it."""

    __slots__ = ("name", "place", "proto", "sparse")

    def __init__(self, name: str, place: str, proto: Any, sparse: bool = False) -> None:
        self.name = name
        self.place = place  # "initializer", "sparse_initializer" or "constant"
        self.proto = proto  # TensorProto, or SparseTensorProto when sparse
        self.sparse = sparse

    @property
    def dtype_code(self) -> int:
        return self.proto.values.data_type if self.sparse else self.proto.data_type

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.proto.dims)

    def parts(self) -> list[Any]:
        """The TensorProtos that may hold data (a sparse tensor has values and indices)."""
        return [self.proto.values, self.proto.indices] if self.sparse else [self.proto]


def _walk_tensors(model: Any) -> Iterator[_Tensor]:
    """Every tensor a ModelProto stores, in file order (see the module docstring)."""
    from onnx import AttributeProto, TensorProto, helper

    def graph(g: Any, prefix: str) -> Iterator[_Tensor]:
        for t in g.initializer:
            yield _Tensor(prefix + t.name, "initializer", t)
        for s in g.sparse_initializer:
            yield _Tensor(prefix + (s.values.name or s.indices.name), "sparse_initializer", s, sparse=True)
        yield from nodes(g.node, prefix)

    def nodes(node_list: Any, prefix: str) -> Iterator[_Tensor]:
        for n in node_list:
            label = n.name or (n.output[0] if n.output else n.op_type)
            is_constant = n.op_type == "Constant" and n.domain in ("", "ai.onnx")
            for a in n.attribute:
                if is_constant:
                    name = prefix + (n.output[0] if n.output else label)
                else:
                    name = f"{prefix}{label}/{a.name}"
                if a.type == AttributeProto.TENSOR:
                    yield _Tensor(name, "constant", a.t)
                elif a.type == AttributeProto.SPARSE_TENSOR:
                    yield _Tensor(name, "constant", a.sparse_tensor, sparse=True)
                elif a.type == AttributeProto.TENSORS:
                    for i, t in enumerate(a.tensors):
                        yield _Tensor(f"{name}.{i}", "constant", t)
                elif a.type == AttributeProto.SPARSE_TENSORS:
                    for i, s in enumerate(a.sparse_tensors):
                        yield _Tensor(f"{name}.{i}", "constant", s, sparse=True)
                elif a.type == AttributeProto.GRAPH:
                    yield from graph(a.g, prefix)
                elif a.type == AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        yield from graph(sub, prefix)
                elif is_constant and a.name in ("value_float", "value_floats", "value_int", "value_ints"):
                    literal = {"value_float": (TensorProto.FLOAT, [], [a.f]),
                               "value_floats": (TensorProto.FLOAT, [len(a.floats)], list(a.floats)),
                               "value_int": (TensorProto.INT64, [], [a.i]),
                               "value_ints": (TensorProto.INT64, [len(a.ints)], list(a.ints))}[a.name]
                    yield _Tensor(name, "constant", helper.make_tensor(name, *literal))

    yield from graph(model.graph, "")
    for fn in model.functions:
        yield from nodes(fn.node, f"{fn.name}/")
    for info in model.training_info:
        yield from graph(info.initialization, "")
        yield from graph(info.algorithm, "")


def _walk_nodes(model: Any) -> Iterator[Any]:
    from onnx import AttributeProto

    def nodes(node_list: Any) -> Iterator[Any]:
        for n in node_list:
            yield n
            for a in n.attribute:
                if a.type == AttributeProto.GRAPH:
                    yield from nodes(a.g.node)
                elif a.type == AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        yield from nodes(sub.node)

    yield from nodes(model.graph.node)
    for fn in model.functions:
        yield from nodes(fn.node)
    for info in model.training_info:
        yield from nodes(info.initialization.node)
        yield from nodes(info.algorithm.node)


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _data_bytes(dtype: str, count: int) -> int | None:
    if dtype in _ITEM_BYTES:
        return count * _ITEM_BYTES[dtype]
    if dtype in _PER_BYTE:
        return -(-count // _PER_BYTE[dtype])
    return None


def _external(proto: Any) -> dict[str, str] | None:
    from onnx import TensorProto

    if proto.data_location != TensorProto.EXTERNAL:
        return None
    return {entry.key: entry.value for entry in proto.external_data}


def _check_location(model_path: str, tensor: str, location: str | None) -> str:
    """The location, normalized, or FormatError when it is empty or leaves the model directory."""
    if not location:
        raise FormatError(model_path, f"tensor {tensor!r} keeps its data externally but names no location")
    parts = location.replace("\\", "/").split("/")
    if location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":") or ".." in parts:
        raise FormatError(
            model_path,
            f"tensor {tensor!r} keeps its data at {location!r}, outside the model's directory",
            hint="external data must lie beside the .onnx file or below it",
        )
    return posixpath.normpath("/".join(p for p in parts if p not in ("", ".")))


def _int_field(model_path: str, tensor: str, info: dict[str, str], key: str) -> int | None:
    if key not in info:
        return None
    try:
        value = int(info[key])
    except ValueError:
        value = -1
    if value < 0:
        raise FormatError(model_path, f"tensor {tensor!r} has a bad external data {key} {info[key]!r}")
    return value


def _parse(path: str, source: str) -> Any:
    """A ModelProto without external data, or FormatError naming *path*."""
    from google.protobuf.message import DecodeError
    from onnx import ModelProto

    try:
        size = os.stat(source).st_size
        if size > _PROTOBUF_LIMIT:
            raise FormatError(path, f"{size} bytes: too large for a protobuf ONNX file",
                              hint="ONNX models over 2 GiB keep their weights in external data files")
        with open(source, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise FormatError(path, f"cannot read: {exc.strerror or exc}") from None
    model = ModelProto()
    head = data[:64]
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise FormatError(path, f"not an ONNX model, or truncated ({exc})", hint=lfs_pointer_hint(data[:64])) from None
    del data
    if model.ir_version <= 0 or not model.HasField("graph"):
        missing = "graph" if model.ir_version > 0 else "ir_version"
        raise FormatError(path, f"not an ONNX model, or truncated: no {missing}", hint=lfs_pointer_hint(head))
    return model


def _value_info(v: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": v.name}
    kind = v.type.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        tt = getattr(v.type, kind)
        out["dtype"] = _dtype_name(tt.elem_type) if tt.elem_type else None
        if tt.HasField("shape"):
            out["shape"] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param if d.HasField("dim_param") else None)
                for d in tt.shape.dim
            ]
        else:
            out["shape"] = None
        if kind == "sparse_tensor_type":
            out["sparse"] = True
    else:
        out["type"] = _type_string(v.type)
    return out


def _type_string(t: Any) -> str:
    kind = t.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        inner = _dtype_name(getattr(t, kind).elem_type)
        return f"{'sparse_' if kind == 'sparse_tensor_type' else ''}tensor({inner})"
    if kind == "sequence_type":
        return f"sequence({_type_string(t.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({_type_string(t.optional_type.elem_type)})"
    if kind == "map_type":
        return f"map({_dtype_name(t.map_type.key_type)},{_type_string(t.map_type.value_type)})"
    return kind or "unknown"


def _quantization(model: Any, dtype_params: dict[str, int]) -> str | None:
    bits = None
    found = False
    for n in _walk_nodes(model):
        if n.op_type in _QUANT_OPS or n.op_type.startswith("QLinear"):
            found = True
            if n.op_type == "MatMulNBits":
                bits = next((a.i for a in n.attribute if a.name == "bits"), 4)
    if not found:
        return None
    if bits is not None:
        return f"int{bits}"
    candidates = [d for d in _QUANT_DTYPES if dtype_params.get(d)]
    if not candidates:
        return "uint8"
    return max(candidates, key=lambda d: (dtype_params[d], -_QUANT_DTYPES.index(d)))


class OnnxFormat:
    name = "onnx"
    version = FORMAT_VERSION
    summary = "ONNX models (.onnx), with external data files"
    extensions = (".onnx",)
    writable = False
    # an ONNX model names its external data files; the build hands them over with it
    sidecar_files = True

    # -- detect -------------------------------------------------------------------------
    def detect(self, path: str) -> bool:
        """The .onnx extension, and a first protobuf field that a ModelProto can start with."""
        if not str(path).endswith(self.extensions):
            return False
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError:
            return False
        tag = _varint(head, 0)
        if tag is None:
            return False
        key, pos = tag
        field, wire = key >> 3, key & 7
        if _MODEL_FIELDS.get(field) != wire:
            return False
        if field == 1:  # ir_version, written first by every protobuf serializer
            value = _varint(head, pos)
            return value is not None and 1 <= value[0] <= 64
        return True

    # -- read_info ----------------------------------------------------------------------
    def read_info(self, files: list[WeightFile], config: dict | None) -> ModelInfo:
        models = sorted((f for f in files if f.path.endswith(self.extensions)), key=lambda f: f.path)
        info = ModelInfo(format=self.name)
        if config:
            arch = config.get("architecture")
            family = config.get("family") or config.get("model_type")
            info.architecture = arch if isinstance(arch, str) and arch else None
            info.family = family if isinstance(family, str) and family else None
        if not models:
            if files:
                raise FormatError(files[0].path, "no .onnx model in the set given to the onnx format")
            return info
        by_path = {posixpath.normpath(f.path): f for f in files}
        facts: dict[str, dict[str, Any]] = {}
        for wf in models:
            model = _parse(wf.path, wf.source)
            per_model: dict[str, int] = {}
            sources = {"initializer": 0, "sparse_initializer": 0, "constant": 0}
            external = self._check_external(wf, model, by_path)
            for t in _walk_tensors(model):
                dtype = self._tensor_dtype(wf.path, t)
                if dtype == "string":
                    continue
                if any(d < 0 for d in t.shape):
                    raise FormatError(wf.path, f"tensor {t.name!r} has a negative dimension {list(t.shape)}")
                n = _count(t.shape)
                per_model[dtype] = per_model.get(dtype, 0) + n
                sources[t.place] += n
            for dtype, n in per_model.items():
                info.dtype_params[dtype] = info.dtype_params.get(dtype, 0) + n
            info.param_count += sum(per_model.values())
            quant = _quantization(model, per_model)
            if quant and not info.quantization:
                info.quantization = quant
            facts[wf.path] = self._facts(model, external, sources)
        info.extra = facts[models[0].path] if len(models) == 1 else {"models": facts}
        return info

    @staticmethod
    def _tensor_dtype(path: str, t: _Tensor) -> str:
        if not t.dtype_code:
            raise FormatError(path, f"tensor {t.name!r} has no data type")
        return _dtype_name(t.dtype_code)

    @staticmethod
    def _facts(model: Any, external: list[str], sources: dict[str, int]) -> dict[str, Any]:
        initializers = {t.name for t in model.graph.initializer} | {
            s.values.name for s in model.graph.sparse_initializer}
        facts: dict[str, Any] = {
            "ir_version": model.ir_version,
            "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
            "producer": {"name": model.producer_name, "version": model.producer_version},
            "inputs": [_value_info(v) for v in model.graph.input if v.name not in initializers],
            "outputs": [_value_info(v) for v in model.graph.output],
            "external_data": external,
            "param_sources": sources,
        }
        if model.metadata_props:
            facts["metadata"] = {p.key: p.value for p in model.metadata_props}
        if model.domain:
            facts["domain"] = model.domain
        if model.model_version:
            facts["model_version"] = model.model_version
        return facts

    def _check_external(self, wf: WeightFile, model: Any, by_path: dict[str, WeightFile]) -> list[str]:
        """The external data files of *wf*, relative to it; FormatError unless all are in the set."""
        base = posixpath.dirname(wf.path)
        needed: dict[str, tuple[int, str]] = {}  # location → (bytes needed, a tensor using it)
        for t in _walk_tensors(model):
            for part in t.parts():
                ext = _external(part)
                if ext is None:
                    continue
                name = part.name or t.name
                location = _check_location(wf.path, name, ext.get("location"))
                offset = _int_field(wf.path, name, ext, "offset") or 0
                length = _int_field(wf.path, name, ext, "length")
                if length is None:
                    length = _data_bytes(_dtype_name(part.data_type), _count(tuple(part.dims))) or 0
                end = offset + length
                if end >= needed.get(location, (-1, ""))[0]:
                    needed[location] = (end, name)
        for location, (end, tensor) in sorted(needed.items()):
            artifact = posixpath.normpath(posixpath.join(base, location))
            data = by_path.get(artifact)
            if data is None:
                raise FormatError(
                    wf.path,
                    f"external data file {location!r} (tensor {tensor!r}) is not in the model set",
                    hint=f"an .onnx file and its external data go together: list {artifact} in MODEL too",
                )
            try:
                size = os.stat(data.source).st_size
            except OSError:
                raise FormatError(wf.path, f"external data file {location!r} does not exist") from None
            if size < end:
                raise FormatError(
                    wf.path,
                    f"external data file {location!r} is {size} bytes; tensor {tensor!r} needs {end}",
                )
        return sorted(needed)

    # -- iter_tensors -------------------------------------------------------------------
    def iter_tensors(
        self, file: WeightFile | str | os.PathLike, *, files: list[WeightFile] | None = None
    ) -> Iterator[tuple[str, str, tuple[int, ...], Callable[[], Any]]]:
        """``(name, dtype, shape, load)`` for every tensor read_info counts, lazily.

        External data is looked for beside the file's ``source``; pass the model set as
        ``files`` to resolve it by artifact path instead (a store blob has no neighbours).
        """
        if isinstance(file, WeightFile):
            path, source = file.path, file.source
        else:
            path = source = os.fspath(file)
        model = _parse(path, source)
        lookup = {posixpath.normpath(f.path): f.source for f in files or ()}
        base = posixpath.dirname(path)

        def resolve(tensor: str, location: str | None) -> str:
            rel = _check_location(path, tensor, location)
            if files is not None:
                artifact = posixpath.normpath(posixpath.join(base, rel))
                if artifact not in lookup:
                    raise FormatError(path, f"external data file {rel!r} (tensor {tensor!r}) is not in the model set")
                return lookup[artifact]
            return os.path.join(os.path.dirname(source), *rel.split("/"))

        for t in _walk_tensors(model):
            dtype = self._tensor_dtype(path, t)
            if dtype == "string":
                continue
            yield t.name, dtype, t.shape, self._loader(path, t, dtype, resolve)

    def _loader(self, path: str, t: _Tensor, dtype: str, resolve: Callable[[str, str | None], str]) -> Callable[[], Any]:
        def load_part(part: Any, part_dtype: str) -> Any:
            import numpy as np
            from onnx import TensorProto, numpy_helper

            ext = _external(part)
            if ext is None:
                return numpy_helper.to_array(part)
            name = part.name or t.name
            data_path = resolve(name, ext.get("location"))
            offset = _int_field(path, name, ext, "offset") or 0
            length = _int_field(path, name, ext, "length")
            shape = tuple(part.dims)
            expected = _data_bytes(part_dtype, _count(shape))
            if length is None:
                length = expected
            try:
                if part_dtype in _NUMPY_DTYPES and expected and length == expected:
                    return np.memmap(data_path, dtype=_NUMPY_DTYPES[part_dtype], mode="r", offset=offset, shape=shape)
                with open(data_path, "rb") as f:
                    f.seek(offset)
                    raw = f.read() if length is None else f.read(length)
            except (OSError, ValueError) as exc:
                raise FormatError(path, f"cannot read external data of tensor {name!r}: {exc}") from None
            if length is not None and len(raw) < length:
                raise FormatError(path, f"external data of tensor {name!r} is truncated")
            copy = TensorProto()
            copy.CopyFrom(part)
            del copy.external_data[:]
            copy.data_location = TensorProto.DEFAULT
            copy.raw_data = raw
            return numpy_helper.to_array(copy)

        def load() -> Any:
            if not t.sparse:
                return load_part(t.proto, dtype)
            import numpy as np

            values = load_part(t.proto.values, dtype)
            indices = load_part(t.proto.indices, _dtype_name(t.proto.indices.data_type)).astype(np.int64)
            dense = np.zeros(_count(t.shape), dtype=values.dtype)
            if indices.ndim == 2:  # [nnz, rank] coordinates
                indices = np.ravel_multi_index(tuple(indices.T), t.shape) if indices.size else indices.reshape(-1)
            dense[indices] = values
            return dense.reshape(t.shape)

        return load

    # -- write --------------------------------------------------------------------------
    def write(self, path: str, tensors: Any, metadata: Any = None) -> None:
        raise NotImplementedError(
            "the onnx format cannot write files: an ONNX model is a graph, and write() receives "
            "only named arrays; convert or quantize ONNX models with ONNX tooling before the build"
        )


@hookimpl
def modelbuild_register_formats(registry) -> None:
    registry.add(OnnxFormat())
