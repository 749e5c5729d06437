"""Whatever a frontend returns, the core packages only artifact paths relative to the build
context: a third-party frontend naming ``../secret.txt`` or an absolute path is a located
error before anything is read. (A symbolic link the user put in the context is followed:
docs/modelfile.md, "Symbolic links".)"""

from __future__ import annotations


import pytest

from modelbuild.api import BuildDescription, FileKind, FileSpec, ModelfileError, Span, hookimpl
from modelbuild.testing import build_with


class Naming:
    """A frontend (``# syntax=naming``) that packages the paths its file lists, one per line."""

    name = "naming"

    def load(self, text, *, filename, base_dir, default_context, build_args, sources):
        files = [FileSpec(line, FileKind.DOC, False, Span(filename, n))
                 for n, line in enumerate(text.splitlines(), start=1) if line and not line.startswith("#")]
        return BuildDescription(default_context, tuple(files), name="naming",
                                descriptor={"name": "naming"}, source_file=filename)


class NamingPlugin:
    @hookimpl
    def modelbuild_register_frontends(self, registry):
        registry.add(Naming())


@pytest.mark.parametrize("path, problem", [
    ("../secret.txt", "has an empty, '.' or '..' component"),
    ("/etc/passwd", "is absolute"),
    ("a/../../secret.txt", "has an empty, '.' or '..' component"),
])
def test_a_frontend_cannot_package_a_path_outside_the_context(tmp_path, path, problem):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (tmp_path / "secret.txt").write_text("not yours\n")
    (ctx / "README.md").write_text("readme\n")
    build_file = ctx / "Build.naming"
    build_file.write_text(f"# syntax=naming\nREADME.md\n{path}\n")
    with pytest.raises(ModelfileError) as caught:
        build_with(build_file, tmp_path / "home", NamingPlugin())
    assert caught.value.span is not None and caught.value.span.line == 3
    assert f"{path!r} {problem}" in str(caught.value)
    assert not (tmp_path / "home" / "store").exists() or not any((tmp_path / "home" / "store").rglob("*secret*"))
