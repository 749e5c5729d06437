"""Size limits that keep a hostile Modelfile from hanging modelbuild or exhausting memory.

A Modelfile is a few kilobytes of text; anything near these limits is an attack or a mistake
(``-f /dev/zero``, a 10 MB line, an ``ARG`` chain that doubles at every line). Each limit is
checked while the input is consumed, so reaching it costs time linear in the limit, never in
what lies beyond it, and each has a default a user can raise from the environment:

=================================  ==========  ===============================================
variable                           default     what it bounds
=================================  ==========  ===============================================
``MODELBUILD_MAX_MODELFILE_BYTES`` 1048576     bytes read from the Modelfile (1 MiB)
``MODELBUILD_MAX_LINE_LENGTH``     65536       characters in one logical line, after ``\\``
                                               continuations are joined (64 Ki)
``MODELBUILD_MAX_EXPANSION_LENGTH`` 1048576    characters one argument may expand to (1 Mi)
``MODELBUILD_MAX_EXPANSION_TOTAL`` 16777216    characters all expanded arguments of one
                                               Modelfile may add up to (16 Mi)
=================================  ==========  ===============================================

The values are read once per build, at the frontend's entry point; the lexer and the
interpreter are handed a :class:`Limits` and never look at the environment themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Mapping

from modelbuild import limits as _env


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds one build's frontend works within; see the module docstring."""

    modelfile_bytes: int = 1 << 20
    line_length: int = 1 << 16
    expansion_length: int = 1 << 20
    expansion_total: int = 1 << 24

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Limits":
        """The defaults, each replaced by its ``MODELBUILD_MAX_*`` variable when that is set."""
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            values[field.name] = _env.env_int(ENV_VARS[field.name], field.default, environ)  # type: ignore[arg-type]
        return cls(**values)


# field → the environment variable that raises it; the names say the unit (bytes or characters)
ENV_VARS = {
    "modelfile_bytes": "MODELBUILD_MAX_MODELFILE_BYTES",
    "line_length": "MODELBUILD_MAX_LINE_LENGTH",
    "expansion_length": "MODELBUILD_MAX_EXPANSION_LENGTH",
    "expansion_total": "MODELBUILD_MAX_EXPANSION_TOTAL",
}


def raise_hint(field: str) -> str:
    """The hint every limit error ends with: which variable raises the limit."""
    return _env.raise_hint(ENV_VARS[field])


__all__ = ["Limits", "ENV_VARS"]
