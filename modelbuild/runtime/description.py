"""The runtime description a build attaches to each variant: which engines can serve it, with
which parameters, at which context length, and the memory that takes.

Why a referrer and not the config. The ModelPack config schema is closed (``additionalProperties:
false``), and a variant's manifest digest is what users pin, record and sign: writing the
description into either would change the artifact, or make it invalid. So the description is
a separate OCI artifact whose ``subject`` is the variant's manifest (OCI 1.1 referrers). A
client that knows nothing of it pulls, verifies and runs the variant exactly as before; a
registry without the referrers API holds it under the fallback tag ``sha256-<hex>`` (an OCI
index of the subject's referrers), which such a client never asks for.

The referrer is an OCI image manifest, without timestamps (a rebuild writes the same bytes)::

    {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "artifactType": "application/vnd.modelbuild.runtime.v1+json",
     "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": "sha256:4413…", "size": 2},
     "layers": [{"mediaType": "application/vnd.modelbuild.runtime.v1+json", "digest": …, "size": …}],
     "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": …, "size": …}}

Its one layer is the description, canonical JSON (sorted keys, no whitespace; camelCase)::

    {"version": "1.0",
     "engines": [{"name": "llama.cpp", "params": {"n_gpu_layers": "99"}}],
     "contextLength": 4096,                  # what to serve; null: the engine's default
     "format": "gguf", "quantization": "q4_k_m", "precision": "",
     "target": "cpu",                        # the TARGET stage's target; "" without stages
     "accelerator": "",                      # "nvidia.com/gpu", "amd.com/gpu"; "" for a CPU
     "resources": {"weightsBytes": …, "kvCacheBytes": …, "totalBytes": …,
                   "contextLength": 4096, "kvCacheType": "f16"}}   # or null: not known

``engines`` are in preference order. ``resources`` is the estimate of
:mod:`modelbuild.runtime.memory` (docs/spec/runtime.md §2) at ``resources.contextLength``.
A reader ignores keys it does not know (a later minor version adds keys) and refuses a major
``version`` it does not know.

:func:`parse` treats the bytes as hostile (they come from a registry or a store anyone can
write to): bounded in size, parsed by the one verified JSON parse, every field checked for
its type and range. :func:`find_description` is how ``modelbuild run`` finds a variant's
description in the local store.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelbuild.digests import canonical_json, sha256_bytes

if TYPE_CHECKING:
    from modelbuild.store import Store

ARTIFACT_TYPE = "application/vnd.modelbuild.runtime.v1+json"
VERSION = "1.0"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
EMPTY_DESCRIPTOR = {"mediaType": EMPTY_MEDIA_TYPE, "digest": sha256_bytes(EMPTY_JSON), "size": len(EMPTY_JSON)}
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

# Bounds of a description, checked by the frontend (a located error) and by parse (hostile input)
MAX_BYTES = 64 << 10  # a description is a few hundred bytes; 64 KiB is a hostile one
MAX_ENGINES = 16
MAX_PARAMS = 64  # per engine
MAX_KEY = 128  # characters of a parameter name
MAX_VALUE = 1024  # characters of a parameter value
MAX_NAME = 128  # characters of an engine name, a format, a target…
MAX_CONTEXT = 2**31  # tokens: as runtime/memory.py bounds a dimension
MAX_BYTE_COUNT = (1 << 53) - 1  # what JSON states exactly
DEFAULT_CONTEXT = 8192  # the context served (and sized) when the build names none: the model's own, at most this
KV_CACHE_TYPE = "f16"  # the KV cache type the resources are sized for (llama.cpp's and vLLM's default)


class DescriptionError(ValueError):
    """A description that is not one: the message is one line naming where it came from."""


@dataclass(frozen=True, slots=True)
class EngineEntry:
    """An engine that can serve the variant, and the parameters to start it with."""

    name: str
    params: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}


@dataclass(frozen=True, slots=True)
class Resources:
    """Memory to serve one sequence of ``context_length`` tokens: weights plus KV cache, in bytes."""

    weights: int
    kv_cache: int
    total: int
    context_length: int
    kv_cache_type: str

    def as_dict(self) -> dict[str, Any]:
        return {"weightsBytes": self.weights, "kvCacheBytes": self.kv_cache, "totalBytes": self.total,
                "contextLength": self.context_length, "kvCacheType": self.kv_cache_type}


@dataclass(frozen=True, slots=True)
class RuntimeDescription:
    """What serving a variant takes; see the module docstring for its JSON form."""

    version: str = VERSION
    engines: tuple[EngineEntry, ...] = ()
    context_length: int | None = None
    format: str = ""
    quantization: str = ""
    precision: str = ""
    target: str = ""
    accelerator: str = ""
    resources: Resources | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "engines": [e.as_dict() for e in self.engines],
                "contextLength": self.context_length, "format": self.format, "quantization": self.quantization,
                "precision": self.precision, "target": self.target, "accelerator": self.accelerator,
                "resources": self.resources.as_dict() if self.resources is not None else None}

    def to_json(self) -> bytes:
        """Canonical JSON: the same description is always the same bytes, so the same blob."""
        return canonical_json(self.as_dict())


# -- reading a description: hostile bytes ------------------------------------------------------
def parse(data: bytes, where: str) -> RuntimeDescription:
    """The description in *data*, or a :class:`DescriptionError` naming *where*: more than
    :data:`MAX_BYTES`, not a JSON object, an unknown major version, a field of the wrong type
    or out of range. Keys it does not know are ignored."""
    from modelbuild.oci.verify import IntegrityError, parse_json_object

    if len(data) > MAX_BYTES:
        raise DescriptionError(f"{where}: {len(data)} bytes, more than the {MAX_BYTES} a runtime description may have")
    try:
        doc = parse_json_object(data, where)
    except IntegrityError as exc:
        raise DescriptionError(exc.message) from None
    version = _text(doc, "version", where)
    if version.split(".")[0] != VERSION.split(".")[0]:
        raise DescriptionError(f"{where}: version {_shown(version)} is not one this modelbuild reads "
                               f"(it reads {VERSION.split('.')[0]}.x)")
    return RuntimeDescription(
        version=version, engines=_engines(doc.get("engines", []), where),
        context_length=_count(doc.get("contextLength"), f"{where}: contextLength", 1, MAX_CONTEXT, optional=True),
        format=_text(doc, "format", where, ""), quantization=_text(doc, "quantization", where, ""),
        precision=_text(doc, "precision", where, ""), target=_text(doc, "target", where, ""),
        accelerator=_text(doc, "accelerator", where, ""), resources=_resources(doc.get("resources"), where))


def _shown(text: object) -> str:
    """An untrusted value, quoted, escaped and cut short, as a message shows it."""
    from modelbuild.oci.verify import shown

    return repr(shown(text, 60))


def _text(doc: Mapping[str, Any], key: str, where: str, default: str | None = None, limit: int = MAX_NAME) -> str:
    value = doc.get(key, default)
    if not isinstance(value, str):
        raise DescriptionError(f"{where}: {key} is {'missing' if value is None else 'not a string'}")
    if len(value) > limit:
        raise DescriptionError(f"{where}: {key} is longer than {limit} characters")
    return value


def _count(value: object, what: str, low: int, high: int, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise DescriptionError(f"{what} is not a whole number from {low} to {high}")
    return value


def _engines(value: object, where: str) -> tuple[EngineEntry, ...]:
    if not isinstance(value, list):
        raise DescriptionError(f"{where}: engines is not a list")
    if len(value) > MAX_ENGINES:
        raise DescriptionError(f"{where}: more than {MAX_ENGINES} engines")
    out = []
    for i, item in enumerate(value):
        at = f"{where}: engines[{i}]"
        if not isinstance(item, dict):
            raise DescriptionError(f"{at} is not an object")
        params = item.get("params", {})
        if not isinstance(params, dict) or len(params) > MAX_PARAMS:
            raise DescriptionError(f"{at}: params is not an object of at most {MAX_PARAMS} entries")
        for key, val in params.items():
            if not isinstance(val, str) or len(key) > MAX_KEY or len(val) > MAX_VALUE:
                raise DescriptionError(f"{at}: parameter {_shown(key)} is not a string of at most "
                                       f"{MAX_VALUE} characters")
        out.append(EngineEntry(_text(item, "name", at), dict(params)))
    return tuple(out)


def _resources(value: object, where: str) -> Resources | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise DescriptionError(f"{where}: resources is not an object")
    at = f"{where}: resources"
    weights, kv, total = (_count(value.get(k), f"{at}.{k}", 0, MAX_BYTE_COUNT)
                          for k in ("weightsBytes", "kvCacheBytes", "totalBytes"))
    return Resources(weights, kv, total, _count(value.get("contextLength"), f"{at}.contextLength", 1, MAX_CONTEXT),
                     _text(value, "kvCacheType", at))


# -- the referrer that carries it ---------------------------------------------------------------
def referrer_manifest(subject: Mapping[str, Any], description: bytes) -> bytes:
    """The referrer manifest (canonical JSON) carrying *description* (its bytes: the one
    layer) for *subject* (the variant manifest's descriptor: media type, digest, size)."""
    layer = {"mediaType": ARTIFACT_TYPE, "digest": sha256_bytes(description), "size": len(description)}
    return canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
        "config": dict(EMPTY_DESCRIPTOR), "layers": [layer],
        "subject": {"mediaType": subject["mediaType"], "digest": subject["digest"], "size": subject["size"]},
    })


def find_description(store: Store, manifest_digest: str, *,
                     warn: Callable[[str], None] | None = None) -> RuntimeDescription | None:
    """The runtime description attached to the variant *manifest_digest* in *store* (the most
    recently recorded, when a rebuild or a pull recorded several), or None when it has none.

    Everything is read verified (the record bounded, the referrer manifest and the
    description against their digests) and a damaged one is never fatal: it gives None and a
    warning (*warn*, else a ``modelbuild: warning:`` line on stderr), and the variant runs as
    any artifact without a description does."""
    from modelbuild.errors import ModelbuildError
    from modelbuild.oci.verify import Descriptor, ManifestParts

    def warned(message: str) -> None:
        (warn or (lambda m: print(f"modelbuild: warning: {m}", file=sys.stderr)))(message)

    try:
        listed = [d for d in store.list_referrers(manifest_digest) if d.get("artifactType") == ARTIFACT_TYPE]
        if not listed:
            return None
        referrer = Descriptor.parse(listed[-1], f"the runtime description of {manifest_digest}")
        where = f"runtime description {referrer.digest} of {manifest_digest}"
        doc = store.read_json(referrer.digest, referrer.size)
        parts = ManifestParts.parse(doc, where)
        subject = doc.get("subject") or {}
        if subject.get("digest") != manifest_digest:
            raise DescriptionError(f"{where}: its subject is {_shown(subject.get('digest'))}, not the variant")
        layers = [layer for layer in parts.layers if layer.media_type == ARTIFACT_TYPE]
        if len(layers) != 1:
            raise DescriptionError(f"{where}: has {len(layers)} description layers, not one")
        if layers[0].size > MAX_BYTES:
            raise DescriptionError(f"{where}: its description declares {layers[0].size} bytes, more than {MAX_BYTES}")
        return parse(store.read_blob(layers[0].digest, layers[0].size), where)
    except DescriptionError as exc:
        warned(f"{exc}; ignoring it")
    except ModelbuildError as exc:
        warned(f"the runtime description of {manifest_digest} cannot be read: {exc.render()}; ignoring it")
    except OSError as exc:
        warned(f"the runtime description of {manifest_digest} cannot be read: {exc.strerror or exc}; ignoring it")
    return None


__all__ = ["ARTIFACT_TYPE", "DEFAULT_CONTEXT", "DescriptionError", "EngineEntry", "KV_CACHE_TYPE", "Resources",
           "RuntimeDescription", "VERSION", "find_description", "parse", "referrer_manifest"]
