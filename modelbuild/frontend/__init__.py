"""Frontends turn a build file into a :class:`~modelbuild.description.BuildDescription`.

The frontend is chosen by a ``# syntax=NAME`` first line (BuildKit's convention), else the
built-in ``modelfile`` frontend. Frontends are plugins: see ``modelbuild_register_frontends``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from modelbuild.errors import ModelfileError, UsageError
from modelbuild.frontend.syntax import decode_source, syntax_directive

if TYPE_CHECKING:
    from modelbuild.description import BuildDescription
    from modelbuild.plugins import PluginHost

DEFAULT_FRONTEND = "modelfile"


def read_build_file(path: str) -> tuple[str, str]:
    """Read a Modelfile (``-`` is standard input); return its text and its display name."""
    import sys

    if path == "-":
        return decode_source(sys.stdin.buffer.read(), "<stdin>"), "<stdin>"
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"Modelfile not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a Modelfile", hint=f"try -f {Path(path) / 'Modelfile'}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return decode_source(data, path), path


def load_description(
    path: str,
    *,
    host: "PluginHost",
    build_args: Mapping[str, str] | None = None,
    context: Path | None = None,
) -> "BuildDescription":
    """Parse and interpret a build file with the frontend its first line selects."""
    text, display = read_build_file(path)
    # the directory the Modelfile is in, as named: a symlinked Modelfile keeps its link's place
    base_dir = Path.cwd() if path == "-" else Path(os.path.abspath(path)).parent
    chosen = syntax_directive(text)
    name = DEFAULT_FRONTEND
    if chosen is not None:
        name, span = chosen
        span = dataclasses.replace(span, file=display)
        try:
            # "modelfile", "modelfile:1" or "registry:5000/org/modelfile:1" all name "modelfile"
            frontend = host.frontends.get(name.rsplit("/", 1)[-1].split(":", 1)[0])
        except UsageError as exc:
            raise ModelfileError.at(span, f"unknown syntax {name!r}", hint=exc.hint) from None
    else:
        frontend = host.frontends.get(name)
    return frontend.load(
        text,
        filename=display,
        base_dir=base_dir,
        default_context=(context or base_dir).resolve(),
        build_args=build_args or {},
        sources=host.sources,
    )
