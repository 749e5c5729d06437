"""Helpers for tests that start real engine servers (``from engines import …``).

They start a :class:`~modelbuild.api.Launch` as ``modelbuild run`` does: its ``files`` and
``links`` written into a fresh work directory, ``argv`` started there in a session of its
own (so one signal reaches the server and everything it spawned), its output in a log file;
then poll its health path, and stop it with SIGTERM to the process group, SIGKILL after a
timeout. Every wait is bounded. Process trees are walked through ``/proc`` (psutil is not
a dependency).

Building and materialising a bundled example, and the :class:`~modelbuild.api.EngineModel`
for it, are here too: every engine test needs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from support import REPO

LOG = "engine.log"


class EngineProcess(subprocess.Popen):
    """A started engine: a :class:`subprocess.Popen` that knows its log file."""

    log_path: Path
    ready_seconds: float = 0.0  # how long it took to answer its health path (``serving``)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def write_workdir(launch: Any, workdir: Path) -> Path:
    """*launch*'s files and links in *workdir*, as the core writes them."""
    workdir.mkdir(parents=True, exist_ok=True)
    for rel, text in launch.files.items():
        path = workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for rel, target in launch.links.items():
        path = workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
    return workdir


def start(launch: Any, workdir: Path, *, environ: Mapping[str, str] | None = None) -> EngineProcess:
    """Start *launch* in *workdir* (created), in a new session, output to ``workdir/engine.log``.
    *environ* is the environment it starts from (``os.environ`` by default), ``launch.env``
    laid over it as the core does."""
    write_workdir(launch, workdir)
    log_path = workdir / LOG
    with open(log_path, "wb") as log:  # the child holds its own descriptor
        log.write(f"$ {shlex.join(launch.argv)}\n".encode())
        log.flush()
        base = os.environ if environ is None else environ
        proc = EngineProcess(list(launch.argv), cwd=workdir, env={**base, **launch.env}, stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = log_path
    return proc


def wait_healthy(url: str, timeout: float, proc: EngineProcess) -> float:
    """Poll *url* until it answers 200; the seconds it took. Fails the test, with the end
    of the log, if the process exits first or *timeout* passes."""
    began = time.monotonic()
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode} before {url} answered:\n{proc.log_tail()}",
                        pytrace=False)
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - began
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() - began > timeout:
            pytest.fail(f"{url} did not answer 200 within {timeout}s:\n{proc.log_tail()}", pytrace=False)
        time.sleep(0.1)


def stop(proc: subprocess.Popen, timeout: float = 15) -> int:
    """SIGTERM to the process group, SIGKILL after *timeout* seconds; the exit status.
    Members of the group still alive once the leader has exited are killed too."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
    deadline = time.monotonic() + timeout
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


@contextlib.contextmanager
def serving(launch: Any, workdir: Path, *, host: str = "127.0.0.1", timeout: float = 120) -> Iterator[EngineProcess]:
    """A started, healthy engine, stopped on the way out whatever happens."""
    proc = start(launch, workdir)
    try:
        proc.ready_seconds = wait_healthy(f"http://{host}:{launch.port}{launch.health}", timeout, proc)
        yield proc
    finally:
        stop(proc)


# -- the process tree, from /proc -----------------------------------------------------------------

def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of *pid*, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[2])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(pid: int) -> set[int]:
    """Every process below *pid* (children, their children…), not *pid* itself."""
    children: dict[int, list[int]] = {}
    for other in _all_pids():
        st = _stat(other)
        if st is not None:
            children.setdefault(st[1], []).append(other)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def group_members(pgid: int) -> set[int]:
    """Live (not zombie) processes of process group *pgid*."""
    return {p for p in _all_pids() if (st := _stat(p)) is not None and st[2] == pgid and st[0] != "Z"}


def alive(pids: set[int]) -> set[int]:
    """Those of *pids* still running (zombies waiting for a parent count as gone)."""
    return {p for p in pids if (st := _stat(p)) is not None and st[0] != "Z"}


# -- HTTP -----------------------------------------------------------------------------------------

def http_json(url: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
    """GET *url* (POST *body* as JSON when given): (status, decoded JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


# -- a bundled example, built and materialised --------------------------------------------------

BUILD_WITH = re.compile(r"^\s*#.*\bBuild (?:it )?with:\s+modelbuild\s+(.+?)\s*$")


def modelbuild(home: Path, *args: str, cwd: Path = REPO, timeout: float = 600) -> str:
    """``python -m modelbuild ARGS`` with MODELBUILD_HOME *home*: its standard output, or a
    failed test with its standard error."""
    env = {**os.environ, "MODELBUILD_HOME": str(home)}
    env.pop("MODELBUILD_DEBUG", None)
    run = subprocess.run([sys.executable, "-m", "modelbuild", *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout)
    if run.returncode != 0:
        pytest.fail(f"modelbuild {shlex.join(args)}: exit {run.returncode}\n{run.stderr}", pytrace=False)
    return run.stdout


def build_example(home: Path, name: str) -> dict[str, Any]:
    """Build ``Modelfile.examples/NAME`` with the command its ``# Build with:`` line gives;
    the build's JSON result."""
    text = (REPO / "Modelfile.examples" / name / "Modelfile").read_text()
    (args,) = [shlex.split(m.group(1)) for line in text.splitlines() if (m := BUILD_WITH.match(line))]
    return json.loads(modelbuild(home, *args, "--json", "--progress", "quiet"))


def materialise(home: Path, tag: str, dest: Path, *, read_only: bool = True) -> Path:
    """``modelbuild pull TAG -o DEST``; read-only afterwards by default, as ``run`` leaves its
    files (an engine must not write next to its model)."""
    modelbuild(home, "pull", tag, "-o", str(dest), "--progress", "quiet")
    if read_only:
        for path in sorted(dest.rglob("*"), reverse=True):
            path.chmod(0o555 if path.is_dir() else 0o444)
        dest.chmod(0o555)
    return dest


def engine_model(result: Mapping[str, Any], path: Path, **changes: Any):
    """The :class:`~modelbuild.api.EngineModel` of a built single-platform artifact (*result*:
    the build's JSON) materialised at *path*, as ``run`` makes it; *changes* override fields."""
    from modelbuild.api import EngineModel

    layers = result["layers"]
    files = tuple(layer["annotations"]["org.cncf.model.filepath"] for layer in layers)
    weights = tuple(layer["annotations"]["org.cncf.model.filepath"] for layer in layers
                    if ".weight." in layer["mediaType"] and ".weight.config." not in layer["mediaType"])
    config = result["config"]
    fields: dict[str, Any] = dict(
        name=config["descriptor"]["name"], path=path, files=files, weights=weights,
        format=config["config"].get("format", ""), quantization=config["config"].get("quantization", ""),
        precision=config["config"].get("precision", ""), reference=result["tags"][0] if result.get("tags") else "",
        digest=result["digest"], config=config)
    fields.update(changes)
    return EngineModel(**fields)
