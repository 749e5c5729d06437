"""The Modelfile text: metadata, one directive per kind of file, and what was left out.

Every path is written so that the Modelfile lexer gives it back unchanged and the pattern
matcher selects that file and nothing else: ``"`` ``\\`` ``$`` are escaped, a name with
blanks is quoted, ``*`` ``?`` ``[`` become one-character sets (the reference's only escape
for them), and a leading ``#`` is escaped (a continuation line starting with ``#`` would be a
comment). A glob is written only for a complete shard series (``model-*-of-00004.safetensors``
when all four exist and nothing else in that folder matches), where it says the same as the
list, shorter.
"""

from __future__ import annotations

import posixpath
import re
from typing import TYPE_CHECKING

from .kinds import DIRECTIVE, KINDS
from .scan import shown

if TYPE_CHECKING:
    from . import Plan

WIDTH = 88
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})(?P<ext>\.[A-Za-z0-9_.]+)$")


def quote(value: str, *, literal_path: bool = False) -> str:
    """*value* as one Modelfile argument that reads back as itself (a path: selects itself)."""
    out = []
    for ch in value:
        if ch in '"\\$':
            out.append("\\" + ch)
        elif literal_path and ch in "*?[":
            out.append(f"[{ch}]")
        else:
            out.append(ch)
    text = "".join(out)
    if text.startswith("#"):
        text = "\\" + text
    if not value or any(c in value for c in " \t"):
        text = f'"{text}"'
    return text


def directive(keyword: str, args: list[str]) -> str:
    """``KEYWORD a b \\`` wrapped at :data:`WIDTH`, continuations aligned under the first argument."""
    indent = " " * (len(keyword) + 1)
    lines, line = [], keyword
    for arg in args:
        if line.strip() and len(line) + 1 + len(arg) > WIDTH and line != keyword:
            lines.append(line + " \\")
            line = indent + arg
        else:
            line = f"{line} {arg}"
    lines.append(line)
    return "\n".join(lines)


def compress(paths: list[str], siblings: dict[str, set[str]]) -> list[str]:
    """*paths* (one kind), each complete shard series replaced by its glob when the glob
    selects exactly the series among *siblings* (folder → every non-hidden name in it)."""
    series: dict[tuple[str, str, str, str], list[str]] = {}
    for path in paths:
        folder, name = posixpath.split(path)
        m = _SHARD.match(name)
        if m and not any(c in path for c in "*?[]\\\"$ \t#"):
            series.setdefault((folder, m["stem"], m["n"], m["ext"]), []).append(path)
    out, done = [], set()
    for path in paths:
        if path in done:
            continue
        folder, name = posixpath.split(path)
        m = _SHARD.match(name)
        key = (folder, m["stem"], m["n"], m["ext"]) if m else None
        members = series.get(key, []) if key else []
        glob = f"{m['stem']}-*-of-{m['n']}{m['ext']}" if m else ""
        if key and len(members) == int(m["n"]) > 1 and _selects_exactly(glob, members, siblings.get(folder, set())):
            out.append(posixpath.join(folder, glob))
            done.update(members)
        else:
            out.append(quote(path, literal_path=True))
            done.add(path)
    return out


def _selects_exactly(glob: str, members: list[str], names: set[str]) -> bool:
    import fnmatch

    matched = {n for n in names if not n.startswith(".") and fnmatch.fnmatchcase(n, glob)}
    return matched == {posixpath.basename(m) for m in members}


def modelfile(plan: Plan) -> str:
    """The whole Modelfile for *plan*."""
    out = ["# syntax=modelfile",
           f"# Written by `modelbuild modelfile generate` for {shown(plan.directory_shown)}."]
    if plan.from_ref:
        out += ["# FROM names that directory; the paths below are relative to it.",
                f"FROM {quote(plan.from_ref)}"]
    else:
        out += ["# Paths are relative to that directory: keep this file there, or build with",
                f"#   modelbuild build -f MODELFILE {shown(plan.directory_shown)}"]
    out.append("")
    out += [f"{key} {quote(value)}" for key, value in plan.metadata() if key != "LICENSE"]
    if plan.licenses:
        out.append(directive("LICENSE", [quote(v) for v in plan.licenses]))
    by_kind = plan.by_kind()
    if any(by_kind.values()):
        out.append("")
    for kind in KINDS:
        if by_kind[kind]:
            out.append(directive(DIRECTIVE[kind], compress(by_kind[kind], plan.siblings)))
    if plan.skipped:
        out += ["", "# Left out (not packaged):"]
        out += [f"#   {shown(s.path)}: {shown(s.reason)}" for s in plan.skipped]
    return "\n".join(out) + "\n"
