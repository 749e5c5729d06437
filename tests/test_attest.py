"""``build --attest provenance,sbom``: SLSA provenance and a CycloneDX ML-BOM per variant,
attached as referrers. The statements are checked with independent code: the in-toto
project's own library (``in-toto-attestation``: the Statement, ResourceDescriptor and SLSA
Provenance v1 protobuf definitions, parsed strictly), and cyclonedx-python-lib's strict JSON
validator for CycloneDX 1.6."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "Modelfile.examples" / "tiny-llama" / "model"
EPOCH = "1700000000"

MODELFILE = """\
NAME tiny-attested
LICENSE Apache-2.0
CONFIG config.json generation_config.json tokenizer.json tokenizer_config.json
MODEL model.safetensors
DOC README.md LICENSE
TARGET cpu
CONVERT gguf
QUANTIZE q4_k_m
TARGET cuda cuda>=12.1
QUANTIZE bfloat16
"""


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(home: Path, digest: str) -> bytes:
    return (home / "store" / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def _context(root: Path) -> Path:
    ctx = root / "ctx"
    shutil.copytree(TINY, ctx)
    (ctx / "Modelfile").write_text(MODELFILE)
    return ctx


def _build(mb: Any, ctx: Path, *extra: str) -> dict[str, Any]:
    run = mb("build", "-f", str(ctx / "Modelfile"), "-t", "tiny-attested:1", "--attest", "provenance,sbom",
             "--progress", "quiet", "--json", *extra, env={"SOURCE_DATE_EPOCH": EPOCH})
    assert run.rc == 0, run.err
    return run.json()


def _statements(home: Path, result: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(subject digest, kind) → the statement, read through the referrer manifest."""
    out = {}
    for a in result["attestations"]:
        manifest = json.loads(_blob(home, a["digest"]))
        assert manifest["subject"]["digest"] == a["subject"]
        (layer,) = manifest["layers"]
        data = _blob(home, layer["digest"])
        assert _sha(data) == layer["digest"]
        out[(a["subject"], a["kind"])] = json.loads(data)
    return out


def _validate_in_toto(statement: dict[str, Any]) -> None:
    """The in-toto project's own definitions: unknown fields or wrong types fail to parse."""
    from google.protobuf import json_format
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement

    pb = json_format.ParseDict(statement, statement_pb2.Statement())  # strict: no unknown field
    Statement.copy_from_pb(pb).validate()
    if statement["predicateType"] == "https://slsa.dev/provenance/v1":
        predicate = json_format.ParseDict(statement["predicate"], provenance_pb2.Provenance())
        for rd in [*predicate.build_definition.resolved_dependencies, *predicate.run_details.byproducts,
                   *predicate.run_details.builder.builder_dependencies]:
            ResourceDescriptor.copy_from_pb(rd).validate()


def _validate_schema(statement: dict[str, Any]) -> None:
    """The vendored JSON Schemas (tests/data/attest/, each naming the texts it transcribes)."""
    from jsonschema import Draft202012Validator, FormatChecker
    from referencing import Registry, Resource

    schemas = {p.name: json.loads(p.read_text()) for p in (REPO / "tests" / "data" / "attest").glob("*.schema.json")}
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas.values())
    which = ("slsa-provenance-v1.schema.json" if statement["predicateType"] == "https://slsa.dev/provenance/v1"
             else "in-toto-statement-v1.schema.json")
    Draft202012Validator(schemas[which], registry=registry, format_checker=FormatChecker()).validate(statement)


def test_the_vendored_schemas_refuse_what_they_should(attested) -> None:
    """The schemas are not vacuous: a statement without a subject digest, a provenance with
    an unknown field or without a builder id, each fails."""
    import jsonschema

    home, _, result = attested
    stmt = _statements(home, result)[(result["digest"], "provenance")]
    _validate_schema(stmt)
    for broken in (
        {**stmt, "subject": [{"name": "x"}]},
        {**stmt, "predicate": {**stmt["predicate"], "extra": 1}},
        {**stmt, "predicate": {**stmt["predicate"], "runDetails": {"builder": {}}}},
        {**stmt, "_type": "https://in-toto.io/Statement/v0.1"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            _validate_schema(broken)


@pytest.fixture(scope="module")
def attested(tmp_path_factory) -> tuple[Path, Path, dict[str, Any]]:
    """The multi-platform build, attested, once for the module: (home, context, result)."""
    root = tmp_path_factory.mktemp("attest")
    ctx = _context(root)
    proc = subprocess.run(
        [sys.executable, "-m", "modelbuild", "build", "-f", str(ctx / "Modelfile"), "-t", "tiny-attested:1",
         "--attest", "provenance,sbom", "--progress", "quiet", "--json"],
        env={**os.environ, "MODELBUILD_HOME": str(root / "home"), "SOURCE_DATE_EPOCH": EPOCH},
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    return root / "home", ctx, json.loads(proc.stdout)


def test_the_cpu_variant_provenance_names_sources_plugins_and_chain(attested) -> None:
    from modelbuild.plugins import make_plugin_manager

    home, ctx, result = attested
    statements = _statements(home, result)
    (cpu,) = [v for v in result["variants"] if v["stage"] == "cpu"]
    stmt = statements[(cpu["digest"], "provenance")]
    _validate_in_toto(stmt)
    _validate_schema(stmt)
    assert stmt["subject"] == [{"name": "tiny-attested:1-cpu", "digest": {"sha256": cpu["digest"].split(":")[1]}}]
    definition = stmt["predicate"]["buildDefinition"]
    inputs = {d["name"]: d["digest"]["sha256"] for d in definition["resolvedDependencies"] if "digest" in d}
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md"):
        assert "sha256:" + inputs[name] == _sha((ctx / name).read_bytes()), name  # the exact source digests
    host = make_plugin_manager()
    plugins = {d["annotations"]["plugin"]: d["annotations"]["version"] for d in definition["resolvedDependencies"]
               if d.get("name", "").startswith("plugin:")}
    assert plugins["hf-gguf"] == host.plugin_version("hf-gguf") and plugins["gguf"] == host.plugin_version("gguf")
    assert definition["externalParameters"]["buildFile"] == {"name": "Modelfile",
                                                             "digest": {"sha256": _sha((ctx / "Modelfile").read_bytes())[7:]}}
    gguf = next(l["digest"] for l in cpu["layers"] if l["annotations"]["org.cncf.model.filepath"] == "model.gguf")
    (chains,) = [b["annotations"]["chains"] for b in stmt["predicate"]["runDetails"]["byproducts"]
                 if b["name"] == "transforms"]
    assert chains == [f"model.safetensors ({_sha((ctx / 'model.safetensors').read_bytes())}) → convert to gguf "
                      f"(hf-gguf {plugins['hf-gguf']}) → quantize q4_k_m (gguf {plugins['gguf']}) → "
                      f"model.gguf ({gguf})"]
    from modelbuild.attest.provenance import steps_of

    steps = steps_of(stmt)
    transforms = [s for s in steps if s["op"] == "transform"]
    assert [(s["transform"]["action"], s["plugin"]) for s in transforms] == [("convert", "hf-gguf"),
                                                                             ("quantize", "gguf")]
    assert all(s["key"].startswith("sha256:") for s in transforms)
    assert not any(s.get("stage") == "cuda" for s in steps)  # only the steps that made this variant


def test_the_index_and_every_variant_have_their_statements(attested) -> None:
    home, _, result = attested
    statements = _statements(home, result)
    variants = {v["digest"] for v in result["variants"]}
    assert {(d, k) for d, k in statements} == {(d, k) for d in variants for k in ("provenance", "sbom")} | {
        (result["digest"], "provenance")}
    _validate_in_toto(statements[(result["digest"], "provenance")])


def test_provenance_is_byte_identical_elsewhere_and_names_nothing_of_the_machine(attested, tmp_path, mb) -> None:
    home, ctx, result = attested
    other = _context(tmp_path / "elsewhere")  # another directory, another store: the same statements
    again = _build(mb, other)
    assert [a["digest"] for a in again["attestations"]] == [a["digest"] for a in result["attestations"]]
    for a in result["attestations"]:
        text = _blob(home, json.loads(_blob(home, a["digest"]))["layers"][0]["digest"]).decode()
        for private in (str(ctx), str(ctx.parent), str(home), socket.gethostname(), getpass.getuser() + "/"):
            assert private not in text, (a["kind"], private)


def test_the_sbom_validates_and_lists_every_file_with_its_hash(attested, tmp_path, mb) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    home, _, result = attested
    statements = _statements(home, result)
    for variant in result["variants"]:
        _validate_schema(statements[(variant["digest"], "sbom")])
        bom = statements[(variant["digest"], "sbom")]["predicate"]
        assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(bom)) is None
        model = bom["metadata"]["component"]
        assert model["type"] == "machine-learning-model" and model["name"] == "tiny-attested"
        assert [lic["license"]["id"] for lic in model["licenses"]] == ["Apache-2.0"]
        files = {c["name"]: c["hashes"][0]["content"] for c in bom["components"]}
        out = tmp_path / variant["stage"]
        run = mb("pull", f"tiny-attested:1-{variant['stage']}", "-o", str(out), "--progress", "quiet",
                 env={"MODELBUILD_HOME": str(home)})
        assert run.rc == 0, run.err
        on_disk = {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                   for p in out.rglob("*") if p.is_file()}
        assert files == on_disk  # every file of the artifact, with its hash, and nothing else
        tools = {t["name"] for t in bom["metadata"]["tools"]["components"]}
        assert "modelbuild" in tools


def test_inspect_lists_the_referrers(attested, mb) -> None:
    home, _, result = attested
    run = mb("inspect", "tiny-attested:1", "--referrers", "--json", env={"MODELBUILD_HOME": str(home)})
    assert run.rc == 0, run.err
    found = run.json()["referrers"]
    kinds = {(r["subject"], r["predicateType"]) for r in found if r["artifactType"] == "application/vnd.in-toto+json"}
    assert (result["digest"], "https://slsa.dev/provenance/v1") in kinds
    cpu = next(v["digest"] for v in result["variants"] if v["stage"] == "cpu")
    assert (cpu, "https://cyclonedx.org/bom") in kinds
    assert {r.get("stage") for r in found if r["subject"] == cpu} == {"cpu"}


def test_an_unknown_attestation_is_a_usage_error(mb, tmp_path) -> None:
    (tmp_path / "Modelfile").write_text("NAME x\nDOC README.md\n")
    (tmp_path / "README.md").write_text("hi\n")
    run = mb("build", "-f", str(tmp_path / "Modelfile"), "--attest", "provenence")
    assert run.rc == 2 and "unknown attestation 'provenence' (did you mean provenance?)" in run.err
