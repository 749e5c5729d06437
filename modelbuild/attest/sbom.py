"""A CycloneDX 1.6 ML-BOM for a built variant, made with cyclonedx-python-lib.

* ``metadata.component``: the model, a ``machine-learning-model`` component named and
  versioned from the ModelPack config's descriptor, with its licenses, and a ``modelCard``
  (CycloneDX 1.6 §modelCard) whose ``modelParameters`` give the architecture family and
  architecture, and the datasets packaged with it; parameter count, precision, quantization
  and format, which the model card has no field for, are ``modelbuild:*`` properties;
* ``components``: every file of the artifact, as a ``file`` component named by its path,
  with its SHA-256 (a packaged directory's files each on their own, named
  ``DIR/FILE``); a component's ``bom-ref`` is its path;
* ``metadata.tools``: modelbuild and each plugin distribution whose steps made the variant.

cyclonedx-python-lib has no model-card type, so the card is added to the JSON it writes.
The tests check every document with the library's strict validator; a build does not (with
the ``format`` extras jsonschema takes over a second to import, a third of a cached build). The serial number
is derived from the manifest digest and the timestamp is the build's: the same build gives
the same bytes.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from modelbuild.results import FileDigest, FileSet

PREDICATE_TYPE = "https://cyclonedx.org/bom"
MEDIA_TYPE = "application/vnd.cyclonedx+json"


def file_hashes(layer_inputs: Sequence[Any]) -> list[tuple[str, str, str]]:
    """(path, sha256 hex, kind) of every file the layers hold, from the layer steps' inputs:
    a context file or directory (:class:`FileDigest`), or a transformed model set
    (:class:`FileSet`)."""
    out: list[tuple[str, str, str]] = []
    for item in layer_inputs:
        if isinstance(item, FileDigest):
            if item.is_dir:
                out += [(f"{item.path}/{m.name}", m.digest.split(":", 1)[1], item.kind)
                        for m in item.members if m.kind == "file"]
            else:
                out.append((item.path, item.digest.split(":", 1)[1], item.kind))
        elif isinstance(item, FileSet):
            out += [(f.path, f.digest.split(":", 1)[1], f.kind) for f in item.files]
    return sorted(set(out))


def bom(*, config: Mapping[str, Any], manifest_digest: str, files: Sequence[tuple[str, str, str]],
        tools: Sequence[tuple[str, str]], created: str | None, name: str) -> dict[str, Any]:
    """The ML-BOM as a JSON object (validated)."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.license import DisjunctiveLicense, LicenseExpression
    from cyclonedx.output.json import JsonV1Dot6

    descriptor = config.get("descriptor") or {}
    facts = config.get("config") or {}
    licenses = []
    for text in descriptor.get("licenses") or []:
        licenses.append(_license(text, DisjunctiveLicense, LicenseExpression))
    properties = [Property(name=f"modelbuild:{key}", value=str(facts[key]))
                  for key in ("paramSize", "precision", "quantization", "format") if facts.get(key)]
    model = Component(name=descriptor.get("name") or name, version=descriptor.get("version"),
                      type=ComponentType.MACHINE_LEARNING_MODEL, bom_ref="model", licenses=licenses,
                      description=descriptor.get("description"), properties=properties,
                      hashes=[HashType(alg=HashAlgorithm.SHA_256, content=manifest_digest.split(":", 1)[1])])
    document = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"modelbuild:{manifest_digest}"))
    document.metadata.component = model
    if created:
        from datetime import datetime

        document.metadata.timestamp = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ")
    parts = [Component(name=path, type=ComponentType.FILE, bom_ref=f"file:{path}",
                       hashes=[HashType(alg=HashAlgorithm.SHA_256, content=hexd)]) for path, hexd, _ in files]
    for part in parts:
        document.components.add(part)
    document.register_dependency(model, parts)  # the model is made of its files
    for tool, version in tools:
        document.metadata.tools.components.add(Component(name=tool, version=version, type=ComponentType.APPLICATION,
                                                         bom_ref=f"tool:{tool}"))
    doc = json.loads(JsonV1Dot6(document).output_as_string())
    doc["metadata"]["component"]["modelCard"] = _model_card(descriptor, facts, files)
    if not created:
        doc["metadata"]["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return doc


def _license(text: str, single: Any, expression: Any) -> Any:
    """An SPDX id as a license id; an expression (``MIT OR Apache-2.0``) as an expression;
    anything else by name."""
    if " " in text.strip():
        return expression(text)
    try:
        return single(id=text)
    except Exception:  # not an SPDX id cyclonedx-python-lib knows
        return single(name=text)


def _model_card(descriptor: Mapping[str, Any], facts: Mapping[str, Any],
                files: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    card: dict[str, Any] = {"bom-ref": "model-card"}
    parameters: dict[str, Any] = {}
    if descriptor.get("family"):
        parameters["architectureFamily"] = descriptor["family"]
    if facts.get("architecture"):
        parameters["modelArchitecture"] = facts["architecture"]
    datasets = [{"ref": f"file:{path}"} for path, _, kind in files if kind == "dataset"]
    if datasets:
        parameters["datasets"] = datasets
    if parameters:
        card["modelParameters"] = parameters
    return card
