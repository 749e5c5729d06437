#!/usr/bin/env python3
"""Benchmark modelbuild's registry push and pull against ``skopeo copy``, in the same run.

1. Writes a synthetic model (default 4 x 512 MiB safetensors files: a valid header around
   random bytes from numpy's default_rng) and builds it with ``modelbuild build`` into a
   fresh MODELBUILD_HOME, also exporting it as an OCI layout (``--output type=oci,dest=``).
2. For each of ``--repeat`` rounds, starts Debian's ``docker-registry`` on 127.0.0.1 (free
   port, fresh storage; the tests' approach, tests/registry/conftest.py) and measures, each
   as a child process timed from spawn to exit with its own peak RSS from ``os.wait4``:

   * push: ``modelbuild push TAG HOST/REPO:TAG --plain-http`` from the store to a fresh
     repository, and ``skopeo copy --preserve-digests oci:LAYOUT:TAG docker://HOST/REPO2:TAG``
     to another fresh one (no blob is in the registry yet, so neither skips or mounts one);
   * pull: ``modelbuild pull HOST/REPO:TAG --plain-http`` into a fresh store (a new
     MODELBUILD_HOME), and ``skopeo copy --preserve-digests docker://HOST/REPO:TAG
     oci:NEWDIR:TAG`` into a fresh layout, both from the same repository; plus ``modelbuild
     pull … -o DIR`` (files straight into a directory, no store) as a third row.

   The order of the two tools alternates between rounds. Every result is checked: the
   registry's manifest digest for pushes, the digest of every pulled blob (first round) or
   its size (later rounds) for pulls.

Both tools run with their defaults but for modelbuild's ``-j`` (``--jobs``, default 4, the
CLI's default; skopeo copies up to 6 blobs at once) and progress output (each tool's own
non-terminal default, to a log file).

Reports best and median of each, the ratio modelbuild/skopeo both ways (target <= 1.2x,
judged on the medians), modelbuild's peak RSS (target <= 200 MB), and where the time goes:
the child's user and system CPU and the registry's CPU during the same transfer.

Run:  .venv/bin/python benchmarks/transfer.py [--size-gb 2] [--files 4] [--repeat 3] [--json]
Needs docker-registry and skopeo (apt-get install docker-registry skopeo), about 5 x the model
size free in the work dir. Exit status: 0 all targets met, 1 a target missed, 2 a transfer
or check failed (or something is missing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import Report, gb  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
TARGET_RATIO = 1.2
TARGET_RSS_MB = 200.0
REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
AGE_S = 60

MODELFILE = """\
# syntax=modelfile
# Synthetic model written by benchmarks/transfer.py.
FROM ./model
NAME transfer-bench
FAMILY llama
ARCH transformer
FORMAT safetensors
PRECISION uint8
MODEL *.safetensors
"""

# -- output -----------------------------------------------------------------------------
# -- machine ----------------------------------------------------------------------------
def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def machine_info(workdir: Path) -> dict[str, Any]:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = None
    try:
        mem = next(round(int(line.split()[1]) * 1024 / 1e9, 1) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        pass
    fstype = _version(["stat", "-f", "-c", "%T", str(workdir)])
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "mem_total_gb": mem, "python": platform.python_version(),
        "platform": platform.platform(), "workdir": str(workdir), "fstype": fstype,
        "disk_free_gb": round(gb(shutil.disk_usage(workdir).free), 1),
        "fsync": os.environ.get("MODELBUILD_FSYNC", "1") != "0",
        "modelbuild": _version(modelbuild_cmd() + ["--version"]),
        "skopeo": _version(["skopeo", "--version"]),
        "registry": _version([REGISTRY_BIN, "--version"]),
    }


# -- the model --------------------------------------------------------------------------
def write_model(model_dir: Path, files: int, total: int, seed: int = 0) -> list[Path]:
    """*files* safetensors files of about total/files bytes each: a valid header declaring
    one U8 tensor (tests/support.py's safetensors_blob) around random bytes, written in
    64 MiB pieces so memory stays small."""
    import numpy as np

    rng = np.random.default_rng(seed)
    model_dir.mkdir(parents=True)
    paths = []
    aged = time.time_ns() - AGE_S * 10**9
    for i in range(files):
        size = total // files
        name = f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        # the header's length depends on the payload's digits: settle on a payload so the
        # file is exactly *size* bytes
        payload = size - 8
        for _ in range(3):
            header = json.dumps({f"layers.{i}.weight": {"dtype": "U8", "shape": [payload],
                                                          "data_offsets": [0, payload]}},
                                separators=(",", ":")).encode()
            header += b" " * (-len(header) % 8)
            payload = size - 8 - len(header)
        path = model_dir / name
        with open(path, "wb") as fh:
            fh.write(len(header).to_bytes(8, "little") + header)
            left = payload
            while left:
                n = min(left, 64 * MiB)
                words = rng.bit_generator.random_raw((n + 7) // 8, output=True)
                fh.write(memoryview(words).cast("B")[:n])
                left -= n
        os.utime(path, ns=(aged, aged))
        paths.append(path)
    return paths


# -- the registry -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RegistryServer:
    """Debian's docker-registry on 127.0.0.1, a free port, storage under *root*."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.storage = root / "storage"
        self.storage.mkdir(parents=True)
        self.host = f"127.0.0.1:{free_port()}"
        config = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": self.host, "secret": "modelbuild-bench-secret"},
        }
        (root / "config.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = open(root / "registry.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(root / "config.yml")], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1):
                    return
            except (urllib.error.URLError, OSError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"docker-registry did not start: {(root / 'registry.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def cpu_s(self) -> float:
        """The registry's user + system CPU seconds so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def manifest_digest(self, repo: str, tag: str) -> str | None:
        req = urllib.request.Request(f"http://{self.host}/v2/{repo}/manifests/{tag}", method="HEAD", headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.headers.get("Docker-Content-Digest")
        except urllib.error.HTTPError:
            return None

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


# -- running things ---------------------------------------------------------------------
def modelbuild_cmd() -> list[str]:
    script = Path(sys.executable).parent / "modelbuild"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("modelbuild")
    return [found] if found else [sys.executable, "-m", "modelbuild"]


def cli_help(command: str) -> str | None:
    proc = subprocess.run(modelbuild_cmd() + [command, "--help"], capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else None


def measure(cmd: list[str], env: dict[str, str], logs: Path, label: str,
            registry: RegistryServer | None = None) -> dict[str, Any]:
    """One child process: wall time from spawn to exit, its peak RSS and CPU (os.wait4),
    and the registry's CPU over the same time."""
    logs.mkdir(exist_ok=True)
    out_path, err_path = logs / f"{label}.stdout", logs / f"{label}.stderr"
    os.sync()  # no dirty pages from earlier steps flushed on this one's time
    reg0 = registry.cpu_s() if registry else 0.0
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    reg_cpu = (registry.cpu_s() - reg0) if registry else 0.0
    load = os.getloadavg()[0]
    if proc.returncode != 0:
        raise RuntimeError(f"{label}: `{' '.join(cmd)}` exited {proc.returncode}\n"
                           f"--- stderr (tail) ---\n{err_path.read_text(errors='replace')[-4000:]}")
    return {"label": label, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss * 1024 / 1e6, "user_s": usage.ru_utime,
            "sys_s": usage.ru_stime, "registry_cpu_s": reg_cpu, "load1": load, "stdout": out_path.read_text(errors="replace")}


def sha256_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    buf = bytearray(MiB)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return "sha256:" + h.hexdigest()


def check_layout(rep: Report, label: str, root: Path, manifest: dict[str, Any], digest: str, full: bool) -> None:
    """The pulled store/layout has the manifest and every blob, each with its digest
    (*full*) or at least its size."""
    blobs = root / "blobs" / "sha256"
    index = json.loads((root / "index.json").read_text())
    rep.check(f"{label}: manifest {digest[:19]} in index.json", any(m["digest"] == digest for m in index["manifests"]),
              str([m["digest"] for m in index["manifests"]]))
    for d in [manifest["config"], *manifest["layers"]]:
        path = blobs / d["digest"].split(":", 1)[1]
        if not path.exists():
            rep.check(f"{label}: blob {d['digest'][:19]} present", False, "missing")
            continue
        rep.check(f"{label}: blob {d['digest'][:19]} size", path.stat().st_size == d["size"],
                  f"{path.stat().st_size} != {d['size']}")
        if full:
            rep.check(f"{label}: blob {d['digest'][:19]} digest", sha256_file(path) == d["digest"], "digest differs")


def check_dir(rep: Report, label: str, out: Path, model_dir: Path, full: bool) -> None:
    for src in sorted(model_dir.iterdir()):
        got = out / src.name
        ok = got.exists() and got.stat().st_size == src.stat().st_size
        if ok and full:
            ok = sha256_file(got) == sha256_file(src)
        rep.check(f"{label}: {src.name}", ok, "missing or different")


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [r["wall_s"] for r in runs]
    med = statistics.median(walls)
    mid = min(runs, key=lambda r: abs(r["wall_s"] - med))
    return {"best_s": min(walls), "median_s": med, "walls_s": walls, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "user_s": statistics.median(r["user_s"] for r in runs), "sys_s": statistics.median(r["sys_s"] for r in runs),
            "registry_cpu_s": statistics.median(r["registry_cpu_s"] for r in runs), "typical": mid["label"]}


# -- the benchmark ----------------------------------------------------------------------
def benchmark(args: argparse.Namespace, workdir: Path, rep: Report) -> dict[str, Any]:
    for tool, path in (("skopeo", shutil.which("skopeo")), ("docker-registry", REGISTRY_BIN)):
        if not path or not os.path.exists(path):
            raise FileNotFoundError(f"{tool} is not installed (apt-get install -y {tool})")
    info = machine_info(workdir)
    rep.line(f"machine: {info['nproc']} CPUs, {info['cpu']}, {info['mem_total_gb']} GB RAM; {info['platform']}; "
             f"Python {info['python']}; workdir {workdir} on {info['fstype']} ({info['disk_free_gb']} GB free); "
             f"MODELBUILD_FSYNC {'on' if info['fsync'] else 'off'}")
    rep.line(f"versions: {info['modelbuild']}; {info['skopeo']}; {info['registry']}")
    rep.line("load average at start: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
             + " (other work on the machine slows both tools; compare ratios within one run)")
    total = int(args.size_gb * GiB)
    need = 5 * total + GiB
    if shutil.disk_usage(workdir).free < need:
        raise RuntimeError(f"need about {gb(need):.1f} GB free in {workdir}")

    if cli_help("push") is None:
        raise RuntimeError("this modelbuild has no `push` command")
    jobs = ["-j", str(args.jobs)]
    rep.line(f"modelbuild: -j {args.jobs}")

    model_dir, layout, home = workdir / "model", workdir / "layout", workdir / "home"
    (workdir / "Modelfile").write_text(MODELFILE)
    t0 = time.perf_counter()
    # in a child process: numpy's memory must not count in this process's peak RSS, which
    # every child inherits as its starting ru_maxrss (Linux keeps the exec'ing process's
    # high-water mark), so this process stays small
    subprocess.run([sys.executable, __file__, "--write-model", str(model_dir), "--files", str(args.files),
                    "--size-gb", str(args.size_gb)], check=True)
    paths = sorted(model_dir.iterdir())
    size = sum(p.stat().st_size for p in paths)
    rep.line(f"model: {len(paths)} files, {gb(size):.2f} GB ({size} bytes) written in {time.perf_counter() - t0:.1f} s")

    env = dict(os.environ, MODELBUILD_HOME=str(home))
    env.pop("MODELBUILD_DEBUG", None)
    logs = workdir / "logs"
    rounds = args.repeat
    t0 = time.perf_counter()
    built = measure(modelbuild_cmd() + ["build", "-f", str(workdir / "Modelfile"), "-t", "transfer-bench:1",
                                        "--output", f"type=oci,dest={layout}", "--progress", "plain", "--json"],
                    env, logs, "build")
    result = json.loads(built["stdout"])
    digest = result["digest"]
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    layout_tag = entry["annotations"]["org.opencontainers.image.ref.name"]
    manifest = json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes())
    rep.line(f"build: {digest} in {time.perf_counter() - t0:.1f} s ({len(manifest['layers'])} layers, "
             f"{gb(sum(d['size'] for d in manifest['layers'])):.2f} GB); OCI layout {layout}:{layout_tag}")

    def show(i: int, key: str, r: dict[str, Any]) -> None:
        rep.line(f"  round {i + 1} {key:9} {r['wall_s']:6.2f} s  {gb(size) / r['wall_s']:.2f} GB/s  "
                 f"RSS {r['peak_rss_mb']:5.0f} MB  user {r['user_s']:.2f} s sys {r['sys_s']:.2f} s  "
                 f"registry CPU {r['registry_cpu_s']:.2f} s  load {r['load1']:.1f}")

    runs: dict[str, list[dict[str, Any]]] = {"mb_push": [], "sk_push": [], "mb_pull": [], "sk_pull": [], "mb_pull_o": []}
    for i in range(rounds):
        registry = RegistryServer(workdir / f"registry-{i}")
        try:
            # push: each tool to its own fresh repository; who goes first alternates
            mb_ref = f"{registry.host}/bench/modelbuild-{i}:1"
            sk_ref = f"{registry.host}/bench/skopeo-{i}:1"
            pushes = [
                ("mb_push", modelbuild_cmd() + ["push", "transfer-bench:1", mb_ref, "--plain-http", *jobs], mb_ref),
                ("sk_push", ["skopeo", "--insecure-policy", "copy", "--preserve-digests", "--dest-tls-verify=false",
                             f"oci:{layout}:{layout_tag}", f"docker://{sk_ref}"], sk_ref),
            ]
            for key, cmd, ref in pushes if i % 2 == 0 else pushes[::-1]:
                r = measure(cmd, env, logs, f"{key}-{i}", registry)
                runs[key].append(r)
                got = registry.manifest_digest(ref.split("/", 1)[1].rsplit(":", 1)[0], "1")
                rep.check(f"round {i + 1}: {key} manifest digest", got == digest, f"{got} != {digest}")
                show(i, key, r)

            # pull: all from the repository modelbuild pushed (the same bytes as skopeo's);
            # each into a fresh place, removed afterwards; the order rotates
            full = i == 0  # hash every pulled byte in the first round, sizes after that
            mb_home, o_home = workdir / f"pull-home-{i}", workdir / f"pull-o-home-{i}"
            sk_dir, out = workdir / f"skopeo-pull-{i}", workdir / f"pull-out-{i}"
            pulls = [
                ("mb_pull", modelbuild_cmd() + ["pull", mb_ref, "--plain-http", *jobs], mb_home),
                ("sk_pull", ["skopeo", "--insecure-policy", "copy", "--preserve-digests", "--src-tls-verify=false",
                             f"docker://{mb_ref}", f"oci:{sk_dir}:pulled"], mb_home),
                ("mb_pull_o", modelbuild_cmd() + ["pull", mb_ref, "-o", str(out), "--plain-http", *jobs], o_home),
            ]
            for key, cmd, key_home in pulls[i % 3:] + pulls[:i % 3]:
                r = measure(cmd, dict(env, MODELBUILD_HOME=str(key_home)), logs, f"{key}-{i}", registry)
                runs[key].append(r)
                if key == "mb_pull":
                    check_layout(rep, f"round {i + 1} {key}", mb_home / "store", manifest, digest, full)
                elif key == "sk_pull":
                    check_layout(rep, f"round {i + 1} {key}", sk_dir, manifest, digest, full)
                else:
                    check_dir(rep, f"round {i + 1} {key}", out, model_dir, full)
                show(i, key, r)
                for gone in (mb_home, o_home, sk_dir, out):
                    shutil.rmtree(gone, ignore_errors=True)
        finally:
            registry.stop()

    s = {k: summary(v) for k, v in runs.items() if v}
    names = {"mb_push": "modelbuild push", "sk_push": "skopeo copy oci: → docker://",
             "mb_pull": "modelbuild pull (to a fresh store)", "sk_pull": "skopeo copy docker:// → oci:",
             "mb_pull_o": "modelbuild pull -o DIR (files)"}
    rep.line()
    rep.line(f"{gb(size):.2f} GB, {rounds} rounds (best / median wall time from spawn to exit):")
    rep.line(f"  {'':38} {'best':>7} {'median':>7} {'GB/s':>6} {'peak RSS':>9} {'user':>6} {'sys':>6} {'registry CPU':>12}")
    for k, v in s.items():
        rep.line(f"  {names[k]:38} {v['best_s']:6.2f}s {v['median_s']:6.2f}s {gb(size) / v['median_s']:6.2f} "
                 f"{v['peak_rss_mb']:6.0f} MB {v['user_s']:5.2f}s {v['sys_s']:5.2f}s {v['registry_cpu_s']:11.2f}s")
    ratios = {
        "push": (s["mb_push"]["best_s"] / s["sk_push"]["best_s"], s["mb_push"]["median_s"] / s["sk_push"]["median_s"]),
        "pull": (s["mb_pull"]["best_s"] / s["sk_pull"]["best_s"], s["mb_pull"]["median_s"] / s["sk_pull"]["median_s"]),
    }
    ratios["pull -o"] = (s["mb_pull_o"]["best_s"] / s["sk_pull"]["best_s"],
                         s["mb_pull_o"]["median_s"] / s["sk_pull"]["median_s"])
    for k, (best, med) in ratios.items():
        rep.line(f"  ratio modelbuild/skopeo, {k}: {best:.2f}x best, {med:.2f}x median")
    peak = max(v["peak_rss_mb"] for k, v in s.items() if k.startswith("mb_"))
    import resource

    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    rep.line(f"  (a child's peak RSS starts at this process's own, {floor:.0f} MB: Linux carries the high-water "
             "mark across exec)")
    targets = [
        (f"push <= {TARGET_RATIO}x skopeo (median)", ratios["push"][1] <= TARGET_RATIO, f"{ratios['push'][1]:.2f}x"),
        (f"pull <= {TARGET_RATIO}x skopeo (median)", ratios["pull"][1] <= TARGET_RATIO, f"{ratios['pull'][1]:.2f}x"),
        (f"modelbuild peak RSS <= {TARGET_RSS_MB:.0f} MB", peak <= TARGET_RSS_MB, f"{peak:.0f} MB"),
    ]
    rep.line("verdict:")
    for t, ok, v in targets:
        rep.line(f"  {'PASS' if ok else 'FAIL'}  {t}: {v}")
    return {"machine": info, "bytes": size, "digest": digest, "jobs": args.jobs,
            "runs": {k: [{kk: vv for kk, vv in r.items() if kk != "stdout"} for r in v] for k, v in runs.items()},
            "summary": s, "ratios": {k: {"best": b, "median": m} for k, (b, m) in ratios.items()},
            "targets": [{"target": t, "ok": ok, "value": v} for t, ok, v in targets], "checks": rep.checks}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=2.0, help="model size in GiB (default 2)")
    ap.add_argument("--files", type=int, default=4, help="number of safetensors files (default 4)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of each measurement (default 3)")
    ap.add_argument("--jobs", type=int, default=4, help="modelbuild's -j: blobs at once (default 4, the CLI's)")
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
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modelbuild-transfer-"))
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
    if any(not c["ok"] for c in results["checks"]):
        return 2
    return 0 if all(t["ok"] for t in results["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
