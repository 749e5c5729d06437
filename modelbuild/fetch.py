"""Fetching a remote build context: the source step of ``FROM hf://…``, ``https://…``,
``oci://…`` and ``ollama://…`` (a :class:`modelbuild.api.RemoteSource` describes; this fetches).

BuildKit's manner:

1. **Pin.** The source resolves the reference to an immutable identity
   (:class:`~modelbuild.api.SourcePin`): a Hub revision to its commit, a tag to a manifest
   digest, a URL to its checksum. A reference that pins itself needs no network.
2. **Key.** The fetch key is the digest of the source plugin, its version and the identity,
   computed without downloading anything. The listing (files, sizes, digests, defaults) is
   kept under ``$MODELBUILD_HOME/sources/<key>.json`` after the first fetch, so a pinned
   reference whose blobs are stored builds with the network gone (``MODELBUILD_OFFLINE=1``
   forbids it outright).
3. **Fetch.** Each selected file not already in the blob store is streamed from the
   source into ``sources/partial/`` (named by identity and path, so a killed build resumes),
   bounded by its listed size, hashed once on the way in (SHA-256, and a Git blob id where
   that is all the remote states), checked, and moved into the store under its digest: the
   store holds the only copy of the weights. A dropped connection is retried with backoff
   and resumed from the bytes already written. A wrong checksum stores nothing.
4. **Snapshot.** The files appear in ``sources/<snapshot>/`` through the one
   materialisation (:func:`modelbuild.runtime.files.materialize_into`): hard links to the
   store's read-only blobs, archives unpacked with every member checked. The build cache is
   told each linked file's digest, so the build hashes nothing it fetched.

The frontend reads the snapshot as it reads any directory. The graph's first step
(``source``) names the identity, and progress shows ``#0 fetch IDENTITY`` with bytes, rate
and ETA while it downloads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from modelbuild.api._sources import UNPACKS, FetchError, OpenedSource, RemoteFile, RemoteSource, SourceListing, SourcePin
from modelbuild.artifact_paths import path_problem
from modelbuild.digests import CHUNK, canonical_json, is_digest
from modelbuild.errors import BuildError, ModelfileError, PluginError
from modelbuild.fetch_session import OFFLINE_VAR, FetchSession, current_session, fetching  # noqa: F401 - re-exported
from modelbuild.oci.verify import shown

FORM = 2  # the record's form: bumped when it changes, so an old record is fetched again
MAX_FILES = 100_000
MAX_SIZE = 1 << 50  # 1 PiB: a listed size past this is a lie
MAX_RECORD = 64 << 20
RETRIES = 6  # failed attempts in a row (without progress) before a transfer gives up
BACKOFF = 0.5  # seconds before the first retry; doubled each time, at most 15 s
JOBS = 4  # files downloaded at once, as pull does

_MEDIA = {"": "application/vnd.cncf.model.weight.v1.raw", "tar": "application/vnd.cncf.model.weight.v1.tar",
          "tar+gzip": "application/vnd.cncf.model.weight.v1.tar+gzip",
          "tar+zstd": "application/vnd.cncf.model.weight.v1.tar+zstd"}


# -- the one entry point ---------------------------------------------------------------------
def open_remote(source: RemoteSource, reference: str, *, owner: str = "", include: Sequence[str] = (),
                exclude: Sequence[str] = ()) -> OpenedSource:
    """*reference*'s files, fetched and linked into a snapshot directory; see the module
    docstring. *include*/*exclude* (``pull --include`` patterns) select files before any is
    downloaded."""
    from modelbuild.locks import KeyLocks
    from modelbuild.store import Store

    session = current_session()
    pin = _pin(source, reference, session)
    key = "sha256:" + hashlib.sha256(canonical_json(
        {"source": source.name, "version": str(getattr(source, "version", "")), "identity": pin.identity,
         "form": FORM})).hexdigest()
    root = session.home / "sources"
    root.mkdir(parents=True, exist_ok=True)
    store = Store(session.home / "store").ensure()
    with store.gc_lock(exclusive=False), KeyLocks(root).hold(key):  # prune waits; so does a second fetch
        listing = _load_record(root, key, pin)
        if listing is None:
            if not session.network:
                raise ModelfileError(f"{reference}: not fetched before, and the network is off ({OFFLINE_VAR})",
                                     hint=f"build once with the network, or unset {OFFLINE_VAR}")
            listing = checked_listing(_call(source, "listing", pin), pin.identity)
        chosen = _select(listing.files, include, exclude, reference)
        fetched = _fetch_all(source, pin, chosen, store, root, session)
        listing = replace(listing, files=tuple(fetched.get(f.path, f) for f in listing.files))
        _save_record(root, key, pin, listing)
        selection = [fetched[f.path] for f in chosen]
        snapshot = _snapshot(store, root, key, pin, selection)
    _seed_digests(session.home, snapshot, selection)
    return OpenedSource(root=snapshot, pin=pin, listing=replace(listing, files=tuple(selection)), key=key,
                        source=source.name)


def _pin(source: RemoteSource, reference: str, session: FetchSession) -> SourcePin:
    pin = _call(source, "pin", reference, network=False)
    if pin is None:
        if not session.network:
            raise ModelfileError(f"{reference} names no fixed revision, and the network is off ({OFFLINE_VAR})",
                                 hint="pin it (a full commit id, @sha256:…, #sha256=…) to build from the cache "
                                      "without a network")
        pin = _call(source, "pin", reference, network=True)
    if not isinstance(pin, SourcePin) or not pin.identity:
        raise PluginError(f"source plugin {source.name!r} returned {pin!r} for {reference}, not a SourcePin")
    return pin


def _call(source: RemoteSource, method: str, *args: Any, **kwargs: Any) -> Any:
    """A source plugin call; ModelbuildErrors pass through, anything else is the plugin's bug."""
    from modelbuild.errors import ModelbuildError

    try:
        return getattr(source, method)(*args, **kwargs)
    except ModelbuildError:
        raise
    except Exception as exc:
        raise PluginError(f"source plugin {source.name!r} failed in {method}(): {type(exc).__name__}: {exc}") from exc


# -- listings ----------------------------------------------------------------------------------
def checked_listing(listing: Any, identity: str) -> SourceListing:
    """The listing, if it is one an artifact could hold: every path an artifact path, once;
    sizes whole and bounded; digests well formed; at most MAX_FILES files."""
    if not isinstance(listing, SourceListing):
        raise PluginError(f"the source of {identity} returned {type(listing).__name__}, not a SourceListing")
    if len(listing.files) > MAX_FILES:
        raise FetchError(f"{identity} lists {len(listing.files)} files, more than {MAX_FILES}")
    seen: set[str] = set()
    for f in listing.files:
        if not isinstance(f, RemoteFile):
            raise PluginError(f"the source of {identity} listed {type(f).__name__}, not a RemoteFile")
        if problem := path_problem(f.path):
            raise FetchError(f"{identity} lists a file {shown(f.path)} that {problem}; refusing it")
        if f.path in seen:
            raise FetchError(f"{identity} lists {shown(f.path)} twice")
        seen.add(f.path)
        if not isinstance(f.size, int) or isinstance(f.size, bool) or not 0 <= f.size <= MAX_SIZE:
            raise FetchError(f"{identity}: {shown(f.path)} has size {f.size!r}")
        if f.digest and not (is_digest(f.digest) and f.digest.startswith("sha256:")):
            raise FetchError(f"{identity}: {shown(f.path)} has digest {shown(f.digest)}, not sha256:<64 hex>")
        if f.unpack not in UNPACKS:
            raise PluginError(f"the source of {identity} asks to unpack {f.path} as {f.unpack!r}")
    return listing


def _select(files: Sequence[RemoteFile], include: Sequence[str], exclude: Sequence[str],
            reference: str) -> list[RemoteFile]:
    from modelbuild.oci.materialize import included

    chosen = [f for f in files if (not include or included(f.path, include))
              and not (exclude and included(f.path, exclude))]
    if not chosen:
        raise ModelfileError(f"{reference}: no file is left to fetch" + (" after --include/--exclude" if
                                                                         include or exclude else ""))
    return chosen


def _record_path(root: Path, key: str) -> Path:
    return root / f"{key.split(':', 1)[1]}.json"


def _save_record(root: Path, key: str, pin: SourcePin, listing: SourceListing) -> None:
    from modelbuild.storage.files import atomic_write

    record = {"form": FORM, "key": key, "identity": pin.identity,
              "pin": {"source_url": pin.source_url, "revision": pin.revision, "data": dict(pin.data)},
              "name": listing.name, "descriptor": dict(listing.descriptor), "config": dict(listing.config),
              "labels": dict(listing.labels),
              "files": [{"path": f.path, "size": f.size, "digest": f.digest, "git_oid": f.git_oid, "kind": f.kind,
                         "unpack": f.unpack, "media_type": f.media_type, "locator": f.locator, "diff_id": f.diff_id}
                        for f in listing.files]}
    atomic_write(_record_path(root, key), json.dumps(record, sort_keys=True).encode())


def _load_record(root: Path, key: str, pin: SourcePin) -> SourceListing | None:
    """The listing kept by an earlier fetch of this identity, if it is whole; else None (and
    the source is asked again)."""
    path = _record_path(root, key)
    try:
        if path.stat().st_size > MAX_RECORD:
            return None
        record = json.loads(path.read_bytes())
        if record.get("form") != FORM or record.get("identity") != pin.identity:
            return None
        files = tuple(RemoteFile(**{k: f[k] for k in ("path", "size", "digest", "git_oid", "kind", "unpack",
                                                        "media_type", "locator", "diff_id")}) for f in record["files"])
        listing = SourceListing(files=files, descriptor=record["descriptor"], config=record["config"],
                                labels=record["labels"], name=record["name"])
        return checked_listing(listing, pin.identity)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, FetchError, PluginError):
        return None


# -- transfers ---------------------------------------------------------------------------------
def _fetch_all(source: RemoteSource, pin: SourcePin, files: Sequence[RemoteFile], store: Any, root: Path,
               session: FetchSession) -> dict[str, RemoteFile]:
    """Every file of *files* in the store; returns each with its digest filled in."""
    from modelbuild.oci.registry import transfer_all
    from modelbuild.oci.transfer import Steps

    out: dict[str, RemoteFile] = {}
    missing = [f for f in files if not (f.digest and store.check_blob(f.digest, f.size))]
    out.update({f.path: f for f in files if f not in missing})
    step = _Shared(Steps(session.emitter, first=0).new(f"fetch {pin.identity}", sum(f.size for f in missing) or None))
    if missing and not session.network:
        raise ModelfileError(f"{pin.identity}: {len(missing)} file(s) are not in the store "
                             f"({shown(missing[0].path)}…), and the network is off ({OFFLINE_VAR})")
    partial_dir = root / "partial"
    partial_dir.mkdir(exist_ok=True)
    partials = {f.path: partial_dir / hashlib.sha256(canonical_json({"identity": pin.identity, "path": f.path})
                                                     ).hexdigest()[:40] for f in missing}
    try:
        # every file downloaded and checked first: a fetch that fails stores nothing at all
        checked = transfer_all([_task(source, pin, f, partials[f.path], step) for f in missing], JOBS)
    except BuildError:  # a wrong checksum: the remote is not what was pinned; keep none of it
        for partial in partials.values():
            partial.unlink(missing_ok=True)
        raise
    for f, digest in checked:
        _install(store, partials[f.path], digest, f.size)
        out[f.path] = replace(f, digest=digest)
    step.finish(bool(missing))
    return out


class _Shared:
    """One progress step that several download threads advance."""

    def __init__(self, step: Any) -> None:
        self.step, self.steps, self._lock = step, step.steps, threading.Lock()

    def advance(self, n: int) -> None:
        with self._lock:
            self.step.advance(n)

    def finish(self, moved: bool) -> None:
        self.step.finish(moved)


def _task(source: RemoteSource, pin: SourcePin, f: RemoteFile, partial: Path,
          step: Any) -> Callable[[], tuple[RemoteFile, str]]:
    return lambda: (f, _download(source, pin, f, partial, step))


def _install(store: Any, partial: Path, digest: str, size: int) -> None:
    """Move a checked partial file into the store under its digest (the store's own
    download path: locked per blob, so a concurrent fetch of the same bytes is harmless)."""
    def install(dest: Path, _unused: Path) -> None:
        os.replace(partial, dest)

    store.download(digest, size, install)
    partial.unlink(missing_ok=True)  # the store had the blob already: the download was a duplicate


def _download(source: RemoteSource, pin: SourcePin, f: RemoteFile, partial: Path, step: Any) -> str:
    """Bytes of *f* into *partial*, resumed from what is there, retried with backoff; checked
    against its size, digest and Git blob id. Returns ``sha256:<hex>``."""
    sha = hashlib.sha256()
    git = hashlib.sha1(b"blob %d\0" % f.size, usedforsecurity=False) if f.git_oid else None
    offset = _resume(partial, f.size, sha, git)
    if offset:
        step.advance(offset)
    failures, delay = 0, BACKOFF
    while True:
        before = offset
        done = [offset]  # what is in the partial file, kept up to date as chunks are written
        try:
            offset = _transfer(source, pin, f, partial, done, sha, git, step)
            if offset < f.size:
                raise FetchError(f"{pin.identity}: {f.path}: the connection ended after {offset} of {f.size} bytes",
                                 retryable=True)
            break
        except FetchError as exc:
            offset = done[0]
            if not exc.retryable:
                raise
            failures = 1 if offset > before else failures + 1
            if failures > RETRIES:
                raise FetchError(f"{exc.message} (gave up after {RETRIES} tries)", hint=exc.hint) from None
            if step.steps.emitter is not None:
                step.steps.emitter.warn(f"{f.path}: {exc.message}; retrying in {delay:g} s from byte {offset}")
            time.sleep(delay)
            delay = min(delay * 2, 15.0)
    digest = "sha256:" + sha.hexdigest()
    problem = None
    if f.digest and digest != f.digest:
        problem = f"its SHA-256 is {digest}, not the {f.digest} it should have"
    elif git is not None and git.hexdigest() != f.git_oid:
        problem = f"its Git blob id is {git.hexdigest()}, not the {f.git_oid} listed"
    if problem:
        partial.unlink(missing_ok=True)
        raise BuildError(f"{pin.identity}: {f.path}: {problem}; nothing was stored",
                         hint="the remote file changed or was corrupted on the way: check the reference and its "
                              "checksum")
    return digest


def _resume(partial: Path, size: int, sha: Any, git: Any) -> int:
    """Feed the hashes with what an earlier attempt left in *partial*; its length."""
    try:
        fh = open(partial, "rb")
    except FileNotFoundError:
        return 0
    with fh:
        if os.fstat(fh.fileno()).st_size > size:
            fh.close()
            partial.unlink()
            return 0
        n = 0
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            if git is not None:
                git.update(chunk)
            n += len(chunk)
        return n


def _transfer(source: RemoteSource, pin: SourcePin, f: RemoteFile, partial: Path, done: list[int], sha: Any,
              git: Any, step: Any) -> int:
    """One attempt: append from ``done[0]``, keeping it the count of bytes written; returns
    it. Network failures the plugin did not wrap (a reset socket) count as retryable."""
    offset = done[0]
    try:
        with open(partial, "ab") as out, _call(source, "open", pin, f, offset=offset) as chunks:
            for chunk in chunks:
                if offset + len(chunk) > f.size:
                    raise FetchError(f"{pin.identity}: {f.path}: the remote sent more than the {f.size} bytes listed")
                out.write(chunk)
                sha.update(chunk)
                if git is not None:
                    git.update(chunk)
                offset += len(chunk)
                done[0] = offset
                step.advance(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    except (ConnectionError, TimeoutError) as exc:
        raise FetchError(f"{pin.identity}: {f.path}: {exc}", retryable=True) from None
    return offset


# -- the snapshot --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Snapshot:
    """What :func:`materialize_into` takes: a synthetic artifact of the fetched files."""

    digest: str
    store: Any
    manifest: dict[str, Any]
    shown: str
    config: Any = None


def _snapshot(store: Any, root: Path, key: str, pin: SourcePin, files: Sequence[RemoteFile]) -> Path:
    from modelbuild.runtime.files import materialize_into

    layers = [{"mediaType": _MEDIA[f.unpack], "digest": f.digest, "size": f.size,
               "annotations": {"org.cncf.model.filepath": f.path}} for f in sorted(files, key=lambda f: f.path)]
    name = hashlib.sha256(canonical_json({"key": key, "files": [f.path for f in files]})
                          ).hexdigest()[:48]
    manifest = {"schemaVersion": 2, "layers": layers}
    done = materialize_into(_Snapshot(f"snapshot:{name}", store, manifest, pin.identity), root / name)
    return done.path


def _seed_digests(home: Path, snapshot: Path, files: Sequence[RemoteFile]) -> None:
    """Tell the build cache each linked file's digest: the build then hashes none of them."""
    from modelbuild.cache import BuildCache

    cache = BuildCache(home / "cache")
    try:
        for f in files:
            if f.unpack:
                continue
            with contextlib.suppress(OSError):
                cache.set_file_digest(os.stat(snapshot / f.path), f.digest)
    finally:
        cache.close()
