"""The ``hf`` source plugin (plugins/hf_source.py), driven directly against the fake Hub
(tests/hfhub.py) through the real huggingface_hub: pinning, listings, tokens, errors,
transfers with offsets and redirects, and listings a hostile mirror could send."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from hfhub import FakeHub, git_blob_oid, hf_hub  # noqa: F401 - the fixture
from modelbuild.api import FetchError, ModelfileError, RemoteFile, RemoteSource, SourcePin

pytest.importorskip("huggingface_hub")

from modelbuild_plugins.hf_source import HfSource, _kind, _spdx  # noqa: E402

WEIGHTS = hashlib.sha256(b"w").digest() * 160  # 5 KiB: stored with LFS
SMALL_WEIGHTS = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "  # under the LFS threshold: a Git blob
CONFIG = b'{"model_type": "llama"}'
README = b"---\nlicense: apache-2.0\n---\n# Tiny\n"
FILES = {"model.safetensors": WEIGHTS, "config.json": CONFIG, "README.md": README, ".gitattributes": b"*.bin lfs\n",
         "tokenizer.json": b"{}", "extra/adapter.safetensors": SMALL_WEIGHTS}


def _open(src: HfSource, pin: SourcePin, file: RemoteFile, offset: int = 0) -> bytes:
    with src.open(pin, file, offset=offset) as chunks:
        return b"".join(chunks)


def _files(src: HfSource, pin: SourcePin) -> dict[str, RemoteFile]:
    return {f.path: f for f in src.listing(pin).files}


@pytest.fixture
def hub(hf_hub: FakeHub) -> FakeHub:
    hf_hub.commit("Acme/Tiny-Model", FILES)
    return hf_hub


def _head(hub: FakeHub, repo: str = "Acme/Tiny-Model") -> str:
    return hub.repos[("model", repo)].refs["main"]


# -- pinning ------------------------------------------------------------------------------------


def test_it_is_a_remote_source_registered_for_hf() -> None:
    from modelbuild.testing import plugin_host

    src = plugin_host().sources.get_for_reference("hf://acme/tiny")
    assert isinstance(src, HfSource) and isinstance(src, RemoteSource)
    assert (src.name, src.schemes, src.version) == ("hf", ("hf",), "1")


def test_a_full_commit_pins_itself_without_the_network(hub: FakeHub) -> None:
    sha = _head(hub)
    src = HfSource()
    for network in (False, True):
        pin = src.pin(f"hf://Acme/Tiny-Model@{sha.upper()}", network=network)
        assert pin is not None
        assert pin.identity == f"hf://Acme/Tiny-Model@{sha}"
        assert (pin.source_url, pin.revision) == (f"{hub.url}/Acme/Tiny-Model", sha)
    assert hub.requests == []  # not a single request


def test_anything_else_needs_the_network_and_pins_the_commit(hub: FakeHub) -> None:
    src = HfSource()
    first = _head(hub)
    hub.tag("Acme/Tiny-Model", "v1.0")
    second = hub.commit("Acme/Tiny-Model", {"config.json": b"{}"})
    pr = hub.commit("Acme/Tiny-Model", {"notes.md": b"pr"}, branch="refs/pr/1")
    hub.commit("Acme/Tiny-Model", {"x.md": b"dev"}, branch="dev")
    for ref in ("hf://Acme/Tiny-Model", "hf://Acme/Tiny-Model@main", "hf://Acme/Tiny-Model@v1.0",
                f"hf://Acme/Tiny-Model@{first[:10]}"):
        assert src.pin(ref, network=False) is None
    assert hub.requests == []
    assert src.pin("hf://Acme/Tiny-Model", network=True).identity == f"hf://Acme/Tiny-Model@{second}"
    assert src.pin("hf://models/Acme/Tiny-Model@main", network=True).identity == f"hf://Acme/Tiny-Model@{second}"
    assert src.pin("hf://Acme/Tiny-Model@v1.0", network=True).revision == first
    assert src.pin(f"hf://Acme/Tiny-Model@{first[:10]}", network=True).revision == first
    pinned = src.pin("hf://Acme/Tiny-Model@refs/pr/1", network=True)
    assert pinned.revision == pr and pinned.data["requested"] == "refs/pr/1"
    assert any("/revision/refs%2Fpr%2F1" in s.path for s in hub.requests)  # quoted as the library does


def test_the_listing_right_after_a_pin_costs_no_second_request(hub: FakeHub) -> None:
    src = HfSource()
    pin = src.pin("hf://Acme/Tiny-Model", network=True)
    assert hub.count(fragment="/api/") == 1
    assert "model.safetensors" in _files(src, pin)
    assert hub.count(fragment="/api/") == 1
    src.listing(pin)  # asked again (another build): asks the Hub again
    assert hub.count(fragment="/api/") == 2


@pytest.mark.parametrize("ref, message", [
    ("hf://", "is not a Hugging Face repository id"),
    ("hf://acme/tiny/sub/dir", "is not a Hugging Face repository id"),
    ("hf://acme/ti--ny", "is not a Hugging Face repository id"),
    ("hf://acme/tiny.", "is not a Hugging Face repository id"),
    ("hf://acme/ti ny", "is not a Hugging Face repository id"),
    ("hf://acme/tiny@", "is not a revision"),
    ("hf://acme/tiny@a..b", "is not a revision"),
    ("hf://acme/tiny@has space", "is not a revision"),
    ("hf://spaces/acme/demo", "not spaces"),
])
def test_malformed_references_are_modelfile_errors_without_a_span(ref: str, message: str) -> None:
    with pytest.raises(ModelfileError) as info:
        HfSource().pin(ref, network=False)
    assert message in info.value.message and info.value.span is None and info.value.hint


def test_a_missing_repository_or_revision_says_so_with_a_hint(hub: FakeHub) -> None:
    src = HfSource()
    with pytest.raises(ModelfileError) as info:
        src.pin("hf://acme/nothing", network=True)
    assert info.value.span is None
    assert info.value.message == f"hf://acme/nothing@main: no repository acme/nothing on {hub.url}, or it is private"
    assert "HF_TOKEN" in info.value.hint and "check the name" in info.value.hint
    with pytest.raises(ModelfileError) as info:
        src.pin("hf://Acme/Tiny-Model@nope", network=True)
    assert info.value.message == "hf://Acme/Tiny-Model@nope: Acme/Tiny-Model has no revision 'nope'"
    assert "commit id" in info.value.hint
    with pytest.raises(ModelfileError) as info:  # a pinned commit the repository does not have
        src.listing(src.pin("hf://Acme/Tiny-Model@" + "0" * 40, network=False))
    assert "has no revision '0000000000" in info.value.message


# -- listings -----------------------------------------------------------------------------------


def test_the_listing_gives_sizes_digests_git_ids_kinds_locators_and_defaults(hub: FakeHub) -> None:
    src = HfSource()
    sha = _head(hub)
    pin = src.pin(f"hf://Acme/Tiny-Model@{sha}", network=False)
    listing = src.listing(pin)
    files = {f.path: f for f in listing.files}
    assert list(files) == sorted(FILES)
    weights = files["model.safetensors"]
    assert (weights.size, weights.digest, weights.git_oid) == (len(WEIGHTS), "sha256:" + hashlib.sha256(WEIGHTS)
                                                               .hexdigest(), "")
    config = files["config.json"]
    assert (config.size, config.digest, config.git_oid) == (len(CONFIG), "", git_blob_oid(CONFIG))
    assert files["extra/adapter.safetensors"].git_oid == git_blob_oid(SMALL_WEIGHTS)
    assert {p: f.kind for p, f in files.items()} == {
        ".gitattributes": "", "README.md": "doc", "config.json": "config", "extra/adapter.safetensors": "model",
        "model.safetensors": "model", "tokenizer.json": "config"}
    assert config.locator == f"{hub.url}/Acme/Tiny-Model/resolve/{sha}/config.json"
    assert dict(listing.descriptor) == {"sourceURL": f"{hub.url}/Acme/Tiny-Model", "revision": sha,
                                        "licenses": ["Apache-2.0"]}
    assert listing.name == "tiny-model"


def test_datasets_are_listed_as_datasets(hf_hub: FakeHub) -> None:
    sha = hf_hub.commit("acme/corpus", {"train.parquet": b"PAR1" * 400, "README.md": b"# data", "load.py": b"x"},
                        repo_type="dataset")
    src = HfSource()
    pin = src.pin("hf://datasets/acme/corpus", network=True)
    assert pin.identity == f"hf://datasets/acme/corpus@{sha}" and pin.source_url == f"{hf_hub.url}/datasets/acme/corpus"
    files = _files(src, pin)
    assert {p: f.kind for p, f in files.items()} == {"README.md": "doc", "load.py": "code", "train.parquet": "dataset"}
    assert _open(src, pin, files["train.parquet"], 4) == (b"PAR1" * 400)[4:]


@pytest.mark.parametrize("path, kind", [
    ("model-00001-of-00002.safetensors", "model"), ("model.safetensors.index.json", "config"),
    ("qwen2-0_5b-instruct-q4_k_m.gguf", "model"), ("onnx/model.onnx", "model"), ("onnx/model.onnx_data", "model"),
    ("pytorch_model.bin", "model"), ("pytorch_model-00001-of-00002.bin", "model"),
    ("pytorch_model.bin.index.json", "config"), ("consolidated.00.pth", "model"), ("training_args.bin", ""),
    ("optimizer.pt", ""), ("rng_state.pth", ""), ("tf_model.h5", ""), ("flax_model.msgpack", ""),
    ("generation_config.json", "config"), ("tokenizer_config.json", "config"), ("tokenizer.model", "config"),
    ("special_tokens_map.json", "config"), ("vocab.json", "config"), ("merges.txt", "config"),
    ("cl100k_base.tiktoken", "config"), ("preprocessor_config.json", "config"), ("chat_template.jinja", "config"),
    ("modeling_tiny.py", "code"), ("README.md", "doc"), ("LICENSE", "doc"), ("LICENSE.txt", "doc"),
    ("USE_POLICY.md", "doc"), ("docs/usage.md", "doc"), (".gitattributes", ""), ("images/logo.png", ""),
])
def test_kinds_from_file_names(path: str, kind: str) -> None:
    assert _kind(path, dataset=False, has_safetensors=False) == kind


def test_pickled_weights_beside_safetensors_are_not_packaged_by_default() -> None:
    assert _kind("pytorch_model.bin", dataset=False, has_safetensors=True) == ""
    assert _kind("pytorch_model.bin.index.json", dataset=False, has_safetensors=True) == ""
    assert _kind("model.safetensors.index.json", dataset=False, has_safetensors=True) == "config"


@pytest.mark.parametrize("hub_id", ["apache-2.0", "mit", "MIT", "gpl-3.0", "cc-by-nc-4.0", "bsd", "llama3.1",
                                    "gemma", "openrail", "cc-by-sa-4.0", "unknown", "", "other"])
def test_licenses_map_as_the_generate_command_maps_them(hub_id: str) -> None:
    from modelbuild.generate.license import to_spdx

    assert _spdx(hub_id) == to_spdx(hub_id)
    assert _spdx("other", "Acme Model License") == to_spdx("other", "Acme Model License") == \
        "LicenseRef-Acme-Model-License"


def test_a_license_list_and_no_card(hf_hub: FakeHub) -> None:
    hf_hub.commit("acme/a", {"README.md": b"---\nlicense:\n- mit\n- apache-2.0\n---\n", "m.gguf": b"GGUF"})
    hf_hub.commit("acme/b", {"m.gguf": b"GGUF"})
    src = HfSource()
    assert src.listing(src.pin("hf://acme/a", network=True)).descriptor["licenses"] == ["MIT", "Apache-2.0"]
    assert "licenses" not in src.listing(src.pin("hf://acme/b", network=True)).descriptor


# -- tokens -------------------------------------------------------------------------------------


def test_a_private_repository_needs_the_token_and_the_cdn_never_sees_it(hf_hub: FakeHub, monkeypatch) -> None:
    hf_hub.tokens["hf_alice_secret"] = "alice"
    hf_hub.create_repo("acme/private", private=True, readers=("hf_alice_secret",))
    hf_hub.commit("acme/private", FILES)
    src = HfSource()
    with pytest.raises(ModelfileError) as info:
        src.pin("hf://acme/private", network=True)
    assert "or it is private" in info.value.message and "HF_TOKEN" in info.value.hint
    monkeypatch.setenv("HF_TOKEN", "hf_alice_secret")
    hf_hub.requests.clear()
    pin = src.pin("hf://acme/private", network=True)
    files = _files(src, pin)
    assert _open(src, pin, files["model.safetensors"]) == WEIGHTS  # through the CDN
    assert _open(src, pin, files["config.json"]) == CONFIG
    hub_side = [s for s in hf_hub.requests if s.server == "hub"]
    cdn_side = [s for s in hf_hub.requests if s.server == "cdn"]
    assert hub_side and all(s.authorization == "Bearer hf_alice_secret" for s in hub_side)
    assert cdn_side and all(s.authorization is None for s in cdn_side)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_secret")
    with pytest.raises(ModelfileError) as info:
        src.pin("hf://acme/private", network=True)
    assert "refused the Hugging Face token" in info.value.message and "hf auth login" in info.value.hint
    with pytest.raises(FetchError) as fetch:
        _open(src, pin, files["config.json"])
    assert "refused the Hugging Face token" in fetch.value.message and not fetch.value.retryable
    for error in (info.value, fetch.value):
        assert "secret" not in error.render()


def test_a_token_from_the_token_file_is_used(hf_hub: FakeHub) -> None:
    from huggingface_hub import constants

    hf_hub.tokens["hf_from_file"] = "alice"
    hf_hub.create_repo("acme/private", private=True, readers=("hf_from_file",))
    sha = hf_hub.commit("acme/private", {"config.json": CONFIG})
    path = Path(constants.HF_TOKEN_PATH)  # in the test's own HF_HOME (the hf_hub fixture)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("hf_from_file\n")
    assert HfSource().pin("hf://acme/private", network=True).revision == sha


def test_a_gated_repository_lists_but_its_files_need_access(hf_hub: FakeHub, monkeypatch) -> None:
    hf_hub.create_repo("acme/gated", gated=True, readers=("hf_ok",))
    hf_hub.tokens.update({"hf_ok": "alice", "hf_other": "bob"})
    hf_hub.commit("acme/gated", FILES)
    src = HfSource()
    pin = src.pin("hf://acme/gated", network=True)
    file = _files(src, pin)["config.json"]
    with pytest.raises(FetchError) as info:
        _open(src, pin, file)
    assert "acme/gated is gated" in info.value.message and f"{hf_hub.url}/acme/gated" in info.value.hint
    monkeypatch.setenv("HF_TOKEN", "hf_other")
    with pytest.raises(FetchError, match="is gated"):
        _open(src, pin, file)
    monkeypatch.setenv("HF_TOKEN", "hf_ok")
    assert _open(src, pin, file) == CONFIG


# -- transfers ----------------------------------------------------------------------------------


def test_open_from_an_offset_sends_a_range_to_the_hub_and_through_the_redirect(hub: FakeHub) -> None:
    src = HfSource()
    pin = src.pin("hf://Acme/Tiny-Model", network=True)
    files = _files(src, pin)
    assert _open(src, pin, files["model.safetensors"], 1000) == WEIGHTS[1000:]
    assert _open(src, pin, files["config.json"], 5) == CONFIG[5:]
    assert _open(src, pin, files["config.json"]) == CONFIG
    ranges = [(s.server, s.range) for s in hub.requests if "/api/" not in s.path]
    assert ranges == [("hub", "bytes=1000-"), ("cdn", "bytes=1000-"), ("hub", "bytes=5-"), ("hub", None)]
    assert all(f"/resolve/{pin.revision}/" in s.path for s in hub.requests if s.server == "hub" and "/api/" not in
               s.path)  # the commit, never the branch


def test_a_server_that_ignores_the_range_is_skipped_forward(hub: FakeHub) -> None:
    src = HfSource()
    pin = src.pin("hf://Acme/Tiny-Model", network=True)
    hub.ignore_range = True
    assert _open(src, pin, _files(src, pin)["model.safetensors"], 4000) == WEIGHTS[4000:]


def test_a_dropped_connection_is_retryable_and_resumes_with_each_byte_sent_once(hub: FakeHub) -> None:
    """What came before the cut is handed over: resumed from there, the hub sends each byte
    exactly once (through the LFS redirect, and for a plain Git file)."""
    big = bytes(range(256)) * 12_000  # 3 MiB: many pieces
    hub.commit("acme/big", {"model.safetensors": big, "config.json": CONFIG})
    src = HfSource()
    pin = src.pin("hf://acme/big", network=True)
    files = _files(src, pin)
    for path, data, cut in (("model.safetensors", big, 2_000_000), ("config.json", CONFIG, 7)):
        hub.drop_after("acme/big", path, cut)
        got = bytearray()
        with pytest.raises(FetchError) as info:
            with src.open(pin, files[path], offset=0) as chunks:
                for chunk in chunks:
                    got += chunk
        assert info.value.retryable and "connection failed" in info.value.message and path in info.value.message
        assert len(got) == cut and bytes(got) == data[:cut]
        got += _open(src, pin, files[path], len(got))
        assert bytes(got) == data
    assert hub.sent_for("acme/big") == {"model.safetensors": len(big), "config.json": len(CONFIG)}


@pytest.mark.parametrize("status, retryable", [(503, True), (500, True), (429, True), (404, False), (400, False)])
def test_server_errors_are_retryable_and_client_errors_are_not(hub: FakeHub, status: int, retryable: bool) -> None:
    src = HfSource()
    pin = src.pin("hf://Acme/Tiny-Model", network=True)
    hub.inject("/resolve/", status)
    with pytest.raises(FetchError) as info:
        _open(src, pin, _files(src, pin)["config.json"])
    assert info.value.retryable is retryable and f"hf://Acme/Tiny-Model@{pin.revision}: config.json" in \
        info.value.message
    assert _open(src, pin, _files(src, pin)["config.json"]) == CONFIG  # once only


def test_a_file_gone_from_the_commit_is_named(hub: FakeHub) -> None:
    src = HfSource()
    pin = src.pin("hf://Acme/Tiny-Model", network=True)
    with pytest.raises(FetchError) as info:
        _open(src, pin, RemoteFile("nope.bin", 3))
    assert info.value.message.endswith(": nope.bin: not found") and not info.value.retryable
    assert "file name" in info.value.hint


def test_a_hub_that_is_gone_is_a_retryable_error(hub: FakeHub) -> None:
    src = HfSource()
    pin = src.pin("hf://Acme/Tiny-Model", network=True)
    file = _files(src, pin)["config.json"]
    hub.stop()
    with pytest.raises(FetchError) as info:
        _open(src, pin, file)
    assert info.value.retryable and hub.url in info.value.hint
    with pytest.raises(FetchError) as info:
        src.pin("hf://Acme/Tiny-Model", network=True)
    assert info.value.retryable and "connection failed" in info.value.message
    # a full commit still pins, with no network at all
    assert src.pin(pin.identity, network=False) == src.pin(pin.identity, network=True)
    hub.start()
    assert _open(src, pin, file) == CONFIG


def test_api_errors_worth_a_retry(hub: FakeHub) -> None:
    hub.inject("/api/models/", 502)
    with pytest.raises(FetchError) as info:
        HfSource().pin("hf://Acme/Tiny-Model", network=True)
    assert info.value.retryable and "answered 502" in info.value.message


def test_an_endpoint_the_client_cannot_speak_to_is_not_worth_a_retry(hub: FakeHub, monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "ftp://127.0.0.1:9")
    with pytest.raises(FetchError) as info:
        HfSource().pin("hf://Acme/Tiny-Model", network=True)
    assert "UnsupportedProtocol" in info.value.message and not info.value.retryable
    assert "ftp://127.0.0.1:9 (HF_ENDPOINT)" in info.value.hint


def test_offline_mode_is_named(hub: FakeHub, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FetchError) as info:
        HfSource().pin("hf://Acme/Tiny-Model", network=True)
    assert "HF_HUB_OFFLINE" in info.value.message and not info.value.retryable


def test_the_endpoint_is_hf_endpoint_as_it_is_now(hub: FakeHub, monkeypatch) -> None:
    src = HfSource()
    pin = src.pin("hf://Acme/Tiny-Model", network=True)
    listing = src.listing(pin)
    mirror = FakeHub().start()
    try:
        mirror.commit("Acme/Tiny-Model", {"config.json": CONFIG})
        monkeypatch.setenv("HF_ENDPOINT", mirror.url + "/")
        other = src.pin(f"hf://Acme/Tiny-Model@{pin.revision}", network=False)
        assert other.source_url == f"{mirror.url}/Acme/Tiny-Model"
        # a listing kept from the first endpoint: the file comes from the endpoint in use now
        config = next(f for f in listing.files if f.path == "config.json")
        with pytest.raises(FetchError, match="revision is gone"):  # the mirror has other commits
            _open(src, pin, config)
        assert mirror.count(fragment="/resolve/") == 1
    finally:
        mirror.stop()


def test_the_requests_session_of_older_huggingface_hub_works_too(hub: FakeHub, monkeypatch) -> None:
    """huggingface_hub before 1.0 hands out a requests.Session from get_session()."""
    import requests
    from huggingface_hub import utils

    monkeypatch.setenv("HF_TOKEN", "hf_alice")
    hub.tokens["hf_alice"] = "alice"
    session = requests.Session()
    monkeypatch.setattr(utils, "get_session", lambda: session)
    src = HfSource()
    pin = src.pin("hf://Acme/Tiny-Model", network=True)
    files = _files(src, pin)
    assert _open(src, pin, files["model.safetensors"], 10) == WEIGHTS[10:]
    assert all(s.authorization is None for s in hub.requests if s.server == "cdn")
    hub.drop_after("Acme/Tiny-Model", "config.json", 4)
    got = bytearray()
    with pytest.raises(FetchError) as info:
        with src.open(pin, files["config.json"], offset=0) as chunks:
            for chunk in chunks:
                got += chunk
    assert info.value.retryable and bytes(got) == CONFIG[:4]
    assert _open(src, pin, files["config.json"], 4) == CONFIG[4:]


def test_without_huggingface_hub_the_hint_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub fails
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    src = HfSource()
    pin = src.pin("hf://acme/tiny@" + "a" * 40, network=False)  # a commit pins without the library
    assert pin is not None and pin.source_url == "https://huggingface.co/acme/tiny"
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example/")
    assert src.pin("hf://acme/tiny@" + "a" * 40, network=False).source_url == "https://hub.example/acme/tiny"
    for call in (lambda: src.pin("hf://acme/tiny", network=True), lambda: src.listing(pin)):
        with pytest.raises(ModelfileError) as info:
            call()
        assert info.value.hint == "pip install 'modelbuild[hf]'" and "huggingface_hub" in info.value.message


# -- hostile listings ---------------------------------------------------------------------------


def _sibling(path: str, **extra: object) -> dict:
    return {"rfilename": path, "blobId": git_blob_oid(b"x"), "size": 1, **extra}


@pytest.mark.parametrize("siblings, message", [
    ([_sibling("/etc/passwd")], "is absolute"),
    ([_sibling("../escape")], "'..' component"),
    ([_sibling("a/../../b")], "'..' component"),
    ([_sibling("a\\b")], "backslash"),
    ([_sibling("bad\nname")], "control character"),
    ([_sibling("dir/")], "ends with '/'"),
    ([_sibling("same"), _sibling("same")], "twice"),
    ([_sibling("a"), _sibling("a/b")], "both as a file and as a directory"),
    ([_sibling("neg", size=-1)], "with size -1"),
    ([_sibling("huge", size=1 << 60)], "with size"),
    ([_sibling("text", size="12")], "with size '12'"),
    ([_sibling("nosize", size=None)], "without its size"),
    ([_sibling("w.gguf", lfs={"sha256": "zz", "size": 1, "pointerSize": 1})], "LFS checksum 'zz'"),
    ([_sibling("w.gguf", lfs={"sha256": "a" * 64, "size": 2, "pointerSize": 1})], "two sizes"),
    ([_sibling("c.json", blobId="nothex")], "Git blob id 'nothex'"),
    ([{"rfilename": 7, "size": 1}], "without a name"),
])
def test_a_hostile_listing_is_refused(hub: FakeHub, siblings: list, message: str) -> None:
    src = HfSource()
    sha = _head(hub)
    hub.tamper = lambda repo, info: {**info, "siblings": siblings}
    with pytest.raises(FetchError) as info:
        src.listing(src.pin(f"hf://Acme/Tiny-Model@{sha}", network=False))
    assert message in info.value.message
    assert not info.value.retryable


def test_too_many_files_or_another_commit_are_refused(hub: FakeHub) -> None:
    src = HfSource()
    sha = _head(hub)
    pin = src.pin(f"hf://Acme/Tiny-Model@{sha}", network=False)
    hub.tamper = lambda repo, info: {**info, "siblings": [{"rfilename": f"f{i}"} for i in range(100_001)]}
    with pytest.raises(FetchError, match="lists 100001 files, more than 100000"):
        src.listing(pin)
    hub.tamper = lambda repo, info: {**info, "sha": "f" * 40}
    with pytest.raises(FetchError, match="answered for another commit"):
        src.listing(pin)
    hub.tamper = lambda repo, info: {**info, "sha": "not-a-commit"}
    with pytest.raises(FetchError, match="named no commit"):
        src.pin("hf://Acme/Tiny-Model", network=True)


# -- end to end: modelbuild build FROM hf://… ---------------------------------------------------


@pytest.fixture
def e2e(hf_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path):
    """A repository of real weights on the fake hub, a build context and a fast retry."""
    from support import safetensors_blob

    monkeypatch.setattr("modelbuild.fetch.BACKOFF", 0.01)
    monkeypatch.delenv("MODELBUILD_OFFLINE", raising=False)
    files = {"model.safetensors": safetensors_blob(bytes(range(256)) * 40), "config.json": CONFIG,
             "README.md": README, ".gitattributes": b"*.safetensors filter=lfs\n", "tokenizer.json": b'{"v": 1}'}
    sha = hf_hub.commit("acme/tiny", files)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    return hf_hub, files, sha, ctx


def _layers(result: dict) -> dict[str, str]:
    return {layer["annotations"]["org.cncf.model.filepath"]: layer["digest"] for layer in result["layers"]}


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_pinned_build_then_the_same_build_with_the_hub_gone(e2e, build) -> None:
    hub, files, sha, ctx = e2e
    modelfile = f"FROM hf://acme/tiny@{sha}\nMODEL *.safetensors\nCONFIG config.json\n"
    result = build(ctx, modelfile)
    assert _layers(result) == {p: _sha256(files[p]) for p in ("model.safetensors", "config.json")}
    assert result["config"]["descriptor"] == {"name": "tiny", "revision": sha, "sourceURL": f"{hub.url}/acme/tiny",
                                              "licenses": ["Apache-2.0"], "family": "llama"}
    assert result["stats"]["bytes_hashed"] == 0  # hashed once, on the way in
    assert hub.sent_for("acme/tiny") == {p: len(b) for p, b in files.items()}  # every byte sent once
    hub.stop()
    again = build(ctx, modelfile)
    assert again["digest"] == result["digest"]


def test_an_unpinned_build_needs_the_hub_and_says_so(e2e, build, mb) -> None:
    from support import error_line

    hub, files, sha, ctx = e2e
    result = build(ctx, "FROM hf://acme/tiny\nMODEL *.safetensors\n")
    assert result["config"]["descriptor"]["revision"] == sha
    assert hub.count(fragment="/api/") == 1  # the pin's answer served the listing too
    hub.stop()
    line = error_line(mb("build", "-f", "Modelfile", cwd=ctx), 1)
    assert "hf://acme/tiny@main: the connection failed" in line and hub.url in line
    run = mb("build", "-f", "Modelfile", cwd=ctx, env={"MODELBUILD_OFFLINE": "1"})
    assert run.rc == 2 and run.err.startswith("Modelfile:1:6: hf://acme/tiny names no fixed revision"), run.err


def test_a_modelfile_naming_no_file_packages_the_kinds_the_listing_gives(e2e, build) -> None:
    hub, files, sha, ctx = e2e
    result = build(ctx, f"FROM hf://acme/tiny@{sha}\n")
    assert sorted(_layers(result)) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]


def test_include_and_exclude_choose_what_is_downloaded(e2e, build) -> None:
    hub, files, sha, ctx = e2e
    result = build(ctx, f"FROM --include=*.safetensors --include=*.json --exclude=tokenizer.json "
                        f"hf://acme/tiny@{sha}\nMODEL *.safetensors\nCONFIG *.json\n")
    assert sorted(_layers(result)) == ["config.json", "model.safetensors"]
    assert sorted(hub.sent_for("acme/tiny")) == ["config.json", "model.safetensors"]


def test_a_dropped_connection_resumes_and_each_byte_is_sent_once(e2e, build) -> None:
    hub, files, sha, ctx = e2e
    hub.drop_after("acme/tiny", "model.safetensors", 3000)
    hub.drop_after("acme/tiny", "config.json", 5)
    result = build(ctx, f"FROM hf://acme/tiny@{sha}\nMODEL *.safetensors\nCONFIG config.json\n")
    assert _layers(result)["model.safetensors"] == _sha256(files["model.safetensors"])
    assert hub.sent_for("acme/tiny") == {p: len(b) for p, b in files.items()}
    ranges = [s.range for s in hub.requests if "model.safetensors" in s.path and s.server == "cdn"]
    assert ranges == [None, "bytes=3000-"]


def test_a_private_repository_builds_with_hf_token(e2e, mb, build) -> None:
    hub, files, sha, ctx = e2e
    hub.tokens["hf_build_token"] = "ci"
    hub.create_repo("acme/private", private=True, readers=("hf_build_token",))
    hub.commit("acme/private", files)
    (ctx / "Modelfile").write_text("FROM hf://acme/private\nMODEL *.safetensors\n")
    run = mb("build", "-f", "Modelfile", cwd=ctx)
    assert run.rc == 2 and "Traceback" not in run.err, run.err
    assert run.err.startswith(f"Modelfile:1:6: hf://acme/private@main: no repository acme/private on {hub.url}, "
                              "or it is private (check the name; for a private repository, log in with "
                              "`hf auth login`, or set HF_TOKEN to a token that can read it)"), run.err
    result = build(ctx, None, env={"HF_TOKEN": "hf_build_token"})
    assert _layers(result) == {"model.safetensors": _sha256(files["model.safetensors"])}
    assert all(s.authorization is None for s in hub.requests if s.server == "cdn")


@pytest.mark.parametrize("field", ["lfs", "blobId"])
def test_bytes_that_are_not_what_the_hub_listed_store_nothing(e2e, mb, field: str) -> None:
    """The listing's SHA-256 (an LFS file) and Git blob id (any other file) are checked."""
    hub, files, sha, ctx = e2e

    def lie(repo: str, info: dict) -> dict:
        siblings = []
        for s in info["siblings"]:
            if field == "lfs" and s.get("lfs"):
                s = {**s, "lfs": {**s["lfs"], "sha256": "0" * 64}}
            if field == "blobId" and s["rfilename"] == "config.json":
                s = {**s, "blobId": "0" * 40}
            siblings.append(s)
        return {**info, "siblings": siblings}

    hub.tamper = lie
    (ctx / "Modelfile").write_text(f"FROM hf://acme/tiny@{sha}\nMODEL *.safetensors\n")
    run = mb("build", "-f", "Modelfile", cwd=ctx)
    assert run.rc == 1 and "Traceback" not in run.err, run.err
    (line,) = [line for line in run.err.splitlines() if line.startswith("modelbuild: error: ")]
    assert ("its SHA-256 is" if field == "lfs" else "its Git blob id is") in line and "nothing was stored" in line


def test_generate_for_a_hub_repository_pins_the_commit_and_builds(e2e, mb, build) -> None:
    """``modelbuild modelfile generate hf://org/name``: the branch pinned to its commit in
    FROM, every file classified from the fetched bytes, and the Modelfile builds unchanged
    with the hub gone."""
    hub, files, sha, ctx = e2e
    run = mb("modelfile", "generate", "hf://acme/tiny", "-o", str(ctx / "Modelfile"), "--json")
    assert run.rc == 0, run.err
    assert "WARNING" not in run.err, run.err  # nothing of modelbuild's own shows up as a file
    plan = run.json()
    assert {f["path"]: f["kind"] for f in plan["files"]} == {
        "model.safetensors": "model", "config.json": "config", "tokenizer.json": "config", "README.md": "doc"}
    assert [s["path"] for s in plan["skipped"]] == [".gitattributes"]
    text = (ctx / "Modelfile").read_text()
    assert f"FROM hf://acme/tiny@{sha}\n" in text and "NAME tiny\n" in text
    hub.stop()
    result = build(ctx, text)
    assert _layers(result) == {p: _sha256(files[p]) for p in ("model.safetensors", "config.json", "tokenizer.json",
                                                                "README.md")}
