"""``--cache-to`` and ``--cache-from`` values, in BuildKit's syntax, parsed and checked.

``type=registry,ref=HOST/REPO:TAG[,mode=max]`` or ``type=local,dest|src=DIR[,tag=T]``; a bare
``REF`` means ``type=registry,ref=REF``. ``mode=min`` (the default, as BuildKit) or
``mode=max`` says what an export records (:mod:`modelbuild.cache.exporter`). A failed export
is a warning and the build still succeeds (``ignore-error=false`` makes it an error).
Registry options: ``plain-http=true`` (no TLS) and ``insecure=true`` /
``registry.insecure=true`` (TLS without verifying the certificate). Every mistake is a
:class:`UsageError` (exit 2) naming the flag and the value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modelbuild.errors import UsageError

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
_KEYS = {
    "from": {"type", "ref", "src", "tag", "plain-http", "insecure", "registry.insecure"},
    "to": {"type", "ref", "dest", "tag", "mode", "ignore-error", "plain-http", "insecure", "registry.insecure"},
}


@dataclass(frozen=True)
class CacheSpec:
    """One ``--cache-to`` or ``--cache-from`` value, parsed."""

    type: str  # "registry" or "local"
    text: str  # as the user wrote it, for messages
    ref: str | None = None  # registry: HOST/REPO:TAG
    path: Path | None = None  # local: the OCI layout directory
    tag: str = "latest"  # local: the layout's tag
    mode: str = "min"
    ignore_error: bool = True
    plain_http: bool = False
    insecure: bool = False

    @property
    def where(self) -> str:
        return self.ref if self.type == "registry" else f"{self.path}:{self.tag}"


def parse_cache_spec(text: str, *, direction: str, plain_http: bool = False, insecure: bool = False) -> CacheSpec:
    """``type=registry,ref=R[,mode=max]`` or ``type=local,dest|src=DIR``; a bare ``R`` means
    ``type=registry,ref=R``. *direction* is ``"to"`` or ``"from"``."""
    flag = f"--cache-{direction}"
    if "=" not in text:
        fields = {"type": "registry", "ref": text}
    else:
        fields = {}
        for part in text.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise UsageError(f"bad {flag} {text!r}", hint="use KEY=VALUE pairs, e.g. type=registry,ref=HOST/REPO:TAG")
            fields[key.strip()] = value.strip()
    unknown = sorted(set(fields) - _KEYS[direction])
    if unknown:
        raise UsageError(f"{flag} {text!r}: unknown key {unknown[0]!r}",
                         hint="known keys: " + ", ".join(sorted(_KEYS[direction])))
    kind = fields.get("type", "registry")

    def flag_value(name: str, default: bool) -> bool:
        value = fields.get(name)
        if value is None:
            return default
        if value.lower() in _TRUE or value == "":
            return True
        if value.lower() in _FALSE:
            return False
        raise UsageError(f"{flag} {text!r}: {name} must be true or false")

    common = {
        "text": text,
        "plain_http": flag_value("plain-http", plain_http),
        "insecure": flag_value("insecure", False) or flag_value("registry.insecure", insecure),
    }
    if direction == "to":
        mode = fields.get("mode", "min")
        if mode not in ("min", "max"):
            raise UsageError(f"{flag} {text!r}: mode must be min or max")
        common.update(mode=mode, ignore_error=flag_value("ignore-error", True))
    if kind == "registry":
        from modelbuild.oci.registry import split_reference

        ref = fields.get("ref")
        if not ref:
            raise UsageError(f"{flag} {text!r} needs ref=HOST/REPO:TAG")
        _, _, parsed = split_reference(ref)
        if parsed.digest and direction == "to":
            raise UsageError(f"{flag} {text!r}: a cache is exported to a tag, not a digest")
        return CacheSpec("registry", ref=str(parsed), **common)
    if kind == "local":
        where = "dest" if direction == "to" else "src"
        if not fields.get(where):
            raise UsageError(f"{flag} {text!r} needs {where}=DIR")
        tag = fields.get("tag", "latest")
        return CacheSpec("local", path=Path(fields[where]).resolve(), tag=tag, **common)
    raise UsageError(f"{flag} {text!r}: unsupported type {kind!r}", hint="supported: registry, local")


def parse_cache_specs(texts: Iterable[str], *, direction: str, plain_http: bool = False,
                      insecure: bool = False) -> list[CacheSpec]:
    return [parse_cache_spec(t, direction=direction, plain_http=plain_http, insecure=insecure) for t in texts]


__all__ = ["CacheSpec", "parse_cache_spec", "parse_cache_specs"]
