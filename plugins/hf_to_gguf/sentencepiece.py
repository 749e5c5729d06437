"""A reader of SentencePiece's ``tokenizer.model``: the pieces (text, score, type) of its
``ModelProto``, read from the protobuf wire format, without the ``sentencepiece`` library.

``ModelProto`` (sentencepiece_model.proto) is ``repeated SentencePiece pieces = 1`` plus
specs this converter does not need (trainer, normalizer, self-test data: skipped);
``SentencePiece`` is ``optional string piece = 1; optional float score = 2; optional Type
type = 3 [default = NORMAL]``. The type numbers are GGUF's token types (NORMAL 1, UNKNOWN
2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

PIECE_NORMAL, PIECE_UNKNOWN, PIECE_CONTROL, PIECE_USER_DEFINED, PIECE_UNUSED, PIECE_BYTE = 1, 2, 3, 4, 5, 6
_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5
_FLOAT = struct.Struct("<f")


class ProtoError(ValueError):
    """Not a SentencePiece model (bad protobuf wire format)."""


@dataclass(frozen=True)
class Piece:
    text: str
    score: float
    type: int


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    byte = data[pos] if pos < len(data) else -1
    if 0 <= byte < 0x80:  # the common case: one byte
        return byte, pos + 1
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ProtoError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise ProtoError("varint longer than 10 bytes")


def _field(data: bytes, pos: int, end: int) -> tuple[int, int, Any, int]:
    """The field at *pos*: (number, wire type, value, next position). Varints are ints,
    fixed 32/64-bit values bytes, length-delimited values a (start, end) range; groups
    (wire types 3 and 4, unused by SentencePiece) are an error."""
    key, pos = _varint(data, pos)
    number, wire = key >> 3, key & 7
    if pos > end:
        raise ProtoError("truncated field key")
    if number == 0:
        raise ProtoError("field number 0")
    if wire == _WIRE_VARINT:
        value, pos = _varint(data, pos)
        if pos > end:
            raise ProtoError("truncated varint")
        return number, wire, value, pos
    if wire in (_WIRE_I64, _WIRE_I32):
        size = 8 if wire == _WIRE_I64 else 4
        if pos + size > end:
            raise ProtoError("truncated fixed-size field")
        return number, wire, data[pos:pos + size], pos + size
    if wire == _WIRE_LEN:
        size, pos = _varint(data, pos)
        if pos + size > end:
            raise ProtoError("truncated length-delimited field")
        return number, wire, (pos, pos + size), pos + size
    raise ProtoError(f"unsupported wire type {wire} (field {number})")


def read_pieces(data: bytes) -> list[Piece]:
    """The pieces of a serialized ``ModelProto``, by id. Raises :class:`ProtoError`."""
    data = bytes(data)
    pieces: list[Piece] = []
    pos, end = 0, len(data)
    while pos < end:
        number, wire, value, pos = _field(data, pos, end)
        if number != 1:
            continue
        if wire != _WIRE_LEN:
            raise ProtoError(f"pieces (field 1) has wire type {wire}")
        text, score, ptype = "", 0.0, PIECE_NORMAL
        at, stop = value
        while at < stop:
            n, w, v, at = _field(data, at, stop)
            if n == 1 and w == _WIRE_LEN:
                try:
                    text = data[v[0]:v[1]].decode("utf-8")
                except UnicodeDecodeError:
                    raise ProtoError(f"piece {len(pieces)} is not UTF-8") from None
            elif n == 2 and w == _WIRE_I32:
                score = _FLOAT.unpack(v)[0]
            elif n == 3 and w == _WIRE_VARINT:
                ptype = v
            elif n in (1, 2, 3):
                raise ProtoError(f"piece {len(pieces)}: field {n} has wire type {w}")
        pieces.append(Piece(text, score, ptype))
    if not pieces:
        raise ProtoError("no pieces")
    return pieces
