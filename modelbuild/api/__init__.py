"""The public API for plugin authors: the only modelbuild module a plugin imports.

(A first cut; the protocols for every plugin kind and the value types follow.)
"""

from __future__ import annotations

from modelbuild.hookspecs import hookimpl, hookspec
from modelbuild.plugins import PluginLookup, Registry, fill_registry

__all__ = ["PluginLookup", "Registry", "fill_registry", "hookimpl", "hookspec"]
