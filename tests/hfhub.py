"""A fake Hugging Face Hub: a real HTTP server on 127.0.0.1 that answers the
``huggingface_hub`` client library (read against 2.4.0) as the Hub does, for the calls a
download makes. Nothing here reaches the real Hub.

What it serves (the library's URLs, see ``HfApi.model_info``, ``HfApi.list_repo_tree``,
``hf_hub_url``, ``get_hf_file_metadata`` and ``http_get``):

``GET /api/{models,datasets}/{repo}[/revision/{rev}]``
    the repository's info at a revision (``rev`` percent-encoded, ``refs%2Fpr%2F1``):
    ``id``, ``sha``, ``private``, ``gated``, ``cardData`` (the README's YAML front matter),
    ``config`` (from config.json), and ``siblings``: ``rfilename`` only, or with
    ``?blobs=true`` also ``blobId`` (the Git blob id), ``size`` and, for an LFS file,
    ``lfs: {sha256, size, pointerSize}``. ``?expand=…`` keeps only the named fields.
``GET /api/{models,datasets}/{repo}/tree/{rev}[/{path}]?recursive=…``
    tree entries: ``{type: file, oid, size, path[, lfs: {oid, size, pointerSize}]}`` and
    ``{type: directory, oid, size: 0, path}``.
``HEAD``/``GET /[datasets/]{repo}/resolve/{rev}/{path}``
    a plain Git file: 200 (206 for a ``Range``) with ``ETag`` (its blob id),
    ``X-Repo-Commit``, ``Content-Length``. An LFS file: 302 to the CDN with ``Location``,
    ``X-Repo-Commit``, ``X-Linked-Etag`` (its sha256), ``X-Linked-Size`` (its size), as the
    Hub redirects to its CDN; the library stops a HEAD there (another origin) and drops the
    ``authorization`` header for the GET.
``GET /lfs-cdn/{sha256}?…`` on a second port (another origin, as the CDN is): the bytes,
    with ``Range``. Like S3 with a signed URL, it refuses a request that also carries an
    ``Authorization`` header (400), so a client leaking the token there fails.

Errors as the Hub sends them: ``X-Error-Code`` ``RepoNotFound`` (401 without a token, 404
with one: the Hub does not tell a private repository from a missing one),
``RevisionNotFound`` and ``EntryNotFound`` (404), ``GatedRepo`` (401/403, on downloads
only), and a 401 ``X-Error-Message: Invalid credentials in Authorization header`` for an
unknown token. 416 with ``Content-Range: bytes */SIZE`` for a range past the end.

For tests: ``sent[(repo, path)]`` counts body bytes sent per file (the resolve path and the
CDN alike), ``requests`` records every request, ``drop_after(repo, path, n)`` closes the
connection once after *n* body bytes of a file, ``inject(fragment, status)`` answers the next
requests whose path holds *fragment* with an error, ``tamper`` rewrites the info JSON (a
hostile mirror), ``ignore_range`` answers ranged requests whole, and ``stop()``/``start()``
take the server away and bring it back on the same ports. The ``hf_hub`` fixture gives a
started hub, with huggingface_hub's environment isolated (``HF_ENDPOINT`` set to it, no
token, no offline mode).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

LFS_THRESHOLD = 1024  # files at least this big are stored with LFS, as a .gitattributes would say
CHUNK = 64 * 1024
DATE = "2024-05-01T12:00:00.000Z"


def git_blob_oid(data: bytes) -> str:
    """The Git blob id of *data*: what the Hub lists as ``blobId``/``oid``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The Git LFS pointer file Git stores for *data*."""
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
            f"size {len(data)}\n").encode()


@dataclass(frozen=True)
class Entry:
    """One file of a commit: its bytes, and whether Git holds them through LFS."""

    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def blob_id(self) -> str:  # an LFS file's Git blob is its pointer
        return git_blob_oid(lfs_pointer(self.data) if self.lfs else self.data)

    def sibling(self, path: str) -> dict:
        out: dict = {"rfilename": path, "blobId": self.blob_id, "size": len(self.data)}
        if self.lfs:
            out["lfs"] = {"sha256": self.sha256, "size": len(self.data), "pointerSize": len(lfs_pointer(self.data))}
        return out


@dataclass
class Repo:
    repo_id: str
    repo_type: str = "model"
    private: bool = False
    gated: bool = False
    readers: set[str] = field(default_factory=set)  # tokens that may read it (private or gated)
    commits: dict[str, dict[str, Entry]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag → commit

    def resolve(self, rev: str) -> str | None:
        if rev in self.refs:
            return self.refs[rev]
        if rev in self.commits:
            return rev
        if re.fullmatch(r"[0-9a-f]{7,39}", rev):
            found = [c for c in self.commits if c.startswith(rev)]
            return found[0] if len(found) == 1 else None
        return None


@dataclass(frozen=True)
class Seen:
    """One request the hub answered: ``server`` is ``hub`` or ``cdn``."""

    server: str
    method: str
    path: str
    range: str | None
    authorization: str | None


class FakeHub:
    """The Hub's state and its two servers (the API and resolve host, and the CDN)."""

    def __init__(self, *, lfs_threshold: int = LFS_THRESHOLD) -> None:
        self.lfs_threshold = lfs_threshold
        self.repos: dict[tuple[str, str], Repo] = {}
        self.tokens: dict[str, str] = {}  # valid token → user name
        self.sent: Counter[tuple[str, str]] = Counter()
        self.requests: list[Seen] = []
        self.tamper: Callable[[str, dict], dict] | None = None  # (repo_id, info JSON) → what is sent
        self.ignore_range = False  # answer every GET whole, with 200, as a server without ranges does
        self.lock = threading.Lock()
        self._drops: dict[tuple[str, str], list[int]] = {}
        self._injected: list[list] = []  # [fragment, status, times, headers]
        self._servers: list[http.server.ThreadingHTTPServer] = []
        self._ports: tuple[int, int] = (0, 0)
        self._clock = 0

    # -- content ------------------------------------------------------------------------
    def create_repo(self, repo_id: str, *, repo_type: str = "model", private: bool = False, gated: bool = False,
                    readers: tuple[str, ...] = ()) -> Repo:
        repo = Repo(repo_id, repo_type, private, gated, set(readers))
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def commit(self, repo_id: str, files: Mapping[str, bytes | str | None], *, branch: str = "main",
               repo_type: str = "model", lfs: tuple[str, ...] = (), replace: bool = False) -> str:
        """Commit *files* (path → bytes; None deletes) on *branch*, on top of its head (or of
        nothing with *replace*); creates the repository if needed. Returns the commit id."""
        repo = self.repos.get((repo_type, repo_id)) or self.create_repo(repo_id, repo_type=repo_type)
        parent = repo.refs.get(branch)
        tree = {} if replace or parent is None else dict(repo.commits[parent])
        for path, data in files.items():
            if data is None:
                tree.pop(path, None)
                continue
            raw = data.encode() if isinstance(data, str) else data
            tree[path] = Entry(raw, len(raw) >= self.lfs_threshold or path in lfs)
        self._clock += 1
        text = json.dumps([repo_type, repo_id, parent, self._clock, sorted((p, e.blob_id) for p, e in tree.items())])
        sha = hashlib.sha1(text.encode()).hexdigest()
        repo.commits[sha] = tree
        repo.refs[branch] = sha
        return sha

    def tag(self, repo_id: str, name: str, revision: str = "main", *, repo_type: str = "model") -> str:
        repo = self.repos[(repo_type, repo_id)]
        sha = repo.resolve(revision)
        assert sha, revision
        repo.refs[name] = sha
        return sha

    # -- test controls ------------------------------------------------------------------
    def drop_after(self, repo_id: str, path: str, nbytes: int, *, times: int = 1) -> None:
        """Close the connection after *nbytes* of the file's body, the next *times* it is sent."""
        self._drops.setdefault((repo_id, path), []).extend([nbytes] * times)

    def inject(self, fragment: str, status: int, *, times: int = 1, headers: Mapping[str, str] | None = None) -> None:
        """Answer the next *times* requests whose path holds *fragment* with *status*."""
        self._injected.append([fragment, status, times, dict(headers or {})])

    def count(self, method: str = "", fragment: str = "", server: str = "") -> int:
        with self.lock:
            return sum(1 for s in self.requests if (not method or s.method == method) and fragment in s.path
                       and (not server or s.server == server))

    def sent_for(self, repo_id: str) -> dict[str, int]:
        """Body bytes sent per file of *repo_id*."""
        with self.lock:
            return {p: n for (r, p), n in self.sent.items() if r == repo_id and n}

    # -- servers ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The endpoint (``HF_ENDPOINT``)."""
        return f"http://127.0.0.1:{self._ports[0]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._ports[1]}"

    @property
    def running(self) -> bool:
        return bool(self._servers)

    def start(self) -> FakeHub:
        """Start both servers: on free ports the first time, on the same ones after ``stop``."""
        assert not self._servers, "already running"
        servers = [self._make_server("hub", self._ports[0]), self._make_server("cdn", self._ports[1])]
        self._ports = (servers[0].server_address[1], servers[1].server_address[1])
        for server in servers:
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self._servers = servers
        return self

    def stop(self) -> None:
        """Take the hub away: stop listening and cut every open connection (a client's pooled
        keep-alive connection would otherwise still be answered)."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.shutdown()
            server.server_close()
            for conn in list(server.open_connections):  # type: ignore[attr-defined]
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _make_server(self, role: str, port: int) -> http.server.ThreadingHTTPServer:
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except OSError:
                    self.close_connection = True

            def do_GET(self) -> None:
                hub._serve(self, role)

            do_HEAD = do_GET

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            open_connections: set[socket.socket]

            def get_request(self):  # noqa: ANN202
                conn, addr = super().get_request()
                self.open_connections.add(conn)
                return conn, addr

            def shutdown_request(self, request) -> None:  # noqa: ANN001
                self.open_connections.discard(request)
                super().shutdown_request(request)

        server = Server(("127.0.0.1", port), Handler)
        server.open_connections = set()
        return server

    # -- requests -----------------------------------------------------------------------
    def _serve(self, h: http.server.BaseHTTPRequestHandler, role: str) -> None:
        h.connection.settimeout(10)
        split = urlsplit(h.path)
        path, query = split.path, parse_qs(split.query)
        auth = h.headers.get("Authorization")
        with self.lock:
            self.requests.append(Seen(role, h.command, h.path, h.headers.get("Range"), auth))
            injected = next((i for i in self._injected if i[0] in h.path and i[2] > 0), None)
            if injected:
                injected[2] -= 1
        if injected:
            return _send(h, injected[1], injected[3] | {"X-Error-Message": "injected"}, b"injected failure")
        if role == "cdn":
            return self._serve_cdn(h, path, query)
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:1] == ["api"] and len(parts) >= 3:
            return self._serve_api(h, parts[1], parts[2:], query)
        return self._serve_resolve(h, parts)

    def _access(self, repo: Repo | None, auth: str | None, *, download: bool) -> tuple[int, dict[str, str]] | None:
        """None when the request may read *repo*; else the Hub's error status and headers."""
        token = auth[len("Bearer "):] if auth and auth.startswith("Bearer ") else None
        if token is not None and token not in self.tokens:
            return 401, {"X-Error-Message": "Invalid credentials in Authorization header"}
        if repo is None or (repo.private and token not in repo.readers):
            return (401 if token is None else 404), {"X-Error-Code": "RepoNotFound",
                                                      "X-Error-Message": "Repository not found"}
        if download and repo.gated and token not in repo.readers:
            kind = "model" if repo.repo_type == "model" else repo.repo_type
            if token is None:
                message = (f"Access to {kind} {repo.repo_id} is restricted. You must have access to it and be "
                           "authenticated to access it. Please log in.")
                return 401, {"X-Error-Code": "GatedRepo", "X-Error-Message": message}
            return 403, {"X-Error-Code": "GatedRepo",
                         "X-Error-Message": f"Access to {kind} {repo.repo_id} is restricted and you are not in the "
                                            "authorized list."}
        return None

    def _find(self, repo_type: str, segments: list[str], marker: str) -> tuple[str, list[str]]:
        """(repo id, what follows *marker*) from ``org/name/MARKER/…`` or ``name/MARKER/…``."""
        if len(segments) >= 2 and segments[1] == marker:
            return segments[0], segments[2:]
        if len(segments) >= 3 and segments[2] == marker:
            return "/".join(segments[:2]), segments[3:]
        return "/".join(segments[:2]), []

    def _serve_api(self, h, plural: str, segments: list[str], query: dict[str, list[str]]) -> None:  # noqa: ANN001
        repo_type = {"models": "model", "datasets": "dataset", "spaces": "space"}.get(plural)
        if repo_type is None:
            return _send(h, 404, {}, b"Not Found")
        if len(segments) >= 2 and segments[1] in ("revision", "tree") or len(segments) == 1:
            repo_id, rest, marker = segments[0], segments[2:], segments[1] if len(segments) > 1 else ""
        else:
            repo_id, rest, marker = "/".join(segments[:2]), segments[3:], segments[2] if len(segments) > 2 else ""
        repo = self.repos.get((repo_type, repo_id))
        denied = self._access(repo, h.headers.get("Authorization"), download=False)
        if denied:
            return _send(h, denied[0], denied[1], json.dumps({"error": denied[1]["X-Error-Message"]}).encode())
        assert repo is not None
        rev = rest[0] if rest else "main"
        sha = repo.resolve(rev)
        if sha is None:
            return _error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
        tree = repo.commits[sha]
        if marker == "tree":
            return self._serve_tree(h, tree, "/".join(rest[1:]), query)
        if marker not in ("", "revision"):
            return _send(h, 404, {}, b"Not Found")
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        info = _info(repo, sha, tree, blobs)
        expand = query.get("expand") or query.get("expand[]")
        if expand:
            info = {k: v for k, v in info.items() if k in ("_id", "id") or k in expand}
        if self.tamper is not None:
            info = self.tamper(repo_id, info)
        return _send(h, 200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(info).encode())

    def _serve_tree(self, h, tree: dict[str, Entry], base: str, query: dict[str, list[str]]) -> None:  # noqa: ANN001
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = base.strip("/") + "/" if base.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in tree):
            return _error(h, 404, "EntryNotFound", f"{base} does not exist on this revision")
        dirs: set[str] = set()
        files = []
        for path in sorted(tree):
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix):].split("/")
            for depth in range(1, len(rel)):
                if recursive or depth == 1:
                    dirs.add(prefix + "/".join(rel[:depth]))
            if recursive or len(rel) == 1:
                entry = tree[path]
                item = {"type": "file", "oid": entry.blob_id, "size": len(entry.data), "path": path}
                if entry.lfs:
                    item["lfs"] = {"oid": entry.sha256, "size": len(entry.data),
                                   "pointerSize": len(lfs_pointer(entry.data))}
                files.append(item)
        folders = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                   for d in sorted(dirs)]
        return _send(h, 200, {"Content-Type": "application/json; charset=utf-8"},
                     json.dumps(folders + files).encode())

    def _serve_resolve(self, h, parts: list[str]) -> None:  # noqa: ANN001
        repo_type = "model"
        if parts[:1] in (["datasets"], ["spaces"]):
            repo_type, parts = parts[0][:-1], parts[1:]
        repo_id, rest = self._find(repo_type, parts, "resolve")
        if len(rest) < 2:
            return _send(h, 404, {}, b"Not Found")
        rev, path = rest[0], "/".join(rest[1:])
        repo = self.repos.get((repo_type, repo_id))
        denied = self._access(repo, h.headers.get("Authorization"), download=True)
        if denied:
            return _send(h, denied[0], denied[1], denied[1]["X-Error-Message"].encode())
        assert repo is not None
        sha = repo.resolve(rev)
        if sha is None:
            return _error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
        entry = repo.commits[sha].get(path)
        if entry is None:
            return _error(h, 404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": sha})
        name = path.rsplit("/", 1)[-1]
        if entry.lfs:
            location = (f"{self.cdn_url}/lfs-cdn/{entry.sha256}?repo={quote(repo_id, safe='')}"
                        f"&path={quote(path, safe='')}&X-Amz-Signature=fakesignature")
            body = f"Found. Redirecting to {location}".encode()
            return _send(h, 302, {"Location": location, "X-Repo-Commit": sha, "ETag": f'"{entry.blob_id}"',
                                  "X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(len(entry.data)),
                                  "Content-Type": "text/plain; charset=utf-8"}, body)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{entry.blob_id}"',
                   "Content-Disposition": f'inline; filename="{name}"'}
        return self._send_file(h, (repo_id, path), entry.data, headers)

    def _serve_cdn(self, h, path: str, query: dict[str, list[str]]) -> None:  # noqa: ANN001
        if h.headers.get("Authorization"):
            # S3 answers a signed URL that also carries an Authorization header with 400
            return _send(h, 400, {"Content-Type": "application/xml"}, b"<Error><Code>InvalidArgument</Code>"
                         b"<Message>Only one auth mechanism allowed</Message></Error>")
        match = re.fullmatch(r"/lfs-cdn/([0-9a-f]{64})", path)
        repo_id, file_path = query.get("repo", [""])[0], query.get("path", [""])[0]
        entry = None
        if match:
            entry = next((e for r in self.repos.values() for c in r.commits.values() for e in c.values()
                          if e.lfs and e.sha256 == match.group(1)), None)
        if entry is None:
            return _send(h, 403, {"Content-Type": "application/xml"}, b"<Error><Code>AccessDenied</Code></Error>")
        name = file_path.rsplit("/", 1)[-1]
        return self._send_file(h, (repo_id, file_path), entry.data,
                               {"ETag": f'"{entry.sha256}"', "Content-Disposition": f'attachment; filename="{name}"'})

    def _send_file(self, h, key: tuple[str, str], data: bytes, headers: dict[str, str]) -> None:  # noqa: ANN001
        size = len(data)
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        status, start, end = 200, 0, size
        wanted = None if self.ignore_range else h.headers.get("Range")
        if wanted:
            m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", wanted)
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)) + 1, size) if m.group(2) else size
                else:
                    start, end = max(size - int(m.group(2)), 0), size
                if start >= size and size:
                    return _send(h, 416, {"Content-Range": f"bytes */{size}"}, b"")
                status = 206
                headers["Content-Range"] = f"bytes {start}-{max(end - 1, start)}/{size}"
        body = data[start:end]
        h.send_response(status)
        for name, value in headers.items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command == "HEAD":
            return
        with self.lock:
            drops = self._drops.get(key)
            limit = drops.pop(0) if drops else None
        pos = 0
        while pos < len(body):
            piece = body[pos:pos + CHUNK]
            cut = limit is not None and pos + len(piece) > limit
            if cut:
                piece = piece[:max(limit - pos, 0)]
            self._write(h, key, piece)
            if cut:
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
                return
            pos += len(piece)

    def _write(self, h, key: tuple[str, str], piece: bytes) -> None:  # noqa: ANN001
        """Send *piece*, counted before it goes (a client may have read it all before this
        thread runs again) and uncounted if it could not be sent."""
        with self.lock:
            self.sent[key] += len(piece)
        try:
            h.wfile.write(piece)
            h.wfile.flush()
        except OSError:
            with self.lock:
                self.sent[key] -= len(piece)
            raise


def _send(h, status: int, headers: Mapping[str, str], body: bytes) -> None:  # noqa: ANN001
    h.send_response(status)
    for name, value in headers.items():
        h.send_header(name, value)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


def _error(h, status: int, code: str, message: str, extra: Mapping[str, str] | None = None) -> None:  # noqa: ANN001
    headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json; charset=utf-8",
               **(extra or {})}
    _send(h, status, headers, json.dumps({"error": message}).encode())


def _front_matter(readme: bytes | None) -> dict | None:
    """The README's YAML front matter, as the Hub serves it in ``cardData``."""
    import yaml

    if readme is None:
        return None
    text = readme.decode("utf-8", errors="replace")
    m = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, re.S)
    if not m:
        return None
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _info(repo: Repo, sha: str, tree: dict[str, Entry], blobs: bool) -> dict:
    """The info JSON of *repo* at commit *sha* (``/api/models/…/revision/…``)."""
    author = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
    info: dict = {
        "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "author": author,
        "sha": sha,
        "lastModified": DATE,
        "createdAt": DATE,
        "private": repo.private,
        "gated": "manual" if repo.gated else False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": [tree[p].sibling(p) if blobs else {"rfilename": p} for p in sorted(tree)],
        "usedStorage": sum(len(e.data) for e in tree.values()),
    }
    if repo.repo_type == "model":
        info["modelId"] = repo.repo_id
        info["spaces"] = []
        config = tree.get("config.json")
        if config is not None:
            try:
                parsed = json.loads(config.data)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                info["config"] = {k: parsed[k] for k in ("architectures", "model_type") if k in parsed}
    card = _front_matter(tree["README.md"].data if "README.md" in tree else None)
    if card is not None:
        info["cardData"] = card
    return info


@pytest.fixture
def hf_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A started :class:`FakeHub`, with huggingface_hub pointed at it and isolated: ``HF_ENDPOINT``
    is the hub, no token from the environment or from a token file, no offline mode, its
    cache under *tmp_path*. (``HF_ENDPOINT`` is read by huggingface_hub when it is first
    imported; a test calling the library directly passes ``endpoint=hub.url``.)"""
    from huggingface_hub import constants

    hub = FakeHub().start()
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_IMPLICIT_TOKEN",
                 "HF_OIDC_RESOURCE", "HF_HUB_ENABLE_HF_TRANSFER"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    try:
        yield hub
    finally:
        hub.stop()
