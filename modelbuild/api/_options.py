"""Declared options: what a transform plugin accepts after its directive (meson's habit of
checking arguments from declarations, not by hand)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

from modelbuild.errors import UsageError

# what ``OptionSpec.type`` may be; ``list`` is a list of strings
OPTION_TYPES: tuple[type, ...] = (str, int, float, bool, list)
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One ``--name=value`` option a quantizer, converter or shard strategy accepts.

    A plugin declares them as a class attribute, ``options: tuple[OptionSpec, ...]``. The
    frontend checks a ``QUANTIZE``/``CONVERT`` line against them (:mod:`modelbuild.frontend.options`),
    reporting ``Modelfile:L:C`` at the option before any work, converts each value to its
    type, fills in defaults, and the plugin receives them typed, checking none by hand. A
    plugin with no ``options`` attribute gets its options unchecked (plugins written before
    1.0); ``options = ()`` means it takes none. A ``str`` option's choices match in any case
    and arrive spelled as declared.

    ``type`` is ``str``, ``int``, ``float``, ``bool`` (written ``true`` or ``false``) or
    ``list``: a list of strings, where the option may be repeated and each value is split at
    commas (``--keep=a,b --keep=c`` is ``["a", "b", "c"]``). ``choices`` limits a ``str``
    option, or each item of a ``list`` one, to those values. ``default`` is what the plugin
    uses when the option is not given; None means the plugin decides (say, from the quant
    type). ``help`` is one line for people: what the option does, for error hints.
    """

    name: str
    type: type
    _: KW_ONLY
    help: str
    choices: tuple[str, ...] = ()
    default: Any = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"option name {self.name!r}: write lower-case letters, digits, '-' or '_'")
        if self.type not in OPTION_TYPES:
            raise TypeError(f"option {self.name}: type must be str, int, float, bool or list, not {self.type!r}")
        if self.choices and self.type not in (str, list):
            raise TypeError(f"option {self.name}: only str and list options take choices")
        if self.choices and isinstance(self.default, str) and self.default not in self.choices:
            raise ValueError(f"option {self.name}: default {self.default!r} is not one of its choices")


def engine_params(engine: str, options: Sequence[OptionSpec], params: Mapping[str, Any]) -> dict[str, Any]:
    """An engine's ``EngineModel.params`` (strings, from ``RUNTIME`` lines and ``--param``)
    typed by the engine's declarations: a :class:`~modelbuild.api.UsageError` names an
    unknown key (with the known ones) or a value not of its type (``bool``: true/false,
    1/0, yes/no, on/off; ``str`` choices match in any case), before any command is built.
    An engine declaring ``OPTIONS`` derives ``parameters`` from them
    (``{o.name: o.help for o in OPTIONS}``) and calls this in ``launch`` and ``container``."""
    specs = {spec.name: spec for spec in options}
    out: dict[str, Any] = {}
    for key, raw in params.items():
        spec = specs.get(key)
        if spec is None:
            raise UsageError(f"engine {engine} has no parameter {key!r}",
                             hint=f"its parameters: {', '.join(sorted(specs))}")
        out[key] = _typed(engine, spec, str(raw).strip())
    return out


def _typed(engine: str, spec: OptionSpec, text: str) -> Any:
    """One value converted to its declared type, or a one-line UsageError."""
    where = f"engine {engine} parameter {spec.name}={text!r}"
    if spec.type is bool:
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        raise UsageError(f"{where}: not a boolean", hint="write true or false")
    if spec.type in (int, float):
        try:
            value = spec.type(text)
        except ValueError:
            raise UsageError(f"{where}: not {'an integer' if spec.type is int else 'a number'}",
                             hint=spec.help) from None
        return value
    if spec.choices:
        found = {c.lower(): c for c in spec.choices}.get(text.lower())
        if found is None:
            raise UsageError(f"{where}: not one of {', '.join(spec.choices)}", hint=spec.help)
        return found
    if not text:
        raise UsageError(f"{where}: empty", hint=spec.help)
    return text
