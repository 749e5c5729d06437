"""The build description: what a frontend hands the planner.

It is plain data, independent of any frontend syntax (meson's "build model"): the planner
never sees Modelfile text, and a frontend never sees steps. Spans ride along only so later
stages can point a user at the line that asked for something; they never enter a cache key.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from modelbuild.errors import Span


class FileKind(str, enum.Enum):
    """What a packaged file is; picks the ModelPack layer media type family."""

    CONFIG = "config"
    MODEL = "model"
    CODE = "code"
    DATASET = "dataset"
    DOC = "doc"

    @property
    def media_family(self) -> str:
        """The ``application/vnd.cncf.model.<family>.v1`` part of the layer media type."""
        return {
            FileKind.CONFIG: "weight.config",
            FileKind.MODEL: "weight",
            FileKind.CODE: "code",
            FileKind.DATASET: "dataset",
            FileKind.DOC: "doc",
        }[self]


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One path to package, relative to the context, in POSIX form."""

    path: str
    kind: FileKind
    is_dir: bool
    origin: Span | None = None


@dataclass(frozen=True, slots=True)
class TransformSpec:
    """A step that changes the weights: ``QUANTIZE bfloat16``, ``SHARD 2GB``, ``SHARD none``."""

    action: str  # "convert", "quantize", "shard" or "merge"
    arg: str  # the quant type, or the shard size as written
    options: tuple[tuple[str, Any], ...] = ()
    origin: Span | None = None

    @property
    def directive(self) -> str:
        return {"convert": "CONVERT", "quantize": "QUANTIZE"}.get(self.action, "SHARD")


@dataclass(frozen=True, slots=True)
class StageSpec:
    """A ``TARGET`` stage: a target plugin, its variant and constraints, and its own steps."""

    name: str
    target: str
    variant: str | None
    constraints: tuple[str, ...]
    transforms: tuple[TransformSpec, ...] = ()
    origin: Span | None = None


@dataclass(frozen=True)
class BuildDescription:
    """Everything a build needs to know, resolved: files found, variables expanded."""

    context: Path
    files: tuple[FileSpec, ...]
    name: str | None = None
    descriptor: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    capabilities: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    transforms: tuple[TransformSpec, ...] = ()  # before the first TARGET: shared by every stage
    stages: tuple[StageSpec, ...] = ()
    source_file: str = "Modelfile"
    warnings: tuple[str, ...] = ()
