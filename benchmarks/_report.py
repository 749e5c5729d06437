"""What the benchmark scripts share: a report that prints lines and collects checks."""

from __future__ import annotations

import sys
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
