"""Ops that read the build context: make it available, and digest its files."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelbuild import lfs
from modelbuild.context import walk_tree
from modelbuild.digests import is_digest, key_of
from modelbuild.errors import BuildError
from modelbuild.graph import Step
from modelbuild.ignore import IgnoreRules
from modelbuild.ops.base import ExecEnv, Op, Outcome, StepContext
from modelbuild.results import ContextRoot, FileDigest, TreeEntry
from modelbuild.storage.files import sha256_file
from modelbuild.tarball import normalise_mode

if TYPE_CHECKING:
    from modelbuild.store import Store

# A file modified less than this long before it was hashed is not put in the stat cache:
# file-system clocks are coarse, so a write in the same tick would not change its mtime.
RACY_WINDOW_NS = 1_000_000_000
# With a cluster executor, a file at least this large hashes on a node as an item of its own
# (a task costs about a millisecond; 64 MiB take 40 ms to hash); smaller ones hash here.
REMOTE_HASH_MIN = 64 << 20


class SourceOp(Op):
    """Make the build context available. Local directories need no work."""

    name = "source"

    def run(self, step: Step, inputs: list[Any], ctx: StepContext) -> Outcome:
        root = step.params["root"]
        if not os.path.isdir(root):
            raise BuildError(f"build context {root} is gone")
        return Outcome(ContextRoot(root), cached=True)


def _refuse_lfs_pointer(path: Path, rel: str, size: int) -> None:
    """A file that is a Git LFS pointer (weights, or a tokenizer) is an error with the fix,
    not a confusing format error from whatever reads it later (:mod:`modelbuild.lfs`)."""
    if lfs.is_pointer_file(path, size):
        raise BuildError(f"{rel} is a Git LFS pointer, not the file it names", hint=lfs.HINT)


class DigestOp(Op):
    """Content digest of a file or directory, through the stat cache.

    With ``ingest`` (raw layers: the file's bytes are the layer), a file missing from the
    store is copied in while it is hashed, so its bytes are read exactly once and the layer
    step has nothing left to do. A build whose result streams to a registry
    (:mod:`modelbuild.oci.stream`) uploads a large file there while hashing it instead, and
    records every file it found, so a layer may name it where it lies.
    """

    prepares_executor = True  # a changed input is being hashed: transforms of it will follow
    name = "digest"

    def run(self, step: Step, inputs: list[Any], ctx: StepContext) -> Outcome:
        p = step.params
        root = Path(inputs[0].root)
        try:
            if p["is_dir"]:
                return self._directory(root, p["path"], IgnoreRules.from_patterns(p.get("exclude", ())), ctx)
            return self._file(root, p["path"], p["ingest"], ctx)
        except FileNotFoundError as exc:
            raise BuildError(f"{p['path']}: vanished during the build ({exc.filename})") from None

    def _file(self, root: Path, rel: str, ingest: bool, ctx: StepContext) -> Outcome:
        path = root / rel
        st = os.stat(path)
        digest, cached = self._digest(path, st, rel, ingest, ctx)
        sources = ctx.env.sources
        if sources is not None:
            sources.add(digest, rel, str(path), st)
        return Outcome(FileDigest(rel, ctx.step.params.get("kind", "model"), digest, st.st_size,
                                  normalise_mode(st.st_mode), False, str(path)), cached=cached)

    def _digest(self, path: Path, st: os.stat_result, rel: str, ingest: bool, ctx: StepContext) -> tuple[str, bool]:
        """The file's digest and whether the stat cache knew it; hashes at most once."""
        env = ctx.env
        into = _ingest_into(ingest, st.st_size, env)
        known = self._known(st, env)
        if known is not None and (into != "store" or env.blob_ok(known, st.st_size)):
            return known, True
        # another build (or step) may be hashing this very file: wait, then use its answer
        with env.locks.hold(repr(env.cache.stat_key(st))):
            known = self._known(st, env)
            if known is not None and (into != "store" or env.blob_ok(known, st.st_size)):
                return known, True
            return self._hash(path, st, rel, into, known, ctx), False

    @staticmethod
    def _known(st: os.stat_result, env: ExecEnv) -> str | None:
        """The digest the stat cache has for this file (None with ``--no-cache``)."""
        return None if env.no_cache else env.cache.get_file_digest(st)

    def _hash(self, path: Path, st: os.stat_result, rel: str, into: str | None, known: str | None,
              ctx: StepContext) -> str:
        """Hash a file; *into* ``store`` (or ``registry``), make sure its bytes are there too.

        A file never seen before is copied into the store (uploaded to the registry) while it
        is hashed: one read. So is one the stat cache knows whose blob the store lacks. A
        file whose inode was hashed before under another mtime (touched, or checked out
        again) is most likely unchanged: it is only hashed, and copied in a second pass just
        when its content turns out to be new (a registry is asked at push time).
        """
        env = ctx.env
        _refuse_lfs_pointer(path, rel, st.st_size)  # checked once: a hashed file is cached by its stat
        ctx.set_total(st.st_size)
        sources = env.sources
        fresh = into is not None and (known is not None or not env.cache.seen_inode(st))
        if into == "registry" and fresh and sources is not None:
            digest, size = sources.ingest(rel, str(path), st, ctx.advance), st.st_size
        else:
            digest, size, created = _read(path, st.st_size, into == "store" and fresh, ctx)
            if into == "store" and not fresh and not env.blob_ok(digest, size):
                ctx.current = 0
                digest2, size, created = _read(path, st.st_size, True, ctx)
                if digest2 != digest:
                    raise BuildError(f"{rel} changed while it was being read; build again once it is written")
            if created:
                env.stats.add(bytes_written=size)
        env.stats.add(bytes_hashed=size, files_hashed=rel)
        after = os.stat(path)
        if env.cache.stat_key(after) != env.cache.stat_key(st) or size != st.st_size:
            raise BuildError(f"{rel} changed while it was being read; build again once it is written")
        if time.time_ns() - st.st_mtime_ns > RACY_WINDOW_NS:
            env.cache.set_file_digest(st, digest)
        return digest

    def _directory(self, root: Path, rel: str, ignore: IgnoreRules, ctx: StepContext) -> Outcome:
        tree = walk_tree(root, rel, ignore)  # the same members the frontend checked
        all_cached = True
        members = []
        for f in tree:
            name = f.path
            mode = normalise_mode(f.mode, f.kind == "dir")
            digest = ""
            if f.kind == "file":
                digest, cached = self._digest(Path(f.abspath), os.stat(f.abspath), name, False, ctx)
                all_cached &= cached
            members.append(TreeEntry(name, f.kind, mode, f.size, digest, f.linkname, f.abspath))
        # the key of what the tar layer holds: names, kinds, modes, sizes, digests, link targets
        tree_digest = key_of([[m.name, m.kind, m.mode, m.size, m.digest, m.linkname] for m in members])
        return Outcome(FileDigest(rel, ctx.step.params.get("kind", "model"), tree_digest, sum(m.size for m in members),
                                  0o755, True, None, tuple(members)), cached=all_cached)


def _read(path: Path, size: int, ingest: bool, ctx: StepContext) -> tuple[str, int, bool]:
    """Hash a file, and with *ingest* copy it into the store as it is hashed: here, or on a
    node of the build's cluster when it runs one (``--executor ray``) and the file is large
    enough to be worth a task. Separate files then hash on separate nodes, each node reading
    its file from the shared filesystem; the first one asked for while the cluster is still
    connecting hashes here (:meth:`BuildExecutor.hash_here_while_connecting`). Returns the
    digest, the size, and whether the store gained a blob."""
    env = ctx.env
    executor = env.executor
    if (executor is not None and executor.remote and size >= REMOTE_HASH_MIN
            and not executor.hash_here_while_connecting()):
        item = HashItem(str(path), str(env.store.root) if ingest else None)
        done: list[Any] = []
        executor.map(hash_on_node, [item], lambda _item, result: done.append(result), jobs=1)
        digest, got, created = _node_answer(done, path, size, ingest, env)
        ctx.advance(got)
        return digest, got, created
    return _hash_here(path, env.store if ingest else None, ctx.advance)


def _hash_here(path: str | Path, store: Store | None, progress: Any = None) -> tuple[str, int, bool]:
    """Hash a file in this process, copying it into *store* as it is hashed when one is given."""
    if store is not None:
        return store.ingest_file(path, progress)
    return (*sha256_file(path, progress), False)


def _node_answer(done: list[Any], path: Path, size: int, ingest: bool, env: ExecEnv) -> tuple[str, int, bool]:
    """What a node said of a file, checked as far as the driver can without reading it: the
    shape of the answer, the file's size, and a blob it says it stored being in the store."""
    answer = done[0] if len(done) == 1 else None
    if not (isinstance(answer, (tuple, list)) and len(answer) == 3 and isinstance(answer[0], str)
            and is_digest(answer[0]) and type(answer[1]) is int and isinstance(answer[2], bool)):
        raise BuildError(f"{path.name}: the executor's node answered {answer!r:.200} for its hash",
                         hint="a node runs other code than this build: check the cluster's installation")
    digest, got, created = answer
    if got != size:
        raise BuildError(f"{path.name} changed while it was being read; build again once it is written")
    if ingest and not env.blob_ok(digest, got):
        raise BuildError(f"{path.name}: a node stored {digest} in the store, and it is not there",
                         hint="every node needs MODELBUILD_HOME at the same path, on one shared filesystem "
                              "(docs/scale.md)")
    return digest, got, created


@dataclass(frozen=True, slots=True)
class HashItem:
    """A file to hash on a node (:func:`hash_on_node`): its path, the same on every node, and
    the store to copy it into as it is hashed (None: only hash it)."""

    path: str
    store: str | None = None


def hash_on_node(item: HashItem) -> tuple[str, int, bool]:
    """One executor item: on a node, what :func:`_read` does here. The store's writer names
    the blob by the bytes it wrote."""
    from modelbuild.store import Store

    return _hash_here(item.path, Store(Path(item.store)) if item.store is not None else None)


def _ingest_into(ingest: bool, size: int, env: ExecEnv) -> str | None:
    """Where a file whose bytes are a raw layer goes while it is hashed: ``store``, or
    ``registry`` for a large file of a build that streams to one; None when not a raw layer."""
    if not ingest:
        return None
    sources = env.sources
    return "registry" if sources is not None and sources.streams(size) else "store"
