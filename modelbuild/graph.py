"""Build steps and the DAG that orders them.

A :class:`Step` is frozen data: an op name, the plugin that provides it, its parameters as
canonical JSON, and the target platform. A step's cache key is computed later, by the op,
from this definition plus its inputs' *content* digests (BuildKit's Merkle DAG): the label
shown in progress output and the Modelfile line that asked for it never enter a key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from modelbuild.digests import canonical_json

if TYPE_CHECKING:
    import networkx as nx


@dataclass(frozen=True, slots=True)
class Step:
    id: str
    op: str
    label: str
    params_json: bytes = b"{}"
    plugin: str = "modelbuild"
    platform: str | None = None

    @staticmethod
    def make(id: str, op: str, label: str, params: dict[str, Any] | None = None, **kw: Any) -> "Step":
        return Step(id, op, label, canonical_json(params or {}), **kw)

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.params_json)

    def definition(self) -> dict[str, Any]:
        """What identifies the step's work, without its inputs (they are added by the op)."""
        return {"op": self.op, "plugin": self.plugin, "platform": self.platform, "params": self.params}


class BuildGraph:
    """Steps and their ordered dependencies; a networkx DiGraph underneath."""

    def __init__(self) -> None:
        import networkx as nx

        self.g: nx.DiGraph = nx.DiGraph()
        self.deps: dict[str, list[str]] = {}

    def add(self, step: Step, deps: list[Step] | None = None) -> Step:
        if step.id in self.deps:
            raise ValueError(f"duplicate step id {step.id}")
        self.g.add_node(step.id, step=step)
        self.deps[step.id] = [d.id for d in deps or []]
        for index, dep in enumerate(deps or []):
            self.g.add_edge(dep.id, step.id, index=index)
        return step

    def step(self, step_id: str) -> Step:
        return self.g.nodes[step_id]["step"]

    @cached_property
    def order(self) -> list[str]:
        """A deterministic topological order (ties broken by step id)."""
        import networkx as nx

        return list(nx.lexicographical_topological_sort(self.g, key=lambda n: (_op_rank(self.step(n).op), n)))

    def successors(self, step_id: str) -> list[str]:
        return sorted(self.g.successors(step_id))

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    # -- printing -------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        number = {sid: i + 1 for i, sid in enumerate(self.order)}
        return {
            "steps": [
                {
                    "number": number[sid],
                    "id": sid,
                    "op": self.step(sid).op,
                    "label": self.step(sid).label,
                    "plugin": self.step(sid).plugin,
                    "platform": self.step(sid).platform,
                    "params": self.step(sid).params,
                    "deps": [number[d] for d in self.deps[sid]],
                }
                for sid in self.order
            ]
        }

    def to_dot(self) -> str:
        number = {sid: i + 1 for i, sid in enumerate(self.order)}
        lines = ["digraph build {", "  rankdir=LR;", '  node [shape=box, fontname="monospace"];']
        for sid in self.order:
            label = f"#{number[sid]} {self.step(sid).label}".replace('"', '\\"')
            lines.append(f'  s{number[sid]} [label="{label}"];')
        for sid in self.order:
            for dep in self.deps[sid]:
                lines.append(f"  s{number[dep]} -> s{number[sid]};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_text(self) -> str:
        number = {sid: i + 1 for i, sid in enumerate(self.order)}
        out = []
        for sid in self.order:
            deps = ", ".join(f"#{number[d]}" for d in self.deps[sid])
            out.append(f"#{number[sid]:<3} {self.step(sid).label}" + (f"  <- {deps}" if deps else ""))
        return "\n".join(out) + "\n"


_RANKS = {"source": 0, "digest": 1, "layer": 2, "config": 3, "manifest": 4, "export": 5}


def _op_rank(op: str) -> int:
    return _RANKS.get(op, 3)
