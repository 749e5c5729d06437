"""Ollama Modelfile text → commands, each token with its line and column.

The lexical rules are Ollama's own, read from ollama/ollama ``parser/parser.go``
(``ParseFile``, ``parseRuneForState``, ``unquote``, ``isValidCommand``,
``isValidMessageRole``) and its tests ``parser/parser_test.go``, at commit
fb30760996871fa9460115c753afd2c60d4ab0f7. Ollama's parser is a state machine over runes;
this one reads a line at a time and gives the same commands:

* a command is a keyword of ASCII letters in any case (``FROM``, ``from``, ``From``), a
  blank (space or tab), and its argument up to the end of the line. ``PARAMETER`` first
  takes a parameter name, ``MESSAGE`` a role (``system``, ``user`` or ``assistant``, lower
  case), each followed by a blank;
* a line whose first non-blank character is ``#`` is a comment; a ``#`` anywhere else is
  text, so ``SYSTEM Use # for headings`` keeps it;
* the argument is trimmed of white space at both ends. If it then starts with ``\"\"\"`` it
  is a block that ends at the first line end where the text so far, trimmed, ends with
  ``\"\"\"``; if it starts with one ``"`` it ends where the text so far ends with ``"``.
  Line breaks inside are kept, the outer quotes are removed and nothing else is touched:
  there are no escapes (``\\"`` is a backslash and a quote), blanks inside the quotes stay.
  A quote in the middle of a line does not end anything: ``SYSTEM \"\"\"a\"\"\" b`` runs
  on to a later line that ends with ``\"\"\"``, as in Ollama;
* an argument that is not quoted ends at its line end.

Where this parser is stricter or kinder than Ollama's, on purpose: every error names its
line and column (Ollama's name a line, or none: ``unexpected EOF``); Go's parser silently
drops characters that are not printable (a zero-width joiner in an emoji, a no-break space)
from arguments, here they are kept; several blanks may separate ``PARAMETER``/``MESSAGE``
from the name or role (Ollama reads an empty name); a carriage return before a line feed
counts one line, not two. Limits bound what a hostile file can cost: its size, its number
of commands and the length of one argument, each refused at the place it is passed, in
time linear in the input.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from modelbuild.api import ModelfileError, Span

MAX_CHARS = 1 << 20  # characters in the file (the core reads at most 1 MiB of it anyway)
MAX_COMMANDS = 10_000  # commands in one file
MAX_VALUE = 1 << 18  # characters in one argument (a template, a license text), after joining lines
MAX_WORD = 64  # characters of a keyword, parameter name or role: longer is no name Ollama knows

# every command Ollama's isValidCommand accepts, in its error message's order
COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter",
            "message", "requires")
ROLES = ("system", "user", "assistant")  # isValidMessageRole: exactly these, lower case
BLANKS = " \t"  # Ollama's isSpace
_LINE = re.compile(r"([^\r\n]*)(\r\n|\r|\n|\Z)")
_LETTERS = re.compile(r"[A-Za-z]+")
_NON_BLANK = re.compile(r"[^ \t]+")


@dataclass(frozen=True, slots=True)
class Token:
    """A piece of the file: its text (an argument unquoted) and where it starts."""

    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class Command:
    """One command. ``name`` is the keyword in lower case (``from``, ``parameter``…);
    ``key`` is PARAMETER's parameter name or MESSAGE's role; ``value`` the argument, its span
    at its first character as written (an opening quote, for a quoted one)."""

    name: str
    keyword: Token
    value: Token
    key: Token | None = None
    quoted: bool = False

    @property
    def label(self) -> str:
        """How messages name the command: ``PARAMETER num_ctx``, ``TEMPLATE``."""
        upper = self.name.upper()
        return f"{upper} {self.key.text}" if self.name == "parameter" and self.key else upper


def clip(text: str, width: int = 40) -> str:
    """*text* repr'd for a message, cut short when long: an error stays one readable line."""
    return repr(text) if len(text) <= width else f"{text[:width]!r}… ({len(text)} characters)"


def parse(text: str, filename: str) -> list[Command]:
    """The commands of an Ollama Modelfile, in order. Raises ModelfileError at the token at
    fault. Whether a FROM is there, and what each argument means, is the frontend's to check."""
    nul = text.find("\x00")
    if nul >= 0:
        raise ModelfileError.at(_offset_span(text, nul, filename), "not a text file (NUL byte)")
    if len(text) > MAX_CHARS:
        raise ModelfileError.at(_offset_span(text, MAX_CHARS, filename),
                                f"the file is longer than {MAX_CHARS} characters",
                                hint="an Ollama Modelfile is a few kilobytes of text")
    commands: list[Command] = []
    lines = _lines(text)
    for lineno, line, end in lines:
        start = _skip_blanks(line, 0)
        if start == len(line) or line[start] == "#":
            continue  # blank line or comment
        if len(commands) >= MAX_COMMANDS:
            raise ModelfileError.at(Span(filename, lineno, start + 1), f"more than {MAX_COMMANDS} commands",
                                    hint="an Ollama Modelfile has a few dozen")
        commands.append(_command(line, lineno, end, start, lines, filename))
    return commands


def _lines(text: str):
    """(line number, text, line end) of each line, lazily: a file of a million line feeds
    costs no million-entry list. ``\\r\\n``, ``\\r`` and ``\\n`` each end a line."""
    lineno = 0
    for match in _LINE.finditer(text):
        lineno += 1
        yield lineno, match.group(1), match.group(2)
        if not match.group(2):
            return


def _skip_blanks(line: str, i: int) -> int:
    while i < len(line) and line[i] in BLANKS:
        i += 1
    return i


def _command(line: str, lineno: int, end: str, start: int, lines, filename: str) -> Command:
    word = _NON_BLANK.match(line, start).group()
    keyword = Token(word, Span(filename, lineno, start + 1))
    letters = _LETTERS.match(word)
    name = word.lower()
    if not letters or letters.end() != len(word) or name not in COMMANDS:
        raise _unknown_command(keyword)
    i = _skip_blanks(line, start + len(word))
    if i == len(line):
        raise ModelfileError.at(keyword.span, f"{word.upper()} needs {_ARGUMENT[name]}", hint=_USAGE[name])
    key = None
    if name in ("parameter", "message"):
        text = _NON_BLANK.match(line, i).group()
        key = Token(text, Span(filename, lineno, i + 1))
        if len(text) > MAX_WORD:
            what = "parameter name" if name == "parameter" else "role"
            raise ModelfileError.at(key.span, f"{word.upper()}: {clip(text)} is no {what}", hint=_USAGE[name])
        if name == "message":
            _check_role(key)
        i = _skip_blanks(line, i + len(text))
        if i == len(line):
            raise ModelfileError.at(key.span, f"{word.upper()} {text} needs {_ARGUMENT[name + ' value']}",
                                    hint=_USAGE[name])
    value, quoted = _value(line, lineno, end, i, lines, filename)
    return Command(name, keyword, value, key, quoted)


def _value(line: str, lineno: int, end: str, i: int, lines, filename: str) -> tuple[Token, bool]:
    """The argument starting at column *i* of *line* (which *end* ends), unquoted, reading
    further lines while a quote is open. Ollama's rule, decided at each line end: trim the
    text so far; it is complete unless it starts with a quote that no last character closes
    yet."""
    span = Span(filename, lineno, i + 1)
    first = line[i:].strip()
    if len(first) > MAX_VALUE:
        raise ModelfileError.at(span, f"a value longer than {MAX_VALUE} characters",
                                hint="an Ollama Modelfile's template, system message or license is a few kilobytes")
    if first.startswith('"""'):
        quote = '"""'
    elif first.startswith('"'):
        quote = '"'
    else:
        return Token(first, span), False
    if len(first) >= 2 * len(quote) and first.endswith(quote):
        return Token(first[len(quote):-len(quote)], span), True
    # an open quote: whole lines until one ends with the quote. The text so far trimmed ends
    # with it exactly when this line trimmed does (a blank line trims away to the one before)
    pieces = [line[i:]]
    size = len(pieces[0])
    for _lineno, more, terminator in lines:
        pieces.append(end)
        pieces.append(more)
        size += len(end) + len(more)
        if size > MAX_VALUE:
            raise ModelfileError.at(span, f"a value longer than {MAX_VALUE} characters",
                                    hint=f"is a closing {quote} missing?")
        if more.rstrip().endswith(quote):
            full = "".join(pieces).strip()
            return Token(full[len(quote):-len(quote)], span), True
        end = terminator
    shape = "block" if quote == '"""' else "string"
    raise ModelfileError.at(span, f"this {quote} {shape} is never closed: no line after it ends with {quote}",
                            hint=f"end the {shape} with {quote} at the end of a line")


def _check_role(role: Token) -> None:
    if role.text in ROLES:
        return
    if role.text.lower() in ROLES:
        hint = f"roles are lower case, as Ollama requires: {role.text.lower()}"
    else:
        close = difflib.get_close_matches(role.text.lower(), ROLES, n=1)
        hint = f"did you mean {close[0]}?" if close else "one of system, user, assistant"
    raise ModelfileError.at(role.span, f"unknown MESSAGE role {clip(role.text)}", hint=hint)


def _unknown_command(keyword: Token) -> ModelfileError:
    word = keyword.text
    letters = _LETTERS.match(word)
    known = ", ".join(c.upper() for c in COMMANDS)
    guess = (letters.group() if letters else word).lower()
    close = difflib.get_close_matches(guess, COMMANDS, n=1, cutoff=0.7) if len(guess) <= MAX_WORD else []
    hint = f"did you mean {close[0].upper()}?" if close else f"an Ollama Modelfile's commands: {known}"
    return ModelfileError.at(keyword.span, f"unknown command {clip(word)}", hint=hint)


def _offset_span(text: str, offset: int, filename: str) -> Span:
    return Span(filename, text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset))


_ARGUMENT = {
    "from": "a model: a GGUF file, a safetensors directory or an Ollama model name",
    "adapter": "a path: a GGUF adapter or a safetensors adapter directory",
    "draft": "a path: a draft model's GGUF file or safetensors directory",
    "license": "the license text",
    "template": "the template text",
    "system": "the system message",
    "renderer": "a renderer name",
    "parser": "a parser name",
    "requires": "an Ollama version",
    "parameter": "a parameter name and a value",
    "parameter value": "a value",
    "message": "a role and a message",
    "message value": "a message",
}
_USAGE = {
    "from": "FROM ./model.gguf, FROM ./safetensors-dir or FROM llama3.2",
    "adapter": "ADAPTER ./lora.gguf",
    "draft": "DRAFT ./draft.gguf",
    "license": 'LICENSE MIT, or LICENSE """ text """',
    "template": 'TEMPLATE """{{ .Prompt }}"""',
    "system": 'SYSTEM """You are a helpful assistant."""',
    "renderer": "RENDERER NAME",
    "parser": "PARSER NAME",
    "requires": "REQUIRES 0.14.0",
    "parameter": "PARAMETER NAME VALUE, e.g. PARAMETER temperature 0.7",
    "message": "MESSAGE ROLE TEXT, e.g. MESSAGE user Is Toronto in Canada?",
}

__all__ = ["COMMANDS", "Command", "MAX_CHARS", "MAX_COMMANDS", "MAX_VALUE", "ROLES", "Token", "clip", "parse"]
