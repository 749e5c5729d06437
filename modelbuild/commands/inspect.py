"""``modelbuild inspect``: what an artifact holds, from the store or an OCI layout directory.

An OCI layout is anyone's directory: its ``oci-layout``, ``index.json``, manifests and
config are read as untrusted input (verified against their digests, bounded in size, every
descriptor validated), and every name shown from them is escaped
(:func:`modelbuild.oci.verify.shown`). Anything malformed is one error line naming the file
or digest, exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from modelbuild.errors import NotFoundError

REF_ANNOTATION = "org.opencontainers.image.ref.name"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("ref", metavar="REF|DIR[:TAG]",
                   help="a tag or digest in the local store, or an OCI layout directory")
    p.add_argument("--json", action="store_true", help="print manifest and config as JSON")


def _open(ref: str, home_override: str | None) -> tuple[Any, dict[str, Any], str]:
    """The store (or layout) holding *ref*, its descriptor, and how to name it."""
    from modelbuild.home import home_dir
    from modelbuild.oci.verify import shown
    from modelbuild.store import Store

    path, _, tag = ref.partition(":") if not os.path.isdir(ref) else (ref, "", "")
    if os.path.isdir(path) and os.path.lexists(os.path.join(path, "oci-layout")):
        store = Store.open_layout(Path(path))
        if tag:
            return store, store.resolve(tag), f"{path}:{tag}"
        entries = store.manifests()
        if len(entries) != 1:
            names = ", ".join(shown(m.get("annotations", {}).get(REF_ANNOTATION, m["digest"])) for m in entries)
            raise NotFoundError(f"{shown(path)} holds {len(entries)} manifests; name one as {shown(path)}:TAG",
                                hint=names or None)
        return store, entries[0], path
    store = Store(home_dir(home_override) / "store")
    try:
        return store, store.resolve(ref), ref
    except NotFoundError:
        if os.path.isdir(ref):
            raise NotFoundError(f"{shown(ref)}: not an OCI image layout (it has no oci-layout file), "
                                "nor a model in the store") from None
        raise


def describe(store: Any, descriptor: dict[str, Any]) -> dict[str, Any]:
    """Manifest and config, read verified; the config only when the manifest names one."""
    from modelbuild.oci.verify import shown
    from modelbuild.oci.verify import ManifestParts

    manifest = store.read_json(descriptor["digest"], descriptor.get("size"))
    parts = ManifestParts.parse(manifest, f"manifest {descriptor['digest']} in {shown(store.root)}")
    doc: dict[str, Any] = {"digest": descriptor["digest"], "manifest": manifest, "parts": parts}
    if parts.config is not None:
        doc["config"] = store.read_json(parts.config.digest, parts.config.size)
    return doc


def _text(value: Any) -> str:
    """A config value as one escaped line."""
    from modelbuild.oci.verify import shown

    return shown(json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else value)


def _lines(label: str, digest: str, manifest: dict[str, Any], config: dict[str, Any]) -> list[str]:
    from modelbuild.errors import BuildError
    from modelbuild.oci.verify import shown

    kind = manifest.get("artifactType", manifest.get("mediaType"))
    lines = [f"Reference:     {shown(label)}", f"Digest:        {digest}", f"Artifact type: {_text(kind)}"]
    for section in ("descriptor", "config"):
        fields = config.get(section, {})
        if isinstance(fields, dict):
            lines.extend(f"{shown(key + ':', 60):<15}{_text(value)}" for key, value in fields.items())
    annotations = manifest.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise BuildError(f"manifest {digest}: 'annotations' is not an object")
    lines.extend(f"Label:         {shown(key, 60)}={_text(value)}" for key, value in annotations.items())
    return lines


def _layer_row(layer: Any) -> list[str]:
    from modelbuild.commands._common import human_size
    from modelbuild.oci import mediatypes as mt
    from modelbuild.oci.verify import shown

    ann = layer.annotations
    path = (ann.get(mt.ANNOTATION_FILEPATH) or ann.get(mt.LEGACY_ANNOTATION_FILEPATH)
            or ann.get(mt.ANNOTATION_TITLE, "?"))
    kind = layer.media_type.rsplit("/", 1)[-1].replace("vnd.cncf.model.", "").replace("vnd.cnai.model.", "")
    return [shown(path), shown(kind, 60), human_size(layer.size), layer.digest[7:19]]


def run(args: argparse.Namespace) -> int:
    from modelbuild.commands._common import human_size, print_json, table

    store, descriptor, label = _open(args.ref, args.home)
    doc = describe(store, descriptor)
    parts = doc.pop("parts")
    doc = {"reference": label, **doc}
    if args.json:
        print_json(doc)
        return 0
    lines = _lines(label, doc["digest"], doc["manifest"], doc.get("config", {}))
    rows = [_layer_row(layer) for layer in parts.layers]
    lines.append(f"Layers:        {len(rows)} ({human_size(sum(layer.size for layer in parts.layers))})")
    print("\n".join(lines))
    if rows:
        print()
        print(table(rows, ["PATH", "TYPE", "SIZE", "DIGEST"]))
    return 0
