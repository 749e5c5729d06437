"""The store in-process: blobs appear whole or not at all, reads verify, damage is found and
removed, tags move together."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from modelbuild.errors import StoreError
from modelbuild.store import Store


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store").ensure()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_blob_is_named_by_its_bytes_read_only_and_leaves_nothing_behind(store):
    digest = store.put_bytes(b'{"a":1}')
    assert digest == digest_of(b'{"a":1}')
    mode = os.stat(store.blob_path(digest)).st_mode
    assert stat.S_ISREG(mode) and not mode & 0o222
    assert list(store.ingest_dir.iterdir()) == []
    assert store.put_bytes(b'{"a":1}') == digest  # idempotent per content


def test_an_aborted_writer_leaves_no_blob_and_no_temporary(store):
    with pytest.raises(RuntimeError):
        with store.writer() as w:
            w.write(b"half of it")
            raise RuntimeError("killed")
    assert store.all_blobs() == [] and list(store.ingest_dir.iterdir()) == []


def test_a_read_verifies_and_a_rotten_blob_is_removed(store):
    digest = store.put_bytes(b'{"config":{}}')
    path = store.blob_path(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b'{"config":{"x"')  # same store, other bytes
    with pytest.raises(StoreError, match="does not match its digest"):
        store.read_json(digest)
    assert not path.exists()


def test_the_cheap_check_catches_a_wrong_size_or_a_writable_blob(store):
    digest = store.put_bytes(b"0123456789")
    assert store.check_blob(digest, 10)
    assert not store.check_blob(digest, 11)  # the descriptor lies, not the blob: refused, kept
    assert store.has_blob(digest) and store.verify_blob(digest)
    os.chmod(store.blob_path(digest), 0o644)
    seen: list[str] = []
    assert not store.check_blob(digest, 10, on_damage=seen.append)
    assert seen and digest in seen[0] and not store.has_blob(digest)  # writable: may be rewritten, removed


def test_tags_move_together_and_resolve(store):
    a, b = store.put_bytes(b'{"m":"a"}'), store.put_bytes(b'{"m":"b"}')
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json"}
    store.set_tags([("x:1", {**desc, "digest": a, "size": 9}), ("x:2", {**desc, "digest": b, "size": 9})])
    assert store.resolve("x:1")["digest"] == a and store.resolve("x:2")["digest"] == b
    assert store.set_tags([("x:1", {**desc, "digest": a, "size": 9})]) is False  # nothing changed
