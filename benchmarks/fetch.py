#!/usr/bin/env python3
"""What a remote ``FROM`` costs: fetching a file into the store (issue 13).

Writes --size-gb of incompressible bytes, serves them from 127.0.0.1 over HTTP (a small
server that answers with ``sendfile``, so the server is not what is measured), and times,
each --rounds times with the page cache warm:

- ``fetch``: a cold ``FROM http://127.0.0.1/…#sha256=`` into a fresh ``MODELBUILD_HOME``
  (:func:`modelbuild.fetch.open_remote` through the ``https`` source: download, SHA-256 on
  the way in, fsync, into the blob store, hard-linked into the snapshot);
- ``cached``: the same reference again (the key from the pin, the listing from the record,
  the snapshot checked: no request at all);
- ``curl``: ``curl -o FILE`` of the same URL plus an ``fsync``: a mature client downloading
  the same bytes without hashing them;
- the floor: ``copy_file_range`` + ``fsync`` of the same bytes to a new file: writing them
  once, nothing else.

Targets: the fetch within 1.5x of curl + fsync (the floor of a download here: loopback TCP
is slower than a disk copy; the fetch also hashes every byte once, curl does not); the
cached fetch under 0.05 s; the weights exist once on disk (the snapshot's file is the
store's blob). The copy floor is reported for scale.

Run:  .venv/bin/python benchmarks/fetch.py [--size-gb 1.05] [--rounds 3] [--json]
Exit status 0 when the targets hold, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Report  # noqa: E402
from quantize import machine  # noqa: E402
from run import copy_floor  # noqa: E402


def write_payload(path: Path, size: int) -> str:
    """*size* pseudo-random bytes (incompressible, cheap to make); their sha256 hex."""
    import numpy as np

    rng = np.random.default_rng(13)
    sha = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            block = rng.integers(0, 256, min(left, 64 << 20), dtype=np.uint8).tobytes()
            out.write(block)
            sha.update(block)
            left -= len(block)
    return sha.hexdigest()


def serve(path: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A server for one file with Range and sendfile; its URL."""
    size = path.stat().st_size

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _head(self) -> tuple[int, int]:
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0])
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(size - start))
            self.send_header("ETag", '"bench"')
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.end_headers()
            return start, size - start

        def do_HEAD(self) -> None:
            self._head()

        def do_GET(self) -> None:
            start, count = self._head()
            with open(path, "rb") as f:
                sent = 0
                while sent < count:
                    sent += os.sendfile(self.wfile.fileno(), f.fileno(), start + sent, count - sent)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/{path.name}"


def fetch(home: Path, reference: str) -> tuple[float, Path]:
    from modelbuild.fetch import FetchSession, fetching
    from modelbuild.plugins import make_plugin_manager

    host = make_plugin_manager()
    t0 = time.perf_counter()
    with fetching(FetchSession(home)):
        opened = host.sources.open(reference, base_dir=home)
    return time.perf_counter() - t0, opened.root


def curl(url: str, dest: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["curl", "-s", "-f", "-o", str(dest), url], check=True)
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.05)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    report = Report(args.json)
    work = Path(tempfile.mkdtemp(prefix="mb-fetch-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    try:
        payload = work / "model.bin"
        size = int(args.size_gb * 1e9)
        hexd = write_payload(payload, size)
        server, url = serve(payload)
        reference = f"{url}#sha256={hexd}"
        times: dict[str, list[float]] = {"fetch": [], "cached": [], "curl": [], "copy floor": []}
        shared_inode = True
        for i in range(args.rounds):
            home = work / f"home{i}"
            seconds, root = fetch(home, reference)
            times["fetch"].append(seconds)
            times["cached"].append(fetch(home, reference)[0])
            blob = home / "store" / "blobs" / "sha256" / hexd
            shared_inode &= os.stat(root / "model.bin").st_ino == os.stat(blob).st_ino
            shutil.rmtree(home, ignore_errors=True)
            dest = work / f"curl{i}"
            times["curl"].append(curl(url, dest))
            dest.unlink()
            times["copy floor"].append(copy_floor(payload, work / f"copy{i}"))
            (work / f"copy{i}").unlink()
        server.shutdown()
        best = {k: min(v) for k, v in times.items()}
        report.line(f"machine: {machine()}")
        report.line(f"payload: {size / 1e9:.2f} GB served from 127.0.0.1 with sendfile, {args.rounds} rounds, best of each")
        for name, seconds in best.items():
            rate = f"{size / seconds / 1e9:6.2f} GB/s" if name != "cached" else ""
            report.line(f"  {name:<11} {seconds * 1000:9.1f} ms  {rate}")
        report.check("the snapshot's file is the store's blob (one copy on disk)", shared_inode)
        report.check("fetch within 1.5x of curl + fsync", best["fetch"] < 1.5 * best["curl"],
                     f"{best['fetch'] / best['curl']:.2f}x")
        report.line(f"  fetch / curl + fsync: {best['fetch'] / best['curl']:.2f}x; "
                    f"fetch / copy floor: {best['fetch'] / best['copy floor']:.2f}x")
        report.check("cached fetch under 0.05 s", best["cached"] < 0.05, f"{best['cached']:.4f} s")
        if args.json:
            print(json.dumps({"size": size, "best": best, "checks": report.checks}, indent=2))
        return 0 if all(c["ok"] for c in report.checks) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
