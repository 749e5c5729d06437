"""``modelbuild pull``: pick the variant for this host and write its files to a directory.

Reads the local store or an OCI layout directory; registries come with the registry
support. ``--platform auto`` detects the host (docs/spec/multi-platform.md §5).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = """\
examples:
  modelbuild pull qwen2:0.5b -o ./model                 the variant for this machine
  modelbuild pull qwen2:0.5b --platform cuda -o ./model the cuda variant, whatever the host
  modelbuild pull ./layout:qwen2:0.5b --platform cpu --json
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = HELP
    p.add_argument("ref", metavar="REF|DIR[:TAG]", help="a tag in the local store, or an OCI layout directory")
    p.add_argument("--platform", default="auto", metavar="auto|STAGE|TARGET",
                   help="which variant of a multi-platform artifact (default: auto, detect this host)")
    p.add_argument("-o", "--output", metavar="DIR", help="write the variant's files into DIR")
    p.add_argument("--json", action="store_true", help="print the choice as JSON")


def run(args: argparse.Namespace) -> int:
    from modelbuild.commands._common import print_json
    from modelbuild.commands.inspect import _open
    from modelbuild.oci import mediatypes as mt
    from modelbuild.oci.extract import extract_manifest
    from modelbuild.plugins import make_plugin_manager
    from modelbuild.targets import detect_host, select_entry

    store, descriptor, shown = _open(args.ref, args.home)
    doc = store.read_json(descriptor["digest"])
    stage = None
    if doc.get("mediaType") == mt.OCI_INDEX or "manifests" in doc:
        host = detect_host()
        choice = select_entry(doc, args.platform, host, make_plugin_manager().targets)
        descriptor, stage = choice.descriptor, choice.stage
        doc = store.read_json(descriptor["digest"])
    files = extract_manifest(store, doc, Path(args.output)) if args.output else []
    result = {"reference": shown, "digest": descriptor["digest"], "stage": stage, "files": files}
    if args.json:
        print_json(result)
    else:
        print(f"{descriptor['digest']}  {shown}" + (f" [{stage}]" if stage else ""))
        for f in files:
            print(f"  {f}")
    return 0
