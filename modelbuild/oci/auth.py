"""Registry credentials and the two HTTP auth schemes registries use (basic and bearer token).

Credentials come from docker's ``config.json``, the file ``docker login`` (and ``oras login``,
``skopeo login --authfile``) writes, so a user logged in with any of them is logged in here:

* ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``;
* ``credHelpers[host]`` first, then ``auths[host]`` (``auth`` = base64 ``user:password``, or
  ``username``/``password``), then ``credsStore``; a helper is ``docker-credential-<name> get``
  with the host on stdin, answering ``{"Username": ..., "Secret": ...}``.

We do not reuse oras-py's lookup (``oras.auth``): it ignores ``$DOCKER_CONFIG``, matches the
``auths`` key only by the exact host string (``https://host`` keys written by older docker
versions are missed), and logs a helper's stderr, which we prefer not to show.

Bearer tokens are fetched per the ``WWW-Authenticate`` challenge (realm, service, scope) and
cached per set of scopes until they expire. The token service is no more trusted than the
registry: its answer is read within a size limit, a realm that is not an HTTP URL, an answer
that is not a JSON object or a token that is not a string fit for a header is an
:class:`AuthError` (one line), never a crash. A secret never reaches a log or an exception:
:meth:`Auth.mask` replaces every secret this object knows with ``***`` and every message the
registry client raises passes through it.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from modelbuild.errors import EXIT_BUILD_FAILED, ModelbuildError
from modelbuild.oci.verify import shown

DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
HELPER_TIMEOUT = 30
TOKEN_MAX = 1 << 20  # bytes of a token answer read when the caller gives no reader of its own
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what an Authorization header can carry


class AuthError(ModelbuildError):
    """Credentials could not be found, read, or were refused."""

    exit_code = EXIT_BUILD_FAILED


class TokenServiceUnavailable(AuthError):
    """The token service failed in a way worth retrying (connection, 5xx, 429)."""


@dataclass(frozen=True)
class Credentials:
    """A username and secret; ``repr`` never shows the secret."""

    username: str
    password: str = field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def secrets(self) -> list[str]:
        raw = f"{self.username}:{self.password}"
        return [self.password, base64.b64encode(raw.encode()).decode()]


def docker_config_path() -> Path:
    """Where docker keeps its config: ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``."""
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def _host_of(key: str) -> str:
    """``https://host:5000/v1/`` → ``host:5000``: config keys come with and without scheme."""
    key = re.sub(r"^[a-z]+://", "", key.strip())
    return key.split("/", 1)[0]


def _aliases(host: str) -> set[str]:
    if host in DOCKER_HUB_KEYS:
        return {_host_of(k) for k in DOCKER_HUB_KEYS}
    return {host}


def credentials_from_docker_config(host: str, path: Path | None = None) -> Credentials | None:
    """The credentials docker would use for *host*, or None where there are none."""
    path = path or docker_config_path()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read docker config {path}: {exc}") from None
    if not isinstance(config, dict):
        raise AuthError(f"docker config {path} is not a JSON object")
    names = _aliases(host)
    helpers = config.get("credHelpers") or {}
    for key, helper in helpers.items():
        if _host_of(key) in names:
            return _from_helper(helper, key)
    for key, entry in (config.get("auths") or {}).items():
        if _host_of(key) not in names or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise AuthError(f"docker config {path}: the auth entry for {host} is not base64 user:password") from None
            return Credentials(user, password)
        if entry.get("username") and entry.get("password"):
            return Credentials(entry["username"], entry["password"])
        if entry.get("identitytoken"):
            raise AuthError(f"docker config {path}: {host} uses an identity token, which modelbuild does not support yet",
                            hint="log in with a username and password or a credential helper")
    if config.get("credsStore"):
        return _from_helper(config["credsStore"], host)
    return None


def _from_helper(helper: str, server: str) -> Credentials | None:
    """Ask ``docker-credential-<helper> get``; its stderr is not shown (it may echo input)."""
    binary = f"docker-credential-{helper}"
    try:
        proc = subprocess.run([binary, "get"], input=server.encode(), capture_output=True, timeout=HELPER_TIMEOUT, check=False)
    except FileNotFoundError:
        raise AuthError(f"credential helper {binary} is not installed",
                        hint="install it or remove it from the docker config") from None
    except subprocess.TimeoutExpired:
        raise AuthError(f"credential helper {binary} did not answer in {HELPER_TIMEOUT}s") from None
    if proc.returncode != 0:
        if b"credentials not found" in proc.stdout.lower() + proc.stderr.lower():
            return None
        raise AuthError(f"credential helper {binary} failed for {server} (exit code {proc.returncode})")
    try:
        payload = json.loads(proc.stdout)
        user, secret = payload["Username"], payload["Secret"]
    except (ValueError, KeyError, TypeError):
        raise AuthError(f"credential helper {binary} answered something that is not credentials") from None
    if user == "<token>":
        raise AuthError(f"credential helper {binary} gave an identity token for {server}; not supported yet")
    return Credentials(user, secret)


_CHALLENGE_PARAM = re.compile(r'([a-zA-Z_]+)="([^"]*)"|([a-zA-Z_]+)=([^,\s]+)')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…",scope="…"`` → ``("bearer", {...})``."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for m in _CHALLENGE_PARAM.finditer(rest):
        if m.group(1):
            params[m.group(1).lower()] = m.group(2)
        else:
            params[m.group(3).lower()] = m.group(4)
    return scheme.lower(), params


@dataclass
class _Token:
    value: str
    expires: float


class Auth:
    """Credentials for one registry host plus the tokens obtained with them.

    *credentials* given explicitly win; otherwise they are looked up lazily in docker's
    config the first time the registry asks for them (anonymous pulls never read it).
    Thread-safe: transfers share one ``Auth``.
    """

    def __init__(self, credentials: Credentials | None = None, *, docker_config: Path | None = None,
                 use_docker_config: bool = True) -> None:
        self._credentials = credentials
        self._looked_up = credentials is not None or not use_docker_config
        self._docker_config = docker_config
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._secrets: set[str] = set(credentials.secrets() if credentials else [])
        self.scheme: str | None = None  # "basic" or "bearer" once the registry said which
        self.challenge: dict[str, str] = {}

    def credentials(self, host: str) -> Credentials | None:
        with self._lock:
            if not self._looked_up:
                self._credentials = credentials_from_docker_config(host, self._docker_config)
                self._looked_up = True
                if self._credentials:
                    self._secrets.update(self._credentials.secrets())
            return self._credentials

    def mask(self, text: str) -> str:
        """*text* with every secret this object has seen replaced by ``***``."""
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    def header(self, scopes: Iterable[str]) -> str | None:
        """The Authorization header to send proactively, if we already know what works."""
        if self.scheme == "basic" and self._credentials:
            return self._credentials.basic_header()
        if self.scheme == "bearer":
            token = self._tokens.get(tuple(sorted(scopes)))
            if token and token.expires > time.monotonic():
                return "Bearer " + token.value
        return None

    def answer(self, session: requests.Session, host: str, www_authenticate: str, scopes: Iterable[str],
               *, verify: bool | str, timeout: Any,
               read_body: Callable[[requests.Response], bytes] | None = None) -> str:
        """Answer a 401 challenge: the Authorization header to retry with.

        Raises :class:`AuthError` (masked) where we have no credentials for a basic
        challenge, the token service refuses us or answers something that is not a token;
        :class:`TokenServiceUnavailable` for what is worth retrying. *read_body* reads the
        token service's answer within the caller's limits (the registry client's are size,
        stall and rate); it may raise either error, or a ``requests`` one (retried).
        """
        scheme, params = parse_challenge(www_authenticate)
        creds = self.credentials(host)
        if scheme == "basic":
            if creds is None:
                raise AuthError(f"{host} requires authentication and no credentials were found for it",
                                hint=f"log in with `docker login {host}` or set DOCKER_CONFIG")
            self.scheme = "basic"
            return creds.basic_header()
        if scheme != "bearer" or "realm" not in params:
            raise AuthError(f"{host} asks for an unsupported authentication scheme {shown(scheme)!r}")
        if not re.match(r"https?://[^/?#\s]", params["realm"]):
            raise AuthError(f"{host} names a token service at {shown(params['realm'])!r}, which is not an HTTP URL")
        asked = tuple(sorted(set(scopes)))
        wanted = set(asked)
        if params.get("scope"):
            wanted.update(params["scope"].split(" "))
        key = tuple(sorted(wanted))
        query: list[tuple[str, str]] = [("scope", s) for s in key]
        if params.get("service"):
            query.append(("service", params["service"]))
        headers = {"Authorization": creds.basic_header()} if creds else {}
        try:
            # Streamed and not redirected: requests would read a redirect's body, or this
            # one, whole, however large; read_body reads it within limits.
            resp = session.get(params["realm"], params=query, headers=headers, verify=verify, timeout=timeout,
                               stream=True, allow_redirects=False)
            try:
                if resp.status_code == 429 or resp.status_code >= 500:
                    raise TokenServiceUnavailable(f"the token service of {host} answered {resp.status_code}")
                if resp.status_code in (401, 403):
                    who = f"as {creds.username!r}" if creds else "anonymously"
                    raise AuthError(f"the token service of {host} refused access {who} to {shown(' '.join(key))}",
                                    hint="check the credentials in the docker config" if creds else
                                    f"log in with `docker login {host}` or set DOCKER_CONFIG")
                if resp.status_code != 200:
                    raise AuthError(f"the token service of {host} answered {resp.status_code} without a token")
                raw = read_body(resp) if read_body else _read_token_body(resp, host)
            finally:
                resp.close()
        except (requests.RequestException, ValueError) as exc:
            raise TokenServiceUnavailable(f"cannot reach the token service of {host} ({type(exc).__name__})") from None
        value, ttl = _parse_token(raw, host)
        with self._lock:
            self._secrets.add(value)
            # Renew a little early so a token never expires in the middle of a request.
            token = _Token(value, time.monotonic() + max(ttl - 10, ttl / 2))
            self._tokens[key] = self._tokens[asked] = token
            self.scheme = "bearer"
            self.challenge = params
        return "Bearer " + value


def _read_token_body(resp: requests.Response, host: str) -> bytes:
    """At most ``TOKEN_MAX`` bytes of a token answer (for callers that give no reader)."""
    data = resp.raw.read(TOKEN_MAX + 1, decode_content=True)
    if len(data) > TOKEN_MAX:
        raise AuthError(f"the token service of {host} answered with more than {TOKEN_MAX} bytes")
    return data


def _parse_token(raw: bytes, host: str) -> tuple[str, float]:
    """The token and its lifetime in seconds from a token service's JSON answer; anything
    else is an :class:`AuthError` naming the service. A token must be visible ASCII: it goes
    into a header, where a newline would be a header of the service's choosing."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise AuthError(f"the token service of {host} answered something that is not JSON") from None
    if not isinstance(body, dict):
        raise AuthError(f"the token service of {host} answered JSON that is not an object")
    value = body.get("token") or body.get("access_token")
    if not value:
        raise AuthError(f"the token service of {host} answered 200 without a token")
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise AuthError(f"the token service of {host} answered a token that is not a string of visible ASCII")
    return value, _lifetime(body.get("expires_in"))


def _lifetime(value: Any) -> float:
    """Seconds from ``expires_in`` (a number, or a string of one); absent or nonsense is the
    spec's default of 60."""
    try:
        seconds = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else 0.0
    except (ValueError, OverflowError):
        seconds = 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 60.0


# -- login / logout ----------------------------------------------------------------------
def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read docker config {path}: {exc}") from None
    if not isinstance(config, dict):
        raise AuthError(f"docker config {path} is not a JSON object")
    return config


def _write_config(path: Path, config: dict[str, Any]) -> None:
    """Replace *path* atomically with *config*, readable by its owner only (0600). A
    symlinked config (dotfiles) is written where the link points."""
    import tempfile

    real = Path(os.path.realpath(path))
    real.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=".config.json.")  # created 0600
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh, indent="\t")
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, real)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _helper_for(config: dict[str, Any], host: str) -> str | None:
    names = _aliases(host)
    for key, helper in (config.get("credHelpers") or {}).items():
        if _host_of(key) in names:
            return helper
    return config.get("credsStore") or None


def _run_helper(helper: str, action: str, payload: bytes) -> subprocess.CompletedProcess:
    binary = f"docker-credential-{helper}"
    try:
        return subprocess.run([binary, action], input=payload, capture_output=True, timeout=HELPER_TIMEOUT, check=False)
    except FileNotFoundError:
        raise AuthError(f"credential helper {binary} is not installed",
                        hint="install it or remove it from the docker config") from None
    except subprocess.TimeoutExpired:
        raise AuthError(f"credential helper {binary} did not answer in {HELPER_TIMEOUT}s") from None


def store_credentials(host: str, credentials: Credentials, path: Path | None = None) -> str:
    """Save *credentials* for *host* where docker would: the configured credential helper
    (``docker-credential-X store``) or ``auths`` in config.json. Returns where they went."""
    path = path or docker_config_path()
    config = _read_config(path)
    helper = _helper_for(config, host)
    if helper:
        payload = json.dumps({"ServerURL": host, "Username": credentials.username,
                              "Secret": credentials.password}).encode()
        proc = _run_helper(helper, "store", payload)
        if proc.returncode != 0:  # its output is not shown: it may echo what it was given
            raise AuthError(f"credential helper docker-credential-{helper} could not store the credentials for {host} "
                            f"(exit code {proc.returncode})")
        return f"credential helper docker-credential-{helper}"
    auths = {k: v for k, v in (config.get("auths") or {}).items() if _host_of(k) not in _aliases(host)}
    raw = f"{credentials.username}:{credentials.password}".encode()
    auths[host] = {"auth": base64.b64encode(raw).decode()}
    config["auths"] = auths
    _write_config(path, config)
    return str(path)


def erase_credentials(host: str, path: Path | None = None) -> bool:
    """Remove the credentials for *host* from config.json and from its credential helper;
    True when there were any."""
    path = path or docker_config_path()
    config = _read_config(path)
    found = False
    auths = config.get("auths") or {}
    kept = {k: v for k, v in auths.items() if _host_of(k) not in _aliases(host)}
    if len(kept) != len(auths):
        found = True
        config["auths"] = kept
        _write_config(path, config)
    helper = _helper_for(config, host)
    if helper:
        proc = _run_helper(helper, "erase", host.encode())
        if proc.returncode == 0:
            found = True
        elif b"not found" not in (proc.stdout + proc.stderr).lower():
            raise AuthError(f"credential helper docker-credential-{helper} could not erase the credentials for {host} "
                            f"(exit code {proc.returncode})")
    return found
