"""File selection: the pattern rules of docs/modelfile.md, checked on a real directory."""

from __future__ import annotations

import os

import pytest

from support import write_model_dir
from modelbuild.context import BuildContext
from modelbuild.errors import ModelfileError

TREE = {
    "a.bin": "a",
    ".hidden.bin": "h",
    ".gitattributes": "*.bin lfs",
    ".cache/huggingface/x.lock": "",
    "sub/b.bin": "b",
    "sub/deep/c.bin": "c",
    "tok/v.txt": "v",
}


@pytest.fixture
def ctx(tmp_path):
    return BuildContext(write_model_dir(tmp_path / "ctx", TREE))


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("*.bin", ["a.bin"]),
        (".*.bin", [".hidden.bin"]),
        ("*", ["a.bin", "sub/", "tok/"]),
        ("**/*.bin", ["a.bin", "sub/b.bin", "sub/deep/c.bin"]),
        ("sub/**", ["sub/b.bin", "sub/deep/c.bin"]),
        ("**", ["a.bin", "sub/b.bin", "sub/deep/c.bin", "tok/v.txt"]),
        ("sub/**/*.bin", ["sub/b.bin", "sub/deep/c.bin"]),
        ("[^s]*", ["a.bin", "tok/"]),
        ("[!s]*", ["a.bin", "tok/"]),
        ("?.bin", ["a.bin"]),
        ("./sub//b.bin", ["sub/b.bin"]),
        (".gitattributes", [".gitattributes"]),
        ("tok", ["tok/"]),
    ],
)
def test_patterns(ctx, pattern, expected):
    got = [m.path + ("/" if m.is_dir else "") for m in ctx.match(pattern)]
    assert got == expected


@pytest.mark.parametrize(
    "pattern, message",
    [
        ("*.gguf", "matches nothing"),
        ("nope.bin", "no such file or directory"),
        ("../x", "escapes the build context"),
        ("sub/../../x", "escapes the build context"),
        ("/etc/passwd", "absolute path"),
        (".", "names the context itself"),
    ],
)
def test_pattern_errors(ctx, pattern, message):
    with pytest.raises(ModelfileError) as info:
        ctx.match(pattern)
    assert message in info.value.message


def test_undecodable_file_names_are_refused_not_crashed_on(tmp_path, mb):
    root = tmp_path / "m"
    root.mkdir()
    (root / "ok.bin").write_bytes(b"1")
    os.close(os.open(os.fsencode(root) + b"/caf\xe9.bin", os.O_CREAT | os.O_WRONLY))
    (root / "Modelfile").write_text("MODEL *.bin\n")
    run = mb("build", "-f", "Modelfile", cwd=root)
    assert run.rc == 2, run.err
    assert run.err.strip() == "Modelfile:1:7: caf\\xe9.bin: file name is not valid UTF-8; rename it"


def test_symlinked_modelfile_resolves_paths_from_where_the_link_is(tmp_path, build):
    ctx = write_model_dir(tmp_path / "project", {"w.bin": "w"})
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "Modelfile").write_text("MODEL w.bin\n")
    (ctx / "Modelfile").symlink_to(shared / "Modelfile")
    build(ctx, None, progress="quiet")
