"""The plugin manager, built fresh per invocation, and typed registries over the hooks.

Core code calls hooks only through :class:`PluginHost`, so every call site is visible to a
type checker, and a misspelled hook implementation fails loudly (``check_pending``).

Hooks are called through pluggy (``pm.hook.NAME(registry=…)``), so ``tryfirst``/``trylast``,
wrappers (``wrapper=True``, old-style ``hookwrapper=True``) and ``firstresult`` behave as in
pytest. Which plugin registered a registry entry is still known: while a register hook runs,
:meth:`Registry.add` finds its caller on the stack, the frame of one of the hook's
implementations (:func:`fill_registry`), and records that implementation's plugin name; the
same walk over a traceback names the plugin whose hook raised.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from types import CodeType, FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, Iterator, TypeVar

import pluggy

from modelbuild import hookspecs
from modelbuild.errors import ModelfileError, PluginError, UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from modelbuild.api._sources import OpenedSource
    from modelbuild.api import (
        Converter,
        Engine,
        Frontend,
        LayerCodec,
        Quantizer,
        ShardStrategy,
        Signer,
        Source,
        Target,
        WeightFormat,
    )

T = TypeVar("T")
ENTRY_POINT_GROUP = "modelbuild"


class Registry(Generic[T]):
    """Named entries that plugins add; two plugins claiming one name is an error."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}
        self._attribute: Callable[[FrameType | None], str] | None = None

    def add(self, item: T) -> None:
        """Add *item* under its ``name``, owned by the plugin whose hook implementation calls this."""
        owner = self._attribute(sys._getframe(1)) if self._attribute is not None else "?"
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {owner} registered a {self.what} without a name")
        if name in self._items:
            raise PluginError(f"{self.what} {name!r} is registered by both {self._owners[name]} and {owner}")
        self._items[name] = item
        self._owners[name] = owner

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


class SourceRegistry(Registry["Source"]):
    """Sources, also looked up by the URL scheme of a ``FROM`` reference."""

    def get_for_reference(self, ref: str) -> Source:
        scheme = ref.split("://", 1)[0] if "://" in ref else ""
        for source in self:
            if scheme in getattr(source, "schemes", ()):
                return source
        known = sorted({s for src in self for s in src.schemes if s})
        raise ModelfileError(
            f"no source plugin handles {scheme}:// references",
            hint=f"installed schemes: plain paths{', ' if known else ''}{', '.join(s + '://' for s in known)}",
        )

    def open(self, ref: str, *, base_dir: Path, include: tuple[str, ...] = (),
             exclude: tuple[str, ...] = ()) -> "OpenedSource":
        """The build context *ref* names, ready to read: a local source's directory, or a
        remote source's files fetched into the store (:mod:`modelbuild.fetch`: pinned,
        keyed, cached, verified) and linked into a snapshot directory. *include* and
        *exclude* (glob patterns: one without ``/`` matches a file name at any depth) pick a
        remote source's files before any is downloaded. Raises ModelfileError (no span: the
        frontend adds it) or a FetchError."""
        from modelbuild.api._sources import OpenedSource, RemoteSource

        source = self.get_for_reference(ref)
        if isinstance(source, RemoteSource) and not hasattr(source, "resolve"):
            from modelbuild.fetch import open_remote

            return open_remote(source, ref, owner=self.owner(source.name), include=include, exclude=exclude)
        if include or exclude:
            raise ModelfileError("--include and --exclude choose files of a remote source",
                                 hint="for a directory, choose files with the file directives or .modelbuildignore")
        return OpenedSource(root=source.resolve(ref, base_dir=base_dir))


@dataclass(frozen=True, slots=True)
class PluginInfo:
    name: str
    version: str
    distribution: str
    provides: tuple[str, ...]


class PluginHost:
    """A plugin manager and the registries its plugins filled. It is the
    :class:`modelbuild.api.PluginLookup` plugins see as ``ctx.plugins``."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.frontends: Registry[Frontend] = Registry("frontend")
        self.sources = SourceRegistry("source")
        self.codecs: Registry[LayerCodec] = Registry("layer format")
        self.formats: Registry[WeightFormat] = Registry("weight format")
        self.quantizers: Registry[Quantizer] = Registry("quantizer")
        self.shard_strategies: Registry[ShardStrategy] = Registry("shard strategy")
        self.converters: Registry[Converter] = Registry("converter")
        self.targets: Registry[Target] = Registry("target")
        self._fill(self.frontends, "modelbuild_register_frontends")
        self._fill(self.sources, "modelbuild_register_sources")
        self._fill(self.codecs, "modelbuild_register_layer_codecs")
        self._fill(self.formats, "modelbuild_register_formats")
        self._fill(self.quantizers, "modelbuild_register_quantizers")
        self._fill(self.shard_strategies, "modelbuild_register_shard_strategies")
        self._fill(self.converters, "modelbuild_register_converters")
        self._extensions: dict[str, Registry[Any]] = {}
        self._fill(self.targets, "modelbuild_register_targets")
        self.engines: Registry[Engine] = Registry("engine")
        self._fill(self.engines, "modelbuild_register_engines")
        self.signers: Registry[Signer] = Registry("signer")
        self._fill(self.signers, "modelbuild_register_signers")

    def format_for_path(self, path: str) -> WeightFormat | None:
        """The format handler whose extension *path* has, if any (no file access)."""
        for handler in self.formats:
            if any(path.endswith(ext) for ext in handler.extensions):
                return handler
        return None

    def quantizer_for(self, fmt: str, qtype: str) -> Quantizer | None:
        for quantizer in self.quantizers:
            if quantizer.format == fmt and qtype in quantizer.types:
                return quantizer
        return None

    def converter_for(self, source: str, target: str) -> Converter | None:
        for converter in self.converters:
            if converter.source_format == source and converter.target_format == target:
                return converter
        return None

    def quant_types(self, fmt: str | None = None) -> list[str]:
        return sorted({t for q in self.quantizers if fmt is None or q.format == fmt for t in q.types})

    def extension(self, hook_name: str, what: str) -> Registry[Any]:
        """The registry a plugin's own ``modelbuild_register_*`` hook fills (a hookspec it
        added in ``modelbuild_addhooks``), filled on first use and kept for this build; an
        empty registry when no plugin declared the hook."""
        registry = self._extensions.get(hook_name)
        if registry is None:
            registry = Registry(what)
            hook = getattr(self.pm.hook, hook_name, None)
            if hook is not None and hook.has_spec():
                fill_registry(hook, registry)
            self._extensions[hook_name] = registry
        return registry

    def _fill(self, registry: Registry[Any], hook_name: str) -> None:
        fill_registry(getattr(self.pm.hook, hook_name), registry)

    def plugin_version(self, plugin_name: str) -> str:
        """The version of the distribution that provides *plugin_name* (enters cache keys)."""
        return plugin_version(self.pm, plugin_name)

    def _versions(self) -> dict[str, tuple[str, str]]:
        return _distributions(self.pm)

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
            *((reg.what, reg) for reg in self._extensions.values()),
            ("target", self.targets),
            ("engine", self.engines),
            ("signer", self.signers),
        ):
            for name in registry.names():
                provides.setdefault(registry.owner(name), []).append(f"{label}:{name}")
        out = []
        versions = self._versions()
        for name, _plugin in self.pm.list_name_plugin():
            dist, version = versions.get(name, ("(registered directly)", "-"))
            out.append(PluginInfo(name, version, dist, tuple(provides.get(name, []))))
        return sorted(out, key=lambda p: p.name)


def fill_registry(hook: pluggy.HookCaller, registry: Registry[Any]) -> None:
    """Call a ``modelbuild_register_*`` hook through pluggy, so that its implementations run
    in pluggy's order (``tryfirst`` first, wrappers around the rest), recording which plugin
    added each entry. A plugin's own registries (an extension hook it declared with
    ``modelbuild_addhooks``) are filled the same way.

    A plugin bug inside the hook (anything but a modelbuild error) is a :class:`PluginError`
    naming the plugin whose implementation raised.
    """
    impls: dict[CodeType, list[Any]] = {}
    for impl in hook.get_hookimpls():
        code = getattr(impl.function, "__code__", None)
        if code is not None:
            impls.setdefault(code, []).append(impl)

    def owner(frame: FrameType | None) -> str:
        while frame is not None:
            found = _impl_of(frame.f_code, frame.f_locals, impls)
            if found is not None:
                return found
            frame = frame.f_back
        return "?"

    registry._attribute = owner
    try:
        hook(registry=registry)
    except (PluginError, ModelfileError, UsageError):
        raise
    except Exception as exc:  # a plugin bug: name the plugin
        culprit = _raiser(exc.__traceback__, impls)
        raise PluginError(f"plugin {culprit} failed in {hook.name}: {exc!r}") from exc
    finally:
        registry._attribute = None


def _impl_of(code: CodeType, local: dict[str, Any], impls: dict[CodeType, list[Any]]) -> str | None:
    """The plugin name of the hook implementation running *code*, if it is one. Two plugin
    instances of one class share code: the frame's ``self`` tells them apart."""
    candidates = impls.get(code)
    if not candidates:
        return None
    if len(candidates) > 1:
        for impl in candidates:
            if local.get("self") is impl.plugin:
                return str(impl.plugin_name)
    return str(candidates[0].plugin_name)


def _raiser(tb: TracebackType | None, impls: dict[CodeType, list[Any]]) -> str:
    """The plugin whose hook implementation is the innermost one in traceback *tb*."""
    found = "?"
    while tb is not None:
        name = _impl_of(tb.tb_frame.f_code, tb.tb_frame.f_locals, impls)
        found = name or found
        tb = tb.tb_next
    return found


def plugin_version(pm: pluggy.PluginManager, plugin_name: str) -> str:
    """The version of the distribution that provides the plugin named *plugin_name*; "0" for
    a plugin registered directly (a test's). Enters the cache key of every step it does."""
    return _distributions(pm).get(plugin_name, ("", "0"))[1]


def _distributions(pm: pluggy.PluginManager) -> dict[str, tuple[str, str]]:
    """Plugin name → (distribution, version) of the plugins loaded from entry points."""
    out = {}
    for plugin, dist in pm.list_plugin_distinfo():
        name = pm.get_name(plugin)
        if name is not None:
            out[name] = (dist.project_name, dist.version)
    return out


def make_plugin_manager(extra_plugins: Iterable[object] = (), *, load_entrypoints: bool = True) -> PluginHost:
    """A fresh plugin manager: entry-point plugins, then *extra_plugins* (used by tests).

    ``modelbuild_addhooks`` is called historically first, so every plugin, whenever it is
    registered, may add hookspecs of its own (pytest's ``pytest_addhooks``). Then
    :meth:`pluggy.PluginManager.check_pending` makes a hook implementation no hookspec
    declares (a misspelled name) an error naming the plugin.

    ``MODELBUILD_DISABLE_PLUGINS=name,name`` blocks named entry-point plugins, for
    isolating a misbehaving third-party plugin.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.hook.modelbuild_addhooks.call_historic(kwargs={"pluginmanager": pm})
    for name in filter(None, os.environ.get("MODELBUILD_DISABLE_PLUGINS", "").split(",")):
        pm.set_blocked(name.strip())
    try:
        if load_entrypoints:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        for plugin in extra_plugins:
            if pm.is_registered(plugin):  # an installed plugin passed again (a plugin's own tests)
                continue
            pm.register(plugin, _readable_name(pm, plugin))
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {_plugin_name(pm, exc.plugin)} is invalid: {exc}") from exc
    except (PluginError, ModelfileError, UsageError):
        raise
    except Exception as exc:
        raise PluginError(f"loading a plugin failed: {exc!r}") from exc
    _check_pending(pm)
    return PluginHost(pm)


def _check_pending(pm: pluggy.PluginManager) -> None:
    """pluggy's ``check_pending``, worded for a plugin author: which plugin implements which
    unknown hook, and the closest hook that exists."""
    known = [name for name in dir(pm.hook) if name.startswith(hookspecs.PROJECT + "_")
             and getattr(pm.hook, name).has_spec()]
    for name in sorted(dir(pm.hook)):
        caller = getattr(pm.hook, name)
        if not isinstance(caller, pluggy.HookCaller) or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            close = difflib.get_close_matches(name, known, n=1)
            raise PluginError(f"plugin {impl.plugin_name} implements unknown hook {name}",
                              hint=f"did you mean {close[0]}?" if close else "see modelbuild.hookspecs")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:  # what the loop above does not word
        raise PluginError(str(exc)) from exc


def _readable_name(pm: pluggy.PluginManager, plugin: object) -> str:
    """A name for a plugin registered directly (a test's): its module or class name, not
    pluggy's default ``id()``, so messages can name it."""
    base = getattr(plugin, "__name__", None) or type(plugin).__name__
    name, n = base, 1
    while pm.has_plugin(name) or pm.is_blocked(name):
        n += 1
        name = f"{base}#{n}"
    return name


def _plugin_name(pm: pluggy.PluginManager, plugin: object) -> str:
    return pm.get_name(plugin) or getattr(plugin, "__name__", None) or type(plugin).__name__
