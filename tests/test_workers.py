"""Transform worker processes (modelbuild.workers): they come from a single-threaded
forkserver, never from forking the threaded build, and write the bytes an in-process run
writes.

Python 3.12+ warns (DeprecationWarning) when ``os.fork()`` runs in a process with more than
one OS thread. These tests record every ``os.fork()`` in the processes they start (a
``sitecustomize`` registers an at-fork hook that writes the pid and the process's OS thread
count), so they check that condition on any Python, and run with
``-W error::DeprecationWarning`` so that the warning itself fails them where it exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from modelbuild import workers
from modelbuild.solver import Solver

from support import age, children, cmdline

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

SITECUSTOMIZE = """\
import os


def _record_fork():
    try:
        with open("/proc/self/status") as f:
            threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    except (OSError, StopIteration):
        threads = -1
    with open(os.environ["FORK_LOG"], "a") as f:
        f.write(f"{os.getpid()} {threads}\\n")


os.register_at_fork(before=_record_fork)
"""


def fork_recorder(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Environment variables that make every Python process started with them log its forks."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "forks.log"
    log.touch()
    return {"PYTHONPATH": str(site), "FORK_LOG": str(log)}, log


def forks(log: Path) -> list[tuple[int, int]]:
    """(pid, OS threads of the forking process) for every fork logged."""
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()]


# -- run_processes ---------------------------------------------------------------------------

def _pid_and_square(item: tuple[int, int]) -> tuple[int, int]:
    """Module-level, so that workers can run it. Slow in the test process only, so that the
    workers come up while it is busy."""
    parent, x = item
    if os.getpid() == parent:
        time.sleep(0.2)
    return os.getpid(), x * x


def _fail_on_zero(x: int) -> int:
    if x == 0:
        raise ValueError("zero")
    return x


def _env(name: str) -> str | None:
    return os.environ.get(name)


def test_every_item_runs_once_here_or_in_a_worker():
    items = [(os.getpid(), x) for x in range(30)]
    got: dict[tuple[int, int], tuple[int, int]] = {}
    workers.run_processes(_pid_and_square, items, lambda item, result: got.setdefault(item, result), jobs=2)
    assert sorted(got) == items
    assert all(result[1] == x * x for (_, x), result in got.items())
    pids = {pid for pid, _ in got.values()}
    assert os.getpid() in pids  # this thread worked while the workers started
    assert pids - {os.getpid()}  # and the workers took the rest


def test_a_worker_error_is_raised_in_the_caller():
    with pytest.raises(ValueError, match="zero"):
        workers.run_processes(_fail_on_zero, list(range(20)), lambda item, result: None, jobs=2)


def test_one_job_runs_everything_here():
    seen = []
    workers.run_processes(_fail_on_zero, [3, 2, 1], lambda item, result: seen.append(result), jobs=1)
    assert seen == [3, 2, 1]


@linux_only
def test_the_forkserver_is_single_threaded_and_caps_blas_threads():
    context = workers.mp_context(["numpy"])  # numpy starts OpenBLAS threads when it loads
    with context.Pool(1) as pool:
        assert pool.apply(_env, ("OPENBLAS_NUM_THREADS",)) == "1"
    servers = [pid for pid in children(os.getpid()) if b"multiprocessing.forkserver" in cmdline(pid)]
    assert len(servers) == 1
    assert _threads(servers[0]) == 1


def test_the_solver_declares_the_modules_its_ops_name():
    class Op:
        def worker_modules(self, step, env):
            return ("json", "decimal") if step.op == "transform" else ()

    graph = SimpleNamespace(order=["a", "b"], step=lambda sid: SimpleNamespace(op="transform" if sid == "a" else "copy"))
    solver = Solver(graph, SimpleNamespace(no_cache=True), ops={"transform": Op(), "copy": object()})
    solver._declare_worker_modules()
    assert {"json", "decimal"} <= set(workers.preload())
    assert workers.preload()[0] == workers.BOOT_MODULE


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


# -- the quantizers, in a process that has threads -----------------------------------------------

QUANTIZE_SCRIPT = """\
import hashlib
import json
import os
import sys
import threading
from pathlib import Path


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def weight_file(path):
    from modelbuild.weights import WeightFile

    return WeightFile(path.name, str(path), "sha256:" + digest(path), path.stat().st_size)


def main(work):
    import gguf
    import numpy as np
    from modelbuild_plugins.gguf_format import GGUFQuantizer
    from modelbuild_plugins.gguf_format import quantize as gguf_quantize
    from modelbuild_plugins.safetensors_format import SafetensorsCast
    from modelbuild_plugins.safetensors_format import io as st_io
    from safetensors.numpy import save_file

    from modelbuild.weights import TransformContext

    gguf_quantize.CHUNK_ELEMENTS = 256 * 4  # work items of 4 rows: some for the workers
    st_io.CHUNK_BYTES = 4096
    rng = np.random.default_rng(7)
    src = work / "model.gguf"
    w = gguf.GGUFWriter(str(src), "llama")
    w.add_block_count(1)
    for name, shape in (("token_embd.weight", (64, 256)), ("blk.0.attn_q.weight", (128, 256)),
                        ("blk.0.attn_norm.weight", (256,))):
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    st = work / "model.safetensors"
    save_file({"a.weight": rng.standard_normal((64, 96)).astype(np.float32),
               "b.weight": rng.standard_normal((32, 64)).astype(np.float32)}, str(st))

    stop = threading.Event()
    busy = threading.Thread(target=stop.wait)  # the build runs its steps on threads
    busy.start()
    digests = {}
    try:
        for jobs in (2, 1, 2):  # the second jobs=2 run finds the forkserver up
            for qtype, options in (("q8_0", {}), ("q4_k", {"pure": True})):
                ctx = TransformContext(work / f"g-{qtype}-{jobs}-{len(digests)}", jobs=jobs)
                (out,) = GGUFQuantizer().quantize([weight_file(src)], qtype, options, ctx)
                digests.setdefault(f"gguf {qtype}", set()).add(digest(out.file))
            for qtype in ("float16", "float8_e4m3"):
                ctx = TransformContext(work / f"s-{qtype}-{jobs}-{len(digests)}", jobs=jobs)
                (out,) = SafetensorsCast().quantize([weight_file(st)], qtype, {}, ctx)
                digests.setdefault(f"safetensors {qtype}", set()).add(digest(out.file))
    finally:
        stop.set()
        busy.join()
    print(json.dumps({"pid": os.getpid(), "digests": {k: sorted(v) for k, v in digests.items()}}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
"""


@linux_only
def test_quantizing_in_a_threaded_process_forks_only_the_single_threaded_server(tmp_path):
    env, log = fork_recorder(tmp_path)
    script = tmp_path / "quantize_with_threads.py"
    script.write_text(QUANTIZE_SCRIPT)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", str(script), str(work)],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for what, digests in result["digests"].items():
        assert len(digests) == 1, f"{what}: jobs=1 and jobs=2 wrote different bytes"
    logged = forks(log)
    assert logged, "the workers were forked by a server that logged nothing"
    assert all(pid != result["pid"] for pid, _ in logged), "the threaded process forked"
    assert all(threads == 1 for _, threads in logged), logged


@linux_only
def test_a_build_with_quantize_steps_forks_only_the_single_threaded_server(cli, tmp_path):
    import gguf
    import numpy as np

    env, log = fork_recorder(tmp_path)
    ctx = tmp_path / "g"
    ctx.mkdir()
    rng = np.random.default_rng(3)
    writer = gguf.GGUFWriter(str(ctx / "model.gguf"), "llama")
    writer.add_block_count(1)
    for name, shape in (("token_embd.weight", (64, 256)), ("blk.0.attn_q.weight", (64, 256)),
                        ("blk.0.attn_norm.weight", (256,))):
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    age(ctx / "model.gguf")
    (ctx / "Modelfile").write_text("NAME g\nMODEL model.gguf\nQUANTIZE q4_k_m\n")  # the acceptance case
    run = cli("build", "-f", "Modelfile", "-j", "2", "--progress", "plain", cwd=ctx,
              env={**env, "PYTHONWARNINGS": "error::DeprecationWarning"})
    assert run.rc == 0, run.err
    assert "DeprecationWarning" not in run.err, run.err
    assert forks(log), "no worker was started: the test checks nothing"
    assert all(threads == 1 for _, threads in forks(log)), forks(log)
