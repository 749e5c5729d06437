"""``modelbuild push``: send a tag of the local store to the registry its name (or DST) names.

Blobs the registry already has are not sent (HEAD); the rest stream from the store, ``-j``
at a time; then the manifests, with the store's exact bytes, so the registry's digest is the
local one. Credentials come from docker's config.json (``modelbuild login``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelbuild.api import Signer, SigningKey
    from modelbuild.oci.registry import Registry

HELP = """\
examples:
  modelbuild push registry.example.com/team/qwen2:0.5b      the local tag of that name
  modelbuild push qwen2:0.5b registry.example.com/team/qwen2:0.5b
  modelbuild push ./layout:qwen2 localhost:5000/qwen2:1 --plain-http
  modelbuild push registry.example.com/team/qwen2:0.5b --sign --key cosign.key

--sign signs what was pushed, in cosign's format (docs/signing.md): the manifest or index the
tag names and, for an index, each manifest in it (as `cosign sign --recursive`), as the
reference pushed to. The key's passphrase comes from COSIGN_PASSWORD or the terminal, asked
before anything is sent.
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = HELP
    p.add_argument("src", metavar="REF", help="a local tag (or DIR[:TAG], an OCI layout); names the registry "
                                              "unless DST is given")
    p.add_argument("dst", metavar="DST", nargs="?", help="the registry reference to push to (default: REF)")
    p.add_argument("--plain-http", action="store_true", help="talk to the registry over HTTP, not HTTPS")
    p.add_argument("--insecure", action="store_true", help="accept a registry certificate that does not verify")
    p.add_argument("-j", "--jobs", type=int, default=None, metavar="N", help="blobs to upload at once (default: 4)")
    p.add_argument("--progress", default="auto", choices=["auto", "tty", "plain", "quiet", "json"],
                   help="progress display (default: tty on a terminal, else plain)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--sign", action="store_true", help="sign what was pushed (needs --key)")
    p.add_argument("--key", metavar="FILE", help="the private key --sign signs with")
    p.add_argument("--signer", default=None, metavar="NAME", help="the signature scheme for --sign (default: cosign)")


def run(args: argparse.Namespace) -> int:
    from modelbuild.commands._common import human_size, print_json
    from modelbuild.commands.inspect import _open
    from modelbuild.errors import UsageError
    from modelbuild.oci.push import push_artifact
    from modelbuild.oci.transfer import DEFAULT_JOBS, login_hint, names_registry, open_registry, remote_ref
    from modelbuild.progress import Emitter, make_renderer

    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if args.key and not args.sign:
        raise UsageError("--key is the key --sign signs with: pass --sign too")
    if args.sign and not args.key:
        raise UsageError("--sign needs --key FILE", hint="make one with `modelbuild key generate`")
    dst = args.dst or args.src
    if not names_registry(dst):
        raise UsageError(f"{dst!r} names no registry",
                         hint="push registry.example.com/team/model:tag, or push LOCAL registry.example.com/team/model:tag")
    host, repo, ref, normalised = remote_ref(dst)
    store, descriptor, _shown = _open(args.src, args.home)
    signing = _signing(args)  # the key, loaded before any byte is sent
    emitter = Emitter(make_renderer(args.progress))
    try:
        with open_registry(host, plain_http=args.plain_http, insecure=args.insecure) as registry, login_hint(host):
            result = push_artifact(store, descriptor, registry, repo, ref, jobs=args.jobs or DEFAULT_JOBS,
                                   progress=emitter)
            if signing is not None:
                result["signed"] = _sign_pushed(registry, repo, ref, normalised, *signing)
    finally:
        emitter.close()
    if args.json:
        print_json(result)
    else:
        print(f"{result['digest']}  {result['reference']}  ({result['uploaded']} of {result['blobs']} blobs sent, "
              f"{human_size(result['bytes'])})")
        for signed in result.get("signed", []):
            print(f"{signed['digest']}  signed as {signed['identity']}")
    return 0


def _signing(args: argparse.Namespace) -> tuple[Signer, SigningKey] | None:
    """``(signer, key)`` for --sign (its passphrase asked now), or None."""
    if not args.sign:
        return None
    from modelbuild.signing.policy import get_signer, load_signing_key

    signer = get_signer(args.signer)
    return signer, load_signing_key(signer, args.key)


def _sign_pushed(registry: Registry, repo: str, ref: str, reference: str, signer: Signer,
                 key: SigningKey) -> list[dict[str, Any]]:
    from modelbuild.signing.policy import sign_reference

    return sign_reference(registry, repo, ref, reference, key, signer, recursive=True)
