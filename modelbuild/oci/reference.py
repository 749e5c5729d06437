"""Image references: ``[registry/]repository[:tag][@digest]``, as the distribution spec defines them.

The registry host is checked here, where a bad one is a usage error (exit 2), rather than in
the HTTP library, where it would surface as a crash: a port from 1 to 65535, an IPv6 literal
that is one, DNS labels of at most 63 characters and a name of at most 253.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from modelbuild.errors import UsageError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_REF = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


@dataclass(frozen=True, slots=True)
class Reference:
    repository: str  # including the registry host when there is one
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        out = self.repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_reference(text: str, *, default_tag: str | None = "latest") -> Reference:
    """Parse and validate a reference; a bare repository gets *default_tag*."""
    match = _REF.match(text)
    if not match:
        hint = "references are lower-case, like registry.example.com/team/model:tag"
        if text != text.lower():
            hint = f"repository names are lower-case: {text.lower()!r}"
        raise UsageError(f"invalid reference {text!r}", hint=hint)
    domain, path = match.group("domain"), match.group("path")
    # "host:5000/x" parses as domain; "name" alone with no dot or colon is a path.
    if domain and "." not in domain and ":" not in domain and domain != "localhost":
        path = f"{domain}/{path}"
        domain = None
    if domain:
        _check_host(domain, text)
    repository = f"{domain}/{path}" if domain else path
    tag = match.group("tag")
    digest = match.group("digest")
    if tag is None and digest is None:
        tag = default_tag
    return Reference(repository, tag, digest)


def _check_host(domain: str, text: str) -> None:
    """A usage error for a registry host no connection can be made to."""
    name, port = domain, None
    if domain.startswith("["):
        name, _, rest = domain[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            raise UsageError(f"invalid reference {text!r}: [{name}] is not an IPv6 address") from None
    elif ":" in domain:
        name, _, port = domain.rpartition(":")
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise UsageError(f"invalid reference {text!r}: port {port} is not from 1 to 65535")
    if not domain.startswith("[") and (len(name) > 253 or any(len(label) > 63 for label in name.split("."))):
        raise UsageError(f"invalid reference {text!r}: {name[:80]} is not a valid host name",
                         hint="a DNS name has labels of at most 63 characters, 253 in all")


def reference_from_name(name: str) -> Reference:
    """A tag derived from a Modelfile NAME: lower-cased, other characters folded to ``-``."""
    import unicodedata

    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9._/-]+", "-", ascii_name.lower()).strip("-._/")
    if not slug:
        raise UsageError(f"cannot derive a tag from NAME {name!r}", hint="pass -t NAME:TAG")
    return parse_reference(slug)
