"""The build description: what a frontend produces, and its resolved form the planner takes.

It is plain data, independent of any frontend syntax (meson's "build model"): the planner
never sees Modelfile text, and a frontend never sees steps. Spans ride along only so later
stages can point a user at the line that asked for something; they never enter a cache key.

A frontend plugin returns a :class:`BuildDescription` (files found, variables expanded,
sizes and constraints parsed). :func:`modelbuild.frontend.resolve.resolve` checks it
against the installed plugins and returns a :class:`ResolvedBuild`: every transform with the
plugin that will do it and its options typed, every stage with its target platform and
index entry. The planner only plans: it raises no Modelfile error and parses nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from modelbuild.errors import Span

if TYPE_CHECKING:
    from modelbuild.api._sources import OpenedSource
    from modelbuild.ignore import IgnoreRules
    from modelbuild.targets import Constraint


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
    max_bytes: int | None = None  # SHARD: the size, parsed by the frontend
    option_spans: tuple[tuple[str, Span], ...] = field(default=(), compare=False)  # where each option was written

    @property
    def directive(self) -> str:
        return {"convert": "CONVERT", "quantize": "QUANTIZE"}.get(self.action, "SHARD")


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """``RUNTIME ENGINE key=value…``: an engine that serves the variant, with its parameters."""

    name: str
    params: tuple[tuple[str, str], ...] = ()  # as written, in order
    origin: Span | None = None  # the engine's name
    param_spans: tuple[tuple[str, Span], ...] = field(default=(), compare=False)  # where each key is written


@dataclass(frozen=True, slots=True)
class RuntimeSpec:
    """The ``RUNTIME`` lines of one scope (before the first ``TARGET``, or one stage): engines
    in preference order, and the context length (``RUNTIME context=N``)."""

    engines: tuple[EngineSpec, ...] = ()
    context: int | None = None
    context_origin: Span | None = None


@dataclass(frozen=True, slots=True)
class StageSpec:
    """A ``TARGET`` stage: a target plugin, its variant and constraints, and its own steps."""

    name: str
    target: str
    variant: str | None
    constraints: tuple["Constraint", ...]
    transforms: tuple[TransformSpec, ...] = ()
    origin: Span | None = None
    runtime: RuntimeSpec = RuntimeSpec()  # the stage's own RUNTIME lines


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
    name_origin: Span | None = None  # where the name is written: a NAME that is no valid tag is an error there
    runtime: RuntimeSpec = RuntimeSpec()  # RUNTIME lines before the first TARGET: every stage's
    # the .modelbuildignore and --exclude rules the frontend applied (None: it applied none, and
    # the resolve stage reads them); the build applies them inside packaged directories too
    ignore: "IgnoreRules | None" = None
    # a remote FROM (hf://, oci://, …): what it was pinned to, its listing and fetch key;
    # the context is its snapshot directory. None for a local directory.
    source: "OpenedSource | None" = None


# -- resolved: what the planner takes ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transform:
    """A weight transform with the plugin that will do it chosen and its options checked."""

    action: str  # "convert", "quantize", "shard" or "merge"
    arg: str  # the quant type or target format; the shard size as written
    plugin: str  # the registry name of the converter, quantizer or shard strategy
    owner: str  # the plugin that registered it (its version enters the step's key)
    options: tuple[tuple[str, Any], ...] = ()  # typed from the plugin's declarations, sorted
    max_bytes: int | None = None  # SHARD
    origin: Span | None = None

    @property
    def label(self) -> str:
        """What progress output calls the step."""
        return {"convert": f"convert to {self.arg}", "merge": "merge shards",
                "shard": f"shard {self.arg}"}.get(self.action, f"quantize {self.arg}")


@dataclass(frozen=True, slots=True)
class RuntimeChoice:
    """A variant's runtime, checked against the engine plugins: what its runtime description
    (:mod:`modelbuild.runtime.description`) will say.

    ``engines`` are the ``RUNTIME`` lines' engines, each with its parameters, in preference
    order; None when the Modelfile names none for the variant: then every registered engine
    that accepts the built variant is listed (decided when it is built, from its config).
    ``context`` is ``RUNTIME context=N`` (None: the model's own, at most a default).
    ``target`` and ``accelerator`` are the stage's target and the extended resource it needs
    (``nvidia.com/gpu``; ``""`` for none, and both ``""`` without stages)."""

    engines: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] | None = None
    context: int | None = None
    target: str = ""
    accelerator: str = ""

    def to_params(self) -> dict[str, Any]:
        """The step parameters that write the description (part of its key)."""
        engines = None if self.engines is None else [{"name": n, "params": dict(p)} for n, p in self.engines]
        return {"engines": engines, "context": self.context, "target": self.target, "accelerator": self.accelerator}


@dataclass(frozen=True, slots=True)
class Variant:
    """One manifest to build: the implicit single one (``stage`` None), or a TARGET stage's."""

    stage: str | None  # the stage's name: shown, tagged (TAG-STAGE) and annotated, never keyed
    platform: str | None  # the target platform and constraints: what a stage's steps are keyed by
    chain: tuple[Transform, ...] = ()  # the stage's own transforms, after the shared ones
    index_platform: Mapping[str, str] = field(default_factory=dict)  # the index entry's OCI platform
    index_annotations: Mapping[str, str] = field(default_factory=dict)  # and its annotations
    runtime: RuntimeChoice = RuntimeChoice()  # what its runtime description says


@dataclass(frozen=True)
class ResolvedBuild:
    """A build description checked against the installed plugins, ready to plan."""

    description: BuildDescription
    model_set: tuple[FileSpec, ...]  # the files weight transforms and the metadata reader work on
    shared: tuple[Transform, ...]  # before the first TARGET
    variants: tuple[Variant, ...]  # generic (CPU) ones first
