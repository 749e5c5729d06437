"""Manifests as YAML text: a small block-style emitter for plain data (no PyYAML in the core).

JSON is valid YAML, but people read and diff Kubernetes manifests in block style, so this
writes mappings and sequences one entry a line, as ``kubectl`` does (a sequence under a key
at the key's indentation). Only the values manifests hold are accepted: dicts with string
keys, lists, strings, ints, bools and None.

A string is written bare only when no YAML 1.1 or 1.2 reader can take it for anything else:
it starts with a letter or ``/`` (or dashes and a letter, as ``--port``), or is a
Kubernetes quantity (``1280Mi``, which no YAML version reads as a number), holds no space,
``#`` or quote, has no ``:`` before a space or at its end, and is not one of YAML 1.1's
booleans (``yes``, ``on``, ``n``…) or ``null``. A multi-line string (a ConfigMap's file)
is a literal block (``|``) when its lines allow one; anything else is double-quoted with
JSON's escapes, plus YAML's for the characters a YAML reader would take as line breaks.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_PLAIN = re.compile(r"(?:[A-Za-z/]|-+[A-Za-z])[A-Za-z0-9_./@+=,-]*(?::[A-Za-z0-9_./@+=,-]+)*"
                    r"|[0-9]+(?:Ki|Mi|Gi|Ti|Pi|k|M|G|T|m)")  # a Kubernetes quantity: 1280Mi, 500m
# YAML 1.1 reads these as booleans or null whatever their case (PyYAML, Go's yaml.v2)
_WORDS = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}
# what a YAML reader takes as a line break or refuses in a stream, escaped in quoted strings
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")


def plain_ok(text: str) -> bool:
    """Whether *text* reads back as the same string when written bare."""
    return bool(_PLAIN.fullmatch(text)) and text.lower() not in _WORDS


def quoted(text: str) -> str:
    """*text* double-quoted: JSON's escapes, which YAML's double-quoted style shares, and
    ``\\u``/``\\U`` escapes for line separators, C1 controls and unpaired surrogates."""
    body = json.dumps(text, ensure_ascii=False)
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", body)


def scalar(value: Any) -> str:
    """One scalar as YAML text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no place in a manifest")
        return repr(value)
    if isinstance(value, str):
        return value if plain_ok(value) else quoted(value)
    raise TypeError(f"cannot write a {type(value).__name__} as YAML")


def _literal(text: str) -> tuple[str, list[str]] | None:
    """A literal block for a multi-line string: its indicator and lines, or None when
    quoting is safer (a line a reader would take as indentation, characters it refuses)."""
    if "\n" not in text or "\r" in text or _UNSAFE.search(text):
        return None
    body = text.rstrip("\n")
    trailing = len(text) - len(body)
    lines = body.split("\n")
    if not body or lines[0][:1] in (" ", "\t") or any(line.strip() == "" and line for line in lines):
        return None
    chomp = {0: "|-", 1: "|"}.get(trailing, "|+")
    return chomp, lines + [""] * max(0, trailing - 1)


def _block(value: Mapping[str, Any] | Sequence[Any], indent: int) -> list[str]:
    """The lines of a non-empty mapping or sequence whose entries start at *indent*."""
    pad = " " * indent
    out: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"a manifest key must be a string, not {key!r}")
            out += _entry(f"{pad}{scalar(key)}:", item, indent, indent + 2)
    else:
        for item in value:
            out += _entry(f"{pad}-", item, indent, indent + 2, in_sequence=True)
    return out


def _entry(head: str, value: Any, indent: int, inner: int, *, in_sequence: bool = False) -> list[str]:
    """*head* (``key:`` or ``-``) followed by *value*: on the same line when it is a scalar,
    below it when it is a collection (a sequence item's mapping starts on the dash's line)."""
    if isinstance(value, (Mapping, list, tuple)) and value:
        if in_sequence:
            lines = _block(value, inner)
            return [f"{head} {lines[0].lstrip()}", *lines[1:]]
        # kubectl's style: a sequence under a key sits at the key's own indentation
        return [head, *_block(value, indent if isinstance(value, (list, tuple)) else inner)]
    if isinstance(value, Mapping):
        return [f"{head} {{}}"]
    if isinstance(value, (list, tuple)):
        return [f"{head} []"]
    if isinstance(value, str):
        block = _literal(value)
        if block is not None:
            indicator, lines = block
            pad = " " * inner
            return [f"{head} {indicator}", *[f"{pad}{line}" if line else "" for line in lines]]
    return [f"{head} {scalar(value)}"]


def dump(document: Mapping[str, Any]) -> str:
    """One document (a mapping) as block-style YAML, ending with a newline."""
    return "\n".join(_block(document, 0) if document else ["{}"]) + "\n"


def dump_all(documents: Iterable[Mapping[str, Any]], comments: Iterable[str] = ()) -> str:
    """A multi-document stream: *comments* as ``#`` lines first (one line each: a line break
    in one is replaced by a space), then each document after a ``---`` line."""
    head = "".join(f"# {' '.join(line.splitlines())}".rstrip() + "\n" for line in comments)
    return head + "".join(f"---\n{dump(doc)}" for doc in documents)


__all__ = ["dump", "dump_all", "plain_ok", "quoted", "scalar"]
