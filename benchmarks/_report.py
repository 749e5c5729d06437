"""What the benchmark scripts share: a report that prints lines and collects checks, and a
build run as a user runs it, with its result and progress events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class Report:
    """Lines go to stdout, or to stderr when the script prints JSON on stdout."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = sys.stderr if as_json else sys.stdout
        self.checks: list[dict[str, Any]] = []

    def line(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        if not ok:
            self.line(f"  CHECK FAILED: {name}: {detail}")
        return ok


def gb(n: float) -> float:
    return n / 1e9


def json_build(modelfile: Path, home: Path, *args: str, env: dict[str, str] | None = None
               ) -> tuple[float, dict[str, Any], list[dict[str, Any]]]:
    """``python -m modelbuild build -f MODELFILE --json --progress json ARGS`` with
    ``MODELBUILD_HOME=home`` (and *env*): the wall time from spawn to exit, the result, and
    the progress events. A failed build prints the end of its standard error and exits 2."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "modelbuild", "build", "-f", str(modelfile), "--json",
                           "--progress", "json", *args], env={**os.environ, **(env or {}), "MODELBUILD_HOME": str(home)},
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(2)
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    return wall, json.loads(proc.stdout), events


def step_done(events: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """The "done" event of the first step whose label starts with *label*."""
    return next(e for e in events if e.get("kind") == "done" and str(e.get("label", "")).startswith(label))
