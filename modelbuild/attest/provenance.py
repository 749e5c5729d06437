"""SLSA Provenance v1 for a built variant: how its manifest was derived, step by step.

The statement is an in-toto Statement v1 (``https://in-toto.io/Statement/v1``) whose
predicate is SLSA Provenance v1 (``https://slsa.dev/provenance/v1``, slsa-framework/slsa
``docs/spec/v1.0/provenance.md``):

* ``buildDefinition.buildType``: :data:`BUILD_TYPE`, documented in docs/supply-chain.md;
* ``externalParameters``: the build file (its name and sha256), the build arguments, the
  platforms asked for, the layer format and the tags;
* ``internalParameters``: ``SOURCE_DATE_EPOCH`` when it was set;
* ``resolvedDependencies``: every input file the variant read, by path and sha256; a remote
  ``FROM`` by its pinned identity; each plugin whose steps made the variant (``plugin:NAME``,
  its distribution as ``pkg:pypi/DIST@VERSION``);
* ``runDetails.builder``: modelbuild and its version, the distributions as
  ``builderDependencies``; ``byproducts``: the step graph (each
  step's op, label, plugin and version, cache key, inputs and outputs) and the readable
  chain of each weight transform, e.g. ``model.safetensors (sha256:…) → convert to gguf
  (hf-gguf 1.2.0) → quantize q4_k_m (gguf 1.2.0) → model.gguf (sha256:…)``.

Nothing machine-specific enters: no absolute path, host or user name. With
``SOURCE_DATE_EPOCH`` the statement is byte-identical on any machine (canonical JSON, sorted
keys); without it, ``finishedOn`` is the time of the build.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from modelbuild.digests import canonical_json
from modelbuild.results import ConfigBlob, FileDigest, FileSet, IndexBlob, LayerSet, ManifestBlob

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://modelbuild.dev/buildtypes/modelfile/v1"
BUILDER_ID = "pkg:pypi/modelbuild"
STEPS_MEDIA_TYPE = "application/vnd.modelbuild.steps.v1+json"


def embedded(name: str, media_type: str, data: bytes) -> dict[str, Any]:
    """A ResourceDescriptor carrying *data* itself (``content``, base64) and its digest."""
    import base64
    import hashlib

    return {"name": name, "mediaType": media_type, "content": base64.b64encode(data).decode(),
            "digest": {"sha256": hashlib.sha256(data).hexdigest()}}


def steps_of(statement: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The step records a provenance carries (its ``steps`` byproduct), or None."""
    import base64
    import json

    try:
        products = statement["predicate"]["runDetails"].get("byproducts", [])
        for product in products:
            if product.get("name") == "steps" and product.get("mediaType") == STEPS_MEDIA_TYPE and "content" in product:
                steps = json.loads(base64.b64decode(product["content"], validate=True))
                return steps if isinstance(steps, list) else None
    except (KeyError, TypeError, AttributeError, ValueError):  # not a provenance this modelbuild wrote
        return None
    return None


def sha(digest: str) -> dict[str, str]:
    """``sha256:<hex>`` → an in-toto DigestSet."""
    algorithm, _, value = digest.partition(":")
    return {algorithm: value}


def closure(graph: Any, top: str) -> list[str]:
    """Every step *top* depends on, itself included, in the graph's order."""
    seen: set[str] = set()
    stack = [top]
    while stack:
        sid = stack.pop()
        if sid not in seen:
            seen.add(sid)
            stack.extend(graph.deps[sid])
    return [sid for sid in graph.order if sid in seen]


def outputs(result: Any) -> list[dict[str, Any]]:
    """What a step produced, as ResourceDescriptor-shaped dicts (name and digest)."""
    if isinstance(result, FileDigest):
        return [{"name": result.path + ("/" if result.is_dir else ""), "digest": sha(result.digest)}]
    if isinstance(result, FileSet):
        return [{"name": f.path, "digest": sha(f.digest)} for f in result.files]
    if isinstance(result, LayerSet):
        return [{"name": layer.path, "digest": sha(layer.descriptor.digest)} for layer in result.layers]
    if isinstance(result, (ConfigBlob, ManifestBlob, IndexBlob)):
        return [{"name": result.descriptor.media_type, "digest": sha(result.descriptor.digest)}]
    return []


class Recorder:
    """What a build knows that its provenance needs, gathered once per build."""

    def __init__(self, *, graph: Any, results: Mapping[str, Any], keys: Mapping[str, str], host: Any, desc: Any,
                 build_file: Mapping[str, Any], build_args: Mapping[str, str], platforms: Sequence[str],
                 layer_format: str, tags: Sequence[str], created: str | None, epoch: int | None) -> None:
        self.graph, self.results, self.keys, self.host, self.desc = graph, results, keys, host, desc
        self.build_file, self.build_args, self.platforms = build_file, build_args, platforms
        self.layer_format, self.tags, self.created, self.epoch = layer_format, tags, created, epoch
        self.numbers = {sid: i + 1 for i, sid in enumerate(graph.order)}
        self._dists: dict[str, tuple[str, str]] | None = None

    # -- the parts ------------------------------------------------------------------------
    def dists(self) -> dict[str, tuple[str, str]]:
        """Plugin name → (distribution, version), read once per build: reading every
        distribution's metadata takes tens of milliseconds each time."""
        if self._dists is None:
            self._dists = {info.name: (info.distribution, info.version) for info in self.host.infos()}
        return self._dists

    def plugin(self, step: Any) -> tuple[str, str]:
        """The plugin that did *step* and its distribution's version."""
        owner = step.plugin
        if owner == "modelbuild":
            from modelbuild import __version__

            return owner, __version__
        known = self.dists().get(owner)
        return owner, known[1] if known else self.host.plugin_version(owner)

    def plugins(self, steps: Iterable[str]) -> list[tuple[str, str, str]]:
        """(plugin, distribution, version) of each plugin that did one of *steps*, sorted."""
        from modelbuild import __version__

        dists = self.dists()
        found = set()
        for sid in steps:
            owner = self.graph.step(sid).plugin
            if owner == "modelbuild":
                found.add(("modelbuild", "modelbuild", __version__))
            else:
                known = dists.get(owner)  # not dists.get(owner, default): the default would be read every time
                found.add((owner, *(known or (owner, self.host.plugin_version(owner)))))
        return sorted(found)

    def distributions(self, steps: Iterable[str]) -> list[dict[str, Any]]:
        """The distributions those plugins come from (each once), as ResourceDescriptors."""
        from modelbuild import __version__

        found = {("modelbuild", __version__)} | {(dist, version) for _, dist, version in self.plugins(steps)}
        return [{"uri": f"pkg:pypi/{name}@{version}", "name": name, "annotations": {"version": version}}
                for name, version in sorted(found)]

    def plugin_dependencies(self, steps: Iterable[str]) -> list[dict[str, Any]]:
        """Each plugin that did a step, as a ResourceDescriptor naming its distribution."""
        return [{"uri": f"pkg:pypi/{dist}@{version}", "name": f"plugin:{plugin}",
                 "annotations": {"plugin": plugin, "distribution": dist, "version": version}}
                for plugin, dist, version in self.plugins(steps)]

    def step_record(self, sid: str) -> dict[str, Any]:
        step = self.graph.step(sid)
        plugin, version = self.plugin(step)
        label = step.label
        if step.op == "source" and "identity" not in step.params:
            label = "load build context"  # its path is this machine's, and no part of what was built
        record: dict[str, Any] = {"number": self.numbers[sid], "id": step.id, "op": step.op, "label": label,
                                  "plugin": plugin, "pluginVersion": version,
                                  "inputs": [self.numbers[d] for d in self.graph.deps[sid]],
                                  "outputs": outputs(self.results.get(sid))}
        if step.op != "source" or "identity" in step.params:  # a local context's root is this machine's path
            record["params"] = step.params  # with op, plugin and platform: the step's whole definition
        if step.platform:
            record["platform"] = step.platform
        if step.op == "transform":
            record["transform"] = {k: v for k, v in step.params.items() if k in ("action", "arg", "plugin", "options")}
        if sid in self.keys:
            record["key"] = self.keys[sid]
        if step.stage:
            record["stage"] = step.stage
        return record

    def inputs(self, steps: Iterable[str]) -> list[dict[str, Any]]:
        """The files of the context the steps read, by path and digest."""
        out = []
        for sid in steps:
            result = self.results.get(sid)
            if self.graph.step(sid).op == "digest" and isinstance(result, FileDigest):
                entry: dict[str, Any] = {"name": result.path, "digest": sha(result.digest)}
                if result.is_dir:
                    entry["annotations"] = {"directory": True, "files": [
                        {"name": m.name, "digest": sha(m.digest)} for m in result.members if m.kind == "file"]}
                out.append(entry)
        return out

    def source(self) -> list[dict[str, Any]]:
        """A remote FROM, by the identity it was pinned to."""
        opened = getattr(self.desc, "source", None)
        if opened is None or opened.pin is None:
            return []
        identity = opened.pin.identity
        entry: dict[str, Any] = {"uri": identity, "annotations": {"source": opened.source}}
        pinned = opened.pin.revision or (identity.rsplit("@", 1)[1] if "@sha256:" in identity else "")
        if "#sha256=" in identity:  # a checksum-pinned URL
            pinned = "sha256:" + identity.split("#sha256=", 1)[1].split("&", 1)[0]
        if pinned:
            algorithm, _, value = pinned.partition(":")
            entry["digest"] = {algorithm: value} if value else {"gitCommit": pinned}
        return [entry]

    def chains(self, steps: Sequence[str]) -> list[str]:
        """Each run of weight transforms as one readable line: inputs → steps → outputs."""
        out = []
        transforms = [sid for sid in steps if self.graph.step(sid).op == "transform"]
        heads = [sid for sid in transforms
                 if not any(self.graph.step(d).op == "transform" for d in self.graph.deps[sid])]
        for head in heads:
            chain, sid = [head], head
            while True:
                nxt = [s for s in transforms if sid in self.graph.deps[s]]
                if not nxt:
                    break
                sid = nxt[0]
                chain.append(sid)
            sources = [r for d in self.graph.deps[head] if self.graph.step(d).op == "digest"
                       and isinstance(r := self.results.get(d), FileDigest) and r.kind == "model" and not r.is_dir]
            parts = [" + ".join(f"{f.path} ({f.digest})" for f in sources) or "the model set"]
            for sid in chain:
                step = self.graph.step(sid)
                plugin, version = self.plugin(step)
                action, arg = step.params["action"], step.params["arg"]
                what = {"convert": f"convert to {arg}", "merge": "merge shards", "shard": f"shard {arg}"}.get(
                    action, f"quantize {arg}")  # Transform.label, without the stage's tag
                parts.append(f"{what} ({plugin} {version})")
            last = self.results.get(chain[-1])
            if isinstance(last, FileSet):
                parts.append(" + ".join(f"{f.path} ({f.digest})" for f in last.files if f.kind == "model")
                             or "no weights")
            out.append(" → ".join(parts))
        return out

    # -- the statement ----------------------------------------------------------------------
    def statement(self, subject_name: str, subject_digest: str, top: str) -> dict[str, Any]:
        steps = closure(self.graph, top)
        external: dict[str, Any] = {"buildFile": dict(self.build_file), "layerFormat": self.layer_format}
        if self.build_args:
            external["buildArgs"] = dict(sorted(self.build_args.items()))
        if self.platforms:
            external["platforms"] = list(self.platforms)
        if self.tags:
            external["tags"] = list(self.tags)
        definition: dict[str, Any] = {
            "buildType": BUILD_TYPE,
            "externalParameters": external,
            "resolvedDependencies": self.inputs(steps) + self.source() + self.plugin_dependencies(steps),
        }
        if self.epoch is not None:
            definition["internalParameters"] = {"SOURCE_DATE_EPOCH": self.epoch}
        from modelbuild import __version__

        finished = self.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        byproducts = [embedded("steps", STEPS_MEDIA_TYPE, canonical_json([self.step_record(sid) for sid in steps]))]
        chains = self.chains(steps)
        if chains:
            byproducts.append({**embedded("transforms", "text/plain; charset=utf-8",
                                          "\n".join(chains).encode() + b"\n"), "annotations": {"chains": chains}})
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": subject_name, "digest": sha(subject_digest)}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "buildDefinition": definition,
                "runDetails": {
                    "builder": {"id": BUILDER_ID, "version": {"modelbuild": __version__},
                                "builderDependencies": self.distributions(steps)},
                    "metadata": {"finishedOn": finished},
                    "byproducts": byproducts,
                },
            },
        }
