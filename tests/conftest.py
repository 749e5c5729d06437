"""Shared fixtures: an isolated MODELBUILD_HOME, and the CLI run as users run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import Run  # noqa: E402


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "mbhome"


@pytest.fixture
def cli(home: Path):
    """Run ``modelbuild ARGS`` in a subprocess with its own MODELBUILD_HOME."""

    def run(*args: str, cwd: Path | None = None, env: dict | None = None, input: bytes | None = None,
            timeout: float = 300) -> Run:
        full_env = {**os.environ, "MODELBUILD_HOME": str(home), **(env or {})}
        full_env.pop("MODELBUILD_DEBUG", None)
        proc = subprocess.run(
            [sys.executable, "-m", "modelbuild", *args],
            cwd=cwd, env=full_env, input=input, capture_output=True, timeout=timeout,
        )
        return Run(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

    return run


@pytest.fixture
def mb(capsys, monkeypatch, home: Path, tmp_path: Path):
    """``mb(*args)``: the CLI run in this process (fast), with its own MODELBUILD_HOME and an
    empty docker config; returns a :class:`Run` (``rc, out, err = mb(...)`` works too)."""
    from modelbuild.cli import main

    monkeypatch.setenv("MODELBUILD_HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.delenv("MODELBUILD_DEBUG", raising=False)

    def run(*args: str) -> Run:
        capsys.readouterr()
        rc = main(list(args))
        out, err = capsys.readouterr()
        return Run(rc, out, err)

    return run
