"""``.modelbuildignore`` and ``build --exclude`` (modelbuild/ignore.py, docs/modelfile.md
"Excluding files"): the gitignore(5) matcher against git's own documented cases, the build
context that leaves excluded paths out, real builds, the cache, and hostile ignore files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from support import age, error_line, write_model_dir
from modelbuild.context import BuildContext, walk_tree
from modelbuild.description import BuildDescription, FileKind, FileSpec
from modelbuild.errors import ModelfileError, Span, UsageError
from modelbuild.ignore import (
    IgnoreFileError,
    IgnoreRules,
    apply_to_description,
    command_line,
    context_rules,
    parse_excludes,
    parse_ignore,
    read_ignore_file,
)


def excluded(lines: list[str], path: str, is_dir: bool = False) -> bool:
    """Whether the ignore file *lines* leaves *path* out of the context (parents included)."""
    return parse_ignore("\n".join(lines), ".modelbuildignore").exclusion(path, is_dir) is not None


# -- the matcher: git's documented cases --------------------------------------------------------
# Each row quotes gitignore(5) (git 2.45, "PATTERN FORMAT" and "EXAMPLES"): (rules, path,
# is it a directory, excluded?).
GITIGNORE_5 = [
    # "The pattern hello.* matches any file or directory whose name begins with hello."
    (["hello.*"], "hello.txt", False, True),
    (["hello.*"], "a/hello.java", False, True),
    (["hello.*"], "hello.d", True, True),
    # "... prepend the pattern with a slash, i.e. /hello.*; the pattern matches hello.txt,
    # hello.c but not a/hello.java."
    (["/hello.*"], "hello.txt", False, True),
    (["/hello.*"], "hello.c", False, True),
    (["/hello.*"], "a/hello.java", False, False),
    # "The pattern foo/ will match a directory foo and paths underneath it, but will not match
    # a regular file or a symbolic link foo"
    (["foo/"], "foo", True, True),
    (["foo/"], "foo/x/y.bin", False, True),
    (["foo/"], "foo", False, False),
    # "The pattern doc/frotz and /doc/frotz have the same effect"
    (["doc/frotz"], "doc/frotz", False, True),
    (["/doc/frotz"], "doc/frotz", False, True),
    (["doc/frotz"], "a/doc/frotz", False, False),
    (["/doc/frotz"], "a/doc/frotz", False, False),
    # "The pattern foo/*, matches foo/test.json (a regular file), foo/bar (a directory)"
    (["foo/*"], "foo/test.json", False, True),
    (["foo/*"], "foo/bar", True, True),
    # "... but it does not match foo/bar/hello.c" (the pattern itself does not; the file is
    # still out of the context, under the excluded directory foo/bar: see below)
    (["foo/*"], "foo/bar/hello.c", False, True),
    # "**/foo matches file or directory foo anywhere, the same as pattern foo"
    (["**/foo"], "foo", False, True),
    (["**/foo"], "a/b/foo", True, True),
    (["foo"], "a/b/foo", False, True),
    # "**/foo/bar matches file or directory bar anywhere that is directly under directory foo"
    (["**/foo/bar"], "foo/bar", False, True),
    (["**/foo/bar"], "x/y/foo/bar", True, True),
    (["**/foo/bar"], "foo/x/bar", False, False),
    # "abc/** matches all files inside directory abc ... with infinite depth"
    (["abc/**"], "abc/x", False, True),
    (["abc/**"], "abc/x/y/z", False, True),
    (["abc/**"], "abc", True, False),
    (["abc/**"], "xabc/y", False, False),
    # "a/**/b matches a/b, a/x/b, a/x/y/b and so on"
    (["a/**/b"], "a/b", False, True),
    (["a/**/b"], "a/x/b", False, True),
    (["a/**/b"], "a/x/y/b", False, True),
    (["a/**/b"], "b", False, False),
    # "Other consecutive asterisks are considered regular asterisks"
    (["a**b.bin"], "axyb.bin", False, True),
    (["a**b.bin"], "ax/yb.bin", False, False),
    # "An asterisk * matches anything except a slash. ? matches any one character except /."
    (["*.bin"], "sub/model.bin", False, True),
    (["m?del.bin"], "model.bin", False, True),
    (["m?del.bin"], "m/del.bin", False, False),
    # "The range notation, e.g. [a-zA-Z], can be used to match one of the characters in a range"
    (["model-[0-9].bin"], "model-7.bin", False, True),
    (["model-[0-9].bin"], "model-x.bin", False, False),
    # "Put a backslash in front of the first hash for patterns that begin with a hash."
    (["\\#notes"], "#notes", False, True),
    (["#notes"], "#notes", False, False),
    # "... for example, \!important!.txt"
    (["\\!important!.txt"], "!important!.txt", False, True),
    # "Trailing spaces are ignored unless they are quoted with backslash"
    (["notes.md   "], "notes.md", False, True),
    (["notes\\ "], "notes ", False, True),
    (["notes\\ "], "notes", False, False),
    # "An optional prefix ! negates the pattern; any matching file excluded by a previous
    # pattern will become included again."
    (["*.bin", "!keep.bin"], "keep.bin", False, False),
    (["*.bin", "!keep.bin"], "drop.bin", False, True),
    (["!keep.bin", "*.bin"], "keep.bin", False, True),  # the last match wins
    # "It is not possible to re-include a file if a parent directory of that file is excluded."
    (["drafts/", "!drafts/keep.md"], "drafts/keep.md", False, True),
    (["drafts/*", "!drafts/keep.md"], "drafts/keep.md", False, False),
    (["drafts/*", "!drafts/keep.md"], "drafts/other.md", False, True),
    # EXAMPLES: "doc/frotz/ matches doc/frotz directory, but not a/doc/frotz directory;
    # however frotz/ matches frotz and a/frotz that is a directory"
    (["doc/frotz/"], "doc/frotz", True, True),
    (["doc/frotz/"], "a/doc/frotz", True, False),
    (["frotz/"], "frotz", True, True),
    (["frotz/"], "a/frotz", True, True),
    # EXAMPLES: "# ignore objects and archives, anywhere in the tree. *.[oa]", then
    # "*.html" "# except foo.html which is maintained by hand" "!foo.html"
    (["*.[oa]", "*.html", "!foo.html"], "src/internal.o", False, True),
    (["*.[oa]", "*.html", "!foo.html"], "lib.a", False, True),
    (["*.[oa]", "*.html", "!foo.html"], "Documentation/gitignore.html", False, True),
    (["*.[oa]", "*.html", "!foo.html"], "Documentation/foo.html", False, False),
    (["*.[oa]", "*.html", "!foo.html"], "lib.c", False, False),
]

# EXAMPLES: "exclude everything except directory foo/bar"
EVERYTHING_BUT_FOO_BAR = ["# exclude everything except directory foo/bar", "/*", "!/foo", "/foo/*", "!/foo/bar"]


@pytest.mark.parametrize("lines, path, is_dir, expected", GITIGNORE_5,
                         ids=[f"{'|'.join(r)}~{p}" for r, p, _, _ in GITIGNORE_5])
def test_gitignore_5_cases(lines, path, is_dir, expected):
    assert excluded(lines, path, is_dir) is expected


def test_foo_star_does_not_match_a_deeper_file_itself():
    """gitignore(5)'s words exactly: the rule ``foo/*`` does not match ``foo/bar/hello.c``;
    the file is out only because its directory ``foo/bar`` is."""
    rules = parse_ignore("foo/*", "f")
    assert rules.rule_for("foo/bar/hello.c", False) is None
    why = rules.exclusion("foo/bar/hello.c", False)
    assert (why.path, why.rule.text) == ("foo/bar", "foo/*")


@pytest.mark.parametrize("path, is_dir, expected", [
    ("foo/bar", True, False),
    ("foo/bar/deep/x.bin", False, False),
    ("foo/baz.bin", False, True),
    ("foo", True, False),
    ("top.bin", False, True),
    ("other", True, True),
    ("other/x.bin", False, True),
])
def test_everything_except_foo_bar(path, is_dir, expected):
    assert excluded(EVERYTHING_BUT_FOO_BAR, path, is_dir) is expected


@pytest.mark.parametrize("pattern, path, expected", [
    ("[!a]*.bin", "b.bin", True),
    ("[!a]*.bin", "a.bin", False),
    ("[^a]*.bin", "a.bin", False),
    ("[]]x", "]x", True),
    ("[!]]x", "]x", False),
    ("[a-]x", "-x", True),
    ("[[:digit:]][[:upper:]]", "7Q", True),
    ("[[:digit:]][[:upper:]]", "7q", False),
    ("[[:alpha:]_]*", "_tmp", True),
    ("\\*.bin", "*.bin", True),
    ("\\*.bin", "x.bin", False),
    ("\\[x]", "[x]", True),
    ("[z-a]x", "mx", False),  # a reversed range matches nothing, as in git
    ("*", ".git", True),  # unlike a Modelfile pattern, * matches a leading dot (git's rule)
    ("model-*-of-*.safetensors", "model-00001-of-00002.safetensors", True),
    ("a/b//c", "a/b/c", True),
])
def test_classes_escapes_and_wildcards(pattern, path, expected):
    assert excluded([pattern], path) is expected


def test_comments_blank_lines_crlf_and_a_byte_order_mark():
    rules = parse_ignore("\ufeff# a comment\r\n\r\n   \n*.tmp\r\n", "f")
    assert [r.text for r in rules.rules] == ["*.tmp"]
    assert rules.rules[0].origin == "f:4"
    assert rules.excludes("a.tmp", False)


def test_rules_compiled_again_from_their_patterns_match_alike():
    """The build re-compiles the rules from the digest step's parameters."""
    lines = ["*.bin", "!keep.bin", "drafts/", "/top\\ ", "\\#x", "a/**/b"]
    rules = parse_ignore("\n".join(lines), "f")
    again = IgnoreRules.from_patterns(rules.patterns())
    for path in ["x.bin", "keep.bin", "d/drafts", "top ", "#x", "a/q/b", "other"]:
        assert (rules.rule_for(path, True) is None) == (again.rule_for(path, True) is None), path


def test_pathological_patterns_stay_fast():
    """A star per character, or a long chain of ``**``, cannot make matching exponential."""
    stars = parse_ignore("*a" * 40 + "*b", "f")
    chain = parse_ignore("/".join(["**"] * 60) + "/x", "f")
    start = time.monotonic()
    assert not stars.excludes("a" * 250, False)
    assert not chain.excludes("/".join(["a"] * 300), False)
    assert chain.excludes("/".join(["a"] * 300) + "/x", False)
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("text, expected", [
    ("ok\n[abc", "f:2:1: unclosed '[' (write '\\[' for a literal '[')"),
    ("x\\", "f:1:2: trailing backslash escapes nothing (write '\\\\' for a backslash)"),
    ("../x", "f:1:1: a '..' segment would leave the build context: patterns are paths inside the context "
             "(write the path from the context's root, e.g. '/weights/tmp')"),
    ("a/../../etc", "f:1:3: a '..' segment would leave the build context: patterns are paths inside the context "
                    "(write the path from the context's root, e.g. '/weights/tmp')"),
    ("./x", "f:1:1: a '.' segment matches nothing: patterns are paths inside the context "
            "(write the path from the context's root, e.g. '/weights/tmp')"),
    ("[[:nope:]]", "f:1:2: unknown character class [:nope:] (known: alnum, alpha, blank, cntrl, digit, graph, "
                   "lower, print, punct, space, upper, xdigit)"),
    ("!", "f:1:1: '!' with no pattern after it (write '\\!' for a name that starts with !)"),
    ("/", "f:1:1: a pattern of separators alone matches nothing (write '*' to exclude everything)"),
])
def test_a_bad_pattern_is_located_in_the_ignore_file(text, expected):
    with pytest.raises(IgnoreFileError) as info:
        parse_ignore(text, "f")
    assert info.value.render() == expected


def test_an_ignore_file_error_keeps_its_own_location():
    """The interpreter locates unlocated errors at the current Modelfile line; an ignore
    file's error belongs to the ignore file."""
    err = IgnoreFileError("x is a directory, not an ignore file")
    assert err.located(Span("Modelfile", 3, 1)).span is None


@pytest.mark.parametrize("patterns, message", [
    (["[x"], "--exclude '[x': unclosed '[' at column 1 (write '\\[' for a literal '[')"),
    (["#x"], "--exclude '#x' is a comment in ignore syntax (write '\\#' for a name that starts with #)"),
    ([""], "--exclude needs a pattern (e.g. --exclude '*.bin')"),
    (["a\nb"], "--exclude 'a\\nb': one pattern per --exclude, without line breaks"),
    (["../up"], "--exclude '../up': a '..' segment would leave the build context: patterns are paths inside "
                "the context at column 1 (write the path from the context's root, e.g. '/weights/tmp')"),
])
def test_bad_exclude_values_are_usage_errors(patterns, message):
    with pytest.raises(UsageError) as info:
        parse_excludes(patterns)
    assert info.value.render() == message


# -- the build context -------------------------------------------------------------------------
TREE = {
    "config.json": "{}",
    "secret.json": '{"token": "x"}',
    "model.bin": "weights",
    "docs/index.md": "# docs",
    "docs/drafts/todo.md": "wip",
    "docs/drafts/keep.md": "keep",
    "docs/api/ref.md": "api",
    "logs/run.log": "log",
}


@pytest.fixture
def ctx_dir(tmp_path: Path) -> Path:
    return write_model_dir(tmp_path / "ctx", TREE)


def context(root: Path, ignore: str | None, *excludes: str) -> BuildContext:
    if ignore is not None:
        (root / ".modelbuildignore").write_text(ignore)
    with command_line(parse_excludes(excludes)):
        return BuildContext(root)


def tree_of(root: Path, rel: str, ctx: BuildContext) -> list[str]:
    return [t.path for t in walk_tree(root, rel, ctx.ignore)]


def test_patterns_and_directories_leave_excluded_paths_out(ctx_dir):
    ctx = context(ctx_dir, "# drafts are not published\ndocs/drafts/\nsecret.json\nlogs\n")
    assert [m.path for m in ctx.match("*.json")] == ["config.json"]
    assert [m.path for m in ctx.match("*")] == ["config.json", "docs", "model.bin"]
    assert [m.path for m in ctx.match("**/*.md")] == ["docs/api/ref.md", "docs/index.md"]
    assert tree_of(ctx_dir, "docs", ctx) == ["docs", "docs/api", "docs/api/ref.md", "docs/index.md"]


def test_a_negation_re_includes_and_the_last_rule_wins(ctx_dir):
    ctx = context(ctx_dir, "docs/drafts/*\n!docs/drafts/keep.md\n*.json\n!config.json\n")
    assert tree_of(ctx_dir, "docs", ctx) == [
        "docs", "docs/api", "docs/api/ref.md", "docs/drafts", "docs/drafts/keep.md", "docs/index.md"]
    assert [m.path for m in ctx.match("*.json")] == ["config.json"]


def test_exclude_options_come_after_the_file(ctx_dir):
    ctx = context(ctx_dir, "*.json\n", "!secret.json", "docs/api/")
    assert [m.path for m in ctx.match("*.json")] == ["secret.json"]
    assert tree_of(ctx_dir, "docs", ctx) == [
        "docs", "docs/drafts", "docs/drafts/keep.md", "docs/drafts/todo.md", "docs/index.md"]


def test_a_literal_path_that_is_excluded_is_an_error_naming_the_rule(ctx_dir, monkeypatch):
    monkeypatch.chdir(ctx_dir)  # errors name the ignore file relative to the current directory
    ctx = context(ctx_dir, "\nsecret.json\ndocs/drafts/\n")
    with pytest.raises(ModelfileError) as info:
        ctx.match("secret.json")
    assert info.value.render() == (
        "secret.json is excluded by .modelbuildignore:2 ('secret.json') "
        "(drop it from the directive, or re-include it with a later '!secret.json')")
    with pytest.raises(ModelfileError) as info:
        ctx.match("docs/drafts/keep.md")
    assert info.value.render() == (
        "docs/drafts/keep.md is excluded by .modelbuildignore:3 ('docs/drafts/') (docs/drafts is excluded, "
        "and nothing inside an excluded directory can be re-included; to keep docs/drafts/keep.md, exclude "
        "the directory's contents ('docs/drafts/*') rather than the directory)")


def test_a_pattern_whose_matches_are_all_excluded_says_so(ctx_dir, monkeypatch):
    monkeypatch.chdir(ctx_dir.parent)
    ctx = context(ctx_dir, "*.json\n")
    with pytest.raises(ModelfileError) as info:
        ctx.match("s*.json")
    assert info.value.render() == (
        f"pattern 's*.json' matches nothing in {ctx_dir} (what it matches is excluded by "
        "ctx/.modelbuildignore:1, '*.json')")


def test_an_excluded_directory_is_not_blamed_for_a_pattern_that_matches_nothing(ctx_dir):
    ctx = context(ctx_dir, "logs/\n")
    with pytest.raises(ModelfileError) as info:
        ctx.match("**/*.gguf")
    assert info.value.hint is None


def test_what_is_excluded_is_never_examined(ctx_dir):
    """A FIFO, or a name an artifact cannot carry, inside an excluded directory is no error:
    the walk does not look there (it would refuse both in a packaged directory)."""
    os.mkfifo(ctx_dir / "docs" / "drafts" / "pipe")
    (ctx_dir / "docs" / "drafts" / "bad\nname.md").write_text("x")
    ctx = context(ctx_dir, "docs/drafts/\n")
    assert [m.path for m in ctx.match("docs")] == ["docs"]
    with pytest.raises(ModelfileError, match="control character|named pipe"):
        context(ctx_dir, "# nothing\n").match("docs")


def test_the_ignore_file_beside_the_modelfile_replaces_the_contexts(tmp_path, ctx_dir):
    (ctx_dir / ".modelbuildignore").write_text("*.json\n")
    elsewhere = tmp_path / "modelfiles"
    elsewhere.mkdir()
    (elsewhere / "gpu.Modelfile.modelbuildignore").write_text("logs/\n")
    beside = context_rules(ctx_dir, elsewhere / "gpu.Modelfile")
    assert [r.text for r in beside.rules] == ["logs/"]
    assert [r.text for r in context_rules(ctx_dir, elsewhere / "Modelfile").rules] == ["*.json"]
    assert [r.text for r in context_rules(ctx_dir).rules] == ["*.json"]


# -- any frontend: the resolve stage -------------------------------------------------------------
def test_a_frontend_that_did_not_apply_the_rules_is_checked_at_resolve(ctx_dir, monkeypatch):
    """A third-party frontend (a Kitfile) need not know about .modelbuildignore: the resolve
    stage reads the rules, refuses a file they exclude at its line, and hands them on."""
    monkeypatch.chdir(ctx_dir)
    (ctx_dir / ".modelbuildignore").write_text("secret.json\n")
    origin = Span("Kitfile", 7, 9)
    desc = BuildDescription(ctx_dir, (FileSpec("config.json", FileKind.CONFIG, False),
                                      FileSpec("docs", FileKind.DOC, True)), source_file="Kitfile")
    checked = apply_to_description(desc)
    assert checked.ignore.patterns() == ["secret.json"]
    bad = BuildDescription(ctx_dir, (FileSpec("secret.json", FileKind.CONFIG, False, origin),),
                           source_file="Kitfile")
    with pytest.raises(ModelfileError) as info:
        apply_to_description(bad)
    assert info.value.render() == (
        "Kitfile:7:9: secret.json is excluded by .modelbuildignore:1 ('secret.json') "
        "(drop it from the directive, or re-include it with a later '!secret.json')")


# -- builds ----------------------------------------------------------------------------------------
MODELFILE = "NAME demo\nCONFIG *.json\nMODEL model.bin\nDOC docs/\n"


def built_files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def test_a_build_packages_only_what_is_not_excluded(mb, ctx_dir, tmp_path):
    (ctx_dir / "Modelfile").write_text(MODELFILE)
    (ctx_dir / ".modelbuildignore").write_text("docs/drafts/\nsecret.json\n")
    out = tmp_path / "out"
    run = mb("build", "-q", "-o", str(out), cwd=ctx_dir)
    assert run.rc == 0, run.err
    assert built_files(out) == ["config.json", "docs/api/ref.md", "docs/index.md", "model.bin"]


def test_exclude_on_the_command_line_combines_with_the_file(mb, ctx_dir, tmp_path):
    (ctx_dir / "Modelfile").write_text(MODELFILE)
    (ctx_dir / ".modelbuildignore").write_text("docs/drafts/\nsecret.json\n")
    out = tmp_path / "out"
    run = mb("build", "-q", "-o", str(out), "--exclude", "!secret.json", "--exclude", "docs/api", cwd=ctx_dir)
    assert run.rc == 0, run.err
    assert built_files(out) == ["config.json", "docs/index.md", "model.bin", "secret.json"]


def test_a_fifo_in_an_excluded_directory_does_not_stop_the_build(mb, ctx_dir, tmp_path):
    """The build's own walk of the packaged directory (the digest step) skips it too."""
    (ctx_dir / "Modelfile").write_text(MODELFILE)
    (ctx_dir / ".modelbuildignore").write_text("docs/drafts/\nsecret.json\n")
    os.mkfifo(ctx_dir / "docs" / "drafts" / "pipe")
    out = tmp_path / "out"
    run = mb("build", "-q", "-o", str(out), cwd=ctx_dir, timeout=120)
    assert run.rc == 0, run.err
    assert built_files(out) == ["config.json", "docs/api/ref.md", "docs/index.md", "model.bin"]


def test_naming_an_excluded_file_is_a_located_error(mb, ctx_dir):
    (ctx_dir / "Modelfile").write_text("NAME demo\nMODEL model.bin\nDOC docs/index.md docs/drafts/todo.md\n")
    (ctx_dir / ".modelbuildignore").write_text("# work in progress\ndocs/drafts/\n")
    run = mb("build", "-f", "Modelfile", cwd=ctx_dir)
    assert run.rc == 2 and "Traceback" not in run.err
    assert run.err.strip() == (
        "Modelfile:3:19: docs/drafts/todo.md is excluded by .modelbuildignore:2 ('docs/drafts/') "
        "(docs/drafts is excluded, and nothing inside an excluded directory can be re-included; to keep "
        "docs/drafts/todo.md, exclude the directory's contents ('docs/drafts/*') rather than the directory)")


def test_an_exclude_option_names_itself_in_the_error(mb, ctx_dir):
    (ctx_dir / "Modelfile").write_text("NAME demo\nMODEL model.bin\n")
    run = mb("build", "--exclude", "*.bin", cwd=ctx_dir)
    assert run.err.strip() == ("Modelfile:2:7: model.bin is excluded by --exclude ('*.bin') "
                               "(drop it from the directive, or re-include it with a later '!model.bin')")


def test_a_change_to_an_excluded_file_keeps_the_build_cached(build, ctx_dir):
    (ctx_dir / ".modelbuildignore").write_text("docs/drafts/\nlogs/\n")
    first = build(ctx_dir, MODELFILE)
    draft = ctx_dir / "docs" / "drafts" / "todo.md"
    draft.write_text("a draft, rewritten")
    (ctx_dir / "docs" / "drafts" / "new.md").write_text("another draft")
    age(draft)
    again = build(ctx_dir)
    assert again["digest"] == first["digest"]
    assert again["stats"]["executed"] == [] and again["stats"]["files_hashed"] == []
    # the ignore file's text is in no key: a comment or a rule that selects the same files
    (ctx_dir / ".modelbuildignore").write_text("# drafts stay home\ndocs/drafts\nlogs/\n/no-such-file\n")
    assert build(ctx_dir)["stats"]["executed"] == []
    # a rule that changes what the directory holds re-packs that layer, and only what follows
    (ctx_dir / ".modelbuildignore").write_text("docs/drafts/\ndocs/api/\n")
    changed = build(ctx_dir)
    assert changed["digest"] != first["digest"]
    assert sorted(changed["stats"]["executed"]) == ["config", "export", "layer:docs", "manifest"]


# -- hostile ignore files --------------------------------------------------------------------------
def test_a_huge_ignore_file_is_refused_at_the_limit(mb, ctx_dir):
    (ctx_dir / "Modelfile").write_text("NAME demo\nMODEL model.bin\n")
    with open(ctx_dir / ".modelbuildignore", "w") as f:
        f.write("# padding\n" * 200_000)  # 2 MB, twice the limit
    run = mb("build", cwd=ctx_dir)
    assert error_line_or_located(run) == (
        ".modelbuildignore:104858:1: larger than 1048576 bytes, the ignore file size limit "
        "(set MODELBUILD_MAX_IGNORE_BYTES to raise the limit)")


def test_too_many_patterns_are_refused(mb, ctx_dir):
    (ctx_dir / "Modelfile").write_text("NAME demo\nMODEL model.bin\n")
    (ctx_dir / ".modelbuildignore").write_text("".join(f"f{i}\n" for i in range(11)))
    run = mb("build", cwd=ctx_dir, env={"MODELBUILD_MAX_IGNORE_PATTERNS": "10"})
    assert error_line_or_located(run) == (
        ".modelbuildignore:11:1: more than 10 patterns, the ignore file's pattern limit "
        "(set MODELBUILD_MAX_IGNORE_PATTERNS to raise the limit)")


def test_a_pattern_cannot_reach_outside_the_context(mb, ctx_dir, tmp_path):
    (tmp_path / "outside.bin").write_text("not in the context")
    (ctx_dir / "Modelfile").write_text("NAME demo\nMODEL model.bin\n")
    (ctx_dir / ".modelbuildignore").write_text("!../outside.bin\n")
    run = mb("build", cwd=ctx_dir)
    assert error_line_or_located(run) == (
        ".modelbuildignore:1:2: a '..' segment would leave the build context: patterns are paths inside the "
        "context (write the path from the context's root, e.g. '/weights/tmp')")


def test_an_ignore_file_linking_out_of_the_context_is_refused(mb, ctx_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n[unclosed\n")
    (ctx_dir / "Modelfile").write_text("NAME demo\nMODEL model.bin\n")
    (ctx_dir / ".modelbuildignore").symlink_to(secret)
    run = mb("build", cwd=ctx_dir)
    assert error_line(run, 2) == (
        f"modelbuild: error: .modelbuildignore: symbolic link to {secret}, outside {ctx_dir}; "
        "an ignore file must be a file inside the directory it is in")
    assert "root:x" not in run.err


def test_an_ignore_file_may_link_to_a_gitignore_in_the_context(build, ctx_dir):
    (ctx_dir / ".gitignore").write_text("secret.json\n")
    (ctx_dir / ".modelbuildignore").symlink_to(".gitignore")
    result = build(ctx_dir, MODELFILE)
    paths = [layer["annotations"]["org.cncf.model.filepath"] for layer in result["layers"]]
    assert paths == ["config.json", "docs", "model.bin"]


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "modelbuild: error: .modelbuildignore is a directory, not an ignore file "
                          "(an ignore file is a text file of patterns)"),
    (lambda p: os.mkfifo(p), "modelbuild: error: .modelbuildignore is not a regular file "
                             "(an ignore file is a text file of patterns)"),
    (lambda p: p.symlink_to("missing"), "modelbuild: error: .modelbuildignore: broken symlink (points to 'missing')"),
])
def test_an_ignore_file_that_is_not_a_file_is_refused(mb, ctx_dir, make, message):
    (ctx_dir / "Modelfile").write_text("NAME demo\nMODEL model.bin\n")
    make(ctx_dir / ".modelbuildignore")
    run = mb("build", cwd=ctx_dir, timeout=60)  # a FIFO opened by mistake would block
    assert error_line(run, 2) == message


def test_an_ignore_file_that_is_not_utf8_is_located(ctx_dir):
    (ctx_dir / ".modelbuildignore").write_bytes(b"ok\ncaf\xe9\n")
    with pytest.raises(IgnoreFileError) as info:
        read_ignore_file(ctx_dir / ".modelbuildignore", ctx_dir)
    assert info.value.render() == f"{ctx_dir}/.modelbuildignore:2:4: not valid UTF-8 (an ignore file is UTF-8 text)"


def error_line_or_located(run) -> str:
    """The one error line of a failed build (exit 2), without a traceback."""
    assert run.rc == 2, run.err
    assert "Traceback" not in run.err and "internal error" not in run.err, run.err
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert len(lines) == 1, run.err
    return lines[0]
