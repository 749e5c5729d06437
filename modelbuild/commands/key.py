"""``modelbuild key generate``: an ECDSA P-256 key pair in cosign's files (``cosign
generate-key-pair``): ``PREFIX.key``, encrypted with a passphrase and readable by its owner
only (0600), and ``PREFIX.pub``. Both cosign and skopeo read them (docs/signing.md).
"""

from __future__ import annotations

import argparse

HELP = """\
examples:
  COSIGN_PASSWORD=… modelbuild key generate              cosign.key and cosign.pub here
  modelbuild key generate --output-key-prefix keys/team  asks for the passphrase twice

The passphrase comes from COSIGN_PASSWORD when it is set (it may be empty), else from the
terminal. It is never printed, logged or written anywhere but into the key's encryption.
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = HELP
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    gen = sub.add_parser("generate", help="write a new key pair: PREFIX.key (encrypted, 0600) and PREFIX.pub",
                         description="write a new ECDSA P-256 key pair: PREFIX.key (encrypted, 0600) and PREFIX.pub",
                         epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    gen.add_argument("--output-key-prefix", default="cosign", metavar="PREFIX",
                     help="where to write the files (default: cosign, so ./cosign.key and ./cosign.pub)")
    gen.add_argument("--force", action="store_true", help="replace existing key files")
    gen.add_argument("--json", action="store_true", help="print the files written and the key's fingerprint as JSON")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from modelbuild.commands._common import print_json
    from modelbuild.errors import UsageError
    from modelbuild.signing import keys

    if args.action != "generate":
        raise UsageError("say what to do: modelbuild key generate [--output-key-prefix PREFIX]")
    private, public = Path(f"{args.output_key_prefix}.key"), Path(f"{args.output_key_prefix}.pub")
    if not private.parent.is_dir():
        raise UsageError(f"{private.parent} is not a directory")
    for path in (private, public):
        if (path.exists() or path.is_symlink()) and not args.force:
            raise UsageError(f"{path} exists", hint="pass --force to replace it, or choose --output-key-prefix")
    passphrase = keys.passphrase_for(str(private), confirm=True)()
    key_bytes, pub_bytes = keys.generate(passphrase)
    try:
        keys.write_private(private, key_bytes, force=args.force)
    except FileExistsError:
        raise UsageError(f"{private} appeared while the key was made; nothing written") from None
    except OSError as exc:
        raise UsageError(f"cannot write {private}: {exc.strerror}") from None
    try:
        if args.force and public.is_symlink():
            public.unlink()
        public.write_bytes(pub_bytes)
    except OSError as exc:
        raise UsageError(f"cannot write {public}: {exc.strerror}") from None
    fingerprint = keys.load_public_key(str(public)).fingerprint
    if args.json:
        print_json({"privateKey": str(private), "publicKey": str(public), "fingerprint": fingerprint})
    else:
        print(f"Private key written to {private} (0600, encrypted)")
        print(f"Public key written to {public}  ({fingerprint})")
    return 0
