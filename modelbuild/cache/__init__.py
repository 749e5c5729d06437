"""The build cache: the local step index, and remote caches in BuildKit's manner.

* :mod:`.index`: the step index and file-digest cache of one modelbuild home (diskcache);
* :mod:`.spec`: ``--cache-to`` / ``--cache-from`` values, parsed;
* :mod:`.record`: the cache record and the OCI manifest that carries it;
* :mod:`.backends`: where a remote cache lives (a registry repository, an OCI layout);
* :mod:`.importer`: ``--cache-from``, consulted by the solver on a local miss;
* :mod:`.exporter`: ``--cache-to``, written after a successful build;
* :mod:`.errors`: what goes wrong with a cache, in one line.

The names callers need are re-exported here, each imported on first use.
"""

from __future__ import annotations

import importlib as _importlib
from typing import Any as _Any

# Loaded on first use (PEP 562): every build needs the step index, only builds with
# --cache-to/--cache-from need the importer and exporter (and the registry client behind them).
_WHERE = {
    "CACHE_MEDIA_TYPE": "record", "BuildCache": "index", "CacheError": "errors", "CacheExporter": "exporter",
    "CacheImporter": "importer", "CacheSpec": "spec", "StaleImport": "errors", "parse_cache_spec": "spec",
    "parse_cache_specs": "spec",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> _Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'modelbuild.cache' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"modelbuild.cache.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
