"""Built-in layer codecs: raw, tar, tar+gzip, tar+zstd.

Compressed codecs fix everything that could vary between machines: gzip gets a hand-written
header (mtime 0, no name, OS "unknown") around raw deflate, since zlib's own gzip header
records the build OS; zstd runs in multi-threaded mode on every machine, whose output does
not depend on the number of workers.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

from modelbuild.api import Member, hookimpl, write_tar

# Bump when a codec's output bytes change: it enters every cache key of layers it packed.
CODEC_VERSION = "1"


class RawCodec:
    name = "raw"
    media_suffix = "raw"
    archive = False
    version = CODEC_VERSION
    summary = "the file itself, uncompressed (the ModelPack default; directories become tar)"

    def encode(self, members: list[Member], sink, *, mtime: int = 0, progress=None) -> str | None:  # noqa: ANN001
        (member,) = [m for m in members if m.kind == "file"]
        with open(member.source, "rb") as src:  # type: ignore[arg-type]
            while chunk := src.read(1 << 20):
                sink.write(chunk)
                if progress:
                    progress(len(chunk))
        return None  # the diffId is the layer digest


class TarCodec:
    name = "tar"
    media_suffix = "tar"
    archive = True
    version = CODEC_VERSION
    summary = "an uncompressed, reproducible tar"

    def encode(self, members: list[Member], sink, *, mtime: int = 0, progress=None) -> str | None:  # noqa: ANN001
        write_tar(members, sink.write, mtime=mtime, progress=progress)
        return None


class _CompressedTar:
    archive = True
    version = CODEC_VERSION

    def compressor(self, sink):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def encode(self, members: list[Member], sink, *, mtime: int = 0, progress=None) -> str:  # noqa: ANN001
        diff = hashlib.sha256()
        comp = self.compressor(sink)

        def write(data: bytes | memoryview) -> None:
            diff.update(data)
            comp.write(data)

        write_tar(members, write, mtime=mtime, progress=progress)
        comp.finish()
        return "sha256:" + diff.hexdigest()


class _Gzip:
    def __init__(self, sink) -> None:  # noqa: ANN001
        self.sink = sink
        self.deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        self.crc = 0
        self.size = 0
        # magic, CM=deflate, no flags, MTIME=0, XFL=0, OS=255 (unknown)
        sink.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")

    def write(self, data: bytes | memoryview) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        out = self.deflate.compress(data)
        if out:
            self.sink.write(out)

    def finish(self) -> None:
        self.sink.write(self.deflate.flush())
        self.sink.write(struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF))


class TarGzipCodec(_CompressedTar):
    name = "tar+gzip"
    media_suffix = "tar+gzip"
    summary = "tar compressed with gzip (level 6; slow, weights barely compress)"

    def compressor(self, sink):  # noqa: ANN001, ANN201
        return _Gzip(sink)


class _Zstd:
    def __init__(self, sink) -> None:  # noqa: ANN001
        import zstandard

        self.sink = sink
        self.cobj = zstandard.ZstdCompressor(level=3, threads=-1).compressobj()

    def write(self, data: bytes | memoryview) -> None:
        out = self.cobj.compress(bytes(data))
        if out:
            self.sink.write(out)

    def finish(self) -> None:
        self.sink.write(self.cobj.flush())


class TarZstdCodec(_CompressedTar):
    name = "tar+zstd"
    media_suffix = "tar+zstd"
    summary = "tar compressed with zstd (level 3, multi-threaded)"

    def compressor(self, sink):  # noqa: ANN001, ANN201
        return _Zstd(sink)


@hookimpl
def modelbuild_register_layer_codecs(registry):  # noqa: ANN001, ANN201 - pluggy hook
    for codec in (RawCodec(), TarCodec(), TarGzipCodec(), TarZstdCodec()):
        registry.add(codec)
