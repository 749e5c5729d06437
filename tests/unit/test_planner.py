"""The resolver and the planner in-process, from a build description made by hand: no
Modelfile, no disk, no step run."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelbuild.description import BuildDescription, FileKind, FileSpec, StageSpec, TransformSpec
from modelbuild.errors import ModelfileError, Span
from modelbuild.frontend.resolve import resolve
from modelbuild.planner import BuildOptions, plan
from modelbuild.targets import parse_constraint
from modelbuild.testing import plugin_host

HOST = plugin_host()
FILES = (FileSpec("config.json", FileKind.CONFIG, False), FileSpec("model.safetensors", FileKind.MODEL, False),
         FileSpec("README.md", FileKind.DOC, False))


def description(*stages: StageSpec, transforms: tuple[TransformSpec, ...] = ()) -> BuildDescription:
    return BuildDescription(Path("/ctx"), FILES, transforms=transforms, stages=stages)


def stage(name: str, target: str, *constraints: str, transforms: tuple[TransformSpec, ...] = ()) -> StageSpec:
    return StageSpec(name, target, None, tuple(parse_constraint(c) for c in constraints), transforms,
                     Span("Modelfile", 7))


def test_a_build_without_stages_is_one_manifest():
    graph = plan(resolve(description(), HOST), BuildOptions())
    assert [(v.stage, v.config, v.manifest) for v in graph.variants] == [(None, "config", "manifest")]
    assert graph.top == "manifest" and graph.export == "export"
    assert {graph.step(s).op for s in graph.order} == {"source", "digest", "layer", "describe", "config", "manifest",
                                                        "export"}


def test_stages_are_keyed_by_platform_and_shown_by_name():
    q = (TransformSpec("quantize", "bfloat16"),)
    graph = plan(resolve(description(stage("gpu", "cuda", "compute>=8.0", transforms=q),
                                     stage("cpu", "cpu", transforms=(TransformSpec("quantize", "float16"),))), HOST),
                 BuildOptions())
    assert [v.stage for v in graph.variants] == ["cpu", "gpu"]  # the generic entry first
    assert graph.top == "index"
    step = graph.step("transform:gpu:1")
    assert (step.stage, step.platform) == ("gpu", "cuda/amd64 compute>=8.0")
    assert "gpu" not in repr(step.definition())
    assert "[gpu]" in step.label


def test_renaming_a_stage_changes_no_step_definition_but_the_index():
    def definitions(name: str) -> dict[str, dict]:
        graph = plan(resolve(description(stage(name, "cuda", transforms=(TransformSpec("quantize", "bfloat16"),))),
                             HOST), BuildOptions())
        return {graph.step(s).op + ":" + graph.step(s).label.split(" [")[0]: graph.step(s).definition()
                for s in graph.order}

    before, after = definitions("gpu"), definitions("accelerator")
    changed = sorted(k for k in before if before[k] != after[k])
    assert changed == ["export:export (untagged)", "index:write index"]


def test_the_resolver_chooses_each_plugin_and_parses_nothing_twice():
    shard = TransformSpec("shard", "2GB", (), Span("Modelfile", 5), max_bytes=2_000_000_000)
    resolved = resolve(description(transforms=(TransformSpec("quantize", "bfloat16"), shard)), HOST)
    cast, split = resolved.shared
    assert (cast.plugin, cast.owner) == ("safetensors-cast", HOST.quantizers.owner("safetensors-cast"))
    assert (split.plugin, split.max_bytes) == ("safetensors", 2_000_000_000)
    graph = plan(resolved, BuildOptions())
    assert graph.step("transform:2").params["max_bytes"] == 2_000_000_000


@pytest.mark.parametrize("stage_spec, message", [
    (stage("x", "gaudi"), "Modelfile:7:1: unknown target gaudi (installed: cpu, cuda, metal, rocm)"),
    (stage("x", "cuda", "vram>=80"), "Modelfile:7:1: target cuda has no constraint 'vram' (known: cuda, compute)"),
    (stage("x", "cuda", transforms=(TransformSpec("quantize", "q9_9", (), Span("Modelfile", 8)),)),
     "Modelfile:8:1: unknown quant type q9_9 (known: "),
])
def test_the_resolver_reports_at_the_line_and_the_planner_never_does(stage_spec, message):
    with pytest.raises(ModelfileError) as info:
        resolve(description(stage_spec), HOST)
    assert info.value.render().startswith(message)


def test_the_planner_imports_no_frontend_and_ops_import_no_frontend():
    import ast

    root = Path(__file__).resolve().parents[2] / "modelbuild"
    for path in [root / "planner.py", *sorted((root / "ops").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("modelbuild.frontend") for n in names), f"{path.name}:{node.lineno}"
        assert "ModelfileError" not in path.read_text(), path.name


def _quantize(*options: tuple[str, object], arg: str = "bfloat16") -> TransformSpec:
    spans = tuple((name, Span("Modelfile", 5, 20 + i)) for i, (name, _) in enumerate(options))
    return TransformSpec("quantize", arg, tuple(options), Span("Modelfile", 5), option_spans=spans)


def test_options_are_checked_against_the_declarations_at_their_column():
    with pytest.raises(ModelfileError) as info:
        resolve(description(transforms=(_quantize(("kep", ["x"])),)), HOST)
    assert info.value.render() == "Modelfile:5:20: safetensors-cast has no option --kep (did you mean --keep?)"


def test_options_arrive_typed_with_defaults_filled():
    resolved = resolve(description(transforms=(_quantize(("keep", ["a,b", "c"])),)), HOST)
    assert dict(resolved.shared[0].options)["keep"] == ["a", "b", "c"]
    convert = TransformSpec("convert", "gguf", (), Span("Modelfile", 5))
    resolved = resolve(description(transforms=(convert,)), HOST)
    assert dict(resolved.shared[0].options)["outtype"] == "f16"  # hf-to-gguf's declared default


def test_a_bad_choice_names_the_choices():
    convert = TransformSpec("convert", "gguf", (("outtype", "q4_0"),), Span("Modelfile", 5),
                            option_spans=(("outtype", Span("Modelfile", 5, 15)),))
    with pytest.raises(ModelfileError) as info:
        resolve(description(transforms=(convert,)), HOST)
    assert info.value.render() == ("Modelfile:5:15: hf-to-gguf: --outtype=q4_0 is not one of its choices "
                                   "(--outtype=f16|f32|bf16|q8_0)")


def test_a_boolean_option_is_typed_and_a_bad_one_is_an_error_at_it():
    gguf = BuildDescription(Path("/ctx"), (FileSpec("model.gguf", FileKind.MODEL, False),),
                            transforms=(_quantize(("pure", "yes"), arg="q4_k_m"),))
    assert dict(resolve(gguf, HOST).shared[0].options)["pure"] is True
    bad = BuildDescription(Path("/ctx"), gguf.files, transforms=(_quantize(("pure", "maybe"), arg="q4_k_m"),))
    with pytest.raises(ModelfileError) as info:
        resolve(bad, HOST)
    assert info.value.render() == "Modelfile:5:20: gguf-quantize: --pure=maybe is not a boolean (--pure=true|false)"


def test_a_repeated_option_is_a_list_only_where_declared_so():
    gguf = (FileSpec("model.gguf", FileKind.MODEL, False),)
    twice = BuildDescription(Path("/ctx"), gguf, transforms=(_quantize(("pure", ["yes", "no"]), arg="q4_k_m"),))
    with pytest.raises(ModelfileError) as info:
        resolve(twice, HOST)
    assert info.value.render() == "Modelfile:5:20: option --pure is given twice"
