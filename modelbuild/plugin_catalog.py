"""The plugin catalog: which entry-point plugin provides which registry entry, remembered per
installation, so that a command imports only the plugins it uses.

Finding the plugins means reading every installed distribution's metadata and importing
every module of the ``modelbuild`` entry-point group: most of a no-op rebuild's time, for
plugins it never calls (GGUF, the engines, the OCI source…). The first run in an
installation does just that (:func:`entry_points`), fills every registry, and writes what it
learned (:func:`describe`, :func:`save`): for each plugin its entry point, distribution,
version and the hooks it implements; for each registry entry its name, its owner and the
few attributes the core selects entries by (a format's ``extensions``, a source's
``schemes``…: :data:`SELECTORS`). Later runs read that (:func:`load`) and import a plugin
when an entry of it is first used (:class:`modelbuild.plugins.PluginHost`).

The catalog is used only while it describes the installation exactly. Its key holds the
interpreter, every distribution on ``sys.path`` with the stat of its ``entry_points.txt``
(an install, an upgrade, an uninstall or ``pip install -e .`` changes it), and the stat of
every source file of modelbuild and of the plugins that the full load imported (an edit to
an editable install changes it). Any difference, an unreadable file, or
``MODELBUILD_PLUGIN_CACHE=0`` means a full load (which writes a new catalog); so does
``MODELBUILD_DISABLE_PLUGINS`` (a debugging aid, never cached), and an installed plugin
whose register hook is ordered (``tryfirst``/``trylast``) or a wrapper (nothing then is
lazy: pluggy's order is kept exactly). The catalog lives in
``$MODELBUILD_HOME/cache/plugins/``; a home that cannot be written only means no catalog.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Iterator

FORMAT = 2  # 2: entries' versions recorded
ENV_SWITCH = "MODELBUILD_PLUGIN_CACHE"

# core register hook → the attributes of its entries the core selects by, or puts in a step's
# key (``version``); recorded when they are strings or sequences of strings, so that selecting
# an entry, or the key of a cached step, needs no import
SELECTORS: dict[str, tuple[str, ...]] = {
    "modelbuild_register_frontends": ("filenames",),
    "modelbuild_register_sources": ("schemes",),
    "modelbuild_register_layer_codecs": ("version",),
    "modelbuild_register_formats": ("extensions", "version"),
    "modelbuild_register_quantizers": ("format", "types", "version"),
    "modelbuild_register_shard_strategies": ("version",),
    "modelbuild_register_converters": ("source_format", "target_format", "version"),
    "modelbuild_register_targets": (),
    "modelbuild_register_engines": (),
    "modelbuild_register_signers": (),
    "modelbuild_register_executors": (),
}


def enabled() -> bool:
    """Whether plugins may be loaded lazily from a catalog in this process."""
    if os.environ.get("MODELBUILD_DISABLE_PLUGINS", "").strip(","):
        return False
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "off", "false", "no")


# -- where it lives, and its key ------------------------------------------------------------


def _path() -> str:
    """One catalog file per interpreter (a venv), in the home's cache directory."""
    import hashlib

    home = os.environ.get("MODELBUILD_HOME")
    if not home:
        data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        home = os.path.join(data, "modelbuild")
    ident = hashlib.sha256(f"{sys.prefix}\0{sys.executable}".encode()).hexdigest()[:16]
    return os.path.join(os.path.expanduser(home), "cache", "plugins", f"{ident}.json")


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size, st.st_ino]


def installation_key() -> list[Any]:
    """What the installed distributions look like: for each ``sys.path`` entry holding any,
    their metadata directories (name and version) and the stat of each one's entry points.
    ``os.scandir`` and ``stat`` only: no metadata is parsed and ``importlib.metadata`` is not
    imported."""
    key: list[Any] = [FORMAT, sys.version, sys.prefix]
    for entry in sys.path:
        where = entry or "."
        try:
            with os.scandir(where) as it:
                names = sorted(e.name for e in it if e.name.endswith((".dist-info", ".egg-info", ".egg")))
        except NotADirectoryError:  # a zip on sys.path: its own stat stands for its content
            key.append([entry, _stat(where)])
            continue
        except OSError:
            continue
        if where.endswith(".egg"):
            names.append("EGG-INFO")
        dists = []
        for name in names:
            base = os.path.join(where, name)
            if name.endswith(".egg-info"):
                dists.append([name, _stat(os.path.join(base, "entry_points.txt")), _stat(os.path.join(base, "PKG-INFO")),
                              _stat(base)])
            elif name.endswith(".egg"):
                dists.append([name, _stat(os.path.join(base, "EGG-INFO", "entry_points.txt")), _stat(base)])
            else:
                dists.append([name, _stat(os.path.join(base, "entry_points.txt"))])
        if dists:
            key.append([os.path.abspath(where), dists])
    return key


# -- reading and writing ----------------------------------------------------------------------


def load() -> dict[str, Any] | None:
    """The catalog, when one exists and still describes this installation; else None."""
    try:
        with open(_path(), "rb") as fh:
            doc = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    if not _well_formed(doc):
        return None
    for path, stat in doc["files"]:
        if _stat(path) != stat:
            return None
    if doc["key"] != installation_key():
        return None
    return doc


def _well_formed(doc: Any) -> bool:
    """Whether *doc* has the shape :func:`describe` writes (a damaged file is no catalog)."""
    try:
        return (doc["format"] == FORMAT and isinstance(doc["key"], list)
                and all(isinstance(path, str) and isinstance(stat, list) for path, stat in doc["files"])
                and all(isinstance(p["name"], str) and isinstance(p["value"], str) and isinstance(p["dist"], str)
                        and isinstance(p["version"], str) and isinstance(p["hooks"], list) for p in doc["plugins"])
                and all(isinstance(owner, str) and isinstance(attrs, dict)
                        for kind in doc["entries"].values() for owner, attrs in kind.values()))
    except (TypeError, KeyError, ValueError, AttributeError):
        return False


def save(doc: dict[str, Any]) -> None:
    """Write the catalog atomically; a home that cannot be written is no error."""
    path = _path()
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def forget() -> None:
    """Remove the catalog (found to be out of date while it was used)."""
    try:
        os.unlink(_path())
    except OSError:
        pass


# -- the full load ----------------------------------------------------------------------------


def entry_points(group: str) -> Iterator[tuple[Any, str, str]]:
    """Every entry point of *group*, as pluggy's ``load_setuptools_entrypoints`` walks them
    (distributions in ``sys.path`` order; of two entry points with one name, the first):
    ``(entry point, distribution name, version)``."""
    import importlib.metadata

    seen: set[str] = set()
    for dist in list(importlib.metadata.distributions()):
        for ep in dist.entry_points:
            if ep.group != group or ep.name in seen:
                continue
            seen.add(ep.name)
            yield ep, dist.metadata["name"], dist.version


def load_value(value: str) -> Any:
    """What an entry point's ``module:attr.attr`` names, as ``EntryPoint.load`` finds it."""
    import importlib

    module, _, attrs = value.partition(":")
    obj = importlib.import_module(module.strip())
    for part in filter(None, attrs.split("[", 1)[0].strip().split(".")):
        obj = getattr(obj, part)
    return obj


def recordable(value: Any) -> Any:
    """A selector attribute as JSON: a string, or a list of strings; else None (not
    recorded: selecting by it imports the plugin)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def describe(pm: Any, registries: dict[str, Any], plugins: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The catalog of a fully loaded plugin manager *pm* whose core *registries* (hook name →
    registry) are filled; *plugins* the entry points it loaded, in order. None when the
    installation cannot be loaded lazily (an ordered or wrapping register hook)."""
    hooks: dict[str, list[str]] = {p["name"]: [] for p in plugins}
    for name in dir(pm.hook):
        caller = getattr(pm.hook, name)
        if not name.startswith("modelbuild_") or not hasattr(caller, "get_hookimpls"):
            continue
        for impl in caller.get_hookimpls():
            if impl.plugin_name not in hooks:
                continue
            if name in registries and (impl.tryfirst or impl.trylast or impl.hookwrapper or impl.wrapper):
                return None
            hooks[impl.plugin_name].append(name)
    entries: dict[str, dict[str, Any]] = {}
    for hook_name, registry in registries.items():
        kind: dict[str, Any] = {}
        for name in registry.names():
            item = registry.get(name)
            attrs = {a: v for a in SELECTORS.get(hook_name, ())
                     if (v := recordable(getattr(item, a, None))) is not None or not hasattr(item, a)}
            kind[name] = [registry.owner(name), attrs]
        entries[hook_name] = kind
    return {
        "format": FORMAT,
        "key": installation_key(),
        "files": _source_files(plugins),
        "plugins": [{**p, "hooks": sorted(hooks[p["name"]])} for p in plugins],
        "entries": entries,
    }


def _source_files(plugins: list[dict[str, Any]]) -> list[list[Any]]:
    """The source files of modelbuild and of the plugins' packages now imported, with their
    stat: an editable install's edit changes what plugins register without changing any
    distribution's metadata."""
    tops = {"modelbuild"} | {p["value"].partition(":")[0].strip().split(".", 1)[0] for p in plugins}
    files = []
    for name, module in list(sys.modules.items()):
        if name.split(".", 1)[0] not in tops:
            continue
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and (stat := _stat(path)) is not None:
            files.append([path, stat])
    return sorted(files)


__all__ = ["SELECTORS", "describe", "enabled", "entry_points", "forget", "installation_key", "load", "load_value",
           "recordable", "save"]
