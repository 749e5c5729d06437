"""The format handler (format ``safetensors``): detect, read facts, iterate tensors, write."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelbuild.api import ModelInfo, WeightFile

from . import io  # io.CHUNK_BYTES is read at call time, so that patching it reaches the writer
from .header import (
    _BY_PRECISION,
    _DTYPES,
    _FLOAT8,
    _QUANTIZED,
    _SCALE_SUFFIXES,
    MAX_HEADER_SIZE,
    PLUGIN_VERSION,
    Tensor,
    _code_of,
    _numpy_dtype,
    _source_and_label,
    read_header,
)
from .io import Spec, layout

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
        from modelbuild.api import ModelInfo

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
                chunk = io.CHUNK_BYTES
                fh.writelines(raw[i:i + chunk].data for i in range(0, raw.size, chunk))
