"""``modelbuild inspect`` of a multi-platform index: one row per variant (stage, platform,
accelerator, format, quantization, size), the same in ``--json``, from the store and from an
OCI layout; ``--platform`` shows one variant in full; a single manifest is shown as before.
Names from an index someone else wrote reach the terminal escaped."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from helpers import blob, read_artifact
from modelbuild.units import human_size
from support import EXAMPLES, error_line

MULTI = EXAMPLES / "multi-platform" / "Modelfile"
TAG = "tiny-llama-multi:latest"
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EVIL = "evil\nname\x1b[31m"


@pytest.fixture
def built(mb) -> dict:
    """The multi-platform example, built into this test's store; the build's JSON result."""
    run = mb("-f", str(MULTI), "--json", "--progress", "quiet")
    assert run.rc == 0, run.err
    return run.json()


def rows(text: str) -> list[list[str]]:
    """The table after the header block, split on the column gaps (three spaces or more)."""
    table = text.split("\n\n", 1)[1].strip().splitlines()
    return [re.split(r" {3,}", line.strip()) for line in table]


def expected_sizes(store: Path, digest: str) -> tuple[dict[str, int], int]:
    """Each variant's bytes (manifest, config, layers) and the artifact's (the index, and
    every other blob once), counted from the store's files, not from modelbuild's reader."""
    data = blob(store, digest)
    index = json.loads(data)
    per_variant, unique = {}, {digest: len(data)}
    for entry in index["manifests"]:
        manifest, _config = read_artifact(store, entry["digest"])
        blobs = [manifest["config"], *manifest["layers"]]
        per_variant[entry["digest"]] = entry["size"] + sum(b["size"] for b in blobs)
        unique.update({b["digest"]: b["size"] for b in [entry, *blobs]})
    return per_variant, sum(unique.values())


def test_an_index_is_shown_as_its_variants(mb, home, built):
    run = mb("inspect", "tiny-llama-multi")
    assert run.rc == 0, run.err
    head = run.out.split("\n\n", 1)[0].splitlines()
    assert head[:4] == ["Reference:     tiny-llama-multi", f"Digest:        {built['digest']}",
                        f"Media type:    {INDEX}", "Artifact type: application/vnd.cncf.model.manifest.v1+json"]
    assert head[4] == f"Tags:          {TAG}"
    sizes, total = expected_sizes(home / "store", built["digest"])
    assert head[5] == f"Variants:      3 ({human_size(total)} in all)"
    assert "Layers:" not in run.out  # an index has no layers of its own
    table = rows(run.out)
    assert table[0] == ["STAGE", "PLATFORM", "REQUIRES", "FORMAT", "QUANTIZATION", "PARAMS", "LAYERS", "SIZE",
                        "DIGEST"]
    digests = {v["stage"]: v["digest"] for v in built["variants"]}
    sz = {stage: human_size(sizes[d]) for stage, d in digests.items()}
    assert table[1:] == [
        ["cpu", "linux/amd64", "-", "gguf", "q8_0", "156.5K", "7", sz["cpu"], digests["cpu"][7:19]],
        ["cuda", "linux/amd64 nvidia.com/gpu", "cuda>=12.1 compute>=8.0", "safetensors", "-", "156.5K", "7",
         sz["cuda"], digests["cuda"][7:19]],
        ["rocm", "linux/amd64 amd.com/gpu", "rocm>=6.0 gfx=gfx942,gfx90a", "safetensors", "-", "156.5K", "7",
         sz["rocm"], digests["rocm"][7:19]],
    ]


def test_index_json_lists_the_variants_with_their_fields(mb, home, built):
    doc = mb("inspect", TAG, "--json").json()
    index = json.loads(blob(home / "store", built["digest"]))
    sizes, total = expected_sizes(home / "store", built["digest"])
    assert doc["reference"] == TAG and doc["digest"] == built["digest"] and doc["mediaType"] == INDEX
    assert doc["tags"] == [TAG] and doc["size"] == total and doc["manifest"] == index
    assert doc["annotations"] == {}
    assert [v["stage"] for v in doc["variants"]] == ["cpu", "cuda", "rocm"]
    for variant, entry in zip(doc["variants"], index["manifests"], strict=True):
        manifest, config = read_artifact(home / "store", entry["digest"])
        assert variant["digest"] == entry["digest"] and variant["mediaType"] == MANIFEST
        assert variant["platform"] == entry["platform"] and variant["annotations"] == entry["annotations"]
        assert variant["target"] == variant["stage"]
        assert variant["config"] == manifest["config"]  # the config's descriptor
        assert variant["layerCount"] == len(manifest["layers"]) and variant["size"] == sizes[entry["digest"]]
        for field in ("format", "precision", "paramSize"):
            assert variant[field] == config["config"][field]
        assert variant["quantization"] == config["config"].get("quantization")
        assert variant["tags"] == [f"{TAG}-{variant['stage']}"]
    cpu, cuda, rocm = doc["variants"]
    assert (cpu["accelerator"], cpu["requires"], cpu["format"], cpu["quantization"]) == (None, None, "gguf", "q8_0")
    assert (cuda["accelerator"], cuda["requires"]) == ("nvidia.com/gpu", "cuda>=12.1 compute>=8.0")
    assert (rocm["accelerator"], rocm["requires"]) == ("amd.com/gpu", "rocm>=6.0 gfx=gfx942,gfx90a")
    assert (cuda["precision"], rocm["precision"]) == ("bfloat16", "float16")


def test_an_index_in_an_oci_layout_is_shown_the_same(mb, tmp_path, built):
    layout = tmp_path / "layout"
    run = mb("-f", str(MULTI), "-o", f"type=oci,dest={layout}", "--progress", "quiet")
    assert run.rc == 0, run.err
    in_store = mb("inspect", TAG, "--json").json()
    for ref in (f"{layout}:{TAG}", str(layout)):
        doc = mb("inspect", ref, "--json").json()
        assert doc["reference"] == ref and doc["digest"] == in_store["digest"] and doc["tags"] == [TAG]
        for ours, theirs in zip(doc["variants"], in_store["variants"], strict=True):
            assert {**ours, "tags": None} == {**theirs, "tags": None}  # the layout has the index tag only
        text = mb("inspect", ref).out
        assert rows(text) == rows(mb("inspect", TAG).out)


def test_platform_shows_one_variant_in_full(mb, built, monkeypatch):
    from modelbuild import targets

    by_stage = {v["stage"]: v["digest"] for v in built["variants"]}
    run = mb("inspect", "tiny-llama-multi", "--platform", "rocm")
    assert run.rc == 0, run.err
    assert run.out.startswith(f"Reference:     tiny-llama-multi [rocm]\nDigest:        {by_stage['rocm']}\n")
    assert "precision:     float16" in run.out and "model.safetensors" in run.out and "Layers:        7" in run.out
    doc = mb("inspect", "tiny-llama-multi", "--platform", "cuda", "--json").json()
    assert (doc["index"], doc["stage"], doc["digest"]) == (built["digest"], "cuda", by_stage["cuda"])
    assert doc["config"]["config"]["precision"] == "bfloat16"
    # auto: what `pull` would pick on this host (docs/spec/multi-platform.md §5)
    monkeypatch.setattr(targets, "detect_host", lambda: targets.HostInfo("linux", "amd64"))
    assert mb("inspect", TAG, "--platform", "auto", "--json").json()["stage"] == "cpu"
    h100 = targets.Accelerator("cuda", {"cuda": (12, 4), "compute": (9, 0)})
    monkeypatch.setattr(targets, "detect_host", lambda: targets.HostInfo("linux", "amd64", [h100]))
    assert mb("inspect", TAG, "--platform", "auto", "--json").json()["stage"] == "cuda"
    line = error_line(mb("inspect", TAG, "--platform", "metal"), 2)
    assert "no variant named metal" in line


def test_platform_on_a_single_manifest_is_a_usage_error(mb, built):
    line = error_line(mb("inspect", f"{TAG}-cpu", "--platform", "cpu"), 2)
    assert "is one manifest, not a multi-platform index" in line


def test_a_single_manifest_is_shown_as_before(mb, home):
    built = mb("-f", str(EXAMPLES / "tiny-llama" / "Modelfile"), "--json", "--progress", "quiet").json()
    doc = mb("inspect", "tiny-llama", "--json").json()
    manifest, config = read_artifact(home / "store", built["digest"])
    memory = doc.pop("memory")  # the estimate to serve it (tests/test_runtime_memory.py)
    runtime = doc.pop("runtime")  # its runtime description (tests/test_runtime_description.py)
    assert doc == {"reference": "tiny-llama", "digest": built["digest"], "manifest": manifest, "config": config}
    assert memory["contextLength"] == 256 == runtime["contextLength"]
    assert [e["name"] for e in runtime["engines"]] == ["tgi", "vllm"]  # the installed engines for safetensors
    text = mb("inspect", "tiny-llama").out
    head, table = text.split("\n\n")
    lines = head.splitlines()
    assert lines[:3] == ["Reference:     tiny-llama", f"Digest:        {built['digest']}",
                         "Artifact type: application/vnd.cncf.model.manifest.v1+json"]
    assert "name:          tiny-llama" in lines and "paramSize:     156.5K" in lines
    assert "Label:         org.opencontainers.image.source=https://example.invalid/modelbuild" in lines
    assert lines[-3].startswith("Memory:        ") and "KV cache at 256 tokens, f16" in lines[-3]
    assert lines[-2] == "Runtime:       tgi, vllm, context 256 (`modelbuild run` serves it)"
    assert lines[-1].startswith("Layers:        7 (") and "Tags:" not in text and "Variants:" not in text
    assert table.splitlines()[0].split() == ["PATH", "TYPE", "SIZE", "DIGEST"]


# -- an index someone else wrote ----------------------------------------------------------
def _put(layout: Path, data: bytes | dict) -> dict:
    if isinstance(data, dict):
        data = json.dumps(data).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _layout(root: Path) -> Path:
    root.mkdir()
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return root


def _tag_index(root: Path, entries: list[dict]) -> str:
    """Tag, as v1, an index of *entries* (descriptors, with platform and annotations)."""
    index = _put(root, {"schemaVersion": 2, "mediaType": INDEX, "manifests": entries, "annotations": {EVIL: EVIL}})
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": INDEX, **index, "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}))
    return f"{root}:v1"


def _variant(layout: Path, fmt: object = "gguf") -> dict:
    config = _put(layout, {"descriptor": {"name": EVIL}, "config": {"format": fmt, "quantization": EVIL},
                           "modelfs": {"type": "layers", "diffIds": []}})
    layer = _put(layout, b"weights")
    return {"mediaType": MANIFEST, **_put(layout, {
        "schemaVersion": 2, "mediaType": MANIFEST, "artifactType": "application/vnd.cncf.model.manifest.v1+json",
        "config": {"mediaType": "application/vnd.cncf.model.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.cncf.model.weight.v1.raw", **layer}]})}


def test_variant_names_from_an_index_are_printed_escaped(mb, tmp_path):
    layout = _layout(tmp_path / "layout")
    evil = {**_variant(layout, EVIL), "platform": {"os": EVIL, "architecture": 5, "variant": [EVIL]},
            "annotations": {"dev.modelbuild.platform.stage": EVIL, "dev.modelbuild.platform.accelerator": EVIL,
                            "dev.modelbuild.platform.requires": EVIL}}
    plain = _variant(layout)  # no platform, no annotations: a row of dashes where they would be
    nested = {"mediaType": INDEX, **_put(layout, {"schemaVersion": 2, "mediaType": INDEX, "manifests": [plain]})}
    ref = _tag_index(layout, [evil, plain, nested])
    run = mb("inspect", ref)
    assert run.rc == 0, run.err
    assert "\x1b" not in run.out and "\\x1b[31m" in run.out
    table = rows(run.out)
    assert len(table) == 4, run.out  # the header and one line per variant, whatever the names hold
    assert table[1][0] == "evil\\nname\\x1b[31m" and table[1][3] == "evil\\nname\\x1b[31m"
    assert table[2][:5] == ["-", "-", "-", "gguf", "evil\\nname\\x1b[31m"]
    assert table[3][3:7] == ["-", "-", "-", "0"]  # an index inside the index: no layers of its own
    assert "Label:         evil\\nname\\x1b[31m=evil\\nname\\x1b[31m" in run.out  # index annotations
    doc = mb("inspect", ref, "--json").json()
    assert doc["variants"][0]["stage"] == EVIL and doc["variants"][2]["mediaType"] == INDEX
    line = error_line(mb("inspect", ref, "--platform", "nope"), 2)  # a requirement that does not parse
    assert "evil\\nname\\x1b[31m (evil\\nname\\x1b[31m/5, unreadable requirements)" in line
    named = _layout(tmp_path / "named")
    ref = _tag_index(named, [{**_variant(named), "annotations": {"dev.modelbuild.platform.stage": EVIL}}])
    line = error_line(mb("inspect", ref, "--platform", "nope"), 2)  # it lists the entries, escaped
    assert "no variant named nope" in line and "evil\\nname" in line


def test_every_variant_manifest_and_config_is_read_verified(mb, tmp_path):
    root = _layout(tmp_path / "layout")
    other = _variant(root, "safetensors")
    ref = _tag_index(root, [_variant(root), other])
    assert mb("inspect", ref).rc == 0
    manifest_path = root / "blobs" / "sha256" / other["digest"][7:]
    config_digest = json.loads(manifest_path.read_bytes())["config"]["digest"]
    config_path = root / "blobs" / "sha256" / config_digest[7:]
    original = config_path.read_bytes()
    config_path.write_bytes(original.replace(b"safetensors", b"safetensorz"))  # same size, other bytes
    line = error_line(mb("inspect", ref), 1)
    assert config_digest in line and "does not match" in line
    config_path.write_bytes(original)
    data = bytearray(manifest_path.read_bytes())
    data[-2] ^= 0x01
    manifest_path.write_bytes(bytes(data))
    line = error_line(mb("inspect", ref, "--json"), 1)
    assert other["digest"] in line and "does not match" in line
    assert manifest_path.read_bytes() == bytes(data)  # a layout is not ours to repair


def test_ls_counts_an_index_with_its_variants(mb, home, built):
    """``ls`` gives a multi-platform tag the size ``inspect`` gives it (every blob once),
    not the size of the index document alone, and the name its variants carry."""
    _sizes, total = expected_sizes(home / "store", built["digest"])
    rows_ = {r["reference"]: r for r in mb("ls", "--json").json()}
    assert rows_[TAG]["size"] == total
    assert rows_[TAG]["name"] == "tiny-llama-multi"
    assert rows_["tiny-llama-multi:latest-cpu"]["size"] < total


def test_pull_skips_an_entry_whose_requirements_do_not_parse(mb, tmp_path, monkeypatch):
    """An index someone else wrote, with a requirements annotation that is no constraint:
    automatic selection skips that entry (as one for an unknown target) and takes the
    generic one; an explicit name still takes it; no name reaches the terminal raw."""
    from modelbuild import targets

    layout = _layout(tmp_path / "layout")

    def variant(stage: str, requires: str = "") -> dict:
        config = _put(layout, {"descriptor": {"name": stage}, "config": {"format": "gguf"},
                               "modelfs": {"type": "layers", "diffIds": []}})
        layer = _put(layout, stage.encode())
        manifest = _put(layout, {
            "schemaVersion": 2, "mediaType": MANIFEST, "artifactType": "application/vnd.cncf.model.manifest.v1+json",
            "config": {"mediaType": "application/vnd.cncf.model.config.v1+json", **config},
            "layers": [{"mediaType": "application/vnd.cncf.model.weight.v1.raw", **layer,
                        "annotations": {"org.cncf.model.filepath": f"{stage}.bin"}}]})
        ann = {"dev.modelbuild.platform.stage": stage, "dev.modelbuild.platform.target": stage}
        return {"mediaType": MANIFEST, **manifest, "platform": {"os": "linux", "architecture": "amd64"},
                "annotations": {**ann, **({"dev.modelbuild.platform.requires": requires} if requires else {})}}

    ref = _tag_index(layout, [variant("cuda", "cuda>>=12 " + EVIL), variant("cpu")])
    monkeypatch.setattr(targets, "detect_host", lambda: targets.HostInfo("linux", "amd64"))
    auto = mb("pull", ref, "-o", str(tmp_path / "auto"), "--json")
    assert auto.rc == 0, auto.err
    assert (tmp_path / "auto" / "cpu.bin").read_bytes() == b"cpu"
    named = mb("pull", ref, "-o", str(tmp_path / "named"), "--platform", "cuda")
    assert named.rc == 0, named.err
    assert (tmp_path / "named" / "cuda.bin").read_bytes() == b"cuda"
    missing = mb("pull", ref, "-o", str(tmp_path / "none"), "--platform", EVIL)
    assert missing.rc == 2 and "\x1b" not in missing.err and "unreadable requirements" in missing.err
