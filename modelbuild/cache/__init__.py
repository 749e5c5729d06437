"""The build cache: the local step index, and remote caches in BuildKit's manner.

* :mod:`.index`: the step index and file-digest cache of one modelbuild home (diskcache);
* :mod:`.spec`: ``--cache-to`` / ``--cache-from`` values, parsed;
* :mod:`.record`: the cache record and the OCI manifest that carries it;
* :mod:`.backends`: where a remote cache lives (a registry repository, an OCI layout);
* :mod:`.importer`: ``--cache-from``, consulted by the solver on a local miss;
* :mod:`.exporter`: ``--cache-to``, written after a successful build;
* :mod:`.errors`: what goes wrong with a cache, in one line.

The names callers need are re-exported here.
"""

from __future__ import annotations

from modelbuild.cache.errors import CacheError, StaleImport
from modelbuild.cache.exporter import CacheExporter
from modelbuild.cache.importer import CacheImporter
from modelbuild.cache.index import BuildCache
from modelbuild.cache.record import CACHE_MEDIA_TYPE
from modelbuild.cache.spec import CacheSpec, parse_cache_spec, parse_cache_specs

__all__ = ["CACHE_MEDIA_TYPE", "BuildCache", "CacheError", "CacheExporter", "CacheImporter", "CacheSpec",
           "StaleImport", "parse_cache_spec", "parse_cache_specs"]
