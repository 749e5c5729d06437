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

from modelbuild.description import BuildDescription, FileKind, FileSpec, StageSpec, TransformSpec
from modelbuild.errors import ModelfileError, UsageError
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


@dataclass
class Variant:
    """One manifest to build: the implicit single one, or a TARGET stage."""

    stage: StageSpec | None
    chain: list[tuple[TransformSpec, str, str]]  # stage-specific transforms only
    target: Any = None

    @property
    def suffix(self) -> str:
        return f":{self.stage.name}" if self.stage else ""


def plan(desc: BuildDescription, options: BuildOptions, host: "PluginHost") -> BuildGraph:
    graph = BuildGraph()
    source = graph.add(Step.make("source", "source", f"load build context {desc.context}", {"root": str(desc.context)}))
    shared, fmt = resolve_transforms(desc.transforms, desc, host, None)
    variants = resolve_variants(desc, options, host, shared, fmt)
    in_set = {f.path for f in model_set(desc, host)}
    # the model set's files are packed one by one only if some variant leaves them untransformed
    needs_plain = any(not shared and not v.chain for v in variants)
    file_layers: list[Step] = []
    set_digests: list[Step] = []
    for spec in desc.files:
        in_model_set = spec.path in in_set
        plain = not in_model_set or needs_plain
        raw = options.layer_format == "raw" and not spec.is_dir
        ingest = raw and plain  # files a transform replaces are only hashed, not copied in
        digest = graph.add(
            Step.make(
                f"digest:{spec.path}",
                "digest",
                f"{'ingest' if ingest else 'digest'} {spec.path}{'/' if spec.is_dir else ''}",
                {"path": spec.path, "is_dir": spec.is_dir, "ingest": ingest, "kind": spec.kind.value},
            ),
            [source],
        )
        if in_model_set:
            set_digests.append(digest)
        if plain:
            codec = "tar" if (options.layer_format == "raw" and spec.is_dir) else options.layer_format
            file_layers.append(graph.add(
                Step.make(
                    f"layer:{spec.path}",
                    "layer",
                    f"pack {spec.path}{'/' if spec.is_dir else ''} ({codec})",
                    {"path": spec.path, "kind": spec.kind.value, "codec": codec, "epoch": options.epoch},
                ),
                [digest],
            ))
    other_layers = [s for s in file_layers if s.params["path"] not in in_set]
    set_layers = [s for s in file_layers if s.params["path"] in in_set]
    after_shared = _add_chain(graph, shared, set_digests, "", None)
    manifests = []
    for v in variants:
        platform = v.stage.name if v.stage else None
        last = _add_chain(graph, v.chain, after_shared, v.suffix.lstrip(":"), platform)
        if last is set_digests:
            layers = other_layers + set_layers
        else:
            layers = other_layers + [graph.add(
                Step.make(f"layerset{v.suffix}", "layerset",
                          f"pack transformed weights ({options.layer_format})" + (f" [{platform}]" if platform else ""),
                          {"codec": options.layer_format, "epoch": options.epoch}, platform=platform),
                last,
            )]
        manifests.append(_add_artifact(graph, desc, options, v, last or [source], layers))
    if len(variants) == 1 and variants[0].stage is None:
        top = manifests[0]
    else:
        top = graph.add(
            Step.make(
                "index", "index", "write index",
                {"entries": [_index_entry(v) for v in variants], "created": options.created},
            ),
            manifests,
        )
    export_label = "export " + (", ".join(options.tags) if options.tags else "(untagged)")
    graph.add(
        Step.make("export", "export", export_label,
                  {"tags": list(options.tags), "outputs": list(options.outputs),
                   "stages": [v.stage.name for v in variants if v.stage]}),
        [top, *(manifests if top not in manifests else [])],
    )
    return graph


def _add_chain(graph: BuildGraph, chain: list[tuple[TransformSpec, str, str]], inputs: list[Step], stage: str,
               platform: str | None) -> list[Step]:
    last = inputs
    prefix = f"transform:{stage}:" if stage else "transform:"
    for index, (t, plugin_name, owner) in enumerate(chain, start=1):
        label = _transform_label(t) + (f" [{stage}]" if stage else "")
        step = graph.add(
            Step.make(
                f"{prefix}{index}",
                "transform",
                label,
                {"action": t.action, "arg": t.arg, "options": [list(o) for o in t.options], "plugin": plugin_name},
                plugin=owner,
                platform=platform,
            ),
            last,
        )
        last = [step]
    return last


def _add_artifact(graph: BuildGraph, desc: BuildDescription, options: BuildOptions, v: Variant,
                  weights: list[Step], layers: list[Step]) -> Step:
    platform = v.stage.name if v.stage else None
    tag = f" [{platform}]" if platform else ""
    describe = graph.add(Step.make(f"describe{v.suffix}", "describe", "read weight metadata" + tag, {},
                                   platform=platform), weights)
    config = graph.add(
        Step.make(
            f"config{v.suffix}",
            "config",
            "write config" + tag,
            {
                "descriptor": dict(desc.descriptor),
                "config": dict(desc.config),
                "capabilities": dict(desc.capabilities),
                "created": options.created,
            },
            platform=platform,
        ),
        [describe, *layers],
    )
    return graph.add(
        Step.make(f"manifest{v.suffix}", "manifest", "write manifest" + tag,
                  {"labels": dict(desc.labels), "created": options.created}, platform=platform),
        [config, *layers],
    )


def _index_entry(v: Variant) -> dict[str, Any]:
    from modelbuild.targets import ANN_STAGE

    stage = _stage_object(v.stage)
    annotations = {**v.target.annotations(stage), ANN_STAGE: v.stage.name}
    return {"stage": v.stage.name, "platform": v.target.platform(stage), "annotations": annotations}


def _stage_object(spec: StageSpec) -> Any:
    from modelbuild.targets import Stage, parse_constraint

    return Stage(spec.name, spec.target, spec.variant, tuple(parse_constraint(c) for c in spec.constraints))


def resolve_variants(desc: BuildDescription, options: BuildOptions, host: "PluginHost",
                     shared: list[tuple[TransformSpec, str, str]], fmt: str | None) -> list[Variant]:
    """The variants to build, generic (CPU) ones first, each with its checked chain."""
    if not desc.stages:
        return [Variant(None, [])]
    from modelbuild.targets import ConstraintError

    wanted = options.extra.get("platforms")
    variants = []
    for spec in desc.stages:
        if wanted and spec.name not in wanted and spec.target not in wanted:
            continue
        try:
            target = host.targets.get(spec.target)
        except Exception:
            raise ModelfileError(f"unknown target {spec.target}",
                                 spec.origin, hint=f"installed: {', '.join(host.targets.names())}") from None
        if spec.variant and spec.variant not in target.variants:
            raise ModelfileError(f"target {spec.target} has no variant {spec.variant}", spec.origin,
                                 hint=f"variants: {', '.join(target.variants)}")
        stage = _stage_object(spec)
        for c in stage.constraints:
            try:
                target.check_constraint(c)
            except ConstraintError as exc:
                raise ModelfileError(str(exc), spec.origin) from None
        transforms = spec.transforms
        if not transforms and fmt is not None:
            transforms = tuple(TransformSpec(action, arg, tuple(sorted(opts.items())), spec.origin)
                               for action, arg, opts in target.default_steps(fmt))
        chain, final = resolve_transforms(transforms, desc, host, fmt)
        step_fmt = fmt
        for t, _, _ in chain:
            problem = target.check_step(stage, t.action, t.arg, step_fmt)
            if problem:
                raise ModelfileError(f"{t.directive} {t.arg} makes no sense for TARGET {spec.target}: {problem}",
                                     t.origin)
            if t.action == "convert":
                step_fmt = t.arg
        if final is not None and final not in target.formats:
            raise ModelfileError(
                f"TARGET {spec.target} cannot run {final} weights (its engines take {', '.join(target.formats)})",
                (chain[-1][0].origin if chain else spec.origin),
            )
        variants.append(Variant(spec, chain, target))
    if not variants:
        names = ", ".join(s.name for s in desc.stages)
        raise UsageError(f"--platform {','.join(wanted or [])} selects no stage", hint=f"stages: {names}")
    return sorted(variants, key=lambda v: not v.target.generic)


def _transform_label(t: TransformSpec) -> str:
    if t.action == "convert":
        return f"convert to {t.arg}"
    if t.action == "merge":
        return "merge shards"
    if t.action == "shard":
        return f"shard {t.arg}"
    return f"quantize {t.arg}"


def resolve_transforms(transforms: tuple[TransformSpec, ...], desc: BuildDescription, host: "PluginHost",
                       fmt: str | None) -> tuple[list[tuple[TransformSpec, str, str]], str | None]:
    """Each transform with the plugin object that will do it and the plugin that owns it,
    and the format after them; a ModelfileError at the directive's line when none can.
    *fmt* is the format before them (None: read it from the MODEL files' extensions)."""
    if fmt is None:
        dirs = [f.path for f in desc.files if f.kind == FileKind.MODEL and f.is_dir]
        formats = sorted({h.name for f in model_set(desc, host) if f.kind == FileKind.MODEL
                          and (h := host.format_for_path(f.path)) is not None})
        if len(formats) > 1 and transforms:
            raise _at(transforms[0], f"{transforms[0].directive} needs weights of one format, "
                                     f"found {' and '.join(formats)}")
        if not formats:
            if transforms:
                first = transforms[0]
                known = ", ".join(ext for h in host.formats for ext in h.extensions)
                hint = (f"weights inside a directory ({dirs[0]}) cannot be transformed; select the files" if dirs
                        else f"MODEL must select weight files of a known format ({known})")
                raise _at(first, f"{first.directive} has no weights to work on", hint=hint)
            return [], None
        fmt = formats[0]
    chain = []
    for t in transforms:
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
    return chain, fmt


def _at(t: TransformSpec, message: str, hint: str | None = None) -> ModelfileError:
    return ModelfileError(message, t.origin, hint=hint)
