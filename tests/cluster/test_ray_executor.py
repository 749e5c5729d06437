"""``build --executor ray`` on a real Ray cluster on 127.0.0.1: a head (``ray start --head``)
and a second node joined to it (``ray start --address``), one CPU each.

- CONVERT gguf + QUANTIZE q4_k_m gives the local executor's digest, and Ray's own task
  records (the state API) show the items ran on both nodes;
- SIGKILL of the second node's processes (by PID) in the middle of the quantize: Ray runs
  the lost items again on the head, and the digest is the same;
- SIGKILL of the build itself in the middle of the quantize: the next build takes the
  convert from the cache and only quantizes, with the same digest;
- an item that hangs is stopped after ``item_timeout``, in one line, its task cancelled;
- a cluster that is not there (by RAY_ADDRESS or by ray://) is one line, exit 1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from raycluster import RayCluster


# 6 layers of hidden 1024 / FFN 4096, float16: 95 M parameters, about 4 s of Q4_K_M on two
# cores, so that a node can be killed while items are still to run
GEOMETRY = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 6, "head_dim": 256}

MODELFILE = """\
FROM ./ckpt
NAME ray-test
CONFIG *.json
MODEL *.safetensors
CONVERT gguf
QUANTIZE q4_k_m
"""


def make_checkpoint(dest: Path) -> Path:
    from models import _round, make_tiny_checkpoint, make_weights, write_safetensors

    make_tiny_checkpoint(dest, "llama", dtype="float16")
    config = json.loads((dest / "config.json").read_text())
    config.update(GEOMETRY)
    (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_safetensors(dest, _round(make_weights(config), "float16"), sharded=False)
    past = time.time() - 60  # older than the stat cache's racy window
    for f in dest.iterdir():
        os.utime(f, (past, past))
    return dest


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray-project")
    make_checkpoint(root / "ckpt")
    (root / "Modelfile").write_text(MODELFILE)
    return root


@pytest.fixture(scope="module")
def cluster() -> Any:
    c = RayCluster().start_head()
    try:
        c.worker = c.add_node()
        yield c
    finally:
        c.stop()
        assert c.pids() == [], "every process the cluster started is gone"


def build_cmd(project: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "modelbuild", "build", "-f", str(project / "Modelfile"), "--json",
            "--progress", "json", *extra]


def run_build(project: Path, home: Path, *extra: str, address: str | None = None) -> tuple[dict, list[dict]]:
    env = {**os.environ, "MODELBUILD_HOME": str(home)}
    if address:
        env["RAY_ADDRESS"] = address
    proc = subprocess.run(build_cmd(project, *extra), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def local_digest(project: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    result, _ = run_build(project, tmp_path_factory.mktemp("home-local"), "--executor", "local")
    return result["digest"]


def _logs(events: list[dict]) -> list[str]:
    return [e.get("message", "") for e in events if e.get("kind") == "log"]


RECORDS = """
import json, sys, time
import ray
from ray.util.state import list_tasks
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
deadline = time.monotonic() + 60
while True:  # task events reach the dashboard a moment after the tasks finish
    tasks = list_tasks(address=sys.argv[1], filters=[("func_or_class_name", "=", "_run_item"), ("name", sys.argv[2], "hash_on_node")],
                       limit=10_000, detail=True, raise_on_missing_output=False)
    if tasks and all(t.state in ("FINISHED", "FAILED") for t in tasks) or time.monotonic() > deadline:
        break
    time.sleep(1)
print(json.dumps({"nodes": nodes, "tasks": [{"id": t.task_id, "state": t.state, "node_id": t.node_id} for t in tasks]}))
"""


def ray_records(address: str, *, hashes: bool = False) -> dict[str, Any]:
    """Ray's own records: its alive nodes, and its tasks of the items (the state API, through
    the head's dashboard), read by a driver of their own: the transforms' items, or with
    *hashes* the files' hashes (tasks named for ``hash_on_node``)."""
    proc = subprocess.run([sys.executable, "-c", RECORDS, address, "=" if hashes else "!="], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_ray_build_matches_local_and_runs_on_both_nodes(project: Path, cluster: Any, local_digest: str,
                                                         tmp_path: Path) -> None:
    result, events = run_build(project, tmp_path / "home", "--executor", "ray", address=cluster.address)
    assert result["digest"] == local_digest
    logs = _logs(events)
    assert any("2 node(s), 2 CPU(s)" in line for line in logs), logs
    # Ray's task records: every item finished, on two distinct nodes, both alive in Ray's node table
    records = ray_records(cluster.address)
    finished = [t for t in records["tasks"] if t["state"] == "FINISHED"]
    by_node = Counter(t["node_id"] for t in finished)
    assert len(by_node) == 2, by_node
    assert all(n >= 2 for n in by_node.values()), by_node
    assert set(by_node) <= set(records["nodes"])
    # and the build's own account of the quantize's items agrees
    assert any(line.startswith("ray: ") and " items on 2 node(s)" in line for line in logs), logs


def test_separate_files_hash_on_separate_nodes(cluster: Any, tmp_path: Path) -> None:
    """Three large raw files (a DATASET): the first hashes on the driver while the cluster
    connects; each other one is hashed, and copied into the shared store as it is hashed, by
    a task of its own; with ``-j 2`` those two run at once, one per node (one CPU each). The
    store holds what a local build stores, under the same digest."""
    from modelbuild.ops.files import REMOTE_HASH_MIN

    project = tmp_path / "hash-project"
    data = project / "data"
    data.mkdir(parents=True)
    past = time.time() - 60
    names = ["a.bin", "b.bin", "c.bin"]
    for name in names:
        with open(data / name, "wb") as fh:
            for _ in range(REMOTE_HASH_MIN // (8 << 20) + 2):
                fh.write(os.urandom(8 << 20))
        os.utime(data / name, (past, past))
    (project / "Modelfile").write_text(f"FROM ./data\nNAME ray-hash-test\nDATASET {' '.join(names)}\n")
    local, _ = run_build(project, tmp_path / "home-local", "--executor", "local")
    before = {t["id"] for t in ray_records(cluster.address, hashes=True)["tasks"]}  # earlier builds' hashes
    result, _ = run_build(project, tmp_path / "home-ray", "--executor", "ray", "-j", "2", address=cluster.address)
    assert result["digest"] == local["digest"]
    assert result["stats"]["files_hashed"] == names
    assert result["stats"]["bytes_written"] == local["stats"]["bytes_written"] > 3 * REMOTE_HASH_MIN
    stored = sorted(p.name for p in (tmp_path / "home-ray" / "store" / "blobs" / "sha256").iterdir())
    assert stored == sorted(p.name for p in (tmp_path / "home-local" / "store" / "blobs" / "sha256").iterdir())
    hashes = [t for t in ray_records(cluster.address, hashes=True)["tasks"]
              if t["state"] == "FINISHED" and t["id"] not in before]
    assert len(hashes) == 2 and len({t["node_id"] for t in hashes}) == 2, hashes


def test_two_drivers_on_one_store_run_the_same_work_once(project: Path, cluster: Any, local_digest: str,
                                                        tmp_path: Path) -> None:
    """Two builds of the same Modelfile, started together on one store (two drivers of one
    cluster, as two CI jobs on a shared volume): each step runs in one of them, the other
    waits on the step's lock and takes its result, and the cluster quantizes once."""
    home = tmp_path / "home"
    env = {**os.environ, "MODELBUILD_HOME": str(home), "RAY_ADDRESS": cluster.address}
    before = {t["id"] for t in ray_records(cluster.address)["tasks"]}
    procs = [subprocess.Popen(build_cmd(project, "--executor", "ray"), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-2000:] for _, err in outs]
    results = [json.loads(out) for out, _ in outs]
    assert [r["digest"] for r in results] == [local_digest, local_digest]
    ran = Counter(label for r in results for label in r["stats"]["executed"] if label != "export")  # each tags
    assert ran["transform:1"] == ran["transform:2"] == 1, ran  # the convert and the quantize: once
    assert set(ran.values()) == {1}, ran  # and so every other step
    items = [re.search(r"ray: (\d+) items on", line) for _, err in outs for line in err.splitlines()
             if line.startswith("{") and "items on" in line]
    counts = [int(m.group(1)) for m in items if m]
    assert len(counts) == 1, counts  # one build mapped the quantize's items; the other mapped none
    new = [t for t in ray_records(cluster.address)["tasks"] if t["id"] not in before and t["state"] == "FINISHED"]
    assert len(new) == counts[0], (len(new), counts)


def test_a_build_submitted_as_a_ray_job_gives_the_same_digest(project: Path, cluster: Any, local_digest: str,
                                                              tmp_path: Path) -> None:
    """``ray job submit … -- modelbuild build --executor ray``: the driver runs on the head, as
    the KubeRay build Job of docs/scale.md runs it; Ray sets RAY_ADDRESS for it."""
    import re

    env_json = json.dumps({"env_vars": {"MODELBUILD_HOME": str(tmp_path / "home")}})
    ray_cli = str(Path(sys.executable).with_name("ray"))
    proc = subprocess.run([ray_cli, "job", "submit", "--address", f"http://127.0.0.1:{cluster.dashboard_port}",
                           "--runtime-env-json", env_json, "--", sys.executable, "-m", "modelbuild", "build", "-f",
                           str(project / "Modelfile"), "--executor", "ray", "--progress", "plain"],
                          capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    digests = re.findall(r"^(sha256:[0-9a-f]{64})  ray-test:latest$", proc.stdout, re.M)
    assert digests == [local_digest], proc.stdout[-3000:]
    assert re.search(r"#0 ray: \d+ items on \d node\(s\)", proc.stdout), proc.stdout[-3000:]


def _build_until_quantize(project: Path, home: Path, address: str, when_quantizing: Any) -> subprocess.Popen:
    """Start a build; call *when_quantizing(proc)* once the quantize step has done some items."""
    env = {**os.environ, "MODELBUILD_HOME": str(home), "RAY_ADDRESS": address}
    proc = subprocess.Popen(build_cmd(project, "--executor", "ray"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    fired = threading.Event()
    lines: list[str] = []

    def watch() -> None:
        for line in proc.stderr:
            lines.append(line)
            if fired.is_set() or not line.startswith("{"):
                continue
            event = json.loads(line)
            if (event.get("kind") == "progress" and str(event.get("label", "")).startswith("quantize")
                    and event.get("current", 0) > 0 and event.get("current", 0) < (event.get("total") or 0)):
                fired.set()
                when_quantizing(proc)

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    proc.lines = lines  # type: ignore[attr-defined]
    proc.fired = fired  # type: ignore[attr-defined]
    proc.reader = reader  # type: ignore[attr-defined]
    return proc


def test_killed_driver_resumes_from_the_cache(project: Path, cluster: Any, local_digest: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = _build_until_quantize(project, home, cluster.address, lambda p: os.kill(p.pid, signal.SIGKILL))
    proc.wait(timeout=600)
    proc.reader.join(timeout=30)
    assert proc.fired.is_set(), "".join(proc.lines)[-3000:]
    assert proc.returncode == -signal.SIGKILL
    result, events = run_build(project, home, "--executor", "ray", address=cluster.address)
    assert result["digest"] == local_digest
    cached = {e["label"] for e in events if e.get("kind") == "cached"}
    started = {e["label"] for e in events if e.get("kind") == "start"}
    assert any(label.startswith("convert") for label in cached), (cached, started)
    assert not any(label.startswith("convert") for label in started), started
    assert any(label.startswith("quantize") for label in started), started


def test_killed_worker_node_gives_the_same_digest(project: Path, cluster: Any, local_digest: str,
                                                  tmp_path: Path) -> None:
    """Last in the module: the second node does not come back."""
    home = tmp_path / "home"
    killed: list[int] = []
    proc = _build_until_quantize(project, home, cluster.address,
                                 lambda p: killed.extend(cluster.kill_node(cluster.worker)))
    out = proc.stdout.read()
    proc.wait(timeout=600)
    proc.reader.join(timeout=30)
    stderr = "".join(proc.lines)
    assert proc.fired.is_set() and killed, stderr[-3000:]
    assert proc.returncode == 0, stderr[-3000:]
    assert json.loads(out)["digest"] == local_digest, out
    assert cluster.pids(cluster.worker) == []  # the node's raylet and workers are gone
    assert any(p for p in cluster.pids(cluster.tokens[0])), "the head is still up"


STUCK = """
import json, os, sys, time
from pathlib import Path
from ray.util.state import list_tasks
from modelbuild.api import BuildError, ExecutorSetup
from modelbuild.dataplane import Marker
from modelbuild_plugins.ray_executor import RayExecutor

os.environ["RAY_ADDRESS"] = sys.argv[1]
store = Path(sys.argv[2])
setup = ExecutorSetup(address=None, jobs=2, store=store, context=None, log=lambda line: None,
                      marker=Marker.create(store), item_timeout=3)
session = RayExecutor().open(setup)
started = time.monotonic()
try:
    session.map(time.sleep, [3600, 3600], lambda item, result: None)
    out = {"error": None}
except BuildError as exc:
    out = {"error": str(exc), "hint": exc.hint, "seconds": time.monotonic() - started}
deadline = time.monotonic() + 60
while True:  # the cancelled tasks' records: none may still be running
    tasks = list_tasks(address=sys.argv[1], filters=[("name", "=", "sleep")], limit=1000, raise_on_missing_output=False)
    out["states"] = sorted(t.state for t in tasks)
    if tasks and all(t.state in ("FINISHED", "FAILED") for t in tasks) or time.monotonic() > deadline:
        break
    time.sleep(1)
session.close()
print(json.dumps(out))
"""


def test_a_stuck_item_is_stopped_after_the_bound(cluster: Any, tmp_path: Path) -> None:
    """Two items that would sleep for an hour, with ``item_timeout`` 3 s: ``map`` gives up in
    one line after about 3 s, and Ray's records show both tasks ended (cancelled, their
    workers killed), none left running on the cluster."""
    proc = subprocess.run([sys.executable, "-c", STUCK, cluster.address, str(tmp_path / "store")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] == "no work item of sleep finished in 3 s: the items in flight were stopped", out
    assert "MODELBUILD_ITEM_TIMEOUT" in out["hint"] and 3 <= out["seconds"] < 30, out
    assert out["states"] == ["FAILED", "FAILED"], out


@pytest.mark.parametrize("how", ["RAY_ADDRESS", "ray://"])
def test_no_cluster_is_one_line(project: Path, tmp_path: Path, how: str) -> None:
    from raycluster import free_port

    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "MODELBUILD_HOME": str(tmp_path / "home"), "RAY_ADDRESS": address}
    executor = "ray"
    if how == "ray://":  # Ray Client, a port nothing listens on
        executor = address = f"ray://{address}"
        del env["RAY_ADDRESS"]
    proc = subprocess.run([sys.executable, "-m", "modelbuild", "build", "-f", str(project / "Modelfile"),
                           "--executor", executor, "--progress", "quiet"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    # the failed step's line, then the build's one-line error
    assert lines[-1].startswith(f"modelbuild: error: cannot reach a Ray cluster at {address}: "), proc.stderr
    assert "Connection refused" in lines[-1] and "ray start --head" in lines[-1]
    assert len(lines) <= 2 and "Traceback" not in proc.stderr
