"""A Kitfile's paths → the files of the artifact, each a :class:`~modelbuild.api.FileSpec`.

KitOps packs each entry (the model, each part, each code, dataset and docs entry) as one tar
layer of its path, leaving out what ``.kitignore`` ignores and what another entry nested
inside it packs itself (``code: .`` beside ``model: models`` packs everything but
``models``). modelbuild packages a file as a layer of its own and a directory as one tar
layer, as a Modelfile's ``MODEL dir`` does, so an entry becomes:

* its path, whole, when nothing below it is left out (a directory is one tar layer, as in
  KitOps);
* otherwise the largest pieces that are whole: each subdirectory nothing is left out of is
  one layer, each remaining file one layer (``.``, the context itself, always splits so).

The checks a Modelfile's path gets from the core happen here, at the entry's ``path:`` (a
plugin sees only :mod:`modelbuild.api`, and nothing after the frontend checks a third-party
frontend's paths): no absolute path, no ``..`` out of the context, and, as KitOps'
``VerifySubpath`` insists, no symbolic link that resolves outside it; the path exists and is
a regular file or directory; every name below it is one an artifact can carry; a broken
link, a FIFO or a device below it is an error now, at the line, not midway through the build.

Where modelbuild and KitOps differ: KitOps tells nested entries apart by string prefix (so an
entry ``data`` also leaves out ``data2``); here it is whole path segments. KitOps skips every
symbolic link inside a directory; here a link to a file is packaged with the file's content
(as the core does for a Modelfile's directory), and a link to a directory is kept as a link
when its directory is packaged whole, skipped with a warning when the directory splits.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass

from modelbuild.api import FileKind, FileSpec, ModelfileError, Span, artifact_path_problem

from ._ignore import KitIgnore, go_clean
from ._yaml import shown

MAX_WALK = 1_000_000  # entries looked at under one build context
# KitOps' generator calls a model's files with these suffixes metadata, not weights
# (pkg/lib/kitfile/generate/generate.go, metadataSuffixes): here they are CONFIG layers
METADATA_SUFFIXES = (".json", ".yaml", ".xml", ".txt")


@dataclass(frozen=True, slots=True)
class Entry:
    """One ``path:`` of the Kitfile."""

    label: str  # "model", "model.parts[0]", "code[1]": how messages name it
    written: str  # the path as written
    span: Span  # where it is written
    kind: FileKind
    model: bool = False  # the model or a part: metadata files are CONFIG

    def kind_of(self, rel: str, is_dir: bool) -> FileKind:
        if self.model and not is_dir and rel.lower().endswith(METADATA_SUFFIXES):
            return FileKind.CONFIG
        return self.kind


def name_problem(rel: str) -> str | None:
    """Why an artifact cannot carry a file at *rel* (cleaned, relative), else None: the
    core's own rule, which ``pull -o`` applies on the way out."""
    return artifact_path_problem(rel)


def _name_error(rel: str, problem: str) -> ModelfileError:
    name = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return ModelfileError(f"{shown(name)}: this file name {problem}; an artifact cannot carry it, rename it")


def _special(mode: int) -> str | None:
    """How a user would name a file that is neither regular nor a directory."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "a special file"
    return None


def context_path(entry: Entry, context: str) -> str:
    """The entry's path relative to the context, cleaned as KitOps cleans it (``./data/`` →
    ``data``; ``.``: the context itself), after the checks that keep it inside."""
    raw = entry.written
    if raw.startswith("/"):
        raise ModelfileError(f"{shown(raw)} is an absolute path; a Kitfile's paths are relative to the build context")
    rel = go_clean(raw)
    if rel == ".." or rel.startswith("../"):
        raise ModelfileError(f"{shown(raw)} escapes the build context",
                             hint="a Kitfile's paths stay inside the build context; pass a CONTEXT that holds the file")
    if rel != "." and (problem := name_problem(rel)):
        raise _name_error(rel, problem)
    full = os.path.join(context, rel)
    try:
        st = os.stat(full)
    except FileNotFoundError:
        if os.path.islink(full):
            raise ModelfileError(f"{rel}: broken symlink (points to {os.readlink(full)!r})") from None
        hint = None
        if ":" in raw or "@" in raw:
            hint = "a model path that names another ModelKit is not supported; pull it and name its files"
        raise ModelfileError(f"{rel}: no such file or directory in {context}", hint=hint) from None
    except OSError as exc:
        raise ModelfileError(f"{rel}: cannot access ({exc.strerror})") from None
    real = os.path.realpath(full)
    if os.path.commonpath([real, context]) != context:  # context is real already
        raise ModelfileError(f"{shown(raw)} resolves outside the build context (to {real})",
                             hint="a symbolic link in a Kitfile's path must stay inside the context, "
                                  "as KitOps requires")
    if what := _special(st.st_mode):
        raise ModelfileError(f"{rel}: {what}, not a regular file or directory")
    readable = os.R_OK | (os.X_OK if stat.S_ISDIR(st.st_mode) else 0)
    if not os.access(full, readable):
        raise ModelfileError(f"{rel}: {'directory' if stat.S_ISDIR(st.st_mode) else 'file'} is not readable")
    return rel


@dataclass(slots=True)
class _Item:
    """A path met while walking an entry's directory."""

    rel: str
    kind: str  # "dir", "file" or "dirlink"
    excluded: bool = False
    dirty: bool = False  # something below it is left out: it cannot be one layer


class Collector:
    """Turns every entry into FileSpecs against one context, one ``.kitignore``."""

    def __init__(self, context: str, build_file: str | None) -> None:
        self.context = context
        self.ignore = KitIgnore.read(context)
        self.build_file = build_file  # the Kitfile's own path in the context, if it is in it
        self.walked = 0
        self.warnings: list[str] = []

    def files(self, entries: list[tuple[Entry, str]]) -> list[FileSpec]:
        """FileSpecs for *entries* (each with its checked context path), sorted by path."""
        paths = [rel for _, rel in entries]
        out: dict[str, FileSpec] = {}
        for entry, rel in entries:
            nested = [p for p in paths if p != rel and _inside(p, rel)]
            try:
                specs = self._entry(entry, rel, nested)
            except ModelfileError as exc:
                raise exc.located(entry.span) from None
            if not specs:
                why = ("is left out by .kitignore" if rel != "." and self._left_out(rel, nested)
                       else "holds nothing that .kitignore and the other entries leave to it")
                self.warnings.append(f"{entry.span}: {entry.label} path {shown(entry.written)} {why}; "
                                     "nothing is packaged for it")
            for spec in specs:
                out[spec.path] = spec
        return [out[p] for p in sorted(out)]

    def _left_out(self, rel: str, nested: list[str]) -> bool:
        return rel == self.build_file or rel in nested or self.ignore.ignores(rel)

    def _entry(self, entry: Entry, rel: str, nested: list[str]) -> list[FileSpec]:
        full = os.path.join(self.context, rel)
        if not os.path.isdir(full):
            if self._left_out(rel, nested):
                return []
            return [FileSpec(rel, entry.kind_of(rel, False), False, entry.span)]
        if rel != "." and self._left_out(rel, nested) and not self.ignore.has_exclusions:
            return []
        items, children = self._walk(rel, nested)
        return self._emit(entry, rel, items, children)

    def _walk(self, top: str, nested: list[str]) -> tuple[dict[str, _Item], dict[str, list[_Item]]]:
        """Every directory under *top* (``.``: the context) with its children, marked: left
        out, or dirty (something below is left out). Iterative: a tree may be deep."""
        children: dict[str, list[_Item]] = {}
        order: list[_Item] = []
        root = _Item(top, "dir", excluded=top != "." and self._left_out(top, nested))
        stack = [root]
        while stack:
            item = stack.pop()
            order.append(item)
            kids: list[_Item] = []
            base = os.path.join(self.context, item.rel)
            try:
                with os.scandir(base) as it:
                    names = sorted(e.name for e in it)
            except OSError as exc:
                raise ModelfileError(f"{item.rel}: cannot list ({exc.strerror})") from None
            for name in names:
                self.walked += 1
                if self.walked > MAX_WALK:
                    raise ModelfileError(f"more than {MAX_WALK} files and directories under {shown(top)}",
                                         hint="name the directories to package, or list the rest in .kitignore")
                rel = name if item.rel == "." else f"{item.rel}/{name}"
                left_out = self._left_out(rel, nested)
                if left_out and (rel in nested or not self.ignore.has_exclusions):
                    kids.append(_Item(rel, "skip", excluded=True))  # nothing below can come back
                    continue
                kind = self._check(rel, left_out)
                if kind == "skip":
                    kids.append(_Item(rel, "skip", excluded=True))
                    continue
                kid = _Item(rel, kind, excluded=left_out)
                kids.append(kid)
                if kind == "dir":
                    stack.append(kid)
            children[item.rel] = kids
        for item in reversed(order):  # children before parents: a left-out path dirties every directory above
            if item.excluded or any(k.excluded or k.dirty for k in children[item.rel]):
                item.dirty = True
        return {i.rel: i for i in order}, children

    def _check(self, rel: str, left_out: bool) -> str:
        """What the path at *rel* is ("dir", "file", "dirlink"), or "skip" for a left-out
        path that cannot come back; an error for something an artifact cannot hold."""
        full = os.path.join(self.context, rel)
        try:
            lst = os.lstat(full)
            st = os.stat(full) if stat.S_ISLNK(lst.st_mode) else lst
        except FileNotFoundError:
            if left_out:
                return "skip"
            raise ModelfileError(f"{rel}: broken symlink (points to {os.readlink(full)!r})") from None
        except OSError as exc:
            raise ModelfileError(f"{rel}: cannot access ({exc.strerror})") from None
        if left_out and (stat.S_ISLNK(lst.st_mode) or not stat.S_ISDIR(st.st_mode)):
            return "skip"  # only a directory may hold something a later "!" pattern brings back
        if left_out:  # a left-out directory, walked for what a "!" pattern may bring back
            return "dir" if os.access(full, os.R_OK | os.X_OK) else "skip"
        if problem := name_problem(rel):
            raise _name_error(rel, problem)
        if stat.S_ISLNK(lst.st_mode) and stat.S_ISDIR(st.st_mode):
            target = os.readlink(full)
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
            if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                raise ModelfileError(f"{shown(rel)}: symbolic link points outside the context ({target!r}); a pull "
                                     "could not write it (make it relative and inside, or copy what it points to)")
            return "dirlink"
        if what := _special(st.st_mode):
            raise ModelfileError(f"{rel}: {what}, not a regular file, directory or symlink")
        readable = os.R_OK | (os.X_OK if stat.S_ISDIR(st.st_mode) else 0)
        if not os.access(full, readable):
            raise ModelfileError(f"{rel}: {'directory' if stat.S_ISDIR(st.st_mode) else 'file'} is not readable")
        return "dir" if stat.S_ISDIR(st.st_mode) else "file"

    def _emit(self, entry: Entry, top: str, items: dict[str, _Item],
              children: dict[str, list[_Item]]) -> list[FileSpec]:
        """The largest whole pieces of *top*: itself if clean, else its clean parts."""
        if top != "." and not items[top].dirty:
            return [FileSpec(top, entry.kind_of(top, True), True, entry.span)]
        out: list[FileSpec] = []
        stack = [top]
        while stack:
            for kid in children[stack.pop()]:
                if kid.kind == "skip" or (kid.excluded and kid.kind != "dir"):
                    continue
                if kid.kind == "file":
                    out.append(FileSpec(kid.rel, entry.kind_of(kid.rel, False), False, entry.span))
                elif kid.kind == "dirlink":
                    self.warnings.append(f"{entry.span}: {kid.rel} is a link to a directory inside {entry.label}'s "
                                         "directory, which is split by .kitignore or another entry; not packaged")
                elif kid.dirty:
                    stack.append(kid.rel)
                else:
                    out.append(FileSpec(kid.rel, entry.kind_of(kid.rel, True), True, entry.span))
        return out


def _inside(path: str, directory: str) -> bool:
    """Whether *path* is strictly below *directory* (``.``: the context), by whole segments."""
    return directory == "." and path != "." or path.startswith(directory + "/")


__all__ = ["Collector", "Entry", "METADATA_SUFFIXES", "context_path", "name_problem"]
