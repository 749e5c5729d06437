"""Validation of every ModelPack config modelbuild writes, against model-spec's JSON schema."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any

from modelbuild.errors import BuildError

# Common spellings of ModelPack precisions: the Modelfile suggests the ModelPack name, and a
# config value written either way agrees with what the weights say.
PRECISION_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "f16": "float16", "f32": "float32",
                     "fp8": "float8_e4m3", "fp64": "float64"}


@lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

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
