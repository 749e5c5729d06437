"""The Kitfile's schema, as KitOps declares it, and the reading of YAML nodes against it.

The fields are KitOps' ``pkg/artifact/kitfile.go`` (``KitFile``, ``Package``, ``Model``,
``ModelPart``, ``Code``, ``DataSet``, ``Docs``), which KitOps decodes with
``KnownFields(true)``: a key it does not declare is an error, here with the closest known key
suggested. ``prompts`` is modelbuild's addition (KitOps 1.x refuses it): a list like
``docs`` whose files are packaged as documentation.

Reading follows Go's ``yaml.v3`` into those structs: a null or empty value leaves a field
unset (``omitempty``); any scalar read into a string field is its text as written; a list of
strings must be a list.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from modelbuild.api import ModelfileError, Span

from ._yaml import Node, check_text, shown, typed

STR, STRS, ANY = "string", "list of strings", "any"
SCHEMA: dict[str, dict[str, str]] = {
    "kitfile": {"manifestVersion": STR, "package": "package", "model": "model", "code": "[code]",
                "datasets": "[dataset]", "docs": "[docs]", "prompts": "[prompt]"},
    "package": {"name": STR, "version": STR, "description": STR, "license": STR, "authors": STRS},
    "model": {"name": STR, "path": STR, "license": STR, "framework": STR, "format": STR, "version": STR,
              "description": STR, "parts": "[part]", "parameters": ANY},
    "part": {"name": STR, "path": STR, "license": STR, "type": STR},
    "code": {"path": STR, "description": STR, "license": STR},
    "dataset": {"name": STR, "path": STR, "description": STR, "license": STR, "parameters": ANY},
    "docs": {"path": STR, "description": STR},
    "prompt": {"name": STR, "path": STR, "description": STR, "license": STR},
}
_SUGGEST_MAX = 64  # difflib is quadratic: no suggestion for a longer key
PART_TYPE_MAX = 64  # KitOps' partTypeMaxLen and partTypeRegexp (pkg/lib/kitfile/validate.go)
_PART_TYPE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(slots=True)
class Section:
    """One mapping of the Kitfile, read: its set fields, and where each is written."""

    where: str  # "package", "model.parts[1]", "" for the top level
    span: Span
    values: dict[str, Any] = field(default_factory=dict)  # str, list[str], Section, list[Section], JSON
    spans: dict[str, Span] = field(default_factory=dict)  # where each value is written

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def sections(self, key: str) -> list["Section"]:
        return self.values.get(key) or []

    def to_json(self) -> dict[str, Any]:
        """The fields as KitOps' config JSON holds them (unset ones left out)."""
        out: dict[str, Any] = {}
        for key, value in self.values.items():
            if isinstance(value, Section):
                out[key] = value.to_json()
            elif isinstance(value, list) and value and isinstance(value[0], Section):
                out[key] = [v.to_json() for v in value]
            else:
                out[key] = value
        return out


def _name(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def read_kitfile(root: Node | None, filename: str) -> Section:
    """The top-level mapping, every section read and checked."""
    if root is None:
        raise ModelfileError.at(Span(filename, 1, 1), "empty Kitfile",
                                hint="a Kitfile starts with manifestVersion: 1.0.0 and lists a model, code, "
                                     "datasets or docs")
    if root.kind != "map":
        raise ModelfileError.at(root.span, f"a Kitfile is a YAML mapping (manifestVersion: …, model: …), "
                                           f"not {root.what()}")
    return read_section(root, "kitfile", "")


def read_section(node: Node, schema: str, where: str) -> Section:
    fields = SCHEMA[schema]
    if node.kind != "map":
        raise ModelfileError.at(node.span, f"{where} must be a mapping (key: value), not {node.what()}")
    section = Section(where, node.span)
    for key, value in node.pairs:
        name = key.value
        spec = fields.get(name)
        if spec is None:
            raise _unknown(key, fields, where)
        if value.is_null:
            continue  # yaml.v3 leaves the field at its zero value: unset
        full = _name(where, name)
        if spec == STR:
            text = _string(value, full)
            if text:
                section.values[name] = text
        elif spec == STRS:
            if value.kind != "seq":
                raise ModelfileError.at(value.span, f"{full} must be a list of strings, not {value.what()}",
                                        hint=f"write {name}: [one, two] or one '- item' a line")
            items = [_string(item, f"{full}[{i}]") for i, item in enumerate(value.items)]
            if any(items):
                section.values[name] = [item for item in items if item]
        elif spec == ANY:
            section.values[name] = typed(value, full)
        elif spec.startswith("["):
            if value.kind != "seq":
                raise ModelfileError.at(value.span, f"{full} must be a list of mappings ('- path: …'), "
                                                    f"not {value.what()}")
            section.values[name] = [read_section(item, spec[1:-1], f"{full}[{i}]")
                                    for i, item in enumerate(value.items)]
        else:
            section.values[name] = read_section(value, spec, full)
        section.spans[name] = value.span
    if schema == "part":
        _check_part_type(section)
    return section


def _string(node: Node, full: str) -> str:
    """A scalar's text, as yaml.v3 reads any scalar into a Go string."""
    if node.kind != "scalar":
        raise ModelfileError.at(node.span, f"{full} must be a string, not {node.what()}")
    return "" if node.is_null else check_text(node, node.value)


def _unknown(key: Node, fields: dict[str, str], where: str) -> ModelfileError:
    name = key.value
    known = list(fields)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6) if len(name) <= _SUGGEST_MAX else []
    place = f" in {where}" if where else ""
    hint = f"did you mean {close[0]}?" if close else f"{where or 'a Kitfile'} takes: {', '.join(known)}"
    return ModelfileError.at(key.span, f"unknown key {shown(name)}{place}", hint=hint)


def _check_part_type(part: Section) -> None:
    """KitOps' rule for a part's ``type`` (``lora-adapter``): word characters, dots and dashes."""
    kind = part.get("type")
    if kind is None:
        return
    span = part.spans["type"]
    if len(kind) > PART_TYPE_MAX:
        raise ModelfileError.at(span, f"{part.where}.type is longer than {PART_TYPE_MAX} characters")
    if not _PART_TYPE.fullmatch(kind):
        raise ModelfileError.at(span, f"{part.where}.type {shown(kind)} is not a part type",
                                hint="letters, digits, '_', '.' and '-', starting with a letter, digit or '_'")


__all__ = ["SCHEMA", "Section", "read_kitfile", "read_section"]
