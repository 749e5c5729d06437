"""``modelbuild tag``: give an artifact of the local store another name."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="a tag or manifest digest in the local store")
    p.add_argument("dst", metavar="DST", help="the new tag, e.g. registry.example.com/team/model:1")


def run(args: argparse.Namespace) -> int:
    from modelbuild.home import home_dir
    from modelbuild.oci.reference import parse_reference
    from modelbuild.store import Store

    store = Store(home_dir(args.home) / "store")
    descriptor = store.resolve(args.src)
    dst = parse_reference(args.dst)
    if dst.digest:
        from modelbuild.errors import UsageError

        raise UsageError(f"{args.dst!r}: a tag cannot contain a digest")
    entry = {k: v for k, v in descriptor.items() if k != "annotations"}
    store.tag(str(dst), entry)
    print(f"Tagged {dst} ({descriptor['digest']})")
    return 0
