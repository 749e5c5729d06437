"""Content digests and canonical JSON: the two things every cache key is made of."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
CHUNK = 1 << 20  # 1 MiB reads: ~1.5x faster hashing than 4 KiB (FACTS.md §6)


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes a digest is taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def key_of(definition: Any) -> str:
    """The key of a canonical definition (a step, a cache record)."""
    return sha256_bytes(canonical_json(definition))


def is_digest(text: str) -> bool:
    return bool(DIGEST_RE.fullmatch(text))


def hex_of(digest: str) -> str:
    if not is_digest(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return digest[7:]
