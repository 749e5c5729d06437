"""Modelfile text → instructions with spans. Pure: no file system, no plugins.

The grammar is modctl's, widened:

* one instruction per logical line, ``DIRECTIVE arg arg …``, the directive case-insensitive;
* a line whose first non-blank character is ``#`` is a comment (modctl's rule);
* a trailing ``\\`` joins the next physical line (comment and blank lines inside a
  continuation are skipped, as Dockerfile does);
* arguments split on blanks; ``"…"`` quotes keep blanks; ``\\x`` escapes any character
  (modctl's rule), so ``\\$`` is a literal dollar sign;
* ``$NAME``, ``${NAME}``, ``${NAME:-default}`` and ``${NAME:+alternative}`` reference an ARG;
  they are kept as :class:`VarRef` parts and expanded later by the interpreter.

Every word and every variable reference carries the :class:`Span` of its first character,
so an error about any argument points at the right line and column even inside a
continuation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelbuild.errors import ModelfileError, Span

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SYNTAX_RE = re.compile(r"^#\s*syntax\s*=\s*(?P<name>\S+)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class VarRef:
    """A ``$NAME`` / ``${NAME…}`` reference inside a word."""

    name: str
    span: Span
    op: str = ""  # "", ":-" or ":+"
    operand: str = ""


@dataclass(frozen=True, slots=True)
class Word:
    """One argument: literal text and variable references, in order."""

    parts: tuple[str | VarRef, ...]
    span: Span
    quoted: bool = False

    @property
    def literal(self) -> str | None:
        """The text when the word has no variable reference, else None."""
        if all(isinstance(p, str) for p in self.parts):
            return "".join(self.parts)  # type: ignore[arg-type]
        return None


@dataclass(frozen=True, slots=True)
class Instruction:
    """One logical line: a directive keyword and its argument words."""

    keyword: str  # upper-cased
    span: Span  # of the keyword
    args: tuple[Word, ...]
    raw_keyword: str


@dataclass(frozen=True, slots=True)
class Pos:
    line: int
    column: int


def decode_source(data: bytes, filename: str) -> str:
    """Decode a Modelfile strictly: binary garbage is an error, not mojibake."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ModelfileError.at(
            _byte_span(data, nul, filename), "not a text file (NUL byte)", hint="is this a binary file?"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelfileError.at(
            _byte_span(data, exc.start, filename), "not a text file (invalid UTF-8)", hint="Modelfiles are UTF-8 text"
        ) from None
    return text.removeprefix("\ufeff")


def _byte_span(data: bytes, offset: int, filename: str) -> Span:
    """The line and *character* column of a byte offset, as every other span counts."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    prefix = data[line_start:offset].decode("utf-8", errors="replace")
    return Span(filename, data.count(b"\n", 0, offset) + 1, len(prefix) + 1)


def syntax_directive(text: str) -> tuple[str, Span] | None:
    """The frontend named by a ``# syntax=NAME`` first line, if there is one."""
    first = text.split("\n", 1)[0].rstrip("\r")
    match = SYNTAX_RE.match(first.strip())
    if not match:
        return None
    return match.group("name"), Span("", 1, first.index(match.group("name")) + 1)


def _logical_lines(text: str, filename: str) -> list[tuple[str, list[Pos]]]:
    """Join continuations; return each logical line with the position of every character."""
    out: list[tuple[str, list[Pos]]] = []
    chars: list[str] = []
    positions: list[Pos] = []
    continuing = False
    last_line = 0
    last_col = 1
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if continuing and (not stripped or stripped.startswith("#")):
            continue
        if not continuing and (not stripped or stripped.startswith("#")):
            continue
        body = line.rstrip()
        cont = body.endswith("\\") and not _escaped_backslash_end(body)
        if cont:
            body = body[:-1]
            last_col = len(body) + 1
        for col, ch in enumerate(body, start=1):
            chars.append(ch)
            positions.append(Pos(lineno, col))
        last_line = lineno
        if cont:
            continuing = True
            continue
        continuing = False
        out.append(("".join(chars), positions))
        chars, positions = [], []
    if continuing:
        raise ModelfileError.at(
            Span(filename, last_line, last_col),
            "line continuation '\\' at end of file",
            hint="remove the trailing backslash or add the continued line",
        )
    return out


def _escaped_backslash_end(body: str) -> bool:
    """True when the final backslash is itself escaped (``\\\\``), so not a continuation."""
    n = len(body) - len(body.rstrip("\\"))
    return n % 2 == 0


def parse(text: str, filename: str) -> list[Instruction]:
    """Parse Modelfile text into instructions; raises ModelfileError with a span."""
    instructions = []
    for line, positions in _logical_lines(text, filename):
        instructions.append(_parse_instruction(line, positions, filename))
    return instructions


def _parse_instruction(line: str, positions: list[Pos], filename: str) -> Instruction:
    def span(i: int) -> Span:
        p = positions[min(i, len(positions) - 1)]
        return Span(filename, p.line, p.column)

    i = 0
    n = len(line)
    while i < n and line[i] in " \t":
        i += 1
    start = i
    while i < n and line[i] not in " \t":
        i += 1
    keyword = line[start:i]
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", keyword):
        raise ModelfileError.at(span(start), f"expected a directive, found {keyword!r}")
    words = _split_words(line, i, span)
    return Instruction(keyword.upper(), span(start), tuple(words), keyword)


def _split_words(line: str, i: int, span) -> list[Word]:  # noqa: ANN001 - local closure type
    words: list[Word] = []
    n = len(line)
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            return words
        word_start = i
        parts: list[str | VarRef] = []
        buf: list[str] = []
        in_quotes = False
        quoted = False
        quote_start = i
        while i < n and (in_quotes or line[i] not in " \t"):
            ch = line[i]
            if ch == "\\":
                if i + 1 >= n:
                    raise ModelfileError.at(span(i), "dangling escape '\\' at end of line")
                buf.append(line[i + 1])
                i += 2
                continue
            if ch == '"':
                in_quotes = not in_quotes
                quoted = True
                quote_start = i
                i += 1
                continue
            if ch == "$":
                ref, i = _parse_var(line, i, span)
                if ref is None:
                    buf.append("$")
                    continue
                if buf:
                    parts.append("".join(buf))
                    buf = []
                parts.append(ref)
                continue
            buf.append(ch)
            i += 1
        if in_quotes:
            raise ModelfileError.at(span(quote_start), "unclosed quote", hint='add the closing "')
        if buf or not parts:
            parts.append("".join(buf))
        words.append(Word(tuple(parts), span(word_start), quoted))


def _parse_var(line: str, i: int, span) -> tuple[VarRef | None, int]:  # noqa: ANN001
    """Parse a variable reference at ``line[i] == '$'``; return it and the next index."""
    start = i
    n = len(line)
    if i + 1 < n and line[i + 1] == "{":
        close = line.find("}", i + 2)
        if close < 0:
            raise ModelfileError.at(span(start), "unterminated variable reference '${'", hint="add the closing }")
        body = line[i + 2 : close]
        match = re.fullmatch(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:[-+])(?P<operand>.*))?", body)
        if not match:
            raise ModelfileError.at(
                span(start),
                f"bad variable reference '${{{body}}}'",
                hint="use ${NAME}, ${NAME:-default} or ${NAME:+alternative}",
            )
        return (
            VarRef(match.group("name"), span(start), match.group("op") or "", match.group("operand") or ""),
            close + 1,
        )
    match = _NAME_RE.match(line, i + 1)
    if not match:
        return None, i + 1  # a lone '$' is literal, as in a shell
    return VarRef(match.group(0), span(start)), match.end()
