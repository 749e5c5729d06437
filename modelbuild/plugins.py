"""The plugin manager, built fresh per invocation, and typed registries over the hooks.

Core code calls hooks only through :class:`PluginHost`, so every call site is visible to a
type checker, and a misspelled hook implementation fails loudly (``check_pending``).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any, Generic, Iterable, Iterator, TypeVar

import pluggy

from modelbuild import hookspecs
from modelbuild.errors import ModelfileError, PluginError, UsageError

T = TypeVar("T")
ENTRY_POINT_GROUP = "modelbuild"


class Registry(Generic[T]):
    """Named entries that plugins add; two plugins claiming one name is an error."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}
        self._current_plugin = "?"

    def add(self, item: T) -> None:
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {self._current_plugin} registered a {self.what} without a name")
        if name in self._items:
            raise PluginError(
                f"{self.what} {name!r} is registered by both {self._owners[name]} and {self._current_plugin}"
            )
        self._items[name] = item
        self._owners[name] = self._current_plugin

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f"did you mean {close[0]}?" if close else f"installed: {', '.join(sorted(self._items)) or 'none'}"
            raise UsageError(f"unknown {self.what} {name!r}", hint=hint) from None

    def owner(self, name: str) -> str:
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items[n] for n in sorted(self._items))

    def __contains__(self, name: object) -> bool:
        return name in self._items


class SourceRegistry(Registry[Any]):
    """Sources, also looked up by the URL scheme of a ``FROM`` reference."""

    def get_for_reference(self, ref: str) -> Any:
        scheme = ref.split("://", 1)[0] if "://" in ref else ""
        for source in self:
            if scheme in getattr(source, "schemes", ()):
                return source
        known = sorted({s for src in self for s in src.schemes if s})
        raise ModelfileError(
            f"no source plugin handles {scheme}:// references",
            hint=f"installed schemes: plain paths{', ' if known else ''}{', '.join(s + '://' for s in known)}",
        )


@dataclass(frozen=True, slots=True)
class PluginInfo:
    name: str
    version: str
    distribution: str
    provides: tuple[str, ...]


class PluginHost:
    """A plugin manager and the registries its plugins filled."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.frontends: Registry[Any] = Registry("frontend")
        self.sources = SourceRegistry("source")
        self.codecs: Registry[Any] = Registry("layer format")
        self.formats: Registry[Any] = Registry("weight format")
        self.quantizers: Registry[Any] = Registry("quantizer")
        self.shard_strategies: Registry[Any] = Registry("shard strategy")
        self.converters: Registry[Any] = Registry("converter")
        self.architectures: Registry[Any] = Registry("architecture")
        self.targets: Registry[Any] = Registry("target")
        self._fill(self.frontends, "modelbuild_register_frontends")
        self._fill(self.sources, "modelbuild_register_sources")
        self._fill(self.codecs, "modelbuild_register_layer_codecs")
        self._fill(self.formats, "modelbuild_register_formats")
        self._fill(self.quantizers, "modelbuild_register_quantizers")
        self._fill(self.shard_strategies, "modelbuild_register_shard_strategies")
        self._fill(self.converters, "modelbuild_register_converters")
        self._fill(self.architectures, "modelbuild_register_architectures")
        self._fill(self.targets, "modelbuild_register_targets")

    def format_for_path(self, path: str) -> Any | None:
        """The format handler whose extension *path* has, if any (no file access)."""
        for handler in self.formats:
            if any(path.endswith(ext) for ext in handler.extensions):
                return handler
        return None

    def quantizer_for(self, fmt: str, qtype: str) -> Any | None:
        for quantizer in self.quantizers:
            if quantizer.format == fmt and qtype in quantizer.types:
                return quantizer
        return None

    def converter_for(self, source: str, target: str) -> Any | None:
        for converter in self.converters:
            if converter.source_format == source and converter.target_format == target:
                return converter
        return None

    def quant_types(self, fmt: str | None = None) -> list[str]:
        return sorted({t for q in self.quantizers if fmt is None or q.format == fmt for t in q.types})

    def _fill(self, registry: Registry[Any], hook_name: str) -> None:
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():  # registration order
            registry._current_plugin = impl.plugin_name
            try:
                impl.function(registry=registry)
            except (PluginError, ModelfileError, UsageError):
                raise
            except Exception as exc:  # a plugin bug: name the plugin
                raise PluginError(f"plugin {impl.plugin_name} failed in {hook_name}: {exc!r}") from exc

    def plugin_version(self, plugin_name: str) -> str:
        """The version of the distribution that provides *plugin_name* (enters cache keys)."""
        return self._versions().get(plugin_name, ("", "0"))[1]

    def _versions(self) -> dict[str, tuple[str, str]]:
        cached = getattr(self, "_version_cache", None)
        if cached is None:
            cached = {}
            for plugin, dist in self.pm.list_plugin_distinfo():
                name = self.pm.get_name(plugin)
                if name is not None:
                    cached[name] = (dist.project_name, dist.version)
            self._version_cache = cached
        return cached

    def infos(self) -> list[PluginInfo]:
        provides: dict[str, list[str]] = {}
        for label, registry in (
            ("frontend", self.frontends),
            ("source", self.sources),
            ("layer-format", self.codecs),
            ("format", self.formats),
            ("quantizer", self.quantizers),
            ("shard", self.shard_strategies),
            ("converter", self.converters),
            ("architecture", self.architectures),
            ("target", self.targets),
        ):
            for name in registry.names():
                provides.setdefault(registry.owner(name), []).append(f"{label}:{name}")
        out = []
        versions = self._versions()
        for name, _plugin in self.pm.list_name_plugin():
            dist, version = versions.get(name, ("(registered directly)", "-"))
            out.append(PluginInfo(name, version, dist, tuple(provides.get(name, []))))
        return sorted(out, key=lambda p: p.name)


def make_plugin_manager(extra_plugins: Iterable[object] = (), *, load_entrypoints: bool = True) -> PluginHost:
    """A fresh plugin manager: entry-point plugins, then *extra_plugins* (used by tests).

    ``MODELBUILD_DISABLE_PLUGINS=name,name`` blocks named entry-point plugins, for
    isolating a misbehaving third-party plugin.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in filter(None, os.environ.get("MODELBUILD_DISABLE_PLUGINS", "").split(",")):
        pm.set_blocked(name.strip())
    if load_entrypoints:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:
            raise PluginError(f"loading a plugin failed: {exc!r}") from exc
    for plugin in extra_plugins:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    return PluginHost(pm)
