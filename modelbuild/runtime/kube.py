"""Kubernetes manifests for one variant (``modelbuild deploy``): pure functions from typed
inputs to plain dicts, which :mod:`modelbuild.runtime.kube_yaml` writes out.

Three shapes, one pod:

* ``kubernetes``: a Deployment and a Service. The variant is an **OCI image volume**
  (``volumes[].image``, KEP-4639: alpha in Kubernetes 1.31, beta in 1.33 behind the
  ``ImageVolume`` feature gate, on by default since 1.35): the kubelet pulls it by digest
  and mounts it read-only at ``/models/<name>``.
* ``csi``: the same Deployment, the volume served by the CNCF ModelPack CSI driver
  (github.com/modelpack/model-csi-driver: driver ``model.csi.modelpack.org``, inline volume
  attribute ``model.csi.modelpack.org/reference``, docs/getting-started.md and
  pkg/config/config.go ``ParameterKeyReference``), for clusters without image volumes.
* ``kserve``: a KServe ``InferenceService`` (serving.kserve.io/v1beta1) whose predictor
  mounts the image volume at ``/mnt/models``, where KServe's runtimes read a model
  (``DefaultModelLocalMountPath``, pkg/constants/constants.go at v0.20.0). Not a
  ``storageUri: oci://…``: KServe serves that as a *modelcar*, running the reference as a
  sidecar container with ``sh -c`` and linking its ``/models`` directory
  (pkg/utils/storage.go), and ``oci+native://`` mounts the image's ``models/`` subPath; a
  ModelPack artifact is neither runnable nor laid out under ``models/``. Image volumes are
  refused by Knative, so the service asks for KServe's raw deployment mode.

The reference always pins the variant's manifest digest (``host/repo@sha256:…``), never a
tag or the index: the kubelet must not pick another platform's variant.

Memory: the pod requests (and is limited to) ``weights + KV cache`` at the served context,
plus a quarter for activations and allocator slack, plus 1 GiB for the engine process (its
interpreter, the CUDA or ROCm runtime, the HTTP server) and 1 GiB more when the engine
needs a memory-backed ``/dev/shm``, rounded up to 256 MiB (:func:`memory_request`).
Request and limit are equal so the pod is never scheduled on memory it will not get.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from modelbuild.api import Container

KINDS = ("kubernetes", "csi", "kserve")
MODELS_ROOT = PurePosixPath("/models")
KSERVE_MODEL_PATH = PurePosixPath("/mnt/models")
CSI_DRIVER = "model.csi.modelpack.org"
CSI_REFERENCE = f"{CSI_DRIVER}/reference"
KSERVE_CONTAINER = "kserve-container"  # the predictor container KServe looks for (InferenceServiceContainerName)
ANNOTATION_PREFIX = "modelbuild.dev/"

MiB = 2**20
GiB = 2**30
HEADROOM = 0.25
ENGINE_BASE = 1 * GiB
SHM_SIZE = 1 * GiB
ROUND_TO = 256 * MiB
PROBE_PERIOD = 10  # seconds between probes

_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class MemoryNeed:
    """What serving the variant holds in memory, in bytes: the weights and the KV cache at
    ``context`` positions (None when the artifact gives no attention shape to size it)."""

    weights: int
    kv_cache: int | None = None
    context: int | None = None

    @property
    def total(self) -> int:
        return self.weights + (self.kv_cache or 0)


@dataclass(frozen=True, slots=True)
class NativeModel:
    """A model KServe serves with a runtime of its own (``predictor.model``), not an engine's
    container: the ``modelFormat`` it knows and the ClusterServingRuntime that serves it."""

    format: str
    runtime: str
    accelerator: str = ""


@dataclass(frozen=True, slots=True)
class Workload:
    """Everything the manifests say, resolved: the names, the pinned model reference, where
    it is mounted, the memory it needs and the pod-spec fields the target asks for."""

    name: str
    reference: str  # host/repo@sha256:… of the variant manifest
    digest: str
    mount_path: PurePosixPath
    server: str  # the engine's name, or KServe's runtime
    namespace: str | None = None
    replicas: int = 1
    kind: str = "kubernetes"
    source: str = ""  # the reference as the user gave it
    index_digest: str | None = None
    target: str = ""
    memory: MemoryNeed | None = None
    scheduling: Mapping[str, Any] = field(default_factory=dict)


def dns_label(text: str) -> str:
    """*text* as a Kubernetes name (an RFC 1035 label, what a Service needs): lowercase
    letters, digits and dashes, a letter first, at most 63 characters; ``model`` if nothing
    is left."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:63].rstrip("-")
    return name or "model"


def is_dns_label(text: str) -> bool:
    return bool(_DNS_LABEL.fullmatch(text))


def memory_request(need: MemoryNeed, *, shm: bool = False) -> int:
    """Bytes to request for *need*: see the module docstring for the rule."""
    raw = int(need.total * (1 + HEADROOM)) + ENGINE_BASE + (SHM_SIZE if shm else 0)
    return -(-raw // ROUND_TO) * ROUND_TO


def quantity(n: int) -> str:
    """Bytes as a Kubernetes quantity: ``2Gi``, ``1280Mi`` (whole MiB, rounded up)."""
    if n % GiB == 0:
        return f"{n // GiB}Gi"
    return f"{-(-n // MiB)}Mi"


def human(n: int) -> str:
    """Bytes for a comment: ``1.5 GiB``, ``260.6 KiB``."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} B"


# -- pieces of a pod ---------------------------------------------------------------------------
def labels(w: Workload) -> dict[str, str]:
    return {"app.kubernetes.io/name": w.name, "app.kubernetes.io/part-of": "modelbuild"}


def annotations(w: Workload) -> dict[str, str]:
    """Where the pod's model came from, for ``kubectl describe`` and for tools."""
    out = {f"{ANNOTATION_PREFIX}digest": w.digest, f"{ANNOTATION_PREFIX}reference": w.reference}
    if w.index_digest:
        out[f"{ANNOTATION_PREFIX}index-digest"] = w.index_digest
    if w.source:
        out[f"{ANNOTATION_PREFIX}source"] = w.source
    if w.target:
        out[f"{ANNOTATION_PREFIX}target"] = w.target
    out[f"{ANNOTATION_PREFIX}server"] = w.server
    return out


def metadata(w: Workload, name: str | None = None, *, annotate: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name or w.name}
    if w.namespace:
        meta["namespace"] = w.namespace
    meta["labels"] = labels(w)
    if annotate:
        meta["annotations"] = annotations(w)
    return meta


def model_volume(w: Workload) -> dict[str, Any]:
    """The pod volume that holds the variant's files."""
    if w.kind == "csi":
        return {"name": "model", "csi": {"driver": CSI_DRIVER, "volumeAttributes": {CSI_REFERENCE: w.reference}}}
    return {"name": "model", "image": {"reference": w.reference, "pullPolicy": "IfNotPresent"}}


def config_files(files: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """``(key, absolute path, content)`` for an engine's files: a ConfigMap key (its name's
    allowed characters, numbered when two files share a name) per file."""
    out: list[tuple[str, str, str]] = []
    used: set[str] = set()
    for path, content in sorted(files.items()):
        base = re.sub(r"[^-._a-zA-Z0-9]+", "-", PurePosixPath(path).name).strip(".") or "file"
        key, i = base[:250], 2
        while key in used:
            key, i = f"{base[:245]}-{i}", i + 1
        used.add(key)
        out.append((key, path, content))
    return out


def resources(w: Workload, accelerator: str, shm: bool, count: int = 1) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if w.memory is not None:
        amount = quantity(memory_request(w.memory, shm=shm))
        out = {"requests": {"memory": amount}, "limits": {"memory": amount}}
    if accelerator:
        out.setdefault("limits", {})[accelerator] = max(1, count)
    return out


def _probe(path: str, port: int, failures: int = 3) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": PROBE_PERIOD, "failureThreshold": failures}


def container(w: Workload, c: Container, name: str, files: list[tuple[str, str, str]]) -> dict[str, Any]:
    """The engine's :class:`~modelbuild.api.Container` as a pod's container: the model
    mounted read-only at the workload's mount path, each engine file from the ConfigMap,
    probes on the engine's port (the startup probe allows ``startup_seconds`` for loading)."""
    spec: dict[str, Any] = {"name": name, "image": c.image}
    if c.command:
        spec["command"] = list(c.command)
    if c.args:
        spec["args"] = list(c.args)
    port: dict[str, Any] = {"containerPort": c.port, "protocol": "TCP"}
    if w.kind != "kserve":  # Knative names ports itself; a raw KServe Service maps to containerPort
        port = {"name": "http", **port}
    spec["ports"] = [port]
    if c.env:
        spec["env"] = [{"name": k, "value": v} for k, v in c.env.items()]
    res = resources(w, c.accelerator, c.shm, c.accelerator_count)
    if res:
        spec["resources"] = res
    mounts = [{"name": "model", "mountPath": str(w.mount_path), "readOnly": True}]
    mounts += [{"name": "engine-files", "mountPath": path, "subPath": key, "readOnly": True} for key, path, _ in files]
    if c.shm:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    spec["volumeMounts"] = mounts
    spec["startupProbe"] = _probe(c.liveness, c.port, max(1, -(-c.startup_seconds // PROBE_PERIOD)))
    spec["readinessProbe"] = _probe(c.readiness, c.port)
    spec["livenessProbe"] = _probe(c.liveness, c.port)
    return spec


def pod_volumes(w: Workload, c: Container | None, files: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    volumes = [model_volume(w)]
    if files:
        volumes.append({"name": "engine-files", "configMap": {"name": f"{w.name}-engine-files"}})
    if c is not None and c.shm:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": quantity(SHM_SIZE)}})
    return volumes


def placement(w: Workload, accelerator: str) -> dict[str, Any]:
    """The target's pod-spec fields (node selector, affinity), and a toleration of the taint
    GPU node pools carry (``nvidia.com/gpu:NoSchedule``), the one Kubernetes' own
    ExtendedResourceToleration admission plugin adds for a pod that requests the resource."""
    out = {k: v for k, v in w.scheduling.items() if v}
    if accelerator:
        tolerations = list(out.get("tolerations", []))
        tolerations.append({"key": accelerator, "operator": "Exists", "effect": "NoSchedule"})
        out["tolerations"] = tolerations
    return out


def config_map(w: Workload, files: list[tuple[str, str, str]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(w, f"{w.name}-engine-files", annotate=False),
            "data": {key: content for key, _path, content in files}}


# -- the documents -----------------------------------------------------------------------------
def deployment(w: Workload, c: Container) -> list[dict[str, Any]]:
    """A Deployment of the engine's container with the model volume, a Service in front of
    its port, and a ConfigMap of the engine's files when it has any."""
    files = config_files(c.files)
    selector = {"app.kubernetes.io/name": w.name}
    pod: dict[str, Any] = {"containers": [container(w, c, "server", files)], "volumes": pod_volumes(w, c, files),
                           **placement(w, c.accelerator)}
    docs: list[dict[str, Any]] = [config_map(w, files)] if files else []
    docs.append({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata(w),
        "spec": {"replicas": w.replicas, "selector": {"matchLabels": selector},
                 "template": {"metadata": {"labels": labels(w), "annotations": annotations(w)}, "spec": pod}},
    })
    docs.append({
        "apiVersion": "v1", "kind": "Service", "metadata": metadata(w, annotate=False),
        "spec": {"selector": selector,
                 "ports": [{"name": "http", "port": c.port, "targetPort": "http", "protocol": "TCP"}]},
    })
    return docs


def inference_service(w: Workload, server: Container | NativeModel) -> list[dict[str, Any]]:
    """A KServe InferenceService: a custom predictor from the engine's container, or
    ``predictor.model`` with the format and runtime KServe knows; a ConfigMap of the
    engine's files when it has any."""
    meta = metadata(w)
    meta["annotations"] = {"serving.kserve.io/deploymentMode": "RawDeployment", **meta["annotations"]}
    predictor: dict[str, Any] = {"minReplicas": w.replicas, "maxReplicas": w.replicas}
    docs: list[dict[str, Any]] = []
    if isinstance(server, NativeModel):
        model: dict[str, Any] = {"modelFormat": {"name": server.format}, "runtime": server.runtime}
        res = resources(w, server.accelerator, False)
        if res:
            model["resources"] = res
        model["volumeMounts"] = [{"name": "model", "mountPath": str(w.mount_path), "readOnly": True}]
        predictor.update(model=model, volumes=pod_volumes(w, None, []), **placement(w, server.accelerator))
    else:
        files = config_files(server.files)
        docs += [config_map(w, files)] if files else []
        predictor.update(containers=[container(w, server, KSERVE_CONTAINER, files)],
                         volumes=pod_volumes(w, server, files), **placement(w, server.accelerator))
    docs.append({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": meta,
                 "spec": {"predictor": predictor}})
    return docs


def manifests(w: Workload, server: Container | NativeModel) -> list[dict[str, Any]]:
    """The documents for *w*'s kind."""
    if w.kind == "kserve":
        return inference_service(w, server)
    if isinstance(server, NativeModel):
        raise ValueError("a KServe runtime serves only an InferenceService")
    return deployment(w, server)


def header(w: Workload, server: Container | NativeModel) -> list[str]:
    """The comment lines above the manifests: what was chosen, and what the cluster needs."""
    lines = [f"modelbuild deploy: {w.source or w.reference}" + (f" [{w.target}]" if w.target else ""),
             f"variant {w.digest}" + (f" of index {w.index_digest}" if w.index_digest else ""),
             f"served by {w.server}" + (f" ({server.image}, {server.protocol} API on port {server.port})"
                                        if isinstance(server, Container) else f" (KServe modelFormat {server.format})")]
    if w.kind == "csi":
        lines.append(f"model volume: the ModelPack CSI driver ({CSI_DRIVER}) must be installed: "
                     "github.com/modelpack/model-csi-driver")
    else:
        lines.append("model volume: an OCI image volume: Kubernetes >= 1.31 with the ImageVolume feature gate (beta "
                     "since 1.33, on by default since 1.35) and a container runtime that mounts OCI artifacts")
    if w.kind == "kserve":
        lines.append(f"KServe raw deployment (Knative refuses image volumes); the model is at {w.mount_path}")
    if w.memory is None:
        lines.append("memory: not requested (the artifact does not say how much it needs)")
    else:
        kv = (f" + KV cache {human(w.memory.kv_cache)} at context {w.memory.context}" if w.memory.kv_cache is not None
              else " (no attention shape: the KV cache is not counted)")
        shm = isinstance(server, Container) and server.shm
        lines.append(f"memory: weights {human(w.memory.weights)}{kv}; requested "
                     f"{quantity(memory_request(w.memory, shm=shm))} (x{1 + HEADROOM:g} + {human(ENGINE_BASE)}"
                     f"{' + ' + human(SHM_SIZE) + ' /dev/shm' if shm else ''}, rounded up to {human(ROUND_TO)})")
        if server.accelerator:
            lines.append(f"the {server.accelerator} device must hold about {human(w.memory.total)} (weights + KV "
                         "cache); GPU memory is not a resource a pod can request")
    return lines


__all__ = ["CSI_DRIVER", "CSI_REFERENCE", "KINDS", "KSERVE_MODEL_PATH", "MODELS_ROOT", "MemoryNeed", "NativeModel",
           "Workload", "deployment", "dns_label", "header", "inference_service", "is_dns_label", "manifests",
           "memory_request", "quantity"]
