"""``modelbuild inspect``: what an artifact holds, from the store or an OCI layout directory."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from modelbuild.errors import NotFoundError


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("ref", metavar="REF|DIR[:TAG]",
                   help="a tag or digest in the local store, or an OCI layout directory")
    p.add_argument("--json", action="store_true", help="print manifest and config as JSON")


def _open(ref: str, home_override: str | None) -> tuple[Any, dict[str, Any], str]:
    from modelbuild.home import home_dir
    from modelbuild.store import Store

    path, _, tag = ref.partition(":") if not os.path.isdir(ref) else (ref, "", "")
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "oci-layout")):
        store = Store(Path(path))
        entries = store.manifests()
        if tag:
            return store, store.resolve(tag), f"{path}:{tag}"
        if len(entries) != 1:
            names = ", ".join(m.get("annotations", {}).get("org.opencontainers.image.ref.name", m["digest"]) for m in entries)
            raise NotFoundError(f"{path} holds {len(entries)} manifests; name one as {path}:TAG", hint=names or None)
        return store, entries[0], path
    store = Store(home_dir(home_override) / "store")
    return store, store.resolve(ref), ref


def describe(store: Any, descriptor: dict[str, Any]) -> dict[str, Any]:
    manifest = store.read_json(descriptor["digest"])
    doc: dict[str, Any] = {"digest": descriptor["digest"], "manifest": manifest}
    if "config" in manifest:
        doc["config"] = store.read_json(manifest["config"]["digest"])
    return doc


def run(args: argparse.Namespace) -> int:
    from modelbuild.commands._common import human_size, print_json, table
    from modelbuild.oci import mediatypes as mt

    store, descriptor, shown = _open(args.ref, args.home)
    doc = describe(store, descriptor)
    doc = {"reference": shown, **doc}
    if args.json:
        print_json(doc)
        return 0
    manifest, config = doc["manifest"], doc.get("config", {})
    lines = [
        f"Reference:     {shown}",
        f"Digest:        {doc['digest']}",
        f"Artifact type: {manifest.get('artifactType', manifest.get('mediaType'))}",
    ]
    for section in ("descriptor", "config"):
        for key, value in config.get(section, {}).items():
            shown_value = json.dumps(value) if isinstance(value, (list, dict, bool)) else value
            lines.append(f"{(key + ':'):<15}{shown_value}")
    for key, value in manifest.get("annotations", {}).items():
        lines.append(f"Label:         {key}={value}")
    rows = []
    total = 0
    for layer in manifest.get("layers", []):
        ann = layer.get("annotations", {})
        path = ann.get(mt.ANNOTATION_FILEPATH) or ann.get(mt.LEGACY_ANNOTATION_FILEPATH) or ann.get(mt.ANNOTATION_TITLE, "?")
        kind = layer["mediaType"].rsplit("/", 1)[-1].replace("vnd.cncf.model.", "").replace("vnd.cnai.model.", "")
        rows.append([path, kind, human_size(layer["size"]), layer["digest"][7:19]])
        total += layer["size"]
    lines.append(f"Layers:        {len(rows)} ({human_size(total)})")
    print("\n".join(lines))
    if rows:
        print()
        print(table(rows, ["PATH", "TYPE", "SIZE", "DIGEST"]))
    return 0
