#!/usr/bin/env python3
"""Benchmark ``modelbuild build`` on a synthetic multi-gigabyte model.

Measures, each as a separate ``modelbuild build -f Modelfile --progress plain --json``
subprocess with its own ``MODELBUILD_HOME``:

1. cold build (fresh home; median of --cold-repeat): wall time, throughput, peak RSS, the
   slowest steps; each one right after a measurement of the floor (``copy_file_range`` +
   ``fsync`` of the same files, no hashing), and the target compares the medians;
2. no-op rebuild (same home, median of --repeat): wall time, ratio to cold, peak RSS;
   the build's --json stats must show bytes_hashed == 0 and steps_run == 0;
3. touch rebuild (every file gets a new, still aged, mtime): every file is re-hashed
   (bytes_hashed == total), no blob is rewritten (bytes_written == 0), same digest;
4. one-file-changed rebuild (a few bytes of one file changed, size kept):
   bytes_hashed == that file's size.

Peak RSS is the child's own ``ru_maxrss`` from ``os.wait4``. Inputs are not evicted from
the page cache (they were just written), so the cold build measures hashing + store
writes, not disk reads. Input files are aged (mtime 60 s in the past) because modelbuild
does not stat-cache a file modified less than 1 s before it was hashed (ops.RACY_WINDOW_NS).

Stdlib only. Run:  python benchmarks/build.py [--size-gb 2] [--files 4] [--json]
Exit status: 0 when every check and target passes, 1 when one fails, 2 when a build fails
(or there is not enough free disk).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import Report, gb  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
AGE_S = 60  # input mtimes are set this far in the past (> modelbuild's 1 s racy window)

TARGET_COLD_GBPS = 0.8
TARGET_COLD_FLOOR = 1.2  # issue 15: a cold build within 1.2x the copy_file_range + fsync floor
TARGET_NOOP_S = 0.15  # issue 15 (was 0.5)
TARGET_NOOP_RATIO = 0.08  # issue 15 (was 0.10)
TARGET_RSS_MB = 200.0

MODELFILE = """\
# syntax=modelfile
# Synthetic model written by benchmarks/build.py.
FROM ./model
NAME modelbuild-bench
FAMILY llama
ARCH transformer
FORMAT safetensors
PRECISION bfloat16
MODEL *.safetensors
"""


# -- output -----------------------------------------------------------------------------
def mb(n: float) -> float:
    return n / 1e6


# -- machine ----------------------------------------------------------------------------
def machine_info(workdir: Path) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        fstype = subprocess.run(
            ["stat", "-f", "-c", "%T", str(workdir)], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        fstype = "unknown"
    usage = shutil.disk_usage(workdir)
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "workdir": str(workdir),
        "fstype": fstype,
        "disk_free_gb": round(gb(usage.free), 1),
        "mem_total_gb": _mem_total_gb(),
        "fsync": os.environ.get("MODELBUILD_FSYNC", "1") != "0",
    }


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


# -- the model --------------------------------------------------------------------------
def file_sizes(total: int, files: int) -> list[int]:
    base, extra = divmod(total, files)
    return [base + (1 if i < extra else 0) for i in range(files)]


def _safetensors_header(total: int) -> bytes:
    """A valid safetensors header for one U8 tensor filling a file of *total* bytes, so the
    build's metadata reader accepts the file (it parses every weight file's header)."""
    import json

    hlen = 128
    payload = total - 8 - hlen
    header = json.dumps({"weight": {"dtype": "U8", "shape": [payload], "data_offsets": [0, payload]}},
                        separators=(",", ":")).encode()
    return hlen.to_bytes(8, "little") + header.ljust(hlen, b" ")


def write_model(model_dir: Path, sizes: list[int], aged_ns: int) -> list[Path]:
    """Random-ish safetensors files, fast: a real header, then one os.urandom(1 MiB) block
    repeated, each copy stamped with a unique (file, block) counter at both ends so no two
    blocks (and no two files) are identical."""
    model_dir.mkdir(parents=True)
    base = os.urandom(MiB)
    paths = []
    n = len(sizes)
    for i, size in enumerate(sizes):
        path = model_dir / f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        with open(path, "wb", buffering=0) as fh:
            block = bytearray(base)
            head = _safetensors_header(size)
            fh.write(head)
            written, counter = len(head), 0
            while written < size:
                stamp = struct.pack("<QQ", i, counter)
                block[0:16] = stamp
                block[-16:] = stamp
                chunk = min(MiB, size - written)
                fh.write(block if chunk == MiB else memoryview(block)[:chunk])
                written += chunk
                counter += 1
        os.utime(path, ns=(aged_ns, aged_ns))
        paths.append(path)
    return paths


# -- what the machine can do without modelbuild ----------------------------------------
def baseline(paths: list[Path], workdir: Path, threads: int) -> dict[str, Any]:
    """Single-thread read+sha256 speed, and the copy floor: ``copy_file_range`` + ``fsync`` of
    every file into the work dir, ``threads`` files at a time (what a store that keeps its own
    copy pays at least; issue 15 scope 5)."""
    import hashlib

    total = sum(p.stat().st_size for p in paths)
    buf = bytearray(MiB)
    view = memoryview(buf)
    t0 = time.perf_counter()
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                h.update(view[:n])
    sha = gb(total) / (time.perf_counter() - t0)

    floor_s = copy_floor(paths, workdir, threads)
    cp = gb(total) / floor_s
    return {"sha256_gbps_1thread": sha, "copy_fsync_gbps": cp, "copy_floor_s": floor_s, "copy_threads": threads}


def copy_floor(paths: list[Path], workdir: Path, threads: int) -> float:
    """Seconds to copy every file into the work dir with ``copy_file_range`` and ``fsync`` it,
    ``threads`` files at a time: what a store that keeps its own copy pays at least (issue 15
    scope 5). Measured again right before each cold build, since the disk's write-back speed on
    a shared VM moves from minute to minute (0.95 to 4.8 s for the same 2 GiB here)."""
    from concurrent.futures import ThreadPoolExecutor

    dest = workdir / "baseline-copy"
    dest.mkdir()

    def copy(p: Path) -> None:
        """The kernel's copy of one file, fsync'd: no byte passes through user space."""
        size = p.stat().st_size
        with open(p, "rb") as src, open(dest / p.name, "wb") as dst:
            done = 0
            while done < size:
                n = os.copy_file_range(src.fileno(), dst.fileno(), size - done)
                if n == 0:
                    break
                done += n
            os.fsync(dst.fileno())

    os.sync()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(copy, paths))
    floor_s = time.perf_counter() - t0
    shutil.rmtree(dest)
    os.sync()
    return floor_s


def slowest_steps(progress: str, count: int = 4) -> list[tuple[str, float]]:
    """The *count* slowest steps of a build's ``--progress plain`` output (``#3 ingest x``,
    then ``#3 DONE 0.9s``): where a cold build's time goes beyond the copy."""
    import re

    names: dict[str, str] = {}
    took: list[tuple[str, float]] = []
    for line in progress.splitlines():
        if m := re.fullmatch(r"#(\d+) DONE ([\d.]+)s", line.strip()):
            took.append((names.get(m[1], "#" + m[1]), float(m[2])))
        elif m := re.fullmatch(r"#(\d+) (\S.*)", line.strip()):
            names.setdefault(m[1], m[2])
    return sorted(took, key=lambda t: -t[1])[:count]


# -- running modelbuild -----------------------------------------------------------------
MODELBUILD: list[str] = []  # --modelbuild: the executable to time


def modelbuild_cmd() -> list[str]:
    if MODELBUILD:
        return list(MODELBUILD)
    script = Path(sys.executable).parent / "modelbuild"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("modelbuild")
    return [found] if found else [sys.executable, "-m", "modelbuild"]


def _interpreter(cmd: list[str]) -> str:
    """The Python a modelbuild command runs on: its script's ``#!`` line, else the command."""
    try:
        first = Path(cmd[0]).read_bytes()[:300].split(b"\n", 1)[0]
    except OSError:
        return cmd[0]
    return first[2:].decode().strip() if first.startswith(b"#!") else cmd[0]


def _install_kind(cmd: list[str]) -> str:
    """``editable`` when modelbuild is imported through an editable install's hook, which
    every start of that interpreter runs (about 20 ms here); else ``regular``."""
    probe = subprocess.run([_interpreter(cmd), "-c", "import sys; print(any('__editable__' in repr(f) for f in "
                            "sys.meta_path))"], capture_output=True, text=True)
    return "editable install" if probe.stdout.strip() == "True" else "regular install"


def interpreter_start(cmd: list[str], runs: int = 9) -> float:
    """Median wall time of ``python -c pass`` on modelbuild's own interpreter: the part of a
    no-op rebuild that is not modelbuild's."""
    python = _interpreter(cmd)
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([python, "-c", "pass"], env=env, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_build(workdir: Path, home: Path, label: str) -> dict[str, Any]:
    """One build as a child process: wall time, its own peak RSS, its --json result."""
    cmd = modelbuild_cmd() + ["build", "-f", "Modelfile", "--progress", "plain", "--json"]
    env = dict(os.environ, MODELBUILD_HOME=str(home))
    # measure what an installed modelbuild costs: with bytecode caching on (pip writes .pyc
    # at install; PYTHONDONTWRITEBYTECODE=1 would re-compile every module on every run)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    out_path, err_path = logs / f"{label}.stdout", logs / f"{label}.stderr"
    os.sync()  # no dirty pages left from earlier steps to be flushed on this build's time
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    stdout, stderr = out_path.read_text(), err_path.read_text()
    if proc.returncode != 0:
        raise RuntimeError(
            f"{label}: `{' '.join(cmd)}` exited {proc.returncode}\n--- stderr (tail) ---\n{stderr[-4000:]}"
        )
    try:
        result = json.loads(stdout)
    except ValueError as exc:
        raise RuntimeError(f"{label}: --json output is not JSON ({exc}): {stdout[:500]!r}") from None
    return {
        "wall_s": wall,
        "peak_rss_kib": usage.ru_maxrss,  # KiB on Linux
        "peak_rss_mb": usage.ru_maxrss * 1024 / 1e6,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "digest": result["digest"],
        "stats": {k: v for k, v in result["stats"].items() if k not in ("files_hashed", "executed")},
        "files_hashed": result["stats"].get("files_hashed", []),
        "executed": result["stats"].get("executed", []),
    }


def describe(r: dict[str, Any]) -> str:
    s = r["stats"]
    return (
        f"    user {r['user_s']:.2f} s, sys {r['sys_s']:.2f} s; stats: steps_run={s['steps_run']} "
        f"steps_cached={s['steps_cached']} bytes_hashed={s['bytes_hashed']} bytes_written={s['bytes_written']}"
    )


# -- the benchmark ----------------------------------------------------------------------
def benchmark(args: argparse.Namespace, workdir: Path, rep: Report) -> dict[str, Any]:
    info = machine_info(workdir)
    rep.line(
        f"machine: {info['nproc']} CPUs, {info['cpu']}, {info['mem_total_gb']} GB RAM; "
        f"Python {info['python']}; workdir {workdir} on {info['fstype']} "
        f"({info['disk_free_gb']} GB free); MODELBUILD_FSYNC {'on' if info['fsync'] else 'off'}"
    )
    info["modelbuild"] = {"command": modelbuild_cmd(), "install": _install_kind(modelbuild_cmd()),
                          "interpreter_start_s": interpreter_start(modelbuild_cmd())}
    rep.line(f"modelbuild: {' '.join(modelbuild_cmd())} ({info['modelbuild']['install']}); its interpreter "
             f"starts in {1000 * info['modelbuild']['interpreter_start_s']:.0f} ms (median of 9)")
    total = int(args.size_gb * GiB)
    sizes = file_sizes(total, args.files)
    need = 2 * total + max(sizes) + 256 * MiB  # inputs + store + one re-ingested blob + slack
    if shutil.disk_usage(workdir).free < need:
        raise RuntimeError(f"need about {gb(need):.1f} GB free in {workdir}")

    model_dir, home = workdir / "model", workdir / "home"
    (workdir / "Modelfile").write_text(MODELFILE)
    aged = time.time_ns() - AGE_S * 10**9
    t0 = time.perf_counter()
    paths = write_model(model_dir, sizes, aged)
    rep.line(
        f"model: {args.files} files, {gb(total):.2f} GB ({total} bytes) written in "
        f"{time.perf_counter() - t0:.2f} s, mtimes aged {AGE_S} s"
    )
    t0 = time.perf_counter()
    os.sync()
    rep.line(f"sync after writing the model: {time.perf_counter() - t0:.2f} s")
    if not args.no_baseline:
        results_baseline = baseline(paths, workdir, os.cpu_count() or 1)  # modelbuild: -j defaults to nproc
        rep.line(
            f"baseline (same files, no modelbuild): read+sha256 {results_baseline['sha256_gbps_1thread']:.2f} GB/s "
            f"per thread; copy_file_range+fsync {results_baseline['copy_fsync_gbps']:.2f} GB/s "
            f"({results_baseline['copy_floor_s']:.2f} s, {results_baseline['copy_threads']} files at a time) = "
            "this machine's ceiling for hashing, and the floor of a store that keeps its own copy"
        )
    else:
        results_baseline = None
    rep.line("note: inputs are in the page cache (files just written, cache not dropped): "
             "the cold build measures hashing + store writes, not disk reads")
    results: dict[str, Any] = {"machine": info, "total_bytes": total, "files": args.files, "file_sizes": sizes,
                               "baseline": results_baseline}

    # 1. cold build(s): each with a fresh home, and the copy floor measured right before it
    # (the first one's is the baseline's); the last one's home is used from here on
    colds, floors = [], []
    for i in range(args.cold_repeat):
        if home.exists():
            _remove(home)
        if results_baseline is not None:
            floors.append(results_baseline["copy_floor_s"] if i == 0 else
                          copy_floor(paths, workdir, results_baseline["copy_threads"]))
        label = "cold" if args.cold_repeat == 1 else f"cold-{i + 1}"
        r = run_build(workdir, home, label)
        colds.append(r)
        steps = slowest_steps((workdir / "logs" / f"{label}.stderr").read_text())
        rep.line(f"cold #{i + 1}: {r['wall_s']:.2f} s" + (f", copy floor just before {floors[-1]:.2f} s = "
                                                         f"{r['wall_s'] / floors[-1]:.2f}x" if floors else "")
                 + "; slowest steps: " + ", ".join(f"{name} {t:.1f} s" for name, t in steps))
        rep.check(f"cold #{i + 1}: bytes_hashed == total", r["stats"]["bytes_hashed"] == total,
                  f"bytes_hashed={r['stats']['bytes_hashed']}, total={total}")
        rep.check(f"cold #{i + 1}: bytes_written >= total (each file stored once)",
                  r["stats"]["bytes_written"] >= total, f"bytes_written={r['stats']['bytes_written']}, total={total}")
    cold = dict(colds[-1])
    cold["walls_s"] = [r["wall_s"] for r in colds]
    cold["wall_s"] = statistics.median(cold["walls_s"])
    cold["peak_rss_mb"] = max(r["peak_rss_mb"] for r in colds)
    cold["gbps"] = gb(total) / cold["wall_s"]
    results["cold"] = cold
    of = "" if len(colds) == 1 else f" (median of {len(colds)}: {', '.join(f'{w:.2f}' for w in cold['walls_s'])})"
    rep.line(
        f"cold build: {gb(total):.2f} GB in {cold['wall_s']:.2f} s{of} = {cold['gbps']:.2f} GB/s, "
        f"peak RSS {cold['peak_rss_mb']:.0f} MB"
    )
    rep.line(describe(colds[-1]))

    # 2. no-op rebuilds
    noops = []
    for i in range(args.repeat):
        r = run_build(workdir, home, f"noop-{i + 1}")
        noops.append(r)
        s = r["stats"]
        rep.check(f"no-op #{i + 1}: bytes_hashed == 0", s["bytes_hashed"] == 0, f"bytes_hashed={s['bytes_hashed']}")
        rep.check(f"no-op #{i + 1}: steps_run == 0", s["steps_run"] == 0,
                  f"steps_run={s['steps_run']} executed={r['executed']}")
        rep.check(f"no-op #{i + 1}: digest unchanged", r["digest"] == cold["digest"],
                  f"{r['digest']} != {cold['digest']}")
    walls = [r["wall_s"] for r in noops]
    noop = {
        "wall_s": statistics.median(walls),
        "walls_s": walls,
        "ratio_to_cold": statistics.median(walls) / cold["wall_s"],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in noops),
        "runs": noops,
    }
    results["noop"] = noop
    rep.line(
        f"no-op rebuild: median {noop['wall_s']:.3f} s of {args.repeat} "
        f"({', '.join(f'{w:.3f}' for w in walls)}) = {100 * noop['ratio_to_cold']:.1f}% of cold, "
        f"peak RSS {noop['peak_rss_mb']:.0f} MB"
    )
    rep.line(describe(noops[-1]))

    # 3. touch rebuild: new (still aged) mtimes, same content
    touched = time.time_ns() - (AGE_S // 2) * 10**9
    for p in paths:
        os.utime(p, ns=(touched, touched))
    touch = run_build(workdir, home, "touch")
    touch["gbps"] = gb(total) / touch["wall_s"]
    results["touch"] = touch
    rep.line(
        f"touch rebuild: {gb(touch['stats']['bytes_hashed']):.2f} GB re-hashed in {touch['wall_s']:.2f} s "
        f"= {touch['gbps']:.2f} GB/s, {gb(touch['stats']['bytes_written']):.2f} GB written, "
        f"peak RSS {touch['peak_rss_mb']:.0f} MB"
    )
    rep.line(describe(touch))
    rep.check("touch: bytes_hashed == total", touch["stats"]["bytes_hashed"] == total,
              f"bytes_hashed={touch['stats']['bytes_hashed']}, total={total}")
    rep.check("touch: bytes_written == 0 (no blob rewritten)", touch["stats"]["bytes_written"] == 0,
              f"bytes_written={touch['stats']['bytes_written']}")
    rep.check("touch: digest unchanged", touch["digest"] == cold["digest"],
              f"{touch['digest']} != {cold['digest']}")

    # 4. one file changed: a few bytes in the middle of the first file, size kept
    target, size = paths[0], sizes[0]
    with open(target, "r+b") as fh:
        fh.seek(size // 2)
        old = fh.read(16)
        fh.seek(size // 2)
        fh.write(bytes(b ^ 0xFF for b in old))
    changed_ns = time.time_ns() - (AGE_S // 3) * 10**9
    os.utime(target, ns=(changed_ns, changed_ns))
    one = run_build(workdir, home, "one-file")
    results["one_file"] = one
    rep.line(
        f"one-file-changed rebuild: {gb(one['stats']['bytes_hashed']):.2f} GB re-hashed "
        f"({target.name}, {gb(size):.2f} GB) in {one['wall_s']:.2f} s, "
        f"{gb(one['stats']['bytes_written']):.2f} GB written, peak RSS {one['peak_rss_mb']:.0f} MB"
    )
    rep.line(describe(one))
    rep.check("one-file: bytes_hashed == changed file's size", one["stats"]["bytes_hashed"] == size,
              f"bytes_hashed={one['stats']['bytes_hashed']}, file size={size}")
    rep.check("one-file: only that file hashed", one["files_hashed"] == [f"{target.name}"],
              f"files_hashed={one['files_hashed']}")
    rep.check("one-file: digest changed", one["digest"] != cold["digest"], "digest did not change")

    # verdict against the targets
    peak = max(cold["peak_rss_mb"], noop["peak_rss_mb"], touch["peak_rss_mb"], one["peak_rss_mb"])
    targets = [
        ("cold throughput >= %.1f GB/s" % TARGET_COLD_GBPS, cold["gbps"] >= TARGET_COLD_GBPS,
         f"{cold['gbps']:.2f} GB/s"),
        ("no-op <= %.2f s" % TARGET_NOOP_S, noop["wall_s"] <= TARGET_NOOP_S, f"{noop['wall_s']:.3f} s"),
        ("no-op <= %d%% of cold" % (100 * TARGET_NOOP_RATIO), noop["ratio_to_cold"] <= TARGET_NOOP_RATIO,
         f"{100 * noop['ratio_to_cold']:.1f}%"),
        ("peak RSS <= %d MB" % TARGET_RSS_MB, peak <= TARGET_RSS_MB, f"{peak:.0f} MB (max over all builds)"),
    ]
    if floors:  # issue 15: against the copy floor measured in this run, median against median
        floor = statistics.median(floors)
        ratio = cold["wall_s"] / floor
        results["copy_floors_s"] = floors
        results["cold_to_copy_floor"] = ratio
        of = "" if len(floors) == 1 else f" median of {', '.join(f'{f:.2f}' for f in floors)}"
        targets.insert(1, ("cold <= %.1fx the copy_file_range+fsync floor" % TARGET_COLD_FLOOR,
                           ratio <= TARGET_COLD_FLOOR, f"{ratio:.2f}x ({cold['wall_s']:.2f} s vs {floor:.2f} s{of})"))
    results["targets"] = [{"target": t, "ok": ok, "value": v} for t, ok, v in targets]
    results["checks"] = rep.checks
    rep.line("verdict:")
    for t, ok, v in targets:
        rep.line(f"  {'PASS' if ok else 'FAIL'}  {t}: {v}")
    failed_checks = [c for c in rep.checks if not c["ok"]]
    rep.line(f"  {'PASS' if not failed_checks else 'FAIL'}  stats checks: "
             f"{len(rep.checks) - len(failed_checks)}/{len(rep.checks)} passed")
    for c in failed_checks:
        rep.line(f"        failed: {c['check']} ({c['detail']})")
    results["ok"] = all(ok for _t, ok, _v in targets) and not failed_checks
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=2.0,
                        help="total model size in GiB (2**30 bytes; default 2 = 4 x 512 MiB)")
    parser.add_argument("--files", type=int, default=4, help="number of model files (default 4)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to write the model and the store (default: a new temp dir under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory at the end")
    parser.add_argument("--repeat", type=int, default=3, help="no-op rebuilds to take the median of (default 3)")
    parser.add_argument("--cold-repeat", type=int, default=1,
                        help="cold builds (each with a fresh home) to take the median of (default 1)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the sha256 / copy+fsync baseline measured before the builds")
    parser.add_argument("--modelbuild", default=None, metavar="PATH",
                        help="the modelbuild executable to time (default: this virtualenv's); for the numbers a "
                             "user sees, one from a regular `pip install .`, not an editable install")
    parser.add_argument("--json", action="store_true",
                        help="print machine-readable results on stdout (the report goes to stderr)")
    args = parser.parse_args(argv)
    if args.size_gb <= 0 or args.files < 1 or args.repeat < 1 or args.cold_repeat < 1:
        parser.error("--size-gb must be > 0; --files, --repeat and --cold-repeat >= 1")
    if args.modelbuild:
        found = shutil.which(args.modelbuild)
        if found is None:
            parser.error(f"--modelbuild {args.modelbuild}: no such executable")
        MODELBUILD[:] = [found]

    if args.workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="modelbuild-bench-", dir="/tmp"))
        owned = [workdir]
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        owned = [workdir / n for n in ("model", "home", "logs", "Modelfile")]
        if any(p.exists() for p in owned):
            parser.error(f"{workdir} already holds a benchmark (model/, home/, logs/ or Modelfile)")

    rep = Report(args.json)
    rc = 0
    try:
        results = benchmark(args, workdir, rep)
        rc = 0 if results["ok"] else 1
        if args.json:
            print(json.dumps(results, indent=2))
    except RuntimeError as exc:
        rep.line(f"benchmark: error: {exc}")
        rc = 2
    finally:
        if args.keep:
            rep.line(f"kept {workdir}")
        else:
            for p in owned:
                _remove(p)
    return rc


def _remove(path: Path) -> None:
    """Remove a tree even where modelbuild made blobs read-only."""
    if path.is_dir() and not path.is_symlink():
        for d, _dirs, _files in os.walk(path):
            os.chmod(d, 0o755)
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


if __name__ == "__main__":
    sys.exit(main())
