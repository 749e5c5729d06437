#!/usr/bin/env python3
"""What ``modelbuild run`` costs before the engine starts: putting the variant's files on disk.

Writes a llama-shaped F16 GGUF of --size-gb (benchmarks/quantize.py's generator), builds it
into a fresh store (not timed), then times, each --rounds times with the page cache warm:

- ``link``: ``run``'s first materialisation (:func:`modelbuild.runtime.files.materialize_variant`:
  hard links to the store's blobs, read-only, the completion record);
- ``again``: a second run's check of that directory (nothing to do);
- ``pull -o``: ``modelbuild pull TAG -o DIR``, which copies and verifies every byte (what a
  runtime without a store of its own would do);
- the floor of a copy: ``copy_file_range`` + ``fsync`` of the same bytes to a new file, no
  hashing: what any runtime that copies the weights pays at least.

Then (``--ready``), from command to a healthy engine, for the bundled ONNX example (ONNX
Runtime behind MLServer) and convert-quantize (llama.cpp's server): ``modelbuild run --json``
until its ready event, against the same engine command (``run --dry-run --json``'s argv and
files) started directly and polled until its health path answers. The difference is what
modelbuild adds: its start-up, resolving the variant, the checks, the work directory.

Targets (issue 12): ``link`` under 2 % of the copy floor and under 0.1 s; ``again`` under
0.05 s; no byte of the weights copied (the run directory's file shares the blob's inode);
``run`` ready within 0.5 s of the engine started directly.

Run:  .venv/bin/python benchmarks/run.py [--size-gb 1.05] [--rounds 3] [--ready] [--json]
Exit status 0 when the targets hold, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Report  # noqa: E402
from quantize import generate, machine  # noqa: E402


def copy_floor(src: Path, dst: Path) -> float:
    """copy_file_range + fsync of *src* to a new *dst*: the kernel's copy, nothing else."""
    t0 = time.perf_counter()
    size = src.stat().st_size
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        done = 0
        while done < size:
            n = os.copy_file_range(fin.fileno(), fout.fileno(), size - done)
            if n == 0:
                break
            done += n
        os.fsync(fout.fileno())
    return time.perf_counter() - t0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_health(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the engine exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"{url} not healthy after {timeout}s")


def _stop(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def ready_times(example: str, home: Path, rounds: int) -> tuple[float, float]:
    """(best seconds to ``modelbuild run``'s ready event, best seconds to the same engine
    command's health answering when started directly)."""
    env = {**os.environ, "MODELBUILD_HOME": str(home)}
    ctx = Path(__file__).resolve().parent.parent / "Modelfile.examples" / example
    text = (ctx / "Modelfile").read_text()
    build = subprocess.run([sys.executable, "-m", "modelbuild", "build", "-f", str(ctx / "Modelfile"), "-t",
                            f"bench-{example}:1", "--progress", "quiet", "--json",
                            str(ctx / "model") if (ctx / "model").is_dir() and "FROM" not in text else str(ctx)],
                           env=env, check=True, capture_output=True, text=True)
    tag = json.loads(build.stdout)["tags"][0]
    via_run, direct = [], []
    for _ in range(rounds):
        port = _free_port()
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "modelbuild", "run", tag, "--port", str(port), "--json"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        line = proc.stdout.readline()
        via_run.append(time.perf_counter() - t0)
        assert json.loads(line)["event"] == "ready", line
        _stop(proc)
        port = _free_port()
        plan = json.loads(subprocess.run([sys.executable, "-m", "modelbuild", "run", tag, "--port", str(port),
                                          "--dry-run", "--json"], env=env, check=True, capture_output=True,
                                         text=True).stdout)
        work = Path(tempfile.mkdtemp(prefix="mb-bench-engine-"))
        for rel, content in plan["workFiles"].items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_text(content)
        for rel, dest in plan["workLinks"].items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(dest, work / rel)
        engine_env = {k: v for k, v in os.environ.items() if k not in plan["unsetEnv"]}
        t0 = time.perf_counter()
        proc = subprocess.Popen(plan["argv"], cwd=work, env={**engine_env, **plan["env"]},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_health(plan["health"], proc)
        direct.append(time.perf_counter() - t0)
        _stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    return min(via_run), min(direct)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=1.05)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ready", action="store_true", help="also time command → healthy engine")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    report = Report(args.json)
    work = Path(tempfile.mkdtemp(prefix="mb-bench-run-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    try:
        ctx = work / "ctx"
        ctx.mkdir()
        generate(ctx / "model.gguf", args.size_gb, "f16")
        (ctx / "Modelfile").write_text("NAME bench\nMODEL model.gguf\n")
        home = work / "home"
        env = {**os.environ, "MODELBUILD_HOME": str(home)}
        subprocess.run([sys.executable, "-m", "modelbuild", "build", "-f", str(ctx / "Modelfile"), "-t", "bench:1",
                        "--progress", "quiet", str(ctx)], env=env, check=True, capture_output=True)
        os.environ["MODELBUILD_HOME"] = str(home)
        from modelbuild.runtime.files import materialize_variant, remove_tree, run_dir
        from modelbuild.runtime.resolve import resolve_variant

        variant = resolve_variant("bench:1", home=str(home))
        size = sum(layer.size for layer in variant.node.parts.layers)
        blob = variant.store.blob_path(variant.node.parts.layers[0].digest)
        results: dict[str, list[float]] = {"link": [], "again": [], "pull -o": [], "copy floor": []}
        shared_inode = True
        for _ in range(args.rounds):
            remove_tree(run_dir(home, variant.digest))
            t0 = time.perf_counter()
            done = materialize_variant(variant, home)
            results["link"].append(time.perf_counter() - t0)
            shared_inode &= (done.path / "model.gguf").stat().st_ino == blob.stat().st_ino
            t0 = time.perf_counter()
            again = materialize_variant(variant, home)
            results["again"].append(time.perf_counter() - t0)
            assert again.reused
            out = work / "pulled"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "modelbuild", "pull", "bench:1", "-o", str(out), "--progress",
                            "quiet"], env=env, check=True, capture_output=True)
            results["pull -o"].append(time.perf_counter() - t0)
            floor_dst = work / "floor.bin"
            floor_dst.unlink(missing_ok=True)
            results["copy floor"].append(copy_floor(blob, floor_dst))
        best = {k: min(v) for k, v in results.items()}
        report.line(f"machine: {machine()}")
        report.line(f"variant: {size / 1e9:.2f} GB in {len(variant.node.parts.layers)} layer(s), {args.rounds} rounds, "
                    "page cache warm")
        for name, seconds in best.items():
            rate = f"{size / seconds / 1e9:8.2f} GB/s" if name in ("pull -o", "copy floor") else ""
            report.line(f"  {name:<11} {seconds * 1000:9.1f} ms  {rate}")
        report.line(f"  link / copy floor: {best['link'] / best['copy floor'] * 100:.2f} %")
        report.check("no byte copied: the run directory's file is the store's blob", shared_inode)
        report.check("link under 2 % of the copy floor", best["link"] < 0.02 * best["copy floor"],
                     f"{best['link']:.4f} s vs {best['copy floor']:.3f} s")
        report.check("link under 0.1 s", best["link"] < 0.1, f"{best['link']:.4f} s")
        report.check("a second run under 0.05 s", best["again"] < 0.05, f"{best['again']:.4f} s")
        if args.ready:
            for example in ("onnx", "convert-quantize"):
                run_s, direct_s = ready_times(example, work / f"home-{example}", args.rounds)
                best[f"ready {example} (run)"], best[f"ready {example} (direct)"] = run_s, direct_s
                report.line(f"  ready, {example}: modelbuild run {run_s:.2f} s, the engine alone {direct_s:.2f} s "
                            f"(+{run_s - direct_s:.2f} s)")
                report.check(f"run ready within 0.5 s of the engine alone ({example})", run_s - direct_s < 0.5,
                             f"{run_s:.2f} s vs {direct_s:.2f} s")
        if args.json:
            print(json.dumps({"machine": machine(), "bytes": size, "best_seconds": best, "checks": report.checks},
                             indent=2))
        return 0 if all(c["ok"] for c in report.checks) else 1
    finally:
        from modelbuild.runtime.files import remove_tree as _rm

        for path in work.glob("home*/run"):
            for child in path.iterdir():
                _rm(child)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
