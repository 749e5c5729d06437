#!/usr/bin/env python3
"""Does the quantize step's progress tell the truth, and what does reporting it cost?

Writes a llama-shaped F16 GGUF of --size-gb (benchmarks/quantize.py's generator), then
builds ``QUANTIZE --qtype`` of it with the real CLI, in turns (--rounds, default 3):

- ``--progress json``: every line of standard error must parse; of the quantize step's
  progress events it counts those with a larger ``current`` than the one before, and when
  they came (seconds after the step's start event, and how many in the step's first half);
- ``--progress quiet``: the same build, no renderer: the cost of reporting is the difference.

Every build starts from an empty MODELBUILD_HOME except the input's digest (``--no-cache``
re-hashes; the home is removed between runs), and every run must produce the same digest.
Target (issue 11): at least five increasing counts during the step for a 1 GB model, spread
over it, and no measurable slow-down (best json run within 5 % of the best quiet run).

Run:  .venv/bin/python benchmarks/progress.py [--size-gb 1.05] [--qtype q4_k_m] [--rounds 3]
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
from quantize import generate, machine  # noqa: E402


def build(ctx: Path, home: Path, progress: str) -> tuple[float, str, str]:
    """One build: (seconds, digest on stdout, standard error)."""
    shutil.rmtree(home, ignore_errors=True)
    env = {**os.environ, "MODELBUILD_HOME": str(home)}
    os.sync()
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "modelbuild", "build", "-f", str(ctx / "Modelfile"),
                          "--progress", progress], env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"build failed ({run.returncode}): {run.stderr.strip()[-500:]}")
    return seconds, run.stdout.strip(), run.stderr


def quantize_events(stderr: str) -> dict:
    """What the JSON stream says about the quantize step."""
    events = [json.loads(line) for line in stderr.splitlines()]  # every line must parse
    assert events[-1]["kind"] == "result", events[-1]
    step = next(e["step"] for e in events if e["kind"] == "start" and e.get("label", "").startswith("quantize"))
    mine = [e for e in events if e["step"] == step]
    start = next(e["time"] for e in mine if e["kind"] == "start")
    done = next(e["time"] for e in mine if e["kind"] == "done")
    counts, last = [], -1
    for e in mine:
        if e["kind"] == "progress" and e["current"] > last:
            counts.append(e["time"] - start)
            last = e["current"]
    moving = [t for t in counts if t < done - start]  # before the step ended
    return {"step_s": done - start, "increasing": len(counts), "during_step": len(moving),
            "first_half": sum(t < (done - start) / 2 for t in moving),
            "first_s": counts[0] if counts else None, "unit": next(
                (e.get("unit") for e in mine if e["kind"] == "progress"), None)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.05)
    parser.add_argument("--qtype", default="q4_k_m")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        ctx = Path(tmp) / "ctx"
        ctx.mkdir()
        gen = generate(ctx / "model.gguf", args.size_gb, "f16")
        (ctx / "Modelfile").write_text(f"NAME progress-bench\nMODEL model.gguf\nQUANTIZE {args.qtype}\n")
        print(f"machine: {machine()}")
        print(f"input: {(ctx / 'model.gguf').stat().st_size / 1e9:.2f} GB F16 GGUF, "
              f"{gen.get('params', 0) / 1e6:.0f} Mparams; QUANTIZE {args.qtype}")
        times: dict[str, list[float]] = {"json": [], "quiet": []}
        digests, stats = set(), []
        for _ in range(args.rounds):
            for mode in ("json", "quiet"):
                seconds, digest, stderr = build(ctx, Path(tmp) / "home", mode)
                times[mode].append(seconds)
                digests.add(digest.split()[0])
                if mode == "json":
                    stats.append(quantize_events(stderr))
        for s in stats:
            print(f"json run: quantize step {s['step_s']:.1f} s, {s['increasing']} increasing counts "
                  f"({s['during_step']} before done, {s['first_half']} in the first half, first after "
                  f"{s['first_s']:.2f} s), unit {s['unit']}")
        best = {m: min(t) for m, t in times.items()}
        print(f"whole build, best of {args.rounds}: --progress json {best['json']:.2f} s, quiet {best['quiet']:.2f} s "
              f"({(best['json'] / best['quiet'] - 1) * 100:+.1f} %); medians "
              f"{sorted(times['json'])[len(times['json']) // 2]:.2f} / {sorted(times['quiet'])[len(times['quiet']) // 2]:.2f} s")
        ok = (len(digests) == 1 and all(s["during_step"] >= 5 and s["first_half"] >= 2 for s in stats)
              and best["json"] <= best["quiet"] * 1.05)
        print(f"same digest every run: {len(digests) == 1}; targets {'met' if ok else 'MISSED'}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
