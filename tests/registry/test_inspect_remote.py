"""``inspect --remote``: an artifact looked at in the registry, not pulled. The multi-platform
example is pushed to a real registry, then inspected through a counting proxy: the index, each
variant's manifest and config are read; no layer blob is requested; nothing is stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support import EXAMPLES
from test_run import error_of

MULTI = EXAMPLES / "multi-platform"


@pytest.fixture(scope="module")
def pushed_multi(registry, tmp_path_factory) -> tuple[str, dict]:
    """The multi-platform example in the registry as ``team/remote-multi:1``, and its local
    index document (what the remote one must be, byte for byte)."""
    home = tmp_path_factory.mktemp("remote-push-home")
    env = {**os.environ, "MODELBUILD_HOME": str(home)}
    ref = f"{registry.host}/team/remote-multi:1"
    run = subprocess.run([sys.executable, "-m", "modelbuild", "build", "-f", str(MULTI / "Modelfile"), "-t", ref,
                          "--push", "--plain-http", "--progress", "quiet", "--json", str(MULTI)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    local = subprocess.run([sys.executable, "-m", "modelbuild", "inspect", ref, "--json"], env=env,
                           capture_output=True, text=True, check=True)
    return "team/remote-multi:1", json.loads(local.stdout)


def test_an_index_is_read_without_downloading_a_layer(pushed_multi, proxy, mb, home):
    path, local = pushed_multi
    proxy.reset()
    doc = mb("inspect", "--remote", f"{proxy.host}/{path}", "--plain-http", "--json").json()
    assert doc["digest"] == local["digest"]
    remote_rows = [(v["stage"], v["format"], v["quantization"], v["digest"], v["size"]) for v in doc["variants"]]
    local_rows = [(v["stage"], v["format"], v["quantization"], v["digest"], v["size"]) for v in local["variants"]]
    assert remote_rows == local_rows and [r[0] for r in remote_rows] == ["cpu", "cuda", "rocm"]
    configs = {v["config"]["digest"] for v in doc["variants"]}
    assert proxy.count("GET", "/blobs/") == len(configs), "the configs, and not one layer"
    assert proxy.count("GET", "/manifests/") == 1 + len(doc["variants"])
    assert not (home / "store").exists(), "nothing stored"


def test_one_variant_shows_its_files(pushed_multi, proxy, mb):
    path, _local = pushed_multi
    run = mb("inspect", "--remote", f"{proxy.host}/{path}", "--plain-http", "--platform", "cuda")
    assert run.rc == 0, run.err
    assert "model.safetensors" in run.out and "precision:     bfloat16" in run.out
    assert "Memory:" not in run.out, "the estimate needs config.json, a layer: left out"


def test_a_reference_that_names_no_registry_is_refused(mb):
    run = mb("inspect", "--remote", "qwen2:0.5b")
    assert error_of(run, 2) == ("modelbuild: error: --remote qwen2:0.5b: not a registry reference "
                                "(write it as registry.example.com/team/model:tag)")
