"""``--cache-to`` / ``--cache-from`` against a real registry (Debian's docker-registry) and an
OCI layout directory: the CI scenario of issue 6 (build, wipe the machine, rebuild from the
exported cache: no conversion or quantization runs, same digests), mode=min vs max, a cache
export that cannot reach its registry (a warning, exit 0), and a cache whose blobs are
missing or corrupt (the step runs; never a wrong result).

Every test makes its own weights (the tiny-llama example with one tensor re-randomized), so
no two tests share a blob in the session's registry: corrupting one cannot touch another.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import requests
from safetensors.numpy import load_file, save_file
from support import EXAMPLES, age

MODELFILE = """\
FROM ./model
NAME tiny
CONFIG config.json generation_config.json tokenizer.json tokenizer_config.json
MODEL *.safetensors
CONVERT gguf
QUANTIZE q8_0
"""
TRANSFORMS = {"transform:1", "transform:2"}


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    """A build context: the tiny-llama example, its embeddings re-randomized (unique blobs)."""
    root = tmp_path / "ctx"
    shutil.copytree(EXAMPLES / "tiny-llama" / "model", root / "model")
    weights = root / "model" / "model.safetensors"
    tensors = load_file(weights)
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    name = "model.embed_tokens.weight"
    tensors[name] = rng.standard_normal(tensors[name].shape).astype(np.float32)
    save_file(tensors, weights, metadata={"format": "pt"})
    (root / "Modelfile").write_text(MODELFILE)
    for p in [*root.rglob("*")]:
        if p.is_file():
            age(p)
    return root


@pytest.fixture
def build(cli, tmp_path: Path, ctx: Path):
    """``build(machine, *flags)``: build the context on a machine of its own (a MODELBUILD_HOME
    named *machine*), return (run, --json result)."""

    def run(machine: str, *flags: str, cwd: Path | None = None):
        home = tmp_path / "homes" / machine
        r = cli("build", "-f", "Modelfile", "--json", "--progress", "plain", *flags, cwd=cwd or ctx,
                env={"MODELBUILD_HOME": str(home)})
        assert r.rc == 0, r.err
        return r, r.json()

    return run


def cache_ref(registry, name: str) -> str:
    return f"{registry.host}/cache/{name}:buildcache"


def to_registry(ref: str, mode: str) -> str:
    return f"type=registry,ref={ref},mode={mode},plain-http=true"


def from_registry(ref: str) -> str:
    return f"type=registry,ref={ref},plain-http=true"


def manifest_of(registry, ref: str) -> dict:
    host, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    resp = requests.get(f"http://{host}/v2/{repo}/manifests/{tag}",
                        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)
    resp.raise_for_status()
    return resp.json()


def record_of(registry, ref: str) -> dict:
    host, _, rest = ref.partition("/")
    repo = rest.rpartition(":")[0]
    manifest = manifest_of(registry, ref)
    resp = requests.get(f"http://{host}/v2/{repo}/blobs/{manifest['config']['digest']}", timeout=10)
    resp.raise_for_status()
    return resp.json()


def transform_blob(record: dict, step: str) -> str:
    entry = next(s for s in record["steps"] if s["step"] == step)
    (blob,) = [f["digest"] for f in entry["result"]["files"] if f["origin"] == "blob"]
    return blob


def registry_blob_file(registry, digest: str) -> Path:
    hexd = digest.split(":", 1)[1]
    return registry.root / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"


def store_blob(tmp_path: Path, machine: str, digest: str) -> Path:
    return tmp_path / "homes" / machine / "store" / "blobs" / "sha256" / digest.split(":", 1)[1]


def test_ci_rebuild_from_a_registry_cache_runs_no_transform(registry, build, ctx, tmp_path):
    ref = cache_ref(registry, "ci")
    # the first CI run: the cache does not exist yet (a note, not a failure)
    run1, first = build("runner1", "--cache-from", from_registry(ref), "--cache-to", to_registry(ref, "max"))
    assert TRANSFORMS <= set(first["stats"]["executed"])
    assert "not found" in run1.err and "WARNING" not in run1.err
    assert first["stats"]["blobs_exported"] > 0
    manifest = manifest_of(registry, ref)
    assert manifest["artifactType"] == "application/vnd.modelbuild.cache.v1+json"
    record = record_of(registry, ref)
    assert {s["op"] for s in record["steps"]} >= {"transform", "layerset", "config", "manifest", "describe"}
    # every blob the artifact is made of is in the cache manifest, the model manifest too
    cached = {layer["digest"] for layer in manifest["layers"]}
    assert {layer["digest"] for layer in first["layers"]} <= cached and first["digest"] in cached

    # a fresh runner: empty MODELBUILD_HOME, the sources checked out somewhere else, same cache
    checkout = tmp_path / "elsewhere" / "checkout"
    shutil.copytree(ctx, checkout)
    run2, second = build("runner2", "--cache-from", from_registry(ref), "--cache-to", to_registry(ref, "max"),
                         cwd=checkout)
    executed = second["stats"]["executed"]
    assert not [s for s in executed if s.startswith("transform")], executed
    assert TRANSFORMS <= set(second["stats"]["imported"])
    assert second["digest"] == first["digest"]
    assert second["layers"] == first["layers"] and second["config"] == first["config"]
    assert "#8 CACHED" in run2.err  # the quantize step, reported as BuildKit does
    # the re-export uploads nothing: every blob and the record are there already
    assert second["stats"]["blobs_exported"] == 0
    assert manifest_of(registry, ref) == manifest
    # lazy: the converted (pre-quantization) GGUF only fed the quantize step, which hit the
    # cache, so it was never downloaded; the quantized one (a layer) was, and is intact
    converted = transform_blob(record, "transform:1")
    quantized = transform_blob(record, "transform:2")
    assert not store_blob(tmp_path, "runner2", converted).exists()
    data = store_blob(tmp_path, "runner2", quantized).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == quantized
    assert second["stats"]["bytes_imported"] < first["stats"]["bytes_exported"]


def test_ci_with_push_the_model_and_its_cache_share_every_blob(registry, build):
    """The issue's CI line: ``-t $REPO:1 --push --cache-from $REPO:buildcache --cache-to
    $REPO:buildcache,mode=max`` on two empty runners: the second converts and quantizes
    nothing and pushes the same digest; no blob is ever sent twice."""
    repo = f"{registry.host}/ci/pushed"
    flags = ("--plain-http", "-t", f"{repo}:1", "--push", "--cache-from", f"{repo}:buildcache",
             "--cache-to", f"type=registry,ref={repo}:buildcache,mode=max")
    _, first = build("runner1", *flags)
    assert TRANSFORMS <= set(first["stats"]["executed"])
    # the cache went first and carried every blob of the model: the push only HEADs them
    assert first["pushed"][0]["uploaded"] == 0
    _, second = build("runner2", *flags)
    assert not TRANSFORMS & set(second["stats"]["executed"])
    assert second["pushed"][0]["digest"] == first["pushed"][0]["digest"] == first["digest"]
    assert second["pushed"][0]["uploaded"] == 0 and second["stats"]["blobs_exported"] == 0
    resp = requests.head(f"http://{registry.host}/v2/ci/pushed/manifests/1", timeout=10,
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert resp.headers["Docker-Content-Digest"] == first["digest"]


def test_ci_rebuild_from_a_local_cache_directory(build, tmp_path):
    cache = tmp_path / "cache"
    _, first = build("runner1", "--cache-to", f"type=local,dest={cache},mode=max")
    assert TRANSFORMS <= set(first["stats"]["executed"])
    index = json.loads((cache / "index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    assert entry["artifactType"] == "application/vnd.modelbuild.cache.v1+json"
    assert json.loads((cache / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert not (cache / "ingest").exists() and not (cache / "locks").exists()
    # every blob the layout lists is there, with its digest
    manifest = json.loads((cache / "blobs" / "sha256" / entry["digest"].split(":")[1]).read_bytes())
    for d in [manifest["config"], *manifest["layers"]]:
        data = (cache / "blobs" / "sha256" / d["digest"].split(":")[1]).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == d["digest"] and len(data) == d["size"]

    _, second = build("runner2", "--cache-from", f"type=local,src={cache}")
    assert not [s for s in second["stats"]["executed"] if s.startswith("transform")]
    assert second["digest"] == first["digest"]
    # a second export to the same directory writes nothing new
    _, third = build("runner2", "--cache-to", f"type=local,dest={cache},mode=max")
    assert third["stats"]["blobs_exported"] == 0
    # from one cache to another on a fresh machine: the blobs whose download was deferred
    # (the converted GGUF) are fetched for the new cache, so it is complete too
    other = tmp_path / "cache2"
    _, fourth = build("runner3", "--cache-from", f"type=local,src={cache}", "--cache-to",
                      f"type=local,dest={other},mode=max")
    assert not [s for s in fourth["stats"]["executed"] if s.startswith("transform")]
    index2 = json.loads((other / "index.json").read_text())
    manifest2 = json.loads((other / "blobs" / "sha256" / index2["manifests"][0]["digest"].split(":")[1]).read_bytes())
    assert {d["digest"] for d in manifest2["layers"]} == {d["digest"] for d in manifest["layers"]}
    record2 = json.loads((other / "blobs" / "sha256" / manifest2["config"]["digest"].split(":")[1]).read_bytes())
    assert {s["step"] for s in record2["steps"]} >= TRANSFORMS


def test_mode_min_exports_only_the_artifact_steps(registry, build):
    ref_min, ref_max = cache_ref(registry, "min"), cache_ref(registry, "max")
    # --plain-http (the global flag) stands for plain-http=true in each spec
    _, first = build("runner1", "--plain-http", "--cache-to", f"type=registry,ref={ref_min}",
                     "--cache-to", f"type=registry,ref={ref_max},mode=max")
    ops_min = {s["op"] for s in record_of(registry, ref_min)["steps"]}
    ops_max = {s["op"] for s in record_of(registry, ref_max)["steps"]}
    assert ops_min == {"layerset", "config", "manifest"}
    assert ops_max == {"transform", "describe", "layerset", "config", "manifest"}
    layers_min = {layer["digest"] for layer in manifest_of(registry, ref_min)["layers"]}
    layers_max = {layer["digest"] for layer in manifest_of(registry, ref_max)["layers"]}
    assert layers_min < layers_max  # max also carries the intermediate (converted) GGUF
    assert record_of(registry, ref_min)["mode"] == "min"

    # from the min cache the transforms run again; what they feed is found cached
    _, from_min = build("runner2", "--plain-http", "--cache-from", ref_min)  # a bare ref: type=registry
    assert TRANSFORMS <= set(from_min["stats"]["executed"])
    assert {"layerset", "config", "manifest"} <= set(from_min["stats"]["imported"])
    assert from_min["digest"] == first["digest"]
    _, from_max = build("runner3", "--cache-from", from_registry(ref_max))
    assert not TRANSFORMS & set(from_max["stats"]["executed"])
    assert from_max["digest"] == first["digest"]


def test_export_to_an_unreachable_registry_warns_and_the_build_succeeds(build):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ref = f"127.0.0.1:{port}/cache/gone:buildcache"
    run, result = build("runner1", "--cache-from", from_registry(ref), "--cache-to", to_registry(ref, "max"))
    assert result["digest"].startswith("sha256:")
    assert "WARNING: cannot export the cache to " + ref in run.err
    assert "WARNING: cannot import the cache " + ref in run.err
    assert "(the build itself succeeded)" in run.err


def test_ignore_error_false_makes_a_failed_export_fail_the_build(cli, ctx, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    args = ("build", "-f", "Modelfile", "--progress", "plain", "--cache-to")
    lenient = cli(*args, f"type=local,dest={blocker},mode=max", cwd=ctx)
    assert lenient.rc == 0 and "WARNING: cannot export the cache" in lenient.err
    strict = cli(*args, f"type=local,dest={blocker},ignore-error=false", cwd=ctx)
    assert strict.rc == 1 and "cannot export the cache" in strict.err


def test_a_blob_missing_from_the_cache_makes_its_step_run(registry, build):
    ref = cache_ref(registry, "missing")
    _, first = build("runner1", "--cache-to", to_registry(ref, "max"))
    converted = transform_blob(record_of(registry, ref), "transform:1")
    host, _, rest = ref.partition("/")
    repo = rest.rpartition(":")[0]
    assert requests.delete(f"http://{host}/v2/{repo}/blobs/{converted}", timeout=10).status_code == 202
    run, second = build("runner2", "--cache-from", from_registry(ref))
    executed = set(second["stats"]["executed"])
    # the conversion runs again; it reproduces the same GGUF, so the quantization hits
    assert "transform:1" in executed and "transform:2" not in executed
    assert "lacks blob" in run.err
    assert second["digest"] == first["digest"]


def test_a_corrupt_blob_in_the_cache_is_never_used(registry, build, tmp_path):
    ref = cache_ref(registry, "corrupt")
    _, first = build("runner1", "--cache-to", to_registry(ref, "max"))
    quantized = transform_blob(record_of(registry, ref), "transform:2")
    data_file = registry_blob_file(registry, quantized)
    size = data_file.stat().st_size
    data_file.write_bytes(b"\0" * size)  # same size: a HEAD cannot tell, only the digest can
    run, second = build("runner2", "--cache-from", from_registry(ref))
    # the quantized GGUF is the layer too: the layer step finds it corrupt, must run, and
    # asks for the quantize step's output, which is the same corrupt blob: the solver starts
    # over without that entry, and the quantization runs
    assert "transform:2" in second["stats"]["executed"]
    assert "transform:1" not in second["stats"]["executed"]
    assert "solving again" in run.err
    assert second["digest"] == first["digest"]
    data = store_blob(tmp_path, "runner2", quantized).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == quantized


def test_bad_cache_flags_are_usage_errors(cli, ctx):
    for flag, value, message in [
        ("--cache-to", "type=registry", "needs ref="),
        ("--cache-to", "type=local", "needs dest="),
        ("--cache-to", "type=registry,ref=127.0.0.1:5000/c:x,mode=all", "mode must be min or max"),
        ("--cache-to", "type=s3,ref=x", "unsupported type"),
        ("--cache-from", "type=local,dest=/tmp/x", "unknown key 'dest'"),
        ("--cache-from", "type=registry,ref=nohost", "names no registry"),
    ]:
        r = cli("build", "-f", "Modelfile", flag, value, cwd=ctx)
        assert r.rc == 2 and message in r.err, (value, r.err)


def test_attestations_and_cache_records_stay_apart(registry, build, tmp_path):
    """``--attest`` with ``--cache-to``: the cache holds cache records only, not the
    attestations (referrers of the model's manifests); a runner importing it builds from cache
    and attests anew, and the push carries the attestations, not the records."""
    from modelbuild.oci.pull import remote_referrers
    from modelbuild.oci.registry import Registry

    repo = f"{registry.host}/ci/attested"
    cache = f"type=registry,ref={repo}:buildcache,mode=max,plain-http=true"
    flags = ("--plain-http", "-t", f"{repo}:1", "--push", "--attest", "provenance,sbom", "--cache-to", cache)
    _, first = build("runner1", *flags)
    with Registry(registry.host, plain_http=True) as reg:
        data, _, _ = reg.get_manifest("ci/attested", "buildcache")
        record = json.loads(data)
        assert record["artifactType"] == "application/vnd.modelbuild.cache.v1+json"
        listed, _ = remote_referrers(reg, "ci/attested", first["digest"])
    kinds = {(e.get("annotations") or {}).get("in-toto.io/predicate-type") for e in listed}
    assert {"https://slsa.dev/provenance/v1", "https://cyclonedx.org/bom"} <= kinds
    assert not any(e.get("artifactType") == "application/vnd.modelbuild.cache.v1+json" for e in listed)
    _, second = build("runner2", "--cache-from", f"type=registry,ref={repo}:buildcache,plain-http=true",
                      "--attest", "provenance")
    assert not [s for s in second["stats"]["executed"] if s.startswith("transform")]
    assert second["digest"] == first["digest"] and len(second["attestations"]) == 1
