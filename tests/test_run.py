"""``modelbuild run``: resolution, materialisation by hard links, engine choice and the engine
process's whole life (ready, serving, SIGTERM with nothing left behind, early exit, port in
use), with a small real server as the engine (tests/run_engines.py). The built-in engines'
own servers are tested in tests/test_engine_*.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from run_engines import use_probe
from support import REPO, Run

HARNESS = Path(__file__).resolve().parent / "run_engines.py"
ONNX_EXAMPLE = REPO / "Modelfile.examples" / "onnx"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlp(mb) -> str:
    """The bundled ONNX example, built into the test's store as ``mlp:1``."""
    run = mb("build", "-f", str(ONNX_EXAMPLE / "Modelfile"), "-t", "mlp:1", "--progress", "quiet", str(ONNX_EXAMPLE))
    assert run.rc == 0, run.err
    return "mlp:1"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def descendants(pid: int) -> set[int]:
    """Every live process below *pid*, walking /proc (independently of modelbuild's own walk)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent[int(entry)] = int(fh.read().rsplit(")", 1)[-1].split()[1])
            except (OSError, ValueError):
                pass
    out, todo = set(), [pid]
    while todo:
        current = todo.pop()
        for child, ppid in parent.items():
            if ppid == current and child not in out:
                out.add(child)
                todo.append(child)
    return out


class Served:
    """``python tests/run_engines.py run …`` in the background, its output in files."""

    def __init__(self, tmp: Path, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.out, self.err = tmp / "run.out", tmp / "run.err"
        full = {**os.environ, "MODELBUILD_HOME": str(home), **(env or {})}
        self.proc = subprocess.Popen([sys.executable, str(HARNESS), "run", *args], env=full,
                                     stdout=self.out.open("wb"), stderr=self.err.open("wb"))

    def wait_line(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.out.read_text()
            if text in out:
                return out
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.kill()
        pytest.fail(f"no {text!r} from modelbuild run; stdout:\n{self.out.read_text()}\nstderr:\n{self.err.read_text()}")

    def kill(self) -> None:
        for pid in descendants(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.kill()
        self.proc.wait()


def error_of(run: Run, code: int) -> str:
    """The one error line of a failed ``run``: the last line of standard error (the engine's
    log and the pull progress come before it), exit *code*, never a traceback."""
    assert run.rc == code, (run.rc, run.err)
    assert "Traceback" not in run.err and "internal error" not in run.err, run.err
    errors = [line for line in run.err.splitlines() if line.startswith("modelbuild: error: ")]
    assert len(errors) == 1 and run.err.rstrip().endswith(errors[0]), run.err
    return errors[0]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


# -- the whole life of an engine --------------------------------------------------------------


def test_run_serves_reports_ready_and_sigterm_leaves_no_process(mlp, home, tmp_path, cli):
    port = free_port()
    pidfile = tmp_path / "escaped.pid"
    served = Served(tmp_path, home, mlp, "--engine", "probe", "--port", str(port), "--param", "mode=escape",
                    "--", "--verbose", env={"PROBE_PIDFILE": str(pidfile)})
    out = served.wait_line("serving")
    assert f"serving tiny-onnx-mlp with probe at http://127.0.0.1:{port}/v1 (openai)" in out
    tree = descendants(served.proc.pid)
    assert tree, "the engine is a child of modelbuild run"
    escaped = int(pidfile.read_text())
    assert escaped in tree and alive(escaped)
    # the engine serves the variant's own bytes, from the materialised directory
    model = get_json(f"http://127.0.0.1:{port}/v1/models")["data"][0]
    onnx = (ONNX_EXAMPLE / "model" / "model.onnx").read_bytes()
    import hashlib
    assert model["sha256"] == hashlib.sha256(onnx).hexdigest()
    assert model["extra"] == ["--verbose"], "arguments after -- reach the engine unchanged"
    assert json.loads((Path(model["cwd"]) / "probe.json").read_text()) == {"name": "tiny-onnx-mlp"}

    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=30) == 0
    assert [pid for pid in tree if alive(pid)] == [], "SIGTERM left a process of the engine behind"
    assert not alive(escaped), "a grandchild in a session of its own was killed too"
    err = served.err.read_text()
    assert "probe| loading" in err and "stopped probe" in err
    assert not Path(model["cwd"]).exists(), "the engine's work directory is removed"


def test_an_engine_that_ignores_sigterm_is_killed_after_the_stop_timeout(mlp, home, tmp_path):
    port = free_port()
    served = Served(tmp_path, home, mlp, "--engine", "probe", "--port", str(port), "--param", "mode=ignore-term",
                    "--stop-timeout", "1")
    served.wait_line("serving")
    tree = descendants(served.proc.pid)
    start = time.monotonic()
    served.proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert served.proc.wait(timeout=30) == 0
    assert 0.9 < time.monotonic() - start < 15
    assert not [pid for pid in tree if alive(pid)]


def test_engine_exiting_early_shows_its_last_lines(mlp, mb, monkeypatch):
    use_probe(monkeypatch)
    run = mb("run", mlp, "--engine", "probe", "--port", str(free_port()), "--param", "mode=exit-early")
    assert run.rc == 1
    assert error_of(run, 1) == "modelbuild: error: probe exited with status 3 before it was ready (its log is above)"
    assert "tensor 'blk.0.attn_q.weight' has the wrong shape" in run.err


def test_port_in_use_is_refused_before_anything_starts(mlp, mb, monkeypatch):
    use_probe(monkeypatch)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        run = mb("run", mlp, "--engine", "probe", "--port", str(port))
    assert run.rc == 2
    assert error_of(run, 2) == f"modelbuild: error: port {port} on 127.0.0.1 is in use (stop what listens there, or pick another with --port)"
    assert "probe|" not in run.err


# -- materialisation ----------------------------------------------------------------------------


def test_files_are_hard_links_to_the_store_and_a_second_run_does_nothing(mlp, mb, home, monkeypatch):
    use_probe(monkeypatch)
    plan = mb("run", mlp, "--engine", "probe", "--dry-run", "--json").json()
    assert plan["engine"] == "probe"
    run = mb("run", mlp, "--engine", "probe", "--port", str(free_port()), "--param", "mode=exit-early")
    assert run.rc == 1 and "(2 linked, 0 copied)" in run.err
    root = Path(plan["path"])
    store_blobs = home / "store" / "blobs" / "sha256"
    for name in plan["files"]:
        st = os.lstat(root / name)
        assert st.st_nlink >= 2 and (store_blobs / _hex_of(root / name)).stat().st_ino == st.st_ino
        assert not st.st_mode & 0o222, "materialised files are read-only"
    assert not os.stat(root).st_mode & stat.S_IWUSR, "and so is their directory"
    again = mb("run", mlp, "--engine", "probe", "--port", str(free_port()), "--param", "mode=exit-early")
    assert "nothing to do: already there" in again.err


def _hex_of(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_damaged_materialisation_is_done_again(mlp, mb, monkeypatch):
    use_probe(monkeypatch)
    plan = mb("run", mlp, "--engine", "probe", "--dry-run", "--json").json()
    mb("run", mlp, "--engine", "probe", "--port", str(free_port()), "--param", "mode=exit-early")
    root = Path(plan["path"])
    os.chmod(root, 0o755)
    os.unlink(root / "model.onnx")
    run = mb("run", mlp, "--engine", "probe", "--port", str(free_port()), "--param", "mode=exit-early")
    assert "(2 linked, 0 copied)" in run.err and (root / "model.onnx").exists()


# -- choosing the engine ------------------------------------------------------------------------


def test_dry_run_prints_the_exact_command_and_starts_nothing(mlp, mb, monkeypatch):
    use_probe(monkeypatch)
    run = mb("run", mlp, "--engine", "probe", "--port", "18555", "--context", "512", "--dry-run", "--", "-x")
    assert run.rc == 0, run.err
    plan = mb("run", mlp, "--engine", "probe", "--port", "18555", "--context", "512", "--dry-run", "--json",
              "--", "-x").json()
    assert f"command:  {plan['command']}" in run.out
    assert plan["argv"][-1] == "-x" and "--port" in plan["argv"] and "18555" in plan["argv"]
    assert plan["env"] == {"PROBE_CONTEXT": "512"}
    assert plan["health"] == "http://127.0.0.1:18555/health"
    assert not Path(plan["path"]).exists(), "a dry run materialises nothing"


def test_an_engine_not_installed_says_how_to_install_it(mlp, mb, monkeypatch):
    use_probe(monkeypatch)
    run = mb("run", mlp, "--engine", "probe", env={"PROBE_MISSING": "no probe-engine on PATH"})
    assert error_of(run, 2) == ("modelbuild: error: engine probe is not installed here: no probe-engine on PATH "
                                "(install it: pip install probe-engine)")


def test_no_installed_engine_names_each_engine_with_its_reason(mb, monkeypatch, tmp_path):
    """The bundled safetensors example on a CPU machine: llama.cpp wants GGUF, ONNX Runtime
    ONNX, vLLM and TGI a GPU; the probe would serve it but is not installed."""
    use_probe(monkeypatch)
    tiny = REPO / "Modelfile.examples" / "tiny-llama"
    assert mb("build", "-f", str(tiny / "Modelfile"), "-t", "tiny:1", "-q", str(tiny / "model")).rc == 0
    run = mb("run", "tiny:1", env={"PROBE_MISSING": "no probe-engine on PATH"})
    line = error_of(run, 2)
    assert line.startswith("modelbuild: error: no installed engine serves this variant (safetensors float32): ")
    for part in ("llama.cpp: llama.cpp runs gguf files; this variant is safetensors",
                 "onnxruntime: onnxruntime runs onnx files", "probe: not installed (no probe-engine on PATH)",
                 "for probe: pip install probe-engine"):
        assert part in line, (part, line)


def test_unknown_engine_and_unknown_parameter_are_usage_errors(mlp, mb, monkeypatch):
    use_probe(monkeypatch)
    run = mb("run", mlp, "--engine", "prob", "--dry-run")
    assert error_of(run, 2).startswith("modelbuild: error: --engine prob: no such engine; did you mean probe? "
                                       "(installed engine plugins: llama.cpp, onnxruntime, probe, ")
    run = mb("run", mlp, "--engine", "probe", "--param", "dealy=1", "--dry-run")
    assert error_of(run, 2) == ("modelbuild: error: --param: engine probe has no parameter 'dealy'; did you mean 'delay'? "
                                 "(its parameters: delay, mode)")
    run = mb("run", mlp, "--engine", "probe", "--param", "delay", "--dry-run")
    assert error_of(run, 2) == "modelbuild: error: --param delay: expected KEY=VALUE"


def test_the_runtime_description_chooses_the_engine_its_parameters_and_context(mb, tmp_path, monkeypatch):
    """RUNTIME lines of the build reach the engine through the variant's runtime description
    (an OCI referrer in the store); the command line overrides them."""
    use_probe(monkeypatch)
    ctx = tmp_path / "ctx"
    import shutil
    shutil.copytree(ONNX_EXAMPLE / "model", ctx)
    (ctx / "Modelfile").write_text("NAME described\nCONFIG config.json\nMODEL model.onnx\n"
                                   "RUNTIME probe delay=0.5\nRUNTIME context=77\n")
    assert mb("build", "-f", "Modelfile", "-t", "described:1", "-q", ".", cwd=ctx).rc == 0
    plan = mb("run", "described:1", "--dry-run", "--json").json()
    assert plan["engine"] == "probe", "the description's engine, though onnxruntime comes first by name"
    assert plan["params"] == {"delay": "0.5"} and plan["argv"][plan["argv"].index("--delay") + 1] == "0.5"
    assert plan["env"] == {"PROBE_CONTEXT": "77"}
    plan = mb("run", "described:1", "--dry-run", "--json", "--context", "99", "--param", "delay=0").json()
    assert plan["params"] == {"delay": "0"} and plan["env"] == {"PROBE_CONTEXT": "99"}
    plan = mb("run", "described:1", "--dry-run", "--json", "--engine", "onnxruntime").json()
    assert plan["engine"] == "onnxruntime" and plan["params"] == {}, "another engine gets none of probe's parameters"
