"""Weights told by their headers, with the format plugins the build itself reads them with.

A file is a weight because its first bytes say so, not because of its name: a
``pytorch_model.bin`` that holds safetensors is read as safetensors, a ``model.gguf`` that
holds something else is not packaged as GGUF (the build would refuse it). Each installed
format plugin answers through its ``detect(path)`` (a few bytes); a file whose extension
belongs to no plugin must also pass the plugin's full header check (``read_info``), so a
README that happens to start with ``GGUF`` stays a README.

The facts of the Modelfile (FORMAT, PARAMSIZE, PRECISION, QUANTIZATION, FAMILY, ARCH) come
from ``read_info`` too: the same code the build derives them with, so the values written
agree with what the build reads and never warn as contradictions.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .scan import Found

if TYPE_CHECKING:
    from modelbuild.api import ModelInfo, WeightFormat
    from modelbuild.plugins import PluginHost

# protobuf ONNX files keep inline weights in the graph: above this, the facts are left to the
# build (which reads the whole protobuf anyway) rather than read twice.
MAX_ONNX_PARSE = 256 * 2**20
MAX_CONFIG_BYTES = 16 * 2**20


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the header of one file says: the format that reads it, or why it cannot be one."""

    format: str | None = None
    problem: str | None = None  # set when the name claims a format the bytes do not hold


def judge(found: Found, host: PluginHost) -> Verdict:
    """The weight format *found* holds, by its bytes; a problem when its extension lies."""
    claimed = host.format_for_path(found.path)
    if claimed is not None:
        if _detects(claimed, found):  # its header is checked in full when the facts are read
            return Verdict(claimed.name)
        other = _other_format(host, found, exclude=claimed.name)
        if other is not None:
            return Verdict(problem=f"named {_ext(found.path)} but holds {other.name} weights "
                                   f"(rename it to end in {other.extensions[0]})")
        return Verdict(problem=_reads(claimed, found) or f"does not read as {claimed.name}")
    other = _other_format(host, found, exclude=None)
    return Verdict(other.name) if other is not None else Verdict()


def _other_format(host: PluginHost, found: Found, exclude: str | None) -> WeightFormat | None:
    """A format whose detector claims *found* and whose header reader accepts it."""
    for handler in host.formats:
        if handler.name != exclude and _detects(handler, found) and _reads(handler, found) is None:
            return handler
    return None


def _detects(handler: WeightFormat, found: Found) -> bool:
    detect = getattr(handler, "detect", None)
    if detect is None:  # a plugin without a detector: its extension is all we know
        return found.path.endswith(tuple(handler.extensions))
    try:
        return bool(detect(found.source))
    except Exception:  # noqa: BLE001 - a detector that fails has not recognised the file
        return False


def _reads(handler: WeightFormat, found: Found) -> str | None:
    """None when the header reader accepts *found* alone, else its complaint. ONNX models
    (which may name external data) and big protobufs are taken on their detector's word."""
    if getattr(handler, "sidecar_files", False):
        return None
    from modelbuild.api import FormatError, WeightFile

    try:
        handler.read_info([WeightFile(found.path, found.source, "", found.size)], None)
    except FormatError as exc:
        return exc.render()
    except Exception as exc:  # noqa: BLE001 - a reader bug is still "cannot read it"
        return f"{found.path}: cannot read its header ({type(exc).__name__})"
    return None


def _ext(path: str) -> str:
    return posixpath.splitext(path)[1] or posixpath.basename(path)


@dataclass
class Facts:
    """What the weights and config.json say, in Modelfile terms; unknown values are None."""

    format: str | None = None
    param_size: str | None = None
    precision: str | None = None
    quantization: str | None = None
    architecture: str | None = None
    family: str | None = None
    sidecars: list[str] = field(default_factory=list)  # ONNX external data the models name
    unreadable: dict[str, str] = field(default_factory=dict)  # weight path → why it is left out


def read_facts(weights: dict[str, str], found: dict[str, Found], host: PluginHost) -> Facts:
    """The facts of the weight files *weights* (path → format), reading headers only.
    A file whose header the plugin refuses goes to ``unreadable``: the build would fail on it."""
    groups: dict[str, list[str]] = {}
    for path, fmt in sorted(weights.items()):
        groups.setdefault(fmt, []).append(path)
    facts = Facts()
    infos: list[ModelInfo] = []
    for fmt, paths in sorted(groups.items()):
        handler = host.formats.get(fmt)
        config = _config_near(paths, found)
        others = [f for p, f in found.items() if p not in weights] if getattr(handler, "sidecar_files", False) else []
        info = _read_group(handler, [found[p] for p in paths], others, config, facts)
        if info is not None:
            infos.append(info)
            facts.sidecars += _external_data(info, paths)
    if infos:
        best = max(infos, key=lambda i: (i.param_count, i.format))
        facts.format, facts.param_size, facts.precision = best.format, best.param_size, best.precision
        facts.quantization, facts.architecture, facts.family = best.quantization, best.architecture, best.family
    elif groups:
        facts.format = max(groups, key=lambda g: len(groups[g]))
    return facts


def _read_group(handler: WeightFormat, files: list[Found], others: list[Found], config: dict[str, Any] | None,
                facts: Facts) -> ModelInfo | None:
    """``read_info`` on *files*, dropping (into ``facts.unreadable``) each file it refuses."""
    from modelbuild.api import FormatError, WeightFile

    if getattr(handler, "sidecar_files", False) and any(f.size > MAX_ONNX_PARSE for f in files):
        return None
    remaining = list(files)
    while remaining:
        given = [WeightFile(f.path, f.source, "", f.size) for f in remaining + others]
        try:
            return handler.read_info(given, config)
        except FormatError as exc:
            culprit = next((f for f in remaining if f.path == exc.file), remaining[0])
            facts.unreadable[culprit.path] = exc.render()
            remaining.remove(culprit)
    return None


def _external_data(info: ModelInfo, paths: list[str]) -> list[str]:
    """The external data files ONNX ``read_info`` found, as paths in the directory."""
    per_model = info.extra.get("models") if isinstance(info.extra.get("models"), dict) else None
    models = per_model or ({paths[0]: info.extra} if len(paths) == 1 else {})
    out = []
    for model, extra in models.items():
        for location in (extra or {}).get("external_data") or ():
            out.append(posixpath.normpath(posixpath.join(posixpath.dirname(model), location)))
    return out


def _config_near(paths: list[str], found: dict[str, Found]) -> dict[str, Any] | None:
    """The config.json beside the weights (in the first weight's folder), else the top one."""
    folder = posixpath.dirname(paths[0])
    for candidate in (posixpath.join(folder, "config.json") if folder else "config.json", "config.json"):
        if candidate in found:
            doc = read_json(found[candidate])
            if isinstance(doc, dict):
                return doc
    return None


def read_json(found: Found) -> Any:
    """A JSON document of at most 16 MiB, or None (too big, unreadable, not JSON)."""
    if found.size > MAX_CONFIG_BYTES:
        return None
    try:
        with open(found.source, "rb") as fh:
            return json.loads(fh.read(MAX_CONFIG_BYTES + 1))
    except (OSError, ValueError):
        return None


def is_json_file(found: Found) -> bool:
    """Whether a ``.json`` file parses (the build refuses a config.json that does not)."""
    if found.size > MAX_CONFIG_BYTES:
        return True  # not read: the build reads config.json only, and one this big is odd but not ours to judge
    try:
        with open(found.source, "rb") as fh:
            json.loads(fh.read(MAX_CONFIG_BYTES + 1))
    except ValueError:
        return False
    except OSError:
        return True
    return True
