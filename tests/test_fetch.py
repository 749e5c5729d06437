"""The core's fetch step (modelbuild/fetch.py), driven by a small real remote-source plugin
that serves files from memory and can fail on purpose: pinning, keys, the cached listing,
resume, checksums, offline builds, selection, snapshots and defaults."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from modelbuild.api import FetchError, ModelfileError, RemoteFile, SourceListing, SourcePin, hookimpl
from modelbuild.errors import BuildError
from modelbuild.testing import build_with

COMMIT = "c" * 40


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class MemorySource:
    """``mem://repo[@rev]``: files held in memory; ``main`` resolves to COMMIT."""

    name = "mem"
    schemes = ("mem",)
    version = "1"

    def __init__(self, files: dict[str, bytes], *, lie: dict[str, bytes] | None = None) -> None:
        self.files = files
        self.lie = lie or {}  # path → bytes sent instead of the listed ones
        self.drop_after: dict[str, int] = {}  # path → drop the connection once after this many bytes
        self.down = False
        self.calls: list[tuple] = []
        self.sent: dict[str, int] = {}
        self.extra: list[RemoteFile] = []
        self.labels: dict[str, str] = {}

    def pin(self, reference: str, *, network: bool) -> SourcePin | None:
        self.calls.append(("pin", network))
        repo, _, rev = reference.removeprefix("mem://").partition("@")
        if len(rev) != 40:
            if not network:
                return None
            self._up()
            rev = COMMIT
        return SourcePin(f"mem://{repo}@{rev}", source_url=f"https://mem.example/{repo}", revision=rev)

    def listing(self, pin: SourcePin) -> SourceListing:
        self.calls.append(("listing",))
        self._up()
        files = tuple(RemoteFile(p, len(b), _sha(b) if not p.endswith(".txt") else "",
                                 kind="model" if p.endswith(".bin") else "config" if p.endswith(".json") else "doc",
                                 locator=p) for p, b in sorted(self.files.items()))
        return SourceListing(files=files + tuple(self.extra), descriptor={"vendor": "Mem"}, labels=self.labels,
                             name="memmodel")

    @contextlib.contextmanager
    def open(self, pin: SourcePin, file: RemoteFile, *, offset: int):
        self.calls.append(("open", file.path, offset))
        self._up()
        data = self.lie.get(file.path, self.files.get(file.path) or self._archive(file))

        def chunks():
            pos = offset
            limit = self.drop_after.pop(file.path, None)
            while pos < len(data):
                piece = data[pos:pos + 7]
                if limit is not None and pos + len(piece) > limit:
                    raise FetchError("connection reset by peer", retryable=True)
                self.sent[file.path] = self.sent.get(file.path, 0) + len(piece)
                pos += len(piece)
                yield piece

        yield chunks()

    def _archive(self, file: RemoteFile) -> bytes:
        return self.archives[file.path]

    def _up(self) -> None:
        if self.down:
            raise FetchError("mem.example: connection refused", retryable=False)


class Plugin:
    def __init__(self, source: MemorySource) -> None:
        self.source = source

    @hookimpl
    def modelbuild_register_sources(self, registry) -> None:  # noqa: ANN001
        registry.add(self.source)


FILES = {"model.bin": b"weights " * 50, "config.json": b'{"model_type": "tiny"}', "notes.txt": b"hello\n"}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr("modelbuild.fetch.BACKOFF", 0.01)
    monkeypatch.delenv("MODELBUILD_OFFLINE", raising=False)
    return tmp_path / "home"


def _modelfile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "Modelfile"
    path.write_text(text)
    return path


def _store_blobs(home: Path) -> set[str]:
    root = home / "store" / "blobs" / "sha256"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def test_a_pinned_source_builds_and_records_its_identity(tmp_path: Path, home: Path) -> None:
    src = MemorySource(dict(FILES))
    mf = _modelfile(tmp_path, f"FROM mem://team/tiny@{COMMIT}\nMODEL model.bin\nCONFIG config.json\nDOC notes.txt\n")
    result = build_with(mf, home, Plugin(src), tags=["tiny:1"])
    assert ("pin", True) not in src.calls  # pinned by itself: no resolution on the network
    desc = result.config["descriptor"]
    assert desc["revision"] == COMMIT and desc["sourceURL"] == "https://mem.example/team/tiny"
    assert desc["vendor"] == "Mem"  # the listing's defaults
    layers = {layer["annotations"]["org.cncf.model.filepath"]: layer["digest"] for layer in result.layers}
    assert layers == {p: _sha(b) for p, b in FILES.items()}
    assert src.sent == {p: len(b) for p, b in FILES.items()}  # every byte sent once
    assert result.stats["bytes_hashed"] == 0 and result.stats["files_hashed"] == []  # hashed once, while fetched


def test_the_source_step_names_the_identity_in_the_graph(tmp_path: Path, home: Path, monkeypatch) -> None:
    from modelbuild.build import prepare
    from modelbuild.fetch import FetchSession, fetching
    from modelbuild.testing import plugin_host

    src = MemorySource(dict(FILES))
    mf = _modelfile(tmp_path, "FROM mem://team/tiny\nMODEL model.bin\n")
    with fetching(FetchSession(home)):
        _, desc, graph = prepare(str(mf), host=plugin_host(Plugin(src)))
    first = graph.step(graph.order[0])
    assert first.label == f"fetch mem://team/tiny@{COMMIT}"
    assert first.params["identity"] == f"mem://team/tiny@{COMMIT}" and first.params["key"].startswith("sha256:")
    assert desc.source.pin.revision == COMMIT


def test_a_second_build_needs_no_network_and_hashes_nothing(tmp_path: Path, home: Path) -> None:
    src = MemorySource(dict(FILES))
    mf = _modelfile(tmp_path, f"FROM mem://team/tiny@{COMMIT}\nMODEL model.bin\nCONFIG config.json\n")
    first = build_with(mf, home, Plugin(src), tags=["tiny:1"])
    src.down = True
    src.calls.clear()
    second = build_with(mf, home, Plugin(src), tags=["tiny:1"])
    assert second.digest == first.digest
    assert [c for c in src.calls if c[0] != "pin"] == []  # no listing, no open
    assert second.stats["bytes_hashed"] == 0 and second.stats["steps_run"] == 0


def test_an_unpinned_source_offline_is_a_clear_error(tmp_path: Path, home: Path, monkeypatch) -> None:
    src = MemorySource(dict(FILES))
    mf = _modelfile(tmp_path, "FROM mem://team/tiny\nMODEL model.bin\n")
    monkeypatch.setenv("MODELBUILD_OFFLINE", "1")
    with pytest.raises(ModelfileError, match="names no fixed revision, and the network is off") as exc:
        build_with(mf, home, Plugin(src))
    assert "Modelfile:1:6" in str(exc.value.span) or exc.value.span.line == 1


def test_a_dropped_connection_resumes_where_it_stopped(tmp_path: Path, home: Path) -> None:
    src = MemorySource(dict(FILES))
    src.drop_after["model.bin"] = 100
    mf = _modelfile(tmp_path, f"FROM mem://t/x@{COMMIT}\nMODEL model.bin\n")
    result = build_with(mf, home, Plugin(src))
    opens = [c for c in src.calls if c[0] == "open" and c[1] == "model.bin"]
    assert [c[2] for c in opens] == [0, 98]  # 14 chunks of 7 bytes got through, then the reset
    assert src.sent["model.bin"] == len(FILES["model.bin"])  # nothing sent twice
    assert result.layers[0]["digest"] == _sha(FILES["model.bin"])


def test_a_wrong_checksum_fails_and_stores_nothing(tmp_path: Path, home: Path) -> None:
    src = MemorySource(dict(FILES), lie={"model.bin": b"evil " * 80})
    mf = _modelfile(tmp_path, f"FROM mem://t/x@{COMMIT}\nMODEL model.bin\n")
    with pytest.raises(BuildError, match=r"model.bin: its SHA-256 is sha256:[0-9a-f]{64}, not the .* nothing was stored"):
        build_with(mf, home, Plugin(src))
    assert _store_blobs(home) == set()
    assert list((home / "sources" / "partial").iterdir()) == []
    assert not any(p.suffix == ".json" for p in (home / "sources").iterdir())


def test_more_bytes_than_listed_are_refused(tmp_path: Path, home: Path) -> None:
    src = MemorySource(dict(FILES), lie={"notes.txt": b"x" * 1000})
    mf = _modelfile(tmp_path, f"FROM mem://t/x@{COMMIT}\nDOC notes.txt\n")
    with pytest.raises(FetchError, match="sent more than the 6 bytes listed"):
        build_with(mf, home, Plugin(src))
    assert _store_blobs(home) == set()


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd", "a/../../b", ""])
def test_a_hostile_listing_is_refused(tmp_path: Path, home: Path, path: str) -> None:
    src = MemorySource(dict(FILES))
    src.extra = [RemoteFile(path, 1, locator="x")]
    mf = _modelfile(tmp_path, f"FROM mem://t/x@{COMMIT}\nMODEL model.bin\n")
    with pytest.raises(FetchError, match="refusing it"):
        build_with(mf, home, Plugin(src))


def test_include_and_exclude_pick_files_before_download(tmp_path: Path, home: Path) -> None:
    src = MemorySource(dict(FILES))
    mf = _modelfile(tmp_path, f"FROM --include=*.bin --include=*.json --exclude=config.json mem://t/x@{COMMIT}\n"
                              "MODEL *\n")
    result = build_with(mf, home, Plugin(src))
    assert [l["annotations"]["org.cncf.model.filepath"] for l in result.layers] == ["model.bin"]
    assert set(src.sent) == {"model.bin"}


def test_without_file_directives_the_source_files_are_packaged_by_kind(tmp_path: Path, home: Path) -> None:
    src = MemorySource(dict(FILES))
    src.labels = {"org.example.note": "kept"}
    mf = _modelfile(tmp_path, f"FROM mem://t/x@{COMMIT}\nLABEL org.example.mine=1\n")
    result = build_with(mf, home, Plugin(src))
    kinds = {l["annotations"]["org.cncf.model.filepath"]: l["mediaType"] for l in result.layers}
    assert kinds == {"config.json": "application/vnd.cncf.model.weight.config.v1.raw",
                     "model.bin": "application/vnd.cncf.model.weight.v1.raw",
                     "notes.txt": "application/vnd.cncf.model.doc.v1.raw"}
    assert result.config["descriptor"]["name"] == "memmodel"


def test_an_archive_becomes_a_directory(tmp_path: Path, home: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("data/a.jsonl", b"{}\n"), ("data/b.jsonl", b"[]\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    src = MemorySource(dict(FILES))
    src.archives = {"data": blob}
    src.extra = [RemoteFile("data", len(blob), _sha(blob), kind="dataset", unpack="tar", locator="data")]
    mf = _modelfile(tmp_path, f"FROM mem://t/x@{COMMIT}\nMODEL model.bin\nDATASET data\n")
    result = build_with(mf, home, Plugin(src))
    assert any(l["annotations"]["org.cncf.model.filepath"] == "data" for l in result.layers)


def test_the_snapshot_links_store_blobs_read_only(tmp_path: Path, home: Path) -> None:
    from modelbuild.fetch import FetchSession, fetching
    from modelbuild.testing import plugin_host

    src = MemorySource(dict(FILES))
    with fetching(FetchSession(home)):
        opened = plugin_host(Plugin(src)).sources.open(f"mem://t/x@{COMMIT}", base_dir=tmp_path)
    linked = opened.root / "model.bin"
    blob = home / "store" / "blobs" / "sha256" / _sha(FILES["model.bin"]).split(":")[1]
    assert os.stat(linked).st_ino == os.stat(blob).st_ino
    assert not os.stat(linked).st_mode & 0o222
    record = json.loads(next(p for p in (home / "sources").iterdir() if p.suffix == ".json").read_text())
    assert record["identity"] == f"mem://t/x@{COMMIT}"
    assert {f["path"]: f["digest"] for f in record["files"]}["notes.txt"] == _sha(FILES["notes.txt"])


def test_prune_removes_snapshots_and_a_later_build_relinks_them(tmp_path: Path, home: Path) -> None:
    from modelbuild.commands.prune import prune
    from modelbuild.store import Store

    src = MemorySource(dict(FILES))
    # only what is packaged is fetched: a tag keeps all of it through prune
    mf = _modelfile(tmp_path, f"FROM --exclude=*.txt mem://t/x@{COMMIT}\nMODEL model.bin\nCONFIG config.json\n")
    first = build_with(mf, home, Plugin(src), tags=["kept:1"])
    snapshots = [p for p in (home / "sources").iterdir() if p.is_dir() and p.name != "partial"]
    assert len(snapshots) == 1
    report = prune(Store(home / "store"), home)
    assert report["temp_files"] >= 1 and not snapshots[0].exists()
    src.down = True  # every packaged file is still a tagged blob: linked again, no network
    assert build_with(mf, home, Plugin(src), tags=["kept:1"]).digest == first.digest


def test_files_are_fetched_several_at_a_time(tmp_path: Path, home: Path) -> None:
    import threading

    class Concurrent(MemorySource):
        """Each transfer waits (up to 5 s) until another is running too."""

        def __init__(self, files: dict[str, bytes]) -> None:
            super().__init__(files)
            self.barrier = threading.Barrier(2, timeout=5)
            self.met = 0

        @contextlib.contextmanager
        def open(self, pin, file, *, offset):
            with contextlib.suppress(threading.BrokenBarrierError):
                self.barrier.wait()
                self.met += 1
            with super().open(pin, file, offset=offset) as chunks:
                yield chunks

    src = Concurrent({"a.bin": b"a" * 100, "b.bin": b"b" * 100})
    mf = _modelfile(tmp_path, f"FROM mem://t/x@{COMMIT}\nMODEL *.bin\n")
    build_with(mf, home, Plugin(src))
    assert src.met == 2  # both transfers were in flight at once
