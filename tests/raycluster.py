"""A real Ray cluster on 127.0.0.1 for the tests: a head started with ``ray start --head`` and
nodes joined with ``ray start --address``, each its own raylet with one CPU.

Every process a node starts (``ray start`` daemonizes: GCS, raylet, dashboard, agents, the
workers the raylet forks later) inherits the environment, so each node's processes carry a
token of their own in ``MODELBUILD_TEST_RAY_NODE``: :meth:`RayCluster.pids` finds them by it,
:meth:`RayCluster.kill_node` kills one node's processes by PID, and :meth:`RayCluster.stop`
kills every process the cluster started, whatever state it is in (``ray stop`` would stop
every Ray process on the machine, not just these).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOKEN_VAR = "MODELBUILD_TEST_RAY_NODE"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ancestors() -> set[int]:
    found, pid = set(), os.getpid()
    while pid > 1:
        found.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found


def _ray_cli() -> str:
    found = Path(sys.executable).with_name("ray")
    return str(found) if found.exists() else (shutil.which("ray") or "ray")


class RayCluster:
    def __init__(self, *, dashboard: bool = True, object_store_mb: int = 80) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths are bounded
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.client_port = free_port()  # Ray Client: what a driver outside the cluster connects to
        self.dashboard = dashboard
        self.object_store = str(object_store_mb * 1_000_000)
        self.tokens: list[str] = []  # one per node, the head's first

    def _start(self, args: list[str]) -> str:
        token = secrets.token_hex(8)
        env = {**os.environ, TOKEN_VAR: token, "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        self.tokens.append(token)
        proc = subprocess.run([_ray_cli(), "start", *args, "--num-cpus=1", "--node-ip-address=127.0.0.1",
                               f"--object-store-memory={self.object_store}", "--disable-usage-stats"],
                              env=env, capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return token

    def start_head(self) -> RayCluster:
        args = ["--head", f"--port={self.port}", f"--temp-dir={self.temp}", f"--ray-client-server-port={self.client_port}"]
        if self.dashboard:
            self.dashboard_port = free_port()  # also Ray's job submission API (`ray job submit`)
            args += ["--include-dashboard=true", f"--dashboard-port={self.dashboard_port}"]
        else:
            args += ["--include-dashboard=false"]
        self._start(args)
        return self

    def add_node(self) -> str:
        return self._start([f"--address={self.address}", f"--node-manager-port={free_port()}"])

    def pids(self, token: str | None = None) -> list[int]:
        """The live processes of one node (by its token), or of the whole cluster.

        Ray's agents and workers retitle themselves (``ray::IDLE``), which blanks what
        /proc shows of their command line and environment: they are found as descendants of
        the processes that carry the token, and, once orphaned, by the log files they hold
        open under the cluster's temp directory."""
        wanted = {token} if token else set(self.tokens)
        spared = _ancestors()  # this process (a test's own Ray driver holds session files) and its parents
        parents: dict[int, int] = {}
        found: set[int] = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid in spared:
                continue
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if any(var.startswith(TOKEN_VAR.encode() + b"=") and var.split(b"=", 1)[1].decode() in wanted
                   for var in environ):
                found.add(pid)
            elif token is None and self._holds_temp_files(pid):
                found.add(pid)
        grew = True
        while grew:  # descendants: workers and agents the raylet forked
            more = {pid for pid, parent in parents.items() if parent in found and pid not in found}
            found |= more
            grew = bool(more)
        return sorted(found)

    def _holds_temp_files(self, pid: int) -> bool:
        prefix = str(self.temp) + "/"
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                        return True
                except OSError:
                    continue
        except OSError:
            return False
        return False

    def kill_node(self, token: str) -> list[int]:
        """SIGKILL every process of one node: its raylet, agents and workers."""
        pids = self.pids(token)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def stop(self) -> None:
        """Kill every process the cluster started and wait until none is left."""
        deadline = time.monotonic() + 30
        while True:
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray processes still alive: {pids}")
            time.sleep(0.2)
        shutil.rmtree(self.temp, ignore_errors=True)
