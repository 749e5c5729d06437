"""Image references: ``[registry/]repository[:tag][@digest]``, as the distribution spec defines them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelbuild.errors import UsageError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
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
    repository = f"{domain}/{path}" if domain else path
    tag = match.group("tag")
    digest = match.group("digest")
    if tag is None and digest is None:
        tag = default_tag
    return Reference(repository, tag, digest)


def reference_from_name(name: str) -> Reference:
    """A tag derived from a Modelfile NAME: lower-cased, other characters folded to ``-``."""
    import unicodedata

    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9._/-]+", "-", ascii_name.lower()).strip("-._/")
    if not slug:
        raise UsageError(f"cannot derive a tag from NAME {name!r}", hint="pass -t NAME:TAG")
    return parse_reference(slug)
