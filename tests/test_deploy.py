"""``modelbuild deploy``: the manifests validate against Kubernetes' own schemas (strict:
an unknown field fails) and KServe's published CRD, and say what they must: the model
volume pins the variant's manifest digest, the engine's container, probes and files are
the engine's, memory covers the estimate, a GPU variant asks for its GPU and its
constraints become node affinity that admits exactly the nodes they admit.

The artifacts are the bundled examples, built once for the module, tagged with a
registry-looking name (nothing is pushed: deploy only reads the store). The engines are
small ones defined here, so what the manifests must contain is known; the built-in
engines are checked for valid manifests only.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from modelbuild.api import Container, EngineModel, hookimpl
from modelbuild.runtime import kube
from modelbuild.runtime.kube_yaml import dump_all
from support import EXAMPLES, age, error_line, require_module

MULTI = "registry.example.com/team/tiny:1"
SINGLE = "registry.example.com/team/tiny-single:1"
LOCAL = "tiny:1"
NAME = "tiny-llama-multi"  # the multi-platform example's NAME, and so its Kubernetes name
# 1.33: image volumes beta (off by default); 1.35: on by default. kubernetes-validate bundles both.
KUBERNETES = ("1.33", "1.35")
KSERVE_SCHEMA = Path(__file__).resolve().parent / "data" / "kserve" / "inferenceservice-v1beta1.schema.json"
CSI_DRIVER = "model.csi.modelpack.org"  # modelpack/model-csi-driver: charts/.../values.yaml serviceName
CSI_REFERENCE = "model.csi.modelpack.org/reference"  # pkg/config/config.go: ParameterKeyReference


# -- engines whose answers the tests know ----------------------------------------------------------
class GgufServer:
    """Serves gguf on cpu and cuda; has a config file and an environment."""

    name = "test-gguf"
    formats = ("gguf",)
    targets = ("cpu", "cuda")
    protocol = "openai"
    install = "pip install test-gguf"
    default_port = 8080
    parameters = {"threads": "CPU threads"}

    def accepts(self, model):
        return None if model.format == "gguf" else f"test-gguf loads gguf; this variant is {model.format}"

    def installed(self):
        return "it is never installed here: deploy must not care"

    def launch(self, model, *, host, port):
        raise AssertionError("deploy never launches")

    def container(self, model, *, port):
        flags = (f"--{k}={v}" for k, v in model.params.items())
        args = ("--model", str(model.weight_path), "--port", str(port), *flags)
        return Container(image="example.invalid/gguf-server:1.0", port=port, readiness="/health", liveness="/live",
                         protocol="openai", args=args, env={"GGUF_SERVER_LOG": "info"},
                         files={"/etc/gguf-server/settings.json": json.dumps({"name": model.name}) + "\n",
                                "/etc/gguf-server/extra/settings.json": "second: file\n"},
                         accelerator="nvidia.com/gpu" if model.target == "cuda" else "", startup_seconds=95)


class SafetensorsServer:
    """Serves safetensors on GPUs, from the model directory; wants /dev/shm."""

    name = "test-st"
    formats = ("safetensors",)
    targets = ("cuda", "rocm")
    protocol = "openai"
    install = "pip install test-st"
    default_port = 8000
    parameters: dict[str, str] = {}

    def accepts(self, model):
        if model.format != "safetensors":
            return f"test-st loads safetensors; this variant is {model.format}"
        return None if model.target in self.targets else f"test-st runs on cuda or rocm, not {model.target or 'a CPU'}"

    def installed(self):
        return "never here"

    def launch(self, model, *, host, port):
        raise AssertionError("deploy never launches")

    def container(self, model, *, port):
        gpu = {"cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu"}.get(model.target, "")
        return Container(image=f"example.invalid/st-server:2-{model.target}", port=port, readiness="/v1/models",
                         liveness="/health", protocol="openai", command=("st-server",),
                         args=("serve", str(model.path), "--port", str(port)), accelerator=gpu, shm=True)


class AnyServer(SafetensorsServer):
    """Runs every variant of the multi-platform example: deploy must prefer a GPU one."""

    name = "test-any"
    formats = ("gguf", "safetensors")
    targets = ("cpu", "cuda", "rocm")

    def accepts(self, model):
        return None


class OnnxServer(GgufServer):
    """Runs none of the multi-platform example's variants."""

    name = "test-onnx"
    formats = ("onnx",)
    targets = ("cpu",)


class Engines:
    @hookimpl
    def modelbuild_register_engines(self, registry):
        for engine in (GgufServer(), SafetensorsServer(), AnyServer(), OnnxServer()):
            registry.add(engine)


@pytest.fixture
def deploy(mb, monkeypatch, artifacts):
    """``deploy(*args)``: ``modelbuild deploy ARGS`` in this process against the module's
    store, with the engines above installed."""
    import modelbuild.plugins as plugins

    original = plugins.make_plugin_manager
    monkeypatch.setattr(plugins, "make_plugin_manager",
                        lambda extra_plugins=(), **kw: original([*extra_plugins, Engines()], **kw))
    return lambda *args: mb("--home", str(artifacts["home"]), "deploy", *args)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Any]:
    """The multi-platform example (cpu, cuda, rocm) and tiny-llama, built into one store;
    each variant's digest and memory estimate as ``inspect --json`` reports them."""
    from modelbuild.cli import main
    from modelbuild.testing import build_with

    root = tmp_path_factory.mktemp("deploy")
    shutil.copytree(EXAMPLES, root / "examples")
    for path in (root / "examples").rglob("*"):
        if path.is_file():
            age(path)
    home = root / "home"
    build_with(root / "examples" / "multi-platform" / "Modelfile", home, tags=[MULTI])
    build_with(root / "examples" / "tiny-llama" / "Modelfile", home, tags=[SINGLE, LOCAL])
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        assert main(["--home", str(home), "inspect", MULTI, "--json"]) == 0
    variants = {v["target"]: v for v in json.loads(shown.getvalue())["variants"]}
    return {"home": home, "variants": variants}


# -- validators --------------------------------------------------------------------------------
def load_all(text: str) -> list[dict[str, Any]]:
    yaml = require_module("yaml", "pip install pyyaml (kubernetes-validate depends on it)")
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def validate_kubernetes(docs: list[dict[str, Any]]) -> None:
    """Every document against Kubernetes' schemas, strictly, for each version in KUBERNETES."""
    kv = require_module("kubernetes_validate", "pip install kubernetes-validate")
    for doc in docs:
        for version in KUBERNETES:
            kv.validate(doc, version, strict=True)


def strict(node: Any) -> Any:
    """A CRD schema as the API server applies it with strict field validation: an object
    schema that lists properties, and does not say to keep unknown fields, refuses others."""
    if isinstance(node, dict):
        if node.get("properties") and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)
    return node


@functools.cache
def kserve_validator() -> Any:
    import jsonschema

    return jsonschema.Draft7Validator(strict(json.loads(KSERVE_SCHEMA.read_text())))


def kserve_errors(doc: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in kserve_validator().iter_errors(doc)]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {doc["kind"]: doc for doc in docs}
    assert len(found) == len(docs), [d["kind"] for d in docs]
    return found


def node_matches(terms: list[dict[str, Any]], labels: dict[str, str]) -> bool:
    """Kubernetes' node selector semantics: terms ORed, a term's expressions ANDed; ``Gt``
    and ``Lt`` compare the label's value as an integer, a missing label never matches."""
    def holds(e: dict[str, Any]) -> bool:
        value = labels.get(e["key"])
        if value is None:
            return False
        if e["operator"] == "In":
            return value in e["values"]
        (bound,) = e["values"]
        return int(value) > int(bound) if e["operator"] == "Gt" else int(value) < int(bound)

    return any(all(holds(e) for e in term["matchExpressions"]) for term in terms)


# -- the YAML text ------------------------------------------------------------------------------------
TRICKY = ["true", "True", "yes", "on", "Off", "y", "N", "null", "~", "", "1.0", "-1", "0x1F", "1_000", "1:20",
          "2001-12-14", ".inf", "=", "<<", "@x", "--port", "-m", "--ctx=4", "a: b", "a:b", "key:", "# x", "a #b",
          "x y", " lead", "trail ", "multi\nline\n", "x\n\n", "\nlead", "  a\nb", "a\n  b\n", "a\n \nb", "\tx\ny",
          "ü", "\u2028", "x\x85y", "\x00", "\ufeff", "'q'", '"q"', "\\", "-", "---", "...", "%x", "!x", "&a", "*a",
          "|", "> x", "[x]", "{x}", "a,b", "1280Mi", "500m", "1E", "1e3", ".5", "+1", "0o7", "😀"]


def test_yaml_reads_back_exactly_as_written():
    doc = {"strings": TRICKY, "keys": {s: s for s in TRICKY if s}, "other": [None, True, False, 0, -3, {}, [],
                                                                            [[1, [2]], {"a": [{"b": "c\nd\n"}]}]]}
    text = dump_all([doc, {"second": 1}], ["a header", "two\nlines"])
    assert text.startswith("# a header\n# two lines\n---\n")
    assert load_all(text) == [doc, {"second": 1}]


def test_yaml_is_block_style_with_bare_words_where_safe():
    text = dump_all([{"args": ["--port", "8080"], "resources": {"limits": {"memory": "1280Mi", "nvidia.com/gpu": 1}},
                      "data": {"settings.json": "{}\n"}}])
    assert text == ('---\nargs:\n- --port\n- "8080"\nresources:\n  limits:\n    memory: 1280Mi\n'
                    '    nvidia.com/gpu: 1\ndata:\n  settings.json: |\n    {}\n')


# -- the rules, without an artifact ---------------------------------------------------------------------
def test_memory_request_is_the_published_rule():
    need = kube.MemoryNeed(weights=10 * 2**30, kv_cache=2 * 2**30, context=8192)
    # 12 GiB x 1.25 = 15 GiB, + 1 GiB for the engine = 16 GiB; + 1 GiB with /dev/shm
    assert kube.memory_request(need) == 16 * 2**30 and kube.quantity(kube.memory_request(need)) == "16Gi"
    assert kube.memory_request(need, shm=True) == 17 * 2**30
    small = kube.MemoryNeed(weights=266_816)
    assert kube.memory_request(small) == 1280 * 2**20 >= 266_816 * 1.25 + 2**30  # rounded up to 256 MiB
    assert kube.quantity(1280 * 2**20) == "1280Mi"


@pytest.mark.parametrize("constraints", ["cuda>=12.1 compute>=8.0", "cuda>12.4", "cuda=12.2", "cuda<=12.3",
                                         "cuda<13.0 compute>=9.0", "cuda>=12 compute<8.6", "compute=8.9"])
def test_cuda_affinity_admits_exactly_the_nodes_the_constraints_admit(constraints):
    from modelbuild.targets import Stage, parse_constraint
    from modelbuild.testing import plugin_host

    stage = Stage("cuda", "cuda", "amd64", tuple(parse_constraint(c) for c in constraints.split()))
    fields = plugin_host().targets.get("cuda").scheduling(stage)
    terms = fields["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    checked = 0
    for cuda in [(11, 8), (12, 0), (12, 1), (12, 2), (12, 3), (12, 4), (12, 9), (13, 0), (13, 1)]:
        for compute in [(7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0)]:
            # GPU feature discovery's labels (NVIDIA/k8s-device-plugin docs/gpu-feature-discovery)
            labels = {"nvidia.com/cuda.runtime-version.major": str(cuda[0]),
                      "nvidia.com/cuda.runtime-version.minor": str(cuda[1]),
                      "nvidia.com/gpu.compute.major": str(compute[0]), "nvidia.com/gpu.compute.minor": str(compute[1])}
            facts = {"cuda": cuda, "compute": compute}
            wanted = all(c.admits(facts[c.key]) for c in stage.constraints)
            assert node_matches(terms, labels) == wanted, (constraints, cuda, compute)
            checked += wanted
    assert checked  # some node fits every constraint set above


def test_targets_without_labels_to_match_add_no_affinity():
    from modelbuild.targets import Stage, parse_constraint
    from modelbuild.testing import plugin_host

    targets = plugin_host().targets
    rocm = Stage("rocm", "rocm", "amd64", (parse_constraint("rocm>=6.0"), parse_constraint("gfx=gfx942,gfx90a")))
    assert targets.get("rocm").scheduling(rocm) == {}
    assert targets.get("cpu").scheduling(Stage("cpu", "cpu", "amd64")) == {}
    assert targets.get("cuda").scheduling(Stage("cuda", "cuda", "amd64")) == {}


def test_a_target_without_the_scheduling_member_still_deploys():
    from types import SimpleNamespace

    from modelbuild.commands.deploy import scheduling

    class Bare:  # a third-party target written before the member existed
        name = "npu"

    variant = SimpleNamespace(target="npu", annotations={}, stage="npu")
    assert scheduling(SimpleNamespace(targets={"npu": Bare()}), variant, "npu") == {}


def test_engine_files_become_a_config_map_mounted_file_by_file():
    model = EngineModel(name="m", path=kube.MODELS_ROOT / "m", weights=("m.gguf",), format="gguf", target="cpu")
    c = GgufServer().container(model, port=8080)
    w = kube.Workload(name="m", reference="r.example/m@sha256:" + "a" * 64, digest="sha256:" + "a" * 64,
                      mount_path=kube.MODELS_ROOT / "m", server="test-gguf")
    docs = by_kind(kube.deployment(w, c))
    data = docs["ConfigMap"]["data"]
    mounts = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    mounted = {m["mountPath"]: data[m["subPath"]] for m in mounts if m["name"] == "engine-files"}
    assert mounted == dict(c.files)  # two files of one name: two keys, each at its own path
    validate_kubernetes(list(docs.values()))


# -- the command on built artifacts -------------------------------------------------------------------------
def engine_for(target: str) -> str:
    return "test-gguf" if target == "cpu" else "test-st"


@pytest.mark.parametrize("kind", ["--kubernetes", "--csi"])
@pytest.mark.parametrize("target", ["cpu", "cuda", "rocm"])
def test_manifests_validate_and_say_what_they_must(deploy, artifacts, kind, target):
    variant = artifacts["variants"][target]
    run = deploy(MULTI, "--platform", target, "--engine", engine_for(target), kind)
    assert run.rc == 0, run.err
    docs = load_all(run.out)
    validate_kubernetes(docs)
    found = by_kind(docs)
    pod = found["Deployment"]["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    volume = next(v for v in pod["volumes"] if v["name"] == "model")
    pinned = f"registry.example.com/team/tiny@{variant['digest']}"  # the variant's manifest, not the index
    if kind == "--csi":
        assert volume == {"name": "model", "csi": {"driver": CSI_DRIVER, "volumeAttributes": {CSI_REFERENCE: pinned}}}
    else:
        assert volume == {"name": "model", "image": {"reference": pinned, "pullPolicy": "IfNotPresent"}}
    # mounted where the engine was told the model is (EngineModel.path: the engine echoes it)
    (mount,) = [m for m in server["volumeMounts"] if m["name"] == "model"]
    assert mount == {"name": "model", "mountPath": f"/models/{NAME}", "readOnly": True}
    assert any(a == mount["mountPath"] or a.startswith(mount["mountPath"] + "/") for a in server["args"])
    # memory covers the estimate inspect reports, as request and limit
    limits, requests = server["resources"]["limits"], server["resources"]["requests"]
    assert requests["memory"] == limits["memory"]
    assert quantity_bytes(requests["memory"]) >= variant["memory"]["total"] * 1.25 + 2**30
    engine = {"cpu": GgufServer, "cuda": SafetensorsServer, "rocm": SafetensorsServer}[target]
    port = engine.default_port
    assert server["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    probes = {k: server[k]["httpGet"] for k in ("readinessProbe", "livenessProbe", "startupProbe")}
    ready, live = ("/health", "/live") if target == "cpu" else ("/v1/models", "/health")
    assert probes == {"readinessProbe": {"path": ready, "port": port}, "livenessProbe": {"path": live, "port": port},
                      "startupProbe": {"path": live, "port": port}}
    assert found["Service"]["spec"]["ports"][0]["port"] == port
    gpu = {"cpu": None, "cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu"}[target]
    assert {k for k in limits if k != "memory"} == ({gpu} if gpu else set())
    if gpu:
        assert limits[gpu] == 1
        assert {"key": gpu, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    affinity = pod.get("affinity", {})
    assert bool(affinity) == (target == "cuda")  # only cuda has labels to match (GPU feature discovery's)
    meta = found["Deployment"]["spec"]["template"]["metadata"]
    assert meta["labels"] == {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "modelbuild"}
    assert meta["annotations"]["modelbuild.dev/digest"] == variant["digest"]


def quantity_bytes(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(text[:-2]) * units[text[-2:]]


def test_the_gguf_engines_files_and_startup_time_reach_the_pod(deploy):
    run = deploy(MULTI, "--platform", "cpu", "--engine", "test-gguf", "--param", "threads=4", "--port", "9000")
    assert run.rc == 0, run.err
    found = by_kind(load_all(run.out))
    (server,) = found["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert server["args"] == ["--model", f"/models/{NAME}/model.gguf", "--port", "9000", "--threads=4"]
    assert server["env"] == [{"name": "GGUF_SERVER_LOG", "value": "info"}]
    assert server["startupProbe"]["failureThreshold"] * server["startupProbe"]["periodSeconds"] >= 95
    data = found["ConfigMap"]["data"]
    mounted = {m["mountPath"]: data[m["subPath"]] for m in server["volumeMounts"] if m["name"] == "engine-files"}
    assert mounted == {"/etc/gguf-server/settings.json": json.dumps({"name": NAME}) + "\n",
                       "/etc/gguf-server/extra/settings.json": "second: file\n"}


def test_a_shm_engine_gets_a_memory_backed_dev_shm_and_the_memory_for_it(deploy, artifacts):
    run = deploy(MULTI, "--platform", "cuda", "--engine", "test-st")
    pod = by_kind(load_all(run.out))["Deployment"]["spec"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    total = artifacts["variants"]["cuda"]["memory"]["total"]
    assert quantity_bytes(pod["containers"][0]["resources"]["requests"]["memory"]) >= total * 1.25 + 2 * 2**30


def test_the_header_says_what_the_cluster_needs(deploy, artifacts):
    run = deploy(MULTI, "--platform", "cpu", "--engine", "test-gguf")
    head = [line for line in run.out.splitlines() if line.startswith("#")]
    assert head[0] == f"# modelbuild deploy: {MULTI} [cpu]"
    assert any("ImageVolume feature gate (beta since 1.33, on by default since 1.35)" in line for line in head)
    memory = artifacts["variants"]["cpu"]["memory"]
    assert any(line.startswith("# memory: weights ") and f"at context {memory['contextLength']}" in line
               for line in head)


@pytest.mark.parametrize("engine, target", [("test-any", "cuda"), ("test-gguf", "cpu"), ("test-st", "cuda")])
def test_with_an_engine_deploy_picks_the_variant_it_runs_gpu_first(deploy, artifacts, engine, target):
    run = deploy(MULTI, "--engine", engine)
    assert run.rc == 0, run.err
    meta = by_kind(load_all(run.out))["Deployment"]["metadata"]
    assert meta["annotations"]["modelbuild.dev/digest"] == artifacts["variants"][target]["digest"]
    assert meta["annotations"]["modelbuild.dev/target"] == target


def test_a_multi_platform_artifact_needs_platform_or_engine(deploy):
    line = error_line(deploy(MULTI), 2)
    assert line == (f"modelbuild: error: {MULTI} has 3 variants: cpu (linux/amd64), cuda (linux/amd64, cuda>=12.1 "
                    "compute>=8.0), rocm (linux/amd64, rocm>=6.0 gfx=gfx942,gfx90a) (choose one with --platform NAME, "
                    "or name an --engine to pick the one it runs)")


def test_an_engine_that_does_not_serve_the_variant_is_choose_engines_error(deploy):
    line = error_line(deploy(MULTI, "--platform", "cpu", "--engine", "test-st"), 2)
    assert line.startswith("modelbuild: error: engine test-st cannot serve this variant (gguf q8_0 for cpu): "
                           "test-st loads safetensors; this variant is gguf (engines that serve it: ")
    assert "test-gguf" in line


def test_an_engine_that_runs_no_variant_says_why_for_each(deploy):
    line = error_line(deploy(MULTI, "--engine", "test-onnx"), 2)
    assert line == (f"modelbuild: error: engine test-onnx runs none of the variants of {MULTI}: cpu (linux/amd64): "
                    "test-onnx loads onnx, not gguf; cuda (linux/amd64, cuda>=12.1 compute>=8.0): test-onnx runs cpu; "
                    "rocm (linux/amd64, rocm>=6.0 gfx=gfx942,gfx90a): test-onnx runs cpu (choose one with --platform "
                    "NAME and an engine that runs it)")


def test_a_local_tag_needs_a_reference_a_cluster_can_pull(deploy, artifacts):
    line = error_line(deploy(LOCAL, "--engine", "test-any"), 2)
    assert line == ("modelbuild: error: tiny:1 names no registry, so a cluster cannot pull it (push it: modelbuild "
                    "push tiny:1 registry.example.com/team/NAME:TAG, then add --reference "
                    "registry.example.com/team/NAME)")
    run = deploy(LOCAL, "--engine", "test-any", "--reference", "registry.example.com/team/pushed:9")
    assert run.rc == 0, run.err
    single = deploy(SINGLE, "--engine", "test-any")
    digest = by_kind(load_all(single.out))["Deployment"]["metadata"]["annotations"]["modelbuild.dev/digest"]
    volume = by_kind(load_all(run.out))["Deployment"]["spec"]["template"]["spec"]["volumes"][0]
    assert volume["image"]["reference"] == f"registry.example.com/team/pushed@{digest}"  # tag replaced by the digest
    assert error_line(deploy(LOCAL, "--reference", "pushed"), 2) == (
        "modelbuild: error: --reference pushed: names no registry (write it as registry.example.com/team/model)")


@pytest.mark.parametrize("args, message", [
    (["--name", "Tiny_Llama"], "--name Tiny_Llama: not a Kubernetes name (lowercase letters, digits and '-', a letter "
                               "first, at most 63 characters)"),
    (["--replicas", "0"], "--replicas 0: a replica count is at least 1"),
    (["--port", "70000"], "--port 70000: a port is 1 to 65535"),
    (["--engine", "test-ggfu"], "--engine test-ggfu: no such engine; did you mean test-gguf? (installed engine "
                                "plugins: "),
])
def test_bad_options_are_one_line_usage_errors(deploy, args, message):
    assert error_line(deploy(MULTI, "--platform", "cpu", *args), 2).startswith(f"modelbuild: error: {message}")


def test_output_file_is_written_whole_and_stdout_stays_empty(deploy, tmp_path):
    out = tmp_path / "out" / "tiny.yaml"
    out.parent.mkdir()
    run = deploy(MULTI, "--platform", "cpu", "--engine", "test-gguf", "-o", str(out))
    assert run.rc == 0 and run.out == "", run.err
    assert out.read_text() == deploy(MULTI, "--platform", "cpu", "--engine", "test-gguf").out
    assert [p.name for p in out.parent.iterdir()] == ["tiny.yaml"]  # no temporary file left behind
    line = error_line(deploy(MULTI, "--platform", "cpu", "--engine", "test-gguf", "-o", str(tmp_path / "no" / "x")), 2)
    assert line == f"modelbuild: error: -o {tmp_path / 'no' / 'x'}: no directory {tmp_path / 'no'}"


# -- KServe --------------------------------------------------------------------------------------------------
def test_the_kserve_validator_bites():
    good = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "m"},
            "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "x:1"}]}}}
    assert kserve_errors(good) == []
    unknown = copy.deepcopy(good)
    unknown["spec"]["predictor"]["containers"][0]["volumeMount"] = []  # a typo the API server would refuse
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["predictor"]["minReplicas"] = "one"
    missing = copy.deepcopy(good)
    del missing["spec"]["predictor"]
    for broken in (unknown, wrong_type, missing):
        assert kserve_errors(broken), broken


def test_kserve_serves_a_hugging_face_checkpoint_with_its_own_runtime(deploy, artifacts):
    variant = artifacts["variants"]["cuda"]
    run = deploy(MULTI, "--platform", "cuda", "--kserve")
    assert run.rc == 0, run.err
    (isvc,) = load_all(run.out)
    assert kserve_errors(isvc) == []
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["modelFormat"] == {"name": "huggingface"}
    assert predictor["model"]["runtime"] == "kserve-huggingfaceserver"
    # KServe's runtimes read /mnt/models (DefaultModelLocalMountPath); the volume pins the variant
    assert predictor["model"]["volumeMounts"] == [{"name": "model", "mountPath": "/mnt/models", "readOnly": True}]
    assert predictor["volumes"] == [{"name": "model", "image": {
        "reference": f"registry.example.com/team/tiny@{variant['digest']}", "pullPolicy": "IfNotPresent"}}]
    assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "affinity" in predictor
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert "storageUri" not in json.dumps(isvc)
    line = error_line(deploy(MULTI, "--platform", "cuda", "--kserve", "--port", "9000"), 2)
    assert line == ("modelbuild: error: --port is for an engine's container; KServe's kserve-huggingfaceserver serves "
                    "this variant (name the engine with --engine NAME)")


@pytest.mark.parametrize("target", ["cpu", "cuda", "rocm"])
def test_kserve_runs_an_engines_container_as_a_custom_predictor(deploy, artifacts, target):
    run = deploy(MULTI, "--platform", target, "--kserve", "--engine", engine_for(target))
    assert run.rc == 0, run.err
    docs = load_all(run.out)
    found = by_kind(docs)
    isvc = found["InferenceService"]
    assert kserve_errors(isvc) == []
    if "ConfigMap" in found:
        validate_kubernetes([found["ConfigMap"]])
    (server,) = isvc["spec"]["predictor"]["containers"]
    assert server["name"] == "kserve-container"
    (mount,) = [m for m in server["volumeMounts"] if m["name"] == "model"]
    assert mount["mountPath"] == "/mnt/models"
    assert any(a.startswith("/mnt/models") for a in server["args"])  # EngineModel.path was /mnt/models
    volume = isvc["spec"]["predictor"]["volumes"][0]
    assert volume["image"]["reference"] == f"registry.example.com/team/tiny@{artifacts['variants'][target]['digest']}"


# -- the built-in engines --------------------------------------------------------------------------------
@pytest.mark.parametrize("engine, target", [("llama.cpp", "cpu"), ("vllm", "cuda"), ("tgi", "rocm")])
@pytest.mark.parametrize("kind", ["--kubernetes", "--csi", "--kserve"])
def test_builtin_engines_give_valid_manifests(deploy, engine, target, kind):
    run = deploy(MULTI, "--platform", target, "--engine", engine, kind)
    assert run.rc == 0, run.err
    for doc in load_all(run.out):
        if doc["kind"] == "InferenceService":
            assert kserve_errors(doc) == []
        else:
            validate_kubernetes([doc])
