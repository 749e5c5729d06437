"""The frontend's bounds on hostile build files, through the command line (in-process).

Each bound is stated in modelbuild/frontend/limits.py with its environment variable; what is
asserted here: the error is one line with exit 2, it comes fast (time linear in the limit,
not in the input), and raising the variable lets a legitimate large input through.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import safetensors_blob, write_model_dir


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    return write_model_dir(tmp_path / "ctx", {"model.safetensors": safetensors_blob(b"\0" * 8)})


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_dev_zero_is_refused_at_once(mb):
    run = mb("build", "-f", "/dev/zero", "--progress", "quiet")
    assert run.rc == 2 and "/dev/zero is not a regular file" in one_line(run.err)
    assert run.seconds < 2


def test_a_fifo_is_refused_without_blocking(mb, tmp_path):
    fifo = tmp_path / "Modelfile"
    os.mkfifo(fifo)
    rc, _, err = mb("build", "-f", str(fifo), "--progress", "quiet", timeout=10)  # fails the test if it blocks
    assert rc == 2 and "is not a regular file" in one_line(err)


def test_a_modelfile_over_the_size_limit_is_refused(mb, ctx):
    modelfile = ctx / "Modelfile"
    modelfile.write_text("NAME big\nMODEL model.safetensors\n" + "# padding\n" * 200_000)
    rc, _, err = mb("build", "-f", str(modelfile), "--progress", "quiet")
    assert rc == 2 and "larger than 1048576 bytes" in one_line(err) and "MODELBUILD_MAX_MODELFILE_BYTES" in err


def test_the_size_limit_can_be_raised(mb, ctx, monkeypatch):
    modelfile = ctx / "Modelfile"
    modelfile.write_text("NAME big\nMODEL model.safetensors\n" + "# padding\n" * 200_000)
    monkeypatch.setenv("MODELBUILD_MAX_MODELFILE_BYTES", str(4 << 20))
    rc, _, err = mb("build", "-f", str(modelfile), "--progress", "quiet")
    assert rc == 0, err


def test_a_ten_megabyte_line_is_refused_quickly(mb, ctx, monkeypatch):
    monkeypatch.setenv("MODELBUILD_MAX_MODELFILE_BYTES", str(16 << 20))
    modelfile = ctx / "Modelfile"
    modelfile.write_text("NAME long\nMODEL model.safetensors\nDESCRIPTION " + "a" * (10 << 20) + "\n")
    run = mb("build", "-f", str(modelfile), "--progress", "quiet")
    assert run.rc == 2 and "Modelfile:3:" in run.err and "longer than 65536 characters" in one_line(run.err)
    assert run.seconds < 5, run.seconds


def test_a_long_line_passes_when_the_limit_is_raised(mb, ctx, monkeypatch):
    monkeypatch.setenv("MODELBUILD_MAX_LINE_LENGTH", "200000")
    modelfile = ctx / "Modelfile"
    modelfile.write_text("NAME long\nMODEL model.safetensors\nDESCRIPTION " + "a" * 100_000 + "\n")
    rc, _, err = mb("build", "-f", str(modelfile), "--progress", "quiet")
    assert rc == 0, err


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5"])
def test_a_limit_that_is_not_a_positive_integer_is_a_usage_error(mb, ctx, monkeypatch, value):
    monkeypatch.setenv("MODELBUILD_MAX_LINE_LENGTH", value)
    (ctx / "Modelfile").write_text("NAME x\nMODEL model.safetensors\n")
    rc, _, err = mb("build", "-f", str(ctx / "Modelfile"), "--progress", "quiet")
    assert rc == 2 and "MODELBUILD_MAX_LINE_LENGTH must be a positive integer" in one_line(err)


def test_standard_input_is_bounded_too(mb, monkeypatch, ctx):
    monkeypatch.setenv("MODELBUILD_MAX_MODELFILE_BYTES", "1000")
    data = b"NAME x\nMODEL model.safetensors\n" + b"#" * 5000 + b"\n"
    rc, _, err = mb("build", "-f", "-", "--progress", "quiet", cwd=ctx, input=data)
    assert rc == 2 and "<stdin> is larger than 1000 bytes" in one_line(err)
