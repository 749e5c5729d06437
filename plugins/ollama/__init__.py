"""The ``ollama`` plugin: Ollama Modelfiles build into ModelPack artifacts.

A build file named ``Ollama.Modelfile``, ``NAME.Ollama.Modelfile``, ``Ollamafile`` or
``NAME.ollama`` is read by the ``ollama`` frontend without a ``# syntax=`` line
(``OllamaFrontend.filenames``); ``# syntax=ollama`` selects it for any name (a plain
``Modelfile`` stays the core's). Its modules:

* ``_parse``: the text → commands, with Ollama's lexical rules and a line and column for
  every token;
* ``_frontend``: the commands → the build description (``FROM`` a GGUF file, a safetensors
  directory or an Ollama model name; ``ADAPTER``; ``DRAFT``);
* ``_carriage``: how the template, system message, parameters, messages and licenses ride
  in the artifact's annotations, the one way this frontend and ``FROM ollama://`` share
  (docs/ollama.md, "The carriage"). Its names are public here, for any plugin to use.

The ``ollama://`` source (``_source``) registers here too, with its own
``modelbuild_register_sources`` hook implementation.
"""

from __future__ import annotations

from typing import Any

from modelbuild.api import hookimpl

from ._carriage import (
    ADAPTER,
    DRAFT,
    KEYS,
    LICENSE,
    MESSAGES,
    PARAMETER_TYPES,
    PARAMS,
    PARSER,
    PREFIX,
    RENDERER,
    REQUIRES,
    SYSTEM,
    TEMPLATE,
    Carried,
    canonical_json,
    labels_for,
    labels_from_blobs,
    layer_labels,
    read_labels,
    spdx_licenses,
)


@hookimpl
def modelbuild_register_frontends(registry: Any) -> None:
    from ._frontend import OllamaFrontend

    registry.add(OllamaFrontend())


@hookimpl
def modelbuild_register_sources(registry: Any) -> None:
    from ._source import OllamaSource

    registry.add(OllamaSource())


__all__ = [
    "ADAPTER", "Carried", "DRAFT", "KEYS", "LICENSE", "MESSAGES", "PARAMETER_TYPES", "PARAMS", "PARSER", "PREFIX",
    "RENDERER", "REQUIRES", "SYSTEM", "TEMPLATE", "canonical_json", "labels_for", "labels_from_blobs",
    "layer_labels", "read_labels", "spdx_licenses",
]
