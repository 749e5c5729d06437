"""``.kitignore``: which files of the context a Kitfile's directories leave out.

KitOps reads ``.kitignore`` with Docker's ``.dockerignore`` rules (it calls
``github.com/moby/patternmatcher``), and so does this module, ported rule for rule:

* one pattern a line; a line *starting* with ``#`` is a comment; blanks around a pattern are
  dropped; ``!`` re-includes what an earlier pattern left out; patterns are cleaned as Go's
  ``filepath.Clean`` does and a leading ``/`` is dropped (``/a`` is ``a``);
* a pattern matches a path relative to the context, whole: ``*`` and ``?`` stay within one
  path segment, ``**`` spans any number of them (``**/x`` is ``x`` at any depth), ``[…]`` is
  a character class (``[^…]`` negates), ``\\`` escapes the next character;
* a path is left out when it, or a directory above it, matches, unless a later ``!``
  pattern matches it or a directory above it: ``MatchesOrParentMatches``;
* KitOps always adds ``Kitfile``, ``kitfile``, ``.kitfile`` and ``.kitignore`` (at the
  context's top), last, so no ``!`` brings them back.

The matching is a set-of-states automaton over the path's characters, linear in the path
times the pattern, never backtracking: a hostile ``**/**/**/…`` cannot stall a build, as it
could a regular expression engine that backtracks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from modelbuild.api import ModelfileError, Span

MAX_BYTES = 1 << 20  # a .kitignore larger than a Kitfile may be is an accident
MAX_PATTERNS = 10_000
ALWAYS = ("Kitfile", "kitfile", ".kitfile", ".kitignore")  # KitOps' DefaultKitfileNames + IgnoreFileName

# automaton tokens
_LIT, _STAR, _ANY, _CLASS, _DSTAR, _ALL = range(6)
_REGEX_SPECIAL = set(".+()|{}$")  # escaped by moby into literal characters


def go_clean(path: str) -> str:
    """Go's ``filepath.Clean`` on a ``/``-separated path: one ``/`` between segments, ``.``
    dropped, ``..`` resolved lexically (kept at the front of a relative path), no trailing
    ``/``; the empty path is ``.``."""
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
        else:
            out.append(part)
    text = "/".join(out)
    return "/" + text if rooted else (text or ".")


@dataclass(frozen=True, slots=True)
class Pattern:
    """One compiled pattern, matched the way moby's ``Pattern.match`` does."""

    text: str  # cleaned, without its "!"
    exclusion: bool  # a "!" pattern: re-includes
    mode: str  # "exact", "prefix", "suffix" or "automaton"
    tokens: tuple[tuple, ...] = ()

    def match(self, path: str) -> bool:
        if self.mode == "exact":
            return path == self.text
        if self.mode == "prefix":
            return path.startswith(self.text[:-2])
        if self.mode == "suffix":
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])
        return _run(self.tokens, path)


def compile_pattern(text: str) -> Pattern:
    """moby's ``New`` and ``compile`` for one line; a ModelfileError without a span for a
    pattern Go's ``filepath.Match`` would refuse."""
    text = go_clean(text.strip())
    exclusion = text.startswith("!")
    if exclusion:
        text = text[1:]
        if not text:
            raise ModelfileError('illegal exclusion pattern "!"')
    tokens: list[tuple] = []
    mode = "exact"
    i = pos = 0
    n = len(text)
    while pos < n:
        ch = text[pos]
        pos += 1
        if ch == "*":
            if pos < n and text[pos] == "*":  # some flavour of **
                pos += 1
                if pos < n and text[pos] == "/":
                    pos += 1
                if pos >= n:  # a trailing ** takes everything below, as .gitignore does
                    if mode == "exact":
                        mode = "prefix"
                    else:
                        tokens.append((_ALL,))
                        mode = "automaton"
                else:
                    tokens.append((_DSTAR,))
                    mode = "automaton"
                if i == 0:
                    mode = "suffix"
            else:
                tokens.append((_STAR,))
                mode = "automaton"
        elif ch == "?":
            tokens.append((_ANY,))
            mode = "automaton"
        elif ch == "\\":
            if pos >= n:
                raise ModelfileError(f"pattern {text!r} ends in an escape '\\'")
            tokens.append((_LIT, text[pos]))
            pos += 1
            mode = "automaton"
        elif ch == "[":
            token, pos = _char_class(text, pos)
            tokens.append(token)
            mode = "automaton"
        else:
            tokens.append((_LIT, ch))  # including . + ( ) | { } $, which moby escapes
        i += 1
    return Pattern(text, exclusion, mode, tuple(tokens))


def _char_class(text: str, pos: int) -> tuple[tuple, int]:
    """``[…]`` from just after its ``[``: (token, position after its ``]``)."""
    negate = pos < len(text) and text[pos] == "^"
    if negate:
        pos += 1
    ranges: list[tuple[str, str]] = []
    first = True
    while True:
        if pos >= len(text):
            raise ModelfileError(f"pattern {text!r} has a '[' that is never closed")
        ch = text[pos]
        if ch == "]" and not first:
            return (_CLASS, negate, tuple(ranges)), pos + 1
        first = False
        if ch == "\\" and pos + 1 < len(text):
            pos += 1
            ch = text[pos]
        low = high = ch
        if pos + 2 < len(text) and text[pos + 1] == "-" and text[pos + 2] != "]":
            high = text[pos + 2]
            pos += 2
            if high < low:
                raise ModelfileError(f"pattern {text!r} has a bad range {low}-{high}")
        ranges.append((low, high))
        pos += 1


def _run(tokens: tuple[tuple, ...], path: str) -> bool:
    """Whether *tokens* match all of *path*. States ``0..n`` are positions among the
    tokens (``n``: accept); ``n + 1 + k`` is "inside the ``.*/`` of ``**`` number k"."""
    n = len(tokens)

    def closure(states: set[int]) -> set[int]:
        todo = list(states)
        while todo:
            s = todo.pop()
            if s < n and tokens[s][0] in (_STAR, _ALL, _DSTAR):
                for nxt in ((s + 1, n + 1 + s) if tokens[s][0] == _DSTAR else (s + 1,)):
                    if nxt not in states:
                        states.add(nxt)
                        todo.append(nxt)
        return states

    states = closure({0})
    for ch in path:
        step: set[int] = set()
        for s in states:
            if s > n:  # inside **'s ".*/": any character stays; a "/" may also end it
                step.add(s)
                if ch == "/":
                    step.add(s - n)  # (n + 1 + k) - n = k + 1: the token after the **
                continue
            if s == n:
                continue
            kind = tokens[s][0]
            if kind == _LIT:
                if ch == tokens[s][1]:
                    step.add(s + 1)
            elif kind == _STAR:
                if ch != "/":
                    step.add(s)
            elif kind == _ANY:
                if ch != "/":
                    step.add(s + 1)
            elif kind == _CLASS:
                inside = any(low <= ch <= high for low, high in tokens[s][2])
                if inside != tokens[s][1]:
                    step.add(s + 1)
            elif kind == _ALL:
                step.add(s)
        if not step:
            return False
        states = closure(step)
    return n in states


class KitIgnore:
    """The context's ``.kitignore`` (if any) and KitOps' fixed additions."""

    def __init__(self, patterns: list[Pattern]) -> None:
        self.patterns = patterns
        self.has_exclusions = any(p.exclusion for p in patterns)

    @classmethod
    def read(cls, context: str) -> "KitIgnore":
        """``.kitignore`` at the top of *context*; a bad line is an error at its line."""
        path = os.path.join(context, ".kitignore")
        lines: list[str] = []
        if os.path.lexists(path):
            lines = _read_lines(path)
        patterns = []
        for number, line in enumerate(lines, start=1):
            if number == 1:
                line = line.removeprefix("\ufeff")
            if line.startswith("#") or not line.strip():
                continue
            if len(patterns) >= MAX_PATTERNS:
                raise ModelfileError.at(Span(path, number, 1), f"more than {MAX_PATTERNS} patterns")
            pattern = line.strip()
            invert = pattern.startswith("!")
            body = pattern[1:].strip() if invert else pattern
            if body:
                body = go_clean(body)
                if len(body) > 1 and body.startswith("/"):
                    body = body[1:]
            try:
                patterns.append(compile_pattern(("!" if invert else "") + body))
            except ModelfileError as exc:
                raise exc.located(Span(path, number, 1)) from None
        patterns.extend(compile_pattern(name) for name in ALWAYS)
        return cls(patterns)

    def ignores(self, rel: str) -> bool:
        """Whether *rel* (relative to the context, cleaned) is left out: moby's
        ``MatchesOrParentMatches``, the last pattern that matches deciding."""
        matched = False
        parents = rel.split("/")[:-1]
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue  # only a "!" can change a match, only a plain pattern a non-match
            hit = pattern.match(rel)
            if not hit:
                hit = any(pattern.match("/".join(parents[: k + 1])) for k in range(len(parents)))
            if hit:
                matched = not pattern.exclusion
        return matched


def _read_lines(path: str) -> list[str]:
    """The file's lines, read bounded, from a regular file only."""
    import stat

    span = Span(path, 1, 1)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ModelfileError.at(span, f"cannot read .kitignore ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelfileError.at(span, ".kitignore is not a regular file")
        data = os.read(fd, MAX_BYTES + 1)
        while len(data) <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise ModelfileError.at(span, f".kitignore is larger than {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ModelfileError.at(Span(path, line, 1), ".kitignore is not UTF-8 text") from None
    return text.replace("\r\n", "\n").split("\n")


__all__ = ["ALWAYS", "KitIgnore", "Pattern", "compile_pattern", "go_clean"]
