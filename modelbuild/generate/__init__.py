"""``modelbuild modelfile generate``: a Modelfile for a directory of model files, that builds.

modctl's ``modelfile generate`` sorts files by extension and reads ``config.json``; this does
what a person reading the directory would do, and checks it:

* **weights by their headers** (:mod:`.weights`), with the build's own format plugins: a
  ``.bin`` holding safetensors is a safetensors weight, a ``.gguf`` that is not GGUF is left
  out with a warning (the build would refuse it), ONNX external data goes with its model;
* **Git LFS pointers** (``modelbuild.lfs``) stop it with one error naming them and the fix,
  ``git lfs pull``, instead of a header-size error at build time (``--skip-lfs-pointers``
  leaves them out instead);
* **the other files by name and place** (:mod:`.kinds`): tokenizers are configuration,
  ``data/`` holds datasets, images are documentation;
* **metadata from the headers**: FORMAT, PARAMSIZE, PRECISION, QUANTIZATION, FAMILY and ARCH
  as the build derives them (so they never warn as contradictions), LICENSE from the model
  card or the LICENSE file (:mod:`.license`);
* **hostile directories** (:mod:`.scan`): no link out of the directory is followed, only
  regular files are opened, only headers are read, everything left out is listed in the
  Modelfile with the reason.

:func:`generate` returns a :class:`Plan`; :func:`.render.modelfile` writes its text.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelbuild.errors import UsageError

from .kinds import KINDS, MODEL, kind_by_name
from .scan import Found, Skipped, shown, walk
from .weights import Facts, is_json_file, judge, read_facts, read_json

if TYPE_CHECKING:
    from modelbuild.plugins import PluginHost

_TRANSFORMERS_KEYS = ("transformers_version", "architectures", "num_attention_heads")


@dataclass(frozen=True, slots=True)
class Classified:
    path: str
    kind: str  # one of kinds.KINDS
    why: str
    format: str | None = None  # the weight format its header holds


@dataclass
class Plan:
    """Everything the Modelfile says, and why: what ``--json`` prints."""

    directory: Path
    directory_shown: str
    name: str
    files: list[Classified]
    skipped: list[Skipped]
    facts: Facts
    licenses: list[str]
    warnings: list[str] = field(default_factory=list)
    siblings: dict[str, set[str]] = field(default_factory=dict)
    from_ref: str | None = None

    def metadata(self) -> list[tuple[str, str]]:
        """(directive, value) for each metadata directive, in the Modelfile's order."""
        f = self.facts
        pairs = [("NAME", self.name), ("FAMILY", f.family), ("ARCH", f.architecture), ("FORMAT", f.format),
                 ("PARAMSIZE", f.param_size), ("PRECISION", f.precision), ("QUANTIZATION", f.quantization)]
        return [(k, v) for k, v in pairs if v] + [("LICENSE", v) for v in self.licenses]

    def by_kind(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {kind: [] for kind in KINDS}
        for c in self.files:
            out[c.kind].append(c.path)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "metadata": {k: v for k, v in self.metadata() if k != "LICENSE"},
            "licenses": self.licenses,
            "files": [{"path": c.path, "kind": c.kind, "why": c.why, **({"format": c.format} if c.format else {})}
                      for c in self.files],
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "warnings": self.warnings,
        }


def generate(directory: str | os.PathLike[str], *, name: str | None = None, output: str | None = None,
             skip_lfs_pointers: bool = False, host: PluginHost | None = None,
             default_name: str | None = None) -> Plan:
    """Classify every file under *directory* and gather the Modelfile's metadata.

    *output* is where the Modelfile will be written: left out of the files, and when it lies
    in another folder, a relative ``FROM`` points back at *directory*. Without *name*, the
    name is *default_name* (a remote source's), else the directory's, folded."""
    root = _root(directory)
    name = _name(name, Path(default_name) if default_name else root)  # checked before any file is read
    out_path = Path(os.path.realpath(Path(output).parent)) / Path(output).name if output else None
    listing = walk(root, exclude=frozenset({str(out_path)} if out_path else ()))
    if host is None:
        from modelbuild.plugins import make_plugin_manager

        host = make_plugin_manager()
    found = {f.path: f for f in listing.found}
    skipped = list(listing.skipped)
    _check_lfs(found, skipped, skip_lfs_pointers, shown(str(directory)))
    weights, facts = _weights(found, host, skipped)
    files = _classify(found, weights, facts, skipped)
    _fill_from_config(facts, found)
    from .license import detect as detect_license

    licenses, license_warning = detect_license({c.path: found[c.path] for c in files})
    plan = Plan(root, str(directory), name, files, sorted(skipped, key=lambda s: s.path), facts, licenses,
                siblings=_siblings(root, files), from_ref=_from_ref(root, out_path.parent) if out_path else None)
    plan.warnings = [f"{shown(s.path)}: {s.reason}; left out" for s in plan.skipped if s.warn]
    if license_warning:
        plan.warnings.append(license_warning)
    if not files:
        raise UsageError(f"nothing to package in {shown(str(directory))}",
                         hint="every file was left out: " + "; ".join(plan.warnings[:3]) if plan.warnings
                         else "the directory holds no files")
    if not any(c.kind == MODEL for c in files):
        plan.warnings.append("no weight file found: the Modelfile has no MODEL line")
    return plan


def _weights(found: dict[str, Found], host: PluginHost, skipped: list[Skipped]) -> tuple[dict[str, str], Facts]:
    """The weight files (path → format, by header) and their facts; a file whose name claims
    a format its bytes do not hold, or whose header does not read, goes to *skipped*."""
    weights: dict[str, str] = {}
    for path, f in found.items():
        verdict = judge(f, host)
        if verdict.format:
            weights[path] = verdict.format
        elif verdict.problem:
            skipped.append(Skipped(path, verdict.problem.removeprefix(f"{path}: "), warn=True))
    # the facts come from the files the build reads by extension, as the build derives them
    # (a .bin holding safetensors beside model.safetensors is a copy, not more parameters);
    # from the others only when there are no such files
    by_extension = {p: fmt for p, fmt in weights.items() if host.format_for_path(p) is not None}
    facts = read_facts(by_extension or weights, found, host)
    for path, why in facts.unreadable.items():
        weights.pop(path)
        skipped.append(Skipped(path, why.removeprefix(f"{path}: "), warn=True))
    return weights, facts


def _root(directory: str | os.PathLike[str]) -> Path:
    path = Path(directory)
    if not path.exists():
        raise UsageError(f"{shown(str(directory))}: no such directory")
    if not path.is_dir():
        raise UsageError(f"{shown(str(directory))}: not a directory",
                         hint="give the directory that holds the model files")
    return Path(os.path.realpath(path))


def _check_lfs(found: dict[str, Found], skipped: list[Skipped], skip: bool, where: str) -> None:
    """Git LFS pointers: an error naming them all, or (with *skip*) left out with a warning."""
    from modelbuild import lfs

    pointers = []
    for path, f in list(found.items()):
        try:
            if lfs.is_pointer_file(f.source, f.size):
                pointers.append(path)
        except OSError as exc:
            skipped.append(Skipped(path, f"cannot read it: {exc.strerror or exc}", warn=True))
            del found[path]
    if pointers and not skip:
        listed = ", ".join(pointers[:5]) + (f" and {len(pointers) - 5} more" if len(pointers) > 5 else "")
        raise UsageError(f"{where}: {len(pointers)} file(s) are Git LFS pointers, not the files they name: {listed}",
                         hint=f"{lfs.HINT}; or pass --skip-lfs-pointers to leave them out")
    for path in pointers:
        skipped.append(Skipped(path, "a Git LFS pointer, not the file it names (run `git lfs pull`)", warn=True))
        del found[path]


def _classify(found: dict[str, Found], weights: dict[str, str], facts: Facts,
              skipped: list[Skipped]) -> list[Classified]:
    sidecars = set(facts.sidecars)
    left_out = {s.path for s in skipped}
    files = []
    for path, f in found.items():
        if path in weights:
            files.append(Classified(path, MODEL, f"{weights[path]} weights (by header)", weights[path]))
        elif path in sidecars:
            files.append(Classified(path, MODEL, "external data of an ONNX model"))
        elif path in left_out:
            continue
        elif path == "config.json" and not is_json_file(f):
            skipped.append(Skipped(path, "not valid JSON (the build reads config.json and would refuse it)", warn=True))
        elif (rule := kind_by_name(path)) is not None:
            files.append(Classified(path, rule[0], rule[1]))
        else:
            skipped.append(Skipped(path, "no rule says what it is (add it to a file directive if it belongs)",
                                   warn=True))
    return files


def _fill_from_config(facts: Facts, found: dict[str, Found]) -> None:
    """FAMILY, ARCH and PRECISION from the top config.json where the weights said nothing,
    and PRECISION only in the ModelPack vocabulary (anything else would warn at build)."""
    from modelbuild.frontend.directives import KNOWN_PRECISIONS
    from modelbuild.schema import PRECISION_ALIASES

    config = read_json(found["config.json"]) if "config.json" in found else None
    if isinstance(config, dict):
        if not facts.family and isinstance(config.get("model_type"), str) and config["model_type"].strip():
            facts.family = config["model_type"].strip()
        if not facts.architecture and any(k in config for k in _TRANSFORMERS_KEYS):
            facts.architecture = "transformer"
        dtype = config.get("torch_dtype", config.get("dtype"))
        if not facts.precision and isinstance(dtype, str):
            facts.precision = PRECISION_ALIASES.get(dtype.lower(), dtype.lower())
    if facts.precision and not set(facts.precision.split(",")) <= KNOWN_PRECISIONS:
        facts.precision = None
    for attr in ("family", "architecture", "quantization"):
        value = getattr(facts, attr)
        if value is not None and (not value.strip() or not value.isprintable()):
            setattr(facts, attr, None)


def _name(name: str | None, root: Path) -> str:
    """``--name`` when it is a valid repository name; else the directory's name, folded."""
    from modelbuild.oci.reference import check_reference

    if name is not None:
        reason, hint = check_reference(name)
        if reason:
            folded = _fold(name)
            raise UsageError(f"--name {name!r} is not a valid repository name: {reason}",
                             hint=hint or (f"use {folded!r}" if folded else None))
        return name
    folded = _fold(root.name)
    return folded if folded and check_reference(folded)[0] is None else "model"


def _fold(text: str) -> str:
    """A repository name from any text: lower-case, runs of other characters as one '-'."""
    folded = re.sub(r"[^a-z0-9._]+", "-", text.lower())
    folded = re.sub(r"[._-]{2,}", "-", folded)  # one separator between components reads best
    return folded.strip("._-")[:128]


def _siblings(root: Path, files: list[Classified]) -> dict[str, set[str]]:
    """Every non-hidden name in each folder holding a shard series (what a glob there meets)."""
    folders = {posixpath.dirname(c.path) for c in files if re.search(r"-\d{5}-of-\d{5}\.", c.path)}
    out = {}
    for folder in folders:
        try:
            out[folder] = {n for n in os.listdir(root / folder) if not n.startswith(".")}
        except OSError:
            out[folder] = set()
    return out


def _from_ref(root: Path, modelfile_dir: Path) -> str | None:
    """The ``FROM`` a Modelfile in *modelfile_dir* needs to find *root*: none when it lies
    there; else a relative path, so the two can move together."""
    if Path(os.path.realpath(modelfile_dir)) == root:
        return None
    rel = os.path.relpath(root, os.path.realpath(modelfile_dir)).replace(os.sep, "/")
    # './' keeps a name such as '~x' or 'file://x' from reading as a home path or a URL
    return rel if rel.startswith("../") or rel == ".." else f"./{rel}"


__all__ = ["Classified", "Plan", "generate"]
