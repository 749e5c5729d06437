"""The solver in-process, with small ops of its own: ordering, failure, identical work
once, the cache at rest, typed results in flight."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from modelbuild.cache import BuildCache
from modelbuild.digests import key_of
from modelbuild.errors import BuildError
from modelbuild.graph import BuildGraph, Step
from modelbuild.ops import ExecEnv, Op, Outcome
from modelbuild.progress import Emitter
from modelbuild.solver import Solver
from modelbuild.store import Store
from modelbuild.testing import plugin_host


@dataclass(frozen=True)
class Value:
    """A typed result: a number and the ids of the steps it came through."""

    n: int
    trail: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "trail": list(self.trail)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Value":
        return cls(doc["n"], tuple(doc["trail"]))

    def blobs(self) -> list:
        return []


class Add(Op):
    """Sums its inputs plus its own ``n``; keyed on its definition and its inputs' values."""

    name = "add"
    result_type = Value

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.lock = threading.Lock()
        self.fail: set[str] = set()
        self.delay: dict[str, float] = {}

    def key(self, step: Step, inputs: list[Any], env: ExecEnv) -> str | None:
        return key_of({**step.definition(), "inputs": [i.n for i in inputs]})

    def run(self, step: Step, inputs: list[Any], ctx: Any) -> Outcome:
        with self.lock:
            self.ran.append(step.id)
        time.sleep(self.delay.get(step.id, 0))
        if step.id in self.fail:
            raise BuildError(f"{step.id} failed")
        n = step.params["n"] + sum(i.n for i in inputs)
        return Outcome(Value(n, tuple(t for i in inputs for t in i.trail) + (step.id,)))


@pytest.fixture
def env(tmp_path):
    events: list[Any] = []
    store = Store(tmp_path / "store").ensure()
    cache = BuildCache(tmp_path / "cache")
    yield ExecEnv(store=store, cache=cache, host=plugin_host(), emitter=Emitter(events.append), jobs=2)
    cache.close()


def diamond() -> BuildGraph:
    """a → (b, c) → d, and an unrelated e."""
    g = BuildGraph()
    a = g.add(Step.make("a", "add", "a", {"n": 1}))
    b = g.add(Step.make("b", "add", "b", {"n": 10}), [a])
    c = g.add(Step.make("c", "add", "c", {"n": 100}), [a])
    g.add(Step.make("d", "add", "d", {"n": 1000}), [b, c])
    g.add(Step.make("e", "add", "e", {"n": 5}))
    return g


def test_results_are_typed_and_flow_along_edges(env):
    op = Add()
    results = Solver(diamond(), env, ops={"add": op}).solve()
    assert results["d"] == Value(1000 + (10 + 1) + (100 + 1), ("a", "b", "a", "c", "d"))
    assert sorted(op.ran) == ["a", "b", "c", "d", "e"]
    assert op.ran.index("a") < op.ran.index("b") < op.ran.index("d") and op.ran.index("c") < op.ran.index("d")


def test_a_second_solve_is_all_cached_and_decodes_the_stored_form(env):
    Solver(diamond(), env, ops={"add": Add()}).solve()
    op = Add()
    solver = Solver(diamond(), env, ops={"add": op})
    results = solver.solve()
    assert op.ran == [] and env.stats.steps_cached == 5
    assert results["d"].trail == ("a", "b", "a", "c", "d")
    assert solver.keyed["d"][2] == results["d"].to_json()  # the stored form, for --cache-to


def test_a_stored_result_that_does_not_decode_is_a_miss(env):
    solver = Solver(diamond(), env, ops={"add": Add()})
    solver.solve()
    key = solver.keyed["e"][1]
    env.cache.set_step(key, {"garbage": True})
    op = Add()
    Solver(diamond(), env, ops={"add": op}).solve()
    assert op.ran == ["e"]


def test_the_first_failure_stops_scheduling(env):
    g = BuildGraph()
    first = g.add(Step.make("a", "add", "a", {"n": 1}))
    g.add(Step.make("b", "add", "b", {"n": 2}), [first])
    g.add(Step.make("slow", "add", "slow", {"n": 3}))
    g.add(Step.make("z", "add", "z", {"n": 4}))
    op = Add()
    op.fail = {"a"}
    op.delay = {"slow": 0.3}
    with pytest.raises(BuildError, match="a failed"):
        Solver(g, env, jobs=2, ops={"add": op}).solve()
    # "slow" was already running and finished; b depends on the failure and z was never started
    assert "b" not in op.ran and "z" not in op.ran and "slow" in op.ran


def test_identical_work_in_one_graph_runs_once(env):
    g = BuildGraph()
    # same op, params and inputs: the same key under two ids (two stages doing the same thing)
    g.add(Step.make("one", "add", "one", {"n": 7}))
    g.add(Step.make("two", "add", "two", {"n": 7}))
    op = Add()
    op.delay = {"one": 0.2, "two": 0.2}
    results = Solver(g, env, jobs=2, ops={"add": op}).solve()
    assert len(op.ran) == 1
    assert results["one"].n == results["two"].n == 7


def test_order_is_deterministic_and_matches_networkx(env):
    import networkx as nx

    g = diamond()
    assert g.order == list(nx.lexicographical_topological_sort(g.g, key=lambda sid: BuildGraph.sort_key(g, sid)))
