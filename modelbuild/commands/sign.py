"""``modelbuild sign``: sign an artifact in a registry, in cosign's format (docs/signing.md).

The reference is resolved to the digest of the manifest (or index) it names; that digest is
signed, as the reference written (``registry.example.com/team/model:1``: the payload's
``docker-reference``), and the signature appended to the ``sha256-<hex>.sig`` manifest beside
it. ``--recursive`` also signs each manifest of an index, as ``cosign sign --recursive``.
"""

from __future__ import annotations

import argparse

HELP = """\
examples:
  modelbuild sign registry.example.com/team/qwen2:0.5b --key cosign.key
  modelbuild sign localhost:5000/qwen2:0.5b --key cosign.key --plain-http --recursive --json

The key: cosign's encrypted key (`modelbuild key generate`, `cosign generate-key-pair`) or a
PEM ECDSA P-256 key; its passphrase from COSIGN_PASSWORD, else asked on the terminal.
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = HELP
    p.add_argument("ref", metavar="REF", help="registry.example.com/repo:tag (or @sha256:…): what to sign")
    p.add_argument("--key", metavar="FILE", help="the private key (required)")
    p.add_argument("--signer", default=None, metavar="NAME", help="the signature scheme (default: cosign)")
    p.add_argument("--recursive", action="store_true", help="also sign each manifest of an index")
    p.add_argument("--plain-http", action="store_true", help="talk to the registry over HTTP, not HTTPS")
    p.add_argument("--insecure", action="store_true", help="accept a registry certificate that does not verify")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def registry_reference(ref: str, what: str) -> tuple[str, str, str, str]:
    """``(host, repo, tag-or-digest, normalised)`` of a reference that must name a registry."""
    from modelbuild.errors import UsageError
    from modelbuild.oci.transfer import names_registry, remote_ref

    if not names_registry(ref):
        raise UsageError(f"{what} {ref!r}: signatures live in a registry, and this names none",
                         hint="write it as registry.example.com/team/model:tag")
    return remote_ref(ref)


def run(args: argparse.Namespace) -> int:
    from modelbuild.commands._common import print_json
    from modelbuild.errors import UsageError
    from modelbuild.oci.transfer import login_hint, open_registry
    from modelbuild.signing.policy import get_signer, load_signing_key, sign_reference

    if not args.key:
        raise UsageError("sign needs --key FILE", hint="make one with `modelbuild key generate`")
    host, repo, ref, shown = registry_reference(args.ref, "sign")
    signer = get_signer(args.signer)
    key = load_signing_key(signer, args.key)  # before any request: a wrong passphrase costs nothing
    with open_registry(host, plain_http=args.plain_http, insecure=args.insecure) as registry, login_hint(host):
        results = sign_reference(registry, repo, ref, shown, key, signer, recursive=args.recursive)
    if args.json:
        print_json({"reference": shown, "signer": signer.name, "signed": results})
    else:
        for r in results:
            print(f"{r['digest']}  signed as {r['identity']}  ({r['signature']})")
    return 0
