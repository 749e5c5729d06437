"""Walking a model directory as hostile input: what is there, and what must be left out.

A directory someone downloaded can hold anything: links out of it (to ``/etc/passwd`` named
``config.json``), named pipes that block the first ``open``, unreadable files, names with
newlines or bytes that are not UTF-8, a ``.git`` with a hundred thousand objects. The walk
never follows a link out of the directory nor into a directory, never opens anything but a
regular file, reads nothing (classification reads a header later), and stops at a bound.
Every entry it will not offer for packaging comes back as a :class:`Skipped` with the
reason, so the generated Modelfile can list it instead of losing it silently.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from modelbuild.artifact_paths import RESERVED_PREFIX
from modelbuild.errors import UsageError
from modelbuild.limits import env_int, raise_hint

MAX_FILES_VARIABLE = "MODELBUILD_GENERATE_MAX_FILES"
DEFAULT_MAX_FILES = 100_000
MAX_DEPTH = 64

# Never packaged: Python's caches are build output, not part of a model.
_CACHE_DIRS = {"__pycache__"}
_CACHE_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True, slots=True)
class Found:
    """A regular file (or a link to one inside the directory) offered for classification."""

    path: str  # relative, with '/' separators: what the Modelfile names
    source: str  # where to read it: the directory joined with path (a link is read through)
    size: int


@dataclass(frozen=True, slots=True)
class Skipped:
    """An entry left out of the Modelfile, with the reason a person reads in its comment."""

    path: str  # relative; a directory ends with '/'
    reason: str
    warn: bool = False  # True when the user should hear about it (not for .git or caches)


@dataclass
class Listing:
    found: list[Found]
    skipped: list[Skipped]


def walk(root: Path, *, exclude: frozenset[str] = frozenset()) -> Listing:
    """Every file under *root* (a resolved directory), in path order. *exclude* holds
    absolute paths never to offer (the Modelfile being written)."""
    limit = env_int(MAX_FILES_VARIABLE, DEFAULT_MAX_FILES)
    listing = Listing([], [])
    stack: list[tuple[str, int]] = [("", 0)]
    seen = 0
    while stack:
        rel_dir, depth = stack.pop()
        for name, rel, entry in _entries(root, rel_dir, listing):
            seen += 1
            if seen > limit:
                raise UsageError(f"{root} holds more than {limit} files and directories",
                                 hint=f"generate for a subdirectory, or {raise_hint(MAX_FILES_VARIABLE)}")
            if name.startswith(RESERVED_PREFIX):  # modelbuild's own bookkeeping (a fetched snapshot's record)
                continue
            problem = _name_problem(rel)
            if problem:
                listing.skipped.append(Skipped(shown(rel), problem, warn=True))
                continue
            if name.startswith("."):
                listing.skipped.append(Skipped(rel + ("/" if _is_real_dir(entry) else ""), "hidden"))
                continue
            if str(root / rel) in exclude:
                listing.skipped.append(Skipped(rel, "the Modelfile being written"))
                continue
            if _is_real_dir(entry):
                if name in _CACHE_DIRS:
                    listing.skipped.append(Skipped(rel + "/", "a Python cache"))
                elif depth + 1 >= MAX_DEPTH:
                    listing.skipped.append(Skipped(rel + "/", f"deeper than {MAX_DEPTH} levels", warn=True))
                else:
                    stack.append((rel, depth + 1))
                continue
            outcome = _file(root, rel, entry)
            if isinstance(outcome, Skipped):
                listing.skipped.append(outcome)
            elif name.endswith(_CACHE_SUFFIXES):
                listing.skipped.append(Skipped(rel, "Python bytecode"))
            elif name.lower() == "modelfile":
                listing.skipped.append(Skipped(rel, "a Modelfile"))
            else:
                listing.found.append(outcome)
    listing.found.sort(key=lambda f: f.path)
    listing.skipped.sort(key=lambda s: s.path)
    return listing


def _entries(root: Path, rel_dir: str, listing: Listing) -> list[tuple[str, str, os.DirEntry[str]]]:
    """The entries of one directory, sorted by name; an unreadable one is skipped, noted."""
    try:
        with os.scandir(root / rel_dir if rel_dir else root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        listing.skipped.append(Skipped(rel_dir + "/", f"cannot list it: {exc.strerror or exc}", warn=True))
        return []
    return [(e.name, f"{rel_dir}/{e.name}" if rel_dir else e.name, e) for e in entries]


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _file(root: Path, rel: str, entry: os.DirEntry[str]) -> Found | Skipped:
    """A regular file, or a link to one that stays inside *root*; anything else is skipped."""
    path = root / rel
    try:
        st = os.lstat(path)
    except OSError as exc:
        return Skipped(rel, f"cannot stat it: {exc.strerror or exc}", warn=True)
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(path)
        if target != str(root) and not _inside(root, target):  # a link to DIR itself is a directory link
            return Skipped(rel, "a link out of the directory (not followed)", warn=True)
        try:
            st = os.stat(target)
        except OSError:
            return Skipped(rel, f"a broken link (to {shown(os.readlink(path))})", warn=True)
        if stat.S_ISDIR(st.st_mode):
            return Skipped(rel + "/", "a link to a directory (not followed)", warn=True)
    kind = _not_regular(st.st_mode)
    if kind:
        return Skipped(rel, f"{kind}, not a regular file", warn=True)
    if not os.access(path, os.R_OK):
        return Skipped(rel, "not readable", warn=True)
    return Found(rel, str(path), st.st_size)


def _inside(root: Path, target: str) -> bool:
    return target != str(root) and target.startswith(str(root).rstrip(os.sep) + os.sep)


def _not_regular(mode: int) -> str | None:
    """None for a regular file, else what it is, in the build's own words."""
    from modelbuild.context import special_file_kind

    return None if stat.S_ISREG(mode) else special_file_kind(mode)


def _name_problem(rel: str) -> str | None:
    """Why a path cannot appear in a Modelfile line or an artifact, if it cannot: the build's
    own rule (:func:`modelbuild.artifact_paths.path_problem`: control characters, backslashes,
    invalid UTF-8, lengths), and line separators, which would end a Modelfile line."""
    from modelbuild.artifact_paths import path_problem

    problem = path_problem(rel)
    if problem is None and any(unicodedata.category(c) in ("Zl", "Zp") for c in rel):
        problem = "contains a line separator"
    return f"its name {problem} (rename it)" if problem else None


def shown(text: str) -> str:
    """*text* as it may appear on one line of a comment or a message: itself when every
    character is printable, else Python's escaped form (no newline, no raw byte)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return ascii(text)
    return text if all(c.isprintable() or c == " " for c in text) else ascii(text)
