"""Attestations of a build (``build --attest provenance,sbom``): SLSA provenance
(:mod:`.provenance`) and a CycloneDX ML-BOM (:mod:`.sbom`) for every variant, and provenance
for the index of a multi-platform build, each an in-toto Statement v1 attached to its
manifest as an OCI referrer.

A referrer is an image manifest with ``artifactType: application/vnd.in-toto+json``, the
empty config, one layer (the statement, ``application/vnd.in-toto+json``; a DSSE envelope,
``application/vnd.dsse.envelope.v1+json``, when it is signed) annotated
``in-toto.io/predicate-type``, and ``subject`` the variant's manifest. The store records it
(:meth:`modelbuild.store.Store.record_referrers`), ``push`` carries it (the referrers API
where the registry has one, else the ``sha256-<hex>`` tag), ``inspect --referrers`` lists
it. A rebuild's statement of a kind replaces the earlier one of that kind for the same
manifest; an identical one (``SOURCE_DATE_EPOCH``) is recorded once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelbuild.digests import canonical_json
from modelbuild.errors import UsageError

if TYPE_CHECKING:
    from . import provenance

# :mod:`.provenance` and :mod:`.sbom` are imported by a build that attests, not by every
# build that checks its --attest values (a no-op rebuild must not pay for them)
STATEMENT_MEDIA_TYPE = "application/vnd.in-toto+json"
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
ANN_PREDICATE = "in-toto.io/predicate-type"
# the predicate type of each kind: provenance.PREDICATE_TYPE, sbom.PREDICATE_TYPE (a test keeps them equal)
KINDS = {"provenance": "https://slsa.dev/provenance/v1", "sbom": "https://cyclonedx.org/bom"}

# sign(statement bytes) -> DSSE envelope bytes, when the build signs its attestations
Sign = Callable[[bytes], bytes]


def parse_kinds(values: Iterable[str]) -> tuple[str, ...]:
    """``--attest provenance,sbom`` (repeatable) → the kinds, each once, in KINDS' order."""
    asked: list[str] = []
    for value in values:
        for name in filter(None, (v.strip() for v in value.split(","))):
            if name not in KINDS:
                import difflib

                close = difflib.get_close_matches(name, list(KINDS), n=1)
                raise UsageError(f"--attest: unknown attestation {name!r}",
                                 hint=f"did you mean {close[0]}?" if close else f"one of {', '.join(KINDS)}")
            asked.append(name)
    return tuple(k for k in KINDS if k in asked)


@dataclass(frozen=True)
class Attached:
    """One attestation recorded for a manifest."""

    kind: str
    subject: str
    descriptor: Mapping[str, Any]  # the referrer manifest's


def attach(*, store: Any, recorder: provenance.Recorder, kinds: Sequence[str], sign: Sign | None = None
           ) -> list[Attached]:
    """Write and record the attestations *kinds* for every manifest of the build."""
    graph, results = recorder.graph, recorder.results
    out: list[Attached] = []
    subjects = [(v.manifest, v.stage) for v in graph.variants]
    if graph.top not in {v.manifest for v in graph.variants}:
        subjects.append((graph.top, "index"))
    for sid, stage in subjects:
        desc = results[sid].descriptor
        name = _name(recorder.tags, stage)
        for kind in kinds:
            if kind == "sbom" and stage == "index":
                continue  # the index holds no files: each variant has its ML-BOM
            statement = (recorder.statement(name, desc.digest, sid) if kind == "provenance"
                         else _sbom_statement(store, recorder, sid, name, desc.digest))
            out.append(_record(store, kind, desc, statement, sign))
    return out


def _name(tags: Sequence[str], stage: str | None) -> str:
    """The subject's name: the first tag (``TAG-STAGE`` for a stage), else ``_``."""
    if not tags:
        return "_"
    return tags[0] if stage in (None, "index") else f"{tags[0]}-{stage}"


def _sbom_statement(store: Any, recorder: provenance.Recorder, sid: str, name: str, digest: str) -> dict[str, Any]:
    from . import provenance, sbom

    graph, results = recorder.graph, recorder.results
    steps = provenance.closure(graph, sid)
    layer_inputs = [results[d] for s in steps if graph.step(s).op in ("layer", "layerset") for d in graph.deps[s]]
    manifest = results[sid]
    config = store.read_json(manifest.config.descriptor.digest)
    tools = [(d["name"], d["annotations"]["version"]) for d in recorder.distributions(steps)]
    document = sbom.bom(config=config, manifest_digest=digest, files=sbom.file_hashes(layer_inputs), tools=tools,
                        created=recorder.created, name=name)
    return {"_type": provenance.STATEMENT_TYPE, "subject": [{"name": name, "digest": provenance.sha(digest)}],
            "predicateType": sbom.PREDICATE_TYPE, "predicate": document}


def _record(store: Any, kind: str, subject: Any, statement: Mapping[str, Any], sign: Sign | None) -> Attached:
    from modelbuild.oci import mediatypes as mt
    from modelbuild.runtime.description import EMPTY_DESCRIPTOR, EMPTY_JSON

    predicate = KINDS[kind]
    payload = canonical_json(statement)
    media_type = STATEMENT_MEDIA_TYPE
    if sign is not None:
        payload, media_type = sign(payload), DSSE_MEDIA_TYPE
    layer_digest = store.put_bytes(payload)
    store.put_bytes(EMPTY_JSON)
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": media_type,
        "config": dict(EMPTY_DESCRIPTOR),
        "layers": [{"mediaType": media_type, "digest": layer_digest, "size": len(payload),
                    "annotations": {ANN_PREDICATE: predicate}}],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
        "annotations": {ANN_PREDICATE: predicate},
    })
    digest = store.put_bytes(manifest)
    descriptor = {"mediaType": mt.OCI_MANIFEST, "artifactType": media_type, "digest": digest, "size": len(manifest),
                  "annotations": {ANN_PREDICATE: predicate}}
    store.record_referrers(subject.digest, [descriptor])
    keep = [e["digest"] for e in store.list_referrers(subject.digest)
            if e["digest"] == digest or (e.get("annotations") or {}).get(ANN_PREDICATE) != predicate]
    store.forget_referrers(subject.digest, keep)  # a rebuild's statement replaces the earlier one
    return Attached(kind, subject.digest, descriptor)


def __getattr__(name: str) -> Any:
    """``modelbuild.attest.provenance`` and ``.sbom``, imported on first use."""
    if name in ("provenance", "sbom", "rebuild"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
