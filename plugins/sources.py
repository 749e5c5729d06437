"""The built-in ``local`` source: ``FROM ./dir``, ``FROM /abs/dir``, ``FROM file:///abs/dir``."""

from __future__ import annotations

import os
from pathlib import Path

from modelbuild.api import ModelfileError, hookimpl


class LocalSource:
    name = "local"
    schemes = ("", "file")
    summary = "a directory on this machine"

    def resolve(self, reference: str, *, base_dir: Path) -> Path:
        text = reference.removeprefix("file://")
        if not text:
            raise ModelfileError("FROM needs a directory")
        path = Path(os.path.expanduser(text))
        if not path.is_absolute():
            path = base_dir / path
        path = path.resolve()
        if not path.exists():
            raise ModelfileError(f"FROM {reference}: no such directory ({path})")
        if not path.is_dir():
            raise ModelfileError(f"FROM {reference}: not a directory ({path})")
        if not os.access(path, os.R_OK | os.X_OK):
            raise ModelfileError(f"FROM {reference}: directory is not readable")
        return path


@hookimpl
def modelbuild_register_sources(registry):  # noqa: ANN001, ANN201 - pluggy hook
    registry.add(LocalSource())
