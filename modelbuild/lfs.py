"""Git LFS pointer files: recognised wherever a weight file is read, with the fix.

A Hugging Face repository cloned without git-lfs (or before ``git lfs pull``) holds small
text files where the weights, and often the tokenizer, should be::

    version https://git-lfs.github.com/spec/v1
    oid sha256:4d3f…
    size 2200119864

Packaged, such a file is never what anyone meant; parsed as a weight format it fails with
a message about header lengths or magic numbers that hides the cause. So the build refuses
it when it first reads the file (any kind), and every format reader that fails on a file
asks :func:`pointer_hint` whether this is why.
"""

from __future__ import annotations

import os

PREFIX = b"version https://git-lfs.github.com/spec/"
# Pointers are ~130 bytes; the spec allows extension lines, never kilobytes.
MAX_POINTER_SIZE = 1024
HINT = "run `git lfs pull` in the model's repository, or clone it with git-lfs installed"


def is_pointer_head(head: bytes) -> bool:
    """Whether a file that starts with *head* (its first bytes) is a Git LFS pointer."""
    return head.startswith(PREFIX)


def pointer_hint(head: bytes) -> str | None:
    """The hint for a format error on a file starting with *head*, when it is a pointer."""
    return f"it is a Git LFS pointer, not the file it names: {HINT}" if is_pointer_head(head) else None


def is_pointer_file(path: str | os.PathLike[str], size: int | None = None) -> bool:
    """Whether the file at *path* is a Git LFS pointer (reads at most a few bytes)."""
    if size is None:
        size = os.stat(path).st_size
    if size > MAX_POINTER_SIZE or size < len(PREFIX):
        return False
    with open(path, "rb") as fh:
        return is_pointer_head(fh.read(len(PREFIX)))
