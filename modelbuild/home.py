"""Where modelbuild keeps its store and cache: ``--home``, else ``$MODELBUILD_HOME``, else the
XDG data dir.

A home that names a file (or lies under one) is a usage error (exit 2), said here once for
every command, before anything tries to create a store inside a file.
"""

from __future__ import annotations

import os
from pathlib import Path

from modelbuild.errors import UsageError


def home_dir(override: str | None = None) -> Path:
    if override:
        return _checked(Path(override).expanduser().resolve(), "--home")
    env = os.environ.get("MODELBUILD_HOME")
    if env:
        return _checked(Path(env).expanduser().resolve(), "MODELBUILD_HOME")
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return _checked(Path(xdg) / "modelbuild", "XDG_DATA_HOME")


def _checked(home: Path, source: str) -> Path:
    """*home*, unless it or the nearest part of it that exists is not a directory."""
    from modelbuild.oci.verify import shown

    for part in (home, *home.parents):
        try:
            if part.exists():
                if not part.is_dir():
                    what = ("is not a directory" if part == home
                            else f"lies under {shown(part)}, which is not a directory")
                    raise UsageError(f"{shown(home)}: {source} {what}", hint="point it at a directory")
                return home
        except OSError:  # unreadable: leave the error to whatever opens it, with its path
            return home
    return home


def store_dir(home: Path) -> Path:
    return home / "store"


def cache_dir(home: Path) -> Path:
    return home / "cache"
