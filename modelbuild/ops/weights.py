"""Ops on the model set: transform it with a plugin (quantize, shard, merge), and read
from its headers the facts the config states (format, precision, parameter count, …).

A model set travels between steps as a :class:`~modelbuild.results.FileSet` of
:class:`~modelbuild.results.ModelFile`, each an ``"input"`` (a file of the build context) or
a ``"blob"`` (a transform's output, in the store). ``source``, where to read it now, is
attached by ``finalize`` and never cached: a cached result stays valid when the context moves.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from modelbuild.digests import key_of
from modelbuild.errors import BuildError, PluginError
from modelbuild.graph import Step
from modelbuild.ops.base import ExecEnv, Op, Outcome, StepContext, plugin_identity
from modelbuild.results import FileDigest, FileSet, Metadata, ModelFile


# Transforms run one at a time in a process: each already uses every core (ctx.jobs worker
# processes, started from modelbuild.workers' forkserver), so two at once would only share
# the cores and double the memory. A CPU budget, not a correctness lock.
_TRANSFORM_LOCK = threading.Lock()


def model_set(inputs: list[Any]) -> list[ModelFile]:
    """The files of a model set, from digest results or a previous transform's result (the
    build context alone, for a build without weights, is an empty set)."""
    files: list[ModelFile] = []
    for i in inputs:
        if isinstance(i, FileSet):
            files.extend(i.files)
        elif isinstance(i, FileDigest):
            files.append(ModelFile(i.path, i.kind, i.digest, i.size, "input", i.mode, i.source))
    return sorted(files, key=lambda f: f.path)


def identity(files: list[ModelFile]) -> list[dict[str, Any]]:
    return [{"path": f.path, "kind": f.kind, "digest": f.digest, "size": f.size} for f in files]


def weight_files(files: list[ModelFile]) -> list[Any]:
    from modelbuild.weights import WeightFile

    return [WeightFile(f.path, f.source or "", f.digest, f.size, f.kind) for f in files]


class TransformOp(Op):
    """Run a quantizer or shard strategy plugin over the model set."""

    name = "transform"
    result_type = FileSet
    prepares_executor = True

    def _registry(self, step: Step, env: ExecEnv) -> Any:
        return {"quantize": env.host.quantizers, "convert": env.host.converters}.get(
            step.params["action"], env.host.shard_strategies)

    def key(self, step: Step, inputs: list[Any], env: ExecEnv) -> str | None:
        definition = {**step.definition(),
                      "implementation": plugin_identity(self._registry(step, env), step.params["plugin"], env),
                      "files": identity(model_set(inputs))}
        plugin = self._registry(step, env).get(step.params["plugin"])
        extras = getattr(plugin, "key_extras", None)
        if extras is not None:  # what else the output depends on (hf-to-gguf: the adapter it uses)
            definition["uses"] = extras(weight_files(model_set(inputs)), env.host)
        return key_of(definition)

    def worker_modules(self, step: Step, env: ExecEnv) -> tuple[str, ...]:
        """What the plugin's worker processes import (its ``worker_modules``): the solver
        declares them to the forkserver before any step runs, so it imports them once."""
        return tuple(getattr(self._registry(step, env).get(step.params["plugin"]), "worker_modules", ()))

    def finalize(self, result: FileSet, inputs: list[Any], env: ExecEnv) -> FileSet:
        import dataclasses

        by_digest = {f.digest: f.source for f in model_set(inputs)}
        return FileSet(tuple(
            dataclasses.replace(f, source=str(env.store.blob_path(f.digest)) if f.origin == "blob"
                                else by_digest[f.digest])
            for f in result.files))

    def run(self, step: Step, inputs: list[Any], ctx: StepContext) -> Outcome:
        p = step.params
        files = weight_files(model_set(inputs))
        plugin = self._registry(step, ctx.env).get(p["plugin"])
        if not _TRANSFORM_LOCK.acquire(blocking=False):  # say why the bar does not move yet
            ctx.log("waiting: another transform is using every core")
            _TRANSFORM_LOCK.acquire()
        try:
            return self._run(step, plugin, files, p, ctx)
        finally:
            _TRANSFORM_LOCK.release()

    def _run(self, step: Step, plugin: Any, files: list[Any], p: dict[str, Any], ctx: StepContext) -> Outcome:
        from modelbuild.weights import Output, TransformContext, WeightFile

        env = ctx.env
        workdir = Path(tempfile.mkdtemp(dir=env.store.ingest_dir, prefix="transform-"))
        tctx = TransformContext(workdir, jobs=env.jobs, advance=ctx.advance, set_total=ctx.set_total, log=ctx.log,
                                plugins=env.host, executor=env.executor)
        try:
            if p["action"] == "quantize":
                produced = plugin.quantize(files, p["arg"], dict(p["options"]), tctx)
            elif p["action"] == "convert":
                options = {"outtype": plugin.outtypes[0], **dict(p["options"])}
                produced = plugin.convert(files, options, tctx)
            elif p["action"] == "shard":
                produced = plugin.shard(files, p["max_bytes"], tctx)
            else:
                produced = plugin.merge(files, tctx)
            known = {(f.path, f.digest): f for f in files}
            out: dict[str, ModelFile] = {}
            for item in produced:
                if isinstance(item, WeightFile):
                    if (item.path, item.digest) not in known:
                        raise PluginError(f"{p['plugin']} returned a file it was not given: {item.path}")
                    if item.kind == "doc":  # a model card given as context: it keeps its own layer
                        continue
                    entry = ModelFile(item.path, item.kind, item.digest, item.size, "input")
                elif isinstance(item, Output):
                    digest, size, created = env.store.adopt(item.file)
                    if created:
                        env.stats.add(bytes_written=size)
                    entry = ModelFile(item.path, item.kind, digest, size, "blob")
                else:
                    raise PluginError(f"{p['plugin']} returned {item!r}, not a WeightFile or an Output")
                if entry.path in out:
                    raise PluginError(f"{p['plugin']} returned two files named {entry.path}")
                out[entry.path] = entry
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if not out:
            raise BuildError(f"{step.label}: produced no files")
        return Outcome(FileSet(tuple(out[k] for k in sorted(out))))


class DescribeOp(Op):
    """Read format, parameter count, precision, quantization, architecture and family from
    the model set's headers (never by loading weights), for the config."""

    name = "describe"
    result_type = Metadata

    def key(self, step: Step, inputs: list[Any], env: ExecEnv) -> str | None:
        # only the formats this model set's files have: another format plugin changes nothing
        files = model_set(inputs)
        consulted = sorted({name for f in files if f.kind == "model"
                            and (name := env.host.format_name_for_path(f.path)) is not None})
        formats = [plugin_identity(env.host.formats, name, env) for name in consulted]
        return key_of({**step.definition(), "formats": formats, "files": identity(files)})

    def run(self, step: Step, inputs: list[Any], ctx: StepContext) -> Outcome:
        env = ctx.env
        files = model_set(inputs)
        config = _read_config(files)
        groups: dict[str, list[ModelFile]] = {}
        unclaimed = []
        for f in files:
            handler = env.host.format_for_path(f.path) if f.kind == "model" else None
            if handler is not None:
                groups.setdefault(handler.name, []).append(f)
            elif f.kind == "model":
                unclaimed.append(f)
        infos = []
        for name, group in sorted(groups.items()):
            handler = env.host.formats.get(name)
            # formats whose models reference side files (ONNX external data) see those too
            given = group + unclaimed if getattr(handler, "sidecar_files", False) else group
            infos.append(handler.read_info(weight_files(given), config))
        derived: dict[str, Any] = {}
        if infos:
            info = max(infos, key=lambda i: (i.param_count, i.format))
            derived = {
                "format": info.format,
                "paramSize": info.param_size,
                "precision": info.precision,
                "quantization": info.quantization,
                "architecture": info.architecture,
                "family": info.family,
            }
        elif config:
            derived = _from_config(config)
        return Outcome(Metadata({k: v for k, v in derived.items() if v}))


def _read_config(files: list[ModelFile]) -> dict[str, Any] | None:
    """The Hugging Face ``config.json`` of the model set, if it has one at its top level."""
    for f in files:
        if f.path == "config.json" and f.source is not None:
            try:
                with open(f.source, "rb") as fh:
                    doc = json.load(fh)
            except (OSError, ValueError) as exc:
                from modelbuild.weights import FormatError

                raise FormatError("config.json", f"not valid JSON ({exc})") from None
            return doc if isinstance(doc, dict) else None
    return None


def _from_config(config: dict[str, Any]) -> dict[str, Any]:
    transformer = any(k in config for k in ("transformers_version", "architectures", "num_attention_heads"))
    return {"architecture": "transformer" if transformer else None, "family": config.get("model_type")}
