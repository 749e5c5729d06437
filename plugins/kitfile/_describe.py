"""A read Kitfile → the :class:`~modelbuild.api.BuildDescription` a Modelfile would give.

Where each field goes is the table in docs/modelfile.md §10 (and this package's docstring):
fields the ModelPack config has a place for go there; every section also rides along whole,
as JSON, in one manifest annotation per section (``dev.modelbuild.kitfile.<section>``), so no
field the Kitfile set is lost, per-entry descriptions and licenses and ``parameters``
included.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from modelbuild.api import BuildDescription, FileKind, ModelfileError, Span

from ._files import Collector, Entry, context_path
from ._schema import Section, read_kitfile
from ._yaml import compose, shown

ANNOTATION_PREFIX = "dev.modelbuild.kitfile."
SECTIONS = ("package", "model", "code", "datasets", "docs", "prompts")
# each list section: its kind of layer, and how messages name one entry
LISTS = (("code", FileKind.CODE), ("datasets", FileKind.DATASET), ("docs", FileKind.DOC),
         ("prompts", FileKind.DOC))


def describe(text: str, *, filename: str, base_dir: Path, context: Path,
             build_args: Mapping[str, str]) -> BuildDescription:
    kitfile = read_kitfile(compose(text, filename), filename)
    root = str(context)
    entries = _entries(kitfile)
    checked: list[tuple[Entry, str]] = []
    seen: dict[str, Entry] = {}
    for entry in entries:
        try:
            rel = context_path(entry, root)
        except ModelfileError as exc:
            raise exc.located(entry.span) from None
        other = seen.get(rel)
        if other is not None:  # KitOps' ValidateKitfile: "… use the same path"
            raise ModelfileError.at(entry.span, f"{entry.label} uses the same path as {other.label} "
                                                f"(line {other.span.line}): {shown(rel)}",
                                    hint="each path is packaged once; a file inside another entry's directory "
                                         "is left to that file's own entry")
        seen[rel] = entry
        checked.append((entry, rel))
    collector = Collector(root, _build_file(filename, base_dir, root))
    files = collector.files(checked)
    if not files:
        raise ModelfileError.at(Span(filename, 1, 1), "nothing to package",
                                hint="every path is left out by .kitignore" if entries else
                                "list a model path, code, datasets or docs")
    descriptor, config, name_at = _descriptor(kitfile)
    warnings = list(collector.warnings)
    if build_args:
        warnings.append(f"build argument(s) not used by a Kitfile: {', '.join(sorted(build_args))}")
    return BuildDescription(
        context=context,
        files=tuple(files),
        name=descriptor.get("name"),
        name_origin=name_at,
        descriptor=descriptor,
        config=config,
        labels=_annotations(kitfile),
        source_file=filename,
        warnings=tuple(warnings),
    )


def _entries(kitfile: Section) -> list[Entry]:
    """Every ``path:`` in KitOps' packing order: the model, its parts, code, datasets, docs."""
    out: list[Entry] = []
    model = kitfile.get("model")
    if model is not None:
        if model.get("path"):
            out.append(Entry("model", model.get("path"), model.spans["path"], FileKind.MODEL, model=True))
        for part in model.sections("parts"):
            out.append(_entry(part, FileKind.MODEL, model=True))
    for key, kind in LISTS:
        out.extend(_entry(item, kind) for item in kitfile.sections(key))
    return out


def _entry(item: Section, kind: FileKind, model: bool = False) -> Entry:
    path = item.get("path")
    if not path:
        raise ModelfileError.at(item.span, f"{item.where} has no path",
                                hint="name a file or directory in the context; 'path: .' is the whole context")
    return Entry(item.where, path, item.spans["path"], kind, model)


def _build_file(filename: str, base_dir: Path, context: str) -> str | None:
    """The Kitfile's own path relative to the context when it is inside it (left out of a
    ``path: .``, as KitOps leaves out a file named Kitfile), else None."""
    if filename == "<stdin>":
        return None
    real = os.path.realpath(os.path.join(base_dir, os.path.basename(filename)))
    if os.path.commonpath([real, context]) != context or real == context:
        return None
    return os.path.relpath(real, context).replace(os.sep, "/")


def _descriptor(kitfile: Section) -> tuple[dict[str, Any], dict[str, Any], Span | None]:
    """The ModelPack config's ``descriptor`` and ``config`` fields the Kitfile sets, and
    where the name is written (a name that is no valid tag is an error there)."""
    package = kitfile.get("package") or Section("package", Span("", 1))
    model = kitfile.get("model") or Section("model", Span("", 1))
    descriptor: dict[str, Any] = {}
    name_at = None
    for key in ("name", "version", "description"):  # the package's, else the model's
        for section in (package, model):
            if section.get(key):
                descriptor[key] = section.get(key)
                if key == "name":
                    name_at = section.spans[key]
                break
    if package.get("authors"):
        descriptor["authors"] = list(package.get("authors"))
    licenses: list[str] = []
    for value in (package.get("license"), model.get("license"),
                  *(part.get("license") for part in model.sections("parts"))):
        if value and value not in licenses:
            licenses.append(value)
    if licenses:
        descriptor["licenses"] = licenses
    config = {"format": model.get("format")} if model.get("format") else {}
    return descriptor, config, name_at


def _annotations(kitfile: Section) -> dict[str, str]:
    """One manifest annotation per section the Kitfile sets: its fields as JSON, keys sorted
    (KitOps sorts ``parameters``' keys too), paths as written."""
    out: dict[str, str] = {}
    if kitfile.get("manifestVersion"):
        out[ANNOTATION_PREFIX + "manifestVersion"] = kitfile.get("manifestVersion")
    for key in SECTIONS:
        value = kitfile.get(key)
        if value is None or value == []:
            continue
        data = value.to_json() if isinstance(value, Section) else [v.to_json() for v in value]
        if data:
            out[ANNOTATION_PREFIX + key] = json.dumps(data, sort_keys=True, separators=(",", ":"),
                                                      ensure_ascii=False)
    return out


__all__ = ["ANNOTATION_PREFIX", "describe"]
