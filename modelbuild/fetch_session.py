"""The build's fetch session: where a remote ``FROM`` fetches into, and who hears of it.

Split from :mod:`modelbuild.fetch` so that every build can set it up (around its frontend)
without importing the fetch machinery, which only a remote ``FROM`` needs.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OFFLINE_VAR = "MODELBUILD_OFFLINE"


@dataclass
class FetchSession:
    """Where fetched files go and who hears about it: set by the build around its frontend."""

    home: Path
    emitter: Any = None  # a modelbuild.progress.Emitter
    network: bool = field(default_factory=lambda: os.environ.get(OFFLINE_VAR, "") not in ("1", "true", "yes"))


_SESSION: contextvars.ContextVar[FetchSession | None] = contextvars.ContextVar("modelbuild_fetch", default=None)


@contextlib.contextmanager
def fetching(session: FetchSession) -> Iterator[FetchSession]:
    """Make *session* the one remote sources fetch into while the frontend runs."""
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        _SESSION.reset(token)


def current_session() -> FetchSession:
    session = _SESSION.get()
    if session is None:
        from modelbuild.home import home_dir

        session = FetchSession(home_dir())
    return session
