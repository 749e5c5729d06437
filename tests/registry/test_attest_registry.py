"""Attestations as referrers through a real registry (docker-registry on 127.0.0.1, which has
no referrers API: the ``sha256-<hex>`` tag schema): pushed with the artifact, pulled back,
listed by ``inspect --referrers``, and two pushers attaching to one manifest at once both
end up listed."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = REPO_ROOT / "Modelfile.examples" / "tiny-llama" / "Modelfile"
EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}
INTOTO = "application/vnd.in-toto+json"


def _remote(registry: Any, repo: str, digest: str) -> list[dict[str, Any]]:
    from modelbuild.oci.pull import remote_referrers
    from modelbuild.oci.registry import Registry

    with Registry(registry.host, plain_http=True) as reg:
        listed, api = remote_referrers(reg, repo, digest)
    assert api is False  # docker-registry 2.8: the tag schema
    return listed


def _predicates(entries: list[dict[str, Any]]) -> set[str]:
    return {(e.get("annotations") or {}).get("in-toto.io/predicate-type") for e in entries
            if e.get("artifactType") == INTOTO}


def test_attestations_travel_with_push_and_pull(registry, cli, tmp_path: Path) -> None:
    repo = f"attest/tiny-{uuid.uuid4().hex[:8]}"
    ref = f"{registry.host}/{repo}:1"
    built = cli("build", "-f", str(TINY), "-t", ref, "--attest", "provenance,sbom", "--push", "--plain-http",
                "--progress", "quiet", "--json", env=EPOCH)
    assert built.rc == 0, built.err
    digest = built.json()["digest"]
    assert _predicates(_remote(registry, repo, digest)) == {"https://slsa.dev/provenance/v1",
                                                            "https://cyclonedx.org/bom"}
    remote = cli("inspect", ref, "--remote", "--plain-http", "--referrers", "--json")
    assert remote.rc == 0, remote.err
    assert {r["predicateType"] for r in remote.json()["referrers"]} >= {"https://slsa.dev/provenance/v1"}

    other = tmp_path / "other-home"
    pulled = cli("pull", ref, "--plain-http", "--progress", "quiet", env={"MODELBUILD_HOME": str(other)})
    assert pulled.rc == 0, pulled.err
    listed = cli("inspect", ref, "--referrers", "--json", env={"MODELBUILD_HOME": str(other)})
    assert listed.rc == 0, listed.err
    found = {r["predicateType"]: r["digest"] for r in listed.json()["referrers"] if r["artifactType"] == INTOTO}
    assert set(found) == {"https://slsa.dev/provenance/v1", "https://cyclonedx.org/bom"}
    mine = {a["annotations"]["in-toto.io/predicate-type"]: a["digest"] for a in built.json()["attestations"]}
    assert found == mine  # the very manifests the build wrote
    statement = json.loads((other / "store" / "blobs" / "sha256" / json.loads(
        (other / "store" / "blobs" / "sha256" / found["https://slsa.dev/provenance/v1"].split(":")[1]).read_bytes()
    )["layers"][0]["digest"].split(":")[1]).read_bytes())
    assert statement["subject"][0]["digest"]["sha256"] == digest.split(":")[1]


def test_two_pushers_attaching_to_one_manifest_both_end_up_listed(registry, cli, tmp_path: Path) -> None:
    """Two stores hold the same artifact (SOURCE_DATE_EPOCH: the same digest), one with a
    provenance, the other with an ML-BOM; both push at the same moment to one tag."""
    repo = f"attest/race-{uuid.uuid4().hex[:8]}"
    ref = f"{registry.host}/{repo}:1"
    homes = {kind: tmp_path / kind for kind in ("provenance", "sbom")}
    digests = set()
    for kind, home in homes.items():
        run = cli("build", "-f", str(TINY), "-t", ref, "--attest", kind, "--progress", "quiet", "--json",
                  env={**EPOCH, "MODELBUILD_HOME": str(home)})
        assert run.rc == 0, run.err
        digests.add(run.json()["digest"])
    (digest,) = digests
    start = threading.Barrier(2)
    results: dict[str, Any] = {}

    def push(kind: str) -> None:
        start.wait()
        results[kind] = cli("push", ref, "--plain-http", "--progress", "quiet",
                            env={"MODELBUILD_HOME": str(homes[kind])})

    threads = [threading.Thread(target=push, args=(kind,)) for kind in homes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for kind, run in results.items():
        assert run.rc == 0, (kind, run.err)
    assert _predicates(_remote(registry, repo, digest)) == {"https://slsa.dev/provenance/v1",
                                                            "https://cyclonedx.org/bom"}
    for home in homes.values():
        shutil.rmtree(home, ignore_errors=True)


def test_verify_rebuild_of_a_pushed_artifact_on_another_machine(registry, cli, tmp_path: Path) -> None:
    """Pushed with its provenance; a fresh store pulls it (referrers too) and derives it again
    from the raw layers it pulled."""
    repo = f"attest/rebuild-{uuid.uuid4().hex[:8]}"
    ref = f"{registry.host}/{repo}:1"
    built = cli("build", "-f", str(TINY), "-t", ref, "--attest", "provenance", "--push", "--plain-http",
                "--progress", "quiet", "--json", env=EPOCH)
    assert built.rc == 0, built.err
    fresh = {"MODELBUILD_HOME": str(tmp_path / "fresh")}
    run = cli("verify", ref, "--rebuild", "--plain-http", "--json", env=fresh)
    assert run.rc == 0, run.err
    assert run.json()["subjects"] == [{"subject": built.json()["digest"], "ok": True,
                                       "steps": run.json()["subjects"][0]["steps"]}]


def test_the_whole_supply_chain_from_the_command_line(registry, cli, tmp_path: Path) -> None:
    """The issue's own commands: build, attest, sign and push in one go; then verify the
    signature and the required attestations, derive it again, and list what is attached."""
    password = {"COSIGN_PASSWORD": "correct horse battery staple"}
    assert cli("key", "generate", "--output-key-prefix", str(tmp_path / "cosign"), env=password).rc == 0
    repo = f"team/qwen2-{uuid.uuid4().hex[:8]}"
    ref = f"{registry.host}/{repo}:0.5b"
    built = cli("build", "-f", str(TINY), "-t", ref, "--push", "--plain-http", "--attest", "provenance,sbom",
                "--sign", "--key", str(tmp_path / "cosign.key"), "--progress", "quiet", "--json",
                env={**EPOCH, **password})
    assert built.rc == 0, built.err
    doc = built.json()
    assert {a["artifactType"] for a in doc["attestations"]} == {"application/vnd.dsse.envelope.v1+json"}
    assert doc["pushed"][0]["signed"], doc["pushed"]
    verified = cli("verify", ref, "--key", str(tmp_path / "cosign.pub"), "--require", "provenance,sbom",
                   "--plain-http", "--json")
    assert verified.rc == 0, verified.err
    assert {a["name"] for a in verified.json()["attestations"]} == {"provenance", "sbom"}
    other = cli("key", "generate", "--output-key-prefix", str(tmp_path / "other"), env=password)
    assert other.rc == 0
    wrong = cli("verify", ref, "--key", str(tmp_path / "other.pub"), "--require", "provenance", "--plain-http")
    assert wrong.rc == 1 and len(wrong.err.strip().splitlines()) == 1, wrong.err
    fresh = {"MODELBUILD_HOME": str(tmp_path / "fresh")}
    rebuilt = cli("verify", ref, "--key", str(tmp_path / "cosign.pub"), "--rebuild", "--plain-http", env=fresh)
    assert rebuilt.rc == 0, rebuilt.err
    listed = cli("inspect", ref, "--remote", "--plain-http", "--referrers", "--json")
    assert {r["predicateType"] for r in listed.json()["referrers"]} >= {"https://slsa.dev/provenance/v1",
                                                                      "https://cyclonedx.org/bom"}
    for output in (built.out, built.err, verified.out, rebuilt.out, rebuilt.err, listed.out):
        assert password["COSIGN_PASSWORD"] not in output
