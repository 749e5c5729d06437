#!/usr/bin/env python3
"""Benchmark ``CONVERT gguf`` (hf-to-gguf) of a bf16 checkpoint against the floor of its bytes.

The convert reads every weight once and writes it once (bf16 in, f16 out: as many bytes), so
its floor on one machine is a ``copy_file_range`` + ``fsync`` of the checkpoint, measured in
the same run. What it costs above that is the conversion itself (bf16 → float32 → f16, the
q/k permutation of llama), on the driver's threads: the one transform of a build that
``--executor ray`` does not spread over a cluster's nodes (docs/scale.md §1). This measures
how far from the bytes' floor it is, and its rate per core, for the build-time model.

The checkpoint: llama-shaped (hidden 2048, FFN 5632, 16 heads), as many layers as
``--size-gb`` takes, bf16, one safetensors file, the test suite's tokenizer. Each build is a
``modelbuild build --json --progress json`` subprocess with a fresh ``MODELBUILD_HOME``, with
``-j`` = the CPUs and with ``-j 1``, alternating, --repeat times; the best run counts.
Reported: the convert step's time (the build's own "done" event), its input rate, its ratio
to the floor, and parameters per second per core.

Run:  .venv/bin/python benchmarks/convert.py [--size-gb 1] [--repeat 2] [--json]
Exit status: 0 when every build gave one digest, 2 when a build fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _report import Report, gb, json_build, step_done  # noqa: E402
from quantize import machine  # noqa: E402

GEOMETRY = {"hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 16, "num_key_value_heads": 16,
            "head_dim": 128}
MODELFILE = "FROM ./ckpt\nNAME convert-bench\nCONFIG *.json\nMODEL *.safetensors\nCONVERT gguf\n"


def checkpoint(dest: Path, size_gb: float) -> dict[str, Any]:
    """A bf16 llama checkpoint of about *size_gb* GB in *dest*: (parameters, bytes)."""
    from models import _round, make_tiny_checkpoint, make_weights, write_safetensors

    make_tiny_checkpoint(dest, "llama", dtype="bfloat16")
    config = json.loads((dest / "config.json").read_text())
    h, f = GEOMETRY["hidden_size"], GEOMETRY["intermediate_size"]
    per_layer = 4 * h * h + 3 * h * f  # q, k, v, o and the three FFN matrices
    config.update(GEOMETRY, num_hidden_layers=max(1, round(size_gb * 1e9 / 2 / per_layer)))
    (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    weights = make_weights(config)
    params = sum(w.size for w in weights.values())
    write_safetensors(dest, _round(weights, "bfloat16"), sharded=False)
    del weights
    past = time.time() - 60  # older than the stat cache's racy window
    for p in dest.iterdir():
        os.utime(p, (past, past))
    return {"params": params, "bytes": (dest / "model.safetensors").stat().st_size,
            "layers": config["num_hidden_layers"]}


def floor(src: Path, work: Path) -> float:
    """``copy_file_range`` + ``fsync`` of *src* to a new file beside the builds' homes: seconds."""
    dst = work / "floor.copy"
    os.sync()
    started = time.perf_counter()
    with open(src, "rb") as s, open(dst, "wb") as d:
        left = os.fstat(s.fileno()).st_size
        while left:
            n = os.copy_file_range(s.fileno(), d.fileno(), min(left, 1 << 30))
            if n == 0:
                break
            left -= n
        os.fsync(d.fileno())
    seconds = time.perf_counter() - started
    dst.unlink()
    return seconds


def build(project: Path, home: Path, jobs: int) -> dict[str, Any]:
    os.sync()  # no build pays for flushing the last one's output
    wall, result, events = json_build(project / "Modelfile", home, "-j", str(jobs))
    return {"jobs": jobs, "wall_s": wall, "convert_s": step_done(events, "convert")["duration"],
            "digest": result["digest"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.0, help="checkpoint size in GB (bf16; default 1)")
    ap.add_argument("--repeat", type=int, default=2, help="builds per -j (default 2; best counts)")
    ap.add_argument("--workdir", help="where to write (default: a temp dir, removed at the end)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = ap.parse_args()
    rep = Report(args.json)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mb-convert-"))
    project = work / "project"
    cpus = os.cpu_count() or 1
    try:
        project.mkdir(parents=True, exist_ok=True)
        (project / "Modelfile").write_text(MODELFILE)
        rep.line(f"machine: {machine()}")
        ck = checkpoint(project / "ckpt", args.size_gb)
        rep.line(f"input: {gb(ck['bytes']):.2f} GB bf16 safetensors, {ck['params'] / 1e6:.0f} M params, "
                 f"{ck['layers']} layers")
        runs: list[dict[str, Any]] = []
        floors: list[float] = []
        for i in range(args.repeat):
            floors.append(floor(project / "ckpt" / "model.safetensors", work))
            for jobs in sorted({cpus, 1}, reverse=True):
                home = work / f"home-{jobs}-{i}"
                r = build(project, home, jobs)
                shutil.rmtree(home, ignore_errors=True)
                rep.line(f"  -j {jobs} #{i + 1}: convert {r['convert_s']:.2f} s, build {r['wall_s']:.2f} s")
                runs.append(r)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    best = {j: min(r["convert_s"] for r in runs if r["jobs"] == j) for j in {r["jobs"] for r in runs}}
    copy = min(floors)
    rep.line(f"floor: copy_file_range + fsync of the checkpoint {copy:.2f} s ({gb(ck['bytes']) / copy:.2f} GB/s)")
    for jobs, seconds in sorted(best.items(), reverse=True):
        rep.line(f"convert, -j {jobs}: {seconds:.2f} s = {gb(ck['bytes']) / seconds:.2f} GB/s in, "
                 f"{seconds / copy:.2f}x the floor, {ck['params'] / 1e6 / (seconds * jobs):.1f} Mparams/s per core")
    rep.check("one digest for every build", len({r["digest"] for r in runs}) == 1, str({r["digest"] for r in runs}))
    if args.json:
        print(json.dumps({"input_bytes": ck["bytes"], "params": ck["params"], "floor_s": copy, "runs": runs,
                          "best_convert_s": best, "checks": rep.checks}, indent=2))
    return 0 if all(c["ok"] for c in rep.checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
