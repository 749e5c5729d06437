"""Image references: ``[registry/]repository[:tag][@digest]``, as the distribution spec defines them.

One grammar for every reference modelbuild reads (``-t``, a Modelfile's ``NAME``, ``push``,
``pull``, ``tag``): repository path components ``[a-z0-9]+((.|_|__|-+)[a-z0-9]+)*`` joined
by ``/``, an optional registry ``host[:port]`` in front, a tag of at most 128 ASCII
characters ``[A-Za-z0-9_][A-Za-z0-9._-]*``, and at most 255 characters for registry and
repository together. A reference that breaks the grammar is refused with the reason, never
folded into something else.

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
_TAG = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
_REF = re.compile(
    rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>sha256:[0-9a-f]{{64}}))?"
)
NAME_TOTAL_MAX = 255  # registry host and repository path together (docker/distribution's limit)
GRAMMAR = ("a repository is lower-case letters and digits, separated by '.', '_', '__' or '-', in "
           "components joined by '/', e.g. registry.example.com:5000/team/model:1b")


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
    reason, hint = check_reference(text)
    if reason:
        raise UsageError(f"invalid reference {_quoted(text)}: {reason}", hint=hint)
    match = _REF.fullmatch(text)
    assert match is not None
    domain, path = _split_domain(match.group("domain"), match.group("path"))
    if domain:
        _check_host(domain, text)
    repository = f"{domain}/{path}" if domain else path
    tag = match.group("tag")
    digest = match.group("digest")
    if tag is None and digest is None:
        tag = default_tag
    return Reference(repository, tag, digest)


def check_reference(text: str) -> tuple[str | None, str | None]:
    """(None, None) when *text* follows the grammar, else (why not, a hint): the reason
    names the part at fault, so a user need not read the grammar to fix it."""
    match = _REF.fullmatch(text)
    if match is not None:
        domain, path = _split_domain(match.group("domain"), match.group("path"))
        repository = f"{domain}/{path}" if domain else path
        if domain is None and not re.fullmatch(rf"{_COMPONENT}(?:/{_COMPONENT})*", path):
            return _path_problem("", path)  # "Foo/bar": a first component that is no host name
        if len(repository) > NAME_TOTAL_MAX:
            return f"the repository name is {len(repository)} characters, more than {NAME_TOTAL_MAX}", None
        return None, None
    if not text:
        return "it is empty", None
    if not text.isprintable() or any(c.isspace() for c in text):
        return "it contains a space or a control character", None
    name, at, digest = text.partition("@")
    if at and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        return "a digest is sha256: and 64 lower-case hex digits", None
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    if tag is not None and not re.fullmatch(_TAG, tag):
        if len(tag) > 128:
            return f"the tag is {len(tag)} characters, more than 128", None
        return (f"tag {_quoted(tag)} is not ASCII letters, digits, '_', '.' and '-' "
                "(not starting with '.' or '-')"), None
    host, _, path = name.partition("/") if "/" in name else ("", "", name)
    if host and not (re.fullmatch(_DOMAIN, host) and ("." in host or ":" in host or host == "localhost")):
        if ":" in host:
            return f"registry {_quoted(host)} is not a host name with an optional port", None
        host, path = "", name
    return _path_problem(f"{host}/" if host else "", path)


def _path_problem(host: str, path: str) -> tuple[str, str | None]:
    """Why the repository path (after the registry *host*, with its slash) breaks the grammar."""
    for part in path.split("/"):
        if re.fullmatch(_COMPONENT, part):
            continue
        if not part:
            return "a repository path component is empty", GRAMMAR
        if re.fullmatch(_COMPONENT, part.lower()):
            return "repository names are lower-case", f"use {_quoted(host + path.lower())}"
        return f"path component {_quoted(part)} is not valid", GRAMMAR
    return "it is not [registry/]repository[:tag][@digest]", GRAMMAR


def _split_domain(domain: str | None, path: str) -> tuple[str | None, str]:
    """``host:5000/x`` and ``registry.example.com/x`` name a registry; in ``team/x`` the
    first component (no dot, no port, not localhost) is part of the path."""
    if domain and "." not in domain and ":" not in domain and domain != "localhost":
        return None, f"{domain}/{path}"
    return domain, path


def _quoted(text: str, width: int = 80) -> str:
    """A user's value in a message: repr'd (no newline or escape reaches the terminal), cut short."""
    return repr(text) if len(text) <= width else f"{text[:width]!r}… ({len(text)} characters)"


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
    """The default tag of a build without ``-t``: the Modelfile's NAME, which must then be a
    valid reference itself (``llama3``, ``team/llama3:8b``, ``registry.example.com:5000/m``);
    a bare repository is tagged ``latest``. Nothing is folded: ``NAME ../../x`` or
    ``NAME Llama`` is an error, not the tag ``x`` or ``llama``. The caller locates the error."""
    reason, hint = check_reference(name)
    if reason is None and "@" in name:
        reason, hint = "a NAME names a repository and a tag, not a digest", None
    folded = re.sub(r"\s+", "-", name.strip()).lower()  # "My Model" → my-model, if that is a reference
    if reason and hint is None and folded != name and check_reference(folded)[0] is None:
        hint = f"use {_quoted(folded)}"
    if reason:
        raise UsageError(f"NAME {_quoted(name)} is not a valid repository name: {reason}",
                         hint=f"{hint}; or pass -t NAME:TAG" if hint else "or pass -t NAME:TAG")
    return parse_reference(name)


def names_registry(text: str) -> bool:
    """Whether *text* is a reference to a registry (``host.name/…``, ``host:port/…``,
    ``localhost/…``) rather than a local tag or a path."""
    first, slash, _ = text.partition("/")
    if not slash or first in (".", "..", "~", ""):
        return False
    return "." in first or ":" in first or first == "localhost"
