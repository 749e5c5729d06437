#!/usr/bin/env python3
"""Interleaved A/B timing of the gguf-quantize plugin between two (or more) source trees.

On a shared machine two benchmark runs minutes apart do not compare: this runs
``benchmarks/quantize.py --child plugin`` (``plugin-all`` for a k-quant mix) once per tree per
round, alternating the order every round, on one input, and prints each tree's best and
median wall time and a digest of the output tensors (they must agree).

A tree is a directory on ``PYTHONPATH`` holding ``modelbuild/`` and ``modelbuild_plugins/``
(the repository's ``plugins/``), e.g. made with ``git archive`` or ``cp -r``; it shadows
the editable install. The input is written once with ``benchmarks/quantize.py --child
generate``.

Run:  .venv/bin/python benchmarks/quantize_ab.py --rounds 8 --type q8_0 before=/tmp/a after=/tmp/b
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().with_name("quantize.py")
KQUANT_MIXES = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
                "q3_k", "q4_k", "q5_k")


def child(args: list[str], pythonpath: str | None = None) -> dict:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run([sys.executable, str(BENCH), "--child", *args], env=env, capture_output=True, text=True,
                          check=False, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(2)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="+", metavar="NAME=DIR", help="a tree to time, as name=PYTHONPATH directory")
    ap.add_argument("--rounds", type=int, default=6, help="runs per tree (default 6)")
    ap.add_argument("--type", dest="qtype", default="q8_0", help="target type (default q8_0)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="plugin processes (default: all CPUs)")
    ap.add_argument("--size-gb", type=float, default=1.05, help="model size in GB (default 1.05)")
    ap.add_argument("--input", help="an existing GGUF to quantize instead of a generated one")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.trees)
    kind = "plugin-all" if args.qtype.lower() in KQUANT_MIXES else "plugin"
    work = Path(tempfile.mkdtemp(prefix="mb-quant-ab-"))
    try:
        src = args.input or str(work / "model.gguf")
        if not args.input:
            child(["generate", src, str(args.size_gb), "f32"])
        times: dict[str, list[float]] = {name: [] for name in trees}
        for r in range(args.rounds):
            order = list(trees.items()) if r % 2 == 0 else list(reversed(trees.items()))
            for name, path in order:
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                os.sync()
                result = child([kind, src, args.qtype, str(args.jobs), str(out)], path)
                digest = hashlib.sha256(json.dumps(result["hashes"], sort_keys=True).encode()).hexdigest()[:16]
                times[name].append(result["wall_s"])
                print(f"round {r} {name}: {result['wall_s']:.2f} s  tensors {digest}  load {os.getloadavg()[0]:.2f}",
                      flush=True)
        for name, values in times.items():
            print(f"{name}: best {min(values):.2f} s, median {statistics.median(values):.2f} s "
                  f"({', '.join(f'{v:.2f}' for v in values)})")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
