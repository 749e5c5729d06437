"""Every bundled example (``Modelfile.examples/*/``) builds, with the command its own Modelfile
documents, into what it says it shows; and a second build is all CACHED.

The examples are found, not listed: a new directory is built here without touching this
file. Each Modelfile says how to build it on a ``# Build with:  modelbuild …`` comment line
(relative to the repository root); that command is the one run, so the comment cannot go
stale. Examples with something specific to show get a check below; every one gets the
generic checks (each config validates against the ModelPack schema, the rebuild is cached).
"""

from __future__ import annotations

import collections
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import blob, layer_paths, read_artifact, validate_against_shared_schema
from support import EXAMPLES, REPO, age

NAMES = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
BUILD_WITH = re.compile(r"^\s*#.*\bBuild (?:it )?with:\s+(modelbuild\s.+?)\s*$")
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A copy of ``Modelfile.examples`` (examples share tiny-llama's checkpoint through
    relative FROMs, so they are copied together), its files aged past the stat cache's racy
    window so the rebuild trusts their digests."""
    root = tmp_path / "repo"
    shutil.copytree(EXAMPLES, root / EXAMPLES.name)
    for path in (root / EXAMPLES.name).rglob("*"):
        if path.is_file():
            age(path)
    return root


def build_command(modelfile: Path) -> list[str]:
    """The arguments after ``modelbuild`` on the Modelfile's ``# Build with:`` line."""
    found = [m.group(1) for line in modelfile.read_text().splitlines() if (m := BUILD_WITH.match(line))]
    assert len(found) == 1, f"{modelfile}: needs exactly one '# Build with:  modelbuild …' comment line"
    return shlex.split(found[0])[1:]


def manifests(home: Path, result: dict) -> list[tuple[dict, dict]]:
    """(manifest, config) of the artifact, or of each variant of an index, read back from
    the store independently of modelbuild's reader."""
    digests = [v["digest"] for v in result["variants"]] if result.get("variants") else [result["digest"]]
    return [read_artifact(home / "store", d) for d in digests]


def layer(manifest: dict, path: str) -> dict:
    (found,) = [l for l in manifest["layers"] if l["annotations"]["org.cncf.model.filepath"] == path]
    return found


def gguf_reader(home: Path, digest: str):
    import gguf

    blob(home / "store", digest)  # its bytes match its digest
    return gguf.GGUFReader(home / "store" / "blobs" / "sha256" / digest[7:])


def file_type(reader) -> int:
    return int(reader.fields["general.file_type"].contents())


# -- what each example shows -------------------------------------------------------------------
def check_tiny_llama(result: dict, home: Path, root: Path) -> None:
    ((manifest, config),) = manifests(home, result)
    assert config["descriptor"]["name"] == "tiny-llama" and config["config"]["paramSize"] == "156.5K"
    assert "model.safetensors" in layer_paths(manifest) and len(manifest["layers"]) == 7


def check_multi_platform(result: dict, home: Path, root: Path) -> None:
    import gguf

    assert result["mediaType"] == "application/vnd.oci.image.index.v1+json"
    index = json.loads(blob(home / "store", result["digest"]))
    entries = {e["annotations"]["dev.modelbuild.platform.stage"]: e for e in index["manifests"]}
    assert list(entries) == ["cpu", "cuda", "rocm"]  # the generic variant first
    assert entries["cuda"]["annotations"]["dev.modelbuild.platform.accelerator"] == "nvidia.com/gpu"
    assert entries["cuda"]["annotations"]["dev.modelbuild.platform.requires"] == "cuda>=12.1 compute>=8.0"
    assert entries["rocm"]["annotations"]["amd.com/gpu.family"] == "gfx942,gfx90a"
    assert all(e["platform"] == {"os": "linux", "architecture": "amd64"} for e in entries.values())
    by_stage = dict(zip([v["stage"] for v in result["variants"]], manifests(home, result), strict=True))
    cpu_manifest, cpu_config = by_stage["cpu"]
    assert cpu_config["config"]["format"] == "gguf" and cpu_config["config"]["quantization"] == "q8_0"
    assert file_type(gguf_reader(home, layer(cpu_manifest, "model.gguf")["digest"])) == gguf.LlamaFileType.MOSTLY_Q8_0
    assert by_stage["cuda"][1]["config"]["precision"] == "bfloat16"
    assert by_stage["rocm"][1]["config"]["precision"] == "float16"
    for stage in ("cuda", "rocm"):
        assert "model.safetensors" in layer_paths(by_stage[stage][0]) and "model.gguf" not in layer_paths(
            by_stage[stage][0])
    assert sorted(result["tags"]) == ["tiny-llama-multi:latest", "tiny-llama-multi:latest-cpu",
                                      "tiny-llama-multi:latest-cuda", "tiny-llama-multi:latest-rocm"]


def check_convert_quantize(result: dict, home: Path, root: Path) -> None:
    import gguf

    ((manifest, config),) = manifests(home, result)
    assert config["config"]["format"] == "gguf" and config["config"]["quantization"] == "q4_k_m"
    paths = layer_paths(manifest)
    assert "model.gguf" in paths and not any(p.endswith(".safetensors") for p in paths)
    assert "tokenizer.json" in paths and "config.json" in paths  # the JSON files stay
    gguf_layer = layer(manifest, "model.gguf")
    assert gguf_layer["mediaType"] == WEIGHT
    reader = gguf_reader(home, gguf_layer["digest"])
    assert file_type(reader) == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "llama"
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert len(types) == 21
    q = gguf.GGMLQuantizationType
    # every matrix whose rows fit 32-value blocks is quantized (llama.cpp's fallbacks for
    # rows that are no multiple of 256); norms stay F32, 172-wide rows F16
    for t in reader.tensors:
        if len(t.shape) == 1:
            assert t.tensor_type == q.F32, t.name
        elif int(t.shape[0]) % 32 == 0:
            assert t.tensor_type in (q.Q4_K, q.Q5_0, q.Q6_K, q.Q8_0), (t.name, t.tensor_type.name)
        else:
            assert t.tensor_type == q.F16, (t.name, t.tensor_type.name)
    counts = collections.Counter(t.name for t in types.values())
    assert counts["Q5_0"] > 0 and counts["Q8_0"] > 0


def check_onnx(result: dict, home: Path, root: Path) -> None:
    import numpy as np
    import onnx
    from onnx.reference import ReferenceEvaluator

    ((manifest, config),) = manifests(home, result)
    assert config["config"] == {"architecture": "mlp", "capabilities": {"inputTypes": ["embedding"],
                                                                          "outputTypes": ["other"]},
                                "format": "onnx", "paramSize": "1.3K", "precision": "float32"}
    assert config["descriptor"]["family"] == "tiny-mlp"
    model_layer = layer(manifest, "model.onnx")
    assert model_layer["mediaType"] == WEIGHT
    data = blob(home / "store", model_layer["digest"])
    assert data == (root / EXAMPLES.name / "onnx" / "model" / "model.onnx").read_bytes()
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    (probabilities,) = ReferenceEvaluator(model).run(None, {"features": np.ones((3, 16), dtype=np.float32)})
    assert probabilities.shape == (3, 4) and np.allclose(probabilities.sum(axis=1), 1.0)


MODCTL_DIRECTIVES = {"CONFIG", "MODEL", "CODE", "DATASET", "DOC", "NAME", "ARCH", "FAMILY", "FORMAT", "PARAMSIZE",
                     "PRECISION", "QUANTIZATION"}


def check_modctl_style(result: dict, home: Path, root: Path) -> None:
    text = (root / EXAMPLES.name / "modctl-style" / "Modelfile").read_text()
    for line in text.splitlines():  # modctl's dialect: its directives, one argument, whole-line comments
        if line.strip() and not line.lstrip().startswith("#"):
            words = line.split()
            assert words[0].upper() in MODCTL_DIRECTIVES and len(words) == 2 and "$" not in line, line
    ((manifest, config),) = manifests(home, result)
    assert config["descriptor"] == {"name": "tiny-llama-modctl", "family": "llama"}
    assert config["config"] == {"architecture": "transformer", "format": "safetensors", "paramSize": "156.5K",
                                "precision": "float32"}
    assert layer_paths(manifest) == ["LICENSE", "README.md", "config.json", "generation_config.json",
                                     "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert result["tags"] == ["tiny-llama-modctl:latest"] and result["warnings"] == []
    assert "annotations" not in manifest  # no embedded Modelfile, no build time: reproducible


CHECKS = {
    "tiny-llama": check_tiny_llama,
    "multi-platform": check_multi_platform,
    "convert-quantize": check_convert_quantize,
    "onnx": check_onnx,
    "modctl-style": check_modctl_style,
}


@pytest.mark.parametrize("name", NAMES)
def test_example_builds_as_documented_and_rebuilds_cached(mb, home, repo_copy, name):
    modelfile = repo_copy / EXAMPLES.name / name / "Modelfile"
    assert modelfile.is_file(), f"{EXAMPLES.name}/{name} has no Modelfile"
    args = build_command(modelfile)
    first = mb(*args, "--json", "--progress", "plain", cwd=repo_copy)
    assert first.rc == 0, first.err
    result = first.json()
    for _manifest, config in manifests(home, result):
        validate_against_shared_schema(config)
    CHECKS.get(name, lambda *a: None)(result, home, repo_copy)

    again = mb(*args, "--json", "--progress", "plain", cwd=repo_copy)
    assert again.rc == 0, again.err
    assert again.json()["digest"] == result["digest"]
    assert again.json()["stats"]["executed"] == []
    steps = re.findall(r"^#(\d+) (\S+)", again.err, re.MULTILINE)
    outcomes = [word for _n, word in steps if word in ("CACHED", "DONE", "ERROR")]
    assert outcomes and set(outcomes) == {"CACHED"}, again.err
    assert len(outcomes) == len({n for n, _w in steps}), again.err  # every step ended CACHED


def test_every_example_has_a_check():
    """A new example gets the generic checks by itself; this asks for a check of what it
    shows too (add it to CHECKS)."""
    assert sorted(CHECKS) == NAMES


def test_the_onnx_example_is_what_its_script_generates(tmp_path):
    script = REPO / "scripts" / "make_tiny_onnx.py"
    run = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, check=True, timeout=120)
    for name in ("model.onnx", "config.json"):
        assert (tmp_path / name).read_bytes() == (EXAMPLES / "onnx" / "model" / name).read_bytes()
    assert (tmp_path / "model.onnx").stat().st_size < 8192
