"""Helpers shared by the tests (imported as ``from support import …``; fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "Modelfile.examples"


@dataclass
class Run:
    """What one ``modelbuild`` command did (the ``mb`` and ``cli`` fixtures)."""

    rc: int
    out: str
    err: str
    seconds: float = 0.0  # how long it ran


    def __iter__(self):
        """``rc, out, err = run``."""
        return iter((self.rc, self.out, self.err))

    def json(self):
        return json.loads(self.out)

    def events(self) -> list[dict]:
        """Progress events from a ``--progress json`` run."""
        return [json.loads(line) for line in self.err.splitlines() if line.startswith("{")]


def age(path: Path, seconds: float = 10.0) -> None:
    """Set a file's mtime in the past, as files a user built from would be (outside the
    stat cache's racy window, see modelbuild.ops.RACY_WINDOW_NS)."""
    st = path.stat()
    t = st.st_mtime - seconds
    os.utime(path, (t, t))


def write_model_dir(root: Path, files: dict[str, bytes | str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        age(p)
    return root


def safetensors_blob(payload: bytes, name: str = "weight") -> bytes:
    """A valid safetensors file holding *payload* as one U8 tensor: real headers around
    arbitrary bytes, so tests can make big or random weight files cheaply."""
    header = json.dumps({name: {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + payload


def error_line(run: Run, code: int) -> str:
    """The one error of a failed command: exit *code*, no traceback, no bug report, no
    terminal escape. A build's quiet progress also shows each failed step's error as one
    ``#N ERROR: …`` line (two steps can fail at once, as when the disk fills)."""
    import re

    assert run.rc == code, (run.rc, run.err)
    assert "internal error" not in run.err and "Traceback" not in run.err, run.err
    assert "\x1b" not in run.err
    lines = [line for line in run.err.splitlines() if line.strip()]
    final = [line for line in lines if line.startswith("modelbuild: error: ")]
    assert len(final) == 1, run.err
    assert all(re.fullmatch(r"#\d+ ERROR: .+", line) for line in lines if line != final[0]), run.err
    return final[0]


# -- tools a test needs from the system ----------------------------------------------------
# One rule for every test that needs a program (skopeo, docker-registry, openssl, setpriv…)
# or a Python package the suite does not import itself (modelpack-client): outside CI a
# missing one skips the test with its reason and the command that installs it; under CI
# (CI=true, as CI services and .ci/run set it) it fails the test, so a missing install step
# cannot hide. scripts/setup-system installs the programs.

def in_ci() -> bool:
    """Whether this is a CI run: ``CI`` set to anything but empty, ``0`` or ``false``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str):
    """Stop a test that cannot run here: skip with *reason* outside CI, fail under CI."""
    import pytest

    if in_ci():
        pytest.fail(f"{reason} [CI=true: a missing tool fails the run]", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, install_hint: str) -> str:
    """The path of the program *name*, or :func:`missing` with *install_hint* (the command
    that installs it, e.g. ``apt-get install -y skopeo``; ``scripts/setup-system`` runs it)."""
    import shutil

    path = shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.access(p, os.X_OK)),
                                      None)
    if path is None:
        missing(f"{name} is not installed ({install_hint})")
    return path


def require_module(name: str, install_hint: str):
    """The Python module *name*, imported, or :func:`missing` with *install_hint*."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"{name} is not installed ({install_hint})")


# -- processes, from /proc ------------------------------------------------------------------------

def _parents() -> dict[int, int]:
    """Every live (not zombie) process's parent."""
    from pathlib import Path

    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    return parents


def children(pid: int) -> list[int]:
    """The live processes whose parent is *pid*."""
    return [p for p, parent in _parents().items() if parent == pid]


def descendants(pid: int) -> list[int]:
    """Every live process under *pid*, children first."""
    parents = _parents()
    found, frontier = [], {pid}
    while frontier:
        kids = [p for p, parent in parents.items() if parent in frontier]
        found += kids
        frontier = set(kids)
    return found


def cmdline(pid: int) -> bytes:
    """*pid*'s command line (NUL-separated), or b"" when it is gone."""
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
