"""Helpers shared by the tests (imported as ``from support import …``; fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "Modelfile.examples"


@dataclass
class Run:
    rc: int
    out: str
    err: str

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
