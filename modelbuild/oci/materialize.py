"""One materialisation: an artifact's layers become files in a directory, the same way from
every source (the local store, an OCI layout, a registry).

1. **Plan** (:mod:`modelbuild.oci.layerplan`). Every layer descriptor is validated,
   every path checked against :mod:`modelbuild.artifact_paths`, and conflicts refused before a
   byte moves: two layers writing one path, a file where another layer needs a directory
   (``a`` and ``a/b``). Paths that differ only in case are a warning (they collide on macOS
   and Windows file systems).
2. **Stage.** Blobs land in a private directory inside the target,
   ``DIR/.modelbuild-staging-XXXXXX`` (mode 0700, a name no artifact may use), created with
   ``O_EXCL``: raw layers at their path under ``tree/``, tar layers as numbered blobs under
   ``blobs/``. Each blob is verified against its digest and size as it is written. Downloads
   from a registry resume from ``DIR/.modelbuild-partial/<hex>``, named by digest only.
3. **Unpack** (:mod:`modelbuild.oci.untar`). Tar layers are unpacked in layer order into ``tree/``, member by member: each
   name and link checked, each member created with ``O_EXCL`` (nothing through a link), the
   decompressed stream counted against a bound derived from the sizes the artifact declares
   and hashed against its config's diffId.
4. **Move.** Only when every file is verified, each is renamed into place; the staging
   directory is removed whatever happens. A failed pull leaves the target as it was.

A file already in the target with the right bytes is left alone (and not downloaded again).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from modelbuild import artifact_paths as ap
from modelbuild.digests import CHUNK
from modelbuild.errors import BuildError, UsageError
from modelbuild.limits import env_int
from modelbuild.oci.layerplan import Layer, PathTree, diff_ids, file_mode, layer_path, plan
from modelbuild.oci.untar import EXPANSION_VAR, create_exclusive, make_parents, unpack, write_error
from modelbuild.oci.verify import Descriptor, IntegrityError, Verifier, copy_verified, fsync_enabled, shown

Progress = Callable[[int], None]
STAGING_PREFIX = ap.RESERVED_PREFIX + "staging-"
PARTIAL_DIR = ap.RESERVED_PREFIX + "partial"
DEFAULT_RATIO = 32  # weights barely compress; text and JSON 4–10×; past 32× is a bomb or a mistake


class BlobSource(Protocol):
    """Where an artifact's blobs come from: the local store or a layout, or a registry. A
    source may name what it does with each blob for the progress lines (``verb``: ``link``;
    ``pull`` when it does not say)."""

    where: str

    def fetch(self, desc: Descriptor, dest: Path, progress: Progress | None) -> None:
        """Create *dest* (it does not exist) holding the blob's bytes, verified."""


# -- sources ------------------------------------------------------------------------------
class StoreSource:
    """Blobs of the local store or of an OCI layout directory, verified while copied."""

    def __init__(self, store: Any, where: str) -> None:
        self.store, self.where = store, where

    def fetch(self, desc: Descriptor, dest: Path, progress: Progress | None) -> None:
        fd = create_exclusive(dest)
        try:
            copy_verified(self.store.blob_path(desc.digest), fd, desc.digest, desc.size,
                          what=f"{self.where}: blob", progress=progress)
            if fsync_enabled():
                os.fsync(fd)
        except IntegrityError as exc:
            raise self._damaged(desc, exc) from None
        finally:
            os.close(fd)

    def _damaged(self, desc: Descriptor, exc: IntegrityError) -> IntegrityError:
        """A blob that failed its check: when the store's own copy is at fault (not a lying
        descriptor), it is removed, so the next build or pull puts a sound one back."""
        if not getattr(self.store, "owned", False) or not self.store.blob_path(desc.digest).exists():
            return exc
        if self.store.is_sound(desc.digest):
            return exc
        line = self.store.damaged(desc.digest, "its bytes do not match its digest")
        return IntegrityError(f"{self.where}: {line}", hint="build or pull it again")


# -- staging ------------------------------------------------------------------------------
def prepare_target(dest: Path) -> bool:
    """Make *dest* a directory ready to receive files; return whether it was created. An
    existing file, or a link to one, is a usage error: ``pull -o`` replaces no such thing."""
    try:
        st = os.stat(dest)
    except FileNotFoundError:
        try:
            dest.mkdir(parents=True)
        except FileExistsError:
            return prepare_target(dest)
        except OSError as exc:
            raise UsageError(f"cannot create {shown(dest)}: {exc.strerror}") from None
        return True
    except OSError as exc:
        raise UsageError(f"cannot use {shown(dest)}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{shown(dest)} exists and is not a directory", hint="name a directory to write the files into")
    return False


@contextlib.contextmanager
def staging(dest: Path) -> Iterator[Path]:
    """A private directory inside *dest*, removed on the way out whatever happened."""
    try:
        root = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=dest))
    except OSError as exc:
        raise write_error(exc, dest) from None
    try:
        (root / "tree").mkdir()
        (root / "blobs").mkdir()
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def partial_dir(dest: Path) -> Path:
    """``DIR/.modelbuild-partial``: downloads that a later pull resumes, named by digest.
    A link or a file in its place is refused (no artifact can create it: the name is reserved)."""
    path = dest / PARTIAL_DIR
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise write_error(exc, path) from None
    if not stat.S_ISDIR(os.lstat(path).st_mode):  # mkdir followed no link: lstat tells what is there
        raise BuildError(f"{shown(path)} is not a directory; remove it")
    return path


def same_file(path: Path, digest: str, size: int) -> bool:
    """Whether *path* is a regular file (not a link) holding exactly this blob."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        return False
    verifier = Verifier(digest, size, "file")
    try:
        with open(path, "rb", buffering=0) as fh:
            while chunk := fh.read(CHUNK):
                verifier.update(chunk)
        verifier.check()
    except (OSError, IntegrityError):
        return False
    return True


# -- the whole ------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What a materialisation wrote: files in layer order, and warnings for the user."""

    files: list[str] = field(default_factory=list)
    fetched: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)


def materialize(source: BlobSource, manifest: dict[str, Any], config: dict[str, Any] | None, dest: Path, *,
                jobs: int = 4, steps: Any = None, include: Sequence[str] = ()) -> Outcome:
    """Write the files of *manifest* from *source* into *dest*; see the module docstring.
    With *include* (glob patterns, :func:`included`), only the layers whose path matches
    one are fetched and written (a partial pull); the whole manifest is still validated."""
    from modelbuild.oci.transfer import Steps

    steps = Steps.of(steps)
    where = source.where
    layers, warnings = plan(manifest, config, where)
    if include:
        layers = [layer for layer in layers if layer.path is not None and included(layer.path, include)]
        if not layers:
            raise UsageError(f"--include {' '.join(include)}: no file of {where} matches",
                             hint="`modelbuild inspect --remote REF` lists its files")
    ratio = env_int(EXPANSION_VAR, DEFAULT_RATIO)
    created = prepare_target(dest)
    try:
        return _materialize(source, layers, dest, Outcome(warnings=warnings), jobs, steps, ratio)
    except BaseException:
        if created:  # a failed pull leaves no trace, not even the directory it made
            with contextlib.suppress(OSError):
                dest.rmdir()
        raise


def included(path: str, patterns: Sequence[str]) -> bool:
    """Whether *path* matches one of *patterns*: a pattern without ``/`` matches the file
    name at any depth (``*.json``), one with ``/`` the whole path (``tokenizer/*``), as in
    ``.gitignore``; a directory's pattern (``docs/``) matches what is under it."""
    import fnmatch

    for pattern in patterns:
        if pattern.endswith("/") and (path + "/").startswith(pattern):
            return True
        if "/" in pattern.rstrip("/"):
            if fnmatch.fnmatchcase(path, pattern.strip("/")):
                return True
        elif fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern) or fnmatch.fnmatchcase(path, pattern):
            return True
    return False


def _materialize(source: BlobSource, layers: list[Layer], dest: Path, outcome: Outcome, jobs: int, steps: Any,
                 ratio: int) -> Outcome:
    from modelbuild.oci.registry import transfer_all
    from modelbuild.units import human_size

    where = source.where
    with staging(dest) as stage:
        tree_root, blobs = stage / "tree", stage / "blobs"
        staged: dict[int, Path] = {}  # layer index → its verified bytes in the staging dir
        kept: set[int] = set()  # raw layers already in place with the right bytes
        first_of: dict[str, int] = {}  # digest → the raw layer that fetches it

        def fetch(layer: Layer) -> int:
            verb = getattr(source, "verb", "pull")  # what the source does with a blob: pull, link
            step = steps.new(f"{verb} {layer.label} {layer.desc.digest[7:19]} ({human_size(layer.desc.size)})",
                             layer.desc.size)
            if layer.is_tar:
                path = blobs / f"{layer.index:05d}"
            else:
                assert layer.path is not None
                if _inside(dest, layer.path) and same_file(dest / layer.path, layer.desc.digest, layer.desc.size):
                    kept.add(layer.index)
                    step.finish(False)
                    return -1
                make_parents(tree_root, layer.path)
                path = tree_root / layer.path
            source.fetch(layer.desc, path, step.advance)
            staged[layer.index] = path
            step.finish(True)
            return layer.desc.size

        unique: list[Layer] = []
        for layer in layers:
            if layer.is_tar or first_of.setdefault(layer.desc.digest, layer.index) == layer.index:
                unique.append(layer)
        results = transfer_all([lambda layer=layer: fetch(layer) for layer in unique], max(1, jobs))
        outcome.fetched = sum(1 for n in results if n >= 0)
        outcome.bytes = sum(n for n in results if n >= 0)

        tree = PathTree(where)
        moves: list[tuple[str, int | None]] = []  # (path, mode) in the order they are written
        for layer in layers:
            if not layer.is_tar:
                assert layer.path is not None
                tree.add(layer.path, "file")
                if layer.index not in staged and layer.index not in kept:  # the same bytes as an earlier layer
                    origin = first_of[layer.desc.digest]
                    src = staged.get(origin, dest / layers[origin].path)  # type: ignore[operator]
                    make_parents(tree_root, layer.path)
                    StoreCopy(src).fetch(layer.desc, tree_root / layer.path, None)
                    staged[layer.index] = tree_root / layer.path
                if layer.index in staged:
                    moves.append((layer.path, layer.mode))
                elif layer.mode is not None:
                    os.chmod(dest / layer.path, layer.mode)
                outcome.files.append(layer.path)
                continue
            step = steps.new(f"unpack {layer.label}")
            step.start()
            written = unpack(staged[layer.index], layer, tree_root, tree, where, ratio)
            moves.extend((rel, None) for rel in written)
            outcome.files.append(layer.path or layer.desc.digest)
            step.finish(True)
        _check_targets(dest, tree, moves)
        _move_into_place(tree_root, dest, tree, moves)
    return outcome


class StoreCopy:
    """A blob already verified in the staging directory, copied (and verified) once more."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    def fetch(self, desc: Descriptor, dest: Path, progress: Progress | None) -> None:
        fd = create_exclusive(dest)
        try:
            copy_verified(self.path, fd, desc.digest, desc.size, what="blob", progress=progress)
        finally:
            os.close(fd)


def _inside(dest: Path, rel: str) -> bool:
    """Whether ``dest/rel``'s parent resolves inside *dest* (no link out)."""
    try:
        return (dest / rel).parent.resolve().is_relative_to(dest.resolve())
    except OSError:
        return False


def _check_targets(dest: Path, tree: PathTree, moves: list[tuple[str, int | None]]) -> None:
    """Before anything moves: no file may replace a directory of the target, no directory a
    file, and no path may lead through a link out of the target."""
    root = dest.resolve()
    for rel, _mode in moves:
        target = dest / rel
        if not target.parent.resolve().is_relative_to(root):
            raise IntegrityError(f"{shown(rel)} would be written through a link out of {shown(dest)}; refusing it")
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise BuildError(f"cannot write {shown(target)}: {exc.strerror}") from None
        kind = tree.kinds[rel]
        if stat.S_ISDIR(st.st_mode) and kind != "dir":
            raise UsageError(f"{shown(target)} is a directory; the artifact has a {kind} there",
                             hint="remove it, or pull into another directory")
        if kind == "dir" and not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{shown(target)} exists and is not a directory; the artifact has a directory there",
                             hint="remove it, or pull into another directory")


def _move_into_place(tree_root: Path, dest: Path, tree: PathTree, moves: list[tuple[str, int | None]]) -> None:
    for rel, mode in moves:
        target = dest / rel
        try:
            if tree.kinds[rel] == "dir":
                make_parents(dest, rel + "/x")
                continue
            make_parents(dest, rel)
            if mode is not None:
                os.chmod(tree_root / rel, mode)
            os.replace(tree_root / rel, target)
        except OSError as exc:
            raise write_error(exc, target) from None
    for rel, _ in moves:  # directory modes last, once nothing more is written inside them
        if tree.kinds[rel] == "dir":
            with contextlib.suppress(OSError):
                os.chmod(dest / rel, stat.S_IMODE(os.lstat(tree_root / rel).st_mode))


__all__ = ["BlobSource", "Layer", "Outcome", "StoreSource", "diff_ids", "file_mode", "included", "layer_path",
           "materialize",
           "partial_dir", "plan", "prepare_target", "same_file"]
