"""Targets: what a ``TARGET`` stage builds for, and how a host is matched to a variant.

Public API for target plugins (``modelbuild_register_targets``) and for the runtime side
(``modelbuild pull --platform``). The conventions — annotation keys, ordering, matching —
are specified in docs/spec/multi-platform.md; this module is their implementation.
"""

from __future__ import annotations

import os
import platform as _platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

# annotation keys written on index descriptors (docs/spec/multi-platform.md §3)
ANN_TARGET = "dev.modelbuild.platform.target"
ANN_STAGE = "dev.modelbuild.platform.stage"
ANN_REQUIRES = "dev.modelbuild.platform.requires"
ANN_ACCELERATOR = "dev.modelbuild.platform.accelerator"
ANN_FORMAT = "dev.modelbuild.model.format"
ANN_QUANTIZATION = "dev.modelbuild.model.quantization"

_CONSTRAINT = re.compile(r"^(?P<key>[a-z][a-z0-9_.-]*)\s*(?P<op>>=|<=|==|=|>|<)\s*(?P<value>\S+)$")


class ConstraintError(ValueError):
    """A constraint that does not parse or that a target rejects."""


@dataclass(frozen=True, slots=True)
class Constraint:
    key: str
    op: str  # ">=", "<=", "=", ">", "<"
    value: str

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(v for v in self.value.split(",") if v)

    def admits(self, found: str | tuple[int, ...] | None) -> bool | None:
        """Whether a host's *found* value satisfies this constraint; None when unknown."""
        if found is None:
            return None
        if self.op == "=":
            if isinstance(found, tuple):
                return version_tuple(self.value) == found[: len(version_tuple(self.value))]
            return found in self.values
        have = found if isinstance(found, tuple) else version_tuple(found)
        want = version_tuple(self.value)
        return {">=": have >= want, "<=": have <= want, ">": have > want, "<": have < want}[self.op]


def parse_constraint(text: str) -> Constraint:
    match = _CONSTRAINT.match(text.strip())
    if not match:
        raise ConstraintError(f"bad constraint {text!r}: write key>=value, key<=value or key=value")
    op = "=" if match.group("op") == "==" else match.group("op")
    return Constraint(match.group("key"), op, match.group("value"))


def version_tuple(text: str) -> tuple[int, ...]:
    """``"12.1"`` → ``(12, 1)``; ``"gfx942"`` is not a version (ConstraintError)."""
    parts = text.split(".")
    if not all(p.isdigit() for p in parts):
        raise ConstraintError(f"{text!r} is not a version number")
    return tuple(int(p) for p in parts)


@dataclass(frozen=True)
class Stage:
    """One ``TARGET`` stage, as a target plugin sees it."""

    name: str
    target: str
    variant: str | None
    constraints: tuple[Constraint, ...] = ()

    def constraint(self, key: str) -> Constraint | None:
        return next((c for c in self.constraints if c.key == key), None)


@dataclass
class Accelerator:
    """One kind of accelerator on a host."""

    kind: str  # "cuda", "rocm", "metal"
    facts: dict[str, Any] = field(default_factory=dict)  # e.g. {"cuda": (12, 4), "compute": (8, 9)}


@dataclass
class HostInfo:
    """What selection needs to know about a machine."""

    os: str = "linux"
    arch: str = "amd64"
    accelerators: list[Accelerator] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"{self.os}/{self.arch}"]
        for acc in self.accelerators:
            facts = ", ".join(f"{k} {'.'.join(map(str, v)) if isinstance(v, tuple) else v}"
                              for k, v in acc.facts.items())
            parts.append(f"{acc.kind}" + (f" ({facts})" if facts else ""))
        return ", ".join(parts)

    def accelerator(self, kind: str) -> Accelerator | None:
        return next((a for a in self.accelerators if a.kind == kind), None)


_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def detect_host() -> HostInfo:
    """This machine: NVIDIA via nvidia-smi or /proc/driver/nvidia, ROCm via rocminfo or
    /dev/kfd, Apple silicon via the OS, else the CPU alone."""
    system = _platform.system().lower()
    host = HostInfo(os="darwin" if system == "darwin" else "linux",
                    arch=_ARCHES.get(_platform.machine().lower(), _platform.machine().lower()))
    if system == "darwin" and host.arch == "arm64":
        host.accelerators.append(Accelerator("metal"))
    nvidia = _detect_nvidia()
    if nvidia is not None:
        host.accelerators.append(nvidia)
    rocm = _detect_rocm()
    if rocm is not None:
        host.accelerators.append(rocm)
    return host


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _detect_nvidia() -> Accelerator | None:
    caps = _run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"])
    if caps is not None:
        facts: dict[str, Any] = {}
        versions = [version_tuple(c.strip()) for c in caps.splitlines() if re.fullmatch(r"\d+\.\d+", c.strip())]
        if versions:
            facts["compute"] = min(versions)
        header = _run(["nvidia-smi"]) or ""
        match = re.search(r"CUDA Version:\s*(\d+\.\d+)", header)
        if match:
            facts["cuda"] = version_tuple(match.group(1))
        return Accelerator("cuda", facts)
    if os.path.exists("/proc/driver/nvidia/version"):
        return Accelerator("cuda", {})
    return None


def _detect_rocm() -> Accelerator | None:
    info = _run(["rocminfo"])
    if info is None and not os.path.exists("/dev/kfd"):
        return None
    facts: dict[str, Any] = {}
    if info:
        gfx = sorted(set(re.findall(r"\b(gfx[0-9a-f]+)\b", info)))
        if gfx:
            facts["gfx"] = ",".join(gfx)
    for path in ("/opt/rocm/.info/version", "/opt/rocm/.info/version-dev"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        match = re.match(r"(\d+\.\d+(?:\.\d+)?)", text)
        if match:
            facts["rocm"] = version_tuple(match.group(1))
            break
    return Accelerator("rocm", facts)


# -- choosing an index entry for a host (docs/spec/multi-platform.md §5) --------------------


@dataclass
class Choice:
    descriptor: dict[str, Any]
    stage: str
    target: str


def entry_stage(entry: dict[str, Any]) -> Stage:
    """The stage an index entry was built for, from its annotations; ConstraintError when
    its requirements annotation does not parse (an index written by someone else)."""
    ann = entry.get("annotations", {})
    target = ann.get(ANN_TARGET, "cpu")
    constraints = tuple(parse_constraint(c) for c in ann.get(ANN_REQUIRES, "").split() if c)
    return Stage(ann.get(ANN_STAGE, target), target, entry.get("platform", {}).get("architecture"), constraints)


def _entry_names(entry: dict[str, Any]) -> tuple[str, str]:
    """An entry's stage and target names, which do not need its requirements to parse."""
    ann = entry.get("annotations", {})
    target = ann.get(ANN_TARGET, "cpu")
    return ann.get(ANN_STAGE, target), target


def describe_entry(entry: dict[str, Any]) -> str:
    """``cuda (linux/amd64, cuda>=12.1)``, for messages; names escaped (they come from an index)."""
    from modelbuild.oci.verify import shown

    name = _entry_names(entry)[0]
    plat = entry.get("platform", {})
    where = f"{plat.get('os', '?')}/{plat.get('architecture', '?')}"
    try:
        needs = " ".join(str(c) for c in entry_stage(entry).constraints)
    except ConstraintError:
        needs = "unreadable requirements"
    return shown(f"{name} ({where}{', ' + needs if needs else ''})", 200)


def select_entry(index: dict[str, Any], wanted: str, host: HostInfo, targets: Any) -> Choice:
    """The index entry to use on *host*: ``wanted`` is ``auto``, a stage name or a target name.

    ``auto``: the first entry (in index order) for an accelerator the host has whose
    constraints the host meets; else the first generic entry for the host's OS and
    architecture. When none fits, the error lists every entry with why it was passed over
    (docs/spec/multi-platform.md §5.3). An entry whose requirements do not parse is skipped, as one whose target
    is unknown (docs/spec/multi-platform.md §5.5). A name: the first entry with that stage
    or target name, preferring one for the host's architecture (requirements are not read).
    Raises NotFoundError naming the host and the entries.
    """
    from modelbuild.errors import NotFoundError
    from modelbuild.oci.verify import shown

    entries = [e for e in index.get("manifests", []) if isinstance(e, dict)]
    chosen = None
    rejected: dict[int, str] = {}  # entry index → why automatic selection passed it over
    if wanted == "auto":
        readable = []
        for i, entry in enumerate(entries):
            try:
                readable.append((i, entry, entry_stage(entry)))
            except ConstraintError:
                rejected[i] = "its requirements do not parse"
        for i, entry, stage in readable:
            target = targets.get(stage.target) if stage.target in targets else None
            if target is None:
                if stage.target != "cpu":
                    rejected[i] = f"no plugin knows target {shown(stage.target)}"
                continue
            if target.generic:
                continue
            fits, why = target.matches(stage, host)
            if fits:
                chosen = entry
                break
            rejected[i] = why or "the target does not match this host"
        if chosen is None:
            for i, entry, stage in readable:
                target = targets.get(stage.target) if stage.target in targets else None
                generic = target.generic if target is not None else stage.target == "cpu"
                if not generic:
                    continue
                plat = entry.get("platform", {})
                if plat.get("os") == host.os and plat.get("architecture") == host.arch:
                    chosen = entry
                    break
                rejected[i] = f"built for {shown(str(plat.get('os', '?')))}/{shown(str(plat.get('architecture', '?')))}"
    else:
        named = [e for e in entries if wanted in _entry_names(e)]
        chosen = next((e for e in named if e.get("platform", {}).get("architecture") == host.arch),
                      named[0] if named else None)
    if chosen is None:
        if wanted == "auto":
            why = "; ".join(f"{describe_entry(e)}: {rejected.get(i, 'not chosen')}" for i, e in enumerate(entries))
            raise NotFoundError(f"no variant fits this host ({host.describe()}): {why or 'the index lists none'}",
                                hint="pick one with --platform NAME")
        available = ", ".join(describe_entry(e) for e in entries) or "none"
        raise NotFoundError(f"no variant named {shown(wanted)}: available are {available}")
    name, target = _entry_names(chosen)
    return Choice(chosen, name, target)

