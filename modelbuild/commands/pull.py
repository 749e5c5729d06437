"""``modelbuild pull``: fetch an artifact from a registry, or pick a variant and write its files.

``REF`` naming a registry (``registry.example.com/team/model:1``, ``localhost:5000/m:1``)
is pulled from it: into the local store and tagged there, or with ``-o DIR`` straight into
the directory (no store). A local tag or an OCI layout directory is read locally, as before.
``--platform auto`` detects the host (docs/spec/multi-platform.md §5).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

HELP = """\
examples:
  modelbuild pull registry.example.com/team/qwen2:0.5b          into the local store, tagged
  modelbuild pull registry.example.com/team/qwen2:0.5b -o ./model   the files for this machine
  modelbuild pull localhost:5000/qwen2:0.5b --plain-http --platform cuda -o ./model
  modelbuild pull qwen2:0.5b -o ./model                 a local tag: the variant for this machine
  modelbuild pull ./layout:qwen2:0.5b --platform cpu --json
  modelbuild pull registry.example.com/team/qwen2:0.5b -o ./cfg --include '*.json'   configs only

Credentials come from docker's config.json (`modelbuild login`, `docker login`).

--verify-key PUB checks the signature (and --require'd attestations) of what the tag names
before anything is written, then pulls that digest: an artifact that is not signed by that
key is refused, and nothing of it is stored or written (docs/signing.md).
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = HELP
    p.add_argument("ref", metavar="REF",
                   help="registry.example.com/repo:tag (a registry), a tag in the local store, or DIR[:TAG] (an OCI layout)")
    p.add_argument("--platform", default=None, metavar="auto|STAGE|TARGET",
                   help="which variant of a multi-platform artifact (default with -o or a local REF: auto, detect "
                        "this host; into the store: all of them)")
    p.add_argument("-o", "--output", metavar="DIR", help="write the variant's files into DIR")
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="with -o: only the files matching GLOB (repeatable; `*.json` matches at any depth, "
                        "`tokenizer/*` the whole path); the others are not downloaded")
    p.add_argument("--plain-http", action="store_true", help="talk to the registry over HTTP, not HTTPS")
    p.add_argument("--insecure", action="store_true", help="accept a registry certificate that does not verify")
    p.add_argument("-j", "--jobs", type=int, default=None, metavar="N", help="blobs to download at once (default: 4)")
    p.add_argument("--progress", default="auto", choices=["auto", "tty", "plain", "quiet", "json"],
                   help="progress display for registry pulls (default: tty on a terminal, else plain)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--verify-key", metavar="PUB",
                   help="refuse the artifact unless its signature verifies with this public key")
    p.add_argument("--require", action="append", default=[], metavar="NAME[,NAME]",
                   help="with --verify-key: attestations that must be there, signed by that key: provenance, sbom")


def _is_local(ref: str) -> bool:
    from modelbuild.oci.transfer import names_registry

    path = ref if os.path.isdir(ref) else ref.partition(":")[0]
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "oci-layout")):
        return True
    return not names_registry(ref)


def run(args: argparse.Namespace) -> int:
    from modelbuild.errors import UsageError

    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if args.include and not args.output:
        raise UsageError("--include needs -o DIR: the store keeps whole artifacts",
                         hint="pull -o DIR --include GLOB writes only the matching files")
    if args.require and not args.verify_key:
        raise UsageError("--require is checked with --verify-key: pass the public key too")
    if _is_local(args.ref):
        if args.verify_key:
            raise UsageError(f"--verify-key checks a signature in a registry, and {args.ref!r} is local",
                             hint="pull it from the registry it was pushed to")
        return _run_local(args)
    return _run_remote(args)


def _run_remote(args: argparse.Namespace) -> int:
    from modelbuild.commands._common import print_json
    from modelbuild.home import home_dir
    from modelbuild.oci.pull import pull_artifact, pull_to_dir
    from modelbuild.oci.transfer import DEFAULT_JOBS, login_hint, open_registry, remote_ref
    from modelbuild.progress import Emitter, make_renderer
    from modelbuild.store import Store

    host, repo, ref, shown = remote_ref(args.ref)
    check = _verifier(args)  # the key is read before any request
    emitter = Emitter(make_renderer(args.progress))
    jobs = args.jobs or DEFAULT_JOBS
    verified = None
    try:
        with open_registry(host, plain_http=args.plain_http, insecure=args.insecure) as registry, login_hint(host):
            if check is not None:  # verify what the tag names now, then fetch exactly that digest
                verified = check(registry, repo, ref, shown)
                ref = verified["digest"]
            if args.output:
                result = pull_to_dir(registry, repo, ref, Path(args.output), args.platform or "auto", jobs=jobs,
                                     progress=emitter, include=args.include)
            else:
                store = Store(home_dir(args.home) / "store")
                result = pull_artifact(registry, repo, ref, store, jobs=jobs, platform=args.platform,
                                       progress=emitter, tag=shown)
    finally:
        emitter.close()
    if verified is not None:
        result["verified"] = verified
    if args.json:
        print_json(result)
    else:
        stage = f" [{result['stage']}]" if result.get("stage") else ""
        print(f"{result['digest']}  {result.get('tag') or result['reference']}{stage}")
        if verified is not None:
            print(f"  verified: signed by key {verified['key'][:19]}… as {verified['signatures'][0]['identity']}"
                  + "".join(f", {a['name']}" for a in verified["attestations"]))
        for f in result.get("files", []):
            print(f"  {f}")
    return 0


def _verifier(args: argparse.Namespace) -> Callable[..., dict[str, Any]] | None:
    """For --verify-key: a function checking ``(registry, repo, ref, shown)`` and returning
    the verification result (a VerificationError when it fails); None without the flag."""
    if not args.verify_key:
        return None
    from modelbuild.signing.policy import get_signer, parse_require, verify_reference

    require = parse_require(args.require)
    signer = get_signer()
    key = signer.load_verifying_key(args.verify_key)
    return lambda registry, repo, ref, shown: verify_reference(registry, repo, ref, shown, key, signer, require)


def _run_local(args: argparse.Namespace) -> int:
    from modelbuild.commands._common import print_json
    from modelbuild.commands.inspect import _open
    from modelbuild.oci import mediatypes as mt
    from modelbuild.oci.materialize import StoreSource, materialize
    from modelbuild.plugins import make_plugin_manager
    from modelbuild.progress import Emitter, make_renderer
    from modelbuild.targets import detect_host, select_entry

    store, descriptor, shown = _open(args.ref, args.home)
    doc = store.read_json(descriptor["digest"])
    stage = None
    if doc.get("mediaType") == mt.OCI_INDEX or "manifests" in doc:
        host = detect_host()
        choice = select_entry(doc, args.platform or "auto", host, make_plugin_manager().targets)
        descriptor, stage = choice.descriptor, choice.stage
        doc = store.read_json(descriptor["digest"])
    files: list[str] = []
    if args.output:
        config = doc.get("config")
        config_doc = store.read_json(config["digest"]) if isinstance(config, dict) and "digest" in config else None
        emitter = Emitter(make_renderer(args.progress))
        try:
            outcome = materialize(StoreSource(store, shown), doc, config_doc, Path(args.output),
                                  jobs=args.jobs or 4, steps=emitter, include=args.include)
            for warning in outcome.warnings:
                emitter.warn(warning)
        finally:
            emitter.close()
        files = outcome.files
    result = {"reference": shown, "digest": descriptor["digest"], "stage": stage, "files": files}
    if args.json:
        print_json(result)
    else:
        print(f"{descriptor['digest']}  {shown}" + (f" [{stage}]" if stage else ""))
        for f in files:
            print(f"  {f}")
    return 0
