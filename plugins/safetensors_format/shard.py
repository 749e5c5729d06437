"""The shard strategy ``safetensors``: split and merge as Hugging Face does."""

from __future__ import annotations

import os
from dataclasses import dataclass

from modelbuild.api import Output, TransformContext, UsageError, WeightFile

from .groups import (
    _INDEX_SUFFIX,
    _check_group,
    _index_json,
    _merged_metadata,
    _split_set,
    _write_output,
)
from .header import PLUGIN_VERSION, Tensor, read_header
from .io import Layout, Spec, _copy_range, _create, layout

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
    options = ()  # SHARD takes none

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

            ctx.run_threads(run, list(jobs))
        finally:
            for fd in fds.values():
                os.close(fd)
