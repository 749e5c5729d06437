"""Malformed Modelfiles give one clear located line on stderr and exit code 2.

Meson's habit: each failure case is a saved example, ``tests/errors/<case>/Modelfile``, with
the exact error text the user sees next to it in ``expected.txt``, so a change of wording
shows up in review. In ``expected.txt``:

* ``{modelfile}`` stands for the ``-f`` argument as given (the Modelfile's path here);
* ``{context}`` stands for the resolved directory the case runs in (the build context).

A case that needs files around its Modelfile lists them in an optional ``setup.json``::

    {"files": {"rel/path": "content"},     # regular files
     "symlinks": {"rel/path": "target"},   # symlinks (may dangle)
     "fifos": ["rel/path"]}                # named pipes: must be refused, never read

They are made at test time in a temporary copy, since symlinks that dangle and FIFOs do not
belong in a repository.

Run one case: ``pytest tests/test_modelfile_errors.py -k 12-fifo``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from support import write_model_dir

ERRORS = Path(__file__).resolve().parent / "errors"
CASES = sorted(p for p in ERRORS.iterdir() if p.is_dir() and (p / "Modelfile").exists())
LOCATED = re.compile(r"^.+:\d+:\d+: .+")
MIN_CASES = 24


def _setup(case: Path, root: Path) -> Path:
    """Copy the case into *root* and make the files its ``setup.json`` asks for."""
    root.mkdir(parents=True)
    modelfile = root / "Modelfile"
    shutil.copyfile(case / "Modelfile", modelfile)
    spec_path = case / "setup.json"
    spec = json.loads(spec_path.read_text()) if spec_path.exists() else {}
    unknown = set(spec) - {"files", "symlinks", "fifos"}
    assert not unknown, f"{spec_path}: unknown keys {sorted(unknown)}"
    write_model_dir(root, spec.get("files", {}))
    for rel, target in spec.get("symlinks", {}).items():
        link = root / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    for rel in spec.get("fifos", []):
        fifo = root / rel
        fifo.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(fifo)
    return modelfile


def test_enough_cases():
    assert len(CASES) >= MIN_CASES, f"only {len(CASES)} error cases in {ERRORS}"
    for case in CASES:
        assert (case / "expected.txt").is_file(), f"{case.name}: no expected.txt"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_modelfile_error(case: Path, mb, tmp_path: Path):
    root = tmp_path / "ctx"
    modelfile = _setup(case, root)
    # A FIFO that got opened would block for ever: a short timeout turns a hang into a failure.
    r = mb("build", "-f", str(modelfile), "--progress", "plain", cwd=root, timeout=60)
    expected = (
        (case / "expected.txt").read_text(encoding="utf-8").strip()
        .replace("{modelfile}", str(modelfile))
        .replace("{context}", str(root.resolve()))
    )
    err = r.err.strip()
    assert "Traceback" not in r.err, r.err
    assert r.rc == 2, f"exit code {r.rc}, stderr:\n{r.err}"
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got:\n{r.err}"
    assert LOCATED.match(err), f"not PATH:LINE:COL: message: {err!r}"
    assert err == expected
    assert r.out == "", r.out


@pytest.mark.parametrize("given", ["./ctx/Modelfile", "ctx//Modelfile"])
def test_path_is_shown_as_given(given: str, mb, tmp_path: Path):
    """The location names the Modelfile as the user typed it, not a resolved path."""
    case = ERRORS / "01-unknown-directive"
    _setup(case, tmp_path / "ctx")
    r = mb("build", "-f", given, "--progress", "plain", cwd=tmp_path, timeout=60)
    expected = (case / "expected.txt").read_text(encoding="utf-8").strip().replace("{modelfile}", given)
    assert (r.rc, r.err.strip()) == (2, expected)


def test_stdin_is_shown_as_stdin(mb, tmp_path: Path):
    case = ERRORS / "02-duplicate-name"
    root = tmp_path / "ctx"
    _setup(case, root)
    r = mb("build", "-f", "-", "--progress", "plain", cwd=root, input=(case / "Modelfile").read_bytes(), timeout=60)
    expected = (case / "expected.txt").read_text(encoding="utf-8").strip().replace("{modelfile}", "<stdin>")
    assert (r.rc, r.err.strip()) == (2, expected)
