"""Validation of every ModelPack config modelbuild writes, against model-spec's JSON schema."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any

from modelbuild.errors import BuildError

# Common spellings of ModelPack precisions: the Modelfile suggests the ModelPack name, and a
# config value written either way agrees with what the weights say.
PRECISION_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "f16": "float16", "f32": "float32",
                     "fp8": "float8_e4m3", "fp64": "float64"}


_IMPORTING = threading.Lock()


def _jsonschema() -> Any:
    """jsonschema, imported without its IRI format checkers where nothing imported it yet.

    Importing jsonschema imports ``rfc3987_syntax`` when that is installed (cyclonedx's
    ``json-validation`` extra brings it), to check the ``iri`` formats, and that compiles a
    grammar: 1.5 s of CPU, a quarter of a cold 2 GB build. The config schema's one format is
    ``date-time``, checked by :func:`_validator`'s own function. A process that imported
    jsonschema before (the tests, for their strict validators) keeps every checker it had.
    """
    import sys

    with _IMPORTING:  # config steps validate from several threads at once
        block = "jsonschema" not in sys.modules and "rfc3987_syntax" not in sys.modules
        if block:
            sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]  # an ImportError for jsonschema
        try:
            import jsonschema  # a plain import: it waits for one under way in another thread
        finally:
            if block and sys.modules.get("rfc3987_syntax", 0) is None:
                del sys.modules["rfc3987_syntax"]
    return jsonschema


_VALIDATOR = threading.Lock()


def _validator() -> Any:
    with _VALIDATOR:  # built once, whichever config step asks first
        return _build_validator()


@lru_cache(maxsize=1)
def _build_validator() -> Any:
    jsonschema = _jsonschema()

    schema = json.loads(resources.files("modelbuild").joinpath("schema/modelpack-config-schema.json").read_text())
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:  # RFC 3339 with a zone, as the spec says
        if not isinstance(value, str) or "T" not in value.upper():
            return False
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed.tzinfo is not None

    return jsonschema.Draft202012Validator(schema, format_checker=checker)


def config_errors(doc: dict[str, Any]) -> list[str]:
    """Every schema violation in *doc*, as ``path: message`` lines (empty when valid)."""
    out = []
    for err in sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        out.append(f"{where}: {err.message}")
    return out


def validate_config(doc: dict[str, Any]) -> None:
    errors = config_errors(doc)
    if errors:
        raise BuildError("the model config does not validate against the ModelPack schema: " + "; ".join(errors))
