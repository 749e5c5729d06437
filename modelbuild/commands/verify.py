"""``modelbuild verify``: check an artifact's signature, and the attestations a policy
requires, in a registry (docs/signing.md).

The reference is resolved to a manifest digest; then a signature must exist for it, verify
with the public key, name that digest and an identity matching the reference; and each
``--require``d attestation (``provenance``, ``sbom``) must be a referrer of it holding a DSSE
envelope signed by the same key, about that digest. Exit 0 when all hold, 1 when any does
not (one line saying what), 2 for a usage error.
"""

from __future__ import annotations

import argparse

HELP = """\
examples:
  modelbuild verify registry.example.com/team/qwen2:0.5b --key cosign.pub
  modelbuild verify registry.example.com/team/qwen2:0.5b --key cosign.pub --require provenance,sbom
  modelbuild verify localhost:5000/qwen2@sha256:… --key cosign.pub --plain-http --json

A signature made by cosign or skopeo (--sign-by-sigstore-private-key) verifies as one made by
`modelbuild sign`: the format is cosign's.
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = HELP
    p.add_argument("ref", metavar="REF", help="registry.example.com/repo:tag (or @sha256:…): what to check")
    p.add_argument("--key", metavar="PUB", help="the public key the signature must verify with (required, but "
                   "for --rebuild alone)")
    p.add_argument("--rebuild", action="store_true",
                   help="derive every variant again from its provenance (docs/supply-chain.md) and compare digests; "
                        "REF may be a local tag, or a registry reference (pulled, with its referrers, first)")
    p.add_argument("--context", metavar="DIR", default=None,
                   help="with --rebuild: where to find inputs the store does not hold (the build's context)")
    p.add_argument("--require", action="append", default=[], metavar="NAME[,NAME]",
                   help="attestations that must be there, signed by the same key: provenance, sbom (repeatable)")
    p.add_argument("--signer", default=None, metavar="NAME", help="the signature scheme (default: cosign)")
    p.add_argument("--plain-http", action="store_true", help="talk to the registry over HTTP, not HTTPS")
    p.add_argument("--insecure", action="store_true", help="accept a registry certificate that does not verify")
    p.add_argument("--json", action="store_true", help="print the result document as JSON (also on failure)")


def run(args: argparse.Namespace) -> int:
    from modelbuild.commands._common import print_json
    from modelbuild.commands.sign import registry_reference
    from modelbuild.errors import UsageError, VerificationError
    from modelbuild.oci.transfer import login_hint, open_registry
    from modelbuild.signing.policy import get_signer, parse_require, verify_reference

    if args.context and not args.rebuild:
        raise UsageError("--context is for --rebuild", hint="add --rebuild")
    if args.rebuild and not args.key:
        return _rebuild(args)
    if not args.key:
        raise UsageError("verify needs --key PUB, the public key to check the signature with",
                         hint="or --rebuild, to derive the artifact again from its provenance")
    require = parse_require(args.require)
    host, repo, ref, shown = registry_reference(args.ref, "verify")
    signer = get_signer(args.signer)
    key = signer.load_verifying_key(args.key)
    try:
        with open_registry(host, plain_http=args.plain_http, insecure=args.insecure) as registry, login_hint(host):
            result = verify_reference(registry, repo, ref, shown, key, signer, require)
    except VerificationError as exc:
        if args.json:
            print_json({"reference": shown, "verified": False, "error": exc.render()})
        raise
    if args.rebuild:
        _rebuild(args)
    if args.json:
        print_json(result)
    else:
        print(f"{result['digest']}  {shown}: verified ({signer.name}, key {result['key'][:19]}…)")
        for sig in result["signatures"]:
            print(f"  signature  {sig['identity']}  ({sig['location']})")
        for att in result["attestations"]:
            print(f"  {att['name']:<10} {att['predicateType']}  ({att['referrer']})")
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    """``--rebuild``: each manifest of REF (an index's variants, then the index) derived again
    from its provenance (:mod:`modelbuild.attest.rebuild`); exit 1 naming the first step
    that differs."""
    from pathlib import Path

    from modelbuild.attest.rebuild import describe_failure, rebuild
    from modelbuild.commands._common import print_json
    from modelbuild.errors import UsageError, VerificationError
    from modelbuild.home import home_dir
    from modelbuild.commands.inspect import read
    from modelbuild.oci.transfer import names_registry
    from modelbuild.store import Store

    context = Path(args.context) if args.context else None
    if context is not None and not context.is_dir():
        raise UsageError(f"--context {args.context}: not a directory")
    store = Store(home_dir(args.home) / "store").ensure()
    if names_registry(args.ref):
        _pull(args, store)
    tree = read(store, store.resolve(args.ref))
    subjects = [d.digest for d, _ in tree.entries()] + [tree.root.digest]  # the variants, then the index
    outcomes = [rebuild(store, digest, context=context) for digest in subjects]
    failed = [o for o in outcomes if not o.ok]
    if args.json:
        print_json({"reference": args.ref, "rebuilt": not failed, "subjects": [o.as_dict() for o in outcomes]})
    else:
        for o in outcomes:
            print(f"{o.subject}  {'rebuilt identically' if o.ok else 'DIFFERS'} ({o.steps} steps)")
    if failed:
        o = failed[0]
        raise VerificationError(describe_failure(o) if o.first_difference else
                                f"{o.subject}: the rebuild gave another manifest digest")
    return 0


def _pull(args: argparse.Namespace, store: object) -> None:
    from modelbuild.oci.pull import pull_artifact
    from modelbuild.oci.transfer import login_hint, open_registry, remote_ref

    host, repo, ref, label = remote_ref(args.ref)
    with open_registry(host, plain_http=args.plain_http, insecure=args.insecure) as registry, login_hint(host):
        pull_artifact(registry, repo, ref, store, tag=args.ref)
