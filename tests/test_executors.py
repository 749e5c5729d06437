"""Executors without a cluster: ``--executor`` parsing, the built-in ``local`` executor, a
third-party executor plugin that runs a real build's items, the lazy opening, and the
data-plane and code checks every remote worker makes before it runs an item
(:class:`modelbuild.api.Work`). The Ray executor on a real cluster: tests/cluster/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from modelbuild.api import BuildError, UsageError, hookimpl
from modelbuild.dataplane import Marker, Work
from modelbuild.executors import parse_executor
from modelbuild.testing import build_with
from support import cmdline, descendants

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "Modelfile.examples" / "convert-quantize"


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """The convert-quantize example, with its tiny-llama model beside it."""
    shutil.copytree(REPO / "Modelfile.examples" / "tiny-llama", tmp_path / "tiny-llama")
    shutil.copytree(EXAMPLE, tmp_path / "convert-quantize")
    return tmp_path / "convert-quantize" / "Modelfile"


# -- --executor ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, name, address", [
    (None, "local", None), ("", "local", None), ("ray", "ray", None), ("RAY", "ray", None),
    ("ray://10.0.0.5:10001", "ray", "10.0.0.5:10001"), ("local", "local", None),
])
def test_parse_executor(text: str | None, name: str, address: str | None) -> None:
    choice = parse_executor(text)
    assert (choice.name, choice.address) == (name, address)


@pytest.mark.parametrize("text", ["ray://", "://host", "ray :// x"])
def test_parse_executor_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="NAME or NAME://ADDRESS"):
        parse_executor(text)


def test_unknown_executor_is_a_usage_error_with_a_suggestion(project: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "modelbuild", "build", "-f", str(project), "--executor", "rya",
                           "--progress", "quiet"], env={**os.environ, "MODELBUILD_HOME": str(tmp_path / "h")},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "modelbuild: error: unknown executor 'rya' (did you mean ray?)"


# -- a third-party executor: the API, end to end ----------------------------------------------


class CountingExecutor:
    """Runs items in this process, one at a time, through ``setup.work(fn).run(item)`` as a
    remote executor's workers do; counts what it was given."""

    name = "counting"
    summary = "test executor"

    def __init__(self) -> None:
        self.opened: list[Any] = []
        self.items = 0
        self.maps: list[int | None] = []
        self.closed = 0
        self.prepared: list[tuple[str, ...]] = []
        self.calls: list[tuple[str, list[Any]]] = []  # (function, items) per map

    def open(self, setup: Any) -> Any:
        self.opened.append(setup)
        return self

    slots = 3
    nodes = 1

    def map(self, fn: Any, items: Any, on_done: Any, *, jobs: int | None = None, preload: Any = ()) -> None:
        setup = self.opened[-1]
        assert Path(setup.marker.path).is_file()  # the data plane's marker exists while items run
        work = setup.work(fn)
        self.maps.append(jobs)
        self.calls.append((fn.__name__, list(items)))
        for item in items:
            result = work.run(item, "node-a")
            self.items += 1
            on_done(item, result)

    def prepare(self, preload: Any) -> None:
        self.prepared.append(tuple(preload))

    def close(self) -> None:
        self.closed += 1

    def plugin(self) -> object:
        """A plugin that registers this executor."""
        counting = self

        class Plugin:
            @hookimpl
            def modelbuild_register_executors(self, registry: Any) -> None:
                registry.add(counting)

        return Plugin()


def test_a_plugin_executor_runs_a_builds_items_with_the_local_digest(project: Path, tmp_path: Path) -> None:
    counting = CountingExecutor()
    Plugin = counting.plugin

    local = build_with(project, tmp_path / "local", executor="local")
    result = build_with(project, tmp_path / "counting", Plugin(), executor="counting")
    assert result.digest == local.digest
    assert len(counting.opened) == 1 and counting.closed == 1  # opened once, for both transforms
    setup = counting.opened[0]
    assert setup.address is None and setup.store == tmp_path / "counting" / "store"
    assert setup.context == (tmp_path / "tiny-llama" / "model").resolve()
    assert counting.items >= 10 and counting.maps  # the quantize's tensor items came through map
    assert any("numpy" in modules for modules in counting.prepared)  # told what the workers import, first
    assert all(j is not None and 1 <= j <= counting.slots for j in counting.maps)
    assert not Path(setup.marker.path).exists()  # removed after the build
    # a rebuild runs nothing, so it never opens the executor
    again = build_with(project, tmp_path / "counting", Plugin(), executor="counting")
    assert again.digest == local.digest and len(counting.opened) == 1


@pytest.fixture
def nodes_hash_every_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test executors open at once: whether the first large file would be asked for
    while one still connects (and so hash on the driver) is a race. Tests of the nodes'
    side of hashing take that out; the driver's side is tested on its own, below."""
    from modelbuild.executors import BuildExecutor

    monkeypatch.setattr(BuildExecutor, "hash_here_while_connecting", lambda self: False)


def test_a_remote_executor_hashes_each_large_file_as_an_item(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            nodes_hash_every_file: None) -> None:
    """With an executor other than ``local``, a file of REMOTE_HASH_MIN or more is hashed (and
    a raw layer's bytes copied into the store) by an item of its own, on a node; a smaller
    one here. Same digest and same store as a local build; a touched file is only hashed."""
    from modelbuild.ops import files

    monkeypatch.setattr(files, "REMOTE_HASH_MIN", 1 << 20)
    data = tmp_path / "ctx" / "data"
    data.mkdir(parents=True)
    (data / "a.bin").write_bytes(os.urandom(3 << 20))
    (data / "b.bin").write_bytes(os.urandom(2 << 20))
    (data / "small.txt").write_text("small\n")
    past = 1_700_000_000
    for f in data.iterdir():
        os.utime(f, (past, past))
    modelfile = tmp_path / "ctx" / "Modelfile"
    modelfile.write_text("FROM ./data\nNAME hashes\nDATASET a.bin b.bin\nDOC small.txt\n")
    counting = CountingExecutor()
    Plugin = counting.plugin

    local = build_with(modelfile, tmp_path / "local", executor="local")
    result = build_with(modelfile, tmp_path / "counting", Plugin(), executor="counting")
    assert result.digest == local.digest
    hashed = sorted((item.path, item.store) for fn, items in counting.calls if fn == "hash_on_node" for item in items)
    store = str(tmp_path / "counting" / "store")
    assert hashed == [(str(data.resolve() / "a.bin"), store), (str(data.resolve() / "b.bin"), store)]
    blobs = sorted(p.name for p in (tmp_path / "counting" / "store" / "blobs" / "sha256").iterdir())
    assert blobs == sorted(p.name for p in (tmp_path / "local" / "store" / "blobs" / "sha256").iterdir())
    assert result.stats["bytes_written"] == local.stats["bytes_written"] >= 5 << 20
    # touched, same content: hashed again on a node, not copied (the store has the blob)
    os.utime(data / "a.bin", (past + 60, past + 60))
    counting.calls.clear()
    again = build_with(modelfile, tmp_path / "counting", Plugin(), executor="counting")
    assert again.digest == local.digest
    assert [(item.path, item.store) for _, items in counting.calls for item in items] == [
        (str(data.resolve() / "a.bin"), None)]


class SlowNodes(CountingExecutor):
    """Nodes that take a while per hash: counts how many hashes were in flight at once."""

    name = "slow"

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.active = self.most = 0

    def map(self, fn: Any, items: Any, on_done: Any, *, jobs: int | None = None, preload: Any = ()) -> None:
        import time

        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        time.sleep(0.3)
        try:
            super().map(fn, items, on_done, jobs=jobs, preload=preload)
        finally:
            with self.lock:
                self.active -= 1


def test_a_remote_executor_hashes_more_files_at_once_than_local_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      nodes_hash_every_file: None) -> None:
    """Without -j, a build whose executor is not local runs up to REMOTE_STEPS steps at once:
    its large files' hashes wait on nodes, not on the driver's cores. With -j, -j."""
    from modelbuild.executors import REMOTE_STEPS
    from modelbuild.ops import files

    monkeypatch.setattr(files, "REMOTE_HASH_MIN", 1 << 20)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    data = tmp_path / "ctx" / "data"
    data.mkdir(parents=True)
    names = [f"part-{i}.bin" for i in range(6)]
    for name in names:
        (data / name).write_bytes(os.urandom(1 << 20))
        os.utime(data / name, (1_700_000_000, 1_700_000_000))
    modelfile = tmp_path / "ctx" / "Modelfile"
    modelfile.write_text(f"FROM ./data\nNAME wide\nDATASET {' '.join(names)}\n")
    wide = SlowNodes()
    build_with(modelfile, tmp_path / "wide", wide.plugin(), executor="slow")
    assert REMOTE_STEPS >= 6 and wide.most >= 4, wide.most  # more than the 2 "cores"
    narrow = SlowNodes()
    build_with(modelfile, tmp_path / "narrow", narrow.plugin(), executor="slow", jobs=2)
    assert narrow.most <= 2, narrow.most


class SlowToConnect(CountingExecutor):
    """An executor whose open takes a second, as a cluster's does (import, connect, workers)."""

    name = "slow-to-connect"

    def open(self, setup: Any) -> Any:
        import time

        time.sleep(1.0)
        return super().open(setup)


def test_the_driver_hashes_one_file_while_the_cluster_connects(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Of three large files asked for at once while the executor is still opening, the
    driver hashes one itself instead of waiting (and copies it into the store: it is a raw
    layer); the other two wait for the nodes. Same digest and store as a local build."""
    from modelbuild.ops import files

    monkeypatch.setattr(files, "REMOTE_HASH_MIN", 1 << 20)
    data = tmp_path / "ctx" / "data"
    data.mkdir(parents=True)
    names = ["a.bin", "b.bin", "c.bin"]
    for name in names:
        (data / name).write_bytes(os.urandom(2 << 20))
        os.utime(data / name, (1_700_000_000, 1_700_000_000))
    modelfile = tmp_path / "ctx" / "Modelfile"
    modelfile.write_text(f"FROM ./data\nNAME connecting\nDATASET {' '.join(names)}\n")
    local = build_with(modelfile, tmp_path / "local", executor="local")
    slow = SlowToConnect()
    result = build_with(modelfile, tmp_path / "slow", slow.plugin(), executor="slow-to-connect")
    assert result.digest == local.digest
    on_nodes = [Path(item.path).name for fn, items in slow.calls if fn == "hash_on_node" for item in items]
    assert len(on_nodes) == 2 and len(set(on_nodes)) == 2 and set(on_nodes) < set(names), on_nodes
    assert result.stats["files_hashed"] == names
    assert sorted(p.name for p in (tmp_path / "slow" / "store" / "blobs" / "sha256").iterdir()) == sorted(
        p.name for p in (tmp_path / "local" / "store" / "blobs" / "sha256").iterdir())


class LyingExecutor(CountingExecutor):
    """A node that answers a hash with *answer* instead of running it."""

    name = "lying"

    def __init__(self, answer: Any) -> None:
        super().__init__()
        self.answer = answer

    def map(self, fn: Any, items: Any, on_done: Any, *, jobs: int | None = None, preload: Any = ()) -> None:
        for item in items:
            on_done(item, self.answer)


@pytest.mark.parametrize("answer, says", [
    (None, "answered None for its hash"),
    (("sha256:" + "0" * 64, 999, False), "changed while it was being read"),
    (("sha256:" + "0" * 64, 2 << 20, True), "is not there"),
    (("md5:abc", 2 << 20, False), "answered ('md5:abc'"),
])
def test_a_nodes_answer_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: Any, says: str,
                                   nodes_hash_every_file: None) -> None:
    """A node's hash of a file comes back checked: its shape, the file's size, and the blob
    it says it stored being in the store. Each failure is one line; nothing is tagged."""
    from modelbuild.ops import files

    monkeypatch.setattr(files, "REMOTE_HASH_MIN", 1 << 20)
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "a.bin").write_bytes(os.urandom(2 << 20))
    os.utime(tmp_path / "ctx" / "a.bin", (1_700_000_000, 1_700_000_000))
    modelfile = tmp_path / "ctx" / "Modelfile"
    modelfile.write_text("NAME lying\nDATASET a.bin\n")
    with pytest.raises(BuildError) as caught:
        build_with(modelfile, tmp_path / "home", LyingExecutor(answer).plugin(), executor="lying")
    line = caught.value.render()
    assert says in line and "\n" not in line.strip(), line
    assert not list((tmp_path / "home" / "store").glob("index.json")) or "lying" not in (
        tmp_path / "home" / "store" / "index.json").read_text()


def test_a_noop_rebuild_never_reaches_the_cluster(project: Path, tmp_path: Path) -> None:
    """The executor opens when a transform first runs: a cached build with --executor ray and
    no cluster anywhere succeeds."""
    home = tmp_path / "home"
    first = build_with(project, home)
    env = {**os.environ, "MODELBUILD_HOME": str(home), "RAY_ADDRESS": "127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-m", "modelbuild", "build", "-f", str(project), "--executor", "ray",
                           "-q"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == first.digest


# -- Work: what a remote worker checks and does around each item -------------------------------


def _note_thread(item: Any) -> str:
    return threading.current_thread().name


def _open_and_keep(path: str) -> int:
    """Opens a file and keeps it open, as gguf-quantize's per-thread file cache does."""
    return os.open(path, os.O_RDONLY)


_A_OPEN, _B_DONE = threading.Event(), threading.Event()


def _write_while_b_runs(path: str) -> bool:
    """Holds a file of the build open while another item runs and ends; True when the file
    is still open after that (nobody closed it under this item)."""
    fd = os.open(path, os.O_RDONLY)
    _A_OPEN.set()
    try:
        assert _B_DONE.wait(30)
        os.fstat(fd)
        return True
    except OSError:
        return False
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def test_items_side_by_side_in_one_process_keep_each_others_files(tmp_path: Path) -> None:
    """An executor that runs items on threads of one worker process: when item B ends, the
    file item A is still reading stays open (whose file is whose cannot be told apart)."""
    import dataclasses

    (tmp_path / "ctx").mkdir()
    marker = dataclasses.replace(Marker.create(tmp_path / "home" / "store", tmp_path / "ctx"), driver=-1)
    weights = tmp_path / "ctx" / "weights.bin"
    weights.write_bytes(b"x")
    _A_OPEN.clear()
    _B_DONE.clear()
    got: list[bool] = []
    a = threading.Thread(target=lambda: got.append(Work.prepare(_write_while_b_runs, marker).run(str(weights))))
    a.start()
    try:
        assert _A_OPEN.wait(30)
        fd_b = Work.prepare(_open_and_keep, marker).run(str(weights))
        os.fstat(fd_b)  # ran beside A: left open too
        os.close(fd_b)
    finally:
        _B_DONE.set()
        a.join()
    assert got == [True]


def _fail(item: Any) -> None:
    raise BuildError(f"item {item} failed")


def _keep_open_and_name(path: str) -> tuple[int, str]:
    return os.open(path, os.O_RDONLY), threading.current_thread().name


def test_a_function_that_keeps_no_file_runs_its_later_items_in_the_calling_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its first item in this process runs in a thread of its own; it left no file open,
    so the next ones run in the calling thread (no thread start, no fresh heap)."""
    from modelbuild import dataplane

    monkeypatch.setattr(dataplane, "_inline", {})  # what earlier tests' items taught this process
    marker = Marker.create(tmp_path / "store", tmp_path)
    work = Work.prepare(_note_thread, marker)
    here = threading.current_thread().name
    assert here != "modelbuild-item"
    assert [work.run(i) for i in range(3)] == ["modelbuild-item", here, here]
    with pytest.raises(BuildError, match="item 7 failed"):
        Work.prepare(_fail, marker).run(7)


def test_a_function_that_keeps_files_open_gets_a_fresh_thread_for_every_item(tmp_path: Path) -> None:
    """A plugin that keeps its files per thread (open across items): each item in a new
    thread, whose files are closed behind it, so no item finds another's closed descriptor
    in its cache."""
    import dataclasses

    (tmp_path / "ctx").mkdir()
    weights = tmp_path / "ctx" / "weights.bin"
    weights.write_bytes(b"x")
    marker = dataclasses.replace(Marker.create(tmp_path / "home" / "store", tmp_path / "ctx"), driver=-1)
    work = Work.prepare(_keep_open_and_name, marker)
    for _ in range(3):
        fd, name = work.run(str(weights))
        assert name == "modelbuild-item"
        with pytest.raises(OSError):
            os.fstat(fd)  # closed behind it


def test_work_closes_the_files_an_item_left_open_under_the_build(tmp_path: Path) -> None:
    store = tmp_path / "home" / "store"
    (tmp_path / "ctx").mkdir()
    import dataclasses

    marker = Marker.create(store, tmp_path / "ctx")
    inside = tmp_path / "ctx" / "weights.bin"
    inside.write_bytes(b"x")
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(b"y")
    # in the build's own process, nothing is closed: other steps' threads write there too
    fd_kept = Work.prepare(_open_and_keep, marker).run(str(inside))
    os.fstat(fd_kept)
    os.close(fd_kept)
    work = Work.prepare(_open_and_keep, dataclasses.replace(marker, driver=-1))  # as on a worker process
    fd_in = work.run(str(inside))
    with pytest.raises(OSError):
        os.fstat(fd_in)  # closed: it named a file of the build
    fd_out = work.run(str(outside))
    try:
        os.fstat(fd_out)  # left: not the build's
    finally:
        os.close(fd_out)


def test_a_node_that_does_not_see_the_store_refuses_before_running(tmp_path: Path) -> None:
    marker = Marker.create(tmp_path / "store")
    gone = Marker(marker.path + "-elsewhere", marker.token, marker.roots)
    with pytest.raises(BuildError, match=r"node n1 cannot run this build's work: it does not see the build's store"):
        Work.prepare(_note_thread, gone).run(1, "n1")
    forged = tmp_path / "store" / "ingest" / "executor-forged"
    forged.write_text("another token")
    with pytest.raises(BuildError, match="another build's: this node mounts another store"):
        Work.prepare(_note_thread, Marker(str(forged), marker.token, marker.roots)).run(1)
    no_context = Marker.create(tmp_path / "store", tmp_path / "context")  # never created
    with pytest.raises(BuildError, match="does not see the build context"):
        Work.prepare(_note_thread, no_context).run(1)


def test_a_node_with_other_code_refuses(tmp_path: Path) -> None:
    marker = Marker.create(tmp_path / "store")
    work = Work.prepare(_note_thread, marker)
    assert "modelbuild" in work.code and __name__ in work.code
    other = Work(_note_thread, marker, work.code.replace("modelbuild ", "modelbuild 0.0.0-", 1))
    with pytest.raises(BuildError, match="it runs modelbuild .*, the build modelbuild 0.0.0-"):
        other.run(1, "n2")


# -- a stuck item --------------------------------------------------------------------------------

def _hang_in_a_worker(item: tuple[int, int]) -> int:
    """Module-level, so that workers can run it: returns after a moment in the test process,
    which runs items while the workers start, and never in a worker."""
    parent, x = item
    time.sleep(0.2 if os.getpid() == parent else 3600)
    return x


def test_a_stuck_item_on_the_local_executor_stops_its_workers_in_one_line(tmp_path: Path) -> None:
    from modelbuild.api import ExecutorSetup, local_executor

    setup = ExecutorSetup(address=None, jobs=2, store=tmp_path / "store", context=None, log=lambda line: None,
                          marker=Marker.create(tmp_path / "store"), item_timeout=1.5)
    session = local_executor().open(setup)
    done: list[int] = []
    raised: list[BaseException] = []

    def run() -> None:  # in a thread: without the bound the map would wait for an hour
        try:
            items = [(os.getpid(), x) for x in range(40)]
            session.map(_hang_in_a_worker, items, lambda item, result: done.append(result))
        except BaseException as exc:  # noqa: BLE001 - checked below
            raised.append(exc)

    mapper = threading.Thread(target=run, daemon=True)
    mapper.start()
    mapper.join(60)
    assert not mapper.is_alive(), "the map went on waiting for a stuck item"
    [error] = raised
    assert isinstance(error, BuildError)
    info = pytest.ExceptionInfo.from_exc_info((type(error), error, error.__traceback__))
    message = str(info.value)
    assert message.startswith("no work item of _hang_in_a_worker finished in 1.5 s") and "\n" not in message
    assert "MODELBUILD_ITEM_TIMEOUT" in (info.value.hint or "")
    assert len(done) < 40  # the workers' items never came back
    servers = [p for p in descendants(os.getpid()) if b"multiprocessing.forkserver" in cmdline(p)]
    assert servers  # the workers came from this process's forkserver...
    deadline = time.monotonic() + 10
    while any(descendants(server) for server in servers):  # ...and none of them is left
        assert time.monotonic() < deadline, "a stuck worker outlived the map"
        time.sleep(0.1)


@pytest.mark.parametrize("value, bound", [("", 3600.0), ("0", None), ("2.5", 2.5)])
def test_the_item_bound_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str,
                                                     bound: float | None) -> None:
    from modelbuild.executors import item_timeout

    monkeypatch.setenv("MODELBUILD_ITEM_TIMEOUT", value)
    assert item_timeout() == bound


def test_a_bad_item_bound_is_a_usage_error(project: Path, tmp_path: Path) -> None:
    env = {**os.environ, "MODELBUILD_HOME": str(tmp_path / "home"), "MODELBUILD_ITEM_TIMEOUT": "soon"}
    proc = subprocess.run([sys.executable, "-m", "modelbuild", "build", "-f", str(project), "--progress", "quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "MODELBUILD_ITEM_TIMEOUT must be a non-negative number, got 'soon'" in proc.stderr
