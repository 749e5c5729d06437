"""Shared fixtures: an isolated MODELBUILD_HOME, the CLI run in this process (``mb``, ``build``)
and, for what only a real process shows, as a subprocess (``cli``).

The plugin-author fixtures (``weight_file``, ``model_set``, ``transform_context``,
``temp_store``, ``build_model``) come from :mod:`modelbuild.testing`, loaded below as a plugin
author's conftest loads them. ``tests/`` is on ``sys.path`` (``pythonpath`` in
pyproject.toml), so tests import ``support``, ``helpers`` and ``models`` directly.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema  # noqa: F401 - first, with every format checker: the tests' strict validators use them
import pytest

from support import EXAMPLES, Run, age

pytest_plugins = ["modelbuild.testing"]


@pytest.fixture
def tiny_llama(tmp_path: Path) -> Path:
    """A copy of the bundled tiny-llama model directory, its files aged past the stat
    cache's racy window (so a rebuild trusts their digests)."""
    import shutil

    dest = tmp_path / "model"
    shutil.copytree(EXAMPLES / "tiny-llama" / "model", dest)
    for p in dest.iterdir():
        age(p)
    return dest


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "mbhome"


@pytest.fixture
def cli(home: Path):
    """Run ``python -m modelbuild ARGS`` in a subprocess with its own MODELBUILD_HOME.

    Only for what needs a real process: the entry point's exit status, signals, several
    processes at once, environment read at start-up. Everything else uses ``mb``."""

    def run(*args: str, cwd: Path | None = None, env: dict | None = None, input: bytes | None = None,
            timeout: float = 300) -> Run:
        full_env = {**os.environ, "MODELBUILD_HOME": str(home), **(env or {})}
        full_env.pop("MODELBUILD_DEBUG", None)
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "modelbuild", *args],
            cwd=cwd, env=full_env, input=input, capture_output=True, timeout=timeout,
        )
        return Run(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"),
                   time.monotonic() - start)

    return run


def _main(args: tuple[str, ...]) -> int:
    """``modelbuild.cli.main``, with argparse's ``sys.exit`` (``--help``, bad options) turned
    into the exit status a process would have."""
    from modelbuild.cli import main

    try:
        return main(list(args))
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1


def _main_within(args: tuple[str, ...], timeout: float) -> int:
    """:func:`_main` on a thread, failing the test if it is still running after *timeout*
    seconds (a FIFO opened by mistake blocks for ever; a subprocess would be killed)."""
    box: dict = {}

    def target() -> None:
        try:
            box["rc"] = _main(args)
        except BaseException as exc:  # re-raised in the test's thread
            box["exc"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"modelbuild {' '.join(args)}: still running after {timeout}s", pytrace=False)
    if "exc" in box:
        raise box["exc"]
    return box["rc"]


@pytest.fixture
def mb(capsys, monkeypatch, home: Path, tmp_path: Path):
    """``mb(*args, cwd=None, env=None, input=None, timeout=None)``: the CLI run in this process
    (fast), with its own MODELBUILD_HOME and an empty docker config; returns a :class:`Run`
    (``rc, out, err = mb(...)`` works too).

    *cwd*, *env* (variables to set) and *input* (bytes on standard input) hold for this call
    only, as they would for one process; *timeout* runs the command on a thread and fails the
    test if it has not finished in time."""
    monkeypatch.setenv("MODELBUILD_HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.delenv("MODELBUILD_DEBUG", raising=False)

    def run(*args: str, cwd: Path | str | None = None, env: dict[str, str] | None = None,
            input: bytes | None = None, timeout: float | None = None) -> Run:
        capsys.readouterr()
        with pytest.MonkeyPatch.context() as call:
            if cwd is not None:
                call.chdir(cwd)
            for name, value in (env or {}).items():
                call.setenv(name, value)
            if input is not None:
                call.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(input)))
            start = time.monotonic()
            rc = _main(args) if timeout is None else _main_within(args, timeout)
            seconds = time.monotonic() - start
        out, err = capsys.readouterr()
        return Run(rc, out, err, seconds)

    return run


@pytest.fixture
def build(mb):
    """``build(ctx, modelfile=None, *args, progress="plain", env=None)``: write *modelfile*
    (text) to ``ctx/Modelfile`` when given, run ``modelbuild build -f Modelfile --json
    --progress PROGRESS ARGS`` in *ctx* in this process, check that it succeeded, and return
    its JSON result. For a build expected to fail, call ``mb`` and look at the :class:`Run`."""

    def run(ctx: Path, modelfile: str | None = None, *args: str, progress: str = "plain",
            env: dict[str, str] | None = None) -> dict:
        if modelfile is not None:
            (ctx / "Modelfile").write_text(modelfile)
        result = mb("build", "-f", "Modelfile", "--json", "--progress", progress, *args, cwd=ctx, env=env)
        assert result.rc == 0, result.err
        return result.json()

    return run


@pytest.fixture
def skopeo() -> str:
    """skopeo's path: an independent OCI client (skips outside CI when missing, fails in CI)."""
    from support import require_tool

    return require_tool("skopeo", "apt-get install -y skopeo; scripts/setup-system installs it")
