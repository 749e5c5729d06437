"""Choosing the engine that serves a variant (docs/spec/runtime.md §5.1).

In order: the engine the user names (``--engine``); else the engines the artifact's runtime
description lists, in its order; else every registered engine, in name order (the engine
registry's order). The first that accepts the variant (and, for ``run``, is installed on
this machine) wins. When none does, the error names every engine with the reason it was
passed over and how to install the ones that would serve it: a user never has to guess
which package is missing.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from modelbuild.errors import PluginError, UsageError

if TYPE_CHECKING:
    from modelbuild.api import Engine, EngineModel
    from modelbuild.plugins import PluginHost


def what(model: EngineModel) -> str:
    """A variant in a few words, for errors: ``gguf q4_k_m for cpu``."""
    parts = [model.format or "unknown format"]
    if model.quantization:
        parts.append(model.quantization)
    elif model.precision:
        parts.append(model.precision)
    if model.target:
        parts.append(f"for {model.target}")
    return " ".join(parts)


def _ask(engine: Engine, question: str, *args: object) -> str | None:
    """An engine's answer to ``accepts``/``installed``; anything but None or a string is a
    bug in the plugin, reported as one."""
    answer = getattr(engine, question)(*args)
    if answer is not None and not isinstance(answer, str):
        raise PluginError(f"engine {engine.name}: {question}() returned {type(answer).__name__}, not a str or None")
    return answer


def choose_engine(plugins: PluginHost, model: EngineModel, wanted: str | None, preferred: Sequence[str] = (), *,
                  need_installed: bool) -> Engine:
    """The engine to serve *model*: see the module docstring. Raises UsageError (exit 2)
    naming every engine's reason when none fits."""
    engines = plugins.engines
    if wanted:
        if wanted not in engines:
            close = difflib.get_close_matches(wanted, engines.names(), n=1, cutoff=0.5)
            raise UsageError(f"--engine {wanted}: no such engine" + (f"; did you mean {close[0]}?" if close else ""),
                             hint=f"installed engine plugins: {', '.join(engines.names()) or 'none'}")
        engine = engines.get(wanted)
        why = _ask(engine, "accepts", model)
        if why:
            raise UsageError(f"engine {wanted} cannot serve this variant ({what(model)}): {why}",
                             hint=_alternatives(plugins, model, need_installed))
        if need_installed:
            missing = _ask(engine, "installed")
            if missing:
                raise UsageError(f"engine {wanted} is not installed here: {missing}", hint=f"install it: {engine.install}")
        return engine
    order = [n for n in preferred if n in engines] + [n for n in engines.names() if n not in preferred]
    reasons: dict[str, str] = {}
    would: list[Engine] = []
    for name in order:
        engine = engines.get(name)
        why = _ask(engine, "accepts", model)
        if why:
            reasons[name] = why
            continue
        missing = _ask(engine, "installed") if need_installed else None
        if missing:
            reasons[name] = f"not installed ({missing})"
            would.append(engine)
            continue
        return engine
    listing = "; ".join(f"{n}: {r}" for n, r in reasons.items()) or "no engine plugin is installed"
    hint = "; ".join(f"for {e.name}: {e.install}" for e in would) if would else None
    raise UsageError(f"no {'installed ' if need_installed else ''}engine serves this variant ({what(model)}): {listing}",
                     hint=hint)


def _alternatives(plugins: PluginHost, model: EngineModel, need_installed: bool) -> str | None:
    """``--engine X`` was refused: which engines would serve the variant instead."""
    names = [e.name for e in plugins.engines if _ask(e, "accepts", model) is None
             and (not need_installed or _ask(e, "installed") is None)]
    return f"engines that serve it: {', '.join(names)}" if names else None


def check_params(engine: Engine, params: Mapping[str, str], where: str) -> None:
    """Every key is one the engine declares; the message names the ones it knows."""
    known = dict(engine.parameters)
    for key in params:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
            raise UsageError(f"{where}: engine {engine.name} has no parameter {key!r}"
                             + (f"; did you mean {close[0]!r}?" if close else ""),
                             hint=f"its parameters: {', '.join(sorted(known)) or 'none'}")


__all__ = ["check_params", "choose_engine", "what"]
