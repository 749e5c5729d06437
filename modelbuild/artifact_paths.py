"""Which file paths and links an artifact may hold: one rule for building and for pulling.

``modelbuild build`` packages files under the paths these functions accept, and ``pull -o``
writes only paths they accept, so what a build produces, its own pull can write, and a hostile
artifact cannot choose a name outside the directory it is pulled into:

* a path is relative, POSIX, non-empty, with no ``.``/``..`` component, no backslash, no NUL
  or other control character (no newline or terminal escape reaches a screen or a log), each
  component at most 255 bytes and the whole at most 4096 (what Linux can create);
* names starting with ``.modelbuild-`` are reserved for the files modelbuild itself keeps in
  a directory while it writes there (staging, partial downloads);
* a symbolic link is relative and stays inside the artifact's root once resolved from where it
  stands (the rule of Python's ``tarfile`` ``data`` filter, checked here before anything is
  written).
"""

from __future__ import annotations

import posixpath
import re

RESERVED_PREFIX = ".modelbuild-"
MAX_COMPONENT = 255
MAX_PATH = 4096
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def path_problem(rel: object) -> str | None:
    """Why *rel* may not name a file of an artifact, or None when it may."""
    if not isinstance(rel, str) or not rel:
        return "is empty or not a string"
    if _CONTROL.search(rel):
        return "contains a control character"
    if "\\" in rel:
        return "contains a backslash"
    if rel.startswith("/"):
        return "is absolute"
    try:
        encoded = rel.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if len(encoded) > MAX_PATH:
        return f"is longer than {MAX_PATH} bytes"
    parts = rel.rstrip("/").split("/")
    for part in parts:
        if part in ("", ".", ".."):
            return "has an empty, '.' or '..' component"
        if len(part.encode("utf-8")) > MAX_COMPONENT:
            return f"has a component longer than {MAX_COMPONENT} bytes"
    if parts[0].startswith(RESERVED_PREFIX):
        return f"starts with {RESERVED_PREFIX!r}, a name modelbuild reserves for its own files"
    return None


def link_problem(rel: str, target: object) -> str | None:
    """Why a symbolic link at *rel* pointing to *target* may not be part of an artifact."""
    if not isinstance(target, str) or not target:
        return "has an empty target"
    if _CONTROL.search(target):
        return "has a target with a control character"
    if target.startswith("/"):
        return f"points to an absolute path ({target!r})"
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if resolved == ".." or resolved.startswith("../"):
        return f"points outside the artifact ({target!r})"
    return None


def normalise(rel: str) -> str:
    """A tar member name as a path: ``./a/b/`` → ``a/b``."""
    while rel.startswith("./"):
        rel = rel[2:]
    return rel.rstrip("/")


__all__ = ["MAX_COMPONENT", "MAX_PATH", "RESERVED_PREFIX", "link_problem", "normalise", "path_problem"]
