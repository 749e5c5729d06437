"""``verify --rebuild``: derive a variant again from its provenance and compare, step by step.

The provenance's ``steps`` byproduct holds each step's whole definition (op, plugin,
platform, parameters) and what it produced. A rebuild:

1. puts the context files the provenance names (by path and sha256) in a scratch directory:
   from the local store when it holds the blob, else from ``--context DIR`` when the file
   there has that digest, else from the remote ``FROM`` the provenance pins (fetched by its
   identity);
2. runs the recorded steps again with the installed plugins, in a scratch home (an empty
   store and cache: nothing is reused, every step runs);
3. compares every step's outputs with the recorded ones, in order, and the manifest digest
   with the subject's. The first step whose outputs differ is named, with the plugin
   version recorded and the one installed.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelbuild.errors import BuildError, ModelbuildError

from . import provenance


class RebuildError(ModelbuildError):
    """A rebuild that could not run (an input missing, a provenance that cannot be read)."""

    exit_code = 1


@dataclass
class Outcome:
    """What a rebuild found for one subject."""

    subject: str
    ok: bool
    steps: int
    first_difference: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "ok": self.ok, "steps": self.steps,
                **({"firstDifference": self.first_difference} if self.first_difference else {}),
                **({"notes": self.notes} if self.notes else {})}


def statement_of(store: Any, subject: str) -> dict[str, Any] | None:
    """The provenance statement recorded for *subject* in *store* (the latest), or None."""
    from modelbuild.attest import ANN_PREDICATE, DSSE_MEDIA_TYPE

    import base64

    for entry in reversed(store.list_referrers(subject)):
        if (entry.get("annotations") or {}).get(ANN_PREDICATE) != provenance.PREDICATE_TYPE:
            continue
        try:
            manifest = store.read_json(entry["digest"], entry["size"])
            (layer,) = manifest["layers"]
            data = store.read_blob(layer["digest"], layer["size"])
            if layer["mediaType"] == DSSE_MEDIA_TYPE:
                data = base64.b64decode(json.loads(data)["payload"], validate=True)
            statement = json.loads(data)
            if statement.get("predicateType") == provenance.PREDICATE_TYPE and \
                    statement["subject"][0]["digest"].get("sha256") == subject.split(":", 1)[1]:
                return statement
        except (ModelbuildError, KeyError, TypeError, ValueError, AttributeError, IndexError):
            continue  # a damaged or foreign referrer: look at the next
    return None


def rebuild(store: Any, subject: str, *, context: Path | None = None, host: Any = None, jobs: int = 2) -> Outcome:
    """Rebuild *subject* from its provenance in *store*; see the module docstring."""
    statement = statement_of(store, subject)
    if statement is None:
        raise RebuildError(f"{subject} has no provenance in the store",
                           hint="build it with --attest provenance, or pull it with its referrers")
    records = _steps(statement)
    predicate = statement["predicate"]
    scratch = Path(tempfile.mkdtemp(prefix="modelbuild-rebuild-"))
    try:
        ctx = scratch / "context"
        ctx.mkdir()
        notes = _context(store, predicate, records, ctx, context)
        graph = _graph(records, ctx)
        results = _run(graph, scratch / "home", host, jobs)
        return _compare(subject, records, graph, results, host, notes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _steps(statement: Mapping[str, Any]) -> list[dict[str, Any]]:
    steps = provenance.steps_of(statement)
    if steps and all(isinstance(s, dict) and "id" in s and ("params" in s or s.get("op") == "source") for s in steps):
        return steps
    raise RebuildError("the provenance records no step definitions to run again",
                       hint="it was written by an older modelbuild: build again with --attest provenance")


def _context(store: Any, predicate: Mapping[str, Any], records: Sequence[Mapping[str, Any]], ctx: Path,
             given: Path | None) -> list[str]:
    """Every context file the digest steps read, put in *ctx* from wherever it can be found."""
    notes: list[str] = []
    remote = [d for d in predicate["buildDefinition"]["resolvedDependencies"]
              if d.get("uri") and not d["uri"].startswith("pkg:")]
    snapshot: Path | None = None
    for record in records:
        if record["op"] != "digest":
            continue
        params = record["params"]
        if params["is_dir"]:
            files = [(f"{params['path']}/{f['name']}", "sha256:" + f["digest"]["sha256"])
                     for d in predicate["buildDefinition"]["resolvedDependencies"]
                     if d.get("name") == params["path"] for f in (d.get("annotations") or {}).get("files", [])]
        else:
            files = [(params["path"], "sha256:" + record["outputs"][0]["digest"]["sha256"])]
        for path, digest in files:
            target = ctx / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if store.has_blob(digest):
                shutil.copyfile(store.blob_path(digest), target)
                continue
            if given is not None and _digest_of(given / path) == digest:
                shutil.copyfile(given / path, target)
                continue
            if remote and snapshot is None:
                snapshot = _fetch(remote[0]["uri"])
            if snapshot is not None and _digest_of(snapshot / path) == digest:
                shutil.copyfile(snapshot / path, target)
                continue
            raise RebuildError(f"input {path} ({digest}) is not in the store"
                               + (f", in {given}" if given else "") + (" or its source" if remote else ""),
                               hint="pass --context DIR, the directory the build read")
    return notes


def _digest_of(path: Path) -> str | None:
    from modelbuild.storage.files import sha256_file

    try:
        return sha256_file(path)[0]
    except BuildError:  # unreadable: copy_stream's one line
        return None


def _fetch(identity: str) -> Path:
    from modelbuild.plugins import make_plugin_manager

    return make_plugin_manager().sources.open(identity, base_dir=Path.cwd()).root


def _graph(records: Sequence[Mapping[str, Any]], ctx: Path) -> Any:
    """The recorded steps as a graph, the source step reading *ctx*."""
    from modelbuild.graph import BuildGraph, Step

    graph = BuildGraph()
    by_number: dict[int, Step] = {}
    for record in records:
        params = dict(record.get("params") or {})
        if record["op"] == "source":
            params["root"] = str(ctx)
        step = Step.make(record["id"], record["op"], record["label"], params, plugin=record["plugin"],
                         platform=record.get("platform"), stage=record.get("stage"))
        by_number[record["number"]] = graph.add(step, [by_number[n] for n in record["inputs"]])
    return graph


def _run(graph: Any, home: Path, host: Any, jobs: int) -> dict[str, Any]:
    from modelbuild.cache import BuildCache
    from modelbuild.ops import ExecEnv
    from modelbuild.plugins import make_plugin_manager
    from modelbuild.progress import Emitter, QuietRenderer
    from modelbuild.solver import Solver
    from modelbuild.store import Store

    store = Store(home / "store").ensure()
    cache = BuildCache(home / "cache")
    emitter = Emitter(QuietRenderer(io.StringIO()))
    try:
        env = ExecEnv(store=store, cache=cache, host=host or make_plugin_manager(), emitter=emitter, no_cache=True,
                      jobs=jobs)
        return Solver(graph, env, jobs=jobs).solve()
    finally:
        cache.close()
        emitter.close()


def _compare(subject: str, records: Sequence[Mapping[str, Any]], graph: Any, results: Mapping[str, Any], host: Any,
             notes: list[str]) -> Outcome:
    from modelbuild import __version__
    from modelbuild.plugins import make_plugin_manager

    host = host or make_plugin_manager()
    for record in records:
        got = provenance.outputs(results.get(record["id"]))
        if record["op"] == "source" or got == record["outputs"]:
            continue
        plugin = record["plugin"]
        now = __version__ if plugin == "modelbuild" else host.plugin_version(plugin)
        want = {o["name"]: o["digest"] for o in record["outputs"]}
        have = {o["name"]: o["digest"] for o in got}
        differing = sorted(n for n in set(want) | set(have) if want.get(n) != have.get(n))
        return Outcome(subject, False, len(records), {
            "number": record["number"], "label": record["label"], "plugin": plugin,
            "recordedVersion": record["pluginVersion"], "installedVersion": now, "outputs": differing,
            "recorded": [want.get(n) for n in differing], "rebuilt": [have.get(n) for n in differing]}, notes)
    last = records[-1]
    rebuilt = provenance.outputs(results.get(last["id"]))
    digest = rebuilt[0]["digest"]["sha256"] if rebuilt else ""
    return Outcome(subject, digest == subject.split(":", 1)[1], len(records), None, notes)


def describe_failure(outcome: Outcome) -> str:
    """One line for a rebuild that differs: the first step and how."""
    d = outcome.first_difference or {}
    versions = (f"{d['plugin']} {d['recordedVersion']}" if d.get("recordedVersion") == d.get("installedVersion")
                else f"{d['plugin']} {d.get('recordedVersion')} recorded, {d.get('installedVersion')} installed")
    return (f"{outcome.subject}: rebuilt differently from step #{d.get('number')} {d.get('label')} ({versions}): "
            f"{', '.join(d.get('outputs', []))} differ")


__all__ = ["Outcome", "RebuildError", "describe_failure", "rebuild", "statement_of"]
