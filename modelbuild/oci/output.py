"""A build's registry outputs: ``--output type=registry[,name=REF]`` and ``--push`` (buildx's
shorthand for it). Where the result goes, whether its layers stream there from the build
context (:mod:`modelbuild.oci.stream`), the push itself, and what the store's tags become.

The rules (docs/registry.md, "Pushing without a second copy"):

* ``name=`` (buildx's key) or ``ref=`` (``--cache-to``'s) name the destinations, several in one
  quoted CSV field (``"name=A,B"``); an output naming none goes to every ``-t`` that names a
  registry. With named destinations and no ``-t``, the build sets no tag from NAME.
* The layers stream (large raw files go from the context to the registry, never into the
  store) when nothing else asks for the bytes here: no other ``--output``, no ``--cache-to``,
  no tag that names no registry. Otherwise the build stores everything as any build does and
  pushes from the store.
* The push comes after every step, export and attestation, before any tag moves: every
  destination's blobs first, then its manifests and tags
  (:func:`modelbuild.oci.push.push_outputs`), so a push that fails leaves every tag, in the
  store and in the registries, as it was.
* The store is tagged only with what it holds whole (a tag promises ``run``, ``push`` and
  ``pull -o`` every blob): a streamed build whose layers are not all stored sets no local tag,
  and removes a local tag of a pushed name that named another artifact (it would lie).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from modelbuild.errors import UsageError

REGISTRY_KEYS = ("type", "name", "ref", "push", "plain-http", "insecure")


def parse_registry_output(spec: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """``type=registry[,name=REF…]``'s fields (read by :func:`modelbuild.build.parse_output`)
    as ``{"type": "registry", "names": [...], "plain_http": bool, "insecure": bool}``.
    ``push`` may only be ``true`` (it is implied); ``plain-http`` and ``insecure`` are
    ``--plain-http`` and ``--insecure`` for these registries. Names are checked now, before
    any work: registry references with a tag, normalised."""
    from modelbuild.oci.reference import parse_reference
    from modelbuild.oci.reference import names_registry

    unknown = sorted(set(fields) - set(REGISTRY_KEYS))
    if unknown:
        raise UsageError(f"--output {spec!r}: unknown key {unknown[0]!r}", hint=f"keys: {', '.join(REGISTRY_KEYS)}")
    flags = {}
    for key in ("push", "plain-http", "insecure"):
        value = fields.get(key, "true" if key == "push" else "false").lower()
        if value not in ("true", "false") or (key == "push" and value != "true"):
            raise UsageError(f"--output {spec!r}: {key}={fields[key]!r}",
                             hint="type=registry always pushes" if key == "push" else "true or false")
        flags[key] = value == "true"
    names: list[str] = []
    for key in ("name", "ref"):
        for name in fields.get(key, "").split(","):
            if not name.strip():
                continue
            ref = parse_reference(name.strip())
            if not names_registry(str(ref)) or ref.digest:
                raise UsageError(f"--output {spec!r}: {name.strip()!r} is not a registry tag",
                                 hint="name=registry.example.com/team/model:tag")
            if str(ref) not in names:
                names.append(str(ref))
    if ("name" in fields or "ref" in fields) and not names:
        raise UsageError(f"--output {spec!r}: {'name' if 'name' in fields else 'ref'}= names nothing")
    return {"type": "registry", "names": names, "plain_http": flags["plain-http"], "insecure": flags["insecure"]}


def registry_targets(outputs: Sequence[Mapping[str, Any]], tags: Sequence[str]) -> list[str]:
    """Where the registry *outputs* push: their names, or the *tags* that name a registry for
    one that names none; each once, in order. One with nowhere to go is a usage error."""
    from modelbuild.oci.reference import names_registry

    targets: list[str] = []
    for output in outputs:
        if output["type"] != "registry":
            continue
        names = output["names"] or [t for t in tags if names_registry(t)]
        if not names:
            raise UsageError("--output type=registry needs a name that names a registry",
                             hint="add name=registry.example.com/team/model:tag, or -t with such a reference")
        targets.extend(n for n in names if n not in targets)
    return targets


class RegistryOutputs:
    """The registry outputs of one build: a client per registry host (closed by
    :meth:`close`), and, when the layers stream, the build's
    :class:`~modelbuild.oci.stream.SourceBlobs`."""

    def __init__(self, outputs: Sequence[Mapping[str, Any]], tags: Sequence[str], *, plain_http: bool = False,
                 insecure: bool = False) -> None:
        self.outputs = list(outputs)
        self.tags = list(tags)  # what the build tags (-t, else NAME)
        self.targets = registry_targets(self.outputs, self.tags)
        registry_outputs = [o for o in self.outputs if o["type"] == "registry"]
        self.plain_http = plain_http or any(o["plain_http"] for o in registry_outputs)
        self.insecure = insecure or any(o["insecure"] for o in registry_outputs)
        self.registries: dict[str, Any] = {}
        self.sources: Any = None

    def open(self, cache: Any, *, cache_to: Sequence[Any] = ()) -> Any:
        """Open a client per host; return the :class:`~modelbuild.oci.stream.SourceBlobs` the
        ops stream through, or None when something asks for the bytes here too (another
        ``--output``, a ``--cache-to`` export, a tag that names no registry) or nothing is
        pushed. *cache* is the build's stat cache."""
        if not self.targets:
            return None
        from modelbuild.oci.reference import names_registry
        from modelbuild.oci.transfer import open_registry, remote_ref

        for target in self.targets:
            host = remote_ref(target)[0]
            if host not in self.registries:
                self.registries[host] = open_registry(host, plain_http=self.plain_http, insecure=self.insecure)
        if not self.targets or cache_to or any(o["type"] != "registry" for o in self.outputs):
            return None
        if not all(names_registry(t) for t in self.tags):
            return None
        from modelbuild.oci.stream import SourceBlobs

        host, repo, _, _ = remote_ref(self.targets[0])
        self.sources = SourceBlobs(self.registries[host], repo, cache)
        return self.sources

    @contextlib.contextmanager
    def login_hints(self) -> Iterator[None]:
        """``modelbuild login`` in the hint of an authentication failure while the steps stream."""
        if len(self.registries) != 1:
            yield
            return
        from modelbuild.oci.transfer import login_hint

        with login_hint(next(iter(self.registries))):
            yield

    def pairs(self, graph: Any, results: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """(reference, descriptor) for each push: every target names the result, and with
        TARGET stages ``TARGET-STAGE`` names each stage's manifest, as the store's tags do."""
        if not self.targets:
            return []
        from modelbuild.ops.artifact import tag_entries

        stages = graph.step(graph.export).params.get("stages", [])
        manifests = [results[v.manifest].descriptor.to_oci() for v in graph.variants] if stages else []
        return tag_entries(list(self.targets), stages, results[graph.top].descriptor.to_oci(), manifests)

    def push(self, store: Any, pairs: list[tuple[str, dict[str, Any]]], *, jobs: int | None, emitter: Any,
             first_number: int) -> list[dict[str, Any]]:
        """Push every pair (:func:`~modelbuild.oci.push.push_outputs`), progress numbered from
        *first_number*; one summary per reference."""
        from modelbuild.oci.push import push_outputs
        from modelbuild.oci.transfer import DEFAULT_JOBS, Steps

        return push_outputs(store, pairs, self.registries, jobs=jobs or DEFAULT_JOBS,
                            progress=Steps(emitter, first_number), sources=self.sources)

    def settle_tags(self, store: Any, pairs: Sequence[tuple[str, Mapping[str, Any]]], tagged: bool,
                    emitter: Any) -> None:
        """After a streamed push that set no local tag (*tagged* false): a tag of the store
        with a pushed name that names something else would now say the wrong thing; remove
        it, saying so."""
        if self.sources is None or tagged:
            return
        current = store.tags()
        for ref, descriptor in pairs:
            old = current.get(ref)
            if old is not None and old["digest"] != descriptor["digest"]:
                store.untag(ref)
                emitter.warn(f"the local tag {ref} named {old['digest']}, not what was pushed; removed it (the store "
                             f"does not hold the pushed artifact's layers: `modelbuild pull {ref}` fetches them)")

    def close(self) -> None:
        for registry in self.registries.values():
            registry.close()


__all__ = ["REGISTRY_KEYS", "RegistryOutputs", "parse_registry_output", "registry_targets"]
