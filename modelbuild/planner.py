"""Build description → DAG of steps. Pure: nothing runs, nothing is read from disk.

    source ─┬─ digest a ── layer a ─┐
            ├─ digest b ── layer b ─┼─ config ─ manifest ─ export
            └─ …                    ┘
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelbuild.description import BuildDescription
from modelbuild.graph import BuildGraph, Step


@dataclass(frozen=True)
class BuildOptions:
    """Choices made on the command line rather than in the Modelfile."""

    layer_format: str = "raw"
    tags: tuple[str, ...] = ()
    outputs: tuple[dict[str, str], ...] = ()
    created: str | None = None  # RFC 3339, from SOURCE_DATE_EPOCH
    epoch: int = 0  # tar and file-metadata mtime, from SOURCE_DATE_EPOCH
    extra: dict[str, Any] = field(default_factory=dict)


def plan(desc: BuildDescription, options: BuildOptions) -> BuildGraph:
    graph = BuildGraph()
    source = graph.add(Step.make("source", "source", f"load build context {desc.context}", {"root": str(desc.context)}))
    layers = []
    for spec in desc.files:
        raw = options.layer_format == "raw" and not spec.is_dir
        codec = "tar" if (options.layer_format == "raw" and spec.is_dir) else options.layer_format
        digest = graph.add(
            Step.make(
                f"digest:{spec.path}",
                "digest",
                f"{'ingest' if raw else 'digest'} {spec.path}{'/' if spec.is_dir else ''}",
                {"path": spec.path, "is_dir": spec.is_dir, "ingest": raw},
            ),
            [source],
        )
        layer = graph.add(
            Step.make(
                f"layer:{spec.path}",
                "layer",
                f"pack {spec.path}{'/' if spec.is_dir else ''} ({codec})",
                {"path": spec.path, "kind": spec.kind.value, "codec": codec, "epoch": options.epoch},
            ),
            [digest],
        )
        layers.append(layer)
    config = graph.add(
        Step.make(
            "config",
            "config",
            "write config",
            {
                "descriptor": dict(desc.descriptor),
                "config": dict(desc.config),
                "capabilities": dict(desc.capabilities),
                "created": options.created,
            },
        ),
        layers,
    )
    manifest = graph.add(
        Step.make("manifest", "manifest", "write manifest", {"labels": dict(desc.labels), "created": options.created}),
        [config, *layers],
    )
    export_label = "export " + (", ".join(options.tags) if options.tags else "(untagged)")
    graph.add(
        Step.make("export", "export", export_label, {"tags": list(options.tags), "outputs": list(options.outputs)}),
        [manifest],
    )
    return graph
