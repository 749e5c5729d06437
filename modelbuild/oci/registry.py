"""A client for OCI distribution registries: blobs and manifests, streamed, verified, resumable.

Why our own and not oras-py (``FACTS.md`` §4): oras-py 0.2.43 re-serializes manifests (the
registry must store *our* bytes, or every digest we computed is wrong), cannot PUT an index,
reads a whole blob into memory for a monolithic upload (models are tens of GiB), does not
verify what it downloads, and has no cross-repository mount. Credentials come from
:mod:`modelbuild.oci.auth`.

* Nothing is held in memory but one read buffer: uploads stream from the file, downloads to it.
* Every download is checked against its sha256 digest; a mismatch raises and leaves nothing
  under the destination name (the ``.partial`` file is removed too).
* A dropped connection is resumed, not restarted: downloads continue from ``<dest>.partial``
  with HTTP ``Range`` (also after a kill -9); chunked uploads ask the upload URL how much
  arrived and go on from there. Where the registry has forgotten the upload (distribution
  2.x cancels one whose size no longer matches its ``_state`` token, as after a PATCH cut
  mid-body) the upload starts again; the registry verifies the digest at the end either way.
* 5xx, 429 (``Retry-After`` honoured), connection errors and truncated bodies are retried
  with exponential backoff and jitter; the failure count resets whenever an attempt makes
  real progress, so a long transfer over a flaky link still ends. When the budget is spent
  the error is a :class:`RegistryError` naming the registry, repository and operation,
  secrets masked.

A registry is not trusted to be well-behaved (the "hostile registry" review). Requests go
through :class:`~modelbuild.oci.transport.Transport` (auth, redirects, bodies kept in memory
read up to the manifest limit and no further, retries on a budget); every wait is bounded by
:class:`~modelbuild.oci.pacing.Limits` (each settable by an environment variable, see
``docs/registry.md``) and each transfer attempt is watched by :mod:`modelbuild.oci.pacing`
(stall timeout, minimum rate, a watchdog for dripped framing). Here, a blob whose
``Content-Length`` disagrees with its descriptor is refused before any byte is read, and a
manifest is checked by the one validator, :class:`~modelbuild.oci.verify.ManifestParts`:
anything that should be JSON and is not ends in a one-line :class:`RegistryError`.

The client is one class, :class:`Registry`, in three modules: this one (the host, its
manifests), :mod:`modelbuild.oci.upload` (HEAD, mount and upload of a blob: the one upload
path) and :mod:`modelbuild.oci.download` (a blob's verified, resumed download).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

from modelbuild.digests import is_digest, sha256_bytes
from modelbuild.errors import UsageError
from modelbuild.oci import mediatypes as mt
from modelbuild.oci.auth import Auth
from modelbuild.oci.download import BlobDownloads
from modelbuild.oci.pacing import Limits
from modelbuild.oci.reference import Reference, parse_reference
from modelbuild.oci.transport import (
    DigestMismatchError,
    RegistryAuthError,
    RegistryError,
    SizeMismatchError,
    Source,
    error_detail,
    header_int,
)
from modelbuild.oci.upload import BlobUploads
from modelbuild.oci.verify import IntegrityError, ManifestParts, parse_json_object, shown

MiB = 1 << 20
DEFAULT_CHUNK = 32 * MiB  # per PATCH: amortises a round trip, yet little to resend
MONOLITHIC_MAX = 16 * MiB  # up to this, one PUT is cheaper than POST + PATCHes
MANIFEST_PUT_TRIES = 3  # a manifest PUT refused as DIGEST_INVALID by a racing write of the same path
_TAG = re.compile(r"[\w][\w.-]{0,127}")
DEFAULT_ACCEPT = (mt.OCI_MANIFEST, mt.OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json")
T = TypeVar("T")


def split_reference(text: str) -> tuple[str, str, Reference]:
    """``localhost:5000/team/model:1`` → ``("localhost:5000", "team/model", Reference)``;
    a reference that names no registry host is a usage error."""
    parsed = parse_reference(text)
    host, _, path = parsed.repository.partition("/")
    if not path or not ("." in host or ":" in host or host == "localhost"):
        raise UsageError(f"{text!r} names no registry", hint="write it as registry.example.com/team/model:tag")
    return host, path, parsed


class Registry(BlobUploads, BlobDownloads):
    """One registry host: its blobs and manifests, over a :class:`~modelbuild.oci.transport.Transport`.
    Thread-safe: transfer threads share one instance (and its pool).

    *limits* default to :meth:`Limits.from_env`; *retries* and *timeout* (connect, read),
    when given, override theirs.
    """

    def __init__(self, host: str, *, plain_http: bool = False, insecure: bool = False, auth: Auth | None = None,
                 retries: int | None = None, backoff: float = 0.2, timeout: float | tuple[float, float] | None = None,
                 chunk_size: int = DEFAULT_CHUNK, monolithic_max: int = MONOLITHIC_MAX, pool_size: int = 16,
                 limits: Limits | None = None) -> None:
        super().__init__(host, plain_http=plain_http, insecure=insecure, auth=auth, retries=retries, backoff=backoff,
                         timeout=timeout, pool_size=pool_size, limits=limits)
        self.chunk_size, self.monolithic_max = chunk_size, monolithic_max

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- registry ---------------------------------------------------------------------
    def ping(self) -> None:
        """``GET /v2/``: the registry answers and takes our credentials (what ``login`` checks)."""
        resp = self._request("GET", f"{self.base}/v2/", op="ping", repo="", scopes=[])
        if resp.status_code != 200:
            raise self._fail("ping", "", error_detail(resp))

    # -- manifests --------------------------------------------------------------------
    def _check_ref(self, op: str, repo: str, ref: str) -> None:
        """A tag or a sha256 digest, nothing else: a child's digest comes from a registry's
        index, and one that is not a digest would be fetched as a tag, unverified."""
        if not (is_digest(ref) or _TAG.fullmatch(ref)):
            raise self._fail(op, repo, f"{shown(ref, 80)!r} is neither a tag nor a sha256 digest")

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """PUT these exact bytes (a manifest or an index) under a tag or digest; their digest."""
        digest = sha256_bytes(data)
        op = f"push manifest {ref}"
        if is_digest(ref) and ref != digest:
            raise UsageError(f"manifest bytes have digest {digest}, not {ref}")
        for attempt in range(MANIFEST_PUT_TRIES):
            resp = self._request("PUT", self._url(repo, "manifests", ref), op=op, repo=repo,
                                 scopes=self._scopes(repo, True), headers={"Content-Type": media_type}, body=data)
            # DIGEST_INVALID for bytes whose digest was computed here: distribution's storage
            # answers it when another client writes the same manifest at that moment (its
            # writes of one path race); the same PUT a moment later succeeds
            if resp.status_code != 400 or "DIGEST_INVALID" not in error_detail(resp) \
                    or attempt == MANIFEST_PUT_TRIES - 1:
                break
            time.sleep(0.2 * (attempt + 1))
        if resp.status_code != 201:
            raise self._fail(op, repo, error_detail(resp),
                             hint="push its blobs and child manifests first" if resp.status_code == 400 else None)
        if (got := resp.headers.get("Docker-Content-Digest")) and got != digest:
            raise self._fail(op, repo, f"the registry stored {shown(got)}, not {digest}", DigestMismatchError)
        return digest

    def get_manifest(self, repo: str, ref: str, accept: Iterable[str] = DEFAULT_ACCEPT) -> tuple[bytes, str, str]:
        """``(bytes, media type, digest)`` of a manifest or index, verified against the digest
        asked for and the registry's ``Docker-Content-Digest``, and checked to be a JSON
        object whose fields have the types the image spec gives them (so no caller meets a
        list where a descriptor should be)."""
        op = f"pull manifest {shown(ref, 80)}"
        self._check_ref(op, repo, ref)
        resp = self._request("GET", self._url(repo, "manifests", ref), op=op, repo=repo, scopes=self._scopes(repo),
                             headers={"Accept": ", ".join(accept)})
        if resp.status_code != 200:
            raise self._fail(op, repo, error_detail(resp))
        data = resp.content  # read by _send, within the manifest limit
        digest = sha256_bytes(data)
        for expected in (ref if is_digest(ref) else None, resp.headers.get("Docker-Content-Digest")):
            if expected and expected.startswith("sha256:") and expected != digest:
                raise self._fail(op, repo, f"the manifest received has digest {digest}, not {shown(expected)}",
                                 DigestMismatchError)
        try:
            doc = parse_json_object(data, f"manifest {digest}")
            ManifestParts.parse(doc, f"manifest {digest}")
        except IntegrityError as exc:
            raise self._fail(op, repo, exc.message) from None
        media_type = shown(resp.headers.get("Content-Type", "").split(";")[0].strip(), 200)
        if media_type in ("", "application/json", "application/octet-stream"):
            media_type = doc.get("mediaType") or media_type
        return data, media_type, digest

    def head_manifest(self, repo: str, ref: str, accept: Iterable[str] = DEFAULT_ACCEPT) -> tuple[str, str, int] | None:
        """``(digest, media type, size)`` of a manifest, or None where there is none."""
        op = f"check manifest {shown(ref, 80)}"
        self._check_ref(op, repo, ref)
        resp = self._request("HEAD", self._url(repo, "manifests", ref), op=op, repo=repo, scopes=self._scopes(repo),
                             headers={"Accept": ", ".join(accept)})
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._fail(op, repo, error_detail(resp))
        digest = resp.headers.get("Docker-Content-Digest") or (ref if is_digest(ref) else "")
        if digest and not is_digest(digest):
            raise self._fail(op, repo, f"the registry answered a malformed digest {shown(digest)}")
        return digest, shown(resp.headers.get("Content-Type", ""), 200), header_int(resp.headers.get("Content-Length")) or 0


    def get_referrers(self, repo: str, subject: str) -> bytes | None:
        """``GET /v2/<name>/referrers/<digest>`` (OCI distribution 1.1): the body of a 200
        answer, bounded as a manifest is, or None for any other answer (a registry without
        the referrers API answers 404; the caller falls back to the referrers tag schema).
        The body is untrusted: the caller parses it."""
        op = f"list the referrers of {subject}"
        self._check_ref(op, repo, subject)
        if not is_digest(subject):
            raise self._fail(op, repo, f"{shown(subject, 80)!r} is not a sha256 digest")
        resp = self._request("GET", self._url(repo, "referrers", subject), op=op, repo=repo,
                             scopes=self._scopes(repo), headers={"Accept": "application/vnd.oci.image.index.v1+json"})
        return resp.content if resp.status_code == 200 else None


def transfer_all(tasks: Iterable[Callable[[], T]], jobs: int) -> list[T]:
    """Run transfers *jobs* at a time; results in task order. The first failure cancels the
    tasks not started yet and is raised once the running ones end (no thread is orphaned)."""
    tasks = list(tasks)
    if jobs <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="transfer") as pool:
        futures = [pool.submit(task) for task in tasks]
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled() and (exc := f.exception()) is not None:
                raise exc
        return [f.result() for f in futures]


__all__ = ["DEFAULT_ACCEPT", "DigestMismatchError", "Limits", "Registry", "RegistryAuthError", "RegistryError",
           "SizeMismatchError", "Source", "split_reference", "transfer_all"]
