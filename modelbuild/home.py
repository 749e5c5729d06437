"""Where modelbuild keeps its store and cache: ``$MODELBUILD_HOME``, else the XDG data dir."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir(override: str | None = None) -> Path:
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get("MODELBUILD_HOME")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(xdg) / "modelbuild"


def store_dir(home: Path) -> Path:
    return home / "store"


def cache_dir(home: Path) -> Path:
    return home / "cache"
