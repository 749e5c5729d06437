#!/usr/bin/env python3
"""Benchmark the store's ingest alone: each way ``kernel_copy`` can copy a file, against the floor.

Ingests the same files into a fresh store, two at a time (as ``build -j 2`` does), with
``Store.ingest_file``, in rounds that alternate three ways of doing it:

* ``floor``: ``copy_file_range`` + ``fsync`` of the same files, no hashing: what a store that
  keeps its own copy cannot beat without a reflink;
* ``direct``: the store's ingest as it is (fsync on): O_DIRECT writes of the buffers read
  and hashed;
* ``kernel``: the store's ingest with O_DIRECT off (``_DIRECT_MIN`` past the file size):
  ``copy_file_range`` in a helper thread, the copy read back and hashed.

Each round ``sync``s first, so no write-back is left over, and removes the last round's
copies; with ``--keep`` it keeps them, as a store keeps its blobs, so the page cache grows
by each copy the kernel makes (the O_DIRECT way adds none). Reports, per way, the median
wall time and the CPU time (user, system) of this process over the rounds. The inputs stay in the page cache (they were just written), as in
``benchmarks/build.py``'s cold build.

Run:  .venv/bin/python benchmarks/ingest.py [--size-gb 2] [--files 4] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _report import Report  # noqa: E402

import modelbuild.oci.filecopy as filecopy  # noqa: E402
from modelbuild.store import Store  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30


def write_inputs(where: Path, files: int, size: int) -> list[Path]:
    """*files* files of *size* random-ish bytes (one random MiB, stamped per block)."""
    where.mkdir(parents=True)
    base = os.urandom(MiB)
    paths = []
    for i in range(files):
        path = where / f"part-{i}.bin"
        with open(path, "wb", buffering=0) as fh:
            block = bytearray(base)
            for n in range(size // MiB):
                block[:16] = i.to_bytes(8, "little") + n.to_bytes(8, "little")
                fh.write(block)
        paths.append(path)
    os.sync()
    return paths


def two_at_a_time(paths: list[Path], one: Callable[[Path], Any]) -> None:
    """*one* on every path, two threads at a time, the next file starting as one ends."""
    queue = list(paths)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if not queue or errors:
                    return
                path = queue.pop(0)
            try:
                one(path)
            except BaseException as exc:  # noqa: BLE001 - reported after the join
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def floor_copy(dest: Path) -> Callable[[Path], None]:
    def one(path: Path) -> None:
        src = os.open(path, os.O_RDONLY)
        dst = os.open(dest / path.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            size, done = os.fstat(src).st_size, 0
            while done < size:
                done += os.copy_file_range(src, dst, size - done)
            os.fsync(dst)
        finally:
            os.close(src)
            os.close(dst)
    return one


def ingest(store: Store) -> Callable[[Path], None]:
    def one(path: Path) -> None:
        store.ingest_file(path)
    return one


def timed(run: Callable[[], None]) -> dict[str, float]:
    before, t0 = os.times(), time.perf_counter()
    run()
    wall, after = time.perf_counter() - t0, os.times()
    return {"wall": wall, "user": after.user - before.user, "sys": after.system - before.system}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="total size in GiB (default 2)")
    parser.add_argument("--files", type=int, default=4, help="number of files (default 4)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the three ways (default 5)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp dir under /tmp)")
    parser.add_argument("--keep", action="store_true",
                        help="keep every round's copies (in the page cache too), as a store keeps its blobs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args(argv)
    report = Report(args.json)
    os.environ["MODELBUILD_FSYNC"] = "1"
    size = int(args.size_gb * GiB) // args.files // MiB * MiB
    work = Path(tempfile.mkdtemp(prefix="modelbuild-ingest-", dir=args.workdir))
    try:
        paths = write_inputs(work / "in", args.files, size)
        report.line(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
                    f"Python {platform.python_version()}; {args.files} files of {size / 1e6:.0f} MB in {work}")
        ways: dict[str, Callable[[Path], Callable[[Path], None]]] = {
            "floor": lambda out: floor_copy(out),
            "direct": lambda out: ingest(Store(out).ensure()),
            "kernel": lambda out: ingest(Store(out).ensure()),
        }
        results: dict[str, list[dict[str, float]]] = {way: [] for way in ways}
        for round_ in range(args.rounds):
            for way, make in ways.items():
                out = work / (f"{way}-{round_}" if args.keep else way)
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                os.sync()
                one = make(out)
                saved = filecopy._DIRECT_MIN
                filecopy._DIRECT_MIN = saved if way != "kernel" else 1 << 62
                try:
                    results[way].append(timed(lambda: two_at_a_time(paths, one)))
                finally:
                    filecopy._DIRECT_MIN = saved
        total = size * args.files
        summary = {}
        for way, runs in results.items():
            med = {k: statistics.median(r[k] for r in runs) for k in ("wall", "user", "sys")}
            summary[way] = {**med, "walls": [r["wall"] for r in runs]}
            walls = ", ".join(f"{r['wall']:.2f}" for r in runs)
            report.line(f"{way:>6}: {med['wall']:.2f} s median of {len(runs)} ({walls}) "
                        f"= {total / med['wall'] / 1e9:.2f} GB/s; "
                        f"CPU user {med['user']:.2f} s, sys {med['sys']:.2f} s")
        for way in ("direct", "kernel"):
            report.line(f"{way} / floor: {summary[way]['wall'] / summary['floor']['wall']:.2f}x")
        if args.json:
            print(json.dumps({"files": args.files, "bytes": total, "ways": summary}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
