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

Targets (issue 12): ``link`` under 2 % of the copy floor and under 0.1 s; ``again`` under
0.05 s; no byte of the weights copied (the run directory's file shares the blob's inode).

Run:  .venv/bin/python benchmarks/run.py [--size-gb 1.05] [--rounds 3] [--json]
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=1.05)
    p.add_argument("--rounds", type=int, default=3)
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
        if args.json:
            print(json.dumps({"machine": machine(), "bytes": size, "best_seconds": best, "checks": report.checks},
                             indent=2))
        return 0 if all(c["ok"] for c in report.checks) else 1
    finally:
        from modelbuild.runtime.files import remove_tree as _rm

        for path in (work / "home" / "run",):
            if path.exists():
                for child in path.iterdir():
                    _rm(child)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
