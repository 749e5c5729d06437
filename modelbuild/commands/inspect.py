"""``modelbuild inspect``: what an artifact holds, from the store or an OCI layout directory.

An OCI layout is anyone's directory: its ``oci-layout``, ``index.json``, manifests and
config are read as untrusted input (verified against their digests, bounded in size, every
descriptor validated), and every name shown from them is escaped
(:func:`modelbuild.oci.verify.shown`). Anything malformed is one error line naming the file
or digest, exit 1.

The artifact is read with the one manifest-tree walker (:func:`modelbuild.oci.walk.read_tree`),
one level deep. A manifest is shown with its config and layers. An OCI image index (a
multi-platform build, docs/spec/multi-platform.md) is shown as its variants: one row per
entry, with the stage, platform and accelerator its entry's annotations give and the format,
quantization and size its manifest and config give. ``--platform auto|STAGE|TARGET`` picks
one variant as ``pull`` would and shows it as a manifest.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelbuild.errors import NotFoundError

if TYPE_CHECKING:
    from modelbuild.oci.walk import Node, Tree
    from modelbuild.store import Store

REF_ANNOTATION = "org.opencontainers.image.ref.name"
VARIANT_COLUMNS = ["STAGE", "PLATFORM", "REQUIRES", "FORMAT", "QUANTIZATION", "PARAMS", "LAYERS", "SIZE", "DIGEST"]


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("ref", metavar="REF|DIR[:TAG]",
                   help="a tag or digest in the local store, or an OCI layout directory")
    p.add_argument("--json", action="store_true", help="print manifest and config (an index: its variants) as JSON")
    p.add_argument("--remote", action="store_true",
                   help="read REF (registry.example.com/repo:tag) in the registry: manifests and configs only, "
                        "no layer downloaded, nothing stored")
    p.add_argument("--plain-http", action="store_true", help="with --remote: talk to the registry over HTTP")
    p.add_argument("--insecure", action="store_true",
                   help="with --remote: accept a registry certificate that does not verify")
    p.add_argument("--referrers", action="store_true",
                   help="list what is attached to the artifact and each of its manifests (OCI referrers: "
                        "attestations, signatures, runtime descriptions) instead of the artifact itself")
    p.add_argument("--platform", default=None, metavar="auto|STAGE|TARGET",
                   help="of a multi-platform artifact, show the one variant `pull` would pick (auto: for this host)")
    p.add_argument("--context", type=int, default=None, metavar="N",
                   help="context length for the memory estimate (default: the runtime description's, else the "
                        "model's own, from config.json)")
    p.add_argument("--kv-cache-type", default="f16", metavar="TYPE",
                   help="the KV cache's element type for the memory estimate: f16 (default), bf16, f32, q8_0, fp8")


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


def read(store: Store, descriptor: dict[str, Any]) -> Tree:
    """The artifact's tree, one level deep (an index and its manifests), every manifest and
    index read verified through the store and validated by the one walker."""
    from modelbuild.oci.verify import Descriptor, shown
    from modelbuild.oci.walk import read_tree

    return read_tree(Descriptor.parse(descriptor, "the artifact"), lambda d: store.read_blob(d.digest, d.size),
                     max_depth=1, named=lambda d: f"blob {d.digest} in {shown(store.root)}")


def describe(store: Store, node: Node) -> dict[str, Any]:
    """A manifest's document and its config, read verified; the config only when the
    manifest names one."""
    doc: dict[str, Any] = {"digest": node.digest, "manifest": node.doc}
    if node.parts.config is not None:
        doc["config"] = store.read_json(node.parts.config.digest, node.parts.config.size)
    return doc


def _text(value: Any) -> str:
    """A config value as one escaped line."""
    from modelbuild.oci.verify import shown

    return shown(json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else value)


def _annotation_lines(digest: str, doc: dict[str, Any]) -> list[str]:
    from modelbuild.errors import BuildError
    from modelbuild.oci.verify import shown

    annotations = doc.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise BuildError(f"manifest {digest}: 'annotations' is not an object")
    return [f"Label:         {shown(key, 60)}={_text(value)}" for key, value in annotations.items()]


def _lines(label: str, digest: str, manifest: dict[str, Any], config: dict[str, Any]) -> list[str]:
    from modelbuild.oci.verify import shown

    kind = manifest.get("artifactType", manifest.get("mediaType"))
    lines = [f"Reference:     {shown(label)}", f"Digest:        {digest}", f"Artifact type: {_text(kind)}"]
    for section in ("descriptor", "config"):
        fields = config.get(section, {})
        if isinstance(fields, dict):
            lines.extend(f"{shown(key + ':', 60):<15}{_text(value)}" for key, value in fields.items())
    return lines + _annotation_lines(digest, manifest)


def _layer_row(layer: Any) -> list[str]:
    from modelbuild.commands._common import human_size
    from modelbuild.oci import mediatypes as mt
    from modelbuild.oci.verify import shown

    ann = layer.annotations
    path = (ann.get(mt.ANNOTATION_FILEPATH) or ann.get(mt.LEGACY_ANNOTATION_FILEPATH)
            or ann.get(mt.ANNOTATION_TITLE, "?"))
    kind = layer.media_type.rsplit("/", 1)[-1].replace("vnd.cncf.model.", "").replace("vnd.cnai.model.", "")
    return [shown(path), shown(kind, 60), human_size(layer.size), layer.digest[7:19]]


def _memory(store: Store, node: Node, context: int | None, kv_type: str) -> Any:
    """The memory estimate of a manifest (docs/spec/runtime.md §2), or None."""
    from modelbuild.errors import UsageError
    from modelbuild.runtime.memory import KV_TYPES, for_artifact

    if context is not None and not 1 <= context <= 2**31:
        raise UsageError(f"--context {context}: a context length is at least 1 and at most 2**31")
    if kv_type.lower() not in KV_TYPES:
        raise UsageError(f"--kv-cache-type {kv_type}: unknown", hint=f"one of {', '.join(sorted(KV_TYPES))}")
    if node.is_index or getattr(store, "remote", False):  # the estimate reads config.json: a layer
        return None
    return for_artifact(list(node.parts.layers), lambda d: store.read_blob(d.digest, d.size), context, kv_type)


def _runtime(store: Store, node: Node) -> dict[str, Any] | None:
    """The runtime description the build attached to a manifest (docs/spec/runtime.md §4),
    as its JSON document, or None; a damaged one is a warning, never an error."""
    import sys

    from modelbuild.runtime.description import find_description

    if node.is_index or getattr(store, "remote", False):
        return None
    found = find_description(store, node.digest, warn=lambda line: print(f"warning: {line}", file=sys.stderr))
    return found.as_dict() if found is not None else None


def _print_manifest(label: str, doc: dict[str, Any], node: Node) -> None:
    from modelbuild.commands._common import human_size, table

    lines = _lines(label, doc["digest"], doc["manifest"], doc.get("config", {}))
    memory = doc.get("memory")
    if memory:
        lines.append(f"Memory:        {human_size(memory['total'])} to serve ({human_size(memory['weights'])} weights + "
                     f"{human_size(memory['kvCache'])} KV cache at {memory['contextLength']} tokens, "
                     f"{memory['kvCacheType']})")
    runtime = doc.get("runtime")
    if runtime:
        engines = ", ".join(e["name"] + "".join(f" {k}={v}" for k, v in sorted(e["params"].items()))
                            for e in runtime["engines"]) or "none installed at build time"
        context = f", context {runtime['contextLength']}" if runtime.get("contextLength") else ""
        lines.append(f"Runtime:       {engines}{context} (`modelbuild run` serves it)")
    rows = [_layer_row(layer) for layer in node.parts.layers]
    lines.append(f"Layers:        {len(rows)} ({human_size(sum(layer.size for layer in node.parts.layers))})")
    print("\n".join(lines))
    if rows:
        print()
        print(table(rows, ["PATH", "TYPE", "SIZE", "DIGEST"]))


# -- an index, as variants ----------------------------------------------------------------
def _tags(store: Store) -> dict[str, list[str]]:
    """Digest → the tags naming it, sorted."""
    out: dict[str, list[str]] = {}
    for ref, desc in sorted(store.tags().items()):
        out.setdefault(desc["digest"], []).append(ref)
    return out


def variants(store: Store, tree: Tree, tags: dict[str, list[str]], context: int | None = None,
             kv_type: str = "f16") -> list[dict[str, Any]]:
    """One document per entry of the index, in its order: what the entry's platform and
    annotations say (docs/spec/multi-platform.md §3), what its manifest and config say, and
    the memory it needs to serve (docs/spec/runtime.md §2; None when it cannot be told).
    Values are as found (untrusted): the text output escapes them."""
    from modelbuild import targets as t

    configs: dict[str, dict[str, Any]] = {}
    out = []
    for entry, node in tree.entries():
        ann = dict(entry.annotations)
        platform = entry.raw.get("platform") or {}
        doc: dict[str, Any] = {
            "stage": ann.get(t.ANN_STAGE), "target": ann.get(t.ANN_TARGET), "platform": platform,
            "accelerator": ann.get(t.ANN_ACCELERATOR), "requires": ann.get(t.ANN_REQUIRES),
            "format": None, "quantization": None, "precision": None, "paramSize": None,
            "layerCount": 0, "size": entry.size, "digest": entry.digest,
            "mediaType": node.media_type if node is not None else entry.media_type,
            "config": None, "tags": tags.get(entry.digest, []), "annotations": ann, "memory": None,
        }
        fields: dict[str, Any] = {}
        if node is not None:
            parts = node.parts
            doc["layerCount"] = len(parts.layers)
            doc["size"] = entry.size + sum(b.size for b in parts.blobs())
            memory = _memory(store, node, context, kv_type)
            doc["memory"] = memory.as_dict() if memory is not None else None
            if parts.config is not None:
                doc["config"] = dict(parts.config.raw)
                if parts.config.digest not in configs:
                    configs[parts.config.digest] = store.read_json(parts.config.digest, parts.config.size)
                section = configs[parts.config.digest].get("config")
                fields = section if isinstance(section, dict) else {}
        doc["format"] = fields.get("format") or ann.get(t.ANN_FORMAT)
        doc["quantization"] = fields.get("quantization") or ann.get(t.ANN_QUANTIZATION)
        doc["precision"] = fields.get("precision")
        doc["paramSize"] = fields.get("paramSize")
        out.append(doc)
    return out


def _platform_text(variant: dict[str, Any]) -> str:
    """``os/architecture[/variant]``, then the accelerator's resource name (``nvidia.com/gpu``)."""
    from modelbuild.oci.verify import shown

    plat = variant["platform"]
    parts = [plat.get(key) for key in ("os", "architecture", "variant")]
    text = "/".join(shown(str(p), 40) for p in parts if p not in (None, "")) or "-"
    return f"{text} {shown(variant['accelerator'], 60)}" if variant["accelerator"] else text


def _variant_row(variant: dict[str, Any]) -> list[str]:
    from modelbuild.commands._common import human_size

    def cell(value: Any) -> str:
        return "-" if value in (None, "") else _text(value)

    return [cell(variant["stage"] or variant["target"]), _platform_text(variant), cell(variant["requires"]),
            cell(variant["format"]), cell(variant["quantization"]), cell(variant["paramSize"]),
            str(variant["layerCount"]), human_size(variant["size"]), variant["digest"][7:19]]


def _index_doc(label: str, tree: Tree, store: Store, context: int | None = None,
               kv_type: str = "f16") -> dict[str, Any]:
    tags = _tags(store)
    doc = tree.root.doc
    return {
        "reference": label, "digest": tree.root.digest, "mediaType": tree.root.media_type,
        "artifactType": doc.get("artifactType"), "tags": tags.get(tree.root.digest, []),
        "size": tree.size(), "annotations": doc.get("annotations") or {},
        "variants": variants(store, tree, tags, context, kv_type), "manifest": doc,
    }


def _print_index(doc: dict[str, Any], manifest: dict[str, Any]) -> None:
    from modelbuild.commands._common import human_size, table
    from modelbuild.oci.verify import shown

    lines = [f"Reference:     {shown(doc['reference'])}", f"Digest:        {doc['digest']}",
             f"Media type:    {_text(doc['mediaType'])}"]
    if doc["artifactType"] is not None:
        lines.append(f"Artifact type: {_text(doc['artifactType'])}")
    lines.append(f"Tags:          {', '.join(shown(t) for t in doc['tags']) or '(none)'}")
    lines.append(f"Variants:      {len(doc['variants'])} ({human_size(doc['size'])} in all)")
    print("\n".join(lines + _annotation_lines(doc["digest"], manifest)))
    if doc["variants"]:
        print()
        print(table([_variant_row(v) for v in doc["variants"]], VARIANT_COLUMNS))


def _pick(tree: Tree, wanted: str, label: str) -> tuple[Node, str]:
    """The variant ``pull --platform WANTED`` would take (docs/spec/multi-platform.md §5)."""
    from modelbuild.errors import BuildError, UsageError
    from modelbuild.oci.verify import shown
    from modelbuild.plugins import make_plugin_manager
    from modelbuild.targets import detect_host, select_entry

    if not tree.root.is_index:
        raise UsageError(f"--platform {shown(wanted)}: {shown(label)} is one manifest, not a multi-platform index",
                         hint="drop --platform")
    # an entry whose requirements do not parse is skipped; the message lists every entry, escaped
    choice = select_entry(tree.root.doc, wanted, detect_host(), make_plugin_manager().targets)
    node = tree.nodes.get(choice.descriptor["digest"])
    if node is None or node.is_index:
        raise BuildError(f"index {tree.root.digest}: the entry for {shown(choice.stage)} is itself an index")
    return node, choice.stage


def run(args: argparse.Namespace) -> int:
    if args.remote:
        from modelbuild.errors import UsageError
        from modelbuild.oci.remote import RemoteArtifact
        from modelbuild.oci.transfer import login_hint, names_registry, open_registry, remote_ref

        if not names_registry(args.ref):
            raise UsageError(f"--remote {args.ref}: not a registry reference",
                             hint="write it as registry.example.com/team/model:tag")
        host, repo, ref, label = remote_ref(args.ref)
        with open_registry(host, plain_http=args.plain_http, insecure=args.insecure) as registry, login_hint(host):
            remote = RemoteArtifact(registry, repo)
            return _show(args, remote, remote.descriptor(ref), label)
    store, descriptor, label = _open(args.ref, args.home)
    return _show(args, store, descriptor, label)


def _show(args: argparse.Namespace, store: Any, descriptor: dict[str, Any], label: str) -> int:
    from modelbuild.commands._common import print_json

    tree = read(store, descriptor)
    if getattr(args, "referrers", False):
        return _show_referrers(args, store, tree, label)
    node, extra = tree.root, {}
    if args.platform is not None:
        node, stage = _pick(tree, args.platform, label)
        extra = {"index": tree.root.digest, "stage": stage}
    elif tree.root.is_index:
        doc = _index_doc(label, tree, store, args.context, args.kv_cache_type)
        if args.json:
            print_json(doc)
        else:
            _print_index(doc, tree.root.doc)
        return 0
    doc = {"reference": label, **extra, **describe(store, node)}
    runtime = _runtime(store, node)
    if runtime is not None:
        doc["runtime"] = runtime
    context = args.context if args.context is not None else (runtime or {}).get("contextLength")  # served at
    memory = _memory(store, node, context, args.kv_cache_type)
    if memory is not None:
        doc["memory"] = memory.as_dict()
    if args.json:
        print_json(doc)
    else:
        _print_manifest(f"{label} [{extra['stage']}]" if extra else label, doc, node)
    return 0


def referrers_of(store: Any, tree: Tree) -> list[dict[str, Any]]:
    """Every referrer of the artifact's manifests (the root first, then each entry of an
    index), each with its subject and, for an index's entry, the stage it is for: from the
    store's records, or the registry (referrers API, else the ``sha256-<hex>`` tag)."""
    from modelbuild.targets import ANN_STAGE

    subjects = [(tree.root.digest, None)] + [(d.digest, (d.annotations or {}).get(ANN_STAGE)) for d, _ in tree.entries()]
    out = []
    for digest, stage in subjects:
        if getattr(store, "remote", False):
            from modelbuild.oci.pull import remote_referrers

            entries, _ = remote_referrers(store.registry, store.repo, digest)
        else:
            entries = store.list_referrers(digest)
        for entry in entries:
            annotations = entry.get("annotations") or {}
            out.append({"subject": digest, **({"stage": stage} if stage else {}),
                        "artifactType": entry.get("artifactType", ""),
                        "predicateType": annotations.get("in-toto.io/predicate-type", ""),
                        "digest": entry["digest"], "size": entry["size"]})
    return out


def _show_referrers(args: argparse.Namespace, store: Any, tree: Tree, label: str) -> int:
    from modelbuild.commands._common import print_json

    found = referrers_of(store, tree)
    if args.json:
        print_json({"reference": label, "digest": tree.root.digest, "referrers": found})
        return 0
    if not found:
        print(f"{label}: no referrers")
        return 0
    rows = [["SUBJECT", "ARTIFACT TYPE", "PREDICATE", "DIGEST", "SIZE"]]
    rows += [[r["subject"][:19] + (f" ({r['stage']})" if r.get("stage") else ""), r["artifactType"],
              r["predicateType"] or "-", r["digest"][:19], str(r["size"])] for r in found]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0
