"""Build steps and the DAG that orders them.

A :class:`Step` is frozen data: an op name, the plugin that provides it, its parameters as
canonical JSON, and the target platform. A step's cache key is computed later, by the op,
from this definition plus its inputs' *content* digests (BuildKit's Merkle DAG): the label
shown in progress output, the stage's name and the Modelfile line that asked for it never
enter a key.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from modelbuild.digests import canonical_json

if TYPE_CHECKING:
    import networkx as nx


# Enters every key: bumped when the stored form of a result changes, so that a step index
# or cache record written by an older modelbuild is never decoded as the new form.
RESULT_FORM = 2


@dataclass(frozen=True, slots=True)
class Step:
    id: str
    op: str
    label: str
    params_json: bytes = b"{}"
    plugin: str = "modelbuild"
    platform: str | None = None  # the stage's target platform and constraints: keyed
    stage: str | None = None  # the stage's name: shown, never keyed

    @staticmethod
    def make(id: str, op: str, label: str, params: dict[str, Any] | None = None, **kw: Any) -> "Step":
        return Step(id, op, label, canonical_json(params or {}), **kw)

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.params_json)

    def definition(self) -> dict[str, Any]:
        """What identifies the step's work, without its inputs (they are added by the op)."""
        return {"op": self.op, "plugin": self.plugin, "platform": self.platform, "params": self.params,
                "form": RESULT_FORM}


@dataclass(frozen=True, slots=True)
class VariantSteps:
    """Where one variant's config and manifest come from in the graph."""

    stage: str | None  # None: the single variant of a build without TARGET stages
    config: str  # step id
    manifest: str  # step id


class BuildGraph:
    """Steps and their ordered dependencies.

    The same graph is available as a networkx ``DiGraph`` (:attr:`g`, node attribute
    ``step``, edge attribute ``index``) for analysis and printing. It is built on first use:
    importing networkx costs ~80 ms, a third of a no-op rebuild, and running a plan needs
    only the topological order, which :attr:`order` computes from the same adjacency
    (tests check it equals networkx's ``lexicographical_topological_sort``).
    """

    def __init__(self) -> None:
        self.steps: dict[str, Step] = {}
        self.deps: dict[str, list[str]] = {}
        self._dependents: dict[str, list[str]] = {}
        self.variants: list[VariantSteps] = []  # in index order (generic first)
        self.top = ""  # the step whose descriptor the build produces: the manifest, or the index
        self.export = ""  # the last step: layouts written, tags to set

    def add(self, step: Step, deps: list[Step] | None = None) -> Step:
        if step.id in self.steps:
            raise ValueError(f"duplicate step id {step.id}")
        missing = [d.id for d in deps or [] if d.id not in self.steps]
        if missing:
            raise ValueError(f"step {step.id} depends on unknown steps {missing}")
        self.steps[step.id] = step
        self.deps[step.id] = [d.id for d in deps or []]
        self._dependents[step.id] = []
        for dep in deps or []:
            self._dependents[dep.id].append(step.id)
        return step

    def step(self, step_id: str) -> Step:
        return self.steps[step_id]

    @cached_property
    def g(self) -> "nx.DiGraph":
        import networkx as nx

        graph = nx.DiGraph()
        for sid, step in self.steps.items():
            graph.add_node(sid, step=step)
        for sid, deps in self.deps.items():
            for index, dep in enumerate(deps):
                graph.add_edge(dep, sid, index=index)
        return graph

    @staticmethod
    def sort_key(graph: "BuildGraph", step_id: str) -> tuple[int, str]:
        return (_op_rank(graph.step(step_id).op), step_id)

    @cached_property
    def order(self) -> list[str]:
        """A deterministic topological order: Kahn's algorithm, ties broken by (op rank, id).

        Adding a step only after its dependencies (``add`` checks) keeps the graph acyclic.
        """
        remaining = {sid: len(deps) for sid, deps in self.deps.items()}
        ready = [(self.sort_key(self, sid), sid) for sid, n in remaining.items() if n == 0]
        heapq.heapify(ready)
        out = []
        while ready:
            _, sid = heapq.heappop(ready)
            out.append(sid)
            for succ in self._dependents[sid]:
                remaining[succ] -= 1
                if remaining[succ] == 0:
                    heapq.heappush(ready, (self.sort_key(self, succ), succ))
        return out

    def successors(self, step_id: str) -> list[str]:
        return sorted(set(self._dependents[step_id]))

    def __len__(self) -> int:
        return len(self.steps)

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
                    "stage": self.step(sid).stage,
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


_RANKS = {"source": 0, "digest": 1, "transform": 2, "layer": 3, "layerset": 3, "describe": 4, "config": 5,
          "manifest": 6, "index": 7, "export": 8}


def _op_rank(op: str) -> int:
    return _RANKS.get(op, 3)
