"""Built-in targets: ``cpu``, ``cuda``, ``rocm`` and ``metal``.

The annotation vocabulary and matching rules are specified in
docs/spec/multi-platform.md; NVIDIA's follow GPU feature discovery's label names.

Besides the :class:`~modelbuild.api.Target` protocol, each target has an optional member
that ``modelbuild deploy`` reads (with ``getattr``, so a third-party target without it
still deploys): ``scheduling(stage) -> dict``, the pod-spec fields (``nodeSelector``,
``affinity``, ``tolerations``) that put a variant of *stage* on a Kubernetes node able to
run it. The core adds the accelerator resource limit (``nvidia.com/gpu: 1``, from the
engine's container) and its toleration; a target adds only what that limit cannot say:

* ``cuda``: the stage's ``cuda`` and ``compute`` constraints as required node affinity on
  the integer labels NVIDIA GPU feature discovery publishes (NVIDIA/k8s-device-plugin,
  docs/gpu-feature-discovery/README.md, "Generated labels"):
  ``nvidia.com/cuda.runtime-version.{major,minor}`` (the CUDA version the driver supports;
  GFD v0.15 renamed them from ``nvidia.com/cuda.runtime.*``, now deprecated) and
  ``nvidia.com/gpu.compute.{major,minor}``. ``cuda>=12.1`` is
  ``major > 12``, or ``major = 12`` and ``minor > 0``; only major and minor are compared, as
  those are the labels. No ``nvidia.com/gpu.present`` selector: the GPU Operator sets that
  label (NVIDIA/gpu-operator, controllers/state_manager.go), GFD does not, and the resource
  limit already keeps the pod off nodes without NVIDIA GPUs.
* ``rocm``: nothing. AMD's device plugin schedules by the ``amd.com/gpu`` resource, and its
  node labeller (ROCm/k8s-device-plugin, cmd/k8s-node-labeller) publishes no gfx target or
  ROCm version label, so ``gfx=`` and ``rocm>=`` cannot be turned into affinity truthfully.
* ``cpu``: nothing; ``metal`` variants are for macOS, which Kubernetes nodes do not run.
"""

from __future__ import annotations

from typing import Any

from modelbuild.api import (
    ANN_ACCELERATOR,
    ANN_REQUIRES,
    ANN_TARGET,
    Constraint,
    ConstraintError,
    HostInfo,
    Stage,
    hookimpl,
    version_tuple,
)


class _Target:
    name = ""
    version = "1"
    summary = ""
    generic = False
    variants: tuple[str, ...] = ("amd64",)
    os = "linux"
    formats: tuple[str, ...] = ()
    accelerator: str | None = None
    # constraint key → "version" (compared as numbers) or "list" (a comma-separated set)
    constraint_keys: dict[str, str] = {}

    def check_constraint(self, c: Constraint) -> None:
        kind = self.constraint_keys.get(c.key)
        if kind is None:
            known = ", ".join(self.constraint_keys) or "none"
            raise ConstraintError(f"target {self.name} has no constraint {c.key!r} (known: {known})")
        if kind == "version":
            version_tuple(c.value)
        elif c.op != "=":
            raise ConstraintError(f"{c.key} takes a list: write {c.key}={c.value}")

    def platform(self, stage: Stage) -> dict[str, str]:
        return {"os": self.os, "architecture": stage.variant or self.variants[0]}

    def annotations(self, stage: Stage) -> dict[str, str]:
        out = {ANN_TARGET: self.name}
        if self.accelerator:
            out[ANN_ACCELERATOR] = self.accelerator
        if stage.constraints:
            out[ANN_REQUIRES] = " ".join(str(c) for c in stage.constraints)
        return out

    def default_steps(self, fmt: str) -> list[tuple[str, str, dict[str, Any]]]:
        return []

    def check_step(self, stage: Stage, action: str, arg: str, fmt: str) -> str | None:
        return None

    def scheduling(self, stage: Stage) -> dict[str, Any]:
        """Pod-spec fields that place a variant of *stage* on a node that can run it (see
        the module docstring); none by default."""
        return {}

    def matches(self, stage: Stage, host: HostInfo) -> tuple[bool, str]:
        arch = stage.variant or self.variants[0]
        if host.os != self.os or host.arch != arch:
            return False, f"needs {self.os}/{arch}"
        if self.accelerator is None:
            return True, ""
        acc = host.accelerator(self.name)
        if acc is None:
            return False, f"needs a {self.name} accelerator"
        for c in stage.constraints:
            if self.constraint_keys.get(c.key) != "version":
                continue
            # a fact the host cannot tell (no nvidia-smi) satisfies no constraint: a variant
            # that might not run is worse than the CPU one that will
            if not c.admits(acc.facts.get(c.key)):
                return False, f"needs {c}"
        return True, ""


# GPU feature discovery's integer labels for a constraint key (the module docstring says where)
_GFD_LABELS = {"cuda": "nvidia.com/cuda.runtime-version", "compute": "nvidia.com/gpu.compute"}


def _version_terms(prefix: str, op: str, version: tuple[int, ...]) -> list[list[dict[str, Any]]]:
    """``PREFIX.major``/``PREFIX.minor`` label expressions for ``op version``: a list of
    alternatives, each a list of expressions that must all hold. Node affinity compares
    integers only with ``Gt`` and ``Lt``, so ``>= 12.1`` is ``major > 12 or (major = 12 and
    minor > 0)``."""
    major, minor = (version + (0,))[:2]
    key_major, key_minor = f"{prefix}.major", f"{prefix}.minor"

    def expr(key: str, operator: str, n: int) -> dict[str, Any]:
        return {"key": key, "operator": operator, "values": [str(n)]}

    if op == "=":
        if len(version) == 1:
            return [[expr(key_major, "In", major)]]
        return [[expr(key_major, "In", major), expr(key_minor, "In", minor)]]
    if op in (">=", ">"):
        floor = minor - 1 if op == ">=" else minor  # minor Gt floor
        if floor < 0:
            return [[expr(key_major, "Gt", major - 1)]]
        return [[expr(key_major, "Gt", major)], [expr(key_major, "In", major), expr(key_minor, "Gt", floor)]]
    ceiling = minor + 1 if op == "<=" else minor  # minor Lt ceiling
    if ceiling <= 0:
        return [[expr(key_major, "Lt", major)]]
    return [[expr(key_major, "Lt", major)], [expr(key_major, "In", major), expr(key_minor, "Lt", ceiling)]]


class CpuTarget(_Target):
    name = "cpu"
    summary = "any CPU; GGUF Q8_0 by default (llama.cpp)"
    generic = True
    variants = ("amd64", "arm64")
    formats = ("gguf", "onnx", "safetensors")

    def default_steps(self, fmt: str) -> list[tuple[str, str, dict[str, Any]]]:
        if fmt == "safetensors":
            return [("convert", "gguf", {}), ("quantize", "q8_0", {})]
        return []


class CudaTarget(_Target):
    name = "cuda"
    summary = "NVIDIA GPUs: cuda>=RUNTIME, compute>=CAPABILITY; safetensors bfloat16 by default"
    variants = ("amd64", "arm64")
    formats = ("safetensors", "gguf", "onnx")
    accelerator = "nvidia.com/gpu"
    constraint_keys = {"cuda": "version", "compute": "version"}

    def annotations(self, stage: Stage) -> dict[str, str]:
        out = super().annotations(stage)
        # GPU feature discovery's label names, as minimums the variant needs
        for key, prefix in (("cuda", "nvidia.com/cuda.runtime"), ("compute", "nvidia.com/gpu.compute")):
            c = stage.constraint(key)
            if c is not None and c.op in (">=", "="):
                parts = version_tuple(c.value) + (0,)
                out[f"{prefix}.major"] = str(parts[0])
                out[f"{prefix}.minor"] = str(parts[1])
        return out

    def default_steps(self, fmt: str) -> list[tuple[str, str, dict[str, Any]]]:
        return [("quantize", "bfloat16", {})] if fmt == "safetensors" else []

    def scheduling(self, stage: Stage) -> dict[str, Any]:
        """Required node affinity on GPU feature discovery's labels for the stage's ``cuda``
        and ``compute`` constraints: every constraint holds (the alternatives of each are
        multiplied out into node selector terms, which Kubernetes ORs)."""
        terms: list[list[dict[str, Any]]] = [[]]
        for c in stage.constraints:
            prefix = _GFD_LABELS.get(c.key)
            if prefix is not None:
                terms = [t + alt for t in terms for alt in _version_terms(prefix, c.op, version_tuple(c.value))]
        if terms == [[]]:
            return {}
        selector = {"nodeSelectorTerms": [{"matchExpressions": t} for t in terms]}
        return {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": selector}}}

    def check_step(self, stage: Stage, action: str, arg: str, fmt: str) -> str | None:
        if action == "quantize" and arg.startswith("float8"):
            c = stage.constraint("compute")
            if c is None or c.op not in (">=", ">", "=") or version_tuple(c.value) < (8, 9):
                have = f"this stage allows {c}" if c else "this stage names no compute capability"
                return (f"{arg} needs compute capability 8.9 or newer (Ada, Hopper); {have}; "
                        "add compute>=8.9 to the TARGET line")
        if action == "quantize" and arg == "bfloat16":
            c = stage.constraint("compute")
            if c is not None and c.op in ("<", "<=") or (c is not None and version_tuple(c.value) < (8, 0)
                                                          and c.op == "="):
                return f"bfloat16 needs compute capability 8.0 or newer (Ampere); this stage allows {c}"
        return None


class RocmTarget(_Target):
    name = "rocm"
    summary = "AMD GPUs: rocm>=VERSION, gfx=gfx942,…; safetensors float16 by default"
    formats = ("safetensors", "gguf")
    accelerator = "amd.com/gpu"
    constraint_keys = {"rocm": "version", "gfx": "list"}

    def annotations(self, stage: Stage) -> dict[str, str]:
        out = super().annotations(stage)
        c = stage.constraint("gfx")
        if c is not None:
            out["amd.com/gpu.family"] = c.value
        return out

    def default_steps(self, fmt: str) -> list[tuple[str, str, dict[str, Any]]]:
        return [("quantize", "float16", {})] if fmt == "safetensors" else []

    def matches(self, stage: Stage, host: HostInfo) -> tuple[bool, str]:
        ok, why = super().matches(stage, host)
        if not ok:
            return ok, why
        c = stage.constraint("gfx")
        acc = host.accelerator("rocm")
        if c is not None and acc is not None and acc.facts.get("gfx"):
            have = set(str(acc.facts["gfx"]).split(","))
            if not have & set(c.values):
                return False, f"needs gfx={c.value}"
        return True, ""


class MetalTarget(_Target):
    name = "metal"
    summary = "Apple silicon (macOS arm64); GGUF Q8_0 by default (llama.cpp Metal)"
    os = "darwin"
    variants = ("arm64",)
    formats = ("gguf", "safetensors")
    accelerator = "apple.com/gpu"

    def default_steps(self, fmt: str) -> list[tuple[str, str, dict[str, Any]]]:
        if fmt == "safetensors":
            return [("convert", "gguf", {}), ("quantize", "q8_0", {})]
        return []

    def matches(self, stage: Stage, host: HostInfo) -> tuple[bool, str]:
        if host.os != "darwin" or host.arch != "arm64" or host.accelerator("metal") is None:
            return False, "needs Apple silicon (darwin/arm64)"
        return True, ""


@hookimpl
def modelbuild_register_targets(registry: Any) -> None:
    for target in (CpuTarget(), CudaTarget(), RocmTarget(), MetalTarget()):
        registry.add(target)
