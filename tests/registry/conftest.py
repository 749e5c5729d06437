"""A real registry for the registry client's tests: Debian's ``docker-registry`` (CNCF
distribution 2.8) on 127.0.0.1, once anonymous and once behind htpasswd basic auth, plus a
fault-injecting proxy in front of it. No mocks: every byte goes through a real server.

CI must install the package (``apt-get install -y docker-registry``); without it these
tests skip locally and fail under ``CI=true``, so a missing install step cannot hide.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faultproxy import FaultProxy
from hostile_registry import HostileRegistry

from modelbuild.oci.registry import Registry
from support import missing, require_tool

SETUP = "scripts/setup-system installs it"


USER, PASSWORD = "mbuser", "s3cret-Pa55-word!"


@dataclass
class RegistryServer:
    host: str  # 127.0.0.1:PORT
    root: Path  # storage directory
    proc: subprocess.Popen
    log: Path

    @property
    def address(self) -> tuple[str, int]:
        name, port = self.host.rsplit(":", 1)
        return name, int(port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bcrypt_hash(password: str) -> str:
    """An htpasswd bcrypt hash: the ``bcrypt`` package, else libc's crypt, else ``htpasswd``."""
    try:
        import bcrypt

        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt  # removed in Python 3.13

            if crypt.METHOD_BLOWFISH in crypt.methods:
                return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=32))
        except ImportError:
            pass
    if shutil.which("htpasswd"):
        out = subprocess.run(["htpasswd", "-nbB", "-C", "5", USER, password], capture_output=True, check=True)
        return out.stdout.decode().strip().split(":", 1)[1]
    missing("no bcrypt: pip install bcrypt, or apt-get install apache2-utils (htpasswd)")


def _start(root: Path, htpasswd: Path | None = None, token: dict | None = None,
           tls: tuple[Path, Path] | None = None) -> RegistryServer:
    registry_bin = require_tool("docker-registry", f"apt-get install -y docker-registry; {SETUP}")
    port = _free_port()
    host = f"127.0.0.1:{port}"
    storage = root / "storage"
    storage.mkdir(parents=True)
    config = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}}},
        "http": {"addr": host, "secret": "modelbuild-test-secret"},
    }
    if htpasswd:
        config["auth"] = {"htpasswd": {"realm": "modelbuild-test", "path": str(htpasswd)}}
    if token:
        config["auth"] = {"token": token}
    if tls:
        config["http"]["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    config_path = root / "config.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    log = root / "registry.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([registry_bin, "serve", str(config_path)], stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{'https' if tls else 'http'}://{host}/v2/", timeout=1, verify=False).status_code in (200, 401):
                return RegistryServer(host, storage, proc, log)
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"docker-registry did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)


def _stop(server: RegistryServer) -> None:
    server.proc.kill()
    server.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """An anonymous registry, shared by the session (tests use their own repositories)."""
    server = _start(tmp_path_factory.mktemp("registry"))
    yield server
    _stop(server)


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """A registry of the test's own, its storage in the test's ``tmp_path``: for a test that
    pushes a gigabyte, which the shared registry would keep on disk for the rest of the
    session (pytest removes a passed test's ``tmp_path`` as it ends: pyproject.toml)."""
    server = _start(tmp_path / "own-registry")
    yield server
    _stop(server)


@pytest.fixture
def own_proxy(own_registry: RegistryServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of :func:`own_registry`."""
    with FaultProxy(own_registry.address) as p:
        yield p


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry behind htpasswd basic auth: user ``USER``, password ``PASSWORD``."""
    root = tmp_path_factory.mktemp("auth-registry")
    htpasswd = root / "htpasswd"
    htpasswd.write_text(f"{USER}:{_bcrypt_hash(PASSWORD)}\n")
    server = _start(root, htpasswd)
    yield server
    _stop(server)


class TokenServer:
    """A bearer token service as Docker Hub, GHCR or Harbor run one: checks basic
    credentials, grants what the scopes ask (anonymous: pull only), signs an RS256 JWT with
    a self-signed certificate the registry trusts (``openssl`` does the signing; the
    registry verifies it). Counts the tokens it issues, so tests can see the cache work."""

    def __init__(self, root: Path) -> None:
        require_tool("openssl", f"apt-get install -y openssl; {SETUP}")  # signs the test tokens
        self.key, self.cert = root / "token.key", root / "token.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=modelbuild-test-token", "-keyout", str(self.key), "-out", str(self.cert)],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True,
                             capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.issued: list[tuple[str | None, list[str]]] = []  # (user, scopes) per token
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                query = urllib.parse.urlparse(self.path)
                params = urllib.parse.parse_qs(query.query)
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if (user, password) != (USER, PASSWORD):
                        self.send_response(401)
                        self.end_headers()
                        return
                scopes = params.get("scope", [])
                body = json.dumps({"token": server.sign(user, scopes), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.proxy: FaultProxy | None = None
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def sign(self, user: str | None, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, *name, actions = scope.split(":")
            allowed = [a for a in actions.split(",") if user or a == "pull"]
            access.append({"type": kind, "name": ":".join(name), "actions": allowed})
        now = int(time.time())
        claims = {"iss": "modelbuild-test-issuer", "sub": user or "", "aud": "modelbuild-test", "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
        signing_input = f"{b64(header)}.{b64(claims)}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing_input.encode(),
                             check=True, capture_output=True).stdout
        self.issued.append((user, scopes))
        return signing_input + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryServer, TokenServer]]:
    """A registry behind bearer token auth, with its token service."""
    root = tmp_path_factory.mktemp("token-registry")
    tokens = TokenServer(root)
    # The realm the registry announces goes through a fault proxy, so a test can make the
    # token service flaky (``tokens.proxy.script([...])``).
    tokens.proxy = FaultProxy(tokens.httpd.server_address[:2]).start()
    server = _start(root, token={"realm": f"http://{tokens.proxy.host}/token", "service": "modelbuild-test",
                                 "issuer": "modelbuild-test-issuer", "rootcertbundle": str(tokens.cert)})
    yield server, tokens
    _stop(server)
    tokens.proxy.stop()
    tokens.stop()


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry on HTTPS with a self-signed certificate (what ``insecure`` is for)."""
    require_tool("openssl", f"apt-get install -y openssl; {SETUP}")  # makes the test certificate
    root = tmp_path_factory.mktemp("tls-registry")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = _start(root, tls=(cert, key))
    yield server
    _stop(server)


@pytest.fixture(autouse=True)
def empty_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never read the developer's own ~/.docker/config.json: tests write their own."""
    path = tmp_path / "docker-config"
    path.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(path))
    return path


def write_docker_config(directory: Path, host: str, user: str = USER, password: str = PASSWORD) -> None:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of the anonymous registry, with no faults until a test sets some."""
    with FaultProxy(registry.address) as p:
        yield p


@pytest.fixture
def client() -> Iterator[Callable[..., Registry]]:
    """``client(host, **kw)``: a plain-HTTP :class:`Registry`, closed after the test."""
    made: list[Registry] = []

    def make(host: str, **kw) -> Registry:
        kw.setdefault("plain_http", True)
        kw.setdefault("backoff", 0.01)
        r = Registry(host, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def blob_file(tmp_path: Path) -> Callable[[int], tuple[Path, str]]:
    """``blob_file(size)``: a file of random bytes and its digest (random, so no test's blob
    is already in the shared registry)."""
    counter = iter(range(1_000_000))

    def make(size: int) -> tuple[Path, str]:
        path = tmp_path / f"blob-{next(counter)}"
        hasher = hashlib.sha256()
        with open(path, "wb") as fh:
            left = size
            while left:
                chunk = os.urandom(min(left, 8 << 20))
                hasher.update(chunk)
                fh.write(chunk)
                left -= len(chunk)
        return path, "sha256:" + hasher.hexdigest()

    return make


def sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


@pytest.fixture
def helpers():
    """Plain functions the test module needs, handed over as a fixture (no package import)."""

    class H:
        sha256_file = staticmethod(sha256_file)
        write_docker_config = staticmethod(write_docker_config)
        user, password = USER, PASSWORD

    return H


@pytest.fixture
def hostile() -> Iterator[HostileRegistry]:
    """A malicious registry on 127.0.0.1 (``tests/registry/hostile_registry.py``): scripted per
    test with ``hostile.route(method, path, Answer(...))``, stopped at teardown."""
    server = HostileRegistry()
    yield server
    server.stop()
