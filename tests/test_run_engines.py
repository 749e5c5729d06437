"""``modelbuild run`` end to end, as a user runs it, with the real engines:

* the bundled ONNX example through ONNX Runtime behind MLServer (the Open Inference
  Protocol): outputs bit for bit those of onnxruntime running the original file;
* the bundled example converted to GGUF and quantized to Q4_K_M (Modelfile.examples/
  convert-quantize) through llama.cpp's server: ``/v1/completions`` gives exactly the tokens
  llama.cpp gives for the same file loaded in this process.

Each is the real CLI in its own process: it must choose the engine itself, report the
endpoint once healthy, serve, and on SIGTERM exit 0 with no process left (the tree walked
in /proc before and after)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engines import alive, build_example, descendants, free_port, http_json, modelbuild
from support import EXAMPLES, require_module


class Running:
    """``python -m modelbuild run …`` in the background; its first stdout line is the JSON
    ready event (``--json``)."""

    def __init__(self, home: Path, tmp: Path, *args: str) -> None:
        env = {**os.environ, "MODELBUILD_HOME": str(home)}
        self.err = tmp / "run.err"
        self.proc = subprocess.Popen([sys.executable, "-m", "modelbuild", "run", *args, "--json"], env=env,
                                     stdout=subprocess.PIPE, stderr=self.err.open("wb"), text=True)

    def ready(self, timeout: float = 180) -> dict:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            self.kill()
            pytest.fail(f"modelbuild run was not ready after {timeout}s:\n{self.err.read_text()}")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            pytest.fail(f"modelbuild run exited {self.proc.returncode}:\n{self.err.read_text()}")
        event = json.loads(line)
        assert event["event"] == "ready", event
        return event

    def terminate(self) -> tuple[int, set[int]]:
        """SIGTERM, as systemd or Kubernetes stops it: (exit status, processes still alive
        of those that were below it)."""
        tree = descendants(self.proc.pid)
        assert tree, "the engine runs below modelbuild run"
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        deadline = time.monotonic() + 5
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        return code, alive(tree)

    def kill(self) -> None:
        for pid in descendants(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.kill()
        self.proc.wait()


def test_onnx_through_onnxruntime_behind_mlserver(tmp_path):
    require_module("mlserver", "pip install mlserver onnxruntime")
    import numpy as np
    import onnxruntime as ort

    home = tmp_path / "home"
    tag = build_example(home, "onnx")["tags"][0]
    plan = json.loads(modelbuild(home, "run", tag, "--dry-run", "--json"))
    assert plan["engine"] == "onnxruntime", "the engine that serves ONNX is chosen by itself"
    running = Running(home, tmp_path, tag, "--port", str(free_port()))
    try:
        event = running.ready()
        assert event["engine"] == "onnxruntime" and event["protocol"] == "open-inference-v2"
        features = np.random.default_rng(12).standard_normal((5, 16), dtype=np.float32)
        body = {"inputs": [{"name": "features", "shape": [5, 16], "datatype": "FP32",
                            "data": features.flatten().tolist()}]}
        status, answer = http_json(f"{event['endpoint']}/infer", body)
        assert status == 200, answer
        got = np.array(answer["outputs"][0]["data"], dtype=np.float32).reshape(answer["outputs"][0]["shape"])
        session = ort.InferenceSession(str(EXAMPLES / "onnx" / "model" / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        expected = session.run(None, {"features": features})[0]
        assert got.tobytes() == expected.astype(np.float32).tobytes()
        code, left = running.terminate()
    except BaseException:
        running.kill()
        raise
    assert code == 0, running.err.read_text()
    assert not left, f"processes left after SIGTERM: {left}"


@pytest.mark.llama
def test_gguf_q4_k_m_through_llama_cpp_server(tmp_path):
    require_module("llama_cpp", "pip install 'llama-cpp-python[server]'")
    from test_engine_llama_cpp import CONTEXT, REQUEST, _in_process

    home = tmp_path / "home"
    tag = build_example(home, "convert-quantize")["tags"][0]
    plan = json.loads(modelbuild(home, "run", tag, "--dry-run", "--json"))
    assert plan["engine"] == "llama.cpp"
    running = Running(home, tmp_path, tag, "--port", str(free_port()), "--context", str(CONTEXT),
                      "--param", "threads=1", "--param", "seed=42")
    try:
        event = running.ready()
        assert event["engine"] == "llama.cpp" and event["endpoint"].endswith("/v1")
        status, answer = http_json(f"{event['endpoint']}/completions", {"model": event["model"], **REQUEST})
        assert status == 200, answer
        code, left = running.terminate()
    except BaseException:
        running.kill()
        raise
    assert code == 0, running.err.read_text()
    assert not left, f"processes left after SIGTERM: {left}"
    expected = _in_process(Path(plan["path"]) / "model.gguf")
    assert answer["choices"][0]["text"] == expected["choices"][0]["text"]
    assert answer["choices"][0]["logprobs"]["tokens"] == expected["choices"][0]["logprobs"]["tokens"]
    assert answer["usage"] == expected["usage"]
