"""The ``RUNTIME`` directive: how a variant is served, as its runtime description will say.

::

    RUNTIME ENGINE [KEY=VALUE]…      an engine that serves the variant, with its parameters
    RUNTIME context=N                the context length to serve (and to size the memory for)

Several lines name several engines, in preference order. ``context=N`` is not an engine
parameter: it is the variant's, and may also be written on an engine's line. Lines before the
first ``TARGET`` are every stage's; a stage's own lines come after its ``TARGET`` (an engine
named there replaces the shared line for that engine, and its ``context`` the shared one).

Here only the words are checked (names, ``key=value`` form, values, repetitions), each at its
column; which engines exist, which parameters they declare and whether they can serve the
stage is checked against the engine plugins by :mod:`modelbuild.frontend.resolve`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from modelbuild.description import (
    BuildDescription,
    EngineSpec,
    FileKind,
    RuntimeChoice,
    RuntimeSpec,
    StageSpec,
    Transform,
)
from modelbuild.errors import ModelfileError, PluginError, Span
from modelbuild.frontend import syntax
from modelbuild.runtime.description import MAX_CONTEXT, MAX_ENGINES, MAX_KEY, MAX_NAME, MAX_PARAMS, MAX_VALUE

if TYPE_CHECKING:
    from modelbuild.api import EngineModel
    from modelbuild.plugins import PluginHost

CONTEXT_KEY = "context"  # reserved: the variant's context length, on any RUNTIME line
PARAM_KEY = re.compile(rf"[A-Za-z_][A-Za-z0-9_.-]{{0,{MAX_KEY - 1}}}")
USAGE = "RUNTIME ENGINE [KEY=VALUE]…, or RUNTIME context=N"


class RuntimeLines:
    """The ``RUNTIME`` lines of one scope, gathered as the interpreter reads them."""

    def __init__(self) -> None:
        self.engines: list[EngineSpec] = []
        self.named: dict[str, Span] = {}
        self.context: int | None = None
        self.context_span: Span | None = None

    def add(self, span: Span, words: list[tuple[syntax.Word, str]]) -> None:
        """One ``RUNTIME`` line at *span*: its words as written and as expanded."""
        (first, name), rest = words[0], words[1:]
        if "=" in name:  # RUNTIME context=N: no engine
            for word, text in words:
                self._setting(word, text, engine=None)
            return
        if not name or len(name) > MAX_NAME or not name.isprintable():
            raise ModelfileError.at(first.span, f"bad engine name {syntax.shown(name)}",
                                    hint="an engine is named as `modelbuild plugins` lists it, e.g. llama.cpp")
        if name in self.named:
            raise ModelfileError.at(first.span, f"engine {name} is already named at line {self.named[name].line}",
                                    hint="one RUNTIME line per engine in a scope; put all its parameters on it")
        if len(self.engines) >= MAX_ENGINES:
            raise ModelfileError.at(first.span, f"more than {MAX_ENGINES} engines for one variant")
        params: dict[str, str] = {}
        spans: dict[str, Span] = {}
        for word, text in rest:
            setting = self._setting(word, text, engine=name)
            if setting is None:
                continue
            key, value = setting
            if key in params:
                raise ModelfileError.at(word.span, f"parameter {key} of {name} is given twice (first at column "
                                                   f"{spans[key].column})")
            if len(params) >= MAX_PARAMS:
                raise ModelfileError.at(word.span, f"more than {MAX_PARAMS} parameters for engine {name}")
            params[key], spans[key] = value, word.span
        self.named[name] = first.span
        self.engines.append(EngineSpec(name, tuple(params.items()), first.span, tuple(spans.items())))

    def _setting(self, word: syntax.Word, text: str, *, engine: str | None) -> tuple[str, str] | None:
        """A ``key=value`` word: ``context`` is taken here (None returned), anything else is
        an engine parameter, checked for its form."""
        key, eq, value = text.partition("=")
        if not eq or not key:
            raise ModelfileError.at(word.span, f"expected KEY=VALUE, got {syntax.shown(text)}", hint=USAGE)
        if key == CONTEXT_KEY:
            self._set_context(word.span, value)
            return None
        if engine is None:
            raise ModelfileError.at(word.span, f"{syntax.shown(key)} needs an engine: only context=N may be "
                                               "written without one", hint=f"RUNTIME ENGINE {syntax.clip(text)}")
        if not PARAM_KEY.fullmatch(key):
            raise ModelfileError.at(word.span, f"bad parameter name {syntax.shown(key)}",
                                    hint="letters, digits, '_', '.' and '-', not starting with a digit")
        if not value:
            raise ModelfileError.at(word.span, f"parameter {key} of {engine} has no value", hint=f"write {key}=VALUE")
        if len(value) > MAX_VALUE or not value.isprintable():
            raise ModelfileError.at(word.span, f"parameter {key} of {engine} has a bad value {syntax.shown(value)}",
                                    hint=f"at most {MAX_VALUE} printable characters")
        return key, value

    def _set_context(self, span: Span, value: str) -> None:
        if self.context_span is not None:
            raise ModelfileError.at(span, f"context is already set at line {self.context_span.line}",
                                    hint="a scope sets the context length once")
        if not (value.isascii() and value.isdigit() and len(value) <= 12 and 1 <= int(value) <= MAX_CONTEXT):
            raise ModelfileError.at(span, f"context={syntax.shown(value)} is not a context length",
                                    hint=f"a whole number of tokens from 1 to {MAX_CONTEXT}, e.g. context=8192")
        self.context, self.context_span = int(value), span

    def spec(self) -> RuntimeSpec:
        return RuntimeSpec(tuple(self.engines), self.context, self.context_span)


# -- checked against the engine plugins (modelbuild.frontend.resolve) --------------------------
def resolve_runtime(desc: BuildDescription, stage: StageSpec | None, host: PluginHost, *, fmt: str | None,
                    chain: Sequence[Transform], accelerator: str = "") -> RuntimeChoice:
    """The variant's runtime: the shared ``RUNTIME`` lines with the stage's over them, each
    engine installed, each parameter one it declares, and each engine able to serve the
    variant as far as the plan knows it (*fmt*, the format the weights end with, and what
    *chain* casts or quantizes them to; unknown formats are not checked). A problem is a
    ModelfileError at the word at fault."""
    own = stage.runtime if stage is not None else RuntimeSpec()
    replaced = {e.name: e for e in own.engines}
    shared_names = {e.name for e in desc.runtime.engines}
    engines = [replaced.get(e.name, e) for e in desc.runtime.engines]
    engines += [e for e in own.engines if e.name not in shared_names]
    context = own.context if own.context is not None else desc.runtime.context
    target = stage.target if stage is not None else ""
    model = _plan_model(desc, host, fmt, chain, target, context) if engines else None
    for entry in engines:
        shared = stage is not None and entry not in own.engines
        _check_engine(entry, host, model, f"stage {stage.name}" if stage is not None else "this model",
                      "move the line into the TARGET stages it serves" if shared else None)
    return RuntimeChoice(tuple((e.name, e.params) for e in engines) if engines else None, context, target,
                         accelerator)


def _check_engine(entry: EngineSpec, host: PluginHost, model: EngineModel | None, subject: str,
                  hint: str | None) -> None:
    """*entry* names an installed engine, with parameters it declares, that serves *model*."""
    if entry.name not in host.engines:
        names = host.engines.names()
        import difflib

        close = difflib.get_close_matches(entry.name, names, n=1, cutoff=0.5)
        raise ModelfileError(f"unknown engine {entry.name}", entry.origin,
                             hint=f"did you mean {close[0]}?" if close else
                             f"installed engines: {', '.join(names)}" if names else
                             "no engine plugin is installed (`modelbuild plugins` lists them)")
    engine = host.engines.get(entry.name)
    declared = dict(engine.parameters)
    spans = dict(entry.param_spans)
    for key, _ in entry.params:
        if key not in declared:
            import difflib

            close = difflib.get_close_matches(key, list(declared), n=1, cutoff=0.6)
            raise ModelfileError(f"engine {entry.name} has no parameter {key}", spans.get(key, entry.origin),
                                 hint=f"did you mean {close[0]}?" if close else
                                 f"its parameters: {', '.join(sorted(declared)) or 'none'}")
    if model is None:
        return
    why = engine.accepts(dataclasses.replace(model, params=dict(entry.params)))
    if why is not None and not isinstance(why, str):
        raise PluginError(f"engine {entry.name}: accepts() returned {type(why).__name__}, not a str or None")
    if why:
        raise ModelfileError(f"engine {entry.name} cannot serve {subject} ({_what(model)}): {why}", entry.origin,
                             hint=hint)


def _plan_model(desc: BuildDescription, host: PluginHost, fmt: str | None, chain: Sequence[Transform],
                target: str, context: int | None) -> EngineModel | None:
    """The variant as an engine sees it, from what the plan knows: the format the chain ends
    with (the Modelfile's FORMAT if it says), the last quantization or cast (QUANTIZATION,
    PRECISION if it says), the target; after a CONVERT, one weight file of the new format
    (its name is the converter's to choose). None when the format is not known before building."""
    from pathlib import PurePath

    from modelbuild.api import EngineModel
    from modelbuild.frontend.directives import KNOWN_PRECISIONS
    from modelbuild.schema import PRECISION_ALIASES

    config = desc.config
    fmt = _lower(config.get("format")) or fmt
    if not fmt:
        return None
    weights = tuple(f.path for f in desc.files if f.kind == FileKind.MODEL)
    quantization = precision = ""
    for t in chain:
        if t.action == "quantize":
            arg = PRECISION_ALIASES.get(t.arg.lower(), t.arg.lower())
            if arg in KNOWN_PRECISIONS:
                precision = arg
            else:
                quantization = arg
        elif t.action == "convert":
            handler = host.formats.get(t.arg) if t.arg in host.formats else None
            weights = (f"model{handler.extensions[0] if handler and handler.extensions else ''}",)
    others = tuple(f.path for f in desc.files if f.kind != FileKind.MODEL)
    return EngineModel(name=desc.name or "model", path=PurePath("."), files=others + weights, weights=weights,
                       format=fmt, quantization=_lower(config.get("quantization")) or quantization,
                       precision=_lower(config.get("precision")) or precision, target=target, context_length=context,
                       config={"descriptor": dict(desc.descriptor), "config": dict(config)})


def _lower(value: object) -> str:
    return value.lower() if isinstance(value, str) else ""


def _what(model: EngineModel) -> str:
    """The variant in a few words: ``gguf q8_0 for cpu``."""
    parts = [model.format, model.quantization or model.precision, f"for {model.target}" if model.target else ""]
    return " ".join(p for p in parts if p)


__all__ = ["CONTEXT_KEY", "RuntimeLines", "USAGE", "resolve_runtime"]
