"""Plugins load lazily: a command imports only the plugins whose entries it uses, from the
plugin catalog (modelbuild/plugin_catalog.py), and keeps every guarantee of loading them all:
two plugins claiming one name is an error naming both, a misspelt hook fails, ``modelbuild
plugins`` lists everything, and cache keys are the same as with every plugin loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import safetensors_blob, write_model_dir
from modelbuild import plugin_catalog
from modelbuild.errors import UsageError
from modelbuild.plugins import make_plugin_manager

# Runs the CLI in a fresh interpreter and writes the modules it imported to argv[1].
PROBE = """\
import json, sys
from modelbuild.cli import main
try:
    rc = main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as fh:
        json.dump(sorted(sys.modules), fh)
sys.exit(rc)
"""

# What a no-op rebuild of a safetensors model must not import: every plugin it does not call.
NOT_CALLED = [
    "modelbuild_plugins.gguf_format", "modelbuild_plugins.hf_to_gguf", "modelbuild_plugins.onnx_format",
    "modelbuild_plugins.engines", "modelbuild_plugins.ollama", "modelbuild_plugins.kitfile",
    "modelbuild_plugins.oci_source", "modelbuild_plugins.hf_source", "modelbuild_plugins.https_source",
    "modelbuild_plugins.cosign_signer", "modelbuild_plugins.ray_executor", "modelbuild_plugins.targets",
    # the weights' format: a cached step's key takes its name and version from the catalog
    "modelbuild_plugins.safetensors_format",
    # a build that attests nothing
    "modelbuild.attest.provenance", "modelbuild.attest.sbom",
    # a build that writes no config (jsonschema's import is 60–100 ms)
    "jsonschema",
    # a build that writes no tar layer
    "tarfile",
]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MODELBUILD_DEBUG", "MODELBUILD_DISABLE_PLUGINS", plugin_catalog.ENV_SWITCH)}
    return {**env, "MODELBUILD_HOME": str(home), **extra}


def _probe(args: list[str], *, cwd: Path, env: dict[str, str], out: Path) -> tuple[subprocess.CompletedProcess, set]:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(out), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc, set(json.loads(out.read_text())) if out.exists() else set()


def _imported(modules: set[str], prefix: str) -> list[str]:
    return sorted(m for m in modules if m == prefix or m.startswith(prefix + "."))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    ctx = write_model_dir(tmp_path / "ctx", {
        "model/model.safetensors": safetensors_blob(b"\x01" * 4096),
        "model/config.json": '{"model_type": "llama"}',
    })
    (ctx / "Modelfile").write_text("FROM ./model\nNAME lazy\nCONFIG config.json\nMODEL *.safetensors\n")
    return ctx


# -- what a no-op rebuild imports -----------------------------------------------------------


@pytest.mark.parametrize("named", [["-f", "Modelfile"], []], ids=["-f", "found-by-name"])
def test_a_no_op_rebuild_imports_no_plugin_it_does_not_call(model, tmp_path, named):
    """Also without ``-f``: the names a build file may have (Kitfile, Ollama.Modelfile…) come
    from the frontends' ``filenames`` in the catalog, not from importing every frontend."""
    env = _env(tmp_path / "home")
    build = ["build", *named, "--json", "--progress", "plain"]
    first, _ = _probe(build, cwd=model, env=env, out=tmp_path / "first.json")
    assert first.returncode == 0, first.stderr
    [catalog] = (tmp_path / "home" / "cache" / "plugins").glob("*.json")  # what the first build learned
    written = catalog.stat().st_mtime_ns
    again, modules = _probe(build, cwd=model, env=env, out=tmp_path / "again.json")
    assert again.returncode == 0, again.stderr
    assert catalog.stat().st_mtime_ns == written  # used, not rewritten: no full load
    result = json.loads(again.stdout)
    assert result["digest"] == json.loads(first.stdout)["digest"]
    assert result["stats"]["steps_run"] == 0 and result["stats"]["bytes_hashed"] == 0
    # the plugins it calls are imported (the probe sees imports at all)...
    for used in ("modelbuild_plugins.frontends", "modelbuild_plugins.sources", "modelbuild_plugins.layers"):
        assert used in modules, used
    # ...and none of the others
    assert [m for prefix in NOT_CALLED for m in _imported(modules, prefix)] == []


def test_lazy_plugins_give_the_keys_every_plugin_loaded_gives(model, tmp_path):
    """The manifest step's key names every engine (a Modelfile without RUNTIME): from the
    catalog, without importing one, it must be the key the full load makes."""
    home = tmp_path / "home"
    build = ["build", "-f", "Modelfile", "--json", "--progress", "plain"]
    eager, _ = _probe(build, cwd=model, env=_env(home, **{plugin_catalog.ENV_SWITCH: "0"}), out=tmp_path / "1.json")
    assert eager.returncode == 0, eager.stderr
    assert not (home / "cache" / "plugins").exists()  # switched off: no catalog written
    _probe(build, cwd=model, env=_env(home), out=tmp_path / "2.json")  # writes the catalog
    lazy, modules = _probe(build, cwd=model, env=_env(home), out=tmp_path / "3.json")
    assert lazy.returncode == 0, lazy.stderr
    assert not _imported(modules, "modelbuild_plugins.engines")
    assert json.loads(lazy.stdout)["digest"] == json.loads(eager.stdout)["digest"]
    assert json.loads(lazy.stdout)["stats"]["steps_run"] == 0


# -- the lazy host answers as the full one does ----------------------------------------------


@pytest.fixture
def catalog_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MODELBUILD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MODELBUILD_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv(plugin_catalog.ENV_SWITCH, raising=False)
    return tmp_path / "home"


def test_a_lazy_host_names_entries_without_importing_their_plugins(catalog_home):
    full = make_plugin_manager()  # no catalog yet: loads everything, writes the catalog
    assert full._catalog is None and list((catalog_home / "cache" / "plugins").glob("*.json"))
    lazy = make_plugin_manager()
    assert lazy._catalog is not None
    assert lazy.pm.get_plugins() == set()  # nothing imported yet
    for name in ("engines", "targets", "signers", "executors", "codecs", "formats", "quantizers", "converters",
                 "shard_strategies", "frontends", "sources"):
        registry, expected = getattr(lazy, name), getattr(full, name)
        assert registry.names() == expected.names(), name
        assert [registry.owner(n) for n in registry.names()] == [expected.owner(n) for n in expected.names()]
    assert lazy.plugin_version("vllm") == full.plugin_version("vllm") != "0"
    assert "llama.cpp" in lazy.engines and "nonesuch" not in lazy.engines
    assert lazy.pm.get_plugins() == set()  # names, owners and versions come from the catalog
    # choosing by the attributes the catalog records imports the plugin chosen, and only it
    assert lazy.format_for_path("m/model.safetensors").name == "safetensors"
    assert lazy.format_for_path("config.json") is None
    assert lazy.sources.get_for_reference("./model").name == full.sources.get_for_reference("./model").name
    assert lazy.quantizer_for("gguf", "q4_0").name == full.quantizer_for("gguf", "q4_0").name
    assert lazy.quant_types("gguf") == full.quant_types("gguf")
    assert {name for name, _ in lazy.pm.list_name_plugin()} == {"safetensors", "local", "gguf"}
    # `modelbuild plugins` lists everything, as the full load does
    assert lazy.infos() == full.infos()


def test_step_threads_load_a_plugin_once(catalog_home):
    """The solver's steps ask registries from their threads: a plugin is imported, and its
    hook called, once, whichever thread asks first."""
    from concurrent.futures import ThreadPoolExecutor

    full = make_plugin_manager()
    for _ in range(5):
        lazy = make_plugin_manager()
        asks = [lambda: lazy.codecs.get("tar").name, lambda: lazy.formats.get("gguf").name,
                lambda: lazy.engines.get("vllm").name, lambda: sorted(e.name for e in lazy.engines),
                lambda: lazy.format_for_path("a.onnx").name] * 8
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda ask: ask(), asks))
        assert got[:5] == ["tar", "gguf", "vllm", full.engines.names(), "onnx"]
        assert lazy.codecs.names() == full.codecs.names() and lazy.engines.names() == full.engines.names()


def test_an_unknown_name_is_the_same_error_lazily(catalog_home):
    make_plugin_manager()
    lazy = make_plugin_manager()
    with pytest.raises(UsageError) as info:
        lazy.codecs.get("tar+gz")
    assert info.value.render() == "unknown layer format 'tar+gz' (did you mean tar+gzip?)"


def test_a_plugin_registering_other_than_recorded_makes_the_catalog_out_of_date(catalog_home):
    make_plugin_manager()
    path = next((catalog_home / "cache" / "plugins").glob("*.json"))
    doc = json.loads(path.read_text())
    doc["entries"]["modelbuild_register_layer_codecs"]["phantom"] = ["layers", {}]
    path.write_text(json.dumps(doc))
    lazy = make_plugin_manager()
    assert "phantom" in lazy.codecs  # what the (wrong) catalog says, until the plugin is asked
    with pytest.raises(UsageError, match="unknown layer format 'phantom'"):
        lazy.codecs.get("phantom")
    assert not path.exists()  # forgotten: the next run loads everything and writes a true one
    assert "phantom" not in lazy.codecs and lazy.codecs.names() == ["raw", "tar", "tar+gzip", "tar+zstd"]
    assert len(lazy.pm.get_plugins()) == len(make_plugin_manager(lazy=False).pm.get_plugins())


def test_an_edited_plugin_source_makes_the_catalog_out_of_date(catalog_home, tmp_path):
    make_plugin_manager()
    doc = json.loads(next((catalog_home / "cache" / "plugins").glob("*.json")).read_text())
    assert any(p.endswith(os.path.join("plugins", "layers.py")) for p, _ in doc["files"])
    assert plugin_catalog.load() is not None
    doc["files"][0][1][0] -= 1  # as if the file had been edited since
    next((catalog_home / "cache" / "plugins").glob("*.json")).write_text(json.dumps(doc))
    assert plugin_catalog.load() is None
    assert make_plugin_manager()._catalog is None  # a full load, which writes a new catalog
    assert plugin_catalog.load() is not None


@pytest.mark.parametrize("damage", ["not json", "[]", '{"format": 1}', "entries"])
def test_a_damaged_catalog_is_no_catalog(catalog_home, damage):
    make_plugin_manager()
    path = next((catalog_home / "cache" / "plugins").glob("*.json"))
    if damage == "entries":
        doc = json.loads(path.read_text())
        doc["entries"]["modelbuild_register_formats"]["gguf"] = "gguf"
        path.write_text(json.dumps(doc))
    else:
        path.write_text(damage)
    host = make_plugin_manager()
    assert host._catalog is None and host.formats.names() == ["gguf", "onnx", "safetensors"]
    assert plugin_catalog.load() is not None  # the full load wrote a sound one


# -- a third-party plugin, installed as a distribution ----------------------------------------

CODEC = """\
from modelbuild.api import hookimpl, write_tar


class Reversed:
    name = "tar+reversed"
    media_suffix = "tar"
    archive = True
    version = "1"

    def encode(self, members, sink, *, mtime=0, progress=None):
        write_tar(list(reversed(members)), sink.write, mtime=mtime, progress=progress)


@hookimpl
def modelbuild_register_layer_codecs(registry):
    registry.add(Reversed())
"""


def _install(site: Path, dist: str, module: str, source: str, entry: str) -> Path:
    """A distribution as pip leaves it: its module, and a .dist-info with its entry point."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[modelbuild]\n{entry} = {module}\n")
    (site / f"{module}.py").write_text(source)
    return site / f"{module}.py"


def test_a_third_party_plugin_loads_lazily_and_keeps_its_guarantees(model, tmp_path):
    site = tmp_path / "site"
    module = _install(site, "mb-reversed", "mb_reversed", CODEC, "reversed")
    env = _env(tmp_path / "home", PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))

    def cli(*args: str, out: str = "modules.json") -> tuple[subprocess.CompletedProcess, set]:
        return _probe(list(args), cwd=model, env=env, out=tmp_path / out)

    # listed with what it provides, loaded fully (no catalog yet) and then from the catalog
    for _ in range(2):
        proc, _ = cli("plugins", "--json")
        assert proc.returncode == 0, proc.stderr
        listed = {p["name"]: p for p in json.loads(proc.stdout)}
        assert listed["reversed"] == {"name": "reversed", "version": "1.0", "distribution": "mb-reversed",
                                      "provides": ["layer-format:tar+reversed"]}

    # a build that uses it imports it; one that does not, does not
    proc, modules = cli("build", "-f", "Modelfile", "--layer-format", "tar+reversed", "-q")
    assert proc.returncode == 0, proc.stderr
    proc, modules = cli("build", "-f", "Modelfile", "--layer-format", "tar+reversed", "-q")
    assert proc.returncode == 0 and "mb_reversed" in modules, proc.stderr
    proc, modules = cli("build", "-f", "Modelfile", "-q")
    assert proc.returncode == 0 and "mb_reversed" not in modules, proc.stderr

    # a second distribution claiming the same name, installed after the catalog was written:
    # an error naming both, every time (a failed full load writes no catalog)
    _install(site, "mb-clash", "mb_clash", CODEC, "clash")
    for _ in range(2):
        proc, _ = cli("build", "-f", "Modelfile", "-q")
        assert proc.returncode == 70, proc.stderr
        assert "layer format 'tar+reversed' is registered by both" in proc.stderr
        assert "clash" in proc.stderr and "reversed" in proc.stderr
    for path in site.glob("mb_clash*"):
        path.unlink()
    (site / "mb-clash-1.0.dist-info" / "METADATA").unlink()
    (site / "mb-clash-1.0.dist-info" / "entry_points.txt").unlink()
    (site / "mb-clash-1.0.dist-info").rmdir()
    proc, _ = cli("build", "-f", "Modelfile", "-q")
    assert proc.returncode == 0, proc.stderr

    # the installed plugin edited in place (an editable install) to misspell a hook: the
    # catalog no longer describes it, and the full load says what is wrong
    module.write_text(CODEC + "\n\n@hookimpl\ndef modelbuild_register_layer_codec(registry):\n    pass\n")
    for _ in range(2):
        proc, _ = cli("build", "-f", "Modelfile", "-q")
        assert proc.returncode == 70, proc.stderr
        assert ("plugin reversed implements unknown hook modelbuild_register_layer_codec "
                "(did you mean modelbuild_register_layer_codecs?)") in proc.stderr


def test_attest_kinds_name_the_predicate_types_of_their_modules():
    """modelbuild.attest names the predicate types without importing its provenance and sbom
    modules (a build that checks --attest values imports neither): they must agree."""
    from modelbuild.attest import KINDS, provenance, sbom

    assert KINDS == {"provenance": provenance.PREDICATE_TYPE, "sbom": sbom.PREDICATE_TYPE}


def test_a_known_precision_is_never_an_alias():
    """The Modelfile's PRECISION lint skips a known precision without reading the alias table
    (modelbuild.schema, which imports importlib.resources): no name may be both."""
    from modelbuild.frontend.directives import KNOWN_PRECISIONS
    from modelbuild.schema import PRECISION_ALIASES

    assert not set(PRECISION_ALIASES) & set(KNOWN_PRECISIONS)
