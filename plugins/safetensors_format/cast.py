"""The quantizer ``safetensors-cast``: float16 / bfloat16 casts and float8_e4m3 with per-tensor
scales, run as tasks in worker processes (started from modelbuild's forkserver:
:meth:`TransformContext.run_processes`)."""

from __future__ import annotations

import fnmatch
import json
import posixpath
from collections.abc import Callable, Iterable
from typing import Any

from modelbuild.api import FormatError, Output, TransformContext, UsageError, WeightFile

from .format import scale_companions
from .groups import Group, _check_group, _index_json, _split_set, _write_output
from .header import (
    _CASTABLE,
    _DTYPES,
    _FLOAT8,
    PLUGIN_VERSION,
    Header,
    Tensor,
    _numpy_dtype,
    read_header,
)
from .io import Spec, _chunks, _copy_range, _create, _pwrite_all, layout

# -- parallel work ------------------------------------------------------------------------

# A task: (op, src, src_offset, count, src_code, dst, dst_offset, dst_code, scale, name).
#   "copy": copy *count* bytes.  "cast": convert *count* elements with astype.
#   "amax": return max |x| of *count* elements (as float32).  "fp8": x / scale, clipped to
#   ±448, cast to float8_e4m3fn.  Workers read with mmap and pwrite at the given offset:
#   no tensor data travels through pipes.
Task = tuple[str, str, int, int, str, str, int, str, float, str]

# What the worker processes import: preloaded once by modelbuild's forkserver.
WORKER_MODULES = ("numpy", "ml_dtypes", __name__)


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
        return x.nbytes, (float("nan") if np.isnan(lo) or np.isnan(hi) else max(-lo, hi))
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


def _byte_chunks(nbytes: int) -> list[tuple[int, int]]:
    """(byte offset, byte count) slices of at most CHUNK_BYTES (read now: tests lower it)."""
    from . import io as st_io

    step = max(1, st_io.CHUNK_BYTES)
    return [(a, min(step, nbytes - a)) for a in range(0, nbytes, step)]


def _run_all(tasks: list[Task], ctx: TransformContext, on_done: Callable[[Task, tuple[int, float]], None]) -> None:
    """Run *tasks* in up to ``ctx.jobs`` worker processes (in-process for one job)."""
    ctx.run_processes(_run_task, tasks, preload=WORKER_MODULES, on_done=on_done)


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
    ``ctx.jobs`` worker processes that read the input through ``mmap`` and ``pwrite`` into
    the output at offsets computed beforehand.
    """

    name = "safetensors-cast"
    version = PLUGIN_VERSION
    summary = "cast safetensors to float16/bfloat16, or float8_e4m3 with per-tensor scales (vLLM fp8)"
    format = "safetensors"
    types = ("float16", "bfloat16", "float8_e4m3")
    worker_modules = WORKER_MODULES

    def quantize(self, files: list[WeightFile], qtype: str, options: dict[str, Any],
                 ctx: TransformContext) -> list[WeightFile | Output]:
        if qtype not in _TARGETS:
            raise UsageError(f"safetensors-cast cannot produce {qtype!r}", hint=f"types: {', '.join(self.types)}")
        # options arrive checked and typed from the frontend (the ``options`` declarations)
        if ctx.jobs > 1:
            ctx.prepare(WORKER_MODULES)  # the workers' server starts importing while we plan
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
                    if t.name in q:  # read twice: its amax first, then its float8 values
                        total += t.nbytes
                        fp8_targets.append((out, t, h, dst, lay.offsets[_scale_name(t.name)]))
                        amax_tasks += [("amax", h.source, off, n, t.dtype, "", 0, "", 0.0, t.name)
                                       for _, n, off in _chunks(t)]
                    elif t.nbytes == 0:
                        continue
                    elif new_dtype[t.name] != t.dtype:
                        width = _DTYPES[new_dtype[t.name]][0] // 8
                        copies_and_casts += [("cast", h.source, off, n, t.dtype, out, dst + e0 * width,
                                              new_dtype[t.name], 0.0, t.name) for e0, n, off in _chunks(t)]
                    else:  # in chunks too: a big tensor kept as it is must not stall the progress bar
                        copies_and_casts += [("copy", h.source, t.start + a, n, "", out, dst + a, "", 0.0, t.name)
                                             for a, n in _byte_chunks(t.nbytes)]
            index_facts.append((weight_map, total_size, total_params))
        ctx.set_total(total, unit="bytes")  # input bytes read, by every phase

        # Phase 1 (float8): amax of each tensor, reduced over its chunks; then the scales.
        tasks = copies_and_casts
        if fp8_targets:
            import numpy as np

            amax: dict[tuple[str, str], float] = {}

            def got_amax(task: Task, result: tuple[int, float]) -> None:
                ctx.advance(result[0])
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
