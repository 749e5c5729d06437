"""Typed errors, each knowing how it should reach the user.

The CLI tells three kinds of failure apart (meson's habit): a *user error* (bad Modelfile,
bad flag, missing file) is one clean line and exit code 2; a *build failure* (a step could
not do its work: disk full, a file vanished mid-build) is one line and exit code 1; anything
else is a bug in modelbuild or in a plugin and is reported as such, with exit code 70.

Errors raised deep inside the frontend may not know where they are; the interpreter fills
in the location of the instruction it was evaluating (see :meth:`ModelfileError.located`),
so every Modelfile error the user sees reads ``Modelfile:12:1: message``.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_BUILD_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE


@dataclass(frozen=True, slots=True)
class Span:
    """Where something is in a source file: 1-based line and column."""

    file: str
    line: int
    column: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class ModelbuildError(Exception):
    """Base of every error modelbuild expects; anything else is a bug."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        """The single line shown to the user."""
        text = self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class UsageError(ModelbuildError):
    """A bad command line: unknown flag value, malformed reference, missing file."""


class ModelfileError(ModelbuildError):
    """A problem in a Modelfile, located at a span when one is known."""

    def __init__(self, message: str, span: Span | None = None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.span = span

    @classmethod
    def at(cls, span: Span, message: str, *, hint: str | None = None) -> "ModelfileError":
        return cls(message, span, hint=hint)

    def located(self, span: Span) -> "ModelfileError":
        """Fill in *span* if this error does not know its location yet."""
        if self.span is None:
            self.span = span
        return self

    def render(self) -> str:
        text = super().render()
        return f"{self.span}: {text}" if self.span else text


class BuildError(ModelbuildError):
    """A build step failed for a reason outside the Modelfile (I/O, disk, vanished input)."""

    exit_code = EXIT_BUILD_FAILED


class VerificationError(ModelbuildError):
    """A signature or attestation that is missing or does not verify (``modelbuild verify``,
    ``pull --verify-key``): exit code 1, like a failed step, so scripts tell it from a usage
    error."""

    exit_code = EXIT_BUILD_FAILED


class StoreError(ModelbuildError):
    """The local store is missing something asked for, or is damaged."""

    exit_code = EXIT_BUILD_FAILED


class NotFoundError(StoreError):
    """A reference or digest that the store does not have."""

    exit_code = EXIT_USER_ERROR


class PluginError(ModelbuildError):
    """A plugin misbehaved: two plugins claim one name, or a hook returned nonsense."""

    exit_code = EXIT_INTERNAL_ERROR
