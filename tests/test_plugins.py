"""The plugin API: built-ins load through entry points; third-party plugins plug in the same way."""

from __future__ import annotations

import inspect
import io
import re
import tarfile
import typing

import pluggy
import pytest

from support import write_model_dir
from helpers import blob
from modelbuild import hookspecs
from modelbuild.api import PluginError, hookimpl, write_tar
from modelbuild.testing import build_with, plugin_host


class ReversedTarCodec:
    """A tiny third-party codec: tar with members in reverse order (why not)."""

    name = "tar+reversed"
    media_suffix = "tar"
    archive = True
    version = "7"

    def encode(self, members, sink, *, mtime=0, progress=None):
        write_tar(list(reversed(members)), sink.write, mtime=mtime, progress=progress)
        return None


class ReversedPlugin:
    @hookimpl
    def modelbuild_register_layer_codecs(self, registry):
        registry.add(ReversedTarCodec())


def test_builtins_come_from_entry_points():
    host = plugin_host()
    dists = {name: dist for name, dist in ((i.name, i.distribution) for i in host.infos())}
    assert dists == {name: "modelbuild" for name in ("gguf", "hf", "hf-gguf", "https", "kitfile", "layers", "local",
                                                     "modelfile", "oci", "ollama", "onnx", "safetensors", "targets",
                                                     "llama-cpp", "onnxruntime", "tgi", "triton", "vllm",
                                                     "cosign", "local-executor", "ray")}
    assert host.executors.names() == ["local", "ray"]
    assert host.engines.names() == ["llama.cpp", "onnxruntime", "tgi", "triton", "vllm"]
    assert host.codecs.names() == ["raw", "tar", "tar+gzip", "tar+zstd"]
    assert host.formats.names() == ["gguf", "onnx", "safetensors"]
    assert "safetensors-cast" in host.quantizers and "gguf" in host.shard_strategies
    assert host.targets.names() == ["cpu", "cuda", "metal", "rocm"]
    assert host.signers.names() == ["cosign"]


def test_a_third_party_codec_builds_and_enters_the_cache_key(tmp_path):
    ctx = write_model_dir(tmp_path / "m", {"d/a": "a", "d/b": "b"})
    (ctx / "Modelfile").write_text("MODEL d\n")
    home = tmp_path / "home"
    result = build_with(ctx / "Modelfile", home, ReversedPlugin(), layer_format="tar+reversed")
    layer = result.layers[0]
    with tarfile.open(fileobj=io.BytesIO(blob(home / "store", layer["digest"]))) as tf:
        assert tf.getnames() == ["d/b", "d/a", "d"]
    # a new codec version is a different step: the layer is packed again
    ReversedTarCodec.version = "8"
    try:
        again = build_with(ctx / "Modelfile", home, ReversedPlugin(), layer_format="tar+reversed")
    finally:
        ReversedTarCodec.version = "7"
    assert "layer:d" in again.stats["executed"]


def test_two_plugins_claiming_one_name_are_both_named():
    class Clash:
        @hookimpl
        def modelbuild_register_layer_codecs(self, registry):
            class Raw:
                name = "raw"

            registry.add(Raw())

    with pytest.raises(PluginError) as info:
        plugin_host(Clash())
    # pluggy calls the plugin registered last first, so the test's plugin claims the name first
    assert "layer format 'raw' is registered by both Clash and layers" == info.value.message


def test_a_misspelled_hook_fails_loudly():
    class Typo:
        @hookimpl
        def modelbuild_register_layer_codec(self, registry):  # missing "s"
            pass

    with pytest.raises(PluginError) as info:
        plugin_host(Typo())
    assert "modelbuild_register_layer_codec" in info.value.message


def _hookspecs() -> list:
    from modelbuild_plugins.hf_to_gguf import hookspecs as architectures

    return [f for module in (hookspecs, architectures) for name, f in vars(module).items()
            if name.startswith("modelbuild_") and callable(f)]


def test_every_hookspec_is_documented_as_reference():
    """Each hookspec (the core's and hf-to-gguf's own) documents every parameter, its
    return value, whether it is firstresult, and a Since: version no newer than the package."""
    import modelbuild.api as api
    from modelbuild import __version__

    package = tuple(int(p) for p in __version__.split(".")[:2])
    specs = _hookspecs()
    assert len(specs) == 13
    for spec in specs:
        name, doc = spec.__name__, inspect.getdoc(spec) or ""
        opts = spec.modelbuild_spec
        params = list(inspect.signature(spec).parameters)
        assert "Parameters:" in doc and "Return value:" in doc, name
        for param in params:
            assert f"``{param}``:" in doc.split("Parameters:", 1)[1], (name, param)
        assert f"``firstresult``: {'yes' if opts['firstresult'] else 'no'}" in doc, name
        assert ("historic" in doc) == bool(opts["historic"]), name
        since = re.findall(r"Since: (\d+)\.(\d+)\.", doc)
        assert len(since) == 1, name
        assert tuple(map(int, since[0])) <= package, (name, since, __version__)
        # the annotations name real types (they are imported only under TYPE_CHECKING)
        names = {name: getattr(api, name) for name in api.__all__}  # api's names load on first use
        hints = typing.get_type_hints(spec, {**names, "pluggy": pluggy, "ArchitectureAdapter": object})
        assert set(hints) == {*params, "return"}, name


def test_package_version_is_the_plugin_api_version():
    import tomllib

    from modelbuild import __version__
    from support import REPO

    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"] == __version__
    assert __version__.split(".")[0] == "1"
