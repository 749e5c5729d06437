"""Referrers between the store and a registry (docs/spec/runtime.md §4.2): ``push`` carries
each variant's runtime description after the variant, ``pull`` brings it back, verified.

Against the real docker-registry 2.8 (conftest.py), which has no referrers API: the push
writes the referrers tag schema (``sha256-<hex>``, an OCI index), checked here with plain
``requests`` and with skopeo, independent clients. Against the hostile registry: a registry
with the referrers API, and registries that lie (a referrer of another manifest, bytes that
are not their digest, sizes past the bound), each skipped with a warning, never failing the
pull of the artifact itself."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import requests
from hostile_registry import Answer, HostileRegistry, json_answer

from modelbuild.api import hookimpl
from modelbuild.oci import mediatypes as mt
from modelbuild.oci.pull import MAX_REFERRER_BYTES, pull_artifact
from modelbuild.oci.registry import Limits, Registry
from modelbuild.progress import Emitter
from modelbuild.runtime import description as rd
from modelbuild.store import Store
from modelbuild.testing import build_with
from support import EXAMPLES

TINY = EXAMPLES / "tiny-llama" / "model"
HEAD = f"FROM {TINY}\nNAME rt\nCONFIG config.json tokenizer.json\nMODEL model.safetensors\n"
STAGES = ("TARGET cpu\nCONVERT gguf\nQUANTIZE q8_0\nRUNTIME zz-gguf threads=4\n"
          "TARGET cuda cuda>=12.1 compute>=8.0\nQUANTIZE bfloat16\nRUNTIME zz-st dtype=bfloat16\nRUNTIME context=128\n")
FAST = Limits(connect_timeout=1.0, read_timeout=0.5, stall_timeout=1.0, min_rate=2000.0, rate_window=1.0, retries=1)


class Engine:
    protocol, install, default_port = "openai", "nothing", 8000

    def __init__(self, name: str, fmt: str, targets: tuple[str, ...], parameters: dict[str, str]) -> None:
        self.name, self.formats, self.targets, self.parameters = name, (fmt,), targets, parameters

    def accepts(self, model):
        if model.format not in self.formats or (model.target and model.target not in self.targets):
            return f"{self.name} does not serve {model.format} for {model.target or 'any target'}"
        return None

    def installed(self):
        return None

    def launch(self, model, *, host, port):
        raise AssertionError

    def container(self, model, *, port):
        raise AssertionError


class Engines:
    @hookimpl
    def modelbuild_register_engines(self, registry):
        registry.add(Engine("zz-gguf", "gguf", ("cpu",), {"threads": "threads"}))
        registry.add(Engine("zz-st", "safetensors", ("cuda", "rocm"), {"dtype": "dtype"}))


def _build(tmp_path: Path, home: Path, text: str, tag: str):
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(text)
    return build_with(modelfile, home, Engines(), tags=[tag])


def _variants(result) -> dict[str | None, str]:
    return {v["stage"]: v["digest"] for v in result.variants} or {None: result.digest}


def _ok(run):
    assert run.rc == 0, run.err
    return run


def _get(host: str, path: str, accept: str = "") -> requests.Response:
    resp = requests.get(f"http://{host}/v2/{path}", headers={"Accept": accept} if accept else {}, timeout=30)
    assert resp.status_code == 200, (path, resp.status_code, resp.text[:300])
    return resp


def _registry_description(host: str, repo: str, subject: str) -> tuple[dict, rd.RuntimeDescription]:
    """Read, with nothing of modelbuild's client, what the registry holds for *subject*: the
    referrers tag's index, the referrer it lists, and the description layer."""
    tag = _get(host, f"{repo}/manifests/sha256-{subject[7:]}", mt.OCI_INDEX)
    index = json.loads(tag.content)
    assert index["mediaType"] == mt.OCI_INDEX and index["schemaVersion"] == 2
    entry = index["manifests"][-1]
    assert entry["artifactType"] == rd.ARTIFACT_TYPE and entry["mediaType"] == mt.OCI_MANIFEST
    body = _get(host, f"{repo}/manifests/{entry['digest']}", mt.OCI_MANIFEST).content
    assert "sha256:" + hashlib.sha256(body).hexdigest() == entry["digest"] and len(body) == entry["size"]
    manifest = json.loads(body)
    assert manifest["subject"]["digest"] == subject and manifest["artifactType"] == rd.ARTIFACT_TYPE
    assert manifest["config"] == rd.EMPTY_DESCRIPTOR
    (layer,) = manifest["layers"]
    data = _get(host, f"{repo}/blobs/{layer['digest']}").content
    return index, rd.parse(data, "the registry's description")


def test_push_carries_each_variants_description_and_a_fresh_pull_finds_it(registry, mb, home, tmp_path, skopeo):
    repo = f"rt/multi-{os.getpid()}"
    ref = f"{registry.host}/{repo}:1"
    built = _build(tmp_path, home, HEAD + STAGES, ref)
    variants = _variants(built)
    local = Store(home / "store")
    ours = {stage: rd.find_description(local, digest) for stage, digest in variants.items()}
    assert [e.name for e in ours["cpu"].engines] == ["zz-gguf"] and ours["cuda"].context_length == 128

    pushed = _ok(mb("push", ref, "--plain-http", "--json", "--progress", "quiet")).json()
    assert pushed["digest"] == built.digest and pushed["referrers"] == 2
    assert pushed["referrerBytes"] == sum(  # the description blobs and the empty config, once
        len(ours[s].to_json()) for s in ours) + 2
    for stage, digest in variants.items():
        index, theirs = _registry_description(registry.host, repo, digest)
        assert len(index["manifests"]) == 1
        assert index["manifests"][0]["digest"] == local.list_referrers(digest)[0]["digest"]
        assert theirs == ours[stage]
        # skopeo, another client, reads the same referrers tag
        raw = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false",
                              f"docker://{registry.host}/{repo}:sha256-{digest[7:]}"],
                             capture_output=True, check=True).stdout
        assert json.loads(raw) == index
    # the variants and the index are on the registry as built: no digest changed
    assert _get(registry.host, f"{repo}/manifests/1", mt.OCI_INDEX).headers["Docker-Content-Digest"] == built.digest

    # a pull into an empty store brings every description back, verified
    other = tmp_path / "other"
    got = _ok(mb("pull", ref, "--plain-http", "--json", "--progress", "quiet",
                 env={"MODELBUILD_HOME": str(other)})).json()
    assert got["digest"] == built.digest and got["referrers"] == 2
    warnings: list[str] = []
    for stage, digest in variants.items():
        assert rd.find_description(Store(other / "store"), digest, warn=warnings.append) == ours[stage]
    assert warnings == []

    # a second push sends nothing for them: the registry lists them already
    again = _ok(mb("push", ref, "--plain-http", "--json", "--progress", "quiet")).json()
    assert again["uploaded"] == 0 and again["referrers"] == 0 and again["referrerBytes"] == 0
    assert len(_registry_description(registry.host, repo, variants["cpu"])[0]["manifests"]) == 1

    # pull --platform brings the chosen variant's description only
    one = tmp_path / "one"
    _ok(mb("pull", ref, "--plain-http", "--platform", "cuda", "--progress", "quiet",
           env={"MODELBUILD_HOME": str(one)}))
    assert rd.find_description(Store(one / "store"), variants["cuda"]) == ours["cuda"]
    assert Store(one / "store").referrer_subjects() == [variants["cuda"]]


def test_a_rebuilt_description_joins_the_referrers_tag_and_a_pull_takes_the_latest(registry, mb, home, tmp_path):
    repo = f"rt/single-{os.getpid()}"
    ref = f"{registry.host}/{repo}:1"
    first = _build(tmp_path, home, HEAD + "RUNTIME zz-st dtype=float16\n", ref)
    _ok(mb("push", ref, "--plain-http", "--progress", "quiet"))
    second = _build(tmp_path, home, HEAD + "RUNTIME zz-st dtype=bfloat16\nRUNTIME context=64\n", ref)
    assert second.digest == first.digest  # the same variant, a new description
    assert _ok(mb("push", ref, "--plain-http", "--json", "--progress", "quiet")).json()["referrers"] == 1
    index, latest = _registry_description(registry.host, repo, first.digest)
    assert len(index["manifests"]) == 2 and latest.engines == (rd.EngineEntry("zz-st", {"dtype": "bfloat16"}),)
    other = tmp_path / "other"
    _ok(mb("pull", ref, "--plain-http", "--progress", "quiet", env={"MODELBUILD_HOME": str(other)}))
    found = rd.find_description(Store(other / "store"), first.digest)
    assert found == latest and found.context_length == 64


def test_a_damaged_description_in_the_store_is_left_behind_with_a_warning(registry, home, tmp_path):
    from modelbuild.oci.push import push_artifact

    repo = f"rt/damaged-{os.getpid()}"
    built = _build(tmp_path, home, HEAD + "RUNTIME zz-st dtype=float16\n", f"{registry.host}/{repo}:1")
    store = Store(home / "store")
    (entry,) = store.list_referrers(built.digest)
    layer = store.read_json(entry["digest"])["layers"][0]
    path = store.blob_path(layer["digest"])
    os.chmod(path, 0o644)
    path.write_bytes(b"x" * layer["size"])
    events: list = []
    with Registry(registry.host, plain_http=True) as reg:
        result = push_artifact(store, {"mediaType": mt.OCI_MANIFEST, "digest": built.digest, "size": len(
            store.read_blob(built.digest))}, reg, repo, "1", progress=Emitter(events.append))
    assert result["digest"] == built.digest and result["referrers"] == 0
    (warning,) = [e.message for e in events if e.kind == "warning"]
    assert warning.startswith(f"referrer {entry['digest']} of {built.digest}: ") and warning.endswith("; not pushed")
    assert requests.get(f"http://{registry.host}/v2/{repo}/manifests/sha256-{built.digest[7:]}",
                        timeout=30).status_code == 404  # nothing half-listed


# -- the hostile registry ---------------------------------------------------------------------------
REPO = "evil/model"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Served:
    """A model artifact on the hostile registry, and a runtime description referring to it:
    *subject* names another manifest, *garbled* serves other bytes of the description's
    length, *declared* is the size the referrer says its description has."""

    def __init__(self, hostile: HostileRegistry, *, subject: str | None = None, garbled: bool = False,
                 declared: int | None = None) -> None:
        self.hostile = hostile
        layer = os.urandom(1000)
        config = json.dumps({"descriptor": {"name": "evil"}, "config": {"format": "safetensors"},
                             "modelfs": {"type": "layers", "diffIds": [_sha(layer)]}}).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": mt.MODEL_ARTIFACT,
            "config": {"mediaType": mt.MODEL_CONFIG, "digest": _sha(config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.cncf.model.weight.v1.raw", "digest": _sha(layer),
                        "size": len(layer), "annotations": {mt.ANNOTATION_FILEPATH: "w.safetensors"}}]}).encode()
        self.digest = _sha(manifest)
        self.description = rd.RuntimeDescription(engines=(rd.EngineEntry("zz-st"),), format="safetensors").to_json()
        subject_desc = {"mediaType": mt.OCI_MANIFEST, "digest": subject or self.digest, "size": len(manifest)}
        doc = json.loads(rd.referrer_manifest(subject_desc, self.description))
        if declared is not None:
            doc["layers"][0]["size"] = declared
        self.referrer = json.dumps(doc).encode()
        self.entry = {"mediaType": mt.OCI_MANIFEST, "artifactType": rd.ARTIFACT_TYPE, "digest": _sha(self.referrer),
                      "size": len(self.referrer)}
        self.description_path = f"/v2/{REPO}/blobs/{_sha(self.description)}"
        oci = {"Content-Type": mt.OCI_MANIFEST}
        for path, body in ((f"/v2/{REPO}/manifests/v1", manifest), (f"/v2/{REPO}/manifests/{self.digest}", manifest),
                           (f"/v2/{REPO}/manifests/{self.entry['digest']}", self.referrer)):
            hostile.route("GET", path, Answer(headers=oci, body=body))
        for body in (config, layer, b"{}"):
            hostile.route("GET", f"/v2/{REPO}/blobs/{_sha(body)}", Answer(body=body))
        served = b"x" * len(self.description) if garbled else self.description
        hostile.route("GET", self.description_path, Answer(body=served))

    def list_with_api(self, *entries: dict) -> None:
        """Answer the referrers API for the artifact with *entries* (default: the description)."""
        self.hostile.route("GET", f"/v2/{REPO}/referrers/{self.digest}", json_answer(
            {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": list(entries or [self.entry])}))

    def pull(self, into: Path) -> tuple[dict, Store, list[str]]:
        """Pull the artifact into a store at *into*; the result, the store, the warnings."""
        events: list = []
        store = Store(into / "store")
        with Registry(self.hostile.host, plain_http=True, limits=FAST, backoff=0.01) as reg:
            result = pull_artifact(reg, REPO, "v1", store, progress=Emitter(events.append))
        return result, store, [e.message for e in events if e.kind == "warning"]


def test_a_registry_with_the_referrers_api_is_asked_nothing_else(hostile, tmp_path):
    served = Served(hostile)
    served.list_with_api()
    result, store, warnings = served.pull(tmp_path)
    assert result["referrers"] == 1 and warnings == []
    found = rd.find_description(store, served.digest)
    assert found is not None and found.engines == (rd.EngineEntry("zz-st"),)
    assert hostile.count("HEAD", "/manifests/sha256-") == 0  # the referrers tag was never looked for


def test_without_the_api_nor_a_referrers_tag_there_are_none(hostile, tmp_path):
    served = Served(hostile)
    hostile.route("GET", f"/v2/{REPO}/referrers/{served.digest}", Answer(body=b"<html>not an index</html>"))
    result, store, warnings = served.pull(tmp_path)
    assert result["referrers"] == 0 and warnings == [] and store.referrer_subjects() == []
    assert hostile.count("HEAD", f"/manifests/sha256-{served.digest[7:]}") == 1


LIES = {
    "a referrer of another manifest": (dict(subject="sha256:" + "e" * 64), "its subject is 'sha256:eeee"),
    "a description that is not its digest": (dict(garbled=True), "the bytes received have digest"),
    "blobs past the bound": (dict(declared=MAX_REFERRER_BYTES + 1), f"more than the {MAX_REFERRER_BYTES}"),
}


@pytest.mark.parametrize("case", list(LIES), ids=list(LIES))
def test_a_lying_referrer_is_skipped_with_a_warning_and_the_artifact_still_pulls(case, hostile, tmp_path):
    kw, said = LIES[case]
    served = Served(hostile, **kw)
    served.list_with_api()
    result, store, warnings = served.pull(tmp_path)
    assert result["digest"] == served.digest and result["referrers"] == 0
    (warning,) = warnings
    assert warning.startswith(f"referrer {served.entry['digest']} of {served.digest}: "), warning
    assert said in warning and warning.endswith("; skipped") and "\n" not in warning
    assert store.referrer_subjects() == [] and rd.find_description(store, served.digest) is None
    assert store.has_blob(served.digest)  # the artifact itself is whole
    if "declared" in kw:
        assert hostile.count("GET", served.description_path) == 0  # refused before a byte was asked for


def test_a_listed_index_or_a_bad_descriptor_is_skipped(hostile, tmp_path):
    served = Served(hostile)
    served.list_with_api({**served.entry, "mediaType": mt.OCI_INDEX}, served.entry)
    result, store, warnings = served.pull(tmp_path / "a")
    assert result["referrers"] == 1 and len(warnings) == 1 and warnings[0].endswith("not an image manifest; skipped")
    served.list_with_api({"digest": "sha256:zz", "size": 1})
    result, store, warnings = served.pull(tmp_path / "b")
    assert result["referrers"] == 0 and len(warnings) == 1 and "cannot be listed" in warnings[0]
    assert "is not a sha256 digest" in warnings[0]
