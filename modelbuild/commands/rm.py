"""``modelbuild rm``: remove tags; ``prune`` then frees the blobs nothing else uses."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("refs", nargs="+", metavar="REF", help="tags to remove")
    p.add_argument("--prune", action="store_true", help="also delete blobs no other tag uses")


def run(args: argparse.Namespace) -> int:
    from modelbuild.errors import NotFoundError
    from modelbuild.home import home_dir
    from modelbuild.store import Store

    store = Store(home_dir(args.home) / "store")
    missing = []
    for ref in args.refs:
        gone = store.untag(ref)
        if gone is None:
            missing.append(ref)
        else:
            print(f"Untagged: {ref} ({gone['digest']})")
    if args.prune:
        from modelbuild.commands.prune import prune

        report = prune(store, home_dir(args.home))
        print(f"Deleted {report['deleted']} blobs, freed {report['freed']} bytes")
    if missing:
        raise NotFoundError(f"no such model: {', '.join(missing)}", hint="`modelbuild ls` lists what is stored")
    return 0
