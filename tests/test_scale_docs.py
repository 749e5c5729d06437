"""docs/scale.md's examples that need a cluster to run, checked without one:

- the Kubernetes objects: the claim and the build Job against Kubernetes' own schemas (strict),
  the pod templates of the RayCluster likewise, the RayCluster against what KubeRay requires
  (ray.io/v1: a head group with a pod template, worker groups with a name, a template and
  min <= replicas <= max, rayStartParams as strings), and the wiring between them (one
  volume claim, one MODELBUILD_HOME under its mount, the Job reaching the head's Ray Client
  port through the service KubeRay names ``<cluster>-head-svc``);
- the Job's command, parsed by ``modelbuild build``'s own argument parser;
- the documented error line, against the error a node that does not see the store gives.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import REPO, require_module

DOC = REPO / "docs" / "scale.md"
KUBERNETES = ("1.33", "1.35")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), re.S)


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    block = next(b for b in _blocks("yaml") if b.startswith("apiVersion: v1"))
    docs = [d for d in yaml.safe_load_all(block) if d]
    return {d["kind"]: d for d in docs}


def _validate(doc: dict[str, Any]) -> None:
    kv = require_module("kubernetes_validate", "pip install kubernetes-validate")
    for version in KUBERNETES:
        kv.validate(doc, version, strict=True)


def test_the_claim_and_the_job_are_valid_kubernetes(objects: dict[str, dict[str, Any]]) -> None:
    assert set(objects) == {"PersistentVolumeClaim", "RayCluster", "Job"}
    _validate(objects["PersistentVolumeClaim"])
    _validate(objects["Job"])
    assert objects["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]  # every node mounts it


def _groups(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    spec = cluster["spec"]
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def test_the_raycluster_has_what_kuberay_requires(objects: dict[str, dict[str, Any]]) -> None:
    cluster = objects["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"]
    for group in _groups(cluster):
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values()), group  # map[string]string
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": group["template"]["spec"]}
        _validate(pod)  # the pod template, as Kubernetes would take it
    for worker in cluster["spec"]["workerGroupSpecs"]:
        assert worker["groupName"]
        assert worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head takes no items
    ports = {p["name"]: p["containerPort"] for p in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
             ["ports"]}
    assert ports == {"gcs": 6379, "dashboard": 8265}  # the dashboard port takes `ray job submit`


def test_every_container_sees_one_store_at_one_path(objects: dict[str, dict[str, Any]]) -> None:
    claim = objects["PersistentVolumeClaim"]["metadata"]["name"]
    pods = [g["template"]["spec"] for g in _groups(objects["RayCluster"])]  # the driver runs on the head
    homes = set()
    for pod in pods:
        volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
        for container in pod["containers"]:
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert [volumes[name] for name in mounts] == [claim]
            home = {e["name"]: e["value"] for e in container["env"]}["MODELBUILD_HOME"]
            assert home.startswith(next(iter(mounts.values())) + "/")
            homes.add(home)
    assert len(homes) == 1


def test_the_jobs_command_is_a_build_that_modelbuild_parses(objects: dict[str, dict[str, Any]]) -> None:
    from modelbuild.commands import build as build_command
    from modelbuild.executors import parse_executor

    command = objects["Job"]["spec"]["template"]["spec"]["containers"][0]["command"]
    submit, build = command[:command.index("--")], command[command.index("--") + 1:]
    service = f"{objects['RayCluster']['metadata']['name']}-head-svc"  # the head's Service, as KubeRay names it
    assert submit == ["ray", "job", "submit", "--address", f"http://{service}:8265"]
    assert build[:2] == ["modelbuild", "build"]
    parser = argparse.ArgumentParser(prog="modelbuild build", exit_on_error=False)
    build_command.configure(parser)
    args = parser.parse_args(build[2:])
    choice = parse_executor(args.executor)
    assert (choice.name, choice.address) == ("ray", None)  # Ray sets RAY_ADDRESS for a job's driver
    assert args.push and args.tag and args.file.startswith("/models/")


def test_the_documented_error_is_what_a_node_without_the_store_says(tmp_path: Path) -> None:
    from modelbuild.api import BuildError
    from modelbuild.dataplane import Marker, Work

    documented = next(b for b in _blocks("text") if b.startswith("modelbuild: error: node")).strip()
    marker = Marker("/models/home/store/ingest/executor-" + "0" * 32, "0" * 32, ("/models/home",))
    with pytest.raises(BuildError) as caught:
        Work.prepare(len, marker).run("item", "3f1c0a9e2b7d")
    shown = "modelbuild: error: " + caught.value.render()
    pattern = re.escape(documented).replace("…", ".*")
    assert re.fullmatch(pattern, shown), shown
