"""``modelbuild version``: what is installed, for bug reports and scripts (docker's habit).

Text prints modelbuild's version, the plugin API version plugins are written against, Python
and the platform; ``--json`` adds every installed plugin with its version and distribution.
"""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the versions as JSON, plugins included")


def run(args: argparse.Namespace) -> int:
    import platform
    import sys

    from modelbuild import __version__

    info = {
        "version": __version__,
        "pluginApi": ".".join(__version__.split(".")[:2]),
        "python": platform.python_version(),
        "platform": f"{sys.platform}/{platform.machine()}",
    }
    if args.json:
        from modelbuild.commands._common import print_json
        from modelbuild.plugins import make_plugin_manager

        info["plugins"] = [{"name": p.name, "version": p.version, "distribution": p.distribution}
                           for p in make_plugin_manager().infos()]
        print_json(info)
        return 0
    print(f"modelbuild {info['version']}\n plugin API: {info['pluginApi']}\n Python:     {info['python']}\n"
          f" platform:   {info['platform']}")
    return 0
