"""Frontends turn a build file into a :class:`~modelbuild.description.BuildDescription`.

The frontend is chosen by a ``# syntax=NAME`` first line (BuildKit's convention), else by
the build file's name (a frontend's optional ``filenames`` patterns: the ``kitfile`` frontend
claims ``Kitfile``), else the built-in ``modelfile`` frontend. Frontends are plugins: see
``modelbuild_register_frontends``.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

from modelbuild.errors import ModelfileError, UsageError
from modelbuild.frontend.limits import Limits, raise_hint
from modelbuild.frontend.syntax import decode_source, syntax_directive

if TYPE_CHECKING:
    from modelbuild.api import Frontend
    from modelbuild.description import BuildDescription
    from modelbuild.plugins import PluginHost, Registry

DEFAULT_FRONTEND = "modelfile"


def read_build_file(path: str, limits: Limits | None = None) -> tuple[str, str]:
    """Read a Modelfile (``-`` is standard input); return its text and its display name.

    Never more than ``limits.modelfile_bytes + 1`` bytes are read, and only from a regular
    file: ``-f /dev/zero`` would otherwise fill memory and ``-f FIFO`` block for ever.
    """
    import sys

    limits = limits or Limits.from_env()
    if path == "-":
        return decode_source(_read_bounded(sys.stdin.buffer.read, "<stdin>", limits), "<stdin>"), "<stdin>"
    fd = _open_regular(path)
    try:
        data = _read_bounded(lambda n: os.read(fd, n), path, limits)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return decode_source(data, path), path


def _open_regular(path: str) -> int:
    """Open *path* without blocking and return its descriptor, if it is a regular file.

    ``O_NONBLOCK`` makes opening a FIFO return at once instead of waiting for a writer; the
    type is checked on the opened descriptor (``fstat``), so a path swapped between a check
    and the open cannot slip a device in.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UsageError(f"Modelfile not found: {path}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISREG(mode):
        return fd
    os.close(fd)
    if stat.S_ISDIR(mode):
        raise UsageError(f"{path} is a directory, not a Modelfile", hint=f"try -f {Path(path) / 'Modelfile'}")
    raise UsageError(f"{path} is not a regular file", hint="a Modelfile is a text file; use -f - to read a pipe")


def _read_bounded(read: Callable[[int], bytes], shown: str, limits: Limits) -> bytes:
    """Read until end of file, but stop at one byte past the limit, so excess is never buffered."""
    limit = limits.modelfile_bytes
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = read(min(1 << 16, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    raise UsageError(
        f"{shown} is larger than {limit} bytes, the Modelfile size limit", hint=raise_hint("modelfile_bytes")
    )


def _by_filename(frontends: "Registry[Frontend]", path: str) -> "Frontend | None":
    """The frontend whose ``filenames`` patterns (fnmatch, case-sensitive, on the file's own
    name) match *path*, or None. Read with ``getattr``: a frontend need not declare any. Two
    frontends claiming one name is ambiguous, and the user's to settle with ``# syntax=``.
    The patterns are read with ``peek``: only a frontend that claims the file is imported."""
    if path == "-":
        return None
    from fnmatch import fnmatchcase

    base = os.path.basename(path)
    claims = []
    for name in frontends.names():
        patterns = frontends.peek(name, "filenames", ())
        if isinstance(patterns, str):
            patterns = (patterns,)
        if any(isinstance(p, str) and fnmatchcase(base, p) for p in patterns or ()):
            claims.append(frontends.get(name))
    if len(claims) > 1:
        names = " and ".join(f.name for f in claims)
        raise UsageError(f"{path}: the {names} frontends both claim files named {base!r}",
                         hint=f"name one on the file's first line: # syntax={claims[0].name}")
    return claims[0] if claims else None


def load_description(
    path: str,
    *,
    host: "PluginHost",
    build_args: Mapping[str, str] | None = None,
    context: Path | None = None,
) -> "BuildDescription":
    """Parse and interpret a build file with the frontend its first line, else its name, selects."""
    text, display = read_build_file(path, Limits.from_env())
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
        frontend = _by_filename(host.frontends, path) or host.frontends.get(name)
    return frontend.load(
        text,
        filename=display,
        base_dir=base_dir,
        default_context=(context or base_dir).resolve(),
        build_args=build_args or {},
        sources=host.sources,
    )
