"""Ops that finish the artifact: the ModelPack config, the manifest, and the export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelbuild.digests import canonical_json, key_of
from modelbuild.errors import BuildError, ModelbuildError
from modelbuild.graph import Step
from modelbuild.oci import mediatypes as mt
from modelbuild.ops.base import ExecEnv, Op, Outcome, StepContext
from modelbuild.store import ManifestParts

# Config fields a build derives from the weights; a value the Modelfile sets wins.
DERIVED_FIELDS = ("architecture", "format", "paramSize", "precision", "quantization")
MODELFILE_NAMES = {"architecture": "ARCH", "format": "FORMAT", "paramSize": "PARAMSIZE", "precision": "PRECISION",
                   "quantization": "QUANTIZATION", "family": "FAMILY"}


def all_layers(inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every layer of the layer-producing inputs, in lexicographic path order."""
    layers = [layer for i in inputs for layer in i.get("layers", [])]
    return sorted(layers, key=lambda layer: layer["descriptor"]["annotations"][mt.ANNOTATION_FILEPATH])


class _DescriptorOp(Op):
    """An op whose result is one blob of the artifact, named by ``result["descriptor"]``."""

    exported = True

    def valid(self, result: dict[str, Any], env: ExecEnv) -> bool:
        return env.blob_ok(result["descriptor"]["digest"], result["descriptor"]["size"])

    def blobs(self, result: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: result["descriptor"][k] for k in ("digest", "size", "mediaType")}]


class ConfigOp(_DescriptorOp):
    """Write the ModelPack config, validated against the spec's schema.

    Inputs: the ``describe`` step (facts read from the weights), then the layer steps.
    """

    name = "config"

    def key(self, step: Step, inputs: list[dict[str, Any]], env: ExecEnv) -> str | None:
        derived, *rest = inputs
        return key_of({**step.definition(), "derived": derived["derived"],
                       "diffIds": [layer["diffId"] for layer in all_layers(rest)]})

    def run(self, step: Step, inputs: list[dict[str, Any]], ctx: StepContext) -> Outcome:
        from modelbuild.schema import validate_config

        derived, *rest = inputs
        doc, warnings = build_config(step.params, derived["derived"], [layer["diffId"] for layer in all_layers(rest)])
        validate_config(doc)
        data = canonical_json(doc)
        digest = ctx.env.store.put_bytes(data)
        return Outcome({"descriptor": {"mediaType": mt.MODEL_CONFIG, "digest": digest, "size": len(data)},
                        "warnings": warnings})


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
    """Write the OCI image manifest that makes the files a ModelPack artifact."""

    name = "manifest"

    def key(self, step: Step, inputs: list[dict[str, Any]], env: ExecEnv) -> str | None:
        config, *rest = inputs
        return key_of({**step.definition(), "config": config["descriptor"],
                       "layers": [layer["descriptor"] for layer in all_layers(rest)]})

    def run(self, step: Step, inputs: list[dict[str, Any]], ctx: StepContext) -> Outcome:
        config, *rest = inputs
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": mt.MODEL_ARTIFACT,
            "config": config["descriptor"],
            "layers": [layer["descriptor"] for layer in all_layers(rest)],
        }
        annotations = dict(step.params["labels"])
        if step.params.get("created"):
            annotations.setdefault(mt.ANNOTATION_CREATED, step.params["created"])
        if annotations:
            manifest["annotations"] = dict(sorted(annotations.items()))
        data = canonical_json(manifest)
        digest = ctx.env.store.put_bytes(data)
        return Outcome(
            {
                "descriptor": {
                    "mediaType": mt.OCI_MANIFEST,
                    "artifactType": mt.MODEL_ARTIFACT,
                    "digest": digest,
                    "size": len(data),
                }
            }
        )


class IndexOp(_DescriptorOp):
    """Write the OCI image index of a multi-platform build: one entry per TARGET stage,
    generic (CPU) entries first, each with its platform and accelerator annotations
    (docs/spec/multi-platform.md)."""

    name = "index"

    def key(self, step: Step, inputs: list[dict[str, Any]], env: ExecEnv) -> str | None:
        return key_of({**step.definition(), "manifests": [i["descriptor"] for i in inputs]})

    def run(self, step: Step, inputs: list[dict[str, Any]], ctx: StepContext) -> Outcome:
        from modelbuild.targets import ANN_FORMAT, ANN_QUANTIZATION

        store = ctx.env.store
        entries = []
        for entry, manifest in zip(step.params["entries"], inputs, strict=True):
            desc = dict(manifest["descriptor"])
            annotations = dict(entry["annotations"])
            parts = ManifestParts.parse(store.read_json(desc["digest"], desc["size"]), f"manifest {desc['digest']}")
            if parts.config is None:
                raise BuildError(f"manifest {desc['digest']} has no config")
            config = store.read_json(parts.config.digest, parts.config.size).get("config")
            config = config if isinstance(config, dict) else {}
            for key, field in ((ANN_FORMAT, "format"), (ANN_QUANTIZATION, "quantization")):
                if config.get(field):
                    annotations[key] = config[field]
            desc["platform"] = entry["platform"]
            desc["annotations"] = dict(sorted(annotations.items()))
            entries.append(desc)
        index: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "artifactType": mt.MODEL_ARTIFACT,
            "manifests": entries,
        }
        if step.params.get("created"):
            index["annotations"] = {mt.ANNOTATION_CREATED: step.params["created"]}
        data = canonical_json(index)
        digest = store.put_bytes(data)
        return Outcome({"descriptor": {"mediaType": mt.OCI_INDEX, "artifactType": mt.MODEL_ARTIFACT,
                                       "digest": digest, "size": len(data)}})


class ExportOp(Op):
    """Write any ``--output`` layouts, and say which tags the build sets: the result (the
    index, and each stage's manifest as ``TAG-STAGE`` for tools that cannot read an index).

    The tags are not written here: :func:`modelbuild.build.build` writes them all at once
    (:meth:`Store.set_tags`) after every step, ``--output`` and ``--cache-to`` succeeded, so
    a failed build leaves every tag as it was. ``result["tag_entries"]`` lists them."""

    name = "export"

    def run(self, step: Step, inputs: list[dict[str, Any]], ctx: StepContext) -> Outcome:
        from modelbuild.oci.layout import export_layout
        from modelbuild.store import tag_entry

        top, *manifests = inputs
        desc = top["descriptor"]
        entries = tag_entries(step.params["tags"], step.params.get("stages", []), desc,
                              [m["descriptor"] for m in manifests])
        current = ctx.env.store.tags()
        changed = any(current.get(ref) != tag_entry(ref, d) for ref, d in entries)
        for output in step.params["outputs"]:
            if output["type"] != "oci":
                raise ModelbuildError(f"unsupported output type {output['type']!r}")
            ref = step.params["tags"][0] if step.params["tags"] else None
            changed |= export_layout(ctx.env.store, desc, Path(output["dest"]), ref)
        return Outcome({"descriptor": desc, "tags": [ref for ref, _ in entries], "tag_entries": entries},
                       cached=not changed)


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
