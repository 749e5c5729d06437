"""The quantizer ``gguf-quantize``: the plan (llama.cpp's mixes, from :mod:`.mixes`), the
output headers, and the work items that worker processes run (started from modelbuild's
forkserver: :meth:`TransformContext.run_processes`)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from modelbuild.api import FormatError, Output, TransformContext, UsageError, WeightFile

from .constants import _FLOAT_INPUTS, COPY_CHUNK, G_BF16, G_F16, G_F32, T_UINT32
from .models import _read_models
from .reader import Header, TensorInfo, type_name
from .writer import (
    _check_layout,
    _kv_list,
    _pread_all,
    _pwrite_all,
    _require_little_endian,
    copy_range,
    write_header,
)

CHUNK_ELEMENTS = 4 << 20  # rows per work item: about 16 MiB of float32 input

# What the worker processes import: preloaded once by modelbuild's forkserver.
WORKER_MODULES = ("numpy", "gguf.quants", __name__, f"{__package__}.kquants")


# -- work items: copy or quantize a byte range (run in worker processes) ----------------------

@contextmanager
def _opened(path: str, flags: int) -> Iterator[int]:
    """A file of the item, open for the item alone: an item keeps nothing open after it
    returns, so a worker that runs it in a thread it reuses holds no file of a finished
    build, and what it wrote is closed (and so on NFS, written back) before the driver reads
    it. Two opens per item of a fraction of a second."""
    fd = os.open(path, flags)
    try:
        yield fd
    finally:
        os.close(fd)


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


# ggml type number -> the qtype name kquants.quantize_kquant takes
_KQUANTS = {10: "q2_k", 11: "q3_k", 12: "q4_k", 13: "q5_k", 14: "q6_k"}


def _kquant_function() -> Callable[[Any, str], Any]:
    """kquants.quantize_kquant(rows float32 (n, k), qtype) -> uint8
    (n, k // 256 * block bytes), byte-identical to llama.cpp's reference quantizers."""
    try:
        from .kquants import quantize_kquant
    except ImportError as exc:
        raise UsageError(f"gguf-quantize: the k-quant types need modelbuild_plugins.gguf_format.kquants ({exc})",
                         hint="use a legacy type (q8_0, q4_0…), or install a modelbuild with gguf_format.kquants") from None
    return quantize_kquant


def _run_task(task: tuple) -> int:
    """One work item: ("copy", src, src_off, dst, dst_off, nbytes, n) or
    ("convert", src, src_off, src_type, dst, dst_off, dst_type, rows, cols, n). Returns n."""
    if task[0] == "copy":
        _, src, src_off, dst, dst_off, nbytes, n = task
        with _opened(src, os.O_RDONLY) as src_fd, _opened(dst, os.O_WRONLY) as dst_fd:
            copy_range(src_fd, dst_fd, src_off, dst_off, nbytes)
        return n
    _, src, src_off, src_type, dst, dst_off, dst_type, rows, cols, n = task
    item = {G_F32: 4, G_F16: 2, G_BF16: 2}[src_type]
    with _opened(src, os.O_RDONLY) as src_fd:
        values = to_float32(_pread_all(src_fd, rows * cols * item, src_off), src_type)
    kquant = _KQUANTS.get(dst_type)
    if kquant is not None:  # llama.cpp's reference k-quantizers
        out = _kquant_function()(values.reshape(rows, cols), kquant)
    else:  # gguf-py's: legacy types, F16, BF16
        from gguf import GGMLQuantizationType
        from gguf.quants import quantize

        out = quantize(values.reshape(rows, cols), GGMLQuantizationType(dst_type))
    with _opened(dst, os.O_WRONLY) as dst_fd:
        _pwrite_all(dst_fd, out.reshape(-1).view("uint8"), dst_off)
    return n


def run_tasks(tasks: list[tuple], ctx: TransformContext) -> None:
    """Run work items on up to ctx.jobs worker processes, reporting progress (each item's
    element count, its last field) as each finishes: items are at most CHUNK_ELEMENTS or
    COPY_CHUNK, a fraction of a second each, so the bar moves steadily even on one tensor."""
    jobs = min(ctx.jobs, sum(1 for t in tasks if t[0] == "convert") or 1, len(tasks) or 1)
    # big items first, so that the last ones keep every worker busy
    tasks = sorted(tasks, key=lambda t: -t[-1])
    ctx.run_processes(_run_task, tasks, preload=WORKER_MODULES, jobs=jobs)



@dataclass
class _TensorPlan:
    tensor: TensorInfo
    dst_type: int
    nbytes: int


_LEGACY_TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
_KQUANT_FILE_TYPES = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
                      "q3_k", "q4_k", "q5_k")  # the last three: llama-quantize's aliases of the _M mixes


class GGUFQuantizer:
    name = "gguf-quantize"
    version = "2"
    summary = ("llama.cpp-style quantization of F32/F16/BF16 GGUF files: llama-quantize's k-quant mixes "
               "(q4_k_m…) or --pure types")
    format = "gguf"
    types = _LEGACY_TYPES + _KQUANT_FILE_TYPES
    worker_modules = WORKER_MODULES

    @staticmethod
    def default_pure(qtype: str) -> bool:
        """The legacy types (f16…q5_1) are --pure unless told otherwise (version 1's output);
        the k-quant file types use llama.cpp's mix."""
        return qtype.lower() in _LEGACY_TYPES

    def choose(self, headers: list[Header], qtype: str, keep: list[str], arch: str | None = None,
               pure: bool | None = None) -> dict[str, str | None]:
        """mixes.tensor_types() over every tensor of a model (all its shards, in order):
        {name: ggml type name, or None to keep the tensor as it is}."""
        from .mixes import FILE_TYPES, MixFacts, file_type, tensor_types

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
        from gguf.constants import GGML_QUANT_VERSION, LlamaFileType

        from .mixes import FILE_TYPES, file_type

        qtype = qtype.lower()
        if qtype not in self.types:
            raise UsageError(f"gguf-quantize cannot produce {qtype!r}", hint=f"types: {', '.join(self.types)}")
        # options arrive checked and typed from the frontend (the ``options`` declarations)
        if ctx.jobs > 1:
            ctx.prepare(WORKER_MODULES)  # the workers' server starts importing while we plan
        keep = options.get("keep", [])
        keep = [keep] if isinstance(keep, str) else list(keep)
        pure = options.get("pure")
        pure = self.default_pure(qtype) if pure is None else bool(pure)
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
        ctx.set_total(total, unit="params")  # items report the elements they did
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
