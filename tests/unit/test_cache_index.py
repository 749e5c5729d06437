"""The build cache reads its diskcache database with plain SQLite (opening diskcache writes
its settings and syncs on every open) and writes through diskcache: both must see the same
entries, whichever wrote them, and a build that only reads must never open diskcache."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import diskcache

from modelbuild.cache.index import BuildCache, _key


def _stat(path: Path) -> os.stat_result:
    path.write_text("x")
    return path.stat()


def test_what_one_cache_writes_a_fresh_one_reads_without_opening_diskcache(tmp_path):
    small = {"result": {"digest": "sha256:" + "1" * 64}, "form": 3}
    large = {"files": [f"file-{i:06d}.safetensors" for i in range(5000)]}  # over 32 KiB: diskcache's own file
    assert len(pickle.dumps(large)) > 2**15
    st = _stat(tmp_path / "weights")
    writer = BuildCache(tmp_path / "cache")
    writer.set_step("k-small", small)
    writer.set_step("k-large", large)
    writer.set_file_digest(st, "sha256:" + "2" * 64)
    writer.close()

    reader = BuildCache(tmp_path / "cache")
    try:
        assert reader.get_step("k-small") == small
        assert reader.get_step("k-large") == large
        assert reader.get_step("missing") is None
        assert reader.get_file_digest(st) == "sha256:" + "2" * 64
        assert reader.seen_inode(st)
        assert reader._db is None  # nothing was written: diskcache never opened
        reader.drop_step("k-small")  # a write opens it
        assert reader._db is not None and reader.get_step("k-small") is None
        assert sorted(k for k, _ in reader.step_items()) == ["k-large"]
    finally:
        reader.close()


def test_entries_diskcache_wrote_are_read(tmp_path):
    """A cache written by an earlier modelbuild, which read and wrote through diskcache alone."""
    st = _stat(tmp_path / "weights")
    db = diskcache.Cache(str(tmp_path / "cache"), eviction_policy="none", timeout=60)
    db.set(("step", "k"), {"a": 1})
    db.set(BuildCache.stat_key(st), "sha256:" + "3" * 64)
    db.set(("inode", st.st_dev, st.st_ino, st.st_size), "sha256:" + "3" * 64)
    db.close()
    cache = BuildCache(tmp_path / "cache")
    try:
        assert cache.get_step("k") == {"a": 1}
        assert cache.get_file_digest(st) == "sha256:" + "3" * 64 and cache.seen_inode(st)
    finally:
        cache.close()


def test_keys_are_encoded_as_diskcache_encodes_them(tmp_path):
    disk = diskcache.Disk(str(tmp_path), pickle_protocol=pickle.HIGHEST_PROTOCOL)
    for key in (("step", "sha256:" + "a" * 64), ("file", 2049, 123456789, 4096, 1_700_000_000_123_456_789),
                ("inode", 0, 0, 0), ("file", -1, 2**63 - 1, 0, 0)):
        db_key, raw = disk.put(key)
        assert (bytes(db_key), raw) == (_key(key, pickle.HIGHEST_PROTOCOL), False), key


def test_a_new_cache_is_created_and_written_at_once(tmp_path):
    cache = BuildCache(tmp_path / "new" / "cache")
    try:
        assert (tmp_path / "new" / "cache" / "cache.db").is_file()
        cache.set_step("k", {"b": 2})
        assert cache.get_step("k") == {"b": 2}
    finally:
        cache.close()


def test_a_cache_file_without_tables_is_completed(tmp_path):
    """A cache.db another process created but had not filled yet when this one opened it."""
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "cache.db").write_bytes(b"")
    cache = BuildCache(tmp_path / "cache")
    try:
        assert cache.get_step("k") is None
        cache.set_step("k", {"c": 3})
        assert cache.get_step("k") == {"c": 3}
    finally:
        cache.close()
