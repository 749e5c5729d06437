"""The frontend's bounds on hostile build files, through the command line (in-process).

Each bound is stated in modelbuild/frontend/limits.py with its environment variable; what is
asserted here: the error is one line with exit 2, it comes fast (time linear in the limit,
not in the input), and raising the variable lets a legitimate large input through.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from support import safetensors_blob, write_model_dir

from modelbuild import cli


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    return write_model_dir(tmp_path / "ctx", {"model.safetensors": safetensors_blob(b"\0" * 8)})


@pytest.fixture
def build(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MODELBUILD_HOME", str(tmp_path / "home"))

    def run(modelfile: str, *extra: str) -> tuple[int, str, float]:
        start = time.monotonic()
        rc = cli.main(["build", "-f", modelfile, "--progress", "quiet", *extra])
        elapsed = time.monotonic() - start
        err = capsys.readouterr().err
        return rc, err, elapsed

    return run


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_dev_zero_is_refused_at_once(build):
    rc, err, elapsed = build("/dev/zero")
    assert rc == 2 and "/dev/zero is not a regular file" in one_line(err)
    assert elapsed < 2


def test_a_fifo_is_refused_without_blocking(build, tmp_path):
    fifo = tmp_path / "Modelfile"
    os.mkfifo(fifo)
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(result=build(str(fifo))), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "reading a FIFO blocked"
    rc, err, _ = box["result"]
    assert rc == 2 and "is not a regular file" in one_line(err)


def test_a_modelfile_over_the_size_limit_is_refused(build, ctx):
    modelfile = ctx / "Modelfile"
    modelfile.write_text("NAME big\nMODEL model.safetensors\n" + "# padding\n" * 200_000)
    rc, err, _ = build(str(modelfile))
    assert rc == 2 and "larger than 1048576 bytes" in one_line(err) and "MODELBUILD_MAX_MODELFILE_BYTES" in err


def test_the_size_limit_can_be_raised(build, ctx, monkeypatch):
    modelfile = ctx / "Modelfile"
    modelfile.write_text("NAME big\nMODEL model.safetensors\n" + "# padding\n" * 200_000)
    monkeypatch.setenv("MODELBUILD_MAX_MODELFILE_BYTES", str(4 << 20))
    rc, err, _ = build(str(modelfile))
    assert rc == 0, err


def test_a_ten_megabyte_line_is_refused_quickly(build, ctx, monkeypatch):
    monkeypatch.setenv("MODELBUILD_MAX_MODELFILE_BYTES", str(16 << 20))
    modelfile = ctx / "Modelfile"
    modelfile.write_text("NAME long\nMODEL model.safetensors\nDESCRIPTION " + "a" * (10 << 20) + "\n")
    rc, err, elapsed = build(str(modelfile))
    assert rc == 2 and "Modelfile:3:" in err and "longer than 65536 characters" in one_line(err)
    assert elapsed < 5, elapsed


def test_a_long_line_passes_when_the_limit_is_raised(build, ctx, monkeypatch):
    monkeypatch.setenv("MODELBUILD_MAX_LINE_LENGTH", "200000")
    modelfile = ctx / "Modelfile"
    modelfile.write_text("NAME long\nMODEL model.safetensors\nDESCRIPTION " + "a" * 100_000 + "\n")
    rc, err, _ = build(str(modelfile))
    assert rc == 0, err


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5"])
def test_a_limit_that_is_not_a_positive_integer_is_a_usage_error(build, ctx, monkeypatch, value):
    monkeypatch.setenv("MODELBUILD_MAX_LINE_LENGTH", value)
    (ctx / "Modelfile").write_text("NAME x\nMODEL model.safetensors\n")
    rc, err, _ = build(str(ctx / "Modelfile"))
    assert rc == 2 and "MODELBUILD_MAX_LINE_LENGTH must be a positive integer" in one_line(err)


def test_standard_input_is_bounded_too(tmp_path, capsys, monkeypatch, ctx):
    import io
    import sys

    monkeypatch.setenv("MODELBUILD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELBUILD_MAX_MODELFILE_BYTES", "1000")
    data = b"NAME x\nMODEL model.safetensors\n" + b"#" * 5000 + b"\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    monkeypatch.chdir(ctx)
    rc = cli.main(["build", "-f", "-", "--progress", "quiet"])
    assert rc == 2 and "<stdin> is larger than 1000 bytes" in one_line(capsys.readouterr().err)
