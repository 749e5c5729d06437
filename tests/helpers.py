"""Helpers for reading what a build wrote, independently of modelbuild's own reader."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

SCHEMA = Path(__file__).resolve().parent.parent.parent / "shared" / "spec" / "modelpack-config-schema.json"


def blob(layout: Path, digest: str) -> bytes:
    data = (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest, "blob content does not match its digest"
    return data


def read_artifact(layout: Path, digest: str) -> tuple[dict, dict]:
    manifest = json.loads(blob(layout, digest))
    config = json.loads(blob(layout, manifest["config"]["digest"]))
    return manifest, config


def validate_against_shared_schema(config: dict) -> None:
    """Validate with the project's shared copy of model-spec's schema, formats checked."""
    import jsonschema

    schema_path = SCHEMA if SCHEMA.exists() else Path(__file__).resolve().parent.parent / "modelbuild" / "schema" / "modelpack-config-schema.json"
    schema = json.loads(schema_path.read_text())
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    jsonschema.Draft202012Validator(schema, format_checker=checker).validate(config)


def layer_paths(manifest: dict) -> list[str]:
    return [layer["annotations"]["org.cncf.model.filepath"] for layer in manifest["layers"]]
