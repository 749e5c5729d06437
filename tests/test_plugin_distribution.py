"""The plugin API proven from outside: a quantizer shipped as its own distribution
(tests/data/modelbuild-int8-plugin, the example of docs/plugins.md) is installed with pip
and used by a Modelfile, exactly as a third party would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from support import REPO, age
from helpers import blob, read_artifact, validate_against_shared_schema

PLUGIN = REPO / "tests" / "data" / "modelbuild-int8-plugin"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """pip-install the plugin distribution into its own directory (not the test venv)."""
    target = tmp_path_factory.mktemp("site")
    src = tmp_path_factory.mktemp("src") / "plugin"
    shutil.copytree(PLUGIN, src)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, capture_output=True)
    return target


def test_out_of_tree_quantizer_builds(cli, home, tmp_path, plugin_site):
    env = {"PYTHONPATH": os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")])}
    plugins = {p["name"]: p for p in cli("plugins", "--json", env=env).json()}
    assert plugins["int8"]["distribution"] == "modelbuild-int8"
    assert plugins["int8"]["version"] == "1.0.0"
    assert plugins["int8"]["provides"] == ["quantizer:int8-rowwise"]

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    norm = np.ones(16, dtype=np.float32)
    ctx = tmp_path / "m"
    ctx.mkdir()
    save_file({"proj.weight": w, "norm.weight": norm}, str(ctx / "model.safetensors"), metadata={"format": "pt"})
    (ctx / "config.json").write_text('{"model_type": "llama"}')
    for p in ctx.iterdir():
        age(p)
    (ctx / "Modelfile").write_text("NAME int8\nCONFIG config.json\nMODEL model.safetensors\nQUANTIZE int8-rowwise\n")
    run = cli("build", "-f", "Modelfile", "--json", "--progress", "plain", cwd=ctx, env=env)
    assert run.rc == 0, run.err
    manifest, config = read_artifact(home / "store", run.json()["digest"])
    validate_against_shared_schema(config)
    layer = next(l for l in manifest["layers"] if l["annotations"]["org.cncf.model.filepath"] == "model.safetensors")
    out = tmp_path / "out.safetensors"
    out.write_bytes(blob(home / "store", layer["digest"]))
    tensors = load_file(str(out))
    assert sorted(tensors) == ["norm.weight", "proj.weight.int8", "proj.weight.scale"]
    restored = tensors["proj.weight.int8"].astype(np.float32) * tensors["proj.weight.scale"][:, None]
    assert np.abs(restored - w).max() <= np.abs(w).max() / 127
    assert config["config"]["precision"].split(",")[0] in ("int8", "float32")

    # without the plugin installed, the same Modelfile is a clear error at its line
    missing = cli("build", "-f", "Modelfile", cwd=ctx)
    assert missing.rc == 2
    assert missing.err.startswith("Modelfile:4:1: unknown quant type int8-rowwise (known: ")
