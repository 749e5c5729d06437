"""A variant's runtime description, written by its manifest step beside the manifest.

The description (:mod:`modelbuild.runtime.description`) is an OCI referrer of the variant's
manifest, so it is written where the manifest's descriptor is known: by the ``manifest``
step, right after the manifest, from the same inputs (the config and the layers) and from
the step's ``runtime`` parameters (the resolved ``RUNTIME`` lines). It is content-addressed
and cached with the manifest: what the ``RUNTIME`` lines say, and the engine plugins asked
when they name none, enter the step's key (:func:`key_extras`); the manifest's bytes, and so
its digest and the index's, never change with them.

The step writes blobs only; the store's record that the referrer belongs to the manifest is
written by the ``export`` step (:meth:`modelbuild.store.Store.record_referrers`), after every
manifest of the build is in, as tags are set last.

The memory figure reads only small blobs: the packaged ``config.json``
(:func:`modelbuild.runtime.memory.for_artifact`, as ``inspect`` and ``run`` compute it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Mapping

from modelbuild.errors import PluginError
from modelbuild.oci import mediatypes as mt
from modelbuild.ops.base import ExecEnv
from modelbuild.results import BlobRef, ConfigBlob, Descriptor, Layer, ManifestBlob
from modelbuild.runtime.description import (
    ARTIFACT_TYPE,
    DEFAULT_CONTEXT,
    EMPTY_JSON,
    KV_CACHE_TYPE,
    MAX_ENGINES,
    VERSION,
    EngineEntry,
    Resources,
    RuntimeDescription,
    referrer_manifest,
)


# -- the manifest step's result ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Referrer:
    """An artifact the build attached to a manifest: the referrer manifest's descriptor and
    the blobs it names (its config and layers), which a cached result must still find."""

    descriptor: Descriptor
    blobs: tuple[BlobRef, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"descriptor": self.descriptor.to_oci(), "blobs": [b.to_json() for b in self.blobs]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Referrer:
        return cls(Descriptor.from_oci(doc["descriptor"]),
                   tuple(BlobRef(b["digest"], b["size"], b.get("mediaType")) for b in doc["blobs"]))


@dataclass(frozen=True, slots=True)
class AttachedManifest(ManifestBlob):
    """A variant's manifest with the referrers its step attached (its runtime description)."""

    referrers: tuple[Referrer, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"descriptor": self.descriptor.to_oci(), "config": self.config.to_json(),
                "referrers": [r.to_json() for r in self.referrers]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> AttachedManifest:
        # "referrers" is required: a result stored before descriptions existed is a miss
        return cls(Descriptor.from_oci(doc["descriptor"]), ConfigBlob.from_json(doc["config"]),
                   tuple(Referrer.from_json(r) for r in doc["referrers"]))

    def blobs(self) -> list[BlobRef]:
        return [self.descriptor.blob, *(b for r in self.referrers for b in (r.descriptor.blob, *r.blobs))]


# -- what enters the manifest step's key ---------------------------------------------------
def key_extras(params: Mapping[str, Any], env: ExecEnv) -> dict[str, Any]:
    """What the description depends on beyond the step's parameters: its form, and, when the
    Modelfile names no engine, every registered engine (each may accept the variant); the
    engines a ``RUNTIME`` line names are listed as written, so their plugins are not asked."""
    engines = []
    if params.get("engines") is None:
        host = env.host
        engines = [{"name": name, "plugin": (owner := host.engines.owner(name)),
                    "plugin_version": host.plugin_version(owner)} for name in host.engines.names()]
    return {"form": [VERSION, DEFAULT_CONTEXT, KV_CACHE_TYPE], "engines": engines}


# -- writing it -------------------------------------------------------------------------------
def attach(env: ExecEnv, params: Mapping[str, Any], manifest: Descriptor, config: ConfigBlob,
           layers: list[Layer]) -> Referrer:
    """Write the runtime description of the variant *manifest* (whose config and layers
    are given) and the referrer manifest carrying it; return the referrer."""
    store = env.store
    description = describe(env, params, manifest, config, layers).to_json()
    described = store.put_bytes(description)
    empty = store.put_bytes(EMPTY_JSON)
    data = referrer_manifest(manifest.to_oci(), description)
    digest = store.put_bytes(data)
    return Referrer(Descriptor(mt.OCI_MANIFEST, digest, len(data), ARTIFACT_TYPE),
                    (BlobRef(empty, len(EMPTY_JSON)), BlobRef(described, len(description), ARTIFACT_TYPE)))


def describe(env: ExecEnv, params: Mapping[str, Any], manifest: Descriptor, config: ConfigBlob,
             layers: list[Layer]) -> RuntimeDescription:
    """The variant's description: what its config says it is, the memory it needs at the
    context it is served at, and the engines (the ``RUNTIME`` lines', else every registered
    engine that accepts it, in the engine registry's order)."""
    store = env.store
    doc = store.read_json(config.descriptor.digest, config.descriptor.size)
    section = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    fields = {k: _lower(section.get(k)) for k in ("format", "quantization", "precision")}
    resources = _resources(env, layers, params.get("context"))
    context = params.get("context") or (resources.context_length if resources is not None else None)
    if params.get("engines") is not None:
        engines = tuple(EngineEntry(e["name"], dict(e["params"])) for e in params["engines"])
    else:
        engines = _accepting(env, doc, manifest, layers, fields, params.get("target") or "", context)
    return RuntimeDescription(VERSION, engines, context, fields["format"], fields["quantization"],
                              fields["precision"], params.get("target") or "", params.get("accelerator") or "",
                              resources)


def _lower(value: object) -> str:
    return value.lower() if isinstance(value, str) else ""


def _resources(env: ExecEnv, layers: list[Layer], context: int | None) -> Resources | None:
    """The memory estimate at *context*, else at the model's own context capped at
    :data:`DEFAULT_CONTEXT` (at that default when the model does not say); None when the
    artifact holds no attention shape (an ONNX model, a GGUF without config.json)."""
    from modelbuild.oci.verify import Descriptor as Verified
    from modelbuild.runtime.memory import for_artifact

    store = env.store
    read_cache: dict[str, bytes] = {}

    def read(d: Any) -> bytes:  # config.json is read once however often the estimate asks
        if d.digest not in read_cache:
            read_cache[d.digest] = store.read_blob(d.digest, d.size)
        return read_cache[d.digest]

    parsed = [Verified.parse(layer.descriptor.to_oci(), f"layer {layer.descriptor.digest}") for layer in layers]
    if context:
        estimate = for_artifact(parsed, read, context, KV_CACHE_TYPE)
    else:
        estimate = for_artifact(parsed, read, None, KV_CACHE_TYPE) or for_artifact(parsed, read, DEFAULT_CONTEXT,
                                                                                    KV_CACHE_TYPE)
        if estimate is not None and estimate.context > DEFAULT_CONTEXT:
            estimate = for_artifact(parsed, read, DEFAULT_CONTEXT, KV_CACHE_TYPE)
    if estimate is None:
        return None
    return Resources(estimate.weights, estimate.kv_cache, estimate.total, estimate.context, estimate.kv_type)


def _accepting(env: ExecEnv, config: dict[str, Any], manifest: Descriptor, layers: list[Layer],
               fields: Mapping[str, str], target: str, context: int | None) -> tuple[EngineEntry, ...]:
    """Every registered engine whose ``accepts`` takes the built variant, as ``run`` will
    show it to them (nothing is read from the path: it is only named)."""
    from modelbuild.api import EngineModel

    paths = [layer.path for layer in layers]
    weights = tuple(layer.path for layer in layers if ".weight.v1." in layer.descriptor.media_type)
    descriptor = config.get("descriptor") if isinstance(config.get("descriptor"), dict) else {}
    name = descriptor.get("name") if isinstance(descriptor.get("name"), str) else "model"
    model = EngineModel(name=name, path=PurePath("."), files=tuple(paths), weights=weights,
                        format=fields["format"], quantization=fields["quantization"],
                        precision=fields["precision"], target=target, context_length=context,
                        digest=manifest.digest, config=config)
    out = []
    for engine in env.host.engines:
        why = engine.accepts(model)
        if why is not None and not isinstance(why, str):
            raise PluginError(f"engine {engine.name}: accepts() returned {type(why).__name__}, not a str or None")
        if not why:
            out.append(EngineEntry(engine.name, {}))
    return tuple(out[:MAX_ENGINES])


__all__ = ["AttachedManifest", "Referrer", "attach", "describe", "key_extras"]
