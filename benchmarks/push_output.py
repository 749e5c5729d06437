#!/usr/bin/env python3
"""Benchmark ``modelbuild build --push`` (``--output type=registry``) against the
registry-bound floor, in the same run (issue 15, "no second copy").

Writes a synthetic model (default 4 x 512 MiB safetensors files, transfer.py's: a valid
header around random bytes) and, once, builds it normally into its own MODELBUILD_HOME (the
store then holds the layers: what the floor pushes from). Then, for each of ``--rounds``
rounds, against a freshly started docker-registry on 127.0.0.1 for each measurement (fresh
storage; transfer.py's RegistryServer), each a child process timed from spawn to exit with
its peak RSS and CPU from ``os.wait4``, who goes first alternating:

* floor: ``modelbuild push bench:1 HOST/bench/floor:1 --plain-http``: pushing blobs already
  in the store to an empty repository (no hashing: the store's digests are trusted). What a
  registry-bound upload of these bytes costs here, the floor of a build that must also hash
  them;
* cold: ``modelbuild build -f Modelfile -t HOST/bench/stream:1 --push --plain-http`` in a
  fresh MODELBUILD_HOME: every weight hashed once while it is uploaded from the model's own
  files; the store's growth (disk usage of MODELBUILD_HOME/store, ``du``) is measured after;
* no-op: the same command again in the same home, to the same registry: must run no step,
  hash nothing, upload nothing (``--json``'s stats and ``pushed``).

Checks every push by the registry's manifest digest (= the normal build's), and the stats
above. Targets: cold <= 1.2x the floor (medians), store growth < 1 % of the model.

Run:  .venv/bin/python benchmarks/push_output.py [--size-gb 2] [--files 4] [--rounds 3] [--json]
Needs docker-registry (apt-get install docker-registry) and about 4 x the model size free.
Exit status: 0 all targets met, 1 a target missed, 2 a build, push or check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import Report, gb  # noqa: E402
from transfer import GiB, REGISTRY_BIN, RegistryServer, measure, modelbuild_cmd, write_model  # noqa: E402

TARGET_RATIO = 1.2  # cold build+push / pushing stored blobs
TARGET_GROWTH = 0.01  # of the model's size

MODELFILE = """\
# syntax=modelfile
# Synthetic model written by benchmarks/push_output.py.
FROM ./model
NAME push-output-bench
FAMILY llama
ARCH transformer
FORMAT safetensors
PRECISION uint8
MODEL *.safetensors
"""


def disk_usage(root: Path) -> int:
    """Bytes of disk under *root*, as ``du`` counts them (blocks), 0 if it does not exist."""
    if not root.exists():
        return 0
    return sum(os.lstat(os.path.join(d, f)).st_blocks * 512 for d, _, files in os.walk(root) for f in files)


def machine(workdir: Path) -> str:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    registry = subprocess.run([REGISTRY_BIN, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return (f"{os.cpu_count()} CPUs, {cpu}; Python {sys.version.split()[0]}; workdir {workdir} "
            f"({gb(shutil.disk_usage(workdir).free):.1f} GB free); MODELBUILD_FSYNC "
            f"{'off' if os.environ.get('MODELBUILD_FSYNC') == '0' else 'on'}; {registry}")


def benchmark(args: argparse.Namespace, workdir: Path, rep: Report) -> dict[str, Any]:
    if not os.path.exists(REGISTRY_BIN):
        raise FileNotFoundError("docker-registry is not installed (apt-get install -y docker-registry)")
    total = int(args.size_gb * GiB)
    if shutil.disk_usage(workdir).free < 4 * total + GiB:
        raise RuntimeError(f"need about {gb(4 * total + GiB):.1f} GB free in {workdir}")
    rep.line(f"machine: {machine(workdir)}")
    rep.line("load average at start: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
             + " (other work on the machine slows every row; compare ratios within one run)")

    model_dir = workdir / "model"
    (workdir / "Modelfile").write_text(MODELFILE)
    t0 = time.perf_counter()
    # in a child, so that numpy's memory does not raise this process's peak RSS, which every
    # child inherits as its starting ru_maxrss
    subprocess.run([sys.executable, __file__, "--write-model", str(model_dir), "--files", str(args.files),
                    "--size-gb", str(args.size_gb)], check=True)
    size = sum(p.stat().st_size for p in model_dir.iterdir())
    rep.line(f"model: {args.files} files, {gb(size):.2f} GB ({size} bytes) written in {time.perf_counter() - t0:.1f} s")

    logs = workdir / "logs"
    base = dict(os.environ)
    base.pop("MODELBUILD_DEBUG", None)
    stored = dict(base, MODELBUILD_HOME=str(workdir / "stored"))
    modelfile = str(workdir / "Modelfile")
    built = measure(modelbuild_cmd() + ["build", "-f", modelfile, "-t", "bench:1", "--progress", "plain", "--json"],
                    stored, logs, "build")
    digest = json.loads(built["stdout"])["digest"]
    rep.line(f"normal build (the floor's store): {digest} in {built['wall_s']:.2f} s; store "
             f"{gb(disk_usage(workdir / 'stored' / 'store')):.2f} GB")

    def show(i: int, key: str, r: dict[str, Any], extra: str = "") -> None:
        rep.line(f"  round {i + 1} {key:6} {r['wall_s']:6.2f} s  {gb(size) / r['wall_s']:5.2f} GB/s  "
                 f"RSS {r['peak_rss_mb']:4.0f} MB  user {r['user_s']:.2f} s sys {r['sys_s']:.2f} s  "
                 f"registry CPU {r['registry_cpu_s']:5.2f} s  load {r['load1']:.1f}{extra}")

    runs: dict[str, list[dict[str, Any]]] = {"floor": [], "cold": [], "noop": []}
    growth: list[int] = []
    for i in range(args.rounds):
        home = workdir / f"stream-{i}"
        stream = dict(base, MODELBUILD_HOME=str(home))
        order = ["floor", "cold"] if i % 2 == 0 else ["cold", "floor"]
        for key in order:
            registry = RegistryServer(workdir / f"registry-{key}-{i}")
            try:
                if key == "floor":
                    r = measure(modelbuild_cmd() + ["push", "bench:1", f"{registry.host}/bench/floor:1", "--plain-http"],
                                stored, logs, f"floor-{i}", registry)
                    got = registry.manifest_digest("bench/floor", "1")
                    rep.check(f"round {i + 1}: floor pushed the build's manifest", got == digest, f"{got}")
                    runs["floor"].append(r)
                    show(i, key, r)
                    continue
                cmd = modelbuild_cmd() + ["build", "-f", modelfile, "-t", f"{registry.host}/bench/stream:1", "--push",
                                          "--plain-http", "--progress", "plain", "--json"]
                before = disk_usage(home / "store")
                r = measure(cmd, stream, logs, f"cold-{i}", registry)
                grown = disk_usage(home / "store") - before
                growth.append(grown)
                doc = json.loads(r["stdout"])
                rep.check(f"round {i + 1}: cold build+push has the build's digest", doc["digest"] == digest,
                          doc["digest"])
                got = registry.manifest_digest("bench/stream", "1")
                rep.check(f"round {i + 1}: the registry has it", got == digest, f"{got}")
                rep.check(f"round {i + 1}: every weight hashed once", doc["stats"]["bytes_hashed"] == size,
                          f"{doc['stats']['bytes_hashed']} of {size}")
                runs["cold"].append(r)
                show(i, "cold", r, f"  store +{grown / 1e3:.0f} kB ({100 * grown / size:.4f} %)")
                r = measure(cmd, stream, logs, f"noop-{i}", registry)
                doc = json.loads(r["stdout"])
                stats, (pushed,) = doc["stats"], doc["pushed"]
                rep.check(f"round {i + 1}: no-op runs no step and hashes nothing",
                          stats["steps_run"] == 0 and stats["bytes_hashed"] == 0, json.dumps(stats)[:200])
                rep.check(f"round {i + 1}: no-op uploads nothing", pushed["uploaded"] == 0 and pushed["bytes"] == 0,
                          json.dumps(pushed))
                runs["noop"].append(r)
                show(i, "no-op", r)
            finally:
                registry.stop()
        shutil.rmtree(home, ignore_errors=True)

    med = {k: statistics.median(x["wall_s"] for x in v) for k, v in runs.items()}
    best = {k: min(x["wall_s"] for x in v) for k, v in runs.items()}
    cpu = {k: statistics.median(x["user_s"] + x["sys_s"] for x in v) for k, v in runs.items()}
    reg = {k: statistics.median(x["registry_cpu_s"] for x in v) for k, v in runs.items()}
    ratio = med["cold"] / med["floor"]
    worst = max(growth)
    rep.line()
    rep.line(f"{gb(size):.2f} GB, {args.rounds} rounds (wall time from spawn to exit):")
    rep.line(f"  {'':44} {'best':>7} {'median':>7} {'GB/s':>6} {'client CPU':>10} {'registry CPU':>12}")
    names = {"floor": "floor: modelbuild push of stored blobs", "cold": "cold build --push (streamed)",
             "noop": "no-op rebuild --push"}
    for k in runs:
        rep.line(f"  {names[k]:44} {best[k]:6.2f}s {med[k]:6.2f}s {gb(size) / med[k]:6.2f} {cpu[k]:9.2f}s "
                 f"{reg[k]:11.2f}s")
    rep.line(f"  cold / floor: {best['cold'] / best['floor']:.2f}x best, {ratio:.2f}x median")
    rep.line(f"  store growth of a cold build+push: {worst} bytes at most, {100 * worst / size:.4f} % of the model")
    targets = [
        (f"cold build+push <= {TARGET_RATIO}x the floor (median)", ratio <= TARGET_RATIO, f"{ratio:.2f}x"),
        (f"store growth < {100 * TARGET_GROWTH:.0f} % of the model", worst < TARGET_GROWTH * size,
         f"{100 * worst / size:.4f} %"),
    ]
    rep.line("verdict:")
    for t, ok, v in targets:
        rep.line(f"  {'PASS' if ok else 'FAIL'}  {t}: {v}")
    return {"bytes": size, "digest": digest, "runs": {k: [{kk: vv for kk, vv in r.items() if kk != "stdout"}
                                                           for r in v] for k, v in runs.items()},
            "median_s": med, "best_s": best, "ratio": ratio, "growth": growth,
            "targets": [{"target": t, "ok": ok, "value": v} for t, ok, v in targets], "checks": rep.checks}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=2.0, help="model size in GiB (default 2)")
    ap.add_argument("--files", type=int, default=4, help="number of safetensors files (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each measurement (default 3)")
    ap.add_argument("--workdir", type=Path, help="an empty work directory, kept (default: a new temp dir, removed "
                                                 "unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs in logs/)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout (report on stderr)")
    ap.add_argument("--write-model", type=Path, help=argparse.SUPPRESS)  # the child that writes the model
    args = ap.parse_args()
    if args.write_model:
        write_model(args.write_model, args.files, int(args.size_gb * GiB))
        return 0
    rep = Report(args.json)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modelbuild-push-output-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.workdir and any(workdir.iterdir()):
        rep.line(f"error: {workdir} is not empty")
        return 2
    try:
        results = benchmark(args, workdir.resolve(), rep)
    except (RuntimeError, FileNotFoundError) as exc:
        rep.line(f"error: {exc}")
        return 2
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    if not all(c["ok"] for c in results["checks"]):
        return 2
    return 0 if all(t["ok"] for t in results["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
