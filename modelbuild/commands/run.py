"""``modelbuild run``: serve a variant with an engine (docs/spec/runtime.md §5).

The reference is resolved (a registry reference is pulled into the store when the store
lacks it), the variant for this host chosen, its files linked from the store into a
directory of their own, an engine chosen, started, and watched until it is ready; then the
endpoint is printed and the engine's log streamed until Ctrl-C or SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from typing import Any

HELP = """\
examples:
  modelbuild run registry.example.com/team/qwen2:0.5b     pull if needed, serve on 127.0.0.1:8080
  modelbuild run qwen2:0.5b --engine llama.cpp --port 8081 --context 4096
  modelbuild run qwen2:0.5b --dry-run                    the exact command; nothing is started
  modelbuild run qwen2:0.5b --param n_gpu_layers=99 -- --verbose   engine options, then raw flags
  modelbuild run ./layout:mlp --engine onnxruntime --json   one JSON line once it is ready

The engine: --engine; else the first engine the artifact's runtime description lists that is
installed; else the first installed engine that serves the variant's format on its target
(`modelbuild plugins` lists them). Files are hard links to the store's blobs, in
$MODELBUILD_HOME/run/<digest>/: no second copy, and a second run does nothing there.
Ctrl-C or SIGTERM stops the engine and every process it started.

--verify-key PUB (a registry reference only) checks the signature, and any --require'd
attestations, of what the tag names before anything is pulled or linked, then serves exactly
that digest (docs/signing.md); an artifact that fails is refused and nothing is written.
"""


PASSTHROUGH = True  # everything after `--` goes to the engine unchanged (modelbuild.cli)


def configure(p: argparse.ArgumentParser) -> None:
    p.usage = "%(prog)s [options] REF [-- ENGINE ARGS...]"
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = HELP
    p.add_argument("ref", metavar="REF", help="a tag of the local store, DIR[:TAG] (an OCI layout), or "
                                              "registry.example.com/repo:tag")
    p.add_argument("--engine", metavar="NAME", help="the engine to serve with (default: see below)")
    p.add_argument("--platform", default="auto", metavar="auto|STAGE|TARGET",
                   help="which variant of a multi-platform artifact (default: auto, detect this host)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, metavar="N", help="port to listen on (default: the engine's)")
    p.add_argument("--context", type=int, default=None, metavar="N",
                   help="context length to serve (default: the runtime description's, else the engine's)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="an engine parameter (repeatable; `--engine NAME --dry-run --json` lists them)")
    p.add_argument("--pull", default="missing", choices=["missing", "always", "never"],
                   help="pull a registry reference: when the store lacks it (default), always, or never")
    p.add_argument("--ready-timeout", type=float, default=None, metavar="SECONDS",
                   help="how long loading may take (default: the engine's, 300 s)")
    p.add_argument("--stop-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="after SIGTERM, how long the engine has to exit before SIGKILL (default: 10)")
    p.add_argument("--dry-run", action="store_true", help="print the command, files and endpoint; start nothing")
    p.add_argument("--plain-http", action="store_true", help="talk to the registry over HTTP, not HTTPS")
    p.add_argument("--insecure", action="store_true", help="accept a registry certificate that does not verify")
    p.add_argument("--progress", default="auto", choices=["auto", "tty", "plain", "quiet", "json"],
                   help="progress display while pulling (default: tty on a terminal, else plain)")
    p.add_argument("--json", action="store_true", help="print the plan (--dry-run) or the ready event as JSON")
    p.add_argument("--verify-key", metavar="PUB",
                   help="refuse the artifact unless its signature verifies with this public key")
    p.add_argument("--require", action="append", default=[], metavar="NAME[,NAME]",
                   help="with --verify-key: attestations that must be there, signed by that key: provenance, sbom")


def parse_params(items: list[str]) -> dict[str, str]:
    from modelbuild.errors import UsageError

    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--param {item}: expected KEY=VALUE")
        out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    from modelbuild.errors import UsageError
    from modelbuild.home import home_dir
    from modelbuild.plugins import make_plugin_manager
    from modelbuild.progress import Emitter, make_renderer
    from modelbuild.runtime.engines import check_params, choose_engine
    from modelbuild.runtime.files import materialize_variant, run_dir
    from modelbuild.runtime.resolve import engine_model, resolve_variant, runtime_description

    extra = list(getattr(args, "passthrough", []))
    if args.context is not None and not 1 <= args.context <= 2**31:
        raise UsageError(f"--context {args.context}: a context length is at least 1 and at most 2**31")
    params = parse_params(args.param)
    if args.verify_key or args.require:
        args.ref = _verified_reference(args)
    emitter = Emitter(make_renderer(args.progress))
    try:
        variant = resolve_variant(args.ref, home=args.home, platform=args.platform, plain_http=args.plain_http,
                                  insecure=args.insecure, progress=emitter, pull=args.pull)
        home = home_dir(args.home)
        description = runtime_description(variant)
        path = run_dir(home, variant.digest)
        model = engine_model(variant, path, context=args.context, description=description)
        preferred = [e.name for e in getattr(description, "engines", ())]
        plugins = make_plugin_manager()
        engine = choose_engine(plugins, model, args.engine, preferred, need_installed=not args.dry_run)
        described = next((e.params for e in getattr(description, "engines", ()) if e.name == engine.name), {})
        check_params(engine, params, "--param")
        model = dataclasses.replace(model, params={**described, **params})
        launch = engine.launch(model, host=args.host, port=args.port or engine.default_port)
        argv = [*launch.argv, *extra]
        if args.dry_run:
            _print_plan(args, engine, variant, model, launch, argv)
            return 0
        from modelbuild.runtime.process import check_port

        check_port(args.host, launch.port)
        files = materialize_variant(variant, home, steps=emitter)
    finally:
        emitter.close()
    return _serve(args, engine, model, launch, argv, files, home)


def _verified_reference(args: argparse.Namespace) -> str:
    """``host/repo@digest`` of what REF names, once its signature (and the attestations
    --require names) verify with --verify-key: what is pulled and served is then exactly what
    was verified, whatever the tag says later."""
    from modelbuild.commands.sign import registry_reference
    from modelbuild.errors import UsageError
    from modelbuild.oci.transfer import login_hint, open_registry
    from modelbuild.signing.policy import get_signer, parse_require, verify_reference

    if not args.verify_key:
        raise UsageError("--require is checked with --verify-key: pass the public key too")
    require = parse_require(args.require)
    host, repo, ref, shown = registry_reference(args.ref, "--verify-key")
    signer = get_signer()
    key = signer.load_verifying_key(args.verify_key)
    with open_registry(host, plain_http=args.plain_http, insecure=args.insecure) as registry, login_hint(host):
        result = verify_reference(registry, repo, ref, shown, key, signer, require)
    print(f"verified {shown}: {result['digest']} signed by key {result['key'][:19]}…", file=sys.stderr, flush=True)
    return f"{host}/{repo}@{result['digest']}"


def _url(host: str, port: int, path: str) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}{path}"


def _plan(engine: Any, variant: Any, model: Any, launch: Any, argv: list[str], host: str) -> dict[str, Any]:
    return {
        "engine": engine.name,
        "reference": variant.shown,
        "digest": variant.digest,
        "stage": variant.stage,
        "target": model.target,
        "path": str(model.path),
        "files": list(model.files),
        "argv": argv,
        "command": shlex.join(argv),
        "env": dict(launch.env),
        "unsetEnv": list(launch.unset_env),
        "workFiles": dict(launch.files),
        "workLinks": dict(launch.links),
        "health": _url(host, launch.port, launch.health),
        "endpoint": _url(host, launch.port, launch.endpoint),
        "protocol": launch.protocol,
        "params": dict(model.params),
        "parameters": dict(engine.parameters),
    }


def _print_plan(args: argparse.Namespace, engine: Any, variant: Any, model: Any, launch: Any,
                argv: list[str]) -> None:
    from modelbuild.commands._common import print_json

    plan = _plan(engine, variant, model, launch, argv, args.host)
    if args.json:
        print_json(plan)
        return
    stage = f" [{variant.stage}]" if variant.stage else ""
    print(f"engine:   {engine.name}")
    print(f"variant:  {variant.digest}  {variant.shown}{stage}")
    print(f"files:    {model.path}  (hard links to the store's blobs)")
    for name in model.files:
        print(f"  {name}")
    for key, value in launch.env.items():
        print(f"env:      {key}={value}")
    for key in launch.unset_env:
        print(f"unset:    {key}")
    for name in launch.files:
        print(f"workfile: {name}")
    for name, dest in launch.links.items():
        print(f"worklink: {name} -> {dest}")
    print(f"command:  {plan['command']}")
    print(f"health:   {plan['health']}")
    print(f"endpoint: {plan['endpoint']}  ({launch.protocol})")


def _serve(args: argparse.Namespace, engine: Any, model: Any, launch: Any, argv: list[str], files: Any,
           home: Any) -> int:
    import json

    from modelbuild.errors import BuildError
    from modelbuild.runtime.files import remove_tree
    from modelbuild.runtime.process import Engine, prepare_workdir, serve

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    how = "nothing to do: already there" if files.reused else f"{files.linked} linked, {files.copied} copied"
    log(f"files: {files.path} ({how})")
    work = prepare_workdir(home / "run" / "work", dict(launch.files), dict(launch.links))
    endpoint = _url(args.host, launch.port, launch.endpoint)
    try:
        log(f"starting {engine.name}: {shlex.join(argv)}")
        proc = Engine(argv, cwd=work, env=dict(launch.env), label=engine.name, log=log,
                      unset=tuple(launch.unset_env))

        def ready() -> None:
            if args.json:  # one line: a script reads it as soon as it comes
                print(json.dumps({"event": "ready", "engine": engine.name, "endpoint": endpoint,
                                  "protocol": launch.protocol, "model": model.name, "pid": proc.proc.pid,
                                  "digest": model.digest}, sort_keys=True), flush=True)
            else:
                print(f"serving {model.name} with {engine.name} at {endpoint} ({launch.protocol}); Ctrl-C stops it",
                      flush=True)
            sys.stdout.flush()

        timeout = args.ready_timeout if args.ready_timeout is not None else launch.ready_timeout
        outcome = serve(proc, _url(args.host, launch.port, launch.health), timeout, ready, args.stop_timeout)
    finally:
        remove_tree(work)
    if outcome.requested:
        log(f"stopped {engine.name}")
        return 0
    raise BuildError(f"{engine.name} exited with status {outcome.returncode}", hint="its log is above")
