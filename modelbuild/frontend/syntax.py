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
from bisect import bisect_right
from dataclasses import dataclass

from modelbuild.errors import ModelfileError, Span
from modelbuild.frontend.limits import Limits, raise_hint

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
class LogicalLine:
    """One instruction's text, continuations joined, and where its pieces came from.

    A position per character would cost an object per byte of input (a 5 MB line took
    seconds and hundreds of megabytes); one entry per physical line is enough, since each
    piece starts at column 1 of its line. :meth:`span` finds a character's piece by bisection.
    """

    text: str
    starts: tuple[int, ...]  # offset in text where each non-empty physical piece begins
    lines: tuple[int, ...]  # the physical line number of each piece

    def span(self, i: int, filename: str) -> Span:
        """The location of ``text[i]`` (of its last character when *i* is past the end)."""
        last = len(self.text) - 1
        if i > last:
            i = last
        starts = self.starts
        k = bisect_right(starts, i) - 1 if len(starts) > 1 else 0
        return Span(filename, self.lines[k], i - starts[k] + 1)


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
    text = text.removeprefix("\ufeff")
    _check_characters(text, filename)
    return text


# Control characters other than tab and line endings, and the Unicode line separators. They
# have no use in a Modelfile, and letting them into values would let a Modelfile put terminal
# escapes into names, labels and error messages, or break an error's one line in two.
_CONTROL_RE = re.compile("[\x01-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
# A carriage return is a line ending only right before a newline (CRLF) or at the very end;
# two fixed characters, so the search is linear however many CRs there are.
_STRAY_CR_RE = re.compile(r"\r[^\r\n]")


def _check_characters(text: str, filename: str) -> None:
    """Refuse control characters, pointing at the first one."""
    control = _CONTROL_RE.search(text)
    cr = _STRAY_CR_RE.search(text)
    if cr and (control is None or cr.start() < control.start()):
        raise ModelfileError.at(
            _text_span(text, cr.start(), filename),
            "carriage return inside a line",
            hint="use LF or CRLF line endings",
        )
    if control:
        raise ModelfileError.at(
            _text_span(text, control.start(), filename),
            f"not a text file (control character U+{ord(control.group()):04X})",
            hint="only tab and line endings may appear in a Modelfile",
        )


def _text_span(text: str, offset: int, filename: str) -> Span:
    return Span(filename, text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset))


def _byte_span(data: bytes, offset: int, filename: str) -> Span:
    """The line and *character* column of a byte offset, as every other span counts."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    prefix = data[line_start:offset].decode("utf-8", errors="replace")
    return Span(filename, data.count(b"\n", 0, offset) + 1, len(prefix) + 1)


def clip(text: str, width: int = 60) -> str:
    """*text* cut short for an error message when it is long.

    Hostile input makes long values (a 64 KiB keyword, a 1 MiB expansion); an error must stay
    one readable line, not echo them whole.
    """
    return text if len(text) <= width else f"{text[:width]}… ({len(text)} characters)"


def shown(text: str, width: int = 60) -> str:
    """*text* quoted as an error message shows a value: repr'd, and cut short when long."""
    return repr(text) if len(text) <= width else f"{text[:width]!r}… ({len(text)} characters)"


def syntax_directive(text: str) -> tuple[str, Span] | None:
    """The frontend named by a ``# syntax=NAME`` first line, if there is one."""
    end = text.find("\n")
    first = (text if end < 0 else text[:end]).rstrip("\r")
    match = SYNTAX_RE.match(first.strip())
    if not match:
        return None
    return match.group("name"), Span("", 1, first.index(match.group("name")) + 1)


def _logical_lines(text: str, filename: str, limits: Limits) -> list[LogicalLine]:
    """Join continuations into logical lines, refusing one longer than the line length limit.

    The length is counted as pieces are added, so an over-long line is refused after reading
    at most one physical line past the limit.
    """
    out: list[LogicalLine] = []
    pieces: list[str] = []
    starts: list[int] = []
    lines: list[int] = []
    length = 0
    continuing = False
    last_line = 0
    last_col = 1
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # blank and comment lines, also inside a continuation (as Dockerfile)
        body = line.rstrip()
        cont = body.endswith("\\") and not _escaped_backslash_end(body)
        if cont:
            body = body[:-1]
            last_col = len(body) + 1
        if length + len(body) > limits.line_length:
            raise ModelfileError.at(
                Span(filename, lineno, limits.line_length - length + 1),
                f"line is longer than {limits.line_length} characters, the line length limit",
                hint=raise_hint("line_length"),
            )
        if body:
            pieces.append(body)
            starts.append(length)
            lines.append(lineno)
            length += len(body)
        last_line = lineno
        if cont:
            continuing = True
            continue
        continuing = False
        out.append(LogicalLine("".join(pieces), tuple(starts), tuple(lines)))
        pieces, starts, lines, length = [], [], [], 0
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


def parse(text: str, filename: str, limits: Limits | None = None) -> list[Instruction]:
    """Parse Modelfile text into instructions; raises ModelfileError with a span.

    *limits* defaults to :class:`Limits`' defaults, not the environment: the lexer stays pure,
    and the frontend's entry point passes the limits the user set.
    """
    limits = limits or Limits()
    return [_parse_instruction(line, filename) for line in _logical_lines(text, filename, limits)]


_BLANKS = re.compile(r"[ \t]*")
_KEYWORD = re.compile(r"[^ \t]*")
_DIRECTIVE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Runs of characters with no meaning to the lexer, consumed by one regex step instead of one
# Python loop turn per character: the common case of a long value stays fast.
_PLAIN = re.compile(r'[^ \t\\"$]+')
_PLAIN_QUOTED = re.compile(r'[^\\"$]+')


def _parse_instruction(logical: LogicalLine, filename: str) -> Instruction:
    def span(i: int) -> Span:
        return logical.span(i, filename)

    line = logical.text
    start = _BLANKS.match(line).end()
    i = _KEYWORD.match(line, start).end()
    keyword = line[start:i]
    if not _DIRECTIVE_RE.fullmatch(keyword):
        raise ModelfileError.at(span(start), f"expected a directive, found {shown(keyword)}")
    words = _split_words(line, i, span)
    return Instruction(keyword.upper(), span(start), tuple(words), keyword)


def _split_words(line: str, i: int, span) -> list[Word]:  # noqa: ANN001 - local closure type
    words: list[Word] = []
    n = len(line)
    while True:
        i = _BLANKS.match(line, i).end()
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
            run = (_PLAIN_QUOTED if in_quotes else _PLAIN).match(line, i)
            buf.append(run.group())
            i = run.end()
        if in_quotes:
            raise ModelfileError.at(span(quote_start), "unclosed quote", hint='add the closing "')
        if buf or not parts:
            parts.append("".join(buf))
        words.append(Word(tuple(parts), span(word_start), quoted))


_VAR_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:[-+])(?P<operand>.*))?", re.DOTALL)


def _parse_var(line: str, i: int, span) -> tuple[VarRef | None, int]:  # noqa: ANN001
    """Parse a variable reference at ``line[i] == '$'``; return it and the next index.

    ``${…}`` does not nest: the operand of ``${A:-…}`` is literal text up to the first ``}``,
    so an expansion is never more than one level deep.
    """
    start = i
    n = len(line)
    if i + 1 < n and line[i + 1] == "{":
        close = line.find("}", i + 2)
        if close < 0:
            raise ModelfileError.at(span(start), "unterminated variable reference '${'", hint="add the closing }")
        body = line[i + 2 : close]
        match = _VAR_BODY.fullmatch(body)
        if not match:
            raise ModelfileError.at(
                span(start),
                f"bad variable reference {shown('${' + body + '}')}",
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
