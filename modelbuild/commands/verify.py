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
    p.add_argument("--key", metavar="PUB", help="the public key the signature must verify with (required)")
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

    if not args.key:
        raise UsageError("verify needs --key PUB, the public key to check the signature with")
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
    if args.json:
        print_json(result)
    else:
        print(f"{result['digest']}  {shown}: verified ({signer.name}, key {result['key'][:19]}…)")
        for sig in result["signatures"]:
            print(f"  signature  {sig['identity']}  ({sig['location']})")
        for att in result["attestations"]:
            print(f"  {att['name']:<10} {att['predicateType']}  ({att['referrer']})")
    return 0
