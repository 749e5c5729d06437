"""Starting an engine, waiting for it to be ready, and stopping it with nothing left behind
(docs/spec/runtime.md §5.2, §5.3).

Written once for every engine: a plugin only describes its command (:class:`~modelbuild.api.Launch`).

* The port is checked before anything starts (a clear error instead of an engine's
  ``address already in use`` half a minute into loading).
* The engine runs in a session of its own (``setsid``), with Linux's parent-death signal
  set, so a ``kill -9`` of modelbuild still ends it; its output is streamed, each line
  prefixed with the engine's name, and the last lines are kept for the error when it exits
  before it is ready.
* Readiness is the engine's health path answering 200; until then the process is watched:
  an early exit is an error showing its last log lines.
* SIGINT and SIGTERM stop it: SIGTERM to its whole process group, SIGKILL after a grace
  period, then any descendant that left the group (found by walking ``/proc`` while it
  ran) is killed too. The work directory is removed.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from modelbuild.errors import BuildError, UsageError

GRACE_SECONDS = 10.0
LOG_TAIL = 15
POLL_SECONDS = 0.25


@dataclass
class Outcome:
    """How a served engine ended: ``requested`` when a signal asked it to stop."""

    returncode: int | None
    requested: bool


def check_port(host: str, port: int) -> None:
    """A usage error now if *port* cannot be bound on *host* (in use, or privileged)."""
    if not 0 < port < 65536:
        raise UsageError(f"--port {port}: a port is between 1 and 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is in use", hint="stop what listens there, or pick another with --port") from None
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}", hint="pick another --host or --port") from None


def prepare_workdir(root: Path, files: dict[str, str], links: dict[str, str]) -> Path:
    """A fresh directory holding the engine's own files and links (never inside the model's
    read-only directory); names are checked like an artifact's (no ``..``, not absolute)."""
    from modelbuild.artifact_paths import path_problem
    from modelbuild.errors import PluginError

    for rel in [*files, *links]:
        problem = path_problem(rel)
        if problem:
            raise PluginError(f"the engine asked for a work file {rel!r}, which {problem}")
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="engine-", dir=root))
    for rel, text in files.items():
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    for rel, dest in links.items():
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(dest, target)
    return work


def _descendants(pid: int) -> dict[int, str]:
    """Every process below *pid* with its start time (field 22 of ``/proc/PID/stat``, so a
    reused pid is told apart), from ``/proc`` (empty where there is none)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    started: dict[int, str] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return set()
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 19:
            children[int(fields[1])].append(int(entry))
            started[int(entry)] = fields[19]
    out: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out[child] = started[child]
                todo.append(child)
    return out


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().decode(errors="replace").rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return fields[19] if len(fields) > 19 else None


def _set_parent_death_signal() -> None:  # runs in the child, before exec
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Engine:
    """One running engine process; see the module docstring."""

    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str], label: str,
                 log: Callable[[str], None], unset: tuple[str, ...] = ()) -> None:
        self.label, self.log = label, log
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
        self.seen: dict[int, str] = {}  # pid → start time of every process seen below it
        try:
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env={**{k: v for k, v in os.environ.items() if k not in unset}, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_set_parent_death_signal if sys.platform.startswith("linux") else None)
        except OSError as exc:
            raise UsageError(f"cannot start {argv[0]}: {exc.strerror}", hint="is the engine installed?") from None
        self._reader = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _pump(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.tail.append(line)
            self.log(f"{self.label}| {line}")

    def watch(self) -> None:
        """Remember the processes below the engine now, to kill any that escape its group."""
        self.seen.update(_descendants(self.proc.pid))

    def wait_ready(self, url: str, timeout: float, stopping: threading.Event) -> bool:
        """Poll *url* until it answers 200; False when asked to stop first. An exit or the
        timeout is a BuildError with the engine's last lines."""
        deadline = time.monotonic() + timeout
        while not stopping.is_set():
            if self.proc.poll() is not None:
                self._reader.join(timeout=2)
                raise BuildError(f"{self.label} exited with status {self.proc.returncode} before it was ready",
                                 hint="its log is above")
            if _answers(url):
                return True
            if time.monotonic() > deadline:
                raise BuildError(f"{self.label} was not ready after {timeout:g} s ({url} did not answer 200)",
                                 hint="its log is above; raise --ready-timeout for a large model")
            self.watch()
            stopping.wait(POLL_SECONDS)
        return False

    def stop(self, grace: float = GRACE_SECONDS) -> int | None:
        """SIGTERM to the group, SIGKILL after *grace*, then every straggler seen below it."""
        self.watch()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything of its group still alive
        for pid, started in self.seen.items():
            if _start_time(pid) == started:  # still the process seen, not a reused pid
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        self._reader.join(timeout=2)
        return self.proc.returncode


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback URL we built
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextlib.contextmanager
def stop_requested() -> Any:
    """An Event set by SIGINT or SIGTERM while the block runs; the old handlers come back after."""
    event = threading.Event()
    old: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield event
        return

    def handler(signum: int, _frame: Any) -> None:
        event.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.signal(sig, handler)
    try:
        yield event
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def serve(engine: Engine, url: str, timeout: float, on_ready: Callable[[], None],
          grace: float = GRACE_SECONDS) -> Outcome:
    """Wait for the engine to be ready, call *on_ready*, then wait for it to exit or for a
    signal; stop it either way."""
    with stop_requested() as stopping:
        try:
            if engine.wait_ready(url, timeout, stopping):
                on_ready()
                while not stopping.is_set() and engine.proc.poll() is None:
                    engine.watch()
                    stopping.wait(1.0)
        finally:
            requested = stopping.is_set()
            code = engine.stop(grace)
    return Outcome(code, requested)


__all__ = ["Engine", "Outcome", "check_port", "prepare_workdir", "serve"]
