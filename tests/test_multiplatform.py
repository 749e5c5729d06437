"""Multi-platform builds: TARGET stages, one OCI index, shared steps once, host selection."""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers import read_artifact, validate_against_shared_schema
from support import require_tool
from modelbuild.errors import NotFoundError
from modelbuild.hookspecs import hookimpl
from modelbuild.targets import Accelerator, HostInfo, select_entry
from modelbuild.testing import plugin_host

HEAD = "NAME tiny\nCONFIG *.json\nMODEL *.safetensors\nDOC README.md\n"
STAGES = {
    "cpu": "TARGET cpu\nQUANTIZE float16\n",
    "cuda": "TARGET cuda cuda>=12.1 compute>=8.0\nQUANTIZE bfloat16\nSHARD 200KB\n",
    "rocm": "TARGET rocm rocm>=6.0 gfx=gfx942,gfx90a\nQUANTIZE float16 --keep=lm_head.weight\n",
}


@pytest.fixture
def ctx(tiny_llama):
    return tiny_llama


def modelfile(stages):
    # the cuda stage first in the Modelfile: the index still lists the generic cpu entry first
    return HEAD + "\n" + "\n".join(stages[k] for k in ("cuda", "cpu", "rocm"))


def test_three_targets_build_one_index(build, home, ctx):
    result = build(ctx, modelfile(STAGES), "-t", "tiny:1")
    index = json.loads((home / "store" / "blobs" / "sha256" / result["digest"][7:]).read_bytes())
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    stages = [m["annotations"]["dev.modelbuild.platform.stage"] for m in index["manifests"]]
    assert stages == ["cpu", "cuda", "rocm"]  # generic first, then Modelfile order
    for entry in index["manifests"]:
        assert set(entry["platform"]) == {"os", "architecture"}  # never platform.features
        manifest, config = read_artifact(home / "store", entry["digest"])
        validate_against_shared_schema(config)
        assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    cuda = index["manifests"][1]["annotations"]
    assert cuda["nvidia.com/cuda.runtime.major"] == "12" and cuda["nvidia.com/gpu.compute.minor"] == "0"
    assert cuda["dev.modelbuild.platform.requires"] == "cuda>=12.1 compute>=8.0"
    assert index["manifests"][2]["annotations"]["amd.com/gpu.family"] == "gfx942,gfx90a"
    precisions = {v["stage"]: v["config"]["config"]["precision"] for v in result["variants"]}
    assert precisions == {"cpu": "float16", "cuda": "bfloat16", "rocm": "float16,float32"}
    cuda_files = {l["annotations"]["org.cncf.model.filepath"] for l in result["variants"][1]["layers"]}
    assert "model.safetensors.index.json" in cuda_files
    assert sorted(result["tags"]) == ["tiny:1", "tiny:1-cpu", "tiny:1-cuda", "tiny:1-rocm"]
    skopeo = require_tool("skopeo", "apt-get install -y skopeo; scripts/setup-system installs it")
    raw = subprocess.run([skopeo, "inspect", "--raw", f"oci:{home / 'store'}:tiny:1"], capture_output=True,
                         check=True)
    assert json.loads(raw.stdout) == index
    single = subprocess.run([skopeo, "inspect", "--raw", f"oci:{home / 'store'}:tiny:1-cuda"],
                            capture_output=True, check=True)
    assert json.loads(single.stdout)["mediaType"] == "application/vnd.oci.image.manifest.v1+json"


def test_shared_steps_run_once_and_only_the_changed_stage_reruns(build, mb, ctx):
    graph = mb("build", "-f", "-", "--print-graph=json", cwd=ctx,
               input=(HEAD + "".join(STAGES.values())).encode()).json()
    digests = [s for s in graph["steps"] if s["op"] == "digest"]
    assert len(digests) == 6  # each input file once, for three targets
    first = build(ctx, modelfile(STAGES), "-t", "tiny:1")
    executed = first["stats"]["executed"]
    assert sum(s.startswith("digest:") for s in executed) == 6
    assert sorted(s for s in executed if s.startswith("transform")) == [
        "transform:cpu:1", "transform:cuda:1", "transform:cuda:2", "transform:rocm:1"]
    changed = dict(STAGES, cuda="TARGET cuda cuda>=12.1 compute>=8.0\nQUANTIZE bfloat16\nSHARD 150KB\n")
    second = build(ctx, modelfile(changed), "-t", "tiny:1")
    rerun = [s for s in second["stats"]["executed"] if s != "export"]
    assert all(s.endswith(":cuda") or s.startswith("transform:cuda") or s == "index" for s in rerun), rerun
    assert "transform:cuda:1" not in rerun and "transform:cuda:2" in rerun
    before = {v["stage"]: v["digest"] for v in first["variants"]}
    after = {v["stage"]: v["digest"] for v in second["variants"]}
    assert after["cpu"] == before["cpu"] and after["rocm"] == before["rocm"] and after["cuda"] != before["cuda"]
    # --platform builds a subset
    only = build(ctx, modelfile(STAGES), "-t", "tiny:1", "--platform", "cpu")
    assert [v["stage"] for v in only["variants"]] == ["cpu"]


def test_a_stage_without_steps_gets_the_targets_defaults(build, ctx):
    result = build(ctx, HEAD + "TARGET cuda\n", progress="quiet")
    assert result["variants"][0]["config"]["config"]["precision"] == "bfloat16"


@pytest.mark.parametrize(
    "stages, message",
    [
        ("TARGET gaudi\n", "Modelfile:5:1: unknown target gaudi (installed: cpu, cuda, metal, rocm)"),
        ("TARGET cuda compute>=banana\n", "Modelfile:5:1: 'banana' is not a version number"),
        ("TARGET cuda vram>=80\n", "Modelfile:5:1: target cuda has no constraint 'vram' (known: cuda, compute)"),
        ("TARGET cuda compute>=8.0\nQUANTIZE float8_e4m3\n",
         "Modelfile:6:1: QUANTIZE float8_e4m3 makes no sense for TARGET cuda: float8_e4m3 needs compute capability 8.9"),
        ("TARGET cpu/riscv64\n", "Modelfile:5:1: target cpu has no variant riscv64 (variants: amd64, arm64)"),
        ("TARGET cuda\nTARGET cuda compute>=9.0\n", "Modelfile:6:1: two stages named cuda (the other is at line 5)"),
        ("TARGET cuda\nMODEL *.json\n", "Modelfile:6:1: MODEL must come before the first TARGET (line 5)"),
        ("TARGET cuda cuda~12\n", "Modelfile:5:13: bad constraint 'cuda~12'"),
    ],
)
def test_stage_errors_name_the_line(mb, ctx, stages, message):
    (ctx / "Modelfile").write_text(HEAD + stages)
    run = mb("build", "-f", "Modelfile", cwd=ctx)
    assert run.rc == 2, run.err
    assert run.err.startswith(message), run.err
    assert run.err.count("\n") == 1


class GaudiTarget:
    """A third-party target, added with a plugin alone."""

    name = "gaudi"
    version = "1"
    summary = "Intel Gaudi"
    generic = False
    variants = ("amd64",)
    formats = ("safetensors",)

    def check_constraint(self, c):
        pass

    def platform(self, stage):
        return {"os": "linux", "architecture": "amd64"}

    def annotations(self, stage):
        return {"dev.modelbuild.platform.target": "gaudi", "habana.ai/gaudi": "1"}

    def default_steps(self, fmt):
        return [("quantize", "bfloat16", {})]

    def check_step(self, stage, action, arg, fmt):
        return None

    def matches(self, stage, host):
        return host.accelerator("gaudi") is not None, "needs a Gaudi"


class GaudiPlugin:
    @hookimpl
    def modelbuild_register_targets(self, registry):
        registry.add(GaudiTarget())


def test_a_third_party_target_plugs_in(ctx, build_model):
    (ctx / "Modelfile").write_text(HEAD + "TARGET cpu\nQUANTIZE float16\nTARGET gaudi\n")
    result = build_model(ctx / "Modelfile", GaudiPlugin())
    assert [v["stage"] for v in result.variants] == ["cpu", "gaudi"]
    assert result.variants[1]["config"]["config"]["precision"] == "bfloat16"
    (ctx / "Modelfile").write_text(HEAD + "TARGET gaudi\nQUANTIZE bfloat16\nSHARD 200KB\nCONVERT gguf\n")
    from modelbuild.errors import ModelfileError

    with pytest.raises(ModelfileError) as info:
        build_model(ctx / "Modelfile", GaudiPlugin())
    assert info.value.render().endswith("Modelfile:8:1: TARGET gaudi cannot run gguf weights (its engines take "
                                        "safetensors)")


# -- host selection --------------------------------------------------------------------

INDEX = {"manifests": [
    {"digest": "cpu-amd64", "platform": {"os": "linux", "architecture": "amd64"},
     "annotations": {"dev.modelbuild.platform.target": "cpu", "dev.modelbuild.platform.stage": "cpu"}},
    {"digest": "cpu-arm64", "platform": {"os": "linux", "architecture": "arm64"},
     "annotations": {"dev.modelbuild.platform.target": "cpu", "dev.modelbuild.platform.stage": "cpu-arm64"}},
    {"digest": "cuda-hopper", "platform": {"os": "linux", "architecture": "amd64"},
     "annotations": {"dev.modelbuild.platform.target": "cuda", "dev.modelbuild.platform.stage": "cuda-hopper",
                     "dev.modelbuild.platform.requires": "cuda>=12.4 compute>=9.0"}},
    {"digest": "cuda", "platform": {"os": "linux", "architecture": "amd64"},
     "annotations": {"dev.modelbuild.platform.target": "cuda", "dev.modelbuild.platform.stage": "cuda",
                     "dev.modelbuild.platform.requires": "cuda>=12.1 compute>=8.0"}},
    {"digest": "rocm", "platform": {"os": "linux", "architecture": "amd64"},
     "annotations": {"dev.modelbuild.platform.target": "rocm", "dev.modelbuild.platform.stage": "rocm",
                     "dev.modelbuild.platform.requires": "rocm>=6.0 gfx=gfx942,gfx90a"}},
    {"digest": "metal", "platform": {"os": "darwin", "architecture": "arm64"},
     "annotations": {"dev.modelbuild.platform.target": "metal", "dev.modelbuild.platform.stage": "metal"}},
]}


def cuda(rt, cc):
    return Accelerator("cuda", {"cuda": rt, "compute": cc})


HOSTS = [
    ("plain x86 server", HostInfo("linux", "amd64"), "auto", "cpu-amd64"),
    ("graviton", HostInfo("linux", "arm64"), "auto", "cpu-arm64"),
    ("H100, CUDA 12.4", HostInfo("linux", "amd64", [cuda((12, 4), (9, 0))]), "auto", "cuda-hopper"),
    ("A100, CUDA 12.2", HostInfo("linux", "amd64", [cuda((12, 2), (8, 0))]), "auto", "cuda"),
    ("H100 with an old driver (CUDA 12.2)", HostInfo("linux", "amd64", [cuda((12, 2), (9, 0))]), "auto", "cuda"),
    ("T4, CUDA 12.2 (compute 7.5): CPU fallback", HostInfo("linux", "amd64", [cuda((12, 2), (7, 5))]), "auto",
     "cpu-amd64"),
    ("A100, CUDA 11.8: CPU fallback", HostInfo("linux", "amd64", [cuda((11, 8), (8, 0))]), "auto", "cpu-amd64"),
    ("driver without nvidia-smi (versions unknown)", HostInfo("linux", "amd64", [Accelerator("cuda", {})]), "auto",
     "cpu-amd64"),
    ("MI300X, ROCm 6.1", HostInfo("linux", "amd64", [Accelerator("rocm", {"rocm": (6, 1), "gfx": "gfx942"})]),
     "auto", "rocm"),
    ("Radeon gfx1100, ROCm 6.1", HostInfo("linux", "amd64",
                                          [Accelerator("rocm", {"rocm": (6, 1), "gfx": "gfx1100"})]), "auto",
     "cpu-amd64"),
    ("MI250, ROCm 5.7", HostInfo("linux", "amd64", [Accelerator("rocm", {"rocm": (5, 7), "gfx": "gfx90a"})]), "auto",
     "cpu-amd64"),
    ("M2 Mac", HostInfo("darwin", "arm64", [Accelerator("metal")]), "auto", "metal"),
    ("x86 server asking for cuda", HostInfo("linux", "amd64"), "cuda", "cuda-hopper"),
    ("arm server asking for cpu", HostInfo("linux", "arm64"), "cpu", "cpu-arm64"),
    ("Grace Hopper asking for cuda-hopper", HostInfo("linux", "arm64", [cuda((12, 4), (9, 0))]), "cuda-hopper",
     "cuda-hopper"),
]


@pytest.mark.parametrize("what, host, wanted, expected", HOSTS, ids=[h[0] for h in HOSTS])
def test_host_selection_table(what, host, wanted, expected):
    assert select_entry(INDEX, wanted, host, plugin_host().targets).descriptor["digest"] == expected


@pytest.mark.parametrize(
    "host, wanted, message",
    [
        (HostInfo("darwin", "amd64"), "auto", "no variant fits this host (darwin/amd64): cpu (linux/amd64): built for "
                                              "linux/amd64; cpu-arm64 (linux/arm64): built for linux/arm64; "),
        (HostInfo("linux", "riscv64"), "auto", "no variant fits this host (linux/riscv64)"),
        (HostInfo("linux", "amd64"), "tpu", "no variant named tpu: available are cpu (linux/amd64), cpu-arm64"),
    ],
)
def test_no_fitting_variant_is_a_clear_error(host, wanted, message):
    with pytest.raises(NotFoundError) as info:
        select_entry(INDEX, wanted, host, plugin_host().targets)
    assert info.value.message.startswith(message)
    assert "cuda-hopper (linux/amd64, cuda>=12.4 compute>=9.0)" in info.value.message


def test_no_fitting_variant_says_why_each_was_rejected():
    """Every entry, each with the reason automatic selection passed it over (spec §5.3)."""
    index = {"manifests": [e for e in INDEX["manifests"] if not e["digest"].startswith("cpu")]}
    old_cuda = HostInfo("linux", "amd64", [cuda((11, 8), (8, 0))])
    with pytest.raises(NotFoundError) as info:
        select_entry(index, "auto", old_cuda, plugin_host().targets)
    reasons = dict(part.split(": ", 1) for part in info.value.message.split(": ", 1)[1].split("; "))
    assert reasons["cuda-hopper (linux/amd64, cuda>=12.4 compute>=9.0)"] == "needs cuda>=12.4"
    assert reasons["cuda (linux/amd64, cuda>=12.1 compute>=8.0)"] == "needs cuda>=12.1"
    assert reasons["rocm (linux/amd64, rocm>=6.0 gfx=gfx942,gfx90a)"] == "needs a rocm accelerator"
    assert reasons["metal (darwin/arm64)"] == "needs Apple silicon (darwin/arm64)"


def test_pull_extracts_the_chosen_variant(build, mb, ctx, tmp_path):
    build(ctx, modelfile(STAGES), "-t", "tiny:1")
    out = tmp_path / "out"
    run = mb("pull", "tiny:1", "--platform", "cuda", "-o", str(out), "--json")
    assert run.rc == 0, run.err
    assert run.json()["stage"] == "cuda"
    assert (out / "model.safetensors.index.json").exists() and not (out / "model.safetensors").exists()
    auto = mb("pull", "tiny:1", "--json").json()  # this CI machine has no GPU
    assert auto["stage"] == "cpu"
