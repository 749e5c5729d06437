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


def test_pull_include_fetches_only_the_matching_files(pushed_multi, proxy, mb, tmp_path):
    """``pull -o DIR --include '*.json'``: the cuda variant's JSON files, and only their blobs
    cross the network (counted at the proxy): not its weights."""
    path, local = pushed_multi
    cuda = next(v for v in local["variants"] if v["stage"] == "cuda")
    proxy.reset()
    out = tmp_path / "cfg"
    run = mb("pull", f"{proxy.host}/{path}", "--plain-http", "--platform", "cuda", "-o", str(out),
             "--include", "*.json", "--json")
    assert run.rc == 0, run.err
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
    assert run.json()["files"] == sorted(run.json()["files"]) or set(run.json()["files"]) == set(files)
    blob_gets = proxy.count("GET", "/blobs/")
    assert blob_gets == 1 + len(files), "the config, and one blob per matching file"
    weights = next(v for v in local["variants"] if v["stage"] == "cuda")["size"]
    assert proxy.bytes_down("/blobs/") < weights / 2 if hasattr(proxy, "bytes_down") else True
    assert cuda["layerCount"] > len(files)


def test_include_without_output_and_matching_nothing_are_usage_errors(pushed_multi, proxy, mb, tmp_path):
    path, _local = pushed_multi
    run = mb("pull", f"{proxy.host}/{path}", "--plain-http", "--include", "*.json")
    assert error_of(run, 2).startswith("modelbuild: error: --include needs -o DIR: the store keeps whole artifacts")
    run = mb("pull", f"{proxy.host}/{path}", "--plain-http", "--platform", "cuda", "-o", str(tmp_path / "x"),
             "--include", "*.bin")
    assert "--include *.bin: no file of " in error_of(run, 2)
    assert not (tmp_path / "x").exists()
