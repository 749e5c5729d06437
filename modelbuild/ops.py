"""What each kind of step does: the core ops of a ModelPack build.

An op computes its step's cache key from the step's definition and its inputs' content
digests (``key``), does the work (``run``), and says whether a cached result is still usable
(``valid``: its blobs are still in the store). Ops get everything through :class:`StepContext`
and never print: progress goes out as events.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelbuild.context import walk_tree
from modelbuild.digests import canonical_json, key_of
from modelbuild.errors import BuildError, ModelbuildError
from modelbuild.graph import Step
from modelbuild.oci import mediatypes as mt
from modelbuild.progress import Emitter, Event
from modelbuild.tarball import Member, normalise_mode

if TYPE_CHECKING:
    from modelbuild.cache import BuildCache
    from modelbuild.locks import KeyLocks
    from modelbuild.plugins import PluginHost
    from modelbuild.store import Store

# A file modified less than this long before it was hashed is not put in the stat cache:
# file-system clocks are coarse, so a write in the same tick would not change its mtime.
RACY_WINDOW_NS = 1_000_000_000


@dataclass
class Stats:
    """What a build did, reported in ``--json`` output and asserted by tests."""

    steps_run: int = 0
    steps_cached: int = 0
    bytes_hashed: int = 0
    bytes_written: int = 0
    files_hashed: list[str] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: Any) -> None:
        with self._lock:
            for name, value in counts.items():
                current = getattr(self, name)
                if isinstance(current, list):
                    current.append(value)
                else:
                    setattr(self, name, current + value)

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps_run": self.steps_run,
            "steps_cached": self.steps_cached,
            "bytes_hashed": self.bytes_hashed,
            "bytes_written": self.bytes_written,
            "files_hashed": sorted(self.files_hashed),
            "executed": sorted(self.executed),
        }


@dataclass
class ExecEnv:
    store: "Store"
    cache: "BuildCache"
    host: "PluginHost"
    emitter: Emitter
    stats: Stats = field(default_factory=Stats)
    no_cache: bool = False
    locks: "KeyLocks" = field(init=False)

    def __post_init__(self) -> None:
        from modelbuild.locks import KeyLocks

        self.locks = KeyLocks(self.store.root / "locks")


class StepContext:
    """What an op sees while it runs: the environment and a progress reporter."""

    def __init__(self, env: ExecEnv, number: int, step: Step) -> None:
        self.env = env
        self.number = number
        self.step = step
        self.current = 0
        self.total: int | None = None

    def set_total(self, total: int) -> None:
        self.total = total

    def advance(self, n: int) -> None:
        self.current += n
        self.env.emitter.emit(Event("progress", self.number, self.step.label, self.current, self.total))

    def log(self, message: str) -> None:
        self.env.emitter.emit(Event("log", self.number, self.step.label, message=message))


@dataclass
class Outcome:
    result: dict[str, Any]
    cached: bool = False


class Op:
    name = ""

    def key(self, step: Step, inputs: list[dict[str, Any]], env: ExecEnv) -> str | None:
        """The step's cache key, or None for a step that always runs (it is cheap)."""
        return None

    def run(self, step: Step, inputs: list[dict[str, Any]], ctx: StepContext) -> Outcome:
        raise NotImplementedError

    def valid(self, result: dict[str, Any], env: ExecEnv) -> bool:
        return True


class SourceOp(Op):
    """Make the build context available. Local directories need no work."""

    name = "source"

    def run(self, step: Step, inputs: list[dict[str, Any]], ctx: StepContext) -> Outcome:
        root = step.params["root"]
        if not os.path.isdir(root):
            raise BuildError(f"build context {root} is gone")
        return Outcome({"root": root}, cached=True)


class DigestOp(Op):
    """Content digest of a file or directory, through the stat cache.

    With ``ingest`` (raw layers), a file missing from the store is copied in while it is
    hashed, so its bytes are read exactly once and the layer step has nothing left to do.
    """

    name = "digest"

    def run(self, step: Step, inputs: list[dict[str, Any]], ctx: StepContext) -> Outcome:
        p = step.params
        root = Path(inputs[0]["root"])
        try:
            if p["is_dir"]:
                return self._directory(root, p["path"], ctx)
            return self._file(root, p["path"], p["ingest"], ctx)
        except FileNotFoundError as exc:
            raise BuildError(f"{p['path']}: vanished during the build ({exc.filename})") from None

    def _file(self, root: Path, rel: str, ingest: bool, ctx: StepContext) -> Outcome:
        path = root / rel
        st = os.stat(path)
        digest, cached = self._digest(path, st, rel, ingest, ctx)
        return Outcome(self._result(path, st, digest), cached=cached)

    def _digest(self, path: Path, st: os.stat_result, rel: str, ingest: bool, ctx: StepContext) -> tuple[str, bool]:
        """The file's digest and whether the stat cache knew it; hashes at most once."""
        env = ctx.env
        digest = self._known(st, ingest, env)
        if digest is not None:
            return digest, True
        # another build (or step) may be hashing this very file: wait, then use its answer
        with env.locks.hold(repr(env.cache.stat_key(st))):
            digest = self._known(st, ingest, env)
            if digest is not None:
                return digest, True
            return self._hash(path, st, rel, ingest, ctx), False

    @staticmethod
    def _known(st: os.stat_result, ingest: bool, env: ExecEnv) -> str | None:
        """The digest the stat cache has for this file, if its blob is where it must be."""
        digest = None if env.no_cache else env.cache.get_file_digest(st)
        if digest is not None and (not ingest or env.store.has_blob(digest)):
            return digest
        return None

    def _hash(self, path: Path, st: os.stat_result, rel: str, ingest: bool, ctx: StepContext) -> str:
        """Hash a file; with *ingest*, make sure its bytes are in the store too.

        A file never seen before is copied into the store while it is hashed (one read). A
        file whose inode was hashed before under another mtime (touched, or checked out
        again) is most likely unchanged: it is only hashed, and copied in a second pass
        just when its content turns out to be new.
        """
        env = ctx.env
        ctx.set_total(st.st_size)
        if ingest and not env.cache.seen_inode(st):
            digest, size, created = env.store.ingest_file(path, ctx.advance)
            if created:
                env.stats.add(bytes_written=size)
        else:
            import hashlib

            from modelbuild.store import copy_stream

            hasher = hashlib.sha256()
            size = copy_stream(path, hasher.update, ctx.advance)
            digest = "sha256:" + hasher.hexdigest()
            if ingest and not env.store.has_blob(digest):
                ctx.current = 0
                digest2, size, created = env.store.ingest_file(path, ctx.advance)
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

    @staticmethod
    def _result(path: Path, st: os.stat_result, digest: str) -> dict[str, Any]:
        return {
            "digest": digest,
            "size": st.st_size,
            "mode": normalise_mode(st.st_mode),
            "is_dir": False,
            "source": str(path),
        }

    def _directory(self, root: Path, rel: str, ctx: StepContext) -> Outcome:
        tree = walk_tree(root, rel)
        all_cached = True
        members = []
        for f in tree:
            name = f.path
            mode = normalise_mode(f.mode, f.kind == "dir")
            digest = ""
            if f.kind == "file":
                digest, cached = self._digest(Path(f.abspath), os.stat(f.abspath), name, False, ctx)
                all_cached &= cached
            members.append([name, f.kind, mode, f.size, digest, f.linkname, f.abspath])
        tree_digest = key_of([m[:6] for m in members])
        result = {
            "digest": tree_digest,
            "size": sum(m[3] for m in members),
            "mode": 0o755,
            "is_dir": True,
            "members": members,
        }
        return Outcome(result, cached=all_cached)


def _rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class LayerOp(Op):
    """Encode a file or directory as a ModelPack layer with a layer codec plugin."""

    name = "layer"

    def _codec(self, step: Step, env: ExecEnv) -> Any:
        return env.host.codecs.get(step.params["codec"])

    def key(self, step: Step, inputs: list[dict[str, Any]], env: ExecEnv) -> str | None:
        codec = self._codec(step, env)
        owner = env.host.codecs.owner(codec.name)
        content = {k: inputs[0][k] for k in ("digest", "size", "mode", "is_dir")}
        return key_of(
            {
                **step.definition(),
                "codec": {"name": codec.name, "version": codec.version, "plugin": owner,
                          "plugin_version": env.host.plugin_version(owner)},
                "input": content,
            }
        )

    def valid(self, result: dict[str, Any], env: ExecEnv) -> bool:
        return env.store.has_blob(result["descriptor"]["digest"])

    def run(self, step: Step, inputs: list[dict[str, Any]], ctx: StepContext) -> Outcome:
        p = step.params
        env = ctx.env
        src = inputs[0]
        codec = self._codec(step, env)
        if src["is_dir"] and not codec.archive:
            raise BuildError(f"{p['path']}: layer format {codec.name} cannot hold a directory")
        members = self._members(p["path"], src)
        if not codec.archive and env.store.has_blob(src["digest"]):
            digest, size, diff_id = src["digest"], src["size"], src["digest"]
            cached = True
        else:
            ctx.set_total(src["size"])
            with env.store.writer() as sink:
                diff_id = codec.encode(members, sink, mtime=p["epoch"], progress=ctx.advance)
                digest = sink.commit()
                size = sink.size
            diff_id = diff_id or digest
            if sink.created:
                env.stats.add(bytes_written=size)
            if not codec.archive and digest != src["digest"]:
                raise BuildError(f"{p['path']} changed during the build; build again")
            cached = False
        kind = p["kind"]
        from modelbuild.description import FileKind

        family = FileKind(kind).media_family
        metadata = {
            "name": p["path"].rsplit("/", 1)[-1],
            "mode": src["mode"],
            "uid": 0,
            "gid": 0,
            "size": 0 if src["is_dir"] else src["size"],
            "mtime": _rfc3339(p["epoch"]),
            "typeflag": 5 if src["is_dir"] else 0,
        }
        descriptor = {
            "mediaType": mt.layer_media_type(family, codec.media_suffix),
            "digest": digest,
            "size": size,
            "annotations": {
                mt.ANNOTATION_FILE_METADATA: _go_json(metadata),
                mt.ANNOTATION_FILEPATH: p["path"],
                mt.ANNOTATION_MEDIATYPE_UNTESTED: "false",
                mt.ANNOTATION_TITLE: p["path"],
            },
        }
        return Outcome({"descriptor": descriptor, "diffId": diff_id}, cached=cached)

    @staticmethod
    def _members(path: str, src: dict[str, Any]) -> list[Member]:
        if not src["is_dir"]:
            return [Member(path, "file", src["source"], src["mode"], src["size"])]
        return [
            Member(name, kind, abspath if kind == "file" else None, mode, size, linkname)
            for name, kind, mode, size, _digest, linkname, abspath in src["members"]
        ]


def _go_json(obj: dict[str, Any]) -> str:
    """Compact JSON in insertion order, as Go's encoding/json writes a struct."""
    import json

    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class ConfigOp(Op):
    """Write the ModelPack config, validated against the spec's schema."""

    name = "config"

    def key(self, step: Step, inputs: list[dict[str, Any]], env: ExecEnv) -> str | None:
        return key_of({**step.definition(), "diffIds": [i["diffId"] for i in inputs]})

    def valid(self, result: dict[str, Any], env: ExecEnv) -> bool:
        return env.store.has_blob(result["descriptor"]["digest"])

    def run(self, step: Step, inputs: list[dict[str, Any]], ctx: StepContext) -> Outcome:
        from modelbuild.schema import validate_config

        doc = build_config(step.params, [i["diffId"] for i in inputs])
        validate_config(doc)
        data = canonical_json(doc)
        digest = ctx.env.store.put_bytes(data)
        return Outcome({"descriptor": {"mediaType": mt.MODEL_CONFIG, "digest": digest, "size": len(data)}})


def build_config(params: dict[str, Any], diff_ids: list[str]) -> dict[str, Any]:
    descriptor = dict(params["descriptor"])
    if params.get("created"):
        descriptor["createdAt"] = params["created"]
    config = dict(params["config"])
    if params.get("capabilities"):
        config["capabilities"] = dict(params["capabilities"])
    return {"descriptor": descriptor, "config": config, "modelfs": {"type": "layers", "diffIds": diff_ids}}


class ManifestOp(Op):
    """Write the OCI image manifest that makes the files a ModelPack artifact."""

    name = "manifest"

    def key(self, step: Step, inputs: list[dict[str, Any]], env: ExecEnv) -> str | None:
        return key_of({**step.definition(), "descriptors": [i["descriptor"] for i in inputs]})

    def valid(self, result: dict[str, Any], env: ExecEnv) -> bool:
        return env.store.has_blob(result["descriptor"]["digest"])

    def run(self, step: Step, inputs: list[dict[str, Any]], ctx: StepContext) -> Outcome:
        config, *layers = inputs
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": mt.MODEL_ARTIFACT,
            "config": config["descriptor"],
            "layers": [layer["descriptor"] for layer in layers],
        }
        annotations = dict(step.params["labels"])
        if step.params.get("created"):
            annotations.setdefault(mt.ANNOTATION_CREATED, step.params["created"])
        if annotations:
            manifest["annotations"] = dict(sorted(annotations.items()))
        data = canonical_json(manifest)
        digest = ctx.env.store.put_bytes(data)
        return Outcome(
            {
                "descriptor": {
                    "mediaType": mt.OCI_MANIFEST,
                    "artifactType": mt.MODEL_ARTIFACT,
                    "digest": digest,
                    "size": len(data),
                }
            }
        )


class ExportOp(Op):
    """Tag the manifest in the local store and write any ``--output`` layouts."""

    name = "export"

    def run(self, step: Step, inputs: list[dict[str, Any]], ctx: StepContext) -> Outcome:
        from modelbuild.oci.layout import export_layout

        desc = inputs[0]["descriptor"]
        changed = False
        for ref in step.params["tags"]:
            changed |= ctx.env.store.tag(ref, desc)
        for output in step.params["outputs"]:
            if output["type"] != "oci":
                raise ModelbuildError(f"unsupported output type {output['type']!r}")
            ref = step.params["tags"][0] if step.params["tags"] else None
            changed |= export_layout(ctx.env.store, desc, Path(output["dest"]), ref)
        return Outcome({"descriptor": desc, "tags": step.params["tags"]}, cached=not changed)


CORE_OPS: dict[str, Op] = {op.name: op for op in (SourceOp(), DigestOp(), LayerOp(), ConfigOp(), ManifestOp(), ExportOp())}
