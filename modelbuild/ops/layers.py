"""Ops that turn files into ModelPack layers, through layer-codec plugins.

``layer`` packs one file or directory of the context. ``layerset`` packs every file of a
transformed model set (whose files are only known once the transforms ran: sharding
decides how many there are). Both use :func:`pack_layer`, and both return a
:class:`~modelbuild.results.LayerSet`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from modelbuild.description import FileKind
from modelbuild.digests import key_of
from modelbuild.errors import BuildError
from modelbuild.graph import Step
from modelbuild.oci import mediatypes as mt
from modelbuild.ops.base import ExecEnv, Op, Outcome, StepContext, plugin_identity
from modelbuild.results import Descriptor, FileDigest, FileSet, Layer, LayerSet, ModelFile
from modelbuild.tarball import Member


def rfc3339(epoch: int) -> str:
    """*epoch* as the RFC 3339 UTC time the OCI annotations and the ModelPack config's
    ``createdAt`` carry: ``2024-06-01T00:00:00Z``."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def codec_identity(codec_name: str, env: ExecEnv) -> dict[str, Any]:
    """What of a codec enters a cache key (:func:`~modelbuild.ops.base.plugin_identity`)."""
    return plugin_identity(env.host.codecs, codec_name, env)


def content_of(src: FileDigest | ModelFile) -> dict[str, Any]:
    """The part of a file description that identifies its content (not where it lies)."""
    return {"digest": src.digest, "size": src.size, "mode": src.mode, "is_dir": isinstance(src, FileDigest)
            and src.is_dir}


def pack_layer(path: str, kind: str, src: FileDigest | ModelFile, codec_name: str, epoch: int,
               ctx: StepContext, *, own_total: bool = True) -> tuple[Layer, bool]:
    """Encode *src* (a context file or a model-set file) as the layer for *path*; return it
    and whether it was already in the store (a raw file ingested while it was hashed).
    *own_total*: the step's progress total is this file's size (else the caller set it)."""
    env = ctx.env
    codec = env.host.codecs.get(codec_name)
    is_dir = isinstance(src, FileDigest) and src.is_dir
    if is_dir and not codec.archive:
        raise BuildError(f"{path}: layer format {codec.name} cannot hold a directory")
    sources = env.sources
    if not codec.archive and (env.blob_ok(src.digest, src.size)
                              or sources is not None and sources.has(src.digest, src.size)):
        # the blob is the file: in the store, or (a build streaming to a registry) where it lies
        digest, size, diff_id, reused = src.digest, src.size, src.digest, True
    else:
        if own_total:
            ctx.set_total(src.size)
        with env.store.writer() as sink:
            diff_id = codec.encode(_members(path, src), sink, mtime=epoch, progress=ctx.advance)
            digest = sink.commit()
            size = sink.size
        diff_id = diff_id or digest
        if sink.created:
            env.stats.add(bytes_written=size)
        if not codec.archive and digest != src.digest:
            raise BuildError(f"{path} changed during the build; build again")
        reused = False
    media_type = mt.layer_media_type(FileKind(kind).media_family, codec.media_suffix)
    return Layer(Descriptor(media_type, digest, size, annotations=layer_annotations(path, src, epoch)), diff_id), reused


def layer_annotations(path: str, src: FileDigest | ModelFile, epoch: int) -> dict[str, str]:
    """The layer descriptor's annotations for *src* packaged at *path*."""
    is_dir = isinstance(src, FileDigest) and src.is_dir
    metadata = {
        "name": path.rsplit("/", 1)[-1],
        "mode": src.mode,
        "uid": 0,
        "gid": 0,
        "size": 0 if is_dir else src.size,
        "mtime": rfc3339(epoch),
        "typeflag": 5 if is_dir else 0,
    }
    return {
        mt.ANNOTATION_FILE_METADATA: json.dumps(metadata, separators=(",", ":"), ensure_ascii=False),
        mt.ANNOTATION_FILEPATH: path,
        mt.ANNOTATION_MEDIATYPE_UNTESTED: "false",
        mt.ANNOTATION_TITLE: path,
    }


def _members(path: str, src: FileDigest | ModelFile) -> list[Member]:
    if not (isinstance(src, FileDigest) and src.is_dir):
        return [Member(path, "file", src.source, src.mode, src.size)]
    return [Member(m.name, m.kind, m.abspath if m.kind == "file" else None, m.mode, m.size, m.linkname)
            for m in src.members]


class _LayersOp(Op):
    """An op whose result is a :class:`LayerSet`: part of the artifact, valid while its blobs
    are stored, or, in a build streaming to a registry, while each blob not stored is a file
    this build found to have that digest (through the stat cache, or by hashing it)."""

    exported = True
    result_type = LayerSet

    def valid(self, stored: dict[str, Any], env: ExecEnv) -> bool:
        sources = env.sources
        if sources is None:
            return super().valid(stored, env)
        try:
            result = self.decode(stored)
        except ValueError:
            return False
        return all(env.blob_ok(b.digest, b.size) or sources.has(b.digest, b.size) for b in result.blobs())


class LayerOp(_LayersOp):
    """Encode one file or directory of the context as a layer."""

    name = "layer"

    def key(self, step: Step, inputs: list[Any], env: ExecEnv) -> str | None:
        return key_of({**step.definition(), "codec": codec_identity(step.params["codec"], env),
                       "input": content_of(inputs[0])})

    def run(self, step: Step, inputs: list[Any], ctx: StepContext) -> Outcome:
        p = step.params
        base = p.get("base")
        if base and ctx.env.blob_ok(base["digest"], base["size"]):  # a base artifact's file, unchanged
            desc = Descriptor(base["mediaType"], base["digest"], base["size"],
                              annotations=layer_annotations(p["path"], inputs[0], p["epoch"]))
            return Outcome(LayerSet((Layer(desc, base["diffId"]),)))
        layer, _ = pack_layer(p["path"], p["kind"], inputs[0], p["codec"], p["epoch"], ctx)
        return Outcome(LayerSet((layer,)))


class LayerSetOp(_LayersOp):
    """Encode every file of a transformed model set, one layer each."""

    name = "layerset"

    def key(self, step: Step, inputs: list[Any], env: ExecEnv) -> str | None:
        fileset: FileSet = inputs[0]
        files = [{"path": f.path, "kind": f.kind, **content_of(f)} for f in fileset.files]
        return key_of({**step.definition(), "codec": codec_identity(step.params["codec"], env), "files": files})

    def run(self, step: Step, inputs: list[Any], ctx: StepContext) -> Outcome:
        p = step.params
        fileset: FileSet = inputs[0]
        # one bar for the set: the bytes of the files to encode (a raw layer of a blob the
        # store holds is reused as it is, with nothing to report)
        codec = ctx.env.host.codecs.get(p["codec"])
        sources = ctx.env.sources
        pending = [f for f in fileset.files if codec.archive or not (
            ctx.env.blob_ok(f.digest, f.size) or sources is not None and sources.has(f.digest, f.size))]
        if pending:
            ctx.set_total(sum(f.size for f in pending))
        return Outcome(LayerSet(tuple(pack_layer(f.path, f.kind, f, p["codec"], p["epoch"], ctx, own_total=False)[0]
                                      for f in fileset.files)))
