"""The fake Hub (tests/hfhub.py) speaks the protocol huggingface_hub expects: driven here by
the real library (``HfApi.model_info``, ``list_repo_tree``, ``get_hf_file_metadata``,
``hf_hub_download``, ``snapshot_download``), so the plugin tests that use it test against
what the library really sends and reads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hfhub import FakeHub, git_blob_oid, hf_hub  # noqa: F401 - the fixture

hf = pytest.importorskip("huggingface_hub")

WEIGHTS = bytes(range(256)) * 40  # 10 KiB: stored with LFS
CONFIG = b'{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}'
README = b"---\nlicense: apache-2.0\nlanguage: en\n---\n# Tiny\n"


def _repo(hub: FakeHub, repo_id: str = "acme/tiny", **kwargs) -> str:
    hub.create_repo(repo_id, **kwargs)
    return hub.commit(repo_id, {"model.safetensors": WEIGHTS, "config.json": CONFIG, "README.md": README,
                                "sub/dir/notes.txt": "notes"})


def test_model_info_lists_siblings_with_blobs_as_the_library_reads_them(hf_hub: FakeHub) -> None:
    sha = _repo(hf_hub)
    info = hf.HfApi(endpoint=hf_hub.url).model_info("acme/tiny", revision="main", files_metadata=True)
    assert info.id == "acme/tiny" and info.sha == sha
    assert info.card_data is not None and info.card_data.license == "apache-2.0"
    assert info.config == {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    siblings = {s.rfilename: s for s in info.siblings}
    assert sorted(siblings) == ["README.md", "config.json", "model.safetensors", "sub/dir/notes.txt"]
    weights, config = siblings["model.safetensors"], siblings["config.json"]
    assert weights.size == len(WEIGHTS) and weights.lfs is not None
    assert weights.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest() and weights.lfs.size == len(WEIGHTS)
    assert weights.lfs.pointer_size > 100
    assert config.lfs is None and config.size == len(CONFIG) and config.blob_id == git_blob_oid(CONFIG)
    # without blobs=true: names only; at a commit, the same commit
    bare = hf.HfApi(endpoint=hf_hub.url).model_info("acme/tiny", revision=sha)
    assert bare.sha == sha and all(s.size is None for s in bare.siblings)
    assert any("blobs=true" in s.path for s in hf_hub.requests)


def test_revisions_tags_and_errors_map_to_the_library_exceptions(hf_hub: FakeHub) -> None:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    first = _repo(hf_hub)
    hf_hub.tag("acme/tiny", "v1.0")
    second = hf_hub.commit("acme/tiny", {"config.json": b"{}"}, branch="refs/pr/1")
    api = hf.HfApi(endpoint=hf_hub.url)
    assert api.model_info("acme/tiny", revision="v1.0").sha == first
    assert api.model_info("acme/tiny", revision="refs/pr/1").sha == second  # sent as refs%2Fpr%2F1
    assert api.model_info("acme/tiny").sha == first
    with pytest.raises(RevisionNotFoundError):
        api.model_info("acme/tiny", revision="nope")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("acme/missing")
    hf_hub.create_repo("acme/secret", private=True, readers=("hf_alice",))
    hf_hub.commit("acme/secret", {"config.json": CONFIG})
    hf_hub.tokens["hf_alice"] = "alice"
    hf_hub.tokens["hf_bob"] = "bob"
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("acme/secret")
    with pytest.raises(RepositoryNotFoundError):  # a valid token that cannot see it: 404, the same error
        api.model_info("acme/secret", token="hf_bob")
    assert api.model_info("acme/secret", token="hf_alice").sha
    with pytest.raises(hf.errors.HfHubHTTPError) as info:  # an unknown token
        api.model_info("acme/tiny", token="hf_wrong")
    assert info.value.response.status_code == 401 and not isinstance(info.value, RepositoryNotFoundError)
    hf_hub.create_repo("acme/gated", gated=True, readers=("hf_alice",))
    hf_hub.commit("acme/gated", {"config.json": CONFIG})
    assert api.model_info("acme/gated").sha  # the metadata of a gated repository is public
    with pytest.raises(GatedRepoError):
        hf.hf_hub_download("acme/gated", "config.json", endpoint=hf_hub.url, token="hf_bob")


def test_list_repo_tree_recursive_and_not(hf_hub: FakeHub) -> None:
    _repo(hf_hub)
    api = hf.HfApi(endpoint=hf_hub.url)
    top = {e.path: type(e).__name__ for e in api.list_repo_tree("acme/tiny")}
    assert top == {"README.md": "RepoFile", "config.json": "RepoFile", "model.safetensors": "RepoFile",
                   "sub": "RepoFolder"}
    every = {e.path: e for e in api.list_repo_tree("acme/tiny", recursive=True)}
    assert {"sub", "sub/dir", "sub/dir/notes.txt"} <= set(every)
    assert every["model.safetensors"].lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert [e.path for e in api.list_repo_tree("acme/tiny", path_in_repo="sub/dir")] == ["sub/dir/notes.txt"]


def test_file_metadata_for_git_and_lfs_files(hf_hub: FakeHub) -> None:
    sha = _repo(hf_hub)
    small = hf.get_hf_file_metadata(hf.hf_hub_url("acme/tiny", "config.json", endpoint=hf_hub.url))
    assert (small.commit_hash, small.etag, small.size) == (sha, git_blob_oid(CONFIG), len(CONFIG))
    big = hf.get_hf_file_metadata(hf.hf_hub_url("acme/tiny", "model.safetensors", endpoint=hf_hub.url))
    assert (big.commit_hash, big.etag, big.size) == (sha, hashlib.sha256(WEIGHTS).hexdigest(), len(WEIGHTS))
    assert big.location.startswith(hf_hub.cdn_url + "/lfs-cdn/")  # the HEAD stopped at the CDN redirect
    assert hf_hub.count("HEAD", server="cdn") == 0


def test_hf_hub_download_through_the_cdn_without_the_token(hf_hub: FakeHub, tmp_path: Path) -> None:
    hf_hub.tokens["hf_alice"] = "alice"
    _repo(hf_hub, "acme/secret", private=True, readers=("hf_alice",))
    path = hf.hf_hub_download("acme/secret", "model.safetensors", endpoint=hf_hub.url, token="hf_alice",
                              cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == WEIGHTS
    small = hf.hf_hub_download("acme/secret", "sub/dir/notes.txt", endpoint=hf_hub.url, token="hf_alice",
                               cache_dir=tmp_path / "cache")
    assert Path(small).read_bytes() == b"notes"
    cdn = [s for s in hf_hub.requests if s.server == "cdn"]
    assert cdn and all(s.authorization is None for s in cdn)
    assert all(s.authorization == "Bearer hf_alice" for s in hf_hub.requests if s.server == "hub")
    assert hf_hub.sent_for("acme/secret") == {"model.safetensors": len(WEIGHTS), "sub/dir/notes.txt": 5}
    with pytest.raises(hf.errors.RepositoryNotFoundError):
        hf.hf_hub_download("acme/secret", "config.json", endpoint=hf_hub.url, cache_dir=tmp_path / "other")
    with pytest.raises(hf.errors.EntryNotFoundError):
        hf.hf_hub_download("acme/secret", "nope.json", endpoint=hf_hub.url, token="hf_alice",
                           cache_dir=tmp_path / "other")


def test_the_library_retries_a_dropped_download_and_ranges_are_answered(hf_hub: FakeHub, tmp_path: Path) -> None:
    _repo(hf_hub)
    hf_hub.drop_after("acme/tiny", "model.safetensors", 3000)
    path = hf.hf_hub_download("acme/tiny", "model.safetensors", endpoint=hf_hub.url, cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == WEIGHTS
    # http_get reads 10 MiB chunks: nothing of the cut answer was kept, so it asked again from 0
    assert hf_hub.count("GET", server="cdn") == 2
    assert hf_hub.sent_for("acme/tiny") == {"model.safetensors": 3000 + len(WEIGHTS)}
    session = hf.utils.get_session()
    cdn = hf.get_hf_file_metadata(hf.hf_hub_url("acme/tiny", "model.safetensors", endpoint=hf_hub.url)).location
    part = session.get(cdn, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == WEIGHTS[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(WEIGHTS)}"
    assert session.get(cdn, headers={"Range": "bytes=10240-"}).status_code == 416
    tail = session.get(hf.hf_hub_url("acme/tiny", "config.json", endpoint=hf_hub.url), headers={"Range": "bytes=5-"})
    assert tail.status_code == 206 and tail.content == CONFIG[5:]


def test_snapshot_download_and_a_stopped_then_restarted_hub(hf_hub: FakeHub, tmp_path: Path) -> None:
    sha = _repo(hf_hub)
    folder = Path(hf.snapshot_download("acme/tiny", endpoint=hf_hub.url, cache_dir=tmp_path / "c"))
    assert folder.name == sha and (folder / "sub/dir/notes.txt").read_bytes() == b"notes"
    url = hf_hub.url
    hf_hub.stop()
    with pytest.raises(Exception):
        hf.HfApi(endpoint=url).model_info("acme/tiny")
    hf_hub.start()
    assert hf_hub.url == url and hf.HfApi(endpoint=url).model_info("acme/tiny").sha == sha


def test_injected_failures_answer_once(hf_hub: FakeHub) -> None:
    _repo(hf_hub)
    hf_hub.inject("/api/models/acme/tiny", 503)
    api = hf.HfApi(endpoint=hf_hub.url)
    with pytest.raises(hf.errors.HfHubHTTPError) as info:
        api.model_info("acme/tiny")
    assert info.value.response.status_code == 503
    assert api.model_info("acme/tiny").sha
