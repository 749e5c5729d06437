"""What goes wrong with a remote cache, and how it reads in one line.

A cache is never worth failing a build for (unless ``ignore-error=false``): its troubles
become warnings and step log lines, so every exception, ours or not, must read as one line
(:func:`message`). :class:`StaleImport` is not a user error: it tells the solver to solve
again without an entry it has already used.
"""

from __future__ import annotations

from modelbuild.errors import EXIT_BUILD_FAILED, ModelbuildError


class CacheError(ModelbuildError):
    """A cache could not be read or written."""

    exit_code = EXIT_BUILD_FAILED


class StaleImport(Exception):
    """An imported result turned out unusable after the solver had used it (a blob the
    cache holds is corrupt): the solve must start again without that entry."""


def message(exc: BaseException) -> str:
    """Any exception as one line: ours by its message, an ``OSError`` by its reason and file."""
    if isinstance(exc, ModelbuildError):
        return exc.message if hasattr(exc, "message") else str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def human(n: int) -> str:
    from modelbuild.units import human_size

    return human_size(n, digits=2)
