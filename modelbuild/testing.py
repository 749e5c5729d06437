"""Helpers and pytest fixtures for people testing modelbuild plugins (tox's habit: ship the
fixtures you use yourself; modelbuild's own plugin tests use exactly these).

Load the fixtures from your ``conftest.py``::

    pytest_plugins = ["modelbuild.testing"]

then, in a test::

    def test_my_quantizer(weight_file, transform_context, tmp_path):
        src = tmp_path / "model.safetensors"
        ...                                           # write a small model
        ctx = transform_context(my_plugin)            # work dir + a plugin host with yours
        out = MyQuantizer().quantize([weight_file(src)], "int8", {}, ctx)
        assert ctx.done == ctx.total                  # what the transform reported

    def test_my_plugin_builds(build_model, tmp_path):
        (tmp_path / "Modelfile").write_text("MODEL model.safetensors\\nQUANTIZE int8\\n")
        result = build_model(tmp_path / "Modelfile", my_plugin)
        assert result.config["config"]["quantization"] == "int8"

Fixtures (each a factory unless said otherwise):

``weight_file(source, path=None, kind=None)``
    a :class:`~modelbuild.weights.WeightFile` for a file on disk: digest and size read from it,
    *path* (its name in the artifact) the file's name unless given, *kind* ``"model"`` when
    an installed format claims the name's extension, else ``"config"``.
``model_set(directory)``
    every file under *directory*, as the ``weight_file`` list a transform receives.
``transform_context(*plugins, jobs=1, name=None, host=None)``
    a :class:`RecordingContext` in a fresh work directory under ``tmp_path``, whose
    ``plugins`` is a plugin host (the installed plugins plus *plugins*, or *host*).
``temp_store`` (a value)
    an empty store in a fresh ``MODELBUILD_HOME`` under ``tmp_path``, set in the environment
    for the test, so builds and CLI calls in the test use it.
``build_model(modelfile, *plugins, **options)``
    :func:`build_with` into ``temp_store``: one call, the :class:`~modelbuild.build.BuildResult`.

The same helpers without pytest: :func:`plugin_host`, :func:`build_with`,
:func:`make_weight_file`, :func:`make_model_set`, :class:`RecordingContext`. Nothing here
is global: every host is a fresh plugin manager, so no test depends on another.

Importing this module does not import pytest: the fixtures are defined only when pytest is
already running (it imports itself before it loads any plugin or conftest).
"""

from __future__ import annotations

import functools
import hashlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelbuild.weights import TransformContext, WeightFile
from modelbuild.plugins import PluginHost, make_plugin_manager

if TYPE_CHECKING:
    from modelbuild.build import BuildResult


def plugin_host(*plugins: object, load_entrypoints: bool = True) -> PluginHost:
    """A fresh plugin manager: the installed plugins (unless *load_entrypoints* is false) plus
    *plugins* (modules, classes or instances with ``@hookimpl`` methods), every one loaded and
    checked now (the CLI loads installed plugins lazily, from a catalog of what each
    registers: docs/plugins.md, "When your plugin is imported")."""
    return make_plugin_manager(plugins, load_entrypoints=load_entrypoints, lazy=False)


def build_with(modelfile: Path, home: Path, *plugins: object, **options: Any) -> BuildResult:
    """Build *modelfile* into the store at *home* with extra *plugins*; returns the BuildResult.
    *options* are :func:`modelbuild.build.build`'s keywords (``tags=``, ``layer_format=``…)."""
    import io

    from modelbuild.build import build
    from modelbuild.progress import QuietRenderer

    return build(str(modelfile), home=home, host=plugin_host(*plugins), renderer=QuietRenderer(io.StringIO()),
                 **options)


# -- values a transform receives -------------------------------------------------------------

@functools.cache
def _weight_extensions() -> tuple[str, ...]:
    """The extensions the installed formats claim (read once: they only change on install)."""
    return tuple(ext for handler in plugin_host().formats for ext in handler.extensions)


def make_weight_file(source: Path | str, path: str | None = None, kind: str | None = None) -> WeightFile:
    """The :class:`WeightFile` a build would hand a transform for the file at *source*: its
    sha256 digest and size read from the file, *path* (its name in the artifact) the file's
    name unless given, *kind* ``"model"`` if an installed format claims *path*'s extension,
    else ``"config"`` (a build takes it from the directive: ``MODEL`` or ``CONFIG``)."""
    source = Path(source)
    digest = hashlib.sha256()
    size = 0
    with source.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    path = source.name if path is None else path
    if kind is None:
        kind = "model" if path.endswith(_weight_extensions()) else "config"
    return WeightFile(path, str(source), "sha256:" + digest.hexdigest(), size, kind)


def make_model_set(directory: Path | str) -> list[WeightFile]:
    """Every file under *directory*, sorted, as :func:`make_weight_file` makes them, each named
    by its POSIX path relative to *directory*."""
    directory = Path(directory)
    return [make_weight_file(p, p.relative_to(directory).as_posix())
            for p in sorted(directory.rglob("*")) if p.is_file()]


class RecordingContext(TransformContext):
    """A :class:`TransformContext` that keeps what the transform reported: ``total`` (the last
    ``set_total``), ``done`` (the sum of ``advance`` calls), ``reports`` (each non-zero
    ``advance``, in order: how often a bar would move) and ``logs`` (``log`` messages)."""

    def __init__(self, workdir: Path, *, jobs: int = 1, plugins: Any = None) -> None:
        self.total = 0
        self.done = 0
        self.reports: list[int] = []
        self.logs: list[str] = []
        super().__init__(workdir, jobs=jobs, advance=self._advance, set_total=self._set_total,
                         log=self.logs.append, plugins=plugins)

    def _advance(self, n: int) -> None:
        self.done += n
        if n:
            self.reports.append(n)

    def _set_total(self, n: int) -> None:
        self.total = n


# -- the pytest plugin -----------------------------------------------------------------------

if "pytest" in sys.modules:  # under pytest: offer the fixtures (never import pytest otherwise)
    import pytest

    @pytest.fixture
    def weight_file() -> Any:
        """``weight_file(source, path=None, kind=None)``: a WeightFile for a file on disk
        (:func:`make_weight_file`)."""
        return make_weight_file

    @pytest.fixture
    def model_set() -> Any:
        """``model_set(directory)``: every file under *directory* as WeightFiles
        (:func:`make_model_set`)."""
        return make_model_set

    @pytest.fixture
    def transform_context(tmp_path: Path) -> Any:
        """``transform_context(*plugins, jobs=1, name=None, host=None)``: a
        :class:`RecordingContext` in a new, empty work directory under ``tmp_path`` (named
        *name*, or ``work``, ``work-2``…), whose ``plugins`` is *host* or a plugin host with
        the installed plugins plus *plugins*."""
        default: list[PluginHost] = []  # built on first use, shared by this test's contexts

        def make(*plugins: object, jobs: int = 1, name: str | None = None,
                 host: PluginHost | None = None) -> RecordingContext:
            if host is None and plugins:
                host = plugin_host(*plugins)
            elif host is None:
                if not default:
                    default.append(plugin_host())
                host = default[0]
            if name is None:
                i = 1
                while (tmp_path / (name := "work" if i == 1 else f"work-{i}")).exists():
                    i += 1
            workdir = tmp_path / name
            workdir.mkdir(parents=True)
            return RecordingContext(workdir, jobs=jobs, plugins=host)

        return make

    @pytest.fixture
    def temp_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
        """An empty :class:`modelbuild.store.Store` in a fresh ``MODELBUILD_HOME``
        (``tmp_path / "mbhome"``), set in the environment for this test."""
        from modelbuild.store import Store

        home = tmp_path / "mbhome"
        monkeypatch.setenv("MODELBUILD_HOME", str(home))
        return Store(home / "store").ensure()

    @pytest.fixture
    def build_model(temp_store: Any) -> Any:
        """``build_model(modelfile, *plugins, **options)``: build *modelfile* (a Modelfile, or
        a directory holding one) into ``temp_store`` with the installed plugins plus
        *plugins*; returns the BuildResult (:func:`build_with`)."""

        def run(modelfile: Path | str, *plugins: object, **options: Any) -> BuildResult:
            modelfile = Path(modelfile)
            if modelfile.is_dir():
                modelfile = modelfile / "Modelfile"
            return build_with(modelfile, temp_store.root.parent, *plugins, **options)

        return run


__all__ = ["RecordingContext", "build_with", "make_model_set", "make_weight_file", "plugin_host"]
