"""Limits a user can raise from the environment: one reader, one error, one hint.

Every bound modelbuild puts on hostile input (Modelfile size, registry timeouts, how far a
compressed layer may expand) has a default and a ``MODELBUILD_*`` variable that replaces it.
A value that is not a positive number (non-negative, for the few limits whose 0 means "no
check" or "no retry") is a usage error, never a silent "no limit".
"""

from __future__ import annotations

import math
import os
from typing import Mapping

from modelbuild.errors import UsageError


def env_number(name: str, default: float, environ: Mapping[str, str] | None = None, *,
               integer: bool = True, zero_ok: bool = False) -> float:
    """The value of variable *name*, or *default* when it is unset or empty. *zero_ok* for a
    limit whose 0 means something (no check, no retry) rather than "nothing allowed"."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = math.nan
    if not (value >= 0 if zero_ok else value > 0) or value == math.inf:  # NaN fails both
        kind = "integer" if integer else "number"
        raise UsageError(f"{name} must be a {'non-negative' if zero_ok else 'positive'} {kind}, got {raw!r}")
    return value


def env_int(name: str, default: int, environ: Mapping[str, str] | None = None, *, zero_ok: bool = False) -> int:
    """An integer limit from the environment (bytes, characters, counts): positive, or also 0
    with *zero_ok*."""
    return int(env_number(name, default, environ, zero_ok=zero_ok))


def raise_hint(variable: str) -> str:
    """The hint every limit error ends with."""
    return f"set {variable} to raise the limit"


__all__ = ["env_int", "env_number", "raise_hint"]
