"""The plugin manager, built fresh per invocation, and typed registries over the hooks.

Core code calls hooks only through :class:`PluginHost`, so every call site is visible to a
type checker, and a misspelled hook implementation fails loudly (``check_pending``).

Hooks are called through pluggy (``pm.hook.NAME(registry=…)``), so ``tryfirst``/``trylast``,
wrappers (``wrapper=True``, old-style ``hookwrapper=True``) and ``firstresult`` behave as in
pytest. Which plugin registered a registry entry is still known: while a register hook runs,
:meth:`Registry.add` finds its caller on the stack, the frame of one of the hook's
implementations (:func:`fill_registry`), and records that implementation's plugin name; the
same walk over a traceback names the plugin whose hook raised.

Plugins are loaded lazily (:mod:`modelbuild.plugin_catalog`): the first run in an
installation loads every entry-point plugin, fills every registry, checks everything (two
plugins claiming one name, misspelled hooks, plugin bugs) and records which plugin provides
which entry. Later runs import a plugin only when an entry of it is used: a registry's
``names()``, ``owner()`` and ``in`` answer from that record, and :meth:`Registry.peek` the
attributes entries are selected by, so a build that reads only safetensors never imports the
GGUF plugin, and one that uses no engine never imports an engine.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from types import CodeType, FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, Iterator, TypeVar

import pluggy

from modelbuild import hookspecs, plugin_catalog
from modelbuild.errors import ModelfileError, PluginError, UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from modelbuild.api._sources import OpenedSource
    from modelbuild.api import (
        Converter,
        Engine,
        Executor,
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
    """Named entries that plugins add; two plugins claiming one name is an error.

    A registry of a lazily loaded plugin host starts with what the plugin catalog recorded
    (``_known``: name → (owner, selector attributes)) and imports an entry's plugin when the
    entry itself is asked for (``get``, iterating, :meth:`peek` of an attribute not recorded).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}
        self._attribute: Callable[[FrameType | None], str] | None = None
        self._known: dict[str, tuple[str, dict[str, Any]]] | None = None  # None: complete
        self._load: Callable[[str | None], None] | None = None

    def _need(self, name: str | None) -> None:
        """Load the plugin providing *name* (None: every plugin of this registry)."""
        if self._known is not None and self._load is not None and (name is None or name not in self._items):
            self._load(name)

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
        self._need(name)
        try:
            return self._items[name]
        except KeyError:
            self._need(None)
            if name in self._items:
                return self._items[name]
            import difflib

            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f"did you mean {close[0]}?" if close else f"installed: {', '.join(sorted(self._items)) or 'none'}"
            raise UsageError(f"unknown {self.what} {name!r}", hint=hint) from None

    def owner(self, name: str) -> str:
        if name not in self._owners and self._known is not None and name in self._known:
            return self._known[name][0]
        return self._owners[name]

    def names(self) -> list[str]:
        if self._known is not None:
            return sorted(self._items.keys() | self._known.keys())
        return sorted(self._items)

    def peek(self, name: str, attribute: str, default: Any = None) -> Any:
        """Entry *name*'s *attribute* (*default* when it has none), read from the plugin
        catalog when it recorded it, so that choosing an entry by it (a format by its
        ``extensions``, a source by its ``schemes``) imports only the plugin chosen."""
        if name not in self._items and self._known is not None:
            entry = self._known.get(name)
            if entry is not None and attribute in entry[1]:
                value = entry[1][attribute]
                return default if value is None else tuple(value) if isinstance(value, list) else value
            self._need(name)
        return getattr(self._items[name], attribute, default)

    def __iter__(self) -> Iterator[T]:
        self._need(None)
        return iter(self._items[n] for n in sorted(self._items))

    def __contains__(self, name: object) -> bool:
        return name in self._items or (self._known is not None and name in self._known)


class SourceRegistry(Registry["Source"]):
    """Sources, also looked up by the URL scheme of a ``FROM`` reference."""

    def get_for_reference(self, ref: str) -> Source:
        scheme = ref.split("://", 1)[0] if "://" in ref else ""
        for name in self.names():
            if scheme in (self.peek(name, "schemes", ()) or ()):
                return self.get(name)
        known = sorted({s for name in self.names() for s in self.peek(name, "schemes", ()) or () if s})
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
    :class:`modelbuild.api.PluginLookup` plugins see as ``ctx.plugins``.

    Built with a plugin *catalog* (:mod:`modelbuild.plugin_catalog`), the registries start
    empty of objects and each plugin is imported, registered with pluggy and has its register
    hooks called when an entry of it is first used; a plugin found to register other than
    the catalog says makes the catalog out of date: it is removed and every plugin loaded.
    """

    def __init__(self, pm: pluggy.PluginManager, *, catalog: dict[str, Any] | None = None,
                 distributions: dict[str, tuple[str, str]] | None = None) -> None:
        self.pm = pm
        self.frontends: Registry[Frontend] = Registry("frontend")
        self.sources = SourceRegistry("source")
        self.codecs: Registry[LayerCodec] = Registry("layer format")
        self.formats: Registry[WeightFormat] = Registry("weight format")
        self.quantizers: Registry[Quantizer] = Registry("quantizer")
        self.shard_strategies: Registry[ShardStrategy] = Registry("shard strategy")
        self.converters: Registry[Converter] = Registry("converter")
        self.targets: Registry[Target] = Registry("target")
        self.engines: Registry[Engine] = Registry("engine")
        self.signers: Registry[Signer] = Registry("signer")
        self.executors: Registry[Executor] = Registry("executor")
        self._extensions: dict[str, Registry[Any]] = {}
        # the core registries, in the order they are filled (hook name → registry)
        self._core: dict[str, Registry[Any]] = {
            "modelbuild_register_frontends": self.frontends,
            "modelbuild_register_sources": self.sources,
            "modelbuild_register_layer_codecs": self.codecs,
            "modelbuild_register_formats": self.formats,
            "modelbuild_register_quantizers": self.quantizers,
            "modelbuild_register_shard_strategies": self.shard_strategies,
            "modelbuild_register_converters": self.converters,
            "modelbuild_register_targets": self.targets,
            "modelbuild_register_engines": self.engines,
            "modelbuild_register_signers": self.signers,
            "modelbuild_register_executors": self.executors,
        }
        self._catalog = catalog
        # loading is one thread at a time (the solver's steps ask registries from their threads);
        # reading needs no lock: a registry's dicts only grow, and CPython reads them atomically
        self._lock = threading.RLock()
        self._plugins: dict[str, dict[str, Any]] = {}  # lazily loaded plugins: name → catalog record
        self._filled: dict[str, set[str]] = {hook_name: set() for hook_name in self._core}
        if catalog is None:
            self._dists = dict(distributions) if distributions is not None else _distributions(pm)
            for hook_name, registry in self._core.items():
                self._fill(registry, hook_name)
            return
        self._plugins = {p["name"]: p for p in catalog["plugins"]}
        self._dists = {p["name"]: (p["dist"], p["version"]) for p in catalog["plugins"]}
        for hook_name, registry in self._core.items():
            registry._known = {name: (entry[0], entry[1]) for name, entry in catalog["entries"].get(hook_name, {}).items()}
            registry._load = lambda name, hook_name=hook_name: self._load_for(hook_name, name)

    # -- choosing entries (by the attributes the catalog records: no import of the others)

    def format_name_for_path(self, path: str) -> str | None:
        """The name of the format whose extension *path* has, if any (no file access; from
        the plugin catalog, so no plugin is imported)."""
        for name in self.formats.names():
            if any(path.endswith(ext) for ext in self.formats.peek(name, "extensions", ()) or ()):
                return name
        return None

    def format_for_path(self, path: str) -> WeightFormat | None:
        """The format handler whose extension *path* has, if any (no file access)."""
        name = self.format_name_for_path(path)
        return None if name is None else self.formats.get(name)

    def quantizer_for(self, fmt: str, qtype: str) -> Quantizer | None:
        quantizers = self.quantizers
        for name in quantizers.names():
            if quantizers.peek(name, "format") == fmt and qtype in (quantizers.peek(name, "types", ()) or ()):
                return quantizers.get(name)
        return None

    def converter_for(self, source: str, target: str) -> Converter | None:
        converters = self.converters
        for name in converters.names():
            if converters.peek(name, "source_format") == source and converters.peek(name, "target_format") == target:
                return converters.get(name)
        return None

    def quant_types(self, fmt: str | None = None) -> list[str]:
        quantizers = self.quantizers
        return sorted({t for name in quantizers.names() if fmt is None or quantizers.peek(name, "format") == fmt
                       for t in quantizers.peek(name, "types", ()) or ()})

    def extension(self, hook_name: str, what: str) -> Registry[Any]:
        """The registry a plugin's own ``modelbuild_register_*`` hook fills (a hookspec it
        added in ``modelbuild_addhooks``), filled on first use and kept for this build; an
        empty registry when no plugin declared the hook."""
        registry = self._extensions.get(hook_name)
        if registry is not None:
            return registry
        with self._lock:
            if hook_name in self._extensions:
                return self._extensions[hook_name]
            if self._catalog is not None:  # the plugins that declare hooks, and those implementing this one
                for p in list(self._plugins.values()):
                    if hook_name in p["hooks"] or "modelbuild_addhooks" in p["hooks"]:
                        self._import(p["name"])
            registry = Registry(what)
            hook = getattr(self.pm.hook, hook_name, None)
            if hook is not None and hook.has_spec():
                fill_registry(hook, registry)
            self._extensions[hook_name] = registry
            return registry

    def _fill(self, registry: Registry[Any], hook_name: str) -> None:
        fill_registry(getattr(self.pm.hook, hook_name), registry)

    # -- lazy loading

    def _import(self, plugin_name: str) -> None:
        """Import the entry-point plugin *plugin_name* and register it with pluggy."""
        if self.pm.has_plugin(plugin_name) or plugin_name not in self._plugins:
            return
        value = self._plugins[plugin_name]["value"]
        _register(self.pm, plugin_name, lambda: plugin_catalog.load_value(value))

    def _implementers(self, hook_name: str) -> list[str]:
        if self._catalog is None:  # out of date: what pluggy knows, every plugin being loaded
            return [impl.plugin_name for impl in getattr(self.pm.hook, hook_name).get_hookimpls()]
        return [p["name"] for p in self._plugins.values() if hook_name in p["hooks"]]

    def _load_for(self, hook_name: str, name: str | None) -> None:
        """Make entry *name* of the registry *hook_name* fills present (None: every entry):
        import its plugin, then call the hook's implementations not yet called for it."""
        with self._lock:
            registry = self._core[hook_name]
            if registry._known is not None and (name is None or name not in registry._items):
                self._load_locked(hook_name, registry, name)

    def _load_locked(self, hook_name: str, registry: Registry[Any], name: str | None) -> None:
        implementers = self._implementers(hook_name)
        if name is None:
            wanted = implementers
        else:
            known = (registry._known or {}).get(name)
            if known is None:
                return
            wanted = [known[0]]
        for plugin_name in wanted:
            self._import(plugin_name)
        filled = self._filled[hook_name]
        todo = [p for p in implementers if p not in filled and self.pm.has_plugin(p)]
        if todo:
            before = set(registry._items)
            others = [plugin for plugin_name, plugin in self.pm.list_name_plugin() if plugin_name not in todo]
            filled.update(todo)
            fill_registry(self.pm.subset_hook_caller(hook_name, others), registry)
            if self._catalog is not None and not self._as_recorded(hook_name, registry, set(todo), before):
                self._out_of_date()
                return
        if all(p in filled for p in implementers):
            registry._known = None

    def _as_recorded(self, hook_name: str, registry: Registry[Any], plugins: set[str], before: set[str]) -> bool:
        """Whether *plugins* added to *registry* exactly what the catalog says they add."""
        assert self._catalog is not None
        recorded = {name: entry for name, entry in self._catalog["entries"].get(hook_name, {}).items()
                    if entry[0] in plugins}
        added = set(registry._items) - before
        if added != recorded.keys():
            return False
        for name, (owner, attrs) in recorded.items():
            item = registry._items[name]
            if registry._owners[name] != owner:
                return False
            for attribute, value in attrs.items():
                live = plugin_catalog.recordable(getattr(item, attribute, None))
                if live != value or (value is None and hasattr(item, attribute)):
                    return False
        return True

    def _out_of_date(self) -> None:
        """The catalog did not describe the plugins: forget it, and load every plugin now
        (the registries then hold exactly what the plugins add)."""
        plugin_catalog.forget()
        plugins = self._plugins
        self._catalog = None
        try:
            for ep, dist, version in plugin_catalog.entry_points(ENTRY_POINT_GROUP):
                if ep.name not in plugins:
                    plugins[ep.name] = {"name": ep.name, "value": ep.value, "hooks": []}
                    self._dists[ep.name] = (dist, version)
        except Exception:  # the catalog's plugins still load below
            pass
        for plugin_name in list(plugins):
            self._import(plugin_name)
        for hook_name, registry in self._core.items():
            if registry._known is not None:
                self._load_locked(hook_name, registry, None)
                registry._known = None

    def _load_all(self) -> None:
        """Every plugin imported and every core registry complete (``modelbuild plugins``)."""
        with self._lock:
            for plugin_name in list(self._plugins):
                self._import(plugin_name)
            for hook_name in self._core:
                self._load_for(hook_name, None)

    # -- versions and listing

    def plugin_version(self, plugin_name: str) -> str:
        """The version of the distribution that provides *plugin_name* (enters cache keys)."""
        return self._dists.get(plugin_name, ("", "0"))[1]

    def _versions(self) -> dict[str, tuple[str, str]]:
        return self._dists

    def infos(self) -> list[PluginInfo]:
        self._load_all()
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
            ("executor", self.executors),
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


def _distributions(pm: pluggy.PluginManager) -> dict[str, tuple[str, str]]:
    """Plugin name → (distribution, version) of the plugins pluggy loaded from entry points
    (``load_setuptools_entrypoints``), for a host built on a manager made elsewhere;
    :func:`make_plugin_manager` records the distributions it loads itself."""
    out = {}
    for plugin, dist in pm.list_plugin_distinfo():
        name = pm.get_name(plugin)
        if name is not None:
            out[name] = (dist.project_name, dist.version)
    return out


def make_plugin_manager(extra_plugins: Iterable[object] = (), *, load_entrypoints: bool = True,
                        lazy: bool = True) -> PluginHost:
    """A fresh plugin manager: entry-point plugins, then *extra_plugins* (used by tests).

    ``modelbuild_addhooks`` is called historically first, so every plugin, whenever it is
    registered, may add hookspecs of its own (pytest's ``pytest_addhooks``). Then
    :meth:`pluggy.PluginManager.check_pending` makes a hook implementation no hookspec
    declares (a misspelled name) an error naming the plugin.

    With only the installed plugins, *lazy*, and a plugin catalog that still describes the
    installation (:mod:`modelbuild.plugin_catalog`), nothing is imported here: each plugin is
    imported when an entry of it is first used, everything above having been checked when
    the catalog was written. Otherwise every plugin is loaded and every registry filled now,
    and (when *lazy*) the catalog written for the next run.

    ``MODELBUILD_DISABLE_PLUGINS=name,name`` blocks named entry-point plugins, for
    isolating a misbehaving third-party plugin.
    """
    extra_plugins = list(extra_plugins)
    lazy = lazy and load_entrypoints and not extra_plugins and plugin_catalog.enabled()
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.hook.modelbuild_addhooks.call_historic(kwargs={"pluginmanager": pm})
    if lazy:
        catalog = plugin_catalog.load()
        if catalog is not None:
            return PluginHost(pm, catalog=catalog)
    for name in filter(None, os.environ.get("MODELBUILD_DISABLE_PLUGINS", "").split(",")):
        pm.set_blocked(name.strip())
    loaded: list[dict[str, Any]] = []
    if load_entrypoints:
        for ep, dist, version in plugin_catalog.entry_points(ENTRY_POINT_GROUP):
            if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            _register(pm, ep.name, ep.load)
            loaded.append({"name": ep.name, "value": ep.value, "dist": dist, "version": version})
    for plugin in extra_plugins:
        if pm.is_registered(plugin):  # an installed plugin passed again (a plugin's own tests)
            continue
        name = _readable_name(pm, plugin)
        _register(pm, name, lambda plugin=plugin: plugin)
    _check_pending(pm)
    host = PluginHost(pm, distributions={p["name"]: (p["dist"], p["version"]) for p in loaded})
    if lazy:
        doc = plugin_catalog.describe(pm, host._core, loaded)
        if doc is not None:
            plugin_catalog.save(doc)
    return host


def _register(pm: pluggy.PluginManager, name: str, load: Callable[[], object]) -> None:
    """Import a plugin (*load*) and register it under *name*, eagerly or from the catalog:
    a plugin that fails to import, or that pluggy refuses, is a :class:`PluginError` that
    names it (an error of ours it raised passes unchanged)."""
    try:
        pm.register(load(), name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name} is invalid: {exc}") from exc
    except (PluginError, ModelfileError, UsageError):
        raise
    except Exception as exc:
        raise PluginError(f"loading plugin {name} failed: {exc!r}") from exc


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
            import difflib

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

