"""The format handler (format ``gguf``): header facts, lazy tensors, metadata, writer."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from modelbuild.api import ModelInfo, WeightFile

from .constants import DEFAULT_ALIGNMENT, G_BF16, T_ARRAY
from .models import Model, group_models
from .reader import (
    Header,
    TensorInfo,
    _pad,
    _type_table,
    is_gguf,
    parse_header,
    precision_name,
)
from .writer import _infer_type, copy_range, encode_value, write_header


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
