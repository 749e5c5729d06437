"""One materialisation: an artifact's layers become files in a directory, the same way from
every source (the local store, an OCI layout, a registry).

1. **Plan.** Every layer descriptor is validated (:class:`~modelbuild.oci.verify.Descriptor`),
   every path checked against :mod:`modelbuild.artifact_paths`, and conflicts refused before a
   byte moves: two layers writing one path, a file where another layer needs a directory
   (``a`` and ``a/b``). Paths that differ only in case are a warning (they collide on macOS
   and Windows file systems).
2. **Stage.** Blobs land in a private directory inside the target,
   ``DIR/.modelbuild-staging-XXXXXX`` (mode 0700, a name no artifact may use), created with
   ``O_EXCL``: raw layers at their path under ``tree/``, tar layers as numbered blobs under
   ``blobs/``. Each blob is verified against its digest and size as it is written. Downloads
   from a registry resume from ``DIR/.modelbuild-partial/<hex>``, named by digest only.
3. **Unpack.** Tar layers are unpacked in layer order into ``tree/``, member by member: each
   name and link checked, each member created with ``O_EXCL`` (nothing through a link), the
   decompressed stream counted against a bound derived from the sizes the artifact declares
   and hashed against its config's diffId.
4. **Move.** Only when every file is verified, each is renamed into place; the staging
   directory is removed whatever happens. A failed pull leaves the target as it was.

A file already in the target with the right bytes is left alone (and not downloaded again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from modelbuild import artifact_paths as ap
from modelbuild.digests import CHUNK, is_digest
from modelbuild.errors import BuildError, UsageError
from modelbuild.limits import env_int, raise_hint
from modelbuild.oci import mediatypes as mt
from modelbuild.oci.verify import Descriptor, IntegrityError, Verifier, copy_verified, shown

Progress = Callable[[int], None]
LEGACY_ANNOTATION_FILE_METADATA = "org.cnai.model.file.metadata+json"
STAGING_PREFIX = ap.RESERVED_PREFIX + "staging-"
PARTIAL_DIR = ap.RESERVED_PREFIX + "partial"
EXPANSION_VAR = "MODELBUILD_MAX_EXPANSION_RATIO"
DEFAULT_RATIO = 32  # weights barely compress; text and JSON 4–10×; past 32× is a bomb or a mistake
EXPANSION_FLOOR = 64 << 20  # small layers may expand this much whatever their ratio
MARGIN = 1 << 20  # tar headers and padding beyond a declared file size


class BlobSource(Protocol):
    """Where an artifact's blobs come from: the local store or a layout, or a registry."""

    where: str

    def fetch(self, desc: Descriptor, dest: Path, progress: Progress | None) -> None:
        """Create *dest* (it does not exist) holding the blob's bytes, verified."""


# -- the plan ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """One layer of the artifact, validated."""

    index: int
    desc: Descriptor
    path: str | None  # the annotated file path (required for a raw layer)
    compression: str | None  # None (raw bytes or plain tar), "gzip" or "zstd"
    is_tar: bool
    mode: int | None
    declared: int | None  # the file size its metadata annotation declares
    diff_id: str | None

    @property
    def label(self) -> str:
        return shown(self.path or self.desc.digest[7:19], 60)

    def expansion_limit(self, ratio: int) -> int:
        """How many bytes this layer's tar stream may have once decompressed."""
        if self.compression is None:
            return self.desc.size
        if self.declared is not None and self.declared > 0:
            return self.declared + self.declared // 100 + MARGIN
        return max(EXPANSION_FLOOR, self.desc.size * ratio)


def layer_path(layer: dict[str, Any]) -> str | None:
    """The file path a layer is written to: ``org.cncf.model.filepath``, the legacy
    ``org.cnai.model.filepath``, else ``org.opencontainers.image.title``."""
    ann = layer.get("annotations") or {}
    value = ann.get(mt.ANNOTATION_FILEPATH) or ann.get(mt.LEGACY_ANNOTATION_FILEPATH) or ann.get(mt.ANNOTATION_TITLE)
    return value if isinstance(value, str) else None


def _metadata(annotations: Any) -> dict[str, Any]:
    raw = annotations.get(mt.ANNOTATION_FILE_METADATA) or annotations.get(LEGACY_ANNOTATION_FILE_METADATA)
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def file_mode(annotations: Any) -> int | None:
    """The permission bits from the file-metadata annotation (new or legacy key), or None."""
    mode = _int(_metadata(annotations or {}).get("mode"))
    return None if mode is None else mode & 0o777


def _compression(media_type: str) -> tuple[bool, str | None]:
    for suffix, codec in (("tar+gzip", "gzip"), ("tar+zstd", "zstd"), ("tar", None)):
        if media_type.endswith(("." + suffix, "/" + suffix)):
            return True, codec
    return False, None


def diff_ids(config: dict[str, Any] | None) -> list[Any]:
    """The config's ``modelfs.diffIds`` (or the legacy ``diff_ids``), else an empty list."""
    fs = (config or {}).get("modelfs")
    if not isinstance(fs, dict):
        return []
    ids = fs.get("diffIds", fs.get("diff_ids"))
    return ids if isinstance(ids, list) else []


def plan(manifest: dict[str, Any], config: dict[str, Any] | None, where: str) -> tuple[list[Layer], list[str]]:
    """The layers of *manifest*, validated, and warnings; raises before any byte is written."""
    raw_layers = manifest.get("layers")
    if not isinstance(raw_layers, list):
        raise IntegrityError(f"{where} is not an artifact with layers")
    ids = diff_ids(config)
    ids = ids if len(ids) == len(raw_layers) else []
    layers: list[Layer] = []
    tree = _Tree(where)
    for i, obj in enumerate(raw_layers):
        desc = Descriptor.parse(obj, f"{where}: layer {i + 1}")
        is_tar, compression = _compression(desc.media_type)
        path = layer_path(dict(desc.raw))
        if path is not None and (problem := ap.path_problem(path)):
            raise IntegrityError(f"{where}: layer {desc.digest} has file path {shown(path)} that {problem}; refusing it")
        if path is None and not is_tar:
            raise IntegrityError(f"{where}: layer {desc.digest} has no file path annotation")
        meta = _metadata(desc.annotations)
        diff_id = ids[i] if ids and isinstance(ids[i], str) and is_digest(ids[i]) else None
        layer = Layer(i, desc, path, compression, is_tar, file_mode(desc.annotations), _int(meta.get("size")), diff_id)
        if not is_tar:
            tree.add(path, "file")  # type: ignore[arg-type]
        layers.append(layer)
    return layers, tree.case_warnings()


class _Tree:
    """The paths an artifact writes, refusing a second writer of one path and a file where a
    directory is needed (or the reverse); directories may be shared by several layers."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.kinds: dict[str, str] = {}
        self.folded: dict[str, str] = {}
        self.collisions: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def add(self, rel: str, kind: str) -> None:
        with self.lock:
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                parent = "/".join(parts[:depth])
                have = self.kinds.get(parent)
                if have is None:
                    self._record(parent, "dir")
                elif have != "dir":
                    raise IntegrityError(f"{self.where}: {shown(rel)} needs {shown(parent)} to be a directory, "
                                         f"but the artifact also writes a {have} there; refusing it")
            have = self.kinds.get(rel)
            if have is not None and not (have == "dir" and kind == "dir"):
                what = "two layers write" if have == kind == "file" else f"a {kind} and a {have} are both at"
                raise IntegrityError(f"{self.where}: {what} {shown(rel)}; refusing the artifact")
            self._record(rel, kind)

    def _record(self, rel: str, kind: str) -> None:
        self.kinds[rel] = kind
        folded = rel.casefold()
        other = self.folded.setdefault(folded, rel)
        if other != rel:
            self.collisions.append((other, rel))

    def case_warnings(self) -> list[str]:
        return [f"{shown(a)} and {shown(b)} differ only in case: they collide on case-insensitive file systems"
                for a, b in self.collisions]


# -- sources ------------------------------------------------------------------------------
def _fsync_enabled() -> bool:
    return os.environ.get("MODELBUILD_FSYNC", "1") != "0"


def create_exclusive(path: Path, mode: int = 0o600) -> int:
    """A new file's descriptor: never an existing file, never through a symbolic link."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, mode)
    except FileExistsError:
        raise IntegrityError(f"{shown(path)} already exists in the staging directory; refusing to overwrite it") from None
    except OSError as exc:
        raise _os_error(exc, path) from None


class StoreSource:
    """Blobs of the local store or of an OCI layout directory, verified while copied."""

    def __init__(self, store: Any, where: str) -> None:
        self.store, self.where = store, where

    def fetch(self, desc: Descriptor, dest: Path, progress: Progress | None) -> None:
        fd = create_exclusive(dest)
        try:
            copy_verified(self.store.blob_path(desc.digest), fd, desc.digest, desc.size,
                          what=f"{self.where}: blob", progress=progress)
            if _fsync_enabled():
                os.fsync(fd)
        finally:
            os.close(fd)


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
        raise _os_error(exc, dest) from None
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
        raise _os_error(exc, path) from None
    if not stat.S_ISDIR(os.lstat(path).st_mode):  # mkdir followed no link: lstat tells what is there
        raise BuildError(f"{shown(path)} is not a directory; remove it")
    return path


def _os_error(exc: OSError, path: Path) -> BuildError:
    if exc.errno == 28:  # ENOSPC
        return BuildError(f"no space left on device while writing {shown(path)}")
    return BuildError(f"cannot write {shown(path)}: {exc.strerror or exc}")


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


# -- unpacking tar layers -----------------------------------------------------------------
class _Expanded:
    """A decompressed stream that counts and hashes what it yields and stops at *limit*."""

    def __init__(self, raw: BinaryIO, compression: str | None, limit: int, what: str) -> None:
        if compression == "gzip":
            import gzip

            self.stream: Any = gzip.GzipFile(fileobj=raw, mode="rb")
        elif compression == "zstd":
            import zstandard

            self.stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        else:
            self.stream = raw
        self.limit, self.what = limit, what
        self.count = 0
        self.hasher = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = CHUNK if n is None or n < 0 else n
        try:
            data = self.stream.read(min(n, self.limit + 1 - self.count))
        except (OSError, EOFError, ValueError) as exc:  # gzip.BadGzipFile is an OSError
            raise IntegrityError(f"{self.what}: cannot decompress ({shown(exc, 100)})") from None
        except Exception as exc:  # zstandard.ZstdError
            if type(exc).__name__ == "ZstdError":
                raise IntegrityError(f"{self.what}: cannot decompress ({shown(exc, 100)})") from None
            raise
        self.count += len(data)
        if self.count > self.limit:
            raise IntegrityError(f"{self.what} expands to more than {self.limit} bytes, more than its sizes allow",
                                 hint=raise_hint(EXPANSION_VAR) + " for layers that declare no size")
        self.hasher.update(data)
        return data

    def drain(self) -> None:
        """Read to the end, so the hash covers the whole decompressed stream."""
        while self.read(CHUNK):
            pass


def _member_kind(member: tarfile.TarInfo) -> str | None:
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    return None


def unpack(blob: Path, layer: Layer, tree_root: Path, tree: _Tree, where: str, ratio: int) -> list[str]:
    """Unpack tar *layer* (its verified blob) under *tree_root*; return the paths it wrote."""
    what = f"{where}: layer {layer.label} ({layer.desc.digest})"
    written: list[str] = []
    with open(blob, "rb") as raw:
        stream = _Expanded(raw, layer.compression, layer.expansion_limit(ratio), what)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tf:  # type: ignore[call-overload]
                for member in tf:
                    rel = _extract_member(tf, member, tree_root, tree, what)
                    if rel:
                        written.append(rel)
        except tarfile.TarError as exc:
            raise IntegrityError(f"{what}: not a valid tar archive ({shown(exc, 100)})") from None
        stream.drain()
    got = "sha256:" + stream.hasher.hexdigest()
    if layer.compression and layer.diff_id and got != layer.diff_id:
        raise IntegrityError(f"{what}: its uncompressed content has digest {got}, not the diffId {layer.diff_id} "
                             "its config declares")
    return written


def _extract_member(tf: tarfile.TarFile, member: tarfile.TarInfo, root: Path, tree: _Tree, what: str) -> str | None:
    rel = ap.normalise(member.name)
    if not rel or rel == ".":
        return None
    if problem := ap.path_problem(rel):
        raise IntegrityError(f"{what}: member {shown(rel)} {problem}; refusing it")
    kind = _member_kind(member)
    if kind is None:
        raise IntegrityError(f"{what}: member {shown(rel)} is not a regular file, directory or symbolic link")
    if kind == "symlink" and (problem := ap.link_problem(rel, member.linkname)):
        raise IntegrityError(f"{what}: symbolic link {shown(rel)} {problem}; refusing it")
    tree.add(rel, kind)
    target = root / rel
    _make_parents(root, rel)
    try:
        if kind == "dir":
            with contextlib.suppress(FileExistsError):
                target.mkdir(mode=0o700)
            os.chmod(target, (member.mode & 0o755) | 0o700, follow_symlinks=False)
        elif kind == "symlink":
            os.symlink(member.linkname, target)
        else:
            _write_member(tf, member, target, what)
    except OSError as exc:
        raise _os_error(exc, target) from None
    return rel


def _make_parents(root: Path, rel: str) -> None:
    """Create the directories above *rel* under *root*; the tree check has made sure none of
    them is a file or a link."""
    parent = root
    for part in rel.split("/")[:-1]:
        parent = parent / part
        with contextlib.suppress(FileExistsError):
            parent.mkdir(mode=0o755)


def _write_member(tf: tarfile.TarFile, member: tarfile.TarInfo, target: Path, what: str) -> None:
    fd = create_exclusive(target)
    try:
        source = tf.extractfile(member)
        left = member.size
        while left > 0 and source is not None:
            chunk = source.read(min(CHUNK, left))
            if not chunk:
                raise IntegrityError(f"{what}: member {shown(member.name)} is cut short")
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            left -= len(chunk)
        os.fchmod(fd, (member.mode & 0o777) | 0o600)
        if _fsync_enabled():
            os.fsync(fd)
    finally:
        os.close(fd)


# -- the whole ------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What a materialisation wrote: files in layer order, and warnings for the user."""

    files: list[str] = field(default_factory=list)
    fetched: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)


def materialize(source: BlobSource, manifest: dict[str, Any], config: dict[str, Any] | None, dest: Path, *,
                jobs: int = 4, steps: Any = None) -> Outcome:
    """Write the files of *manifest* from *source* into *dest*; see the module docstring."""
    from modelbuild.oci.transfer import _Steps

    steps = _Steps.of(steps)
    where = source.where
    layers, warnings = plan(manifest, config, where)
    ratio = env_int(EXPANSION_VAR, DEFAULT_RATIO)
    created = prepare_target(dest)
    try:
        return _materialize(source, layers, dest, Outcome(warnings=warnings), jobs, steps, ratio)
    except BaseException:
        if created:  # a failed pull leaves no trace, not even the directory it made
            with contextlib.suppress(OSError):
                dest.rmdir()
        raise


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
            step = steps.new(f"pull {layer.label} {layer.desc.digest[7:19]} ({human_size(layer.desc.size)})",
                             layer.desc.size)
            if layer.is_tar:
                path = blobs / f"{layer.index:05d}"
            else:
                assert layer.path is not None
                if _inside(dest, layer.path) and same_file(dest / layer.path, layer.desc.digest, layer.desc.size):
                    kept.add(layer.index)
                    step.finish(False)
                    return -1
                _make_parents(tree_root, layer.path)
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

        tree = _Tree(where)
        moves: list[tuple[str, int | None]] = []  # (path, mode) in the order they are written
        for layer in layers:
            if not layer.is_tar:
                assert layer.path is not None
                tree.add(layer.path, "file")
                if layer.index not in staged and layer.index not in kept:  # the same bytes as an earlier layer
                    origin = first_of[layer.desc.digest]
                    src = staged.get(origin, dest / layers[origin].path)  # type: ignore[operator]
                    _make_parents(tree_root, layer.path)
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


def _check_targets(dest: Path, tree: _Tree, moves: list[tuple[str, int | None]]) -> None:
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


def _move_into_place(tree_root: Path, dest: Path, tree: _Tree, moves: list[tuple[str, int | None]]) -> None:
    for rel, mode in moves:
        target = dest / rel
        try:
            if tree.kinds[rel] == "dir":
                _make_parents(dest, rel + "/x")
                continue
            _make_parents(dest, rel)
            if mode is not None:
                os.chmod(tree_root / rel, mode)
            os.replace(tree_root / rel, target)
        except OSError as exc:
            raise _os_error(exc, target) from None
    for rel, _ in moves:  # directory modes last, once nothing more is written inside them
        if tree.kinds[rel] == "dir":
            with contextlib.suppress(OSError):
                os.chmod(dest / rel, stat.S_IMODE(os.lstat(tree_root / rel).st_mode))


__all__ = ["BlobSource", "Layer", "Outcome", "StoreSource", "diff_ids", "file_mode", "layer_path", "materialize",
           "partial_dir", "plan", "prepare_target", "same_file"]
