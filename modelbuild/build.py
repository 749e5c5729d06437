"""The library entry point of a build: Modelfile → description → DAG → solver → store.

``modelbuild.build.build(...)`` is what the CLI calls, and what scripts and tests may call
directly; it returns a :class:`BuildResult` rather than printing.

Tags are the build's last act: every step, every ``--output`` and every ``--cache-to``
export succeeds first, then all the tags move in one rewrite of the store's ``index.json``.
A build that fails anywhere leaves every tag as it was.

Labels and annotations (``--label``, ``--annotation``: :mod:`modelbuild.annotations`) are
placed here, once the stages are known, so the planner receives each manifest's, the
index's and each index entry's annotations ready to write.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from modelbuild.errors import UsageError
from modelbuild.progress import Emitter, Renderer


@dataclass
class BuildResult:
    digest: str
    descriptor: dict[str, Any]
    tags: list[str]
    layers: list[dict[str, Any]]
    config: dict[str, Any]
    stats: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    variants: list[dict[str, Any]] = field(default_factory=list)  # one per TARGET stage
    config_digest: str | None = None  # the config blob's, for a build of one manifest
    attestations: list[dict[str, Any]] = field(default_factory=list)  # --attest: one per kind and manifest
    pushed: list[dict[str, Any]] | None = None  # --push / --output type=registry: one summary per reference

    def as_dict(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "mediaType": self.descriptor["mediaType"],
            "size": self.descriptor["size"],
            "tags": self.tags,
            "config": self.config,
            "layers": self.layers,
            "stats": self.stats,
            "warnings": self.warnings,
            **({"variants": self.variants} if self.variants else {}),
            **({"attestations": self.attestations} if self.attestations else {}),
            **({"pushed": self.pushed} if self.pushed is not None else {}),
        }


def source_date_epoch() -> tuple[str | None, int]:
    """``SOURCE_DATE_EPOCH`` as (RFC 3339 createdAt, integer epoch); (None, 0) when unset."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if not raw:
        return None, 0
    try:
        epoch = int(raw)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH must be an integer, got {raw!r}") from None
    from modelbuild.ops.layers import rfc3339

    return rfc3339(epoch), epoch


OUTPUT_TYPES = ("local", "oci", "registry")
OUTPUT_HINT = "use -o DIR, type=local|oci,dest=DIR or type=registry[,name=REF]"


def parse_output(spec: str) -> dict[str, Any]:
    """BuildKit's ``--output``: ``type=local,dest=DIR`` (the artifact's files, as ``pull -o``
    writes them), ``type=oci,dest=DIR`` (an OCI image layout), ``type=registry`` (pushed; see
    :mod:`modelbuild.oci.output`); a bare ``DIR`` means ``type=local,dest=DIR``, as it does for
    ``docker buildx build -o DIR``. Read as CSV, as buildx reads it: ``"name=A,B"`` in
    quotes is one field holding two names."""
    import csv

    if "=" not in spec:
        if not spec:
            raise UsageError("--output needs a directory", hint=OUTPUT_HINT)
        return {"type": "local", "dest": str(Path(spec).resolve())}
    fields: dict[str, str] = {}
    try:
        parts = next(csv.reader([spec], skipinitialspace=True), [])
    except csv.Error:
        raise UsageError(f"bad --output {spec!r}", hint=OUTPUT_HINT) from None
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq:
            raise UsageError(f"bad --output {spec!r}", hint=OUTPUT_HINT)
        fields[key.strip()] = value.strip()
    kind = fields.get("type", "local")
    if kind not in OUTPUT_TYPES:
        raise UsageError(f"unsupported output type {kind!r}",
                         hint="supported: local (the files), oci (an OCI layout), registry (pushed)")
    if kind == "registry":
        from modelbuild.oci.output import parse_registry_output

        return parse_registry_output(spec, fields)
    if not fields.get("dest"):
        raise UsageError(f"--output {spec!r} needs dest=DIR")
    unknown = sorted(set(fields) - {"type", "dest"})
    if unknown:
        raise UsageError(f"--output {spec!r}: unknown key {unknown[0]!r}", hint="keys: type, dest")
    return {"type": kind, "dest": str(Path(fields["dest"]).resolve())}


def prepare(
    modelfile: str,
    *,
    host: Any = None,
    context: Path | None = None,
    build_args: Mapping[str, str] | None = None,
    tags: Sequence[str] = (),
    outputs: Sequence[str] = (),
    layer_format: str = "raw",
    platforms: Sequence[str] = (),
    labels: Sequence[str] = (),
    annotations: Sequence[str] = (),
    excludes: Sequence[str] = (),
) -> tuple[Any, Any, Any]:
    """Everything up to the graph: plugins, frontend, tags, options, plan. Reads no weights.
    *labels* and *annotations* are ``--label`` / ``--annotation`` values (``KEY=VALUE``);
    *excludes* are ``--exclude`` patterns, applied after the context's ignore file."""
    from modelbuild.frontend import load_description
    from modelbuild.frontend.resolve import resolve
    from modelbuild.ignore import command_line, parse_excludes
    from modelbuild.oci.reference import parse_reference
    from modelbuild.planner import BuildOptions, plan
    from modelbuild.plugins import make_plugin_manager

    # the command line first: a bad -t, --output or --annotation is reported before the Modelfile is read
    refs = [str(parse_reference(t)) for t in tags]
    parsed_outputs = tuple(parse_output(o) for o in outputs)
    named = any(o["type"] == "registry" and o["names"] for o in parsed_outputs)  # then no default tag, as buildx
    from modelbuild.annotations import parse_annotations, parse_labels, place_annotations

    label_map, parsed_annotations = parse_labels(labels), parse_annotations(annotations)
    exclude_rules = parse_excludes(excludes)
    host = host or make_plugin_manager()
    host.codecs.get(layer_format)  # a clear error before any work
    with command_line(exclude_rules):  # the frontend and resolve read the context's rules
        desc = load_description(modelfile, host=host, build_args=build_args, context=context)
        if context is not None and desc.context != context.resolve():
            desc = _with_warning(desc, f"the Modelfile's FROM ({desc.context}) overrides the CONTEXT argument "
                                       f"({context})")
        if not refs and desc.name and not named:
            refs = [default_tag(desc)]
        created, epoch = source_date_epoch()
        resolved = resolve(desc, host, platforms=platforms)
    _check_stage_tags(refs, resolved)
    options = BuildOptions(
        layer_format=layer_format,
        tags=tuple(refs),
        outputs=tuple(o for o in parsed_outputs if o["type"] != "registry"),  # pushed by build(), after the graph
        created=created,
        epoch=epoch,
        **place_annotations(label_map, parsed_annotations, resolved),
    )
    return host, desc, plan(resolved, options)


def _check_stage_tags(refs: Sequence[str], resolved: Any) -> None:
    """Each variant of a multi-platform build is tagged ``TAG-STAGE`` too: that must still
    be a tag (at most 128 characters), checked before any work."""
    from modelbuild.oci.reference import parse_reference

    for ref in refs:
        tag = parse_reference(ref).tag or "latest"
        for v in resolved.variants:
            if v.stage is not None and len(f"{tag}-{v.stage}") > 128:
                raise UsageError(f"tag {ref!r}: its variant tag '{tag}-{v.stage}' is longer than 128 characters",
                                 hint="use a shorter tag or stage name (TARGET … AS NAME)")


def default_tag(desc: Any) -> str:
    """The tag of a build without ``-t``: the NAME, a valid reference itself; a
    Modelfile error at NAME's value when it is not (nothing is folded into a tag)."""
    from modelbuild.errors import ModelfileError
    from modelbuild.oci.reference import reference_from_name

    try:
        return str(reference_from_name(desc.name))
    except UsageError as exc:
        raise ModelfileError(exc.message, desc.name_origin, hint=exc.hint) from None


def _with_warning(desc: Any, warning: str) -> Any:
    import dataclasses

    return dataclasses.replace(desc, warnings=(*desc.warnings, warning))


def _variants(store: Any, graph: Any, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Digest, config and layers of each manifest the build wrote, read back verified."""
    variants = []
    for v in graph.variants:
        manifest, config = results[v.manifest].descriptor, results[v.config].descriptor
        variants.append({
            "stage": v.stage,
            "digest": manifest.digest,
            "config": store.read_json(config.digest, config.size),
            "layers": store.read_json(manifest.digest, manifest.size).get("layers", []),
        })
    return variants


def build(
    modelfile: str,
    *,
    home: Path,
    context: Path | None = None,
    build_args: Mapping[str, str] | None = None,
    tags: Sequence[str] = (),
    outputs: Sequence[str] = (),
    layer_format: str = "raw",
    jobs: int | None = None,
    renderer: Renderer | None = None,
    no_cache: bool = False,
    host: Any = None,
    platforms: Sequence[str] = (),
    cache_to: Sequence[Any] = (),
    cache_from: Sequence[Any] = (),
    labels: Sequence[str] = (),
    annotations: Sequence[str] = (),
    excludes: Sequence[str] = (),
    attest: Sequence[str] = (),
    sign: Any = None,
    executor: str | None = None,
    plain_http: bool = False,
    insecure: bool = False,
) -> BuildResult:
    """Build; *cache_to* / *cache_from* are ``--cache-to`` / ``--cache-from`` values (strings
    or parsed :class:`modelbuild.cache.CacheSpec`), see :mod:`modelbuild.cache`. *attest*
    names the attestations to attach (:mod:`modelbuild.attest`: ``provenance``, ``sbom``);
    *sign*, when given, turns each statement's bytes into a signed DSSE envelope.

    *outputs* of ``type=registry`` (``--push`` is one) are pushed once every step, export
    and attestation succeeded, before any tag moves; *plain_http* and *insecure* are for
    those registries. When nothing else needs the bytes here (no other output, no
    *cache_to*, every tag names a registry), large raw layers stream from the context's
    files to the registry and are never copied into the store (:mod:`modelbuild.oci.stream`);
    the store is then tagged only if it holds the whole artifact anyway (see
    docs/registry.md, "Pushing without a second copy")."""
    from modelbuild.cache import BuildCache
    from modelbuild.ops import ExecEnv
    from modelbuild.progress import PlainRenderer
    from modelbuild.solver import Solver
    from modelbuild.store import Store

    if cache_to or cache_from:  # the cache machinery is imported only by builds that use it
        from modelbuild.cache import CacheExporter, CacheImporter, parse_cache_spec

        cache_to = [parse_cache_spec(c, direction="to") if isinstance(c, str) else c for c in cache_to]
        cache_from = [parse_cache_spec(c, direction="from") if isinstance(c, str) else c for c in cache_from]
    from modelbuild.fetch_session import FetchSession, fetching

    emitter = Emitter(renderer or PlainRenderer(sys.stderr))
    try:
        with fetching(FetchSession(home, emitter)):  # a remote FROM fetches into this home
            host, desc, graph = prepare(modelfile, host=host, context=context, build_args=build_args, tags=tags,
                                        outputs=outputs, layer_format=layer_format, platforms=platforms,
                                        labels=labels, annotations=annotations, excludes=excludes)
        from modelbuild.oci.output import RegistryOutputs

        registry_out = RegistryOutputs([parse_output(o) for o in outputs], graph.step(graph.export).params["tags"],
                                       plain_http=plain_http, insecure=insecure)
    except BaseException:
        emitter.close()
        raise
    store = Store(home / "store").ensure()
    store.manifests()  # a damaged index.json fails the build now, not once its work is done
    cache = BuildCache(home / "cache")
    pushed = None
    try:
        for warning in desc.warnings:
            emitter.warn(warning)
        push_jobs = jobs
        sources = registry_out.open(cache, cache_to=cache_to)  # not None: large raw layers stream there
        jobs = solver_jobs = jobs or os.cpu_count() or 2
        build_executor = _executor(executor, host, jobs=jobs, store=store, context=desc.context, emitter=emitter)
        if sources is not None and push_jobs is None:
            from modelbuild.oci.transfer import DEFAULT_JOBS

            # its large files wait on the registry as they are hashed: as many at once as a push sends
            solver_jobs = max(jobs, DEFAULT_JOBS)
        if build_executor.remote and push_jobs is None:
            from modelbuild.executors import REMOTE_STEPS

            # its large files wait on the cluster's nodes as they are hashed: more at once than local cores
            solver_jobs = max(solver_jobs, REMOTE_STEPS)
        env = ExecEnv(store=store, cache=cache, host=host, emitter=emitter, no_cache=no_cache, jobs=jobs,
                      executor=build_executor, sources=sources)
        number = len(graph.order) + 1  # cache import/export show as steps after the graph's
        importer = CacheImporter(cache_from, env, first_number=number) if cache_from and not no_cache else None
        try:
            with store.gc_lock(exclusive=False), registry_out.login_hints():
                if importer is not None:
                    importer.load()
                solver = Solver(graph, env, jobs=solver_jobs, remote=importer)
                results = solver.solve()
                exported = results[graph.export]
                if cache_to:
                    CacheExporter(cache_to, env, first_number=number + len(cache_from), importer=importer,
                                  mount_from=list(exported.tags)).export(solver.keyed)
                variants = _variants(store, graph, results)
                pairs = registry_out.pairs(graph, results)
                attested = _attest(attest, sign, store=store, graph=graph, results=results, solver=solver,
                                   host=host, desc=desc, modelfile=modelfile, build_args=build_args or {},
                                   platforms=platforms, layer_format=layer_format,
                                   tags=exported.tags or tuple(ref for ref, _ in pairs))
                if pairs:  # after everything else, before any tag moves: docs/registry.md
                    pushed = registry_out.push(store, pairs, jobs=push_jobs, emitter=emitter,
                                               first_number=number + len(cache_from) + len(cache_to))
                store.set_tags(exported.tag_entries)  # last: the build has succeeded
                registry_out.settle_tags(store, pairs, bool(exported.tag_entries), emitter)
        finally:
            if importer is not None:
                importer.close()
            env.executor.close()
    finally:
        registry_out.close()
        cache.close()
        emitter.close()
    top = exported.descriptor.to_oci()
    warnings = list(desc.warnings) + [w for v in graph.variants for w in results[v.config].warnings]
    single = graph.variants[0].stage is None
    return BuildResult(
        digest=top["digest"],
        descriptor=top,
        tags=list(exported.tags),
        layers=variants[0]["layers"] if single else [],
        config=variants[0]["config"] if single else {},
        stats=env.stats.as_dict(),
        warnings=warnings,
        variants=[] if single else variants,
        config_digest=results[graph.variants[0].config].descriptor.digest if single else None,
        attestations=attested,
        pushed=pushed,
    )


def _executor(spec: str | None, host: Any, *, jobs: int, store: Any, context: Path | None, emitter: Any) -> Any:
    """The build's executor (``--executor``), opened when a transform first runs an item."""
    from modelbuild.executors import BuildExecutor, parse_executor
    from modelbuild.progress import Event

    choice = parse_executor(spec)
    return BuildExecutor(choice, host, jobs=jobs, store=store.root, context=context,
                         log=lambda line: emitter.emit(Event("log", 0, f"executor {choice}", message=line)))


def _attest(kinds: Sequence[str], sign: Any, *, store: Any, graph: Any, results: Mapping[str, Any], solver: Any,
            host: Any, desc: Any, modelfile: str, build_args: Mapping[str, str], platforms: Sequence[str],
            layer_format: str, tags: Sequence[str]) -> list[dict[str, Any]]:
    """The attestations asked for, written and recorded as referrers of each manifest."""
    if not kinds:
        return []
    import hashlib

    from modelbuild.attest import attach
    from modelbuild.attest.provenance import Recorder

    build_file: dict[str, Any] = {"name": "<stdin>" if modelfile == "-" else os.path.basename(modelfile)}
    if modelfile != "-":
        with open(modelfile, "rb") as fh:
            build_file["digest"] = {"sha256": hashlib.sha256(fh.read()).hexdigest()}
    created, epoch = source_date_epoch()
    recorder = Recorder(graph=graph, results=results, keys={sid: key for sid, (_, key, _) in solver.keyed.items()},
                        host=host, desc=desc, build_file=build_file, build_args=build_args, platforms=platforms,
                        layer_format=layer_format, tags=tags, created=created,
                        epoch=epoch if os.environ.get("SOURCE_DATE_EPOCH") else None)
    return [{"kind": a.kind, "subject": a.subject, **a.descriptor} for a in attach(store=store, recorder=recorder,
                                                                                     kinds=kinds, sign=sign)]
