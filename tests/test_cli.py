"""The command line as a user meets it: help, shorthand, graphs, store management, outputs."""

from __future__ import annotations

import json
import os
import subprocess

from support import EXAMPLES, require_tool, write_model_dir
from helpers import read_artifact

EXAMPLE = EXAMPLES / "tiny-llama" / "Modelfile"


def test_help_lists_every_command(cli):
    # through `python -m modelbuild`: the real entry point and its exit status
    run = cli("--help")
    assert run.rc == 0
    for name in ("build", "inspect", "ls", "rm", "prune", "plugins", "version"):
        assert name in run.out
    build_help = cli("build", "--help")
    assert "--print-graph" in build_help.out and "examples:" in build_help.out


def test_version_names_modelbuild_its_plugin_api_and_the_plugins(mb):
    from modelbuild import __version__

    run = mb("version")
    assert run.rc == 0 and run.out.splitlines()[0] == f"modelbuild {__version__}"
    assert f"plugin API: {'.'.join(__version__.split('.')[:2])}" in run.out
    doc = mb("version", "--json").json()
    assert doc["version"] == __version__
    assert {"gguf", "safetensors", "hf-gguf", "targets"} <= {p["name"] for p in doc["plugins"]}


def test_shorthand_builds_the_bundled_example(mb, home):
    run = mb("-f", str(EXAMPLE), "--progress", "plain")
    assert run.rc == 0, run.err
    digest, tag = run.out.split()
    assert tag == "tiny-llama:latest" and digest.startswith("sha256:")
    assert "#1 load build context" in run.err and "DONE" in run.err
    again = mb("-f", str(EXAMPLE), "--progress", "plain")
    assert again.out == run.out
    assert "DONE" not in again.err and again.err.count("CACHED") == again.err.count("\n") // 2


def test_print_graph_formats_show_every_step_without_building(mb, home):
    text = mb("build", "-f", str(EXAMPLE), "--print-graph")
    assert text.rc == 0
    lines = text.out.splitlines()
    assert lines[0].startswith("#1") and "load build context" in lines[0]
    assert sum("ingest" in l for l in lines) == 7 and sum("pack" in l for l in lines) == 7
    assert lines[-1].split()[1] == "export"
    graph = json.loads(mb("build", "-f", str(EXAMPLE), "--print-graph=json").out)
    ops = [s["op"] for s in graph["steps"]]
    assert ops.count("digest") == 7 and ops[-4:] == ["describe", "config", "manifest", "export"]
    manifest = next(s for s in graph["steps"] if s["op"] == "manifest")
    assert len(manifest["deps"]) == 8  # config + 7 layers
    dot = mb("build", "-f", str(EXAMPLE), "--print-graph=dot").out
    assert dot.startswith("digraph build {") and dot.count("->") == sum(len(s["deps"]) for s in graph["steps"])
    assert not (home / "store").exists()  # nothing was built


def test_inspect_ls_rm_prune(mb, home):
    built = mb("-f", str(EXAMPLE), "--json", "--progress", "quiet").json()
    doc = mb("inspect", "tiny-llama", "--json").json()
    assert doc["digest"] == built["digest"]
    assert doc["config"]["descriptor"]["name"] == "tiny-llama"
    human = mb("inspect", "tiny-llama:latest")
    assert "model.safetensors" in human.out and "weight" in human.out and built["digest"] in human.out
    ls = mb("ls", "--json").json()
    assert [(e["reference"], e["digest"]) for e in ls] == [("tiny-llama:latest", built["digest"])]
    assert mb("rm", "nope:1").rc == 2
    assert mb("rm", "tiny-llama").rc == 0
    assert mb("ls", "--json").json() == []
    report = mb("prune", "--json").json()
    # 9 blobs of the artifact, and its runtime description: the referrer manifest, the
    # description document and the empty config
    assert report["deleted"] == 12 and report["corrupt"] == []
    assert mb("inspect", "tiny-llama").rc == 2


def test_prune_verify_finds_a_corrupted_blob(mb, home):
    built = mb("-f", str(EXAMPLE), "--json", "--progress", "quiet").json()
    layer = next(l for l in built["layers"] if l["annotations"]["org.cncf.model.filepath"] == "config.json")
    path = home / "store" / "blobs" / "sha256" / layer["digest"][7:]
    os.chmod(path, 0o644)
    path.write_bytes(b"{}")
    run = mb("prune", "--verify", "--json")
    assert run.rc == 1
    report = run.json()
    assert report["corrupt"] == [layer["digest"]]
    assert report["missing"] == [layer["digest"]]
    # the next build notices and writes the blob again
    rebuilt = mb("-f", str(EXAMPLE), "--json", "--progress", "quiet").json()
    assert rebuilt["digest"] == built["digest"]
    assert mb("prune", "--verify").rc == 0


def test_output_oci_layout_is_standalone_and_readable_by_skopeo(mb, home, tmp_path):
    out = tmp_path / "layout"
    built = mb("-f", str(EXAMPLE), "-t", "tiny:1", "--output", f"type=oci,dest={out}", "--json",
               "--progress", "quiet").json()
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == built["digest"]
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "tiny:1"
    manifest, config = read_artifact(out, built["digest"])
    assert len(manifest["layers"]) == 7
    assert json.loads((out / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert mb("inspect", str(out), "--json").json()["digest"] == built["digest"]
    skopeo = require_tool("skopeo", "apt-get install -y skopeo; scripts/setup-system installs it")
    raw = subprocess.run([skopeo, "inspect", "--raw", f"oci:{out}:tiny:1"], capture_output=True, check=True)
    assert json.loads(raw.stdout) == manifest
    config_raw = subprocess.run([skopeo, "inspect", "--raw", "--config", f"oci:{out}:tiny:1"], capture_output=True,
                                check=True)
    assert json.loads(config_raw.stdout) == config


def test_plugins_lists_builtins_with_versions(mb):
    plugins = {p["name"]: p for p in mb("plugins", "--json").json()}
    assert plugins["layers"]["provides"] == ["layer-format:raw", "layer-format:tar", "layer-format:tar+gzip",
                                             "layer-format:tar+zstd"]
    assert plugins["modelfile"]["distribution"] == "modelbuild"
    assert plugins["local"]["version"] == plugins["modelfile"]["version"] != "-"


def test_bad_usage_is_one_line_and_exit_2(mb, tmp_path):
    ctx = write_model_dir(tmp_path / "m", {"a": "a"})
    (ctx / "Modelfile").write_text("MODEL a\n")
    for args, text in [
        (("-f", "missing/Modelfile"), "modelbuild: error: Modelfile not found: missing/Modelfile"),
        (("-f", "Modelfile", "-t", "Bad:Tag!"), "modelbuild: error: invalid reference 'Bad:Tag!'"),
        (("-f", "Modelfile", "--output", "type=docker,dest=x"), "modelbuild: error: unsupported output type"),
        (("-f", "Modelfile", "-j", "0"), "modelbuild: error: --jobs must be at least 1"),
    ]:
        run = mb(*args, cwd=ctx)
        assert run.rc == 2, (args, run.err)
        assert run.err.startswith(text) and run.err.count("\n") == 1, run.err


def test_internal_errors_are_reported_as_bugs_without_traceback(monkeypatch, capsys):
    from modelbuild import cli as cli_module
    from modelbuild.commands import ls

    def boom(args):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(ls, "run", boom)
    monkeypatch.delenv("MODELBUILD_DEBUG", raising=False)
    assert cli_module.main(["ls"]) == 70
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: kaboom" in err and "please report" in err and "Traceback" not in err


def test_the_plan_is_a_networkx_dag_in_networkx_order():
    import networkx as nx

    from modelbuild.build import prepare

    _, desc, graph = prepare(str(EXAMPLE))
    g = graph.g
    assert isinstance(g, nx.DiGraph) and nx.is_directed_acyclic_graph(g)
    assert g.number_of_nodes() == 1 + 2 * len(desc.files) + 4  # + describe, config, manifest, export
    assert graph.order == list(nx.lexicographical_topological_sort(g, key=lambda n: graph.sort_key(graph, n)))
    # the manifest depends on the config, then every layer, in path order
    preds = sorted(g.in_edges("manifest", data="index"), key=lambda e: e[2])
    assert [p for p, _, _ in preds] == ["config", *(f"layer:{f.path}" for f in desc.files)]
    # the weight metadata is read from the weights and the config files beside them
    assert sorted(p for p, _ in g.in_edges("describe")) == [
        "digest:config.json", "digest:generation_config.json", "digest:model.safetensors", "digest:tokenizer.json",
        "digest:tokenizer_config.json"]


EXIT_NOW = r"""
import atexit, sys, threading, time
from pathlib import Path
from modelbuild.cli import exit_now

out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))

def late() -> None:  # not a daemon: the process waits for it, as Python's own exit does
    time.sleep(0.3)
    (out / "thread").write_text("done")

threading.Thread(target=late).start()
sys.stdout.write("x" * 100_000)  # buffered, no newline: flushed on the way out
exit_now(3)
"""


def test_the_command_ends_the_process_as_python_would_without_its_teardown(tmp_path):
    """``modelbuild`` skips the interpreter's teardown (``cli.exit_now``), and loses nothing
    of what Python's exit does that is seen outside the process: the exit code, a thread
    still running, an ``atexit`` handler, buffered standard output; a reader that closed
    the pipe is not an error."""
    import shlex
    import sys

    script = tmp_path / "exit_now.py"
    script.write_text(EXIT_NOW)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "x" * 100_000 and proc.stderr == ""
    assert (tmp_path / "thread").read_text() == "done" and (tmp_path / "atexit").read_text() == "ran"
    closed = subprocess.run(f"{shlex.quote(sys.executable)} {script} {tmp_path} | head -c 10", shell=True,
                            capture_output=True, text=True, timeout=60)
    assert closed.stdout == "x" * 10 and closed.stderr == "", closed.stderr


def test_python_m_modelbuild_and_the_console_script_go_the_same_way(mb):
    import sys
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "modelbuild"]
    assert script.value == "modelbuild.cli:run"
    proc = subprocess.run([sys.executable, "-m", "modelbuild", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("modelbuild ")
