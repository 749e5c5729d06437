"""Keys only on what a step used: another plugin installed, a stage renamed or a plugin's
version changed re-runs exactly the steps whose output can differ.

In-process builds (modelbuild.testing.build_with) of the bundled tiny-llama: a CPU stage that
converts to GGUF and quantizes (q8_0), and a CUDA stage that casts to bfloat16 and shards.
"""

from __future__ import annotations

import pytest

from modelbuild.api import hookimpl
from modelbuild.testing import build_with

HEAD = "NAME tiny\nCONFIG *.json\nMODEL *.safetensors\nDOC README.md\n"
STAGES = "TARGET cpu\nCONVERT gguf --outtype=f32\nQUANTIZE q8_0\n\nTARGET cuda compute>=8.0 AS {gpu}\nQUANTIZE bfloat16\nSHARD 200KB\n"


@pytest.fixture
def ctx(tiny_llama):
    return tiny_llama


def build(ctx, home, *plugins, gpu="gpu"):
    (ctx / "Modelfile").write_text(HEAD + STAGES.format(gpu=gpu))
    return build_with(ctx / "Modelfile", home, *plugins, tags=["tiny:1"])


class Unrelated:
    """A format, an architecture adapter, a quantizer of that format and a target, all unused here."""

    class Format:
        name, version, summary, extensions = "xyz", "1", "a made-up format", (".xyz",)

        def read_info(self, files, config):
            raise AssertionError("never consulted: no .xyz file in the model set")

    class Quantizer:
        name, version, summary, format, types = "xyz-q", "1", "quantizes xyz", "xyz", ("xyz8",)

    class Adapter:
        name, gguf_arch, version, summary, hf_architectures = "gptx", "gptx", "1", "made up", ("GptXForCausalLM",)

    class Target:
        name, version, summary, generic, variants, formats = "gaudi", "1", "Intel Gaudi", False, ("amd64",), ("safetensors",)

    @hookimpl
    def modelbuild_register_formats(self, registry):
        registry.add(self.Format())

    @hookimpl
    def modelbuild_register_quantizers(self, registry):
        registry.add(self.Quantizer())

    @hookimpl
    def modelbuild_register_architectures(self, registry):
        registry.add(self.Adapter())

    @hookimpl
    def modelbuild_register_targets(self, registry):
        registry.add(self.Target())


def test_installing_an_unrelated_plugin_keeps_every_step_cached(ctx, home):
    first = build(ctx, home)
    assert {"transform:cpu:1", "transform:cpu:2", "transform:gpu:1", "describe:cpu"} <= set(first.stats["executed"])
    again = build(ctx, home, Unrelated())
    assert again.stats["executed"] == [] and again.stats["steps_run"] == 0
    assert again.digest == first.digest


def test_renaming_a_stage_keeps_its_steps_cached(ctx, home):
    first = build(ctx, home, gpu="gpu")
    renamed = build(ctx, home, gpu="accelerator")
    # only the index is written again (its entry's annotation names the stage), and the
    # export sets the new TAG-STAGE tag
    assert renamed.stats["executed"] == ["export", "index"]
    assert [v["digest"] for v in renamed.variants] == [v["digest"] for v in first.variants]
    assert renamed.digest != first.digest
    assert [v["stage"] for v in renamed.variants] == ["cpu", "accelerator"]


def test_a_plugin_version_reruns_exactly_its_steps(ctx, home, monkeypatch):
    from modelbuild.testing import plugin_host

    build(ctx, home)
    cast = type(plugin_host().quantizers.get("safetensors-cast"))
    monkeypatch.setattr(cast, "version", str(cast.version) + ".1")
    again = build(ctx, home)
    # the cast's output bytes are the same, so what follows it stays cached
    assert again.stats["executed"] == ["transform:gpu:1"]


def test_an_architecture_adapter_version_reruns_only_its_conversions(ctx, home, monkeypatch):
    from modelbuild_plugins.hf_to_gguf import LlamaAdapter, MistralAdapter

    build(ctx, home)
    monkeypatch.setattr(MistralAdapter, "version", "other")  # not the adapter tiny-llama uses
    assert build(ctx, home).stats["executed"] == []
    monkeypatch.setattr(LlamaAdapter, "version", "other")
    assert build(ctx, home).stats["executed"] == ["transform:cpu:1"]
