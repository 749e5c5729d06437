"""The runtime description a build attaches to every variant (docs/spec/runtime.md §4): its
JSON read as hostile input, the ``RUNTIME`` directive and its located errors, a multi-platform
build where each variant gets one (engines by default and by ``RUNTIME``), the variant's
digests untouched by it, the cache, the store's referrer records, and ``prune``.

Engines are small real plugins registered for the build (``zz-…``: after the built-in ones in
the registry's order); the built-in engines are used where a test says so."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from modelbuild.api import hookimpl
from modelbuild.digests import canonical_json, sha256_bytes
from modelbuild.errors import ModelfileError, PluginError
from modelbuild.runtime import description as rd
from modelbuild.store import Store
from modelbuild.testing import build_with, plugin_host
from support import EXAMPLES

TINY = EXAMPLES / "tiny-llama" / "model"
MULTI = (EXAMPLES / "multi-platform" / "Modelfile").read_text()
HEAD = f"FROM {TINY}\nNAME rt\nCONFIG config.json tokenizer.json\nMODEL model.safetensors\n"
STAGES = ("TARGET cpu\nCONVERT gguf\nQUANTIZE q8_0\n"
          "TARGET cuda cuda>=12.1 compute>=8.0\nQUANTIZE bfloat16\n"
          "TARGET rocm rocm>=6.0 gfx=gfx942,gfx90a\nQUANTIZE float16\n")


# -- small real engine plugins ----------------------------------------------------------------
class FakeEngine:
    """An engine as the Protocol has it; a build only asks ``accepts`` and reads ``parameters``."""

    protocol, install, default_port = "openai", "nothing to install", 8000

    def __init__(self, name: str, formats: tuple[str, ...], targets: tuple[str, ...],
                 parameters: dict[str, str] | None = None, answer: object = "") -> None:
        self.name, self.formats, self.targets = name, formats, targets
        self.parameters = parameters or {}
        self.answer = answer  # what accepts() returns for a variant it takes ("": None)
        self.asked: list = []

    def accepts(self, model):
        self.asked.append(model)
        if model.format not in self.formats:
            return f"{self.name} runs {'/'.join(self.formats)}; this variant is {model.format or 'of no known format'}"
        if model.target and model.target not in self.targets:
            return f"{self.name} has no {model.target} build"
        return None if self.answer == "" else self.answer

    def installed(self):
        return None

    def launch(self, model, *, host, port):
        raise AssertionError("a build never launches an engine")

    def container(self, model, *, port):
        raise AssertionError("a build never renders a container")


class Engines:
    def __init__(self, *engines: FakeEngine) -> None:
        self.engines = engines

    @hookimpl
    def modelbuild_register_engines(self, registry):
        for engine in self.engines:
            registry.add(engine)


def gguf_engine(**kw) -> FakeEngine:
    return FakeEngine("zz-gguf", ("gguf",), ("cpu",), {"threads": "CPU threads"}, **kw)


def st_engine(**kw) -> FakeEngine:
    return FakeEngine("zz-st", ("safetensors",), ("cuda", "rocm"), {"dtype": "dtype", "tp": "GPUs"}, **kw)


def any_engine() -> FakeEngine:
    return FakeEngine("zz-any", ("gguf", "safetensors"), ("cpu", "cuda", "rocm"), {"threads": "CPU threads"})


PLUGIN = Engines(gguf_engine(), st_engine(), any_engine())


def build(tmp_path: Path, text: str, home: Path, *plugins, name: str = "Modelfile", **options):
    modelfile = tmp_path / name
    modelfile.write_text(text)
    return build_with(modelfile, home, *plugins, **options)


def descriptions(home: Path, result) -> dict[str | None, rd.RuntimeDescription]:
    """Each variant's description, by stage, as ``modelbuild run`` finds it."""
    store = Store(home / "store")
    variants = result.variants or [{"stage": None, "digest": result.digest}]
    warnings: list[str] = []
    found = {v["stage"]: rd.find_description(store, v["digest"], warn=warnings.append) for v in variants}
    assert not warnings
    return found


def names(description: rd.RuntimeDescription) -> list[str]:
    return [e.name for e in description.engines]


# -- the JSON, read as hostile input ------------------------------------------------------------
FULL = rd.RuntimeDescription(
    engines=(rd.EngineEntry("llama.cpp", {"n_gpu_layers": "99"}), rd.EngineEntry("zz-other")),
    context_length=4096, format="gguf", quantization="q4_k_m", precision="", target="cpu", accelerator="",
    resources=rd.Resources(4_000_000, 512, 4_000_512, 4096, "f16"))


def test_json_round_trip_is_canonical_and_has_the_documented_shape():
    data = FULL.to_json()
    assert data == canonical_json(json.loads(data))  # sorted keys, no whitespace
    assert json.loads(data) == {
        "version": "1.0", "engines": [{"name": "llama.cpp", "params": {"n_gpu_layers": "99"}},
                                      {"name": "zz-other", "params": {}}],
        "contextLength": 4096, "format": "gguf", "quantization": "q4_k_m", "precision": "", "target": "cpu",
        "accelerator": "", "resources": {"weightsBytes": 4_000_000, "kvCacheBytes": 512, "totalBytes": 4_000_512,
                                         "contextLength": 4096, "kvCacheType": "f16"}}
    assert rd.parse(data, "test") == FULL
    bare = rd.RuntimeDescription()
    assert rd.parse(bare.to_json(), "test") == bare and json.loads(bare.to_json())["resources"] is None


def test_a_later_minor_version_with_new_keys_is_read_and_a_new_major_version_is_refused():
    doc = json.loads(FULL.to_json())
    later = {**doc, "version": "1.7", "gpuCount": 2, "resources": {**doc["resources"], "activationBytes": 1}}
    assert rd.parse(json.dumps(later).encode(), "test").resources == FULL.resources
    with pytest.raises(rd.DescriptionError, match=r"^test: version '2.0' is not one this modelbuild reads"):
        rd.parse(json.dumps({**doc, "version": "2.0"}).encode(), "test")


HOSTILE = {
    "not JSON": (b"{", "is not valid JSON"),
    "a list": (b"[]", "is a list, not a JSON object"),
    "nested past the recursion limit": (b'{"engines":' + b"[" * 30_000 + b"]" * 30_000 + b"}", "not valid JSON"),
    "too large": (b'{"version":"1.0","pad":"' + b"x" * rd.MAX_BYTES + b'"}', "more than the 65536"),
    "no version": (b'{"engines":[]}', "version is missing"),
    "a version that is a number": (b'{"version":1}', "version is not a string"),
    "engines not a list": (b'{"version":"1.0","engines":{}}', "engines is not a list"),
    "too many engines": (json.dumps({"version": "1.0", "engines": [{"name": f"e{i}"} for i in range(17)]}).encode(),
                         "more than 16 engines"),
    "an engine without a name": (b'{"version":"1.0","engines":[{}]}', "engines[0]: name is missing"),
    "a parameter that is a number": (b'{"version":"1.0","engines":[{"name":"e","params":{"n":99}}]}',
                                     "parameter 'n' is not a string"),
    "a boolean context": (b'{"version":"1.0","contextLength":true}', "contextLength is not a whole number"),
    "a huge context": (b'{"version":"1.0","contextLength":' + b"9" * 400 + b"}", "contextLength is not a whole"),
    "a negative byte count": (b'{"version":"1.0","resources":{"weightsBytes":-1,"kvCacheBytes":0,"totalBytes":0,'
                              b'"contextLength":1,"kvCacheType":"f16"}}', "resources.weightsBytes is not a whole"),
    "resources without a context": (b'{"version":"1.0","resources":{"weightsBytes":1,"kvCacheBytes":0,'
                                    b'"totalBytes":1,"kvCacheType":"f16"}}', "resources.contextLength"),
    "a format that is an object": (b'{"version":"1.0","format":{}}', "format is not a string"),
    "a very long target": (json.dumps({"version": "1.0", "target": "t" * 200}).encode(), "target is longer than 128"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_a_hostile_description_is_one_line_naming_it(case):
    data, expected = HOSTILE[case]
    with pytest.raises(rd.DescriptionError) as info:
        rd.parse(data, "the description")
    message = str(info.value)
    assert expected in message and message.startswith("the description") and "\n" not in message
    assert len(message) < 300


def test_the_referrer_manifest_is_an_oci_artifact_without_timestamps():
    subject = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "a" * 64,
               "size": 1234, "annotations": {"not": "carried"}}
    data = rd.referrer_manifest(subject, FULL.to_json())
    assert data == rd.referrer_manifest(subject, FULL.to_json())  # the same build, the same bytes
    assert json.loads(data) == {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.modelbuild.runtime.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256_bytes(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/vnd.modelbuild.runtime.v1+json", "digest": sha256_bytes(FULL.to_json()),
                    "size": len(FULL.to_json())}],
        "subject": {"mediaType": subject["mediaType"], "digest": subject["digest"], "size": 1234}}
    assert rd.EMPTY_DESCRIPTOR["digest"] == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


# -- a multi-platform build --------------------------------------------------------------------
def test_every_variant_of_the_multi_platform_example_gets_a_description_by_default(tmp_path):
    home = tmp_path / "home"
    text = MULTI.replace("FROM ../tiny-llama/model", f"FROM {TINY}")
    result = build(tmp_path, text, home, PLUGIN)
    found = descriptions(home, result)
    assert set(found) == {"cpu", "cuda", "rocm"}
    cpu, cuda, rocm = found["cpu"], found["cuda"], found["rocm"]
    host_order = plugin_host(PLUGIN).engines.names()
    for d in found.values():
        assert names(d) == [n for n in host_order if n in names(d)]  # the engine registry's order
        assert all(e.params == {} for e in d.engines) and d.version == "1.0"
    assert {"zz-gguf", "zz-any"} <= set(names(cpu)) and "zz-st" not in names(cpu)
    assert {"zz-st", "zz-any"} <= set(names(cuda)) and "zz-gguf" not in names(cuda)
    assert (cpu.format, cpu.quantization, cpu.target, cpu.accelerator) == ("gguf", "q8_0", "cpu", "")
    assert (cuda.format, cuda.precision, cuda.target, cuda.accelerator) == ("safetensors", "bfloat16", "cuda",
                                                                            "nvidia.com/gpu")
    assert (rocm.precision, rocm.target, rocm.accelerator) == ("float16", "rocm", "amd.com/gpu")
    # the memory figure: the weight layers' bytes, and the KV cache at the model's own context
    # (config.json: 2 layers, 2 KV heads of 16, 256 positions), f16: 2 × 256 × 2 × (16 + 16) × 2
    store = Store(home / "store")
    for v in result.variants:
        weights = sum(la["size"] for la in v["layers"] if ".weight.v1." in la["mediaType"])
        assert found[v["stage"]].resources == rd.Resources(weights, 65536, weights + 65536, 256, "f16")
        assert found[v["stage"]].context_length == 256
        manifest = store.read_json(v["digest"])
        assert "subject" not in manifest and not any("runtime" in k for k in manifest.get("annotations", {}))


def test_runtime_lines_name_engines_per_stage_and_never_change_a_digest(tmp_path):
    home = tmp_path / "home"
    plain = build(tmp_path, HEAD + STAGES, home, PLUGIN)
    lines = HEAD + ("RUNTIME context=4096\nRUNTIME zz-any threads=1\n"
                    "TARGET cpu\nCONVERT gguf\nQUANTIZE q8_0\nRUNTIME zz-gguf threads=4\nRUNTIME zz-any threads=8\n"
                    "TARGET cuda cuda>=12.1 compute>=8.0\nQUANTIZE bfloat16\nRUNTIME zz-st dtype=bfloat16 tp=2\n"
                    "RUNTIME context=2048\n"
                    "TARGET rocm rocm>=6.0 gfx=gfx942,gfx90a\nQUANTIZE float16\n")
    named = build(tmp_path, lines, home, PLUGIN)
    # the variants and the index are the same artifact: only their referrers differ
    assert named.digest == plain.digest
    assert [(v["stage"], v["digest"]) for v in named.variants] == [(v["stage"], v["digest"]) for v in plain.variants]
    # only the manifest steps ran again (they write the descriptions), and the export that records them
    assert set(named.stats["executed"]) == {"export", "manifest:cpu", "manifest:cuda", "manifest:rocm"}
    found = descriptions(home, named)
    # a stage's line for an engine replaces the shared one in place; its new engines come after
    assert [e.as_dict() for e in found["cpu"].engines] == [{"name": "zz-any", "params": {"threads": "8"}},
                                                           {"name": "zz-gguf", "params": {"threads": "4"}}]
    assert [e.as_dict() for e in found["cuda"].engines] == [{"name": "zz-any", "params": {"threads": "1"}},
                                                            {"name": "zz-st", "params": {"dtype": "bfloat16", "tp": "2"}}]
    assert [e.as_dict() for e in found["rocm"].engines] == [{"name": "zz-any", "params": {"threads": "1"}}]
    assert (found["cpu"].context_length, found["cuda"].context_length, found["rocm"].context_length) == (4096, 2048,
                                                                                                         4096)
    assert found["cuda"].resources.context_length == 2048 and found["cuda"].resources.kv_cache == 2 * 2048 * 2 * 32 * 2
    # the store keeps one description per variant: this build's replaced the previous one
    store = Store(home / "store")
    for v in named.variants:
        listed = store.list_referrers(v["digest"])
        assert [d["artifactType"] for d in listed] == [rd.ARTIFACT_TYPE]


def test_an_identical_rebuild_is_all_cached_and_the_referrer_is_reproducible(tmp_path):
    text = HEAD + "RUNTIME zz-st dtype=float16\n"
    first = build(tmp_path, text, tmp_path / "a", PLUGIN)
    again = build(tmp_path, text, tmp_path / "a", PLUGIN)
    assert again.stats["executed"] == [] and again.digest == first.digest
    other = build(tmp_path, text, tmp_path / "b", PLUGIN)  # another store: the same bytes
    ref_a = Store(tmp_path / "a" / "store").list_referrers(first.digest)
    ref_b = Store(tmp_path / "b" / "store").list_referrers(other.digest)
    assert ref_a == ref_b and len(ref_a) == 1
    assert descriptions(tmp_path / "a", first)[None].engines == (rd.EngineEntry("zz-st", {"dtype": "float16"}),)
    # without stages: no target, no accelerator; the engines that accept it by default
    default = build(tmp_path, HEAD, tmp_path / "a", PLUGIN)
    d = descriptions(tmp_path / "a", default)[None]
    assert (d.target, d.accelerator, d.format) == ("", "", "safetensors")
    assert {"zz-st", "zz-any"} <= set(names(d)) and "zz-gguf" not in names(d)


def test_the_default_context_is_the_models_own_at_most_8192(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for name in ("tokenizer.json", "model.safetensors"):
        (ctx / name).write_bytes((TINY / name).read_bytes())
    config = json.loads((TINY / "config.json").read_text())
    (ctx / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 131072}))
    text = f"FROM {ctx}\nNAME long\nCONFIG config.json tokenizer.json\nMODEL model.safetensors\n"
    d = descriptions(tmp_path / "h", build(tmp_path, text, tmp_path / "h", PLUGIN))[None]
    assert d.context_length == rd.DEFAULT_CONTEXT == 8192
    assert d.resources.kv_cache == 2 * 8192 * 2 * 32 * 2
    d = descriptions(tmp_path / "h", build(tmp_path, text + "RUNTIME context=100000\n", tmp_path / "h", PLUGIN))[None]
    assert d.context_length == d.resources.context_length == 100000


def test_without_an_attention_shape_there_are_no_resources(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "model.safetensors").write_bytes((TINY / "model.safetensors").read_bytes())
    text = f"FROM {ctx}\nNAME bare\nMODEL model.safetensors\n"
    d = descriptions(tmp_path / "h", build(tmp_path, text, tmp_path / "h", PLUGIN))[None]
    assert d.resources is None and d.context_length is None
    d = descriptions(tmp_path / "h", build(tmp_path, text + "RUNTIME context=512\n", tmp_path / "h", PLUGIN))[None]
    assert d.resources is None and d.context_length == 512


def test_with_the_builtin_engines(tmp_path):
    host = plugin_host()
    if not {"llama.cpp", "vllm"} <= set(host.engines.names()):
        pytest.skip("the built-in engines llama.cpp and vllm are not installed")
    home = tmp_path / "home"
    text = HEAD + STAGES.replace("QUANTIZE q8_0\n", "QUANTIZE q8_0\nRUNTIME llama.cpp n_gpu_layers=0\n")
    result = build(tmp_path, text, home)
    found = descriptions(home, result)
    assert [e.as_dict() for e in found["cpu"].engines] == [{"name": "llama.cpp", "params": {"n_gpu_layers": "0"}}]
    assert "vllm" in names(found["cuda"]) and "llama.cpp" not in names(found["cuda"])
    with pytest.raises(ModelfileError) as info:
        build(tmp_path, HEAD + "RUNTIME llama.cpp\n", home)
    assert info.value.span.line == 5 and info.value.span.column == 9
    assert info.value.message.startswith("engine llama.cpp cannot serve this model (safetensors")


# -- located errors at plan time -----------------------------------------------------------------
ERRORS = {
    "unknown engine": (HEAD + "RUNTIME zz-gguff\n", "5:9: unknown engine zz-gguff (did you mean zz-gguf?)"),
    "undeclared parameter": (HEAD + "TARGET cpu\nCONVERT gguf\nRUNTIME zz-gguf thread=2\n",
                             "7:17: engine zz-gguf has no parameter thread (did you mean threads?)"),
    "undeclared parameter, nothing close": (HEAD + "RUNTIME zz-st speed=9\n",
                                            "5:15: engine zz-st has no parameter speed (its parameters: dtype, tp)"),
    "an engine of the stage that cannot serve it": (
        HEAD + "TARGET cpu\nCONVERT gguf\nRUNTIME zz-any\nRUNTIME zz-st dtype=f16\n",
        "8:9: engine zz-st cannot serve stage cpu (gguf for cpu): zz-st runs safetensors; this variant is gguf"),
    "a shared engine one stage cannot use": (
        HEAD + "RUNTIME zz-gguf\nTARGET cpu\nCONVERT gguf\nTARGET cuda cuda>=12.1\nQUANTIZE bfloat16\n",
        "5:9: engine zz-gguf cannot serve stage cuda (safetensors bfloat16 for cuda): zz-gguf runs gguf; this variant "
        "is safetensors (move the line into the TARGET stages it serves)"),
    "a target the engine has no build for": (
        HEAD + "TARGET cpu\nRUNTIME zz-st\n",
        "6:9: engine zz-st cannot serve stage cpu (gguf q8_0 for cpu): zz-st runs safetensors; this variant is gguf"),
    "the Modelfile's own QUANTIZATION is what the engine sees": (
        HEAD + "QUANTIZATION awq\nRUNTIME zz-picky\n",
        "6:9: engine zz-picky cannot serve this model (safetensors awq): zz-picky takes no awq"),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_runtime_errors_are_located_at_the_word(case, tmp_path):
    text, expected = ERRORS[case]
    picky = FakeEngine("zz-picky", ("safetensors",), ("cuda",), answer="zz-picky takes no awq")
    with pytest.raises(ModelfileError) as info:
        build(tmp_path, text, tmp_path / "home", PLUGIN, Engines(picky))
    assert info.value.render() == f"{tmp_path / 'Modelfile'}:{expected}"
    assert not (tmp_path / "home" / "store" / "referrers").exists()  # nothing was built


def test_names_and_values_are_bounded_where_they_are_written(tmp_path):
    with pytest.raises(ModelfileError) as info:
        build(tmp_path, HEAD + "RUNTIME " + "e" * 200 + "\n", tmp_path / "home", PLUGIN)
    assert info.value.render() == (f"{tmp_path / 'Modelfile'}:5:9: bad engine name {'e' * 60!r}… (200 characters) "
                                   "(an engine is named as `modelbuild plugins` lists it, e.g. llama.cpp)")
    with pytest.raises(ModelfileError) as info:  # a tab, from a build argument, would end up on a command line
        build(tmp_path, HEAD + "ARG V\nRUNTIME zz-st dtype=$V\n", tmp_path / "home", PLUGIN,
              build_args={"V": "float\t16"})
    assert info.value.render() == (f"{tmp_path / 'Modelfile'}:6:15: parameter dtype of zz-st has a bad value "
                                   "'float\\t16' (at most 1024 printable characters)")


def test_the_plan_shows_engines_what_the_stage_will_be(tmp_path):
    """A stage that converts and quantizes is shown to its engines as what it ends as: the
    converted format, one weight file of it, the quantization, the target."""
    engine = gguf_engine()
    build(tmp_path, HEAD + "TARGET cpu\nCONVERT gguf\nQUANTIZE q8_0\nRUNTIME zz-gguf threads=2\n",
          tmp_path / "home", Engines(engine, st_engine(), any_engine()))
    planned = engine.asked[0]
    assert (planned.format, planned.quantization, planned.target, planned.weights) == ("gguf", "q8_0", "cpu",
                                                                                      ("model.gguf",))
    assert dict(planned.params) == {"threads": "2"} and "config.json" in planned.files


def test_an_engine_answering_nonsense_is_a_plugin_bug(tmp_path):
    odd = FakeEngine("zz-odd", ("safetensors",), ("cuda",), answer=42)
    with pytest.raises(PluginError, match=r"^engine zz-odd: accepts\(\) returned int, not a str or None$"):
        build(tmp_path, HEAD + "RUNTIME zz-odd\n", tmp_path / "home", Engines(odd))
    with pytest.raises(PluginError, match="returned int"):  # asked at build time too, for the defaults
        build(tmp_path, HEAD, tmp_path / "home", Engines(odd))


# -- the store: records, damage, prune ---------------------------------------------------------------
def _built(tmp_path: Path) -> tuple[Path, Store, str]:
    home = tmp_path / "mbhome"  # the home of the ``mb`` fixture
    result = build(tmp_path, HEAD + "RUNTIME zz-st dtype=float16\n", home, PLUGIN, tags=["rt:1"])
    return home, Store(home / "store"), result.digest


def _referrer(store: Store, subject: str) -> tuple[dict, dict]:
    (entry,) = store.list_referrers(subject)
    return entry, store.read_json(entry["digest"], entry["size"])


def _overwrite(path: Path, data: bytes) -> None:
    os.chmod(path, stat.S_IWUSR | stat.S_IRUSR)
    path.write_bytes(data)


def test_find_description_says_none_for_a_variant_without_one(tmp_path):
    home, store, digest = _built(tmp_path)
    warnings: list[str] = []
    assert rd.find_description(store, "sha256:" + "0" * 64, warn=warnings.append) is None and warnings == []
    assert rd.find_description(store, digest, warn=warnings.append).engines[0].name == "zz-st"


def test_a_damaged_description_blob_gives_none_and_a_warning(tmp_path, capsys):
    home, store, digest = _built(tmp_path)
    _entry, manifest = _referrer(store, digest)
    layer = manifest["layers"][0]
    _overwrite(store.blob_path(layer["digest"]), b"x" * layer["size"])
    assert rd.find_description(store, digest) is None
    err = capsys.readouterr().err
    assert err.startswith("modelbuild: warning: the runtime description of " + digest) and "does not match" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not store.has_blob(layer["digest"])  # the store removed the damaged blob: a rebuild writes it again
    again = build(tmp_path, HEAD + "RUNTIME zz-st dtype=float16\n", home, PLUGIN, tags=["rt:1"])
    assert "manifest" in again.stats["executed"] and rd.find_description(store, digest) is not None


def test_a_damaged_record_or_a_lying_referrer_gives_none_and_a_warning(tmp_path):
    home, store, digest = _built(tmp_path)
    record = store.referrers_dir / digest[7:]
    good = record.read_bytes()
    warnings: list[str] = []
    record.write_bytes(b'{"manifests": [{"digest": "sha256:nope", "size": 1}]}')
    assert rd.find_description(store, digest, warn=warnings.append) is None
    assert "is not a sha256 digest" in warnings[-1] and f"(the referrers of {digest})" in warnings[-1]
    record.write_bytes(b"[" * 100_000)
    assert rd.find_description(store, digest, warn=warnings.append) is None and "not valid JSON" in warnings[-1]
    record.write_bytes(good)
    # a referrer recorded for this manifest whose subject is another one
    entry, manifest = _referrer(store, digest)
    lying = canonical_json({**manifest, "subject": {**manifest["subject"], "digest": "sha256:" + "b" * 64}})
    store.record_referrers(digest, [{**entry, "digest": store.put_bytes(lying), "size": len(lying)}])
    assert rd.find_description(store, digest, warn=warnings.append) is None
    assert "its subject is 'sha256:bbbb" in warnings[-1]
    # a description of a major version this modelbuild does not read
    future = json.dumps({"version": "2.0", "engines": []}).encode()
    doc = json.loads(rd.referrer_manifest(manifest["subject"], future))
    store.put_bytes(future)
    data = canonical_json(doc)
    store.record_referrers(digest, [{**entry, "digest": store.put_bytes(data), "size": len(data)}])
    assert rd.find_description(store, digest, warn=warnings.append) is None
    assert "version '2.0' is not one this modelbuild reads" in warnings[-1]
    assert len(warnings) == 4 and all("\n" not in w for w in warnings)


def test_prune_keeps_the_referrers_of_tagged_manifests_and_forgets_the_rest(tmp_path, mb):
    home, store, digest = _built(tmp_path)
    entry, manifest = _referrer(store, digest)
    blobs = [entry["digest"], manifest["config"]["digest"], manifest["layers"][0]["digest"]]
    assert mb("prune", "--json").json()["missing"] == []
    assert all(store.has_blob(b) for b in blobs) and rd.find_description(store, digest) is not None
    assert mb("rm", "rt:1").rc == 0
    report = mb("prune", "--json").json()
    assert report["deleted"] >= 3 and not any(store.has_blob(b) for b in blobs)
    assert store.referrer_subjects() == [] and store.list_referrers(digest) == []


def test_an_oci_layout_output_holds_the_artifact_alone(tmp_path):
    """``-o type=oci`` writes the artifact without its referrers (docs/modelfile.md says why)."""
    home = tmp_path / "home"
    out = tmp_path / "layout"
    result = build(tmp_path, HEAD, home, PLUGIN, outputs=[f"type=oci,dest={out}"])
    index = json.loads((out / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [result.digest]
    assert not (out / "referrers").exists()
    assert rd.find_description(Store(home / "store"), result.digest) is not None


def test_inspect_shows_the_description_and_sizes_memory_at_its_context(mb, tmp_path):
    """``inspect`` of a variant: a Runtime line (engines, parameters, context) and, in
    --json, the description itself; the memory estimate is at the description's context
    unless --context says otherwise."""
    import shutil

    from support import EXAMPLES

    ctx = tmp_path / "ctx"
    shutil.copytree(EXAMPLES / "tiny-llama" / "model", ctx)
    (ctx / "Modelfile").write_text("NAME described\nCONFIG config.json\nMODEL model.safetensors\n"
                                   "RUNTIME vllm gpu_memory_utilization=0.8\nRUNTIME context=64\n")
    assert mb("build", "-f", "Modelfile", "-t", "described:1", "-q", ".", cwd=ctx).rc == 0
    text = mb("inspect", "described:1").out
    assert "Runtime:       vllm gpu_memory_utilization=0.8, context 64 (`modelbuild run` serves it)" in text
    doc = mb("inspect", "described:1", "--json").json()
    assert doc["runtime"]["engines"] == [{"name": "vllm", "params": {"gpu_memory_utilization": "0.8"}}]
    assert doc["memory"]["contextLength"] == 64 == doc["runtime"]["contextLength"]
    assert mb("inspect", "described:1", "--json", "--context", "32").json()["memory"]["contextLength"] == 32
