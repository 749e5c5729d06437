"""Build description → DAG of steps. Pure: nothing runs, nothing is read from disk.

Without weight transforms::

    source ─┬─ digest a ── layer a ─┐
            ├─ digest b ── layer b ─┼─ config ─ manifest ─ export
            └─ …          describe ─┘

With ``QUANTIZE``/``SHARD``, the model set (MODEL weights of a known format and the
CONFIG files beside them) goes through a chain of transforms, and one ``layerset`` step
packs whatever files the last transform produced (sharding decides how many)::

    source ─ digest(model set…) ─ transform 1 ─ transform 2 ─┬─ layerset ─┐
           ─ digest c ── layer c ────────────────────────────┼────────────┼─ config ─ manifest ─ export
                                                             └─ describe ─┘

The registries are consulted (which plugin quantizes this format to that type) so that an
impossible transform is an error at its Modelfile line before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelbuild.description import BuildDescription, FileKind, FileSpec, TransformSpec
from modelbuild.errors import ModelfileError
from modelbuild.graph import BuildGraph, Step

if TYPE_CHECKING:
    from modelbuild.plugins import PluginHost


@dataclass(frozen=True)
class BuildOptions:
    """Choices made on the command line rather than in the Modelfile."""

    layer_format: str = "raw"
    tags: tuple[str, ...] = ()
    outputs: tuple[dict[str, str], ...] = ()
    created: str | None = None  # RFC 3339, from SOURCE_DATE_EPOCH
    epoch: int = 0  # tar and file-metadata mtime, from SOURCE_DATE_EPOCH
    extra: dict[str, Any] = field(default_factory=dict)


def model_set(desc: BuildDescription, host: "PluginHost") -> list[FileSpec]:
    """The files weight transforms and the metadata reader work on: every MODEL and CONFIG
    file (not directories). Weight files of no known format ride along: an ONNX model's
    external data file is one, and a transform passes what it does not know through."""
    return [f for f in desc.files if not f.is_dir and f.kind in (FileKind.CONFIG, FileKind.MODEL)]


def plan(desc: BuildDescription, options: BuildOptions, host: "PluginHost") -> BuildGraph:
    graph = BuildGraph()
    source = graph.add(Step.make("source", "source", f"load build context {desc.context}", {"root": str(desc.context)}))
    chain = resolve_transforms(desc, host)
    in_set = {f.path for f in model_set(desc, host)}
    transformed = bool(chain)
    layers: list[Step] = []
    set_digests: list[Step] = []
    for spec in desc.files:
        # files a transform will replace are only hashed, not copied into the store
        consumed = transformed and spec.path in in_set
        raw = options.layer_format == "raw" and not spec.is_dir
        ingest = raw and not consumed
        digest = graph.add(
            Step.make(
                f"digest:{spec.path}",
                "digest",
                f"{'ingest' if ingest else 'digest'} {spec.path}{'/' if spec.is_dir else ''}",
                {"path": spec.path, "is_dir": spec.is_dir, "ingest": ingest, "kind": spec.kind.value},
            ),
            [source],
        )
        if spec.path in in_set:
            set_digests.append(digest)
        if consumed:
            continue
        codec = "tar" if (options.layer_format == "raw" and spec.is_dir) else options.layer_format
        layers.append(graph.add(
            Step.make(
                f"layer:{spec.path}",
                "layer",
                f"pack {spec.path}{'/' if spec.is_dir else ''} ({codec})",
                {"path": spec.path, "kind": spec.kind.value, "codec": codec, "epoch": options.epoch},
            ),
            [digest],
        ))
    last: list[Step] = set_digests
    for index, (t, plugin_name, owner) in enumerate(chain, start=1):
        step = graph.add(
            Step.make(
                f"transform:{index}",
                "transform",
                _transform_label(t),
                {"action": t.action, "arg": t.arg, "options": [list(o) for o in t.options], "plugin": plugin_name},
                plugin=owner,
            ),
            last,
        )
        last = [step]
    if transformed:
        layers.append(graph.add(
            Step.make("layerset", "layerset", f"pack transformed weights ({options.layer_format})",
                      {"codec": options.layer_format, "epoch": options.epoch}),
            last,
        ))
    describe = graph.add(Step.make("describe", "describe", "read weight metadata", {}), last or [source])
    config = graph.add(
        Step.make(
            "config",
            "config",
            "write config",
            {
                "descriptor": dict(desc.descriptor),
                "config": dict(desc.config),
                "capabilities": dict(desc.capabilities),
                "created": options.created,
            },
        ),
        [describe, *layers],
    )
    manifest = graph.add(
        Step.make("manifest", "manifest", "write manifest", {"labels": dict(desc.labels), "created": options.created}),
        [config, *layers],
    )
    export_label = "export " + (", ".join(options.tags) if options.tags else "(untagged)")
    graph.add(
        Step.make("export", "export", export_label, {"tags": list(options.tags), "outputs": list(options.outputs)}),
        [manifest],
    )
    return graph


def _transform_label(t: TransformSpec) -> str:
    if t.action == "convert":
        return f"convert to {t.arg}"
    if t.action == "merge":
        return "merge shards"
    if t.action == "shard":
        return f"shard {t.arg}"
    return f"quantize {t.arg}"


def resolve_transforms(desc: BuildDescription, host: "PluginHost") -> list[tuple[TransformSpec, str, str]]:
    """Each transform with the plugin object that will do it and the plugin that owns it;
    a ModelfileError at the directive's line when none can."""
    if not desc.transforms:
        return []
    first = desc.transforms[0]
    dirs = [f.path for f in desc.files if f.kind == FileKind.MODEL and f.is_dir]
    formats = sorted({h.name for f in model_set(desc, host) if f.kind == FileKind.MODEL
                      and (h := host.format_for_path(f.path)) is not None})
    if not formats:
        known = ", ".join(ext for h in host.formats for ext in h.extensions)
        hint = f"weights inside a directory ({dirs[0]}) cannot be transformed; select the files" if dirs else \
            f"MODEL must select weight files of a known format ({known})"
        raise ModelfileError.at(first.origin, f"{first.directive} has no weights to work on", hint=hint) \
            if first.origin else ModelfileError(f"{first.directive} has no weights to work on", hint=hint)
    if len(formats) > 1:
        raise _at(first, f"{first.directive} needs weights of one format, found {' and '.join(formats)}")
    fmt = formats[0]
    chain = []
    for t in desc.transforms:
        if t.action == "convert":
            converter = host.converter_for(fmt, t.arg)
            if converter is None:
                pairs = ", ".join(f"{c.source_format} → {c.target_format}" for c in host.converters) or "none"
                raise _at(t, f"cannot convert {fmt} weights to {t.arg}", hint=f"installed converters: {pairs}")
            outtype = dict(t.options).get("outtype")
            if outtype is not None and outtype not in converter.outtypes:
                raise _at(t, f"unknown --outtype={outtype} for CONVERT {t.arg}",
                          hint=f"one of {', '.join(converter.outtypes)}")
            chain.append((t, converter.name, host.converters.owner(converter.name)))
            fmt = converter.target_format
        elif t.action == "quantize":
            quantizer = host.quantizer_for(fmt, t.arg)
            if quantizer is None:
                if t.arg in host.quant_types():
                    others = sorted({q.format for q in host.quantizers if t.arg in q.types})
                    raise _at(t, f"quant type {t.arg} cannot be applied to {fmt} weights (it is for {', '.join(others)})",
                              hint=f"{fmt} takes: {', '.join(host.quant_types(fmt)) or 'none'}")
                raise _at(t, f"unknown quant type {t.arg}", hint=f"known: {', '.join(host.quant_types())}")
            chain.append((t, quantizer.name, host.quantizers.owner(quantizer.name)))
        else:
            if fmt not in host.shard_strategies:
                raise _at(t, f"no shard strategy for {fmt} weights",
                          hint=f"installed: {', '.join(host.shard_strategies.names()) or 'none'}")
            chain.append((t, fmt, host.shard_strategies.owner(fmt)))
    return chain


def _at(t: TransformSpec, message: str, hint: str | None = None) -> ModelfileError:
    return ModelfileError(message, t.origin, hint=hint)
