"""Build description → DAG of steps. Pure: nothing runs, nothing is read from disk.

Without weight transforms::

    source ─┬─ digest a ── layer a ─┐
            ├─ digest b ── layer b ─┼─ config ─ manifest ─ export
            └─ …          describe ─┘

(The manifest step also writes the variant's runtime description, an OCI referrer of the
manifest: :mod:`modelbuild.ops.runtime`.)

With ``QUANTIZE``/``SHARD``, the model set (MODEL weights of a known format and the
CONFIG files beside them) goes through a chain of transforms, and one ``layerset`` step
packs whatever files the last transform produced (sharding decides how many)::

    source ─ digest(model set…) ─ transform 1 ─ transform 2 ─┬─ layerset ─┐
           ─ digest c ── layer c ────────────────────────────┼────────────┼─ config ─ manifest ─ export
                                                             └─ describe ─┘

The planner only plans: the description arrives resolved (:mod:`modelbuild.frontend.resolve`
chose each transform's plugin and checked every stage), so nothing here raises a Modelfile
error, parses a string or consults a plugin. The graph records its variants (stage →
config and manifest steps) and its top step, so nothing downstream parses step ids.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from modelbuild.description import BuildDescription, FileKind, FileSpec, ResolvedBuild, Transform, Variant
from modelbuild.graph import BuildGraph, Step, VariantSteps


MODEL_CARD = "README.md"  # Hugging Face's model card, as converters look for it


@dataclass(frozen=True)
class BuildOptions:
    """Choices made on the command line rather than in the Modelfile."""

    layer_format: str = "raw"
    tags: tuple[str, ...] = ()
    outputs: tuple[dict[str, str], ...] = ()
    created: str | None = None  # RFC 3339, from SOURCE_DATE_EPOCH
    epoch: int = 0  # tar and file-metadata mtime, from SOURCE_DATE_EPOCH
    # --label and --annotation, placed by modelbuild.build.place_annotations: per variant
    # (keyed by stage, None for a build without stages), over the Modelfile's LABELs
    manifest_annotations: Mapping[str | None, Mapping[str, str]] = field(default_factory=dict)
    index_annotations: Mapping[str, str] = field(default_factory=dict)  # the index itself
    entry_annotations: Mapping[str | None, Mapping[str, str]] = field(default_factory=dict)  # its entries
    layout_annotations: Mapping[str, str] = field(default_factory=dict)  # the result's entry in index.json


def plan(resolved: ResolvedBuild, options: BuildOptions) -> BuildGraph:
    """The DAG of steps that builds *resolved* with *options*."""
    desc = resolved.description
    graph = BuildGraph()
    source = graph.add(_source_step(desc))
    shared, variants = resolved.shared, resolved.variants
    in_set = {f.path for f in resolved.model_set}
    # the model set's files are packed one by one only if some variant leaves them untransformed
    needs_plain = any(not shared and not v.chain for v in variants)
    # a packaged directory leaves out what .modelbuildignore and --exclude exclude; the digest
    # step is never keyed, so the rules reach no cache key but through the files they leave
    exclude = desc.ignore.patterns() if desc.ignore else []
    file_layers: list[Step] = []
    set_digests: list[Step] = []
    cards: list[Step] = []  # model cards (DOC README.md): what converters read metadata from
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
                {"path": spec.path, "is_dir": spec.is_dir, "ingest": ingest, "kind": spec.kind.value,
                 **({"exclude": exclude} if spec.is_dir and exclude else {})},
            ),
            [source],
        )
        if in_model_set:
            set_digests.append(digest)
        elif spec.kind == FileKind.DOC and not spec.is_dir and posixpath.basename(spec.path) == MODEL_CARD:
            cards.append(digest)
        if plain:
            codec = "tar" if (options.layer_format == "raw" and spec.is_dir) else options.layer_format
            base = _base_layer(desc, spec)
            file_layers.append(graph.add(
                Step.make(
                    f"layer:{spec.path}",
                    "layer",
                    f"pack {spec.path}{'/' if spec.is_dir else ''} "
                    + ("(the base's layer)" if base else f"({codec})"),
                    {"path": spec.path, "kind": spec.kind.value, "codec": codec, "epoch": options.epoch,
                     **({"base": base} if base else {})},
                ),
                [digest],
            ))
    other_layers = [s for s in file_layers if s.params["path"] not in in_set]
    set_layers = [s for s in file_layers if s.params["path"] in in_set]
    after_shared = _add_chain(graph, shared, set_digests, None, cards)
    manifests = []
    for v in variants:
        last = _add_chain(graph, v.chain, after_shared, v, cards)
        if last is set_digests:
            layers = other_layers + set_layers
        else:
            layers = other_layers + [graph.add(
                Step.make(f"layerset{_suffix(v)}", "layerset",
                          f"pack transformed weights ({options.layer_format})" + _tag(v),
                          {"codec": options.layer_format, "epoch": options.epoch},
                          platform=v.platform, stage=v.stage),
                last,
            )]
        manifests.append(_add_artifact(graph, desc, options, v, last or [source], layers))
    if len(variants) == 1 and variants[0].stage is None:
        top = manifests[0]
    else:
        top = graph.add(
            Step.make("index", "index", "write index",
                      {"entries": [_index_entry(v, options) for v in variants], "created": options.created,
                       **({"annotations": dict(options.index_annotations)} if options.index_annotations else {})}),
            manifests,
        )
    graph.top = top.id
    export_label = "export " + (", ".join(options.tags) if options.tags else "(untagged)")
    graph.export = graph.add(
        Step.make("export", "export", export_label,
                  {"tags": list(options.tags), "outputs": list(options.outputs),
                   "stages": [v.stage for v in variants if v.stage],
                   **({"annotations": dict(options.layout_annotations)} if options.layout_annotations else {})}),
        [top, *(manifests if top not in manifests else [])],
    ).id
    return graph


_LAYER_TYPE = re.compile(r"application/vnd\.cncf\.model\.(?P<family>[a-z.]+)\.v1\.(?:raw|tar|tar\+gzip|tar\+zstd)")


def _base_layer(desc: BuildDescription, spec: FileSpec) -> dict[str, Any] | None:
    """The base artifact's layer for *spec*, when a remote FROM gave one that the file can
    keep: same path, a ModelPack layer of the kind it is packaged as, its diffId known.
    The file is the base's, unchanged (the snapshot is read-only), so the layer is too."""
    listing = desc.source.listing if desc.source is not None else None
    if listing is None:
        return None
    for f in listing.files:
        if f.path != spec.path or not f.media_type or not f.diff_id:
            continue
        m = _LAYER_TYPE.fullmatch(f.media_type)
        if m and m["family"] == spec.kind.media_family and (f.unpack or not spec.is_dir):  # a folder is an archive
            return {"mediaType": f.media_type, "digest": f.digest, "size": f.size, "diffId": f.diff_id}
    return None


def _source_step(desc: BuildDescription) -> Step:
    """The graph's first step: the context. A remote FROM names the identity it was pinned
    to and its fetch key (:mod:`modelbuild.fetch`), so ``--print-graph`` shows exactly what
    the build reads; the fetch itself ran when the frontend opened the source."""
    fetched = desc.source
    if fetched is None or fetched.pin is None:
        return Step.make("source", "source", f"load build context {desc.context}", {"root": str(desc.context)})
    return Step.make("source", "source", f"fetch {fetched.pin.identity}",
                     {"root": str(desc.context), "source": fetched.source, "identity": fetched.pin.identity,
                      "key": fetched.key})


def _suffix(v: Variant) -> str:
    return f":{v.stage}" if v.stage else ""


def _tag(v: Variant) -> str:
    return f" [{v.stage}]" if v.stage else ""


def _add_chain(graph: BuildGraph, chain: tuple[Transform, ...], inputs: list[Step], v: Variant | None,
               cards: list[Step]) -> list[Step]:
    """The chain's transform steps, each reading the one before. A convert step also reads
    the model cards (``README.md`` listed with DOC), as llama.cpp's converter reads the
    checkpoint's README for the GGUF's name, license and tags: they enter its key, are
    handed to the converter, and never become its output (the card keeps its own layer)."""
    last = inputs
    prefix = f"transform:{v.stage}:" if v is not None and v.stage else "transform:"
    for index, t in enumerate(chain, start=1):
        step = graph.add(
            Step.make(
                f"{prefix}{index}",
                "transform",
                t.label + (_tag(v) if v is not None else ""),
                {"action": t.action, "arg": t.arg, "options": [list(o) for o in t.options], "plugin": t.plugin,
                 **({"max_bytes": t.max_bytes} if t.max_bytes is not None else {})},
                plugin=t.owner,
                platform=v.platform if v is not None else None,
                stage=v.stage if v is not None else None,
            ),
            last + cards if t.action == "convert" else last,
        )
        last = [step]
    return last


def _add_artifact(graph: BuildGraph, desc: BuildDescription, options: BuildOptions, v: Variant,
                  weights: list[Step], layers: list[Step]) -> Step:
    tag, where = _tag(v), {"platform": v.platform, "stage": v.stage}
    describe = graph.add(Step.make(f"describe{_suffix(v)}", "describe", "read weight metadata" + tag, {}, **where),
                         weights)
    config = graph.add(
        Step.make(
            f"config{_suffix(v)}",
            "config",
            "write config" + tag,
            {
                "descriptor": dict(desc.descriptor),
                "config": dict(desc.config),
                "capabilities": dict(desc.capabilities),
                "created": options.created,
            },
            **where,
        ),
        [describe, *layers],
    )
    # the Modelfile's LABELs, then the command line's --label and --annotation: later wins
    labels = {**desc.labels, **options.manifest_annotations.get(v.stage, {})}
    # the manifest step also attaches the variant's runtime description (an OCI referrer):
    # what it says enters the step's key, never the manifest's bytes
    manifest = graph.add(
        Step.make(f"manifest{_suffix(v)}", "manifest", "write manifest" + tag,
                  {"labels": labels, "created": options.created, "runtime": v.runtime.to_params()}, **where),
        [config, *layers],
    )
    graph.variants.append(VariantSteps(v.stage, config.id, manifest.id))
    return manifest


def _index_entry(v: Variant, options: BuildOptions) -> dict[str, Any]:
    annotations = {**v.index_annotations, **options.entry_annotations.get(v.stage, {})}
    return {"stage": v.stage, "platform": dict(v.index_platform), "annotations": dict(sorted(annotations.items()))}
