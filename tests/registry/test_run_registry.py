"""``modelbuild run`` of a registry reference, against a real registry: the multi-platform
example pushed, then run from machines whose stores are empty. The variant is chosen for
this host (the cpu one, GGUF Q8_0), pulled into the store, and served by its files; the
store then holds it, so a later run needs no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from run_engines import use_probe
from support import EXAMPLES
from test_run import error_of

MULTI = EXAMPLES / "multi-platform"


@pytest.fixture(scope="module")
def pushed(registry, tmp_path_factory) -> str:
    """The multi-platform example in the registry, as ``HOST/team/multi:1``."""
    import os
    import subprocess
    import sys

    ref = f"{registry.host}/team/multi:1"
    home = tmp_path_factory.mktemp("push-home")
    env = {**os.environ, "MODELBUILD_HOME": str(home)}
    run = subprocess.run([sys.executable, "-m", "modelbuild", "build", "-f", str(MULTI / "Modelfile"), "-t", ref,
                          "--push", "--plain-http", "--progress", "quiet", str(MULTI)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return ref


def test_run_pulls_the_host_variant_once_then_runs_from_the_store(pushed, mb, home, monkeypatch):
    use_probe(monkeypatch)
    plan = mb("run", pushed, "--plain-http", "--engine", "probe", "--dry-run", "--json").json()
    assert plan["engine"] == "probe" and plan["stage"] == "cpu" and plan["target"] == "cpu"
    assert [f for f in plan["files"] if f.endswith(".gguf")], plan["files"]
    assert (home / "store").is_dir()
    # the store has it now: --pull never works, with no registry flags at all
    again = mb("run", pushed, "--pull", "never", "--engine", "probe", "--dry-run", "--json").json()
    assert again["digest"] == plan["digest"]


def test_pull_never_on_an_empty_store_is_a_clear_error(pushed, mb, monkeypatch):
    use_probe(monkeypatch)
    run = mb("run", pushed, "--pull", "never", "--dry-run")
    assert error_of(run, 2).startswith(f"modelbuild: error: {pushed} is not in the local store")


def test_an_engine_that_cannot_serve_the_chosen_variant_says_why_and_names_others(pushed, mb, monkeypatch):
    use_probe(monkeypatch)
    run = mb("run", pushed, "--plain-http", "--platform", "rocm", "--engine", "probe", "--dry-run")
    line = error_of(run, 2)
    assert line.startswith("modelbuild: error: engine probe cannot serve this variant (safetensors float16 for rocm): "
                           "probe runs on cpu, not rocm"), line


def test_run_pulls_only_the_variant_this_host_runs(pushed, mb, home, monkeypatch):
    """Of a three-variant index, ``run`` downloads the cpu variant's blobs alone (a 70 B model
    is not fetched three times to serve one variant); its tag keeps what the index entry
    said it is for, and ``--platform rocm`` later pulls the index to choose from."""
    import json

    use_probe(monkeypatch)
    plan = mb("run", pushed, "--plain-http", "--engine", "probe", "--dry-run", "--json").json()
    store = home / "store"
    index = json.loads((store / "index.json").read_text())
    (tagged,) = [m for m in index["manifests"]
                 if m["annotations"]["org.opencontainers.image.ref.name"] == pushed]
    assert tagged["digest"] == plan["digest"] and tagged["annotations"]["dev.modelbuild.platform.target"] == "cpu"
    blobs = {p.name for p in (store / "blobs" / "sha256").iterdir()}
    manifest = json.loads((store / "blobs" / "sha256" / plan["digest"][7:]).read_text())
    assert {layer["digest"][7:] for layer in manifest["layers"]} <= blobs
    assert not any(f.endswith(".safetensors") for f in plan["files"]), "no other variant's weights"
    weights = [p for p in blobs if (store / "blobs" / "sha256" / p).stat().st_size > 100_000]
    assert len(weights) == 1, "only the cpu variant's weight file came"
    rocm = mb("run", pushed, "--plain-http", "--platform", "rocm", "--engine", "probe", "--dry-run")
    assert "probe runs on cpu, not rocm" in rocm.err  # the index was pulled to choose rocm from
