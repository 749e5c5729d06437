"""Ops that finish the artifact: the ModelPack config, the manifest, the index and the export.

Each takes typed inputs (:mod:`modelbuild.results`) and returns one: the config step a
:class:`ConfigBlob` (with the format and quantization the index annotates), the manifest step
a :class:`ManifestBlob` carrying its config, so the index step writes its entries from its
inputs alone and reads nothing back from the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelbuild.digests import canonical_json, key_of
from modelbuild.errors import ModelbuildError
from modelbuild.graph import Step
from modelbuild.oci import mediatypes as mt
from modelbuild.ops.base import ExecEnv, Op, Outcome, StepContext
from modelbuild.ops.runtime import AttachedManifest, attach, key_extras
from modelbuild.results import ConfigBlob, Descriptor, Exported, IndexBlob, Layer, LayerSet, ManifestBlob, Metadata

# Config fields a build derives from the weights; a value the Modelfile sets wins.
DERIVED_FIELDS = ("architecture", "format", "paramSize", "precision", "quantization")
MODELFILE_NAMES = {"architecture": "ARCH", "format": "FORMAT", "paramSize": "PARAMSIZE", "precision": "PRECISION",
                   "quantization": "QUANTIZATION", "family": "FAMILY"}


def all_layers(inputs: list[Any]) -> list[Layer]:
    """Every layer of the layer-producing inputs, in lexicographic path order."""
    return sorted((layer for i in inputs if isinstance(i, LayerSet) for layer in i.layers), key=lambda la: la.path)


class _DescriptorOp(Op):
    """An op whose result is one blob of the artifact, named by its ``descriptor``."""

    exported = True


class ConfigOp(_DescriptorOp):
    """Write the ModelPack config, validated against the spec's schema.

    Inputs: the ``describe`` step (facts read from the weights), then the layer steps.
    """

    name = "config"
    result_type = ConfigBlob

    def key(self, step: Step, inputs: list[Any], env: ExecEnv) -> str | None:
        metadata: Metadata = inputs[0]
        return key_of({**step.definition(), "derived": dict(metadata.derived),
                       "diffIds": [layer.diff_id for layer in all_layers(inputs[1:])]})

    def run(self, step: Step, inputs: list[Any], ctx: StepContext) -> Outcome:
        from modelbuild.schema import validate_config

        metadata: Metadata = inputs[0]
        doc, warnings = build_config(step.params, dict(metadata.derived),
                                     [layer.diff_id for layer in all_layers(inputs[1:])])
        validate_config(doc)
        data = canonical_json(doc)
        digest = ctx.env.store.put_bytes(data)
        config = doc["config"]
        return Outcome(ConfigBlob(Descriptor(mt.MODEL_CONFIG, digest, len(data)), config.get("format") or None,
                                  config.get("quantization") or None, tuple(warnings)))


def build_config(params: dict[str, Any], derived: dict[str, Any],
                 diff_ids: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The config document, and a warning for each explicit value the weights contradict."""
    warnings = []
    descriptor = dict(params["descriptor"])
    if params.get("created"):
        descriptor["createdAt"] = params["created"]
    config = dict(params["config"])
    for name in DERIVED_FIELDS:
        found = derived.get(name)
        if found is None:
            continue
        if name not in config:
            config[name] = found
        elif not _agrees(name, config[name], found):
            warnings.append(f"{MODELFILE_NAMES[name]} {config[name]} contradicts the weights, which say {found}; "
                            f"keeping {config[name]}")
    if derived.get("family"):
        if "family" not in descriptor:
            descriptor["family"] = derived["family"]
        elif descriptor["family"].lower() != derived["family"].lower():
            warnings.append(f"FAMILY {descriptor['family']} contradicts the weights, which say {derived['family']}; "
                            f"keeping {descriptor['family']}")
    if params.get("capabilities"):
        config["capabilities"] = dict(params["capabilities"])
    doc = {"descriptor": descriptor, "config": config, "modelfs": {"type": "layers", "diffIds": diff_ids}}
    return doc, warnings


def _agrees(name: str, explicit: str, found: str) -> bool:
    """Whether an explicit value says the same as the derived one, allowing common spellings."""
    if name == "precision":
        from modelbuild.schema import PRECISION_ALIASES

        norm = {PRECISION_ALIASES.get(p.strip().lower(), p.strip().lower()) for p in explicit.split(",")}
        return norm == set(found.split(","))
    if name == "paramSize":
        return explicit.upper() == found.upper()
    return explicit.strip().lower() == found.strip().lower()


class ManifestOp(_DescriptorOp):
    """Write the OCI image manifest that makes the files a ModelPack artifact, and attach the
    variant's runtime description to it (an OCI referrer: :mod:`modelbuild.ops.runtime`),
    which changes nothing in the manifest."""

    name = "manifest"
    result_type = AttachedManifest

    def key(self, step: Step, inputs: list[Any], env: ExecEnv) -> str | None:
        config: ConfigBlob = inputs[0]
        return key_of({**step.definition(), "config": config.descriptor.to_oci(),
                       "layers": [layer.descriptor.to_oci() for layer in all_layers(inputs[1:])],
                       "runtime": key_extras(step.params["runtime"], env)})

    def run(self, step: Step, inputs: list[Any], ctx: StepContext) -> Outcome:
        config: ConfigBlob = inputs[0]
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": mt.MODEL_ARTIFACT,
            "config": config.descriptor.to_oci(),
            "layers": [layer.descriptor.to_oci() for layer in all_layers(inputs[1:])],
        }
        annotations = dict(step.params["labels"])
        if step.params.get("created"):
            annotations.setdefault(mt.ANNOTATION_CREATED, step.params["created"])
        if annotations:
            manifest["annotations"] = dict(sorted(annotations.items()))
        data = canonical_json(manifest)
        digest = ctx.env.store.put_bytes(data)
        descriptor = Descriptor(mt.OCI_MANIFEST, digest, len(data), mt.MODEL_ARTIFACT)
        runtime = attach(ctx.env, step.params["runtime"], descriptor, config, all_layers(inputs[1:]))
        return Outcome(AttachedManifest(descriptor, config, (runtime,)))


class IndexOp(_DescriptorOp):
    """Write the OCI image index of a multi-platform build: one entry per TARGET stage,
    generic (CPU) entries first, each with its platform and accelerator annotations
    (docs/spec/multi-platform.md), and the format and quantization its config states."""

    name = "index"
    result_type = IndexBlob

    def key(self, step: Step, inputs: list[Any], env: ExecEnv) -> str | None:
        # what the entries annotate from each manifest's config is part of the index's content
        return key_of({**step.definition(), "manifests": [m.descriptor.to_oci() for m in inputs],
                       "annotated": [[m.config.format, m.config.quantization] for m in inputs]})

    def run(self, step: Step, inputs: list[Any], ctx: StepContext) -> Outcome:
        from modelbuild.targets import ANN_FORMAT, ANN_QUANTIZATION

        entries = []
        for entry, manifest in zip(step.params["entries"], inputs, strict=True):
            annotations = dict(entry["annotations"])
            for key, value in ((ANN_FORMAT, manifest.config.format), (ANN_QUANTIZATION, manifest.config.quantization)):
                if value:
                    annotations[key] = value
            desc = manifest.descriptor.to_oci()
            desc["platform"] = entry["platform"]
            desc["annotations"] = dict(sorted(annotations.items()))
            entries.append(desc)
        index: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "artifactType": mt.MODEL_ARTIFACT,
            "manifests": entries,
        }
        annotations = {**({mt.ANNOTATION_CREATED: step.params["created"]} if step.params.get("created") else {}),
                       **step.params.get("annotations", {})}  # --annotation index:KEY=VALUE wins
        if annotations:
            index["annotations"] = dict(sorted(annotations.items()))
        data = canonical_json(index)
        digest = ctx.env.store.put_bytes(data)
        return Outcome(IndexBlob(Descriptor(mt.OCI_INDEX, digest, len(data), mt.MODEL_ARTIFACT)))


class ExportOp(Op):
    """Write the ``--output``s (``type=oci``: an OCI layout; ``type=local``: the files, one
    directory per stage for a multi-platform build), record in the store the referrers the
    manifest steps attached (each variant's runtime description), and say which tags the
    build sets: the result (the index, and each stage's manifest as ``TAG-STAGE`` for tools
    that cannot read an index). Outputs carry no referrers: an OCI layout would have to list
    them in its ``index.json`` beside the artifact, which readers of a one-artifact layout
    do not expect.

    The tags are not written here: :func:`modelbuild.build.build` writes them all at once
    (:meth:`Store.set_tags`) after every step, ``--output`` and ``--cache-to`` succeeded, so
    a failed build leaves every tag as it was. The result's ``tag_entries`` lists them: none
    when the build streamed layers to a registry and the store does not hold the whole
    artifact (a tag promises ``run``, ``push`` and ``pull -o`` every blob). ``--output
    type=registry`` is not an output of this step: the build pushes once this step is done."""

    name = "export"

    def run(self, step: Step, inputs: list[Any], ctx: StepContext) -> Outcome:
        import dataclasses

        from modelbuild.oci.layout import export_layout
        from modelbuild.storage.tags import tag_entry

        top, *manifests = inputs
        descriptor = top.descriptor
        if step.params.get("annotations"):  # --annotation index-descriptor:KEY=VALUE
            descriptor = dataclasses.replace(descriptor, annotations=dict(sorted(step.params["annotations"].items())))
        desc = descriptor.to_oci()
        entries = tag_entries(step.params["tags"], step.params.get("stages", []), desc,
                              [m.descriptor.to_oci() for m in manifests])
        if ctx.env.sources is not None and entries:
            from modelbuild.oci.push import stored_whole

            if not stored_whole(ctx.env.store, top.descriptor.to_oci()):
                entries = []  # layers streamed to the registry: a local tag would name what is not here
        current = ctx.env.store.tags()
        changed = any(current.get(ref) != tag_entry(ref, d) for ref, d in entries)
        changed |= record_referrers(ctx.env.store, inputs)
        for output in step.params["outputs"]:
            if output["type"] == "local":
                stages = step.params.get("stages", [])
                changed |= write_files(ctx, list(zip(stages, manifests)) if stages else [(None, top)],
                                       Path(output["dest"]))
                continue
            if output["type"] != "oci":
                raise ModelbuildError(f"unsupported output type {output['type']!r}")
            ref = step.params["tags"][0] if step.params["tags"] else None
            changed |= export_layout(ctx.env.store, desc, Path(output["dest"]), ref)
        return Outcome(Exported(descriptor, tuple(ref for ref, _ in entries), tuple(entries)), cached=not changed)


def record_referrers(store: Any, results: list[Any]) -> bool:
    """Record in the store what each manifest step attached to its manifest (a runtime
    description replaces the one an earlier build recorded); whether a record changed.
    Here, not in the manifest step, so a cached or imported manifest is recorded too, and only
    once all its blobs are in the store."""
    changed = False
    for result in results:
        referrers = getattr(result, "referrers", ())
        if referrers:
            changed |= store.record_referrers(result.descriptor.digest, [r.descriptor.to_oci() for r in referrers],
                                              replace=True)
    return changed


def write_files(ctx: StepContext, manifests: list[tuple[str | None, ManifestBlob]], dest: Path) -> bool:
    """``--output type=local``: each manifest's files into *dest* (a stage's into
    ``dest/STAGE``), by the one verified materialisation ``pull -o`` uses; return whether a
    file was written (files already there with the right bytes are left alone)."""
    from modelbuild.oci.materialize import StoreSource, materialize

    store = ctx.env.store
    changed = False
    for stage, manifest in manifests:
        doc = store.read_json(manifest.descriptor.digest, manifest.descriptor.size)
        config = manifest.config.descriptor
        outcome = materialize(StoreSource(store, "the local store"), doc, store.read_json(config.digest, config.size),
                              dest / stage_dir(stage) if stage else dest, jobs=max(1, ctx.env.jobs))
        for warning in outcome.warnings:
            ctx.env.emitter.warn(warning)
        changed |= outcome.fetched > 0
    return changed


def stage_dir(stage: str) -> str:
    """A stage's directory under a ``type=local`` output: its name, one path component
    (buildx writes ``linux/amd64`` as ``linux_amd64``)."""
    name = stage.replace("/", "_").replace("\\", "_")
    return name if name not in ("", ".", "..") else f"_{name}"


def tag_entries(tags: list[str], stages: list[str], top: dict[str, Any],
                manifests: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(reference, descriptor) for each tag a build sets: every tag names *top*, and with
    stages, ``TAG-STAGE`` names each stage's manifest."""
    from modelbuild.oci.reference import parse_reference

    out = []
    for ref in tags:
        out.append((ref, top))
        parsed = parse_reference(ref)
        for stage, manifest in zip(stages, manifests, strict=True):
            out.append((f"{parsed.repository}:{parsed.tag}-{stage}", manifest))
    return out
