"""``modelbuild plugins``: every installed plugin, its version, and what it provides."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from modelbuild.commands._common import print_json, table
    from modelbuild.plugins import make_plugin_manager

    infos = make_plugin_manager().infos()
    if args.json:
        print_json([asdict(i) for i in infos])
        return 0
    print(table([[i.name, i.version, i.distribution, ", ".join(i.provides)] for i in infos],
                ["PLUGIN", "VERSION", "DISTRIBUTION", "PROVIDES"]))
    return 0
