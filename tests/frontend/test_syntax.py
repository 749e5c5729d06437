"""The Modelfile lexer: spans, quoting, escapes, continuations and variables."""

from __future__ import annotations

import pytest

from modelbuild.errors import ModelfileError, Span
from modelbuild.frontend.syntax import VarRef, decode_source, parse, syntax_directive


def words(ins):
    return [w.literal for w in ins.args]


def test_directives_are_case_insensitive_and_comments_skipped():
    (a, b) = parse("# comment\n\nmodel a.bin\n  # indented comment\nNaMe x\n", "M")
    assert (a.keyword, a.span) == ("MODEL", Span("M", 3, 1))
    assert (b.keyword, b.span, words(b)) == ("NAME", Span("M", 5, 1), ["x"])


def test_quotes_keep_blanks_and_escapes_are_literal():
    (ins,) = parse('DESCRIPTION "a  b" c\\ d "x\\"y" ""\n', "M")
    assert words(ins) == ["a  b", "c d", 'x"y', ""]


def test_continuation_spans_point_at_the_physical_line():
    (ins,) = parse("CONFIG a.json \\\n  # comment inside\n     b.json \\\n c.json\n", "M")
    assert words(ins) == ["a.json", "b.json", "c.json"]
    assert [(w.span.line, w.span.column) for w in ins.args] == [(1, 8), (3, 6), (4, 2)]


def test_escaped_trailing_backslash_is_not_a_continuation():
    (a, b) = parse("NAME x\\\\\nMODEL y\n", "M")
    assert words(a) == ["x\\"] and b.keyword == "MODEL"


def test_variables_are_parsed_with_spans_and_operators():
    (ins,) = parse("MODEL ${A}/$B-${C:-d.bin} ${E:+yes} \\$lit\n", "M")
    parts = ins.args[0].parts
    assert parts[0] == VarRef("A", Span("M", 1, 7))
    assert parts[1] == "/"
    assert isinstance(parts[2], VarRef) and parts[2].name == "B" and parts[2].span.column == 12
    assert parts[4] == VarRef("C", Span("M", 1, 15), ":-", "d.bin")
    assert ins.args[1].parts[0] == VarRef("E", Span("M", 1, 27), ":+", "yes")
    assert ins.args[2].literal == "$lit"


def test_lone_dollar_is_literal():
    (ins,) = parse("LABEL price=$5\n", "M")
    assert words(ins) == ["price=$5"]


@pytest.mark.parametrize(
    "text, line, col, message",
    [
        ('NAME "open\n', 1, 6, "unclosed quote"),
        ("MODEL a \\\n", 1, 9, "line continuation"),
        ("MODEL ${X\n", 1, 7, "unterminated variable"),
        ("MODEL ${1x}\n", 1, 7, "bad variable reference"),
        ("\n\n  model a\\", 3, 10, "line continuation"),
    ],
)
def test_syntax_errors_carry_their_location(text, line, col, message):
    with pytest.raises(ModelfileError) as info:
        parse(text, "M")
    assert info.value.span == Span("M", line, col)
    assert message in info.value.message


def test_binary_input_is_rejected_with_position():
    with pytest.raises(ModelfileError) as info:
        decode_source(b"MODEL a\nNAME \xff\xfe\n", "M")
    assert info.value.span == Span("M", 2, 6)
    with pytest.raises(ModelfileError) as info:
        decode_source(b"\x7fELF\x00\x01", "M")
    assert "NUL" in info.value.message


def test_syntax_directive_only_on_first_line():
    assert syntax_directive("# syntax=modelfile\nMODEL a\n")[0] == "modelfile"
    assert syntax_directive("#syntax = foo/bar:1\n")[0] == "foo/bar:1"
    assert syntax_directive("MODEL a\n# syntax=x\n") is None
