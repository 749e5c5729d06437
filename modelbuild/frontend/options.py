"""Transform options checked against what the plugin declares (meson's habit: arguments are
validated from declarations, not by hand).

A quantizer, converter or shard strategy declares ``options``: a tuple of
:class:`modelbuild.api.OptionSpec` (name, type, choices, default). Every ``--name=value``
of a ``QUANTIZE``/``CONVERT`` line is checked here, at the option's column, before anything
runs, and converted to its declared type; declared defaults are filled in, so the plugin
receives complete, typed options and checks none itself. A plugin that declares nothing
(written before 1.0) receives its options as written.
"""

from __future__ import annotations

from typing import Any, Sequence

from modelbuild.description import TransformSpec
from modelbuild.errors import ModelfileError, Span

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def typed_options(t: TransformSpec, plugin: Any) -> tuple[tuple[str, Any], ...]:
    """*t*'s options, checked against *plugin*'s declarations, typed, defaults filled, sorted."""
    declared: Sequence[Any] | None = getattr(plugin, "options", None)
    if declared is None:
        return tuple(t.options)
    specs = {spec.name: spec for spec in declared}
    spans = dict(t.option_spans)
    out: dict[str, Any] = {}
    for name, value in t.options:
        span = spans.get(name, t.origin)
        spec = specs.get(name)
        if spec is None:
            raise ModelfileError(f"{plugin.name} has no option --{name}", span, hint=_known(name, declared))
        out[name] = _convert(spec, value, span, plugin.name)
    for spec in declared:
        if spec.name not in out and spec.default is not None:
            out[spec.name] = list(spec.default) if spec.type is list else spec.default
    return tuple(sorted(out.items()))


def _known(name: str, declared: Sequence[Any]) -> str:
    names = [spec.name for spec in declared]
    import difflib

    close = difflib.get_close_matches(name, names, n=1)
    if close:
        return f"did you mean --{close[0]}?"
    return "its options: " + (", ".join(_usage(spec) for spec in declared) if declared else "none")


def _usage(spec: Any) -> str:
    if spec.choices:
        return f"--{spec.name}={'|'.join(spec.choices)}"
    return f"--{spec.name}=" + {bool: "true|false", int: "N", float: "X", list: "A,B"}.get(spec.type, "TEXT")


def _convert(spec: Any, value: Any, span: Span | None, plugin: str) -> Any:
    """*value* as written (a string; a list for a repeated list option) as the declared type."""
    def bad(why: str) -> ModelfileError:
        return ModelfileError(f"{plugin}: --{spec.name}={_shown(value)} {why}", span, hint=_usage(spec))

    if spec.type is list:
        items = value if isinstance(value, list) else [value]
        parts = [p for item in items for p in str(item).split(",") if p]
        for p in parts:
            if spec.choices and p not in spec.choices:
                raise bad(f"names {p!r}, not one of its choices")
        return parts
    if isinstance(value, list):
        raise ModelfileError(f"option --{spec.name} is given twice", span)
    text = str(value)
    if spec.type is bool:
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        raise bad("is not a boolean")
    if spec.type is int:
        try:
            return int(text)
        except ValueError:
            raise bad("is not an integer") from None
    if spec.type is float:
        try:
            return float(text)
        except ValueError:
            raise bad("is not a number") from None
    if spec.choices:  # written in any case, passed on as declared (--outtype=F16 is f16)
        match = next((c for c in spec.choices if c.lower() == text.lower()), None)
        if match is None:
            raise bad("is not one of its choices")
        return match
    return text


def _shown(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."
