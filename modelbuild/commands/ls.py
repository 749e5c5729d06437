"""``modelbuild ls``: the tagged artifacts in the local store."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("-q", "--quiet", action="store_true", help="print references only")


def run(args: argparse.Namespace) -> int:
    from modelbuild.commands._common import human_size, print_json, table
    from modelbuild.home import home_dir
    from modelbuild.store import Store

    store = Store(home_dir(args.home) / "store")
    entries = []
    for ref, desc in sorted(store.tags().items()):
        size = desc["size"]
        name = ""
        try:
            manifest = store.read_json(desc["digest"])
            size += manifest.get("config", {}).get("size", 0) + sum(layer["size"] for layer in manifest.get("layers", []))
            config = store.read_json(manifest["config"]["digest"]) if "config" in manifest else {}
            name = config.get("descriptor", {}).get("name", "")
        except Exception:  # a damaged entry is still listed; `prune --verify` explains
            name = "(damaged)"
        entries.append({"reference": ref, "digest": desc["digest"], "size": size, "name": name})
    if args.json:
        print_json(entries)
    elif args.quiet:
        for e in entries:
            print(e["reference"])
    else:
        print(table([[e["reference"], e["digest"][7:19], human_size(e["size"]), e["name"]] for e in entries],
                    ["REFERENCE", "DIGEST", "SIZE", "NAME"]))
    return 0
