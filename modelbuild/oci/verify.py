"""The one verified read path: bytes are checked against their descriptor as they are read.

Everything modelbuild reads from a registry, an OCI layout or its own store names its bytes by
a descriptor (digest and size). Nothing is trusted until it matches both:

* :class:`Verifier` hashes and counts bytes as they pass, refuses the first byte past the
  declared size (a lying descriptor never makes us read, or write, more than it declared), and
  checks digest and size at the end;
* :func:`read_verified` reads a small blob (a manifest, an index, a config) whole, bounded by a
  size limit, and checks it;
* :func:`copy_verified` copies a large blob into a file the caller created with
  :func:`~modelbuild.oci.filecopy.kernel_copy` (a reflink, O_DIRECT or the kernel's copy, as
  the file system allows; the store's ingest uses it too), checking the bytes of the *copy*,
  so the bytes checked are the bytes written;
* :class:`Descriptor` is a descriptor parsed from untrusted JSON: a valid digest, a size that is
  a non-negative integer, string annotations; anything else is an :class:`IntegrityError`
  naming where it came from.

A mismatch is an :class:`IntegrityError` (exit 1) whose message names the digest.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelbuild.digests import CHUNK, is_digest
from modelbuild.errors import BuildError
from modelbuild.oci.filecopy import kernel_copy

Progress = Callable[[int], None]
MAX_JSON = 4 << 20  # manifests, indexes, configs: the distribution spec's recommended limit
_MAX_SIZE = (1 << 53) - 1  # a size JSON can state exactly; more is a lie, whatever it says


class IntegrityError(BuildError):
    """Bytes do not match the descriptor that names them, or a descriptor is malformed."""


def shown(text: object, width: int = 120) -> str:
    """An untrusted name as it may appear in a message: escaped (no newline or terminal escape
    reaches the user's screen) and cut short when long."""
    out = ascii(str(text))[1:-1] if not str(text).isprintable() else str(text)
    return out if len(out) <= width else f"{out[:width]}… ({len(out)} characters)"


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor, validated: what a blob must be before any byte of it is used."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, obj: object, where: str) -> Descriptor:
        """Validate a descriptor from untrusted JSON; *where* names it in the error. Every
        field is checked for its JSON type before the digest for its form, so the error
        names the field that is wrong, not merely the first one."""
        if not isinstance(obj, dict):
            raise IntegrityError(f"{where}: a descriptor is not a JSON object ({shown(json.dumps(obj)[:80])})")
        digest, size, media = obj.get("digest"), obj.get("size"), obj.get("mediaType", "")
        if not isinstance(digest, str):
            raise IntegrityError(f"{where}: descriptor digest {shown(json.dumps(digest)[:80])} is not a sha256 digest")
        named = f"{where}: descriptor of {shown(digest, 80)}"
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= _MAX_SIZE:
            raise IntegrityError(f"{named} has size {shown(json.dumps(size)[:40])}, not a byte count")
        if not isinstance(media, str):
            raise IntegrityError(f"{named} has a media type that is not a string")
        if not isinstance(obj.get("platform", {}), dict):
            raise IntegrityError(f"{named} has a platform that is not a JSON object")
        annotations = _annotations(obj.get("annotations"), f"{named} has annotations that are not strings")
        if not is_digest(digest):
            raise IntegrityError(f"{where}: descriptor digest {shown(json.dumps(digest)[:80])} is not a sha256 digest")
        return cls(media, digest, size, annotations, obj)


@dataclass(frozen=True, slots=True)
class ManifestParts:
    """What a manifest or an index names, every descriptor validated: the one validator and
    walker of a document from a registry, the store or a layout (children, config, layers).
    Every field a caller indexes into is checked here, once, so no caller meets a list where
    a descriptor should be."""

    manifests: tuple[Descriptor, ...]
    config: Descriptor | None
    layers: tuple[Descriptor, ...]

    @classmethod
    def parse(cls, doc: object, where: str) -> ManifestParts:
        """Validate a manifest or index from untrusted JSON; *where* names it in the error.
        Checked: a JSON object; ``mediaType`` and ``artifactType`` strings; ``schemaVersion``
        an integer; ``config`` and ``subject`` descriptors; ``manifests`` and ``layers`` lists
        of descriptors (each with any ``platform`` an object); annotations strings."""
        if not isinstance(doc, dict):
            raise IntegrityError(f"{where} is {json_kind(doc)}, not a JSON object")
        for key in ("mediaType", "artifactType"):
            if not isinstance(doc.get(key, ""), str):
                raise IntegrityError(f"{where}: its {key} is not a string")
        version = doc.get("schemaVersion", 2)
        if not isinstance(version, int) or isinstance(version, bool):
            raise IntegrityError(f"{where}: its schemaVersion is not an integer")
        config = None if doc.get("config") is None else Descriptor.parse(doc["config"], f"{where} config")
        if doc.get("subject") is not None:
            Descriptor.parse(doc["subject"], f"{where} subject")
        manifests, layers = _listed(doc, "manifests", where), _listed(doc, "layers", where)
        _annotations(doc.get("annotations"), f"{where}: its annotations are not an object of strings")
        return cls(manifests, config, layers)

    def blobs(self) -> tuple[Descriptor, ...]:
        """Config and layers: the blobs that are not manifests."""
        return ((self.config,) if self.config else ()) + self.layers


def _listed(doc: Mapping[str, Any], key: str, where: str) -> tuple[Descriptor, ...]:
    value = doc.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise IntegrityError(f"{where}: {key!r} is {json_kind(value)}, not a list")
    return tuple(Descriptor.parse(item, f"{where} {key}[{i}]") for i, item in enumerate(value))


def _annotations(value: object, problem: str) -> Mapping[str, str]:
    """Annotations as the spec has them (absent, or an object of strings), else *problem*."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise IntegrityError(problem)
    return value


def json_kind(value: object) -> str:
    """What JSON type *value* is, for a message: ``"a list"``, ``"null"``…"""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


class Verifier:
    """Hash and count bytes as they pass; :meth:`check` once they are all through."""

    def __init__(self, digest: str, size: int, what: str) -> None:
        self.digest, self.size, self.what = digest, size, what
        self.hasher = hashlib.sha256()
        self.count = 0

    def update(self, data: bytes | memoryview) -> None:
        """Take the next bytes; more than the declared size is refused before it is hashed."""
        self.count += len(data)
        if self.count > self.size:
            raise IntegrityError(f"{self.what}: {self.digest} holds more than the {self.size} bytes "
                                 "its descriptor declares")
        self.hasher.update(data)

    def check(self) -> None:
        if self.count != self.size:
            raise IntegrityError(f"{self.what}: {self.digest} holds {self.count} bytes, not the {self.size} "
                                 "its descriptor declares")
        got = "sha256:" + self.hasher.hexdigest()
        if got != self.digest:
            raise IntegrityError(f"{self.what}: content does not match {self.digest} (its bytes hash to {got})")


def read_verified(path: str | Path, digest: str, size: int | None = None, *, limit: int = MAX_JSON,
                  what: str = "blob") -> bytes:
    """The bytes of a small blob, checked against *digest* (and *size*, when known).

    At most ``min(size, limit) + 1`` bytes are read, so a huge or endless file costs nothing.
    """
    bound = limit if size is None else min(size, limit)
    if size is not None and size > limit:
        raise IntegrityError(f"{what}: {digest} declares {size} bytes, more than the {limit} allowed here")
    try:
        with open(path, "rb") as fh:
            data = fh.read(bound + 1)
    except FileNotFoundError:
        raise IntegrityError(f"{what}: {digest} is missing") from None
    except OSError as exc:
        raise IntegrityError(f"{what}: cannot read {digest}: {exc.strerror or exc}") from None
    if size is None and len(data) > limit:
        raise IntegrityError(f"{what}: {digest} is larger than {limit} bytes")
    verifier = Verifier(digest, len(data) if size is None else size, what)
    verifier.update(data)  # refuses a byte past the declared size
    verifier.check()
    return data


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object from untrusted bytes, or an :class:`IntegrityError` naming *what*."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise IntegrityError(f"{what} is not valid JSON ({shown(exc, 80)})") from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"{what} is {json_kind(doc)}, not a JSON object")
    return doc


def fsync_enabled() -> bool:
    """Whether writes are ``fsync``'d before they are renamed into place (``MODELBUILD_FSYNC=0``
    trades crash safety for speed on slow disks); the one reading of that setting."""
    return os.environ.get("MODELBUILD_FSYNC", "1") != "0"


def copy_verified(src: str | Path, dst_fd: int, digest: str, size: int, *, what: str = "blob",
                  progress: Progress | None = None, writeback: bool = False) -> None:
    """Copy blob *src* into the open (read-write), empty file *dst_fd*, checking it against *digest*/*size*.

    :func:`~modelbuild.oci.filecopy.kernel_copy` copies (a reflink, O_DIRECT writes or
    ``copy_file_range``, as the file system allows) and checks the bytes of the copy, so
    what is checked is what was written. Never more than *size* bytes are copied; a source
    longer or shorter than declared, or with other bytes, raises
    :class:`IntegrityError` and the caller discards *dst_fd*'s file. *writeback*: the caller
    will ``fsync`` *dst_fd* (:func:`kernel_copy`).
    """
    verifier = Verifier(digest, size, what)
    try:
        src_fd = os.open(src, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise IntegrityError(f"{what}: {digest} is missing") from None
    except OSError as exc:
        raise IntegrityError(f"{what}: cannot read {digest}: {exc.strerror}") from None
    try:
        copied = kernel_copy(src_fd, dst_fd, verifier.update, size=size, progress=progress,
                             failed=lambda exc: _write_error(exc, verifier),
                             short=f"{what}: short read back while copying {digest}", writeback=writeback)
        if copied is None:
            _stream_copy(src_fd, dst_fd, verifier, progress)
        if os.pread(src_fd, 1, size):
            verifier.update(b"\0")  # one byte past the declared size: raises
    finally:
        os.close(src_fd)
    verifier.check()



def _stream_copy(src_fd: int, dst_fd: int, verifier: Verifier, progress: Progress | None) -> None:
    while verifier.count < verifier.size:
        chunk = os.read(src_fd, min(CHUNK, verifier.size - verifier.count))
        if not chunk:
            return
        verifier.update(chunk)
        try:
            view = memoryview(chunk)
            while view:
                view = view[os.write(dst_fd, view):]
        except OSError as exc:
            raise _write_error(exc, verifier) from None
        if progress is not None:
            progress(len(chunk))


def _write_error(exc: OSError, verifier: Verifier) -> BuildError:
    if exc.errno == errno.ENOSPC:
        return BuildError(f"no space left on device while writing {verifier.what}")
    return BuildError(f"cannot copy {verifier.what} ({verifier.digest}): {exc.strerror}")


__all__ = ["Descriptor", "IntegrityError", "MAX_JSON", "ManifestParts", "Verifier", "copy_verified", "fsync_enabled",
           "json_kind", "parse_json_object", "read_verified", "shown"]
