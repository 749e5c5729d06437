"""``modelbuild build``: Modelfile → ModelPack artifact in the local store.

What it prints follows ``docker buildx build``: progress on standard error (``--progress
json``: nothing but NDJSON events there, the result being the last), the result on standard
output in every mode (the digest, or with ``--json`` the whole result), ``-q`` for the digest
alone, ``--metadata-file`` for buildx's metadata JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelbuild.errors import UsageError

if TYPE_CHECKING:
    from modelbuild.plugins import PluginHost

HELP = """\
The build context is the Modelfile's FROM directory, else CONTEXT, else the directory that
holds the Modelfile. Every step is cached by the content it reads: an unchanged rebuild only
stats the input files.

examples:
  modelbuild build -f Modelfile.examples/tiny-llama/Modelfile
  modelbuild build -f Modelfile -t qwen2:0.5b --build-arg REV=main .
  modelbuild build -f Modelfile -o ./model                 also write the built files into ./model
  modelbuild build -f Modelfile -o type=oci,dest=./layout  also write an OCI image layout
  modelbuild build -f Modelfile -q                         print the digest only
  modelbuild build -f Modelfile --label org.opencontainers.image.source=https://example.com/m \\
      --annotation index:org.opencontainers.image.description="one model, three targets"
  modelbuild build -f Modelfile --metadata-file build.json --progress json 2>events.ndjson
  modelbuild build -f Modelfile --print-graph=dot | dot -Tsvg > graph.svg
  modelbuild build -f Modelfile -t registry.example.com/team/m:1 --push   build, then push
  SOURCE_DATE_EPOCH=1700000000 modelbuild build -f Modelfile   pin createdAt
  modelbuild build -f Modelfile --cache-from type=registry,ref=reg.example.com/team/m:buildcache \\
      --cache-to type=registry,ref=reg.example.com/team/m:buildcache,mode=max
                                     CI on an empty machine: reuse conversions and quantizations
  modelbuild build -f Modelfile --cache-to type=local,dest=./cache,mode=max   (--cache-from type=local,src=./cache)
  RAY_ADDRESS=10.0.0.5:6379 modelbuild build -f Modelfile --executor ray
                                     quantize on a Ray cluster's nodes (shared MODELBUILD_HOME)

output (standard output, whatever --progress says): "DIGEST  TAGS" (--progress quiet or json:
the digest alone; -q: the digest alone and nothing on standard error but errors; --json: the
result document). With --progress json, standard error carries only NDJSON events, the
last one of kind "result" holding the --json document.

tags: -t REF, else the Modelfile's NAME, which must then be a reference itself
([registry[:port]/]lower-case/path[:tag], default tag latest). A build with TARGET stages
also tags each stage's manifest TAG-STAGE.

-o/--output: DIR or type=local,dest=DIR writes the artifact's files (as `pull -o` does; a
multi-platform build writes DIR/STAGE/ for each stage); type=oci,dest=DIR writes an OCI image
layout; type=registry[,name=REF] pushes (to REF, else to every -t that names a registry;
"name=A,B" in quotes for several; ref= is name=; --push is type=registry). Outputs are written
once every step has succeeded; a build that fails moves no tag, here or in a registry.
A registry output with nothing else kept here (no other -o, no --cache-to, every -t a registry
reference) streams files over 4 MiB from the context to the registry, no copy in the store,
and tags the store only if it holds the whole artifact (docs/registry.md).

remote FROM (docs/sources.md): FROM hf://ORG/NAME[@REV], https://…#sha256=HEX,
oci://REGISTRY/REPO[:TAG|@DIGEST] or ollama://[HOST/]NS/MODEL[:TAG] fetches the files into the
store before the build, pinned (a revision to its commit, a tag to its digest), resumed,
verified, once; a pinned reference builds from the cache with no network. FROM
--include=GLOB --exclude=GLOB REF fetches only the matching files. MODELBUILD_OFFLINE=1
forbids the network; MODELBUILD_INSECURE_REGISTRIES=HOST[,HOST] reaches registries over plain
HTTP (loopback ones always are); HF_TOKEN and HF_ENDPOINT reach the Hub as huggingface_hub does.

--exclude PATTERN: a line of the context's .modelbuildignore (gitignore syntax), read after that
file's lines, so '--exclude !PATH' re-includes what the file excludes. What is excluded is not in
the context: no pattern selects it, a packaged directory leaves it out, naming it is an error.
MODELFILE.modelbuildignore beside the Modelfile, when it exists, replaces the context's
.modelbuildignore (docs/modelfile.md, "Excluding files").

--label KEY=VALUE: the command-line LABEL. The ModelPack config has no labels field (its
schema is closed), so labels are annotations of each manifest, as LABEL in a Modelfile;
--label overrides a LABEL of the Modelfile for the same key.
--annotation [LEVEL[,LEVEL]:]KEY=VALUE (docker buildx's syntax), LEVEL one of
  manifest               each manifest (the default when no LEVEL is given)
  manifest[STAGE]        one stage's manifest (STAGE: a stage or target name)
  index                  the OCI index of a build with TARGET stages
  manifest-descriptor    the index's entry for each manifest (also [STAGE])
  index-descriptor       the result's entry in the store's index.json and --output type=oci's
A manifest's annotations are, later winning: the Modelfile's LABELs, --label, --annotation,
--annotation manifest[STAGE]:. They change the manifest (and index) digest, so the tags,
and re-run only the manifest and index steps. Keys must be non-empty, without blanks.

--metadata-file FILE: buildx's metadata JSON (containerimage.digest, containerimage.descriptor,
containerimage.config.digest, image.name) plus modelbuild.* fields, written atomically.

--cache-to keys: type=registry|local, ref=HOST/REPO:TAG, dest=DIR, tag=TAG (local, default latest),
mode=min|max (min, the default: the artifact's steps only; max: every step, transforms too),
ignore-error=true|false (default true: a failed export only warns), plain-http=true, insecure=true.
--cache-from keys: type, ref, src=DIR, tag, plain-http, insecure. A bare REF means type=registry,ref=REF.
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = HELP
    p.add_argument("context", nargs="?", help="build context directory when the Modelfile has no FROM")
    p.add_argument("-f", "--file", default=None, metavar="MODELFILE",
                   help="the build file (default: CONTEXT/Modelfile, else a name a frontend claims: "
                        "CONTEXT/Kitfile, CONTEXT/Ollama.Modelfile…); '-' reads standard input")
    p.add_argument("-t", "--tag", action="append", default=[], metavar="REF",
                   help="tag the result, e.g. qwen2:0.5b (repeatable; default: from NAME)")
    p.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="set a build argument declared with ARG (repeatable)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="annotate each manifest, as a Modelfile LABEL does, over it (repeatable)")
    p.add_argument("--annotation", action="append", default=[], metavar="[LEVEL:]KEY=VALUE",
                   help="add an annotation (repeatable); LEVEL: manifest (default), manifest[STAGE], index, "
                        "manifest-descriptor, index-descriptor")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="leave out of the context what PATTERN matches (.modelbuildignore syntax, "
                        "after that file's rules; repeatable)")
    p.add_argument("--attest", action="append", default=[], metavar="KIND[,KIND]",
                   help="attach attestations to each manifest as OCI referrers: provenance (SLSA v1), "
                        "sbom (CycloneDX ML-BOM); repeatable")
    p.add_argument("--sign", action="store_true",
                   help="sign: each --attest statement as a DSSE envelope, and with --push what was pushed, in "
                        "cosign's format (needs --key; docs/signing.md)")
    p.add_argument("--key", metavar="FILE", help="the private key --sign signs with (COSIGN_PASSWORD, else a prompt)")
    p.add_argument("--signer", default=None, metavar="NAME", help="the signature scheme for --sign (default: cosign)")
    p.add_argument("--layer-format", default="raw", metavar="FORMAT",
                   help="raw (default), tar, tar+gzip or tar+zstd; directories are always archives")
    p.add_argument("-o", "--output", action="append", default=[],
                   metavar="DIR|type=local|oci,dest=DIR|type=registry[,name=REF]",
                   help="also write the files (DIR, type=local), an OCI layout (type=oci), or push (type=registry) "
                        "(repeatable)")
    p.add_argument("--platform", default=None, metavar="STAGE[,STAGE]",
                   help="build only these TARGET stages (by stage or target name)")
    p.add_argument("--progress", default="auto", choices=["auto", "tty", "plain", "quiet", "json"],
                   help="progress display (default: tty on a terminal, else plain)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print the digest only; nothing on standard error but errors")
    p.add_argument("--metadata-file", default=None, metavar="FILE", help="write the build result's metadata to FILE")
    p.add_argument("--print-graph", nargs="?", const="text", choices=["text", "dot", "json"], default=None,
                   help="print the step graph and exit without building")
    p.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                   help="steps to run at once (default: number of CPUs)")
    p.add_argument("--no-cache", action="store_true", help="ignore cached results and re-hash every file")
    p.add_argument("--executor", default=None, metavar="NAME[://ADDRESS]",
                   help="where quantize/convert/cast work runs: local (default: worker processes here), or ray "
                        "(the Ray cluster at RAY_ADDRESS), ray://HOST:PORT; every node must see MODELBUILD_HOME "
                        "and the context at the same paths (docs/scale.md)")
    p.add_argument("--cache-to", action="append", default=[], metavar="type=registry,ref=REF[,mode=max]",
                   help="export the build cache to a registry or an OCI layout (type=local,dest=DIR) (repeatable)")
    p.add_argument("--cache-from", action="append", default=[], metavar="type=registry,ref=REF",
                   help="use a build cache exported by --cache-to (type=local,src=DIR) (repeatable)")
    p.add_argument("--push", action="store_true",
                   help="push every tag that names a registry (-t registry.example.com/team/m:1): buildx's "
                        "shorthand for --output type=registry")
    p.add_argument("--plain-http", action="store_true", help="talk to registries over HTTP, not HTTPS")
    p.add_argument("--insecure", action="store_true", help="accept registry certificates that do not verify")
    p.add_argument("--json", action="store_true", help="print the result (digest, tags, layers, stats) as JSON")


def _build_args(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not name:
            raise UsageError(f"bad --build-arg {pair!r}", hint="use NAME=VALUE")
        out[name] = value if eq else os.environ.get(name, "")
    return out


def _platforms(args: argparse.Namespace) -> list[str]:
    return [p.strip() for p in (args.platform or "").split(",") if p.strip()]


def _modelfile(args: argparse.Namespace, host: PluginHost) -> str:
    if args.file:
        return args.file
    base = Path(args.context or ".")
    names = default_build_files(host)
    for name in names:
        if (base / name).is_file():
            return str(base / name)
    raise UsageError(f"no Modelfile in {base.resolve()}", hint=f"pass -f PATH (looked for {', '.join(names)})")


def default_build_files(host: PluginHost) -> list[str]:
    """The names a build file may have in CONTEXT when ``-f`` is not given, in order:
    ``Modelfile``, then the exact names frontends claim (``Kitfile``…; patterns such as
    ``*.Kitfile`` need ``-f``). Read from the plugin catalog: no frontend is imported."""
    names = ["Modelfile"]
    for frontend in host.frontends.names():
        patterns = host.frontends.peek(frontend, "filenames", ()) or ()
        for pattern in (patterns,) if isinstance(patterns, str) else patterns:
            if isinstance(pattern, str) and not any(c in pattern for c in "*?[") and pattern not in names:
                names.append(pattern)
    return names


def _progress(args: argparse.Namespace) -> str:
    """The progress mode: ``-q`` is ``--progress quiet`` and prints the digest alone."""
    if args.quiet:
        if args.progress not in ("auto", "quiet"):
            raise UsageError(f"-q and --progress {args.progress} contradict each other", hint="drop one")
        if args.json:
            raise UsageError("-q prints the digest only; --json prints the result document", hint="drop one")
        return "quiet"
    return args.progress


def run(args: argparse.Namespace) -> int:
    from modelbuild.home import home_dir

    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    progress = _progress(args)
    from modelbuild.plugins import make_plugin_manager

    host = make_plugin_manager()  # one for the whole command: the plugin catalog is read once
    modelfile = _modelfile(args, host)
    context = Path(args.context).resolve() if args.context else None
    if context is not None and not context.is_dir():
        raise UsageError(f"build context {args.context} is not a directory")
    build_args = _build_args(args.build_arg)
    cache_to: list = []
    cache_from: list = []
    if args.cache_to or args.cache_from:
        from modelbuild.cache import parse_cache_specs

        transport = {"plain_http": bool(getattr(args, "plain_http", False)),
                     "insecure": bool(getattr(args, "insecure", False))}
        cache_to = parse_cache_specs(args.cache_to, direction="to", **transport)
        cache_from = parse_cache_specs(args.cache_from, direction="from", **transport)
    attest: tuple[str, ...] = ()
    if args.attest:
        from modelbuild.attest import parse_kinds

        attest = parse_kinds(args.attest)  # a misspelt kind is a usage error before any work
    if args.key and not args.sign:
        raise UsageError("--key is the key --sign signs with: pass --sign too")
    if args.sign and not args.key:
        raise UsageError("--sign needs --key FILE", hint="make one with `modelbuild key generate`")
    if args.sign and not (attest or args.push or any("type=registry" in o for o in args.output)):
        raise UsageError("--sign signs attestations and pushed artifacts: add --attest or --push",
                         hint="a local artifact's signature lives in a registry: `modelbuild push --sign` later")
    from modelbuild.commands.push import _signing

    signing = _signing(args)  # the key, and its passphrase, before any work
    if args.print_graph:
        return _print_graph(args, modelfile, context, build_args)
    if args.push:
        from modelbuild.oci.transfer import names_registry

        if not any(names_registry(t) for t in args.tag):
            raise UsageError("--push needs a tag that names a registry", hint="add -t registry.example.com/team/model:tag")
    metadata_file = _metadata_target(args.metadata_file) if args.metadata_file else None

    from modelbuild.build import build
    from modelbuild.progress import Emitter, Event, make_renderer

    renderer = make_renderer(progress)
    result = build(
        modelfile,
        host=host,
        home=home_dir(args.home),
        context=context,
        build_args=build_args,
        tags=args.tag,
        outputs=[*args.output, *(["type=registry"] if args.push else [])],  # --push is buildx's shorthand
        layer_format=args.layer_format,
        jobs=args.jobs,
        renderer=renderer,
        no_cache=args.no_cache,
        platforms=_platforms(args),
        cache_to=cache_to,
        cache_from=cache_from,
        labels=args.label,
        annotations=args.annotation,
        excludes=args.exclude,
        attest=attest,
        sign=_statement_signer(signing),
        executor=args.executor,
        plain_http=args.plain_http,
        insecure=args.insecure,
    )
    pushed = _push(args, result, progress, signing) if result.pushed is not None else None
    doc = result.as_dict()
    if metadata_file is not None:
        write_metadata(metadata_file, result, pushed)
    Emitter(renderer).emit(Event("result", 0, data=doc))  # the last event of the progress stream
    if args.json:
        from modelbuild.commands._common import print_json

        print_json(doc)
    elif progress in ("quiet", "json"):
        print(result.digest)
    else:
        names = ", ".join(result.tags or [p["reference"] for p in pushed or []]) or "(untagged)"
        print(f"{result.digest}  {names}")
    return 0


def _metadata_target(name: str) -> Path:
    """``--metadata-file``'s path, checked before the build: its directory must exist."""
    path = Path(name)
    if path.is_dir():
        raise UsageError(f"--metadata-file {name} is a directory", hint="name a file")
    if not path.resolve().parent.is_dir():
        raise UsageError(f"--metadata-file {name}: directory {path.parent} does not exist")
    return path


def metadata(result: Any, pushed: list[dict] | None = None) -> dict[str, Any]:
    """What ``--metadata-file`` holds: buildx's keys, then modelbuild's own."""
    doc: dict[str, Any] = {
        "containerimage.descriptor": dict(result.descriptor),
        "containerimage.digest": result.digest,
    }
    if result.config_digest:
        doc["containerimage.config.digest"] = result.config_digest
    names = list(result.tags) + [p["reference"] for p in pushed or [] if p["reference"] not in result.tags]
    if names:  # buildx: the names it tagged or pushed
        doc["image.name"] = ",".join(names)
    doc["modelbuild.tags"] = list(result.tags)
    if result.variants:
        doc["modelbuild.variants"] = [{"stage": v["stage"], "digest": v["digest"]} for v in result.variants]
    if result.warnings:
        doc["modelbuild.warnings"] = list(result.warnings)
    if pushed is not None:
        doc["modelbuild.pushed"] = pushed
    return doc


def write_metadata(path: Path, result: Any, pushed: list[dict] | None = None) -> None:
    """Write :func:`metadata` to *path* atomically: a reader sees the old file or the new one."""
    import json

    from modelbuild.errors import BuildError
    from modelbuild.storage.files import atomic_write

    data = (json.dumps(metadata(result, pushed), indent=2) + "\n").encode()
    try:
        atomic_write(path.resolve(), data)
    except OSError as exc:
        raise BuildError(f"cannot write --metadata-file {path}: {exc.strerror or exc}") from None


def _statement_signer(signing: tuple | None):  # noqa: ANN202 - bytes -> bytes, or None
    """What turns an attestation's statement into a signed DSSE envelope, with --sign."""
    if signing is None:
        return None
    from modelbuild.signing.dsse import sign_statement

    _, key = signing
    return lambda statement: sign_statement(statement, key)


def _push(args: argparse.Namespace, result: Any, progress: str, signing: tuple | None = None) -> list[dict]:
    """What the build pushed (``--push``, ``--output type=registry``; the build pushed it):
    with --sign, each pushed artifact signed (an index and each manifest in it); a line each."""
    pushed: list[dict] = result.pushed
    if signing is not None:
        from modelbuild.commands.push import _sign_pushed
        from modelbuild.oci.transfer import login_hint, open_registry, remote_ref

        for p in pushed:
            host, repo, ref, normalised = remote_ref(p["reference"])
            with open_registry(host, plain_http=args.plain_http, insecure=args.insecure) as registry, \
                    login_hint(host):
                p["signed"] = _sign_pushed(registry, repo, ref, normalised, *signing)
    if not args.json and progress not in ("quiet", "json"):  # json: the result event carries them
        for p in pushed:
            print(f"pushed {p['reference']}@{p['digest']} ({p['uploaded']} of {p['blobs']} blobs sent)", file=sys.stderr)
    return pushed


def _print_graph(args: argparse.Namespace, modelfile: str, context: Path | None, build_args: dict[str, str]) -> int:
    import json

    from modelbuild.build import prepare
    from modelbuild.fetch import FetchSession, fetching
    from modelbuild.home import home_dir
    from modelbuild.progress import Emitter, PlainRenderer

    # a remote FROM is fetched (or found in the cache) first: the frontend reads its files
    emitter = Emitter(PlainRenderer(sys.stderr))
    try:
        with fetching(FetchSession(home_dir(args.home), emitter)):
            _, _, graph = prepare(modelfile, context=context, build_args=build_args, layer_format=args.layer_format,
                                  tags=args.tag, outputs=args.output, platforms=_platforms(args), labels=args.label,
                                  annotations=args.annotation, excludes=args.exclude)
    finally:
        emitter.close()
    if args.print_graph == "dot":
        sys.stdout.write(graph.to_dot())
    elif args.print_graph == "json":
        sys.stdout.write(json.dumps(graph.to_json(), indent=2) + "\n")
    else:
        sys.stdout.write(graph.to_text())
    return 0
