"""Limits a user can raise from the environment: one reader, one error, one hint.

Every bound modelbuild puts on hostile input (Modelfile size, registry timeouts, how far a
compressed layer may expand) has a default and a ``MODELBUILD_*`` variable that replaces it.
A value that is not a positive number is a usage error, never a silent "no limit".
"""

from __future__ import annotations

import os
from typing import Mapping

from modelbuild.errors import UsageError


def env_number(name: str, default: float, environ: Mapping[str, str] | None = None, *,
               integer: bool = True) -> float:
    """The value of variable *name*, or *default* when it is unset or empty."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = 0
    if not value > 0:
        kind = "integer" if integer else "number"
        raise UsageError(f"{name} must be a positive {kind}, got {raw!r}")
    return value


def env_int(name: str, default: int, environ: Mapping[str, str] | None = None) -> int:
    """A positive integer limit from the environment (bytes, characters, counts)."""
    return int(env_number(name, default, environ))


def raise_hint(variable: str) -> str:
    """The hint every limit error ends with."""
    return f"set {variable} to raise the limit"


__all__ = ["env_int", "env_number", "raise_hint"]
