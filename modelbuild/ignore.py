"""``.modelbuildignore`` and ``build --exclude``: files that are never part of the build context.

The syntax is git's (gitignore(5)), so a ``.gitignore`` can be copied or linked as it is:

* a blank line matches nothing; a line starting with ``#`` is a comment (``\\#`` for a name
  that starts with ``#``); trailing spaces are dropped unless escaped (``\\ ``); a ``\\r``
  before the newline is dropped, so CRLF files work;
* ``!`` negates: a path a previous rule excluded is included again (``\\!`` for a name that
  starts with ``!``); the **last** rule that matches a path decides;
* a trailing ``/`` matches directories only (a symlink is not a directory);
* a ``/`` at the start or in the middle anchors the rule at the context's root; a rule with
  no ``/`` but a trailing one matches a name at any depth;
* ``*`` matches anything but ``/``, ``?`` one character but ``/``, ``[…]`` one character of a
  class (``[!…]`` and ``[^…]`` negate; ranges; ``[:alpha:]`` and the other POSIX classes);
  a backslash makes the next character literal;
* ``**`` as a whole segment: ``**/x`` is ``x`` at any depth, ``a/**/b`` is ``b`` at any depth
  under ``a`` (``a/b`` too), and a trailing ``a/**`` is everything *inside* ``a`` (not ``a``
  itself); elsewhere ``**`` is ``*``;
* **a path inside an excluded directory cannot be re-included** (git's rule: git does not
  look inside a directory it ignores). Exclude the directory's contents (``drafts/*``) rather
  than the directory (``drafts/``) to re-include a file of it (``!drafts/keep.md``).

Departures from git, all of them errors where git would silently match nothing: a ``..`` or
``.`` segment (patterns are paths inside the context: they cannot reach outside it), an
unclosed ``[``, a trailing backslash, an unknown ``[:class:]``.

Where the rules come from (:func:`context_rules`), later rules winning: the ignore file,
then each ``--exclude PATTERN``. The ignore file is ``<Modelfile>.modelbuildignore`` beside
the Modelfile when there is one (docker's ``Dockerfile.dockerignore``), else
``.modelbuildignore`` at the context's root. Only that one file is read: a
``.modelbuildignore`` in a subdirectory is an ordinary file.

Bounds on hostile input: the ignore file is read only if it is a regular file (or a symlink
to one inside the directory it lies in), at most ``MODELBUILD_MAX_IGNORE_BYTES`` bytes
(1 MiB), holding at most ``MODELBUILD_MAX_IGNORE_PATTERNS`` rules (10,000), each at most
:data:`MAX_PATTERN_LENGTH` characters. Matching cannot backtrack exponentially: a run of
``*`` inside a segment is an atomic regex group, and ``**`` segments are matched by the
linear wildcard walk of :func:`_match_segments`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import stat
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from modelbuild import limits as _env
from modelbuild.errors import ModelfileError, Span, UsageError

if TYPE_CHECKING:
    from modelbuild.description import BuildDescription

IGNORE_FILE = ".modelbuildignore"
MAX_PATTERN_LENGTH = 4096  # PATH_MAX: a longer pattern could match no path
ENV_BYTES = "MODELBUILD_MAX_IGNORE_BYTES"
ENV_PATTERNS = "MODELBUILD_MAX_IGNORE_PATTERNS"
DEFAULT_BYTES = 1 << 20
DEFAULT_PATTERNS = 10_000


class IgnoreFileError(ModelfileError):
    """A problem in an ignore file: located in that file, never at the Modelfile line that
    happened to be read when the file was loaded (the interpreter's :meth:`located`)."""

    def located(self, span: Span) -> "IgnoreFileError":
        return self


class PatternError(ValueError):
    """A pattern that cannot be compiled; *column* is 1-based, in the pattern as written."""

    def __init__(self, message: str, column: int, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.column, self.hint = message, column, hint


# -- compiled rules --------------------------------------------------------------------------

class _StarStar:
    """A ``**`` segment: zero or more path segments."""

    def __repr__(self) -> str:
        return "**"


STARSTAR = _StarStar()
_ANY = re.compile(r"(?s).+")  # one segment, whatever its name (a trailing ``/**``'s first)


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled line: *text* is the pattern as kept (``!`` and escapes included, trailing
    blanks trimmed), from which the same rule can be compiled again."""

    text: str
    origin: str  # ".modelbuildignore:3" or "--exclude"
    negate: bool
    dir_only: bool
    segments: tuple = field(compare=False, repr=False)  # of str (a literal name), re.Pattern and STARSTAR

    def matches(self, names: Sequence[str], is_dir: bool) -> bool:
        """Whether this rule's pattern matches the path *names* (its segments) itself."""
        if self.dir_only and not is_dir:
            return False
        segs = self.segments
        if len(segs) == 2 and segs[0] is STARSTAR and segs[1] is not STARSTAR:
            return _segment_matches(segs[1], names[-1])  # "name" at any depth: the usual case
        return _match_segments(segs, names)


@dataclass(frozen=True, slots=True)
class Exclusion:
    """Why a path is out of the context: *rule* excluded *path* (the path or a parent)."""

    rule: Rule
    path: str

    def message(self, rel: str) -> str:
        return f"{rel} is excluded by {self.rule.origin} ({self.rule.text!r})"

    def hint(self, rel: str) -> str:
        if self.path != rel:
            return (f"{self.path} is excluded, and nothing inside an excluded directory can be re-included; "
                    f"to keep {rel}, exclude the directory's contents ('{self.path}/*') rather than the directory")
        return f"drop it from the directive, or re-include it with a later '!{rel}'"


@dataclass(frozen=True, slots=True)
class IgnoreRules:
    """An ordered rule list; the last rule matching a path decides whether it is excluded."""

    rules: tuple[Rule, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __add__(self, other: "IgnoreRules") -> "IgnoreRules":
        return IgnoreRules(self.rules + other.rules)

    def rule_for(self, rel: str, is_dir: bool) -> Rule | None:
        """The last rule matching *rel* itself (an exclusion or a negation), if any."""
        if not self.rules:
            return None
        names = rel.split("/")
        for rule in reversed(self.rules):
            if rule.matches(names, is_dir):
                return rule
        return None

    def excludes(self, rel: str, is_dir: bool) -> bool:
        """Whether *rel* is excluded, its parents being known not to be: what a walk that
        skips excluded directories asks of each entry."""
        rule = self.rule_for(rel, is_dir)
        return rule is not None and not rule.negate

    def exclusion(self, rel: str, is_dir: bool) -> Exclusion | None:
        """Why *rel* is excluded, parents included (git's rule), or None if it is not."""
        if not self.rules:
            return None
        names = rel.split("/")
        for k in range(1, len(names) + 1):
            path = "/".join(names[:k])
            rule = self.rule_for(path, is_dir if k == len(names) else True)
            if rule is not None and not rule.negate:
                return Exclusion(rule, path)
        return None

    def patterns(self) -> list[str]:
        """The rules as pattern lines, for a step's parameters (:meth:`from_patterns`)."""
        return [r.text for r in self.rules]

    @staticmethod
    def from_patterns(patterns: Sequence[str]) -> "IgnoreRules":
        """Rules compiled again from :meth:`patterns` (they were checked when first read)."""
        return _from_patterns(tuple(patterns))


@functools.lru_cache(maxsize=8)
def _from_patterns(patterns: tuple[str, ...]) -> IgnoreRules:
    """Cached: every directory of one build compiles the same list."""
    rules = []
    for k, text in enumerate(patterns, 1):
        rule = compile_rule(text, f"rule {k}")
        if rule is not None:
            rules.append(rule)
    return IgnoreRules(tuple(rules))


def _segment_matches(seg: object, name: str) -> bool:
    if isinstance(seg, str):
        return seg == name
    return seg.fullmatch(name) is not None  # type: ignore[union-attr]


def _match_segments(pat: Sequence[object], names: Sequence[str]) -> bool:
    """Glob matching over segments, ``**`` being the star: the classic two-pointer walk that
    backtracks only to the last ``**``, so it takes at most len(pat) × len(names) steps."""
    p = t = 0
    star, mark = -1, 0
    while t < len(names):
        if p < len(pat) and pat[p] is STARSTAR:
            star, mark = p, t
            p += 1
        elif p < len(pat) and _segment_matches(pat[p], names[t]):
            p += 1
            t += 1
        elif star >= 0:
            p, mark = star + 1, mark + 1
            t = mark
        else:
            return False
    while p < len(pat) and pat[p] is STARSTAR:
        p += 1
    return p == len(pat)


# -- compiling one pattern -------------------------------------------------------------------

_POSIX_CLASSES = {
    "alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "blank": r" \t", "cntrl": r"\x00-\x1f\x7f",
    "digit": "0-9", "graph": r"\x21-\x7e", "lower": "a-z", "print": r"\x20-\x7e",
    "punct": r"!-/:-@\[-`{-~", "space": r" \t\n\r\f\v", "upper": "A-Z", "xdigit": "0-9A-Fa-f",
}
_STAR = object()  # a run of * inside one segment
_SEP = object()  # an unescaped /


def compile_rule(line: str, origin: str) -> Rule | None:
    """The rule a line of an ignore file states, or None for a blank line or a comment.

    Raises :class:`PatternError` (with the column, in *line*) for a pattern that would
    match nothing for a reason the user should hear about.
    """
    if line.startswith("#"):
        return None
    text = _trim_trailing_spaces(line)
    if not text:
        return None
    if len(text) > MAX_PATTERN_LENGTH:
        raise PatternError(f"pattern longer than {MAX_PATTERN_LENGTH} characters; no path is that long", 1)
    negate = text.startswith("!")
    body_start = 1 if negate else 0
    if negate and len(text) == 1:
        raise PatternError("'!' with no pattern after it", 1, hint="write '\\!' for a name that starts with !")
    tokens = _tokens(text, body_start)
    # split on separators: a leading one anchors, a trailing one means "directories only"
    segments: list[list[tuple[object, int]]] = [[]]
    for tok in tokens:
        if tok[0] is _SEP:
            segments.append([])
        else:
            segments[-1].append(tok)
    leading = not segments[0] and len(segments) > 1
    dir_only = not segments[-1] and len(segments) > 1
    segments = [s for s in segments if s]  # "a//b" is "a/b"
    if not segments:
        raise PatternError("a pattern of separators alone matches nothing", body_start + 1,
                           hint="write '*' to exclude everything")
    anchored = leading or len(segments) > 1
    compiled: list[object] = []
    for seg in segments:
        compiled.append(_compile_segment(seg))
    if compiled[-1] is STARSTAR and len(compiled) > 1:
        compiled[-1:] = [_ANY, STARSTAR]  # "a/**": everything inside a, not a itself
    if not anchored:
        compiled.insert(0, STARSTAR)
    return Rule(text, origin, negate, dir_only, tuple(compiled))


def _trim_trailing_spaces(line: str) -> str:
    """git's rule: trailing spaces go unless the last one is escaped with a backslash."""
    end = len(line)
    i = 0
    keep = 0  # the length up to the last character that is not an unescaped trailing space
    while i < end:
        if line[i] == "\\" and i + 1 < end:
            i += 2
            keep = i
        elif line[i] == " ":
            i += 1
        else:
            i += 1
            keep = i
    return line[:keep]


def _tokens(text: str, start: int) -> list[tuple[object, int]]:
    """(token, 1-based column) pairs; a token is _SEP, ``(_STAR, run length)``, ``("lit", char)``
    or ``("re", fragment)`` for one character (``?`` or a class)."""
    out: list[tuple[object, int]] = []
    i, n = start, len(text)
    while i < n:
        c, col = text[i], i + 1
        if c == "\\":
            if i + 1 >= n:
                raise PatternError("trailing backslash escapes nothing", col, hint="write '\\\\' for a backslash")
            nxt = text[i + 1]
            out.append((_SEP, col) if nxt == "/" else (("lit", nxt), col))
            i += 2
        elif c == "/":
            out.append((_SEP, col))
            i += 1
        elif c == "*":
            j = i
            while j < n and text[j] == "*":
                j += 1
            out.append(((_STAR, j - i), col))
            i = j
        elif c == "?":
            out.append((("re", "."), col))
            i += 1
        elif c == "[":
            fragment, i = _char_class(text, i)
            out.append((("re", fragment), col))
        else:
            out.append((("lit", c), col))
            i += 1
    return out


def _char_class(text: str, i: int) -> tuple[str, int]:
    """The regex for the class opening at ``text[i] == '['``, and the index after it."""
    start, n = i, len(text)
    i += 1
    negate = i < n and text[i] in "!^"
    if negate:
        i += 1
    members: list[str] = []
    first = True
    while True:
        if i >= n:
            raise PatternError("unclosed '['", start + 1, hint="write '\\[' for a literal '['")
        c = text[i]
        if c == "]" and not first:
            i += 1
            break
        first = False
        if c == "[" and text.startswith("[:", i):
            close = text.find(":]", i + 2)
            if close != -1:
                name = text[i + 2:close]
                if name not in _POSIX_CLASSES:
                    raise PatternError(f"unknown character class [:{name}:]", i + 1,
                                       hint=f"known: {', '.join(sorted(_POSIX_CLASSES))}")
                members.append(_POSIX_CLASSES[name])
                i = close + 2
                continue
        if c == "\\":
            if i + 1 >= n:
                raise PatternError("unclosed '['", start + 1, hint="write '\\[' for a literal '['")
            i += 1
            c = text[i]
        lo = c
        i += 1
        if i + 1 < n and text[i] == "-" and text[i + 1] != "]":
            hi = text[i + 1]
            if hi == "\\" and i + 2 < n:
                hi = text[i + 2]
                i += 1
            i += 2
            if lo <= hi:  # git: a reversed range matches nothing
                members.append(f"{re.escape(lo)}-{re.escape(hi)}")
            continue
        members.append(re.escape(lo))
    if not members:
        return ("(?s:.)" if negate else "(?!)"), i
    return f"[{'^' if negate else ''}{''.join(members)}]", i


def _compile_segment(tokens: list[tuple[object, int]]) -> object:
    """One segment: STARSTAR, a literal name, or an anchored regex whose ``*`` runs are
    atomic groups (fnmatch's way of keeping a pattern like ``*a*a*a*b`` linear)."""
    kinds = [t[0] for t in tokens]
    if len(kinds) == 1 and isinstance(kinds[0], tuple) and kinds[0][0] is _STAR and kinds[0][1] >= 2:
        return STARSTAR
    if all(isinstance(t, tuple) and t[0] == "lit" for t in kinds):
        name = "".join(t[1] for t in kinds)  # type: ignore[index]
        if name in (".", ".."):
            what = "would leave the build context" if name == ".." else "matches nothing"
            raise PatternError(f"a '{name}' segment {what}: patterns are paths inside the context", tokens[0][1],
                               hint="write the path from the context's root, e.g. '/weights/tmp'")
        return name
    parts: list[str] = []
    pending: list[str] | None = None  # the fixed run after a * (None: before the first *)
    for tok in kinds:
        assert isinstance(tok, tuple)
        if tok[0] is _STAR:
            if pending is not None:
                parts.append(f"(?>.*?{''.join(pending)})")
            pending = []
            continue
        frag = re.escape(tok[1]) if tok[0] == "lit" else tok[1]
        (parts if pending is None else pending).append(frag)
    if pending is not None:
        parts.append(".*" + "".join(pending))  # the last *: greedy, then the fixed tail
    return re.compile("(?s:" + "".join(parts) + ")")


# -- reading rules ---------------------------------------------------------------------------

def parse_ignore(text: str, shown: str, *, max_patterns: int | None = None) -> IgnoreRules:
    """The rules of an ignore file's *text*; errors are located at ``shown:LINE:COLUMN``."""
    if max_patterns is None:
        max_patterns = _env.env_int(ENV_PATTERNS, DEFAULT_PATTERNS)
    rules: list[Rule] = []
    text = text.removeprefix("\ufeff")
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        try:
            rule = compile_rule(line, f"{shown}:{number}")
        except PatternError as exc:
            raise IgnoreFileError(exc.message, Span(shown, number, exc.column), hint=exc.hint) from None
        if rule is None:
            continue
        if len(rules) >= max_patterns:
            raise IgnoreFileError(f"more than {max_patterns} patterns, the ignore file's pattern limit",
                                  Span(shown, number, 1), hint=_env.raise_hint(ENV_PATTERNS))
        rules.append(rule)
    return IgnoreRules(tuple(rules))


def parse_excludes(patterns: Sequence[str]) -> IgnoreRules:
    """``--exclude`` values as rules (a bad one is a usage error: it is on the command line)."""
    rules = []
    for pattern in patterns:
        if "\n" in pattern or "\r" in pattern:
            raise UsageError(f"--exclude {pattern!r}: one pattern per --exclude, without line breaks")
        if not pattern.strip():
            raise UsageError("--exclude needs a pattern", hint="e.g. --exclude '*.bin'")
        if pattern.startswith("#"):
            raise UsageError(f"--exclude {pattern!r} is a comment in ignore syntax",
                             hint="write '\\#' for a name that starts with #")
        try:
            rule = compile_rule(pattern, "--exclude")
        except PatternError as exc:
            raise UsageError(f"--exclude {pattern!r}: {exc.message} at column {exc.column}", hint=exc.hint) from None
        assert rule is not None
        rules.append(rule)
    return IgnoreRules(tuple(rules))


def read_ignore_file(path: Path, within: Path) -> IgnoreRules | None:
    """The rules of the ignore file *path*, or None when there is none.

    It must be a regular file, or a symlink to one inside *within* (the directory it lies
    in: a context must not make the build read, and echo in errors, a file outside it); it is
    read without blocking (a FIFO) and never past the size limit (``/dev/zero``).
    """
    shown = _shown(path)
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IgnoreFileError(f"{shown}: cannot access ({exc.strerror})") from None
    real = path
    if stat.S_ISLNK(lst.st_mode):
        real = Path(os.path.realpath(path))
        inside = Path(os.path.realpath(within))
        if not real.exists():
            raise IgnoreFileError(f"{shown}: broken symlink (points to {os.readlink(path)!r})")
        if real != inside and inside not in real.parents:
            raise IgnoreFileError(f"{shown}: symbolic link to {real}, outside {inside}; "
                                  "an ignore file must be a file inside the directory it is in")
    limit = _env.env_int(ENV_BYTES, DEFAULT_BYTES)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise IgnoreFileError(f"{shown}: cannot read ({exc.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IgnoreFileError(f"{shown} is a directory, not an ignore file",
                                  hint="an ignore file is a text file of patterns")
        if not stat.S_ISREG(mode):
            raise IgnoreFileError(f"{shown} is not a regular file", hint="an ignore file is a text file of patterns")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise IgnoreFileError(f"{shown}: cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if size > limit:
        line = data.count(b"\n", 0, limit) + 1
        raise IgnoreFileError(f"larger than {limit} bytes, the ignore file size limit", Span(shown, line, 1),
                              hint=_env.raise_hint(ENV_BYTES))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = len(data[data.rfind(b"\n", 0, exc.start) + 1:exc.start].decode("utf-8", "replace")) + 1
        raise IgnoreFileError("not valid UTF-8", Span(shown, line, column),
                              hint="an ignore file is UTF-8 text") from None
    return parse_ignore(text, shown)


def _shown(path: Path) -> str:
    """How errors name an ignore file: relative to the current directory when it is below it."""
    try:
        return os.path.relpath(path) if Path(os.path.abspath(path)).is_relative_to(Path.cwd()) else str(path)
    except (OSError, ValueError):
        return str(path)


# -- which rules a build uses ----------------------------------------------------------------

_COMMAND_LINE: ContextVar[IgnoreRules] = ContextVar("modelbuild_exclude", default=IgnoreRules())


@contextlib.contextmanager
def command_line(rules: IgnoreRules) -> Iterator[None]:
    """Within the block, :func:`context_rules` ends with *rules* (``build --exclude``).

    The frontend protocol (``load(text, *, filename, …)``) has no place for them, and a
    frontend finds its context only when it reads ``FROM``; the build sets them around the
    frontend and the resolve stage, and the value is gone when the block ends.
    """
    token = _COMMAND_LINE.set(rules)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def ignore_file_for(root: Path, modelfile: Path | None = None) -> tuple[Path, Path]:
    """The ignore file a build of *root* reads, and the directory it must stay inside:
    ``<Modelfile>.modelbuildignore`` beside the Modelfile when it exists, else the context's
    ``.modelbuildignore``."""
    if modelfile is not None:
        beside = modelfile.parent / (modelfile.name + IGNORE_FILE)
        if os.path.lexists(beside):
            return beside, modelfile.parent
    return root / IGNORE_FILE, root


def context_rules(root: Path, modelfile: Path | None = None) -> IgnoreRules:
    """Every rule a build of the context *root* applies: the ignore file's, then ``--exclude``."""
    path, within = ignore_file_for(root, modelfile)
    return (read_ignore_file(path, within) or IgnoreRules()) + _COMMAND_LINE.get()


def apply_to_description(desc: "BuildDescription") -> "BuildDescription":
    """*desc* with the rules its build applies inside directories, checked against its files.

    A frontend that found its files through :class:`~modelbuild.context.BuildContext` has
    applied the rules already and says which (``desc.ignore``). For any other frontend the
    rules are read here, and a file they exclude is an error at the line that named it.
    """
    import dataclasses

    if desc.ignore is not None:
        return desc
    build_file = Path(desc.source_file) if desc.source_file != "<stdin>" else None
    rules = context_rules(desc.context, build_file)
    for spec in desc.files:
        why = rules.exclusion(spec.path, spec.is_dir)
        if why is not None:
            raise ModelfileError(why.message(spec.path), spec.origin, hint=why.hint(spec.path))
    return dataclasses.replace(desc, ignore=rules)


__all__ = ["IGNORE_FILE", "Exclusion", "IgnoreFileError", "IgnoreRules", "Rule", "apply_to_description",
           "command_line", "compile_rule", "context_rules", "parse_excludes", "parse_ignore", "read_ignore_file"]
