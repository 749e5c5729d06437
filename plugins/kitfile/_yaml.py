"""A Kitfile's YAML, read into nodes that know where they are written.

PyYAML's own composer would do, but for three things a build file read from anyone needs:

* **where**: every node keeps the :class:`~modelbuild.api.Span` of its first character, so an
  error about a value points at it (``Kitfile:12:5: …``), as a Modelfile error does;
* **bounds**: the tree is built here from PyYAML's event stream, iteratively, refusing nesting
  deeper than :data:`MAX_DEPTH` and more than :data:`MAX_NODES` nodes as they arrive. PyYAML's
  composer recurses once per level (a file of 100,000 ``[`` overflows the stack), and aliases
  let a kilobyte name a billion strings (billion laughs): a Kitfile has no use for them, so an
  alias is refused where it is written, before anything is expanded;
* **KitOps' reading**: KitOps decodes a Kitfile with Go's ``yaml.v3`` (YAML 1.2): duplicate
  keys are errors, a scalar read into a string field is its text (``version: 1.0`` is
  ``"1.0"``), and only the 1.2 core schema types a value (``yes`` and ``2024-01-01`` stay
  strings). :func:`typed` resolves scalars that way; PyYAML's resolver is YAML 1.1's.

The text arrives already bounded and checked by the core (at most 1 MiB, UTF-8, no control
characters outside tabs and line ends), so only the structure is bounded here. The pure
Python parser is used even where libyaml is installed, so that error messages do not depend
on how PyYAML was built.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from modelbuild.api import ModelfileError, Span

MAX_DEPTH = 64  # KitOps' own tests nest parameters 7 deep
MAX_NODES = 50_000  # a Kitfile of every section is a few hundred values; 50,000 parse in about a second

YAML_NS = "tag:yaml.org,2002:"
# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution), as yaml.v3 reads it
_NULL = {"", "~", "null", "Null", "NULL"}
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}
_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)")
_NAN = re.compile(r"\.(nan|NaN|NAN)")
# characters no name, description or annotation should carry: a double-quoted YAML string can
# write them as escapes (\e, \x1b, \ud800), which the core's check of the raw text cannot see;
# a lone surrogate cannot even be written out as UTF-8
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


@dataclass(slots=True)
class Node:
    """A YAML node: ``kind`` is "scalar" (``value`` its text), "seq" (``items``) or "map"
    (``pairs`` of key and value nodes, in order)."""

    kind: str
    span: Span
    value: str = ""
    tag: str | None = None  # an explicit tag, resolved (``tag:yaml.org,2002:str``), else None
    plain: bool = True  # a plain (unquoted) scalar: the only kind a 1.2 resolver types
    items: list["Node"] = field(default_factory=list)
    pairs: list[tuple["Node", "Node"]] = field(default_factory=list)

    @property
    def is_null(self) -> bool:
        return self.kind == "scalar" and self.tag in (None, YAML_NS + "null") and self.plain and self.value in _NULL

    def what(self) -> str:
        """How a message names what was found here."""
        if self.kind == "map":
            return "a mapping"
        if self.kind == "seq":
            return "a list"
        return "null" if self.is_null else f"{shown(self.value)}"


def shown(text: str, limit: int = 60) -> str:
    """A value from the file as a message quotes it: repr'd (no newline or escape reaches the
    terminal) and cut short."""
    clipped = text if len(text) <= limit else text[:limit] + "…"
    return repr(clipped)


def compose(text: str, filename: str) -> Node | None:
    """The one document in *text* as nodes, or None for a file holding no document."""
    import yaml

    at = lambda mark: Span(filename, mark.line + 1, mark.column + 1)  # noqa: E731 - PyYAML counts from 0
    root: Node | None = None
    stack: list[Node] = []
    pending: list[Node | None] = []  # per open mapping: its key waiting for a value
    seen: list[dict[str, Span]] = []  # per open mapping: its keys so far
    documents = nodes = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise ModelfileError.at(at(event.start_mark),
                                        f"YAML alias *{event.anchor} is not supported in a Kitfile",
                                        hint="write the value out where it is used")
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise ModelfileError.at(at(event.start_mark), "a Kitfile holds one YAML document, found a second",
                                            hint="remove the '---' and what follows, or merge the documents")
                continue
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                stack.pop()
                if isinstance(event, yaml.MappingEndEvent):
                    pending.pop()
                    seen.pop()
                continue
            if not isinstance(event, (yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                continue  # stream and document ends
            nodes += 1
            span = at(event.start_mark)
            if nodes > MAX_NODES:
                raise ModelfileError.at(span, f"more than {MAX_NODES} YAML values; a Kitfile is a short manifest")
            tag = _explicit_tag(event.tag, span)
            if isinstance(event, yaml.ScalarEvent):
                node = Node("scalar", span, event.value, tag, plain=event.style in (None, ""))
            else:
                if len(stack) >= MAX_DEPTH:
                    raise ModelfileError.at(span, f"YAML nested more than {MAX_DEPTH} levels deep")
                node = Node("map" if isinstance(event, yaml.MappingStartEvent) else "seq", span, tag=tag)
            if not stack:
                root = node
            elif stack[-1].kind == "seq":
                stack[-1].items.append(node)
            elif pending[-1] is None:
                _check_key(node, seen[-1])
                pending[-1] = node
            else:
                stack[-1].pairs.append((pending[-1], node))  # type: ignore[arg-type]
                pending[-1] = None
            if node.kind != "scalar":
                stack.append(node)
                if node.kind == "map":
                    pending.append(None)
                    seen.append({})
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        span = at(mark) if mark is not None else Span(filename, 1, 1)
        hint = None
        if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
            hint = f"{exc.context} at line {exc.context_mark.line + 1}"
        raise ModelfileError.at(span, f"invalid YAML: {exc.problem or exc.context}", hint=hint) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (the core let it through)
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise ModelfileError.at(Span(filename, line, column),
                                f"invalid YAML: character U+{exc.character:04X} is not allowed") from None
    return root


_CORE_TAGS = {YAML_NS + t for t in ("str", "int", "float", "bool", "null", "binary", "timestamp", "map", "seq")}


def _explicit_tag(tag: str | None, span: Span) -> str | None:
    """The tag written on a node (``!!str``), or None when it has none or only ``!``
    (which YAML resolves as a string for a scalar; the caller knows it is not plain). A
    Kitfile is plain data: a tag outside YAML's own (``!!python/object``, ``!local``) is
    refused where it is written."""
    if tag in (None, "!"):
        return None
    if tag not in _CORE_TAGS:
        written = "!!" + tag[len(YAML_NS):] if tag.startswith(YAML_NS) else tag
        raise ModelfileError.at(span, f"unsupported YAML tag {shown(written)}",
                                hint="a Kitfile holds plain YAML values")
    return tag


def _check_key(key: Node, seen: dict[str, Span]) -> None:
    """A mapping key is a scalar written once per mapping (yaml.v3 refuses a repeated key)."""
    if key.kind != "scalar":
        raise ModelfileError.at(key.span, f"a mapping key must be a plain string, not {key.what()}")
    first = seen.get(key.value)
    if first is not None:
        raise ModelfileError.at(key.span, f"duplicate key {shown(key.value)} (first at line {first.line})",
                                hint="a key appears once per mapping")
    seen[key.value] = key.span


def check_text(node: Node, value: str) -> str:
    """*value*, refused when it carries a control character (written as an escape)."""
    bad = _CONTROL.search(value)
    if bad:
        what = "lone surrogate" if "\ud800" <= bad.group() <= "\udfff" else "control character"
        raise ModelfileError.at(node.span, f"{what} U+{ord(bad.group()):04X} in {shown(value)}",
                                hint="names and descriptions are printable text")
    return value


def typed(node: Node, where: str) -> Any:
    """The JSON value of *node* (any depth, bounded by :func:`compose`), its scalars typed by
    the YAML 1.2 core schema: what KitOps stores for a ``parameters`` section."""
    out: Any = None
    # iterative, as the tree may be MAX_DEPTH deep: (node, container to fill, key or None)
    work: list[tuple[Node, Any, Any]] = [(node, None, None)]
    while work:
        current, parent, key = work.pop()
        if current.kind == "map":
            value: Any = {}
            for k, v in current.pairs:
                work.append((v, value, check_text(k, k.value)))
        elif current.kind == "seq":
            value = [None] * len(current.items)
            for i, item in enumerate(current.items):
                work.append((item, value, i))
        else:
            value = _scalar(current, where)
        if parent is None:
            out = value
        else:
            parent[key] = value
    return out


def _scalar(node: Node, where: str) -> Any:
    text = node.value
    tag = node.tag
    if tag == YAML_NS + "str" or (tag is None and not node.plain):
        return check_text(node, text)
    if tag is None or tag in (YAML_NS + t for t in ("null", "bool", "int", "float")):
        if text in _NULL and tag in (None, YAML_NS + "null"):
            return None
        if tag in (None, YAML_NS + "bool") and text in _TRUE | _FALSE:
            return text in _TRUE
        if tag in (None, YAML_NS + "int") and _INT.fullmatch(text):
            if len(text) > 40:  # Python refuses to parse past 4300 digits; JSON readers past 64 bits
                raise ModelfileError.at(node.span, f"{where}: integer {shown(text, 20)} is too large")
            return int(text, 0) if text[:2] in ("0o", "0x") else int(text)
        if tag in (None, YAML_NS + "float") and (_INF.fullmatch(text) or _NAN.fullmatch(text)):
            raise ModelfileError.at(node.span, f"{where}: {text} cannot be carried in JSON",
                                    hint="KitOps stores parameters as JSON; quote it to keep the text")
        if tag in (None, YAML_NS + "float") and _FLOAT.fullmatch(text):
            number = float(text)
            if math.isinf(number):  # 1e400
                raise ModelfileError.at(node.span, f"{where}: {text} is too large for JSON")
            return number
        if tag is None:
            return check_text(node, text)
        raise ModelfileError.at(node.span, f"{shown(text)} is not a valid {tag.removeprefix(YAML_NS)}")
    if tag in (YAML_NS + "timestamp", YAML_NS + "binary"):
        return check_text(node, text)  # yaml.v3 keeps both as their text outside a typed field
    raise ModelfileError.at(node.span, f"{shown(text)} is not a {tag.removeprefix(YAML_NS)} value")


__all__ = ["MAX_DEPTH", "MAX_NODES", "Node", "check_text", "compose", "shown", "typed"]
