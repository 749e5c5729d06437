"""``modelbuild login``: check credentials against a registry and save them where docker
keeps them (config.json, or its credential helper), so docker, oras and skopeo share them."""

from __future__ import annotations

import argparse
import sys

HELP = """\
examples:
  modelbuild login registry.example.com                    asks for the username and password
  echo "$TOKEN" | modelbuild login ghcr.io -u me --password-stdin
  modelbuild login localhost:5000 -u me --password-stdin --plain-http

The password is never printed or logged. Without a credential helper configured it is
stored base64-encoded (not encrypted) in $DOCKER_CONFIG/config.json, as docker does.
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = HELP
    p.add_argument("server", metavar="HOST", help="the registry, e.g. registry.example.com or localhost:5000")
    p.add_argument("-u", "--username", help="the username (asked for when missing)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument("--plain-http", action="store_true", help="talk to the registry over HTTP, not HTTPS")
    p.add_argument("--insecure", action="store_true", help="accept a registry certificate that does not verify")


def _host(server: str) -> str:
    from modelbuild.errors import UsageError
    from modelbuild.oci.auth import _host_of

    host = _host_of(server)
    if not host or any(c.isspace() for c in host):
        raise UsageError(f"{server!r} is not a registry host", hint="e.g. registry.example.com or localhost:5000")
    return host


def run(args: argparse.Namespace) -> int:
    import getpass

    from modelbuild.errors import UsageError
    from modelbuild.oci.auth import Auth, AuthError, Credentials, store_credentials
    from modelbuild.oci.registry import Registry, RegistryAuthError

    host = _host(args.server)
    username = args.username
    if not username:
        if not sys.stdin.isatty() or args.password_stdin:
            raise UsageError("no username", hint="pass -u USER")
        username = input("Username: ").strip()
    if args.password_stdin:
        password = sys.stdin.read()
        password = password.removesuffix("\n")
        password = password.removesuffix("\r")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        raise UsageError("no password: standard input is not a terminal", hint="pipe it in with --password-stdin")
    if not username or not password:
        raise UsageError("the username and the password must not be empty")
    creds = Credentials(username, password)
    auth = Auth(creds)
    try:
        with Registry(host, plain_http=args.plain_http, insecure=args.insecure, auth=auth) as registry:
            registry.ping()  # raises, masked, when the registry refuses them
    except AuthError as exc:
        raise RegistryAuthError(auth.mask(exc.message), hint="check the username and password") from None
    except RegistryAuthError as exc:
        exc.hint = "check the username and password"
        raise
    where = store_credentials(host, creds)
    print(f"Login Succeeded: {username} at {host} (saved in {where})")
    return 0
