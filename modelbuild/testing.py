"""Helpers for people testing modelbuild plugins (tox's habit: ship the fixture you use).

    from modelbuild.testing import plugin_host

    def test_my_codec():
        host = plugin_host(my_plugin_module)
        assert "tar+lz4" in host.codecs

``plugin_host`` builds a fresh plugin manager with the installed plugins plus yours, so a
test never depends on global state. ``build_with`` runs a whole build with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelbuild.plugins import PluginHost, make_plugin_manager


def plugin_host(*plugins: object, load_entrypoints: bool = True) -> PluginHost:
    return make_plugin_manager(plugins, load_entrypoints=load_entrypoints)


def build_with(modelfile: Path, home: Path, *plugins: object, **options: Any) -> Any:
    """Build *modelfile* into the store at *home* with extra *plugins*; returns the BuildResult."""
    from modelbuild.build import build
    from modelbuild.progress import QuietRenderer
    import io

    return build(str(modelfile), home=home, host=plugin_host(*plugins), renderer=QuietRenderer(io.StringIO()),
                 **options)
