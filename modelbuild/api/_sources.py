"""Remote sources (since 1.2): what ``FROM hf://…``, ``FROM https://…``, ``FROM oci://…`` name.

A remote source only *describes and streams*; the core fetches (:mod:`modelbuild.fetch`), as
an engine only describes and the core starts it. The split is BuildKit's: a source resolves a
reference to an immutable identity, the fetch step's key is computed from that identity
without downloading anything, and the bytes go straight into the blob store, verified:

1. ``pin(reference, network=…)`` → :class:`SourcePin`. With ``network=False`` the source
   answers only when the reference pins itself (a full commit id, a checksum, a digest) and
   returns None otherwise: a pinned reference whose files are stored builds with no network.
2. ``listing(pin)`` → :class:`SourceListing`: every file with its path, exact size and, where
   the remote states one, its digest; and the defaults the build description starts from
   (descriptor fields, config fields, manifest annotations). The core keeps the listing in
   its cache under the fetch key, so it is asked once per identity.
3. ``open(pin, file, offset=n)`` → a context manager over an iterator of byte chunks that
   starts at byte *n* of the file (the core resumes a dropped transfer from what it has).
   A transfer that failed in a way worth retrying raises :class:`FetchError` with
   ``retryable=True`` (connection reset, 5xx, 429); the core retries with backoff, resuming.

The core bounds every size by the listing's, verifies every digest it was given (and
``git_oid``, a Git blob id, for small files a Git host lists only that way), computes
the SHA-256 of everything else while writing, and stores nothing from a failed fetch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from modelbuild.errors import ModelbuildError

UNPACKS = ("", "tar", "tar+gzip", "tar+zstd")


class FetchError(ModelbuildError):
    """A transfer from a remote source failed. ``retryable``: worth another try (the core
    retries with backoff and resumes); otherwise the build stops with this message."""

    exit_code = 1

    def __init__(self, message: str, *, retryable: bool = False, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class SourcePin:
    """What a reference resolved to. ``identity`` is immutable: the same identity always
    means the same bytes (``hf://Qwen/Qwen2-0.5B@<40-hex commit>``,
    ``https://…#sha256=<hex>``, ``oci://reg/repo@sha256:…``). It is the fetch step's key.
    ``source_url`` and ``revision`` become the artifact's ``descriptor.sourceURL`` and
    ``descriptor.revision`` unless the build file sets them. ``data`` is the source's own
    (say, the URL a tag resolved to): it enters no key."""

    identity: str
    source_url: str = ""
    revision: str = ""
    data: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One file of a remote source.

    ``path`` is where it lands in the build context (an artifact path: checked by the
    core). ``size`` is exact. ``digest`` (``sha256:<hex>``) is given when the remote states
    it, and is then verified as the bytes arrive; ``git_oid`` likewise for a Git blob id.
    ``kind`` is how it is packaged when the build file names no file (``model``,
    ``config``, ``code``, ``dataset``, ``doc``; ``""``: not packaged by default).
    ``unpack``: ``""`` for a file, or ``tar``/``tar+gzip``/``tar+zstd`` for an archive
    that becomes the directory ``path`` (an OCI tar layer), unpacked with every member
    checked. ``media_type`` is the OCI layer media type it came from, if any, and
    ``diff_id`` that layer's uncompressed digest (its config's ``modelfs.diffIds`` entry):
    a file the build packages unchanged, as the same kind, keeps that very layer.
    ``locator`` is the source's own handle (a URL, a blob digest): it enters no key."""

    path: str
    size: int
    digest: str = ""
    git_oid: str = ""
    kind: str = ""
    unpack: str = ""
    media_type: str = ""
    locator: str = ""
    diff_id: str = ""


@dataclass(frozen=True)
class SourceListing:
    """A pinned source's files, and the defaults a build description starts from: the
    build file's own values win over each of them."""

    files: tuple[RemoteFile, ...]
    descriptor: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    name: str | None = None  # a default artifact name (``qwen2``)


@runtime_checkable
class RemoteSource(Protocol):
    """A source whose files are elsewhere (``modelbuild_register_sources``, since 1.2).

    ``name`` and ``schemes`` as for :class:`Source`; no ``resolve``. ``version`` enters the
    fetch key (bump it when the same identity would list other files). See the module
    docstring for the three calls."""

    name: str
    schemes: tuple[str, ...]
    version: str

    def pin(self, reference: str, *, network: bool) -> SourcePin | None: ...

    def listing(self, pin: SourcePin) -> SourceListing: ...

    def open(self, pin: SourcePin, file: RemoteFile, *, offset: int) -> AbstractContextManager[Iterable[bytes]]: ...


@dataclass(frozen=True)
class OpenedSource:
    """What ``sources.open(reference, base_dir=…)`` gives a frontend: the directory its
    paths are relative to and, for a remote source, what it was pinned to and its listing
    (whose defaults the frontend applies under the build file's own values). ``key`` is the
    fetch step's key (``""`` for a local directory)."""

    root: Path
    pin: SourcePin | None = None
    listing: SourceListing | None = None
    key: str = ""
    source: str = "local"  # the source plugin's name
