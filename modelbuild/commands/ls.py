"""``modelbuild ls``: the tagged artifacts in the local store.

Tags, names and digests come from files anyone could have written: the table shows them
escaped (:func:`modelbuild.oci.verify.shown`), so a tag with a newline or a terminal escape
cannot forge a row or rewrite the screen. A damaged ``index.json`` is one error line naming
it; an entry whose manifest or config is damaged is still listed, named ``(damaged)``, with
a warning naming the blob.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("-q", "--quiet", action="store_true", help="print references only")


def _entry(store: Any, ref: str, desc: dict[str, Any]) -> dict[str, Any]:
    """One row: the total size of the artifact (an index with every variant, each blob once,
    as ``inspect`` counts it) and the name its config gives it (an index: its first variant's)."""
    from modelbuild.commands.inspect import read
    from modelbuild.errors import ModelbuildError

    size, name = desc["size"], ""
    try:
        tree = read(store, desc)
        size = tree.size()
        node = next((n for _, n in tree.entries() if n is not None), tree.root)
        config = store.read_json(node.parts.config.digest, node.parts.config.size) if node.parts.config else {}
        described = config.get("descriptor") if isinstance(config, dict) else None
        name = described.get("name", "") if isinstance(described, dict) else ""
    except ModelbuildError as exc:  # still listed; `prune --verify` explains
        from modelbuild.oci.verify import shown

        print(f"modelbuild: warning: {shown(ref)}: {exc.render()}", file=sys.stderr)
        name = "(damaged)"
    return {"reference": ref, "digest": desc["digest"], "size": size,
            "name": name if isinstance(name, str) else str(name)}


def run(args: argparse.Namespace) -> int:
    from modelbuild.commands._common import human_size, print_json, table
    from modelbuild.home import home_dir
    from modelbuild.oci.verify import shown
    from modelbuild.store import Store

    store = Store(home_dir(args.home) / "store")
    entries = [_entry(store, ref, desc) for ref, desc in sorted(store.tags().items())]
    if args.json:
        print_json(entries)
    elif args.quiet:
        for e in entries:
            print(shown(e["reference"], 10_000))
    else:
        print(table([[shown(e["reference"]), e["digest"][7:19], human_size(e["size"]), shown(e["name"])]
                     for e in entries], ["REFERENCE", "DIGEST", "SIZE", "NAME"]))
    return 0
