"""The built-in ``hf`` source: ``FROM hf://org/name[@revision]``, a Hugging Face Hub repository.

``hf://datasets/org/name[@revision]`` names a dataset repository; ``hf://models/…`` is the
same as ``hf://…``. The revision is a branch (``main`` when none is given), a tag, a pull
request ref (``refs/pr/1``) or a commit id; everything after ``@`` is the revision. A path
inside the repository is not part of the reference: the build file's ``MODEL``/``CONFIG``…
patterns (or ``--include``) choose the files.

The three calls of :class:`modelbuild.api.RemoteSource`:

``pin``
    A full 40-hex commit id pins itself, with no network: the identity is
    ``hf://org/name@<commit>``. Anything else asks the Hub (``HfApi.model_info``) which commit
    the revision is now, and pins that.
``listing``
    ``model_info(files_metadata=True)`` at the commit: every file with its exact size, the
    SHA-256 of an LFS file (``sha256:`` digest) and the Git blob id of any other file (which
    the core verifies as the bytes arrive); a kind guessed from the name, so a build file
    that names no file packages the weights, configs, code and docs a loader needs; and the
    defaults: ``descriptor.sourceURL``/``revision``, ``licenses`` from the model card, a name.
``open``
    ``GET …/resolve/<commit>/<path>`` with ``Range: bytes=N-`` to resume, following the
    Hub's redirect to its CDN. The token goes to the endpoint's own origin and nowhere else.

The endpoint is ``HF_ENDPOINT`` (a mirror) or huggingface_hub's default, and the token is
huggingface_hub's own (``HF_TOKEN``, ``hf auth login``'s token file); it is never shown.
huggingface_hub is imported only when a call needs it: ``pip install 'modelbuild[hf]'``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from modelbuild.api import (
    FetchError,
    ModelfileError,
    RemoteFile,
    SourceListing,
    SourcePin,
    artifact_path_problem,
    hookimpl,
)

DEFAULT_ENDPOINT = "https://huggingface.co"
INSTALL_HINT = "pip install 'modelbuild[hf]'"
LOGIN_HINT = "log in with `hf auth login`, or set HF_TOKEN to a token that can read it"
MAX_FILES = 100_000
MAX_FILE_SIZE = 1 << 42  # 4 TiB: no Hub file is near it; a larger size is a lie
MAX_REDIRECTS = 10
REQUESTS_CHUNK = 64 << 10
LISTING_TIMEOUT = 60.0  # seconds for the info call (a big repository's listing takes a while)

_COMMIT = re.compile(r"[0-9a-fA-F]{40}")
_NAME_PART = re.compile(r"\w(?:[\w.-]*\w)?", re.ASCII)  # the Hub's rule: [\w.-], starting and ending with \w
_REDIRECTS = (301, 302, 303, 307, 308)


# -- references ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Ref:
    """A parsed ``hf://`` reference: repository type and id, and the revision (None: ``main``)."""

    repo_type: str  # "model" or "dataset"
    repo_id: str
    revision: str | None

    def uri(self, revision: str | None = None) -> str:
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        rev = revision or self.revision
        return f"hf://{prefix}{self.repo_id}" + (f"@{rev}" if rev else "")

    def page(self, endpoint: str) -> str:
        """The repository's page on *endpoint*: what ``sourceURL`` records."""
        return f"{endpoint}/{'datasets/' if self.repo_type == 'dataset' else ''}{self.repo_id}"


def _parse(reference: str) -> _Ref:
    if not reference.startswith("hf://"):
        raise ModelfileError(f"{reference}: not an hf:// reference", hint="hf://org/name[@revision]")
    text = reference[len("hf://"):]
    repo, at, revision = text.partition("@")
    repo_type = "model"
    first, _, rest = repo.partition("/")
    if first in ("models", "datasets") and rest:
        repo_type, repo = first[:-1], rest
    elif first in ("spaces", "kernels", "buckets") and rest:
        raise ModelfileError(f"{reference}: hf:// names a model or a dataset repository, not {first}",
                             hint="hf://org/name or hf://datasets/org/name")
    parts = repo.split("/")
    if not repo or len(parts) > 2 or not all(_NAME_PART.fullmatch(p) for p in parts) or len(repo) > 96 \
            or any("--" in p or ".." in p for p in parts):
        hint = ("a path inside the repository is not part of the reference: choose files with MODEL, CONFIG… "
                "patterns" if len(parts) > 2 else "hf://org/name[@revision]: letters, digits, '-', '_' and '.'")
        raise ModelfileError(f"{reference}: {repo!r} is not a Hugging Face repository id", hint=hint)
    if at:
        if not revision or len(revision) > 255 or re.search(r"[\x00-\x20\x7f~^:?*\[\\]", revision) \
                or ".." in revision or revision.startswith("/") or revision.endswith(("/", ".lock")):
            raise ModelfileError(f"{reference}: {revision!r} is not a revision",
                                 hint="a branch, a tag or a commit id after '@'")
        if _COMMIT.fullmatch(revision):
            revision = revision.lower()
    return _Ref(repo_type, repo, revision if at else None)


def _endpoint() -> str:
    """``HF_ENDPOINT`` as it is now (huggingface_hub reads it once, when first imported), else
    the library's endpoint (its staging setting included), else the Hub's."""
    env = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    if env:
        return env
    try:
        from huggingface_hub import constants
    except ImportError:
        return DEFAULT_ENDPOINT
    return str(constants.ENDPOINT).rstrip("/")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _hub() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.utils
    except ImportError:
        raise ModelfileError("hf:// references need the huggingface_hub package, which is not installed",
                             hint=INSTALL_HINT) from None
    return huggingface_hub


# -- errors -----------------------------------------------------------------------------------------
# Transfer failures worth another try, by the client library that raised them (huggingface_hub
# uses httpx2 today, httpx in 1.x, requests before): (package, class name anywhere in the MRO).
_TRANSIENT = {
    "httpx": {"TimeoutException", "NetworkError", "RemoteProtocolError", "ProxyError"},
    "httpx2": {"TimeoutException", "NetworkError", "RemoteProtocolError", "ProxyError"},
    "httpcore": {"TimeoutException", "NetworkError", "RemoteProtocolError", "ProxyError"},
    "requests": {"ConnectionError", "Timeout", "ChunkedEncodingError"},
    "urllib3": {"ProtocolError", "TimeoutError", "NewConnectionError"},
}


def _transient(exc: BaseException) -> bool:
    package = type(exc).__module__.split(".")[0]
    if package in _TRANSIENT:
        return any(cls.__name__ in _TRANSIENT[package] for cls in type(exc).__mro__)
    return isinstance(exc, (ConnectionError, TimeoutError))


def _detail(exc: BaseException) -> str:
    """The first line of *exc*'s message, with any URL query left out (a signed URL's
    signature is a secret)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return re.sub(r"\?[^\s'\")]*", "?…", text)[:200]


def _network_error(hf: Any, exc: Exception, what: str, endpoint: str) -> Exception | None:
    """A FetchError for a network failure or offline mode; None for anything else."""
    offline = getattr(hf.utils, "OfflineModeIsEnabled", ())
    if offline and isinstance(exc, offline):
        return FetchError(f"{what}: huggingface_hub is in offline mode (HF_HUB_OFFLINE)",
                          hint="unset HF_HUB_OFFLINE, or pin a full commit id whose files were fetched before")
    client_error = type(exc).__module__.split(".")[0] in _TRANSIENT  # an HTTP client's own error
    if _transient(exc) or client_error:
        detail = _detail(exc)
        return FetchError(f"{what}: the connection failed ({type(exc).__name__}{': ' if detail else ''}{detail})",
                          retryable=_transient(exc), hint=f"check the network and the endpoint, {endpoint} "
                                                           "(HF_ENDPOINT)")
    return None


def _api_error(hf: Any, exc: Exception, ref: _Ref, revision: str, endpoint: str) -> Exception | None:
    """What an ``HfApi`` call's exception means for the build file; None: not a Hub answer."""
    utils = hf.utils
    what = ref.uri(revision)
    if isinstance(exc, utils.GatedRepoError):  # before RepositoryNotFoundError: it is one
        return ModelfileError(f"{what}: {ref.repo_id} is gated",
                              hint=f"accept its terms at {ref.page(endpoint)}, then {LOGIN_HINT}")
    if isinstance(exc, utils.RepositoryNotFoundError):
        return ModelfileError(f"{what}: no repository {ref.repo_id} on {endpoint}, or it is private",
                              hint=f"check the name; for a private repository, {LOGIN_HINT}")
    if isinstance(exc, utils.RevisionNotFoundError):
        return ModelfileError(f"{what}: {ref.repo_id} has no revision {revision!r}",
                              hint="name a branch, a tag or a full 40-character commit id")
    if isinstance(exc, utils.HfHubHTTPError):
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        if status in (408, 429) or (isinstance(status, int) and status >= 500):
            return FetchError(f"{what}: {endpoint} answered {status}", retryable=True)
        if status == 401:
            return ModelfileError(f"{what}: {endpoint} refused the Hugging Face token", hint=LOGIN_HINT)
        if status == 403:
            return ModelfileError(f"{what}: access to {ref.repo_id} is forbidden", hint=LOGIN_HINT)
        return FetchError(f"{what}: {endpoint} answered {status}")
    return _network_error(hf, exc, what, endpoint)


def _status_error(status: int, headers: Any, what: str, ref: _Ref, endpoint: str) -> FetchError:
    """A download's error answer, as the Hub words it (``X-Error-Code``)."""
    code = headers.get("x-error-code", "")
    message = headers.get("x-error-message", "")
    if status in (408, 429) or status >= 500:
        return FetchError(f"{what}: the server answered {status}", retryable=True)
    if code == "GatedRepo":
        return FetchError(f"{what}: {ref.repo_id} is gated", hint=f"accept its terms at {ref.page(endpoint)}, "
                                                                  f"then {LOGIN_HINT}")
    if status == 401 and message == "Invalid credentials in Authorization header":
        return FetchError(f"{what}: {endpoint} refused the Hugging Face token", hint=LOGIN_HINT)
    if code == "RepoNotFound" or status == 401:
        return FetchError(f"{what}: no repository {ref.repo_id} on {endpoint}, or it is private",
                          hint=f"check the name; for a private repository, {LOGIN_HINT}")
    if code == "RevisionNotFound":
        return FetchError(f"{what}: the revision is gone from {ref.repo_id}", hint="check the reference")
    if status == 404:
        return FetchError(f"{what}: not found", hint="check the file name and the revision")
    if status == 403:
        return FetchError(f"{what}: access is forbidden", hint=LOGIN_HINT)
    if status == 416:
        return FetchError(f"{what}: the server has no bytes at the offset asked for (416)")
    return FetchError(f"{what}: the server answered {status}")


# -- kinds and defaults ------------------------------------------------------------------------------
_PICKLED_WEIGHTS = re.compile(r"(pytorch_model|model|adapter_model|diffusion_pytorch_model|consolidated)"
                              r"([-.][\w.-]*)?\.(bin|pt|pth)")
_CONFIG_NAMES = {"config.json", "generation_config.json", "special_tokens_map.json", "added_tokens.json",
                 "merges.txt", "params.json", "chat_template.json", "chat_template.jinja"}
_DOC_PREFIXES = ("readme", "license", "licence", "notice", "copying", "use_policy")


def _kind(path: str, *, dataset: bool, has_safetensors: bool) -> str:
    """How a file is packaged when the build file names none: the weights (safetensors over
    pickles when a repository has both, as transformers loads them), what a loader reads
    beside them, code and docs; ``""`` for the rest (training state, other frameworks'
    copies, ``.gitattributes``)."""
    name = path.rsplit("/", 1)[-1].lower()
    if name.startswith("."):
        return ""
    if name.endswith(".md") or name.startswith(_DOC_PREFIXES):
        return "doc"
    if name.endswith(".py"):
        return "code"
    if dataset:
        return "dataset"
    if name.endswith((".safetensors", ".gguf", ".onnx", ".onnx_data", ".onnx.data")):
        return "model"
    if _PICKLED_WEIGHTS.fullmatch(name):
        return "" if has_safetensors else "model"
    if name.endswith(".index.json"):  # a sharded checkpoint's map: with the weights it maps
        return "" if has_safetensors and not name.endswith(".safetensors.index.json") else "config"
    if (name in _CONFIG_NAMES or name.endswith(("config.json", ".tiktoken")) or name.startswith(("tokenizer", "vocab."))
            or name.startswith("chat_template")):
        return "config"
    return ""


# Hugging Face license ids → SPDX ids (modelbuild's generate command reads model cards alike).
_HF_TO_SPDX = {
    "gpl-2.0": "GPL-2.0-only", "gpl-3.0": "GPL-3.0-only", "lgpl-2.1": "LGPL-2.1-only", "lgpl-3.0": "LGPL-3.0-only",
    "agpl-3.0": "AGPL-3.0-only", "lgpl-lr": "LGPLLR", "bsd": "BSD-3-Clause", "unlicense": "Unlicense",
    "wtfpl": "WTFPL", "bsl-1.0": "BSL-1.0", "postgresql": "PostgreSQL", "zlib": "Zlib", "ncsa": "NCSA",
}
_SPDX_IDS = (
    "Apache-2.0", "MIT", "BSD-2-Clause", "BSD-3-Clause", "BSD-3-Clause-Clear", "ISC", "MPL-2.0", "EPL-2.0",
    "EUPL-1.2", "Artistic-2.0", "CC0-1.0", "CC-BY-2.0", "CC-BY-3.0", "CC-BY-4.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0",
    "CC-BY-NC-2.0", "CC-BY-NC-3.0", "CC-BY-NC-4.0", "CC-BY-NC-SA-2.0", "CC-BY-NC-SA-3.0", "CC-BY-NC-SA-4.0",
    "CC-BY-NC-ND-4.0", "CC-BY-ND-4.0", "OFL-1.1", "OSL-3.0", "AFL-3.0", "ECL-2.0", "LPPL-1.3c", "MS-PL", "ODbL-1.0",
    "PDDL-1.0", "ODC-By-1.0", "C-UDA-1.0", "CDLA-Permissive-1.0", "CDLA-Permissive-2.0", "CDLA-Sharing-1.0",
    "GFDL-1.3-only",
)
_SPDX_BY_LOWER = {spdx.lower(): spdx for spdx in _SPDX_IDS}


def _spdx(value: object, license_name: object = None) -> str | None:
    """A Hub license id as SPDX (``LicenseRef-<id>`` for the licences SPDX has no id for)."""
    if not isinstance(value, str):
        return None
    low = value.strip().lower()
    if low in ("", "unknown", "none"):
        return None
    if low == "other":
        value = license_name if isinstance(license_name, str) else ""
        low = ""
    if low in _HF_TO_SPDX:
        return _HF_TO_SPDX[low]
    if low in _SPDX_BY_LOWER:
        return _SPDX_BY_LOWER[low]
    idstring = re.sub(r"[^A-Za-z0-9.-]+", "-", value.strip()).strip("-")
    return f"LicenseRef-{idstring}" if idstring else None


def _licenses(card: Any) -> list[str]:
    if card is None:
        return []
    value = getattr(card, "license", None)
    values = value if isinstance(value, list) else [value]
    out: list[str] = []
    for v in values:
        spdx = _spdx(v, getattr(card, "license_name", None))
        if spdx and spdx not in out:
            out.append(spdx)
    return out


def _tag_name(repo_id: str) -> str | None:
    """The repository's name as an artifact name (a valid tag: ``Qwen2-0.5B`` → ``qwen2-0.5b``)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", repo_id.rsplit("/", 1)[-1].lower()).lstrip(".-")[:128]
    return name or None


# -- the source -----------------------------------------------------------------------------------------
class HfSource:
    """``hf://`` references (see the module docstring). Keeps the info the pin call fetched,
    so the listing that follows at once costs no second request."""

    name = "hf"
    schemes = ("hf",)
    version = "1"
    summary = "a Hugging Face Hub repository: hf://org/name[@revision]"

    def __init__(self) -> None:
        self._infos: dict[str, Any] = {}  # identity → the model_info of its pin (a few at most)

    def pin(self, reference: str, *, network: bool) -> SourcePin | None:
        ref = _parse(reference)
        endpoint = _endpoint()
        if ref.revision and _COMMIT.fullmatch(ref.revision):
            return self._pin(ref, ref.revision, endpoint, requested=ref.revision)
        if not network:
            return None
        requested = ref.revision or "main"
        info = self._info(ref, requested, endpoint)
        sha = getattr(info, "sha", None)
        if not isinstance(sha, str) or not _COMMIT.fullmatch(sha):
            raise FetchError(f"{ref.uri(requested)}: {endpoint} named no commit for it (sha: {sha!r})",
                             hint="HF_ENDPOINT must name a Hugging Face Hub or a faithful mirror")
        pin = self._pin(ref, sha.lower(), endpoint, requested=requested)
        if len(self._infos) >= 8:
            self._infos.clear()
        self._infos[pin.identity] = info
        return pin

    def listing(self, pin: SourcePin) -> SourceListing:
        hf = _hub()
        ref = _parse(pin.identity)
        endpoint = _endpoint()
        sha = ref.revision or ""
        info = self._infos.pop(pin.identity, None) or self._info(ref, sha, endpoint)
        what = ref.uri()
        if getattr(info, "sha", None) not in (None, sha):
            raise FetchError(f"{what}: {endpoint} answered for another commit ({info.sha})")
        siblings = getattr(info, "siblings", None)
        if siblings is None:
            raise FetchError(f"{what}: {endpoint} listed no files", hint="HF_ENDPOINT must name a Hub that lists "
                                                                        "files with their sizes")
        if len(siblings) > MAX_FILES:
            raise FetchError(f"{what} lists {len(siblings)} files, more than {MAX_FILES}; refusing it")
        names = [getattr(s, "rfilename", None) for s in siblings]
        has_safetensors = any(isinstance(n, str) and n.lower().endswith(".safetensors") for n in names)
        files: list[RemoteFile] = []
        seen: set[str] = set()
        for sibling in siblings:
            files.append(self._file(hf, sibling, ref, endpoint, what, seen, has_safetensors))
        dirs = {p[:i] for p in seen for i, c in enumerate(p) if c == "/"}
        if clash := sorted(dirs & seen):
            raise FetchError(f"{what} lists {clash[0]!r} both as a file and as a directory; refusing it")
        descriptor: dict[str, Any] = {"sourceURL": pin.source_url or ref.page(endpoint), "revision": sha}
        if licenses := _licenses(getattr(info, "card_data", None)):
            descriptor["licenses"] = licenses
        return SourceListing(files=tuple(sorted(files, key=lambda f: f.path)), descriptor=descriptor,
                             name=_tag_name(ref.repo_id))

    @contextlib.contextmanager
    def open(self, pin: SourcePin, file: RemoteFile, *, offset: int) -> Iterator[Iterator[bytes]]:
        hf = _hub()
        ref = _parse(pin.identity)
        endpoint = _endpoint()
        what = f"{ref.uri()}: {file.path}"
        # the URL from the pin and the path, under the endpoint in use now: a listing kept from
        # another endpoint never sends the token elsewhere
        url = hf.hf_hub_url(ref.repo_id, file.path, repo_type=ref.repo_type, revision=ref.revision,
                            endpoint=endpoint)
        headers = dict(hf.utils.build_hf_headers())
        headers["Accept-Encoding"] = "identity"  # the file's own bytes, so offsets and sizes are exact
        if offset:
            headers["Range"] = f"bytes={offset}-"
        timeout = float(getattr(hf.constants, "HF_HUB_DOWNLOAD_TIMEOUT", 10) or 10)
        with contextlib.ExitStack() as stack:
            response = _follow(hf, stack, url, headers, timeout, what, endpoint)
            status = response.status_code
            skip = 0
            if status == 206:
                start = _range_start(response.headers.get("content-range", ""))
                if start != offset:
                    raise FetchError(f"{what}: asked for bytes from {offset}, the server sent from {start}")
            elif status == 200:
                skip = offset  # the server ignored the Range: drop what is already here
            else:
                raise _status_error(status, response.headers, what, ref, endpoint)
            yield _chunks(hf, response, skip, what, endpoint)

    # -- helpers ---------------------------------------------------------------------------------------
    @staticmethod
    def _pin(ref: _Ref, sha: str, endpoint: str, *, requested: str) -> SourcePin:
        return SourcePin(identity=ref.uri(sha), source_url=ref.page(endpoint), revision=sha,
                         data={"requested": requested, "endpoint": endpoint})

    @staticmethod
    def _info(ref: _Ref, revision: str, endpoint: str) -> Any:
        hf = _hub()
        try:
            api = hf.HfApi(endpoint=endpoint)
            return api.repo_info(ref.repo_id, repo_type=ref.repo_type, revision=revision, files_metadata=True,
                                 timeout=LISTING_TIMEOUT)
        except Exception as exc:
            error = _api_error(hf, exc, ref, revision, endpoint)
            if error is None:
                raise
            raise error from None

    @staticmethod
    def _file(hf: Any, sibling: Any, ref: _Ref, endpoint: str, what: str, seen: set[str],
              has_safetensors: bool) -> RemoteFile:
        path = getattr(sibling, "rfilename", None)
        if not isinstance(path, str):
            raise FetchError(f"{what} lists a file without a name; refusing it")
        if problem := artifact_path_problem(path) or ("ends with '/'" if path.endswith("/") else None):
            raise FetchError(f"{what} lists a file {path!r} that {problem}; refusing it")
        if path in seen:
            raise FetchError(f"{what} lists {path!r} twice; refusing it")
        seen.add(path)
        size = getattr(sibling, "size", None)
        if size is None:
            raise FetchError(f"{what}: {endpoint} lists {path!r} without its size",
                             hint="HF_ENDPOINT must name a Hub that lists files with their sizes")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_SIZE:
            raise FetchError(f"{what} lists {path!r} with size {size!r}; refusing it")
        digest = git_oid = ""
        lfs = getattr(sibling, "lfs", None)
        if lfs is not None:
            sha256 = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
            lfs_size = lfs.get("size") if isinstance(lfs, dict) else getattr(lfs, "size", None)
            if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
                raise FetchError(f"{what} lists {path!r} with LFS checksum {sha256!r}; refusing it")
            if lfs_size not in (None, size):
                raise FetchError(f"{what} lists {path!r} with two sizes ({size} and {lfs_size}); refusing it")
            digest = f"sha256:{sha256}"
        else:
            blob_id = getattr(sibling, "blob_id", None)
            if not isinstance(blob_id, str) or not re.fullmatch(r"[0-9a-f]{40}", blob_id):
                raise FetchError(f"{what} lists {path!r} with Git blob id {blob_id!r}; refusing it")
            git_oid = blob_id
        locator = hf.hf_hub_url(ref.repo_id, path, repo_type=ref.repo_type, revision=ref.revision, endpoint=endpoint)
        return RemoteFile(path=path, size=size, digest=digest, git_oid=git_oid,
                          kind=_kind(path, dataset=ref.repo_type == "dataset", has_safetensors=has_safetensors),
                          locator=locator)


# -- transfers ------------------------------------------------------------------------------------------
def _follow(hf: Any, stack: contextlib.ExitStack, url: str, headers: dict[str, str], timeout: float, what: str,
            endpoint: str) -> Any:
    """The answer to GET *url*, redirects followed by hand: the ``authorization`` header goes
    only to the first URL's origin (the Hub), never to the CDN a redirect names."""
    session = hf.utils.get_session()
    origin = _origin(url)
    for _ in range(MAX_REDIRECTS + 1):
        with contextlib.ExitStack() as hop:
            try:
                response = hop.enter_context(_request(session, url, headers, timeout))
            except Exception as exc:
                error = _network_error(hf, exc, what, endpoint)
                if error is None:
                    raise
                raise error from None
            location = response.headers.get("location")
            if response.status_code not in _REDIRECTS or not location:
                stack.enter_context(hop.pop_all())
                return response
        url = urljoin(url, location)
        if _origin(url) != origin:
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    raise FetchError(f"{what}: more than {MAX_REDIRECTS} redirects")


@contextlib.contextmanager
def _request(session: Any, url: str, headers: dict[str, str], timeout: float) -> Iterator[Any]:
    """A streamed GET with huggingface_hub's own client: an httpx-style client (``stream``)
    or, before huggingface_hub 1.0, a ``requests.Session``."""
    if callable(getattr(session, "stream", None)):  # requests.Session.stream is a bool setting
        with session.stream("GET", url, headers=headers, follow_redirects=False, timeout=timeout) as response:
            yield response
    else:
        response = session.get(url, headers=headers, stream=True, allow_redirects=False, timeout=timeout)
        try:
            yield response
        finally:
            response.close()


def _range_start(content_range: str) -> int | None:
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(?:\d+|\*)\s*", content_range)
    return int(m.group(1)) if m else None


def _chunks(hf: Any, response: Any, skip: int, what: str, endpoint: str) -> Iterator[bytes]:
    """The body's bytes after the first *skip*, each piece as it arrives (so what came before a
    cut is handed over, and a resume asks only for the rest); a failed read is a FetchError
    (retryable when the network failed)."""
    if hasattr(response, "iter_bytes"):
        it = iter(response.iter_bytes())
    elif hasattr(getattr(response, "raw", None), "read1"):  # requests on urllib3 2: what has arrived
        it = iter(lambda: response.raw.read1(REQUESTS_CHUNK, decode_content=True), b"")
    else:  # iter_content waits for whole chunks
        it = iter(response.iter_content(REQUESTS_CHUNK))
    while True:
        try:
            chunk = next(it)
        except StopIteration:
            return
        except Exception as exc:
            error = _network_error(hf, exc, what, endpoint)
            if error is None:
                raise
            raise error from None
        if skip:
            dropped = min(skip, len(chunk))
            chunk, skip = chunk[dropped:], skip - dropped
        if chunk:
            yield chunk


@hookimpl
def modelbuild_register_sources(registry):  # noqa: ANN001, ANN201 - pluggy hook
    registry.add(HfSource())
