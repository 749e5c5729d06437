"""``modelbuild logout``: forget the credentials saved for a registry."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("server", metavar="HOST", help="the registry, e.g. registry.example.com")


def run(args: argparse.Namespace) -> int:
    from modelbuild.commands.login import _host
    from modelbuild.oci.auth import erase_credentials

    host = _host(args.server)
    if erase_credentials(host):
        print(f"Removed login credentials for {host}")
    else:
        print(f"Not logged in to {host}")
    return 0
