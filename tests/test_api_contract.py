"""The plugin API's contract: ``modelbuild.api`` is all a plugin imports, every name in it is
importable and documented, and every built-in plugin object satisfies its kind's Protocol.

The import rules, checked on the syntax tree of every module under ``plugins/`` (top-level
imports, imports inside functions and ``TYPE_CHECKING`` blocks alike):

1. From modelbuild, only ``modelbuild.api`` (``from modelbuild.api import X``,
   ``import modelbuild.api``, ``from modelbuild import api``): not ``modelbuild.errors``, not
   ``modelbuild.api._kinds``.
2. From another built-in plugin, only its package-level public names:
   ``from modelbuild_plugins.gguf_format import write_header`` with ``write_header`` in
   ``gguf_format.__all__``; never one of its submodules (``…gguf_format.writer``) nor the
   package as a module. A plugin imports its own modules freely.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from support import REPO
import modelbuild.api as api
from modelbuild.api._kinds import PLUGIN_KINDS
from modelbuild.testing import plugin_host

PLUGINS = REPO / "plugins"
PACKAGE = "modelbuild_plugins"


# -- the import rules ---------------------------------------------------------------------------


def _module_of(path: Path) -> tuple[str, bool]:
    """The dotted module name of a file under plugins/, and whether it is a package."""
    rel = path.relative_to(PLUGINS).with_suffix("")
    parts = [PACKAGE, *rel.parts]
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _unit(module: str) -> str | None:
    """The built-in plugin a module belongs to: ``gguf_format`` for
    ``modelbuild_plugins.gguf_format.writer``, ``targets`` for ``modelbuild_plugins.targets``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PACKAGE else None


def _public_names(unit: str) -> set[str]:
    """``__all__`` of a built-in plugin (its package's ``__init__.py``, or its module), read
    from the source; without one, nothing in it is public."""
    init = PLUGINS / unit / "__init__.py"
    source = init if init.exists() else PLUGINS / f"{unit}.py"
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def violations(path: Path, source: str | None = None) -> list[str]:
    """Every import in the module at *path* that breaks the rules, as ``file:line: why``."""
    module, is_package = _module_of(path)
    own = _unit(module)
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    where = path.relative_to(REPO)
    found = []

    def check(target: str, names: list[str] | None, line: int) -> None:
        """*target*: an imported module; *names*: what is taken from it (None: the module itself)."""
        if target == "modelbuild" and names is not None:
            for name in names:
                if name != "api":
                    found.append(f"{where}:{line}: imports modelbuild.{name}: import from modelbuild.api only")
        elif target == "modelbuild" or target.startswith("modelbuild."):
            if target != "modelbuild.api":
                found.append(f"{where}:{line}: imports {target}: import from modelbuild.api only")
        elif target == PACKAGE and names is not None:
            for name in names:
                check(f"{PACKAGE}.{name}", None, line)
        elif _unit(target) not in (None, own):
            unit = _unit(target)
            if target != f"{PACKAGE}.{unit}" or names is None:
                found.append(f"{where}:{line}: imports {target}, a module of the {unit} plugin: import "
                             f"names from {PACKAGE}.{unit} (its __all__) instead")
                return
            public = _public_names(unit)
            for name in names:
                if name not in public:
                    found.append(f"{where}:{line}: imports {name} from {target}, which is not in its __all__")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(alias.name, None, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            check(_absolute(node, module, is_package), [a.name for a in node.names], node.lineno)
    return found


def test_plugins_import_only_modelbuild_api_and_public_plugin_names():
    files = sorted(PLUGINS.rglob("*.py"))
    assert len(files) > 20
    problems = [v for f in files for v in violations(f)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("source, expected", [
    ("from modelbuild.api import hookimpl, WeightFile\nimport modelbuild.api\nfrom modelbuild import api\n", []),
    ("from modelbuild.errors import UsageError\n", ["3: imports modelbuild.errors"]),
    ("def f():\n    from modelbuild.weights import Output\n", ["4: imports modelbuild.weights"]),
    ("from modelbuild import errors\n", ["3: imports modelbuild.errors"]),
    ("import modelbuild.planner\n", ["3: imports modelbuild.planner"]),
    ("from modelbuild.api._kinds import Quantizer\n", ["3: imports modelbuild.api._kinds"]),
    ("from modelbuild_plugins.gguf_format import write_header\n", []),
    ("from modelbuild_plugins.gguf_format import _pwrite_all\n", ["3: imports _pwrite_all from"]),
    ("from modelbuild_plugins.gguf_format.writer import write_header\n", ["3: imports modelbuild_plugins.gguf_format.writer"]),
    ("from ..gguf_format.reader import parse_header\n", ["3: imports modelbuild_plugins.gguf_format.reader"]),
    ("from ..gguf_format import parse_header\n", []),
    ("from modelbuild_plugins.targets import CpuTarget\n", ["3: imports CpuTarget from"]),
    ("from modelbuild_plugins import gguf_format\n", ["3: imports modelbuild_plugins.gguf_format, a module"]),
    ("import modelbuild_plugins.safetensors_format\n", ["3: imports modelbuild_plugins.safetensors_format, a module"]),
    ("from .convert import HfToGguf\nfrom modelbuild_plugins.hf_to_gguf.tokenizer import Vocab\n", []),
])
def test_the_import_rules_catch_what_they_should(source, expected):
    """The checker itself, on made-up module text (as plugins/hf_to_gguf/keys.py)."""
    found = violations(PLUGINS / "hf_to_gguf" / "keys.py", "\n\n" + source)
    assert len(found) == len(expected), found
    for line, want in zip(found, expected):
        assert line.startswith("plugins/hf_to_gguf/keys.py:") and want in line, (line, want)


def test_cross_plugin_names_are_public():
    """What hf-to-gguf takes from the GGUF and safetensors plugins is in their __all__ (the
    rule above checks it; this names the dependency so a rename shows up here too)."""
    assert {"DEFAULT_ALIGNMENT", "encode_value", "write_header"} <= _public_names("gguf_format")
    assert "read_header" in _public_names("safetensors_format")


# -- the api module -----------------------------------------------------------------------------


def test_every_api_name_is_importable_documented_and_exported():
    assert len(set(api.__all__)) == len(api.__all__)
    for name in api.__all__:  # names load on first use (PEP 562): load them all
        getattr(api, name)
    assert sorted(dir(api)) == sorted(api.__all__)
    public = {n for n, v in vars(api).items() if not n.startswith("_") and not inspect.ismodule(v)} - {"annotations"}
    assert public == set(api.__all__), "every public name is in __all__, and only those"
    doc = api.__doc__ or ""
    for name in api.__all__:
        exec(f"from modelbuild.api import {name}", {})
        assert f"``{name}``" in doc, f"{name} is not in modelbuild.api's reference (its docstring)"
        obj = getattr(api, name)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__.startswith("modelbuild.api"):
            own = obj.__doc__ or ""
            assert own.strip() and not own.startswith(f"{name}("), f"{name} has no docstring"


def test_importing_the_api_is_cheap():
    code = ("import sys, modelbuild.api; heavy = ('numpy', 'gguf', 'safetensors', 'requests', 'onnx', "
            "'modelbuild.frontend', 'modelbuild.planner', 'modelbuild.solver'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_modelfile_frontend_is_the_registered_one():
    host = plugin_host()
    frontend = api.modelfile_frontend()
    assert type(host.frontends.get("modelfile")) is type(frontend)
    assert isinstance(frontend, api.Frontend)


# -- the built-in plugins against their Protocols -----------------------------------------------

REGISTRIES = {
    "modelbuild_register_frontends": "frontends",
    "modelbuild_register_sources": "sources",
    "modelbuild_register_layer_codecs": "codecs",
    "modelbuild_register_formats": "formats",
    "modelbuild_register_quantizers": "quantizers",
    "modelbuild_register_shard_strategies": "shard_strategies",
    "modelbuild_register_converters": "converters",
    "modelbuild_register_targets": "targets",
    "modelbuild_register_engines": "engines",
    "modelbuild_register_signers": "signers",
    "modelbuild_register_executors": "executors",
}


def test_every_core_register_hook_has_a_protocol():
    from modelbuild import hookspecs

    hooks = {n for n in vars(hookspecs) if n.startswith("modelbuild_register_")}
    assert hooks == set(PLUGIN_KINDS) == set(REGISTRIES)


def _call_shape(method: object) -> tuple[list[str], list[str]]:
    """What the core passes to a Protocol method: its positional parameters (after self)
    and its keyword-only ones."""
    params = list(inspect.signature(method).parameters.values())[1:]
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keywords = [p.name for p in params if p.kind == p.KEYWORD_ONLY]
    return positional, keywords


def _methods(protocol: type) -> list[str]:
    return [n for n, v in vars(protocol).items() if inspect.isfunction(v) and not n.startswith("_")]


@pytest.mark.parametrize("hook", sorted(REGISTRIES))
def test_builtin_plugins_satisfy_their_protocol(hook):
    protocol = PLUGIN_KINDS[hook]
    registry = getattr(plugin_host(), REGISTRIES[hook])
    assert registry.names()
    from modelbuild.api import RemoteSource

    for obj in registry:
        # a source whose files are elsewhere is a RemoteSource (since 1.2)
        kind = RemoteSource if hook == "modelbuild_register_sources" and not hasattr(obj, "resolve") else protocol
        assert isinstance(obj, kind), f"{obj.name}: not a {kind.__name__}"
        for method in _methods(kind):
            positional, keywords = _call_shape(getattr(kind, method))
            # the core's call binds: every positional argument and every keyword it may pass
            inspect.signature(getattr(obj, method)).bind(*positional, **{k: k for k in keywords})


# the options each built-in transform accepts (the frontend checks them from these
# declarations; the plugins check none by hand); the shard strategies take none
DECLARED = {
    ("quantizers", "gguf-quantize"): {"keep": list, "pure": bool},
    ("quantizers", "safetensors-cast"): {"keep": list},
    ("converters", "hf-to-gguf"): {"outtype": str, "name": str, "pre": str},
    ("shard_strategies", "gguf"): {},
    ("shard_strategies", "safetensors"): {},
}


def test_builtin_transforms_declare_the_options_they_accept():
    host = plugin_host()
    builtin = {(reg, name) for reg in ("quantizers", "converters", "shard_strategies")
               for name in getattr(host, reg).names()
               if getattr(host, reg).owner(name) in ("gguf", "safetensors", "hf-gguf")}
    assert builtin == set(DECLARED)
    for (reg, name), expected in DECLARED.items():
        options = getattr(host, reg).get(name).options
        assert isinstance(options, tuple) and all(isinstance(o, api.OptionSpec) for o in options)
        assert {o.name: o.type for o in options} == expected, name
        assert all(o.help for o in options)
    converter = host.converters.get("hf-to-gguf")
    outtype = next(o for o in converter.options if o.name == "outtype")
    assert outtype.choices == converter.outtypes and outtype.default == converter.outtypes[0]
    from modelbuild_plugins.hf_to_gguf import OPTIONS

    assert tuple(o.name for o in converter.options) == OPTIONS


def test_option_specs_reject_what_the_frontend_could_not_check():
    with pytest.raises(TypeError):
        api.OptionSpec("keep", dict, help="patterns")
    with pytest.raises(TypeError):
        api.OptionSpec("jobs", int, choices=("1", "2"), help="workers")
    with pytest.raises(ValueError):
        api.OptionSpec("outtype", str, choices=("f16",), default="f32", help="type")
    with pytest.raises(ValueError):
        api.OptionSpec("--keep", list, help="patterns")


def test_provisional_kinds_say_so_and_are_checkable():
    for kind in (api.Attester, api.Attestation):
        assert (kind.__doc__ or "").lstrip().startswith("PROVISIONAL"), kind.__name__

    class Signer:
        name = "sig"
        predicate_type = ""

        def attest(self, subject):
            return None

    assert isinstance(Signer(), api.Attester) and not isinstance(Signer(), api.Executor)


def test_executors_are_a_kind_of_api_1_4_and_step_request_is_gone():
    """Executors left the provisional list when their hook arrived (Since: 1.4); the
    whole-step StepRequest drafted with them gave way to work items (Work)."""
    from modelbuild import hookspecs

    assert "Since: 1.4" in (hookspecs.modelbuild_register_executors.__doc__ or "")
    for kind in (api.Executor, api.ExecutorSession, api.ExecutorSetup, api.Work):
        assert not (kind.__doc__ or "").lstrip().startswith("PROVISIONAL"), kind.__name__
    assert not hasattr(api, "StepRequest")
    host = plugin_host()
    assert isinstance(api.local_executor(), api.Executor)
    assert host.executors.owner("local") == "local-executor" and host.executors.owner("ray") == "ray"
    for name in host.executors.names():
        assert isinstance(host.executors.get(name), api.Executor), name


def test_signers_are_a_kind_of_api_1_3_and_subject_is_no_longer_provisional():
    """Signing left the provisional list when its hook arrived (Since: 1.3), taking the
    Subject it signs along."""
    from modelbuild import hookspecs

    assert "Since: 1.3" in (hookspecs.modelbuild_register_signers.__doc__ or "")
    for kind in (api.Signer, api.Subject, api.SigningKey, api.VerifyingKey, api.SignatureRepository, api.Verified):
        assert not (kind.__doc__ or "").lstrip().startswith("PROVISIONAL"), kind.__name__
    assert isinstance(api.cosign_signer(), api.Signer)
    assert plugin_host().signers.owner("cosign") == "cosign"
    with pytest.raises(dataclasses.FrozenInstanceError):
        api.Subject("sha256:" + "0" * 64, 2, "application/vnd.oci.image.manifest.v1+json").digest = "x"  # type: ignore[misc]


def test_engines_are_a_kind_of_api_1_1_not_provisional():
    """Engines left the provisional list when their hook arrived (Since: 1.1)."""
    assert not (api.Engine.__doc__ or "").lstrip().startswith("PROVISIONAL")
    assert not hasattr(api, "PulledModel")
    model = api.EngineModel(name="m", path=PurePosixPath("/models/m"), weights=("m.gguf",))
    assert model.weight_path == PurePosixPath("/models/m/m.gguf")
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.name = "other"  # type: ignore[misc]
    assert set(api.ENGINE_PROTOCOLS) >= {"openai", "open-inference-v2"}


def test_the_documented_quantizer_satisfies_its_protocol():
    """docs/plugins.md's hook and class blocks run as written, import only modelbuild.api,
    and make a Quantizer."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "plugins.md").read_text(), re.S)
    code = "\n".join(b for b in blocks if b.startswith(("from modelbuild.api", "class Int8Rowwise")))
    assert "from modelbuild.api import" in code and "class Int8Rowwise" in code
    assert all(m == "modelbuild.api" for m in re.findall(r"from (modelbuild[\w.]*) import", "\n".join(blocks))
               if not m.startswith("modelbuild.testing"))
    namespace: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    assert isinstance(namespace["Int8Rowwise"](), api.Quantizer)
    assert plugin_host(type("Doc", (), {"modelbuild_register_quantizers": staticmethod(
        namespace["modelbuild_register_quantizers"])})()).quantizers.owner("int8-rowwise") == "Doc"


def test_the_plugin_host_is_the_lookup_plugins_get():
    assert isinstance(plugin_host(), api.PluginLookup)


def test_the_documented_frontend_builds_what_the_equivalent_modelfile_builds(tmp_path):
    """docs/plugins.md's frontend, run as written: its description builds the same artifact,
    digest for digest, as the Modelfile that says the same, and its errors point at its lines."""
    import re
    import shutil

    from modelbuild.errors import ModelfileError
    from modelbuild.testing import build_with

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "plugins.md").read_text(), re.S)
    code = next(b for b in blocks if "class Listfile" in b)
    namespace: dict = {"__name__": "listfile_plugin"}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    plugin = type("ListfilePlugin", (), {"modelbuild_register_frontends": staticmethod(
        namespace["modelbuild_register_frontends"])})()

    model = tmp_path / "model"
    shutil.copytree(REPO / "Modelfile.examples" / "tiny-llama" / "model", model)
    (model / "build.list").write_text("# syntax=listfile\nname tiny\nconfig *.json\nmodel *.safetensors\n"
                                      "quantize bfloat16\n")
    (model / "Modelfile").write_text("NAME tiny\nCONFIG *.json\nMODEL *.safetensors\nQUANTIZE bfloat16\n")
    listed = build_with(model / "build.list", tmp_path / "a", plugin)
    modelfile = build_with(model / "Modelfile", tmp_path / "b")
    assert listed.digest == modelfile.digest
    assert listed.config["config"]["precision"] == "bfloat16"

    (model / "build.list").write_text("# syntax=listfile\nmodel *.safetensors\nquantize q9_9\n")
    with pytest.raises(ModelfileError) as info:
        build_with(model / "build.list", tmp_path / "a", plugin)
    assert info.value.render().startswith(f"{model / 'build.list'}:3:1: unknown quant type q9_9")


def test_the_example_third_party_plugin_imports_only_modelbuild_api():
    """tests/data/modelbuild-int8-plugin is docs/plugins.md's example distribution."""
    for path in sorted((REPO / "tests" / "data" / "modelbuild-int8-plugin").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad = [n for n in names if n.split(".")[0] == "modelbuild" and n != "modelbuild.api"]
            assert not bad, f"{path.name}:{node.lineno} imports {bad[0]}"
