"""Mistakes a newcomer makes, each one error line with the fix: a Git LFS pointer where the
weights should be, and --platform on a Modelfile without TARGET stages."""

from __future__ import annotations

import pytest

from support import error_line

POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
           b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 1240000\n")


@pytest.fixture
def ctx(tiny_llama):
    return tiny_llama


def test_a_git_lfs_pointer_is_named_with_the_fix(mb, ctx):
    (ctx / "model.safetensors").write_bytes(POINTER)
    (ctx / "Modelfile").write_text("NAME tiny\nCONFIG config.json\nMODEL model.safetensors\n")
    run = mb("build", "-f", "Modelfile", "--progress", "quiet", cwd=ctx)
    assert error_line(run, 1).endswith(
        "model.safetensors is a Git LFS pointer, not the file it names "
        "(run `git lfs pull` in the model's repository, or clone it with git-lfs installed)")


def test_a_tokenizer_that_is_a_git_lfs_pointer_is_named_too(mb, ctx):
    """Hugging Face tracks tokenizer.json with LFS as well: any packaged file is checked."""
    (ctx / "tokenizer.json").write_bytes(POINTER)
    (ctx / "Modelfile").write_text("NAME tiny\nCONFIG config.json tokenizer.json\nMODEL model.safetensors\n")
    run = mb("build", "-f", "Modelfile", "--progress", "quiet", cwd=ctx)
    assert "tokenizer.json is a Git LFS pointer, not the file it names (run `git lfs pull`" in error_line(run, 1)


@pytest.mark.parametrize("reader", ["safetensors", "gguf", "onnx"])
def test_format_readers_name_a_pointer_with_the_fix(tmp_path, reader):
    """Wherever a weight file is read (a plugin used on its own, a transform's input), a
    pointer fails with the hint instead of a header-length or magic-number message."""
    from modelbuild.api import FormatError

    path = tmp_path / "w"
    path.write_bytes(POINTER)
    if reader == "safetensors":
        from modelbuild_plugins.safetensors_format.header import read_header as read
    elif reader == "gguf":
        from modelbuild_plugins.gguf_format.reader import parse_header as read
    else:
        from modelbuild_plugins.onnx_format import _parse

        def read(source):
            return _parse("w", source)
    with pytest.raises(FormatError) as info:
        read(str(path))
    assert "it is a Git LFS pointer, not the file it names: run `git lfs pull`" in info.value.render()


def test_a_small_model_file_that_is_not_a_pointer_builds(mb, ctx):
    (ctx / "tiny.bin").write_bytes(b"version 2 of something else\n")
    (ctx / "Modelfile").write_text("NAME tiny\nMODEL tiny.bin\n")
    assert mb("build", "-f", "Modelfile", cwd=ctx).rc == 0


def test_platform_without_target_stages_is_an_error_naming_the_fix(mb, ctx):
    (ctx / "Modelfile").write_text("NAME tiny\nCONFIG config.json\nMODEL model.safetensors\n")
    run = mb("build", "-f", "Modelfile", "--platform", "cuda", "--progress", "quiet", cwd=ctx)
    assert error_line(run, 2).endswith(
        "--platform cuda: Modelfile has no TARGET stage to select "
        "(drop --platform, or add TARGET stages: docs/modelfile.md)")
