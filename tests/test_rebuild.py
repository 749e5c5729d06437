"""``verify --rebuild``: a variant derived again from its provenance, step by step, with the
installed plugins in an empty scratch home, compared output by output. It passes for the
bundled example and for a converted and quantized variant, and fails naming the first step
when a plugin at another version makes other bytes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelbuild.api import hookimpl

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "Modelfile.examples" / "tiny-llama" / "model"
EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}

QUANTIZED = """\
NAME tiny-q4
CONFIG config.json generation_config.json tokenizer.json tokenizer_config.json
MODEL model.safetensors
DOC README.md LICENSE
TARGET cpu
CONVERT gguf
QUANTIZE q4_k_m
TARGET cuda cuda>=12.1
QUANTIZE bfloat16
"""


def _build(home: Path, modelfile: Path, tag: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "modelbuild", "build", "-f", str(modelfile), "-t", tag,
                           "--attest", "provenance", "--progress", "quiet", "--json"],
                          env={**os.environ, "MODELBUILD_HOME": str(home), **EPOCH},
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> tuple[Path, Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("rebuild")
    ctx = root / "ctx"
    shutil.copytree(TINY, ctx)
    (ctx / "Modelfile").write_text(QUANTIZED)
    return root / "home", ctx, _build(root / "home", ctx / "Modelfile", "tiny-q4:1")


def _store(home: Path) -> Any:
    from modelbuild.store import Store

    return Store(home / "store")


def test_the_bundled_example_rebuilds_from_its_store_alone(tmp_path: Path) -> None:
    from modelbuild.attest.rebuild import rebuild

    home = tmp_path / "home"
    result = _build(home, REPO / "Modelfile.examples" / "tiny-llama" / "Modelfile", "tiny:1")
    outcome = rebuild(_store(home), result["digest"])  # every input is a stored raw layer
    assert outcome.ok and outcome.first_difference is None, outcome.as_dict()
    assert outcome.steps >= 10


def test_every_variant_of_a_quantized_build_rebuilds(quantized) -> None:
    from modelbuild.attest.rebuild import rebuild

    home, ctx, result = quantized
    for variant in result["variants"]:
        outcome = rebuild(_store(home), variant["digest"], context=ctx)  # the safetensors were only hashed
        assert outcome.ok, (variant["stage"], outcome.as_dict())


def test_a_missing_input_is_one_clear_error(quantized) -> None:
    from modelbuild.attest.rebuild import RebuildError, rebuild

    home, _, result = quantized
    cpu = next(v["digest"] for v in result["variants"] if v["stage"] == "cpu")
    with pytest.raises(RebuildError, match=r"input model.safetensors \(sha256:[0-9a-f]{64}\) is not in the store"):
        rebuild(_store(home), cpu)


class _AlteredGGUF:
    """The gguf plugin as a later version that writes other bytes: its quantizer's output
    has one byte changed."""

    def __init__(self) -> None:
        import modelbuild_plugins.gguf_format as real

        self.real = real

    @hookimpl
    def modelbuild_register_formats(self, registry: Any) -> None:
        self.real.modelbuild_register_formats(registry)

    @hookimpl
    def modelbuild_register_shard_strategies(self, registry: Any) -> None:
        self.real.modelbuild_register_shard_strategies(registry)

    @hookimpl
    def modelbuild_register_quantizers(self, registry: Any) -> None:
        real = self.real.GGUFQuantizer()

        class Altered:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def quantize(self, files: Any, qtype: str, options: Any, ctx: Any) -> Any:
                outputs = real.quantize(files, qtype, options, ctx)
                for out in outputs:
                    if not str(getattr(out, "path", "")).endswith(".gguf") or not hasattr(out, "file"):
                        continue  # files passed through unchanged
                    with open(out.file, "r+b") as fh:  # the last tensor byte, changed
                        fh.seek(-1, os.SEEK_END)
                        last = fh.read(1)
                        fh.seek(-1, os.SEEK_END)
                        fh.write(bytes([last[0] ^ 0xFF]))
                return outputs

        registry.add(Altered())


def test_a_plugin_version_that_makes_other_bytes_is_named(quantized, monkeypatch) -> None:
    from modelbuild.attest.rebuild import describe_failure, rebuild
    from modelbuild.testing import plugin_host

    home, ctx, result = quantized
    monkeypatch.setenv("MODELBUILD_DISABLE_PLUGINS", "gguf")  # the installed gguf plugin, replaced
    host = plugin_host(_AlteredGGUF())
    cpu = next(v["digest"] for v in result["variants"] if v["stage"] == "cpu")
    outcome = rebuild(_store(home), cpu, context=ctx, host=host)
    assert not outcome.ok
    d = outcome.first_difference
    assert (d["label"], d["plugin"], d["outputs"]) == ("quantize q4_k_m [cpu]", "gguf", ["model.gguf"])
    assert d["recordedVersion"] != d["installedVersion"]
    line = describe_failure(outcome)
    assert f"step #{d['number']} quantize q4_k_m [cpu] (gguf {d['recordedVersion']} recorded" in line
    cuda = next(v["digest"] for v in result["variants"] if v["stage"] == "cuda")
    assert rebuild(_store(home), cuda, context=ctx, host=host).ok  # the other variant used no gguf step


def test_verify_rebuild_on_the_command_line(quantized, mb) -> None:
    home, ctx, result = quantized
    env = {"MODELBUILD_HOME": str(home)}
    run = mb("verify", "tiny-q4:1", "--rebuild", "--context", str(ctx), "--json", env=env)
    assert run.rc == 0, run.err
    doc = run.json()
    assert doc["rebuilt"] and [s["subject"] for s in doc["subjects"]] == [
        *(v["digest"] for v in result["variants"]), result["digest"]]
    missing = mb("verify", "tiny-q4:1", "--rebuild", env=env)  # the safetensors were never stored
    assert missing.rc == 1 and "input model.safetensors" in missing.err and "--context DIR" in missing.err
    assert mb("verify", "tiny-q4:1", "--context", str(ctx), env=env).rc == 2  # --context is for --rebuild
