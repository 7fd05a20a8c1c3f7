"""TraceRecorder on its own: sequences cut where calls overlap, live grading, search labels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from graphrag import GraphRAGEngine, GraphStore, MemoryStore, SQLiteStore, WorkflowExecution
from pml_gateway.proxy.traces import SavedTrace, TraceRecorder

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def recorder(clock: Clock) -> tuple[TraceRecorder, list[WorkflowExecution], list[tuple[list[str], str]], list[tuple[str, list[str], str]]]:
    recorded: list[WorkflowExecution] = []
    graded: list[tuple[list[str], str]] = []
    labels: list[tuple[str, list[str], str]] = []

    async def record(execution: WorkflowExecution) -> None:
        recorded.append(execution)

    def grade(history: Sequence[str], tool: str) -> None:
        graded.append((list(history), tool))

    def label(query: str, ranked: Sequence[str], tool: str) -> None:
        labels.append((query, list(ranked), tool))

    traces = TraceRecorder(record, idle_seconds=30, clock=clock, grade_next=grade, on_search_label=label)
    return traces, recorded, graded, labels


async def test_consecutive_calls_are_one_sequence_and_are_graded() -> None:
    clock = Clock()
    traces, recorded, graded, _ = recorder(clock)
    for tool in ("a", "b", "c"):
        started = clock.now
        clock.now += 1
        traces.add("caller:x", tool, success=True, started=started)
    await traces.end("caller:x")
    assert [e.tool_ids for e in recorded] == [["a", "b", "c"]]
    assert graded == [(["a"], "b"), (["a", "b"], "c")]


async def test_overlapping_calls_teach_no_edge_across_them() -> None:
    clock = Clock()
    traces, recorded, graded, _ = recorder(clock)
    traces.add("caller:x", "a", success=True, started=99.0)  # ends at 100
    traces.add("caller:x", "b", success=True, started=99.5)  # started before a ended: parallel
    clock.now = 101.0
    traces.add("caller:x", "c", success=True, started=100.5)  # after b ended at 100
    await traces.end("caller:x")
    assert [e.tool_ids for e in recorded] == [["a"], ["b", "c"]]
    assert recorded[1].workflow_id == recorded[0].workflow_id + "-1"
    assert graded == [(["a", "b"], "c")]  # b followed nothing; c followed b


async def test_a_search_is_labelled_by_the_next_call_of_the_same_caller() -> None:
    clock = Clock()
    traces, _, _, labels = recorder(clock)
    traces.searched("caller:x", "remember a fact", ["memory__create_entities", "memory__add_observations"])
    traces.add("caller:y", "other__tool", success=True)  # another caller: not a label
    traces.add("caller:x", "memory__add_observations", success=True)
    traces.add("caller:x", "memory__read_graph", success=True)  # only the first call after the search
    assert labels == [("remember a fact", ["memory__create_entities", "memory__add_observations"], "memory__add_observations")]
    await traces.flush()


# -- open traces kept across a crash (issue 15 item 13) ----------------------------------------


class Wall(Clock):
    def __init__(self) -> None:
        self.now = 1_000_000.0


def kept(store: MemoryStore, engine: GraphRAGEngine, clock: Clock, wall: Wall) -> TraceRecorder:
    """A recorder as the gateway makes it: learning into ``engine``, open traces kept in ``store``."""

    async def record(execution: WorkflowExecution) -> None:
        await engine.update_from_execution(execution)

    return TraceRecorder(record, idle_seconds=30, clock=clock, keep=store, checkpoint_seconds=2, wall_clock=wall)


async def test_an_open_trace_is_saved_and_its_row_goes_once_it_is_recorded() -> None:
    clock, wall, store = Clock(), Wall(), MemoryStore()
    engine = GraphRAGEngine(store=store)
    traces = kept(store, engine, clock, wall)
    traces.add("caller:x", "a", success=True, started=99.0)
    traces.add("caller:x", "b", success=True, started=99.5)  # overlaps a: cut there
    clock.now = 101.0
    traces.add("caller:x", "c", success=True, started=100.5)
    traces.checkpoint()
    (body,) = store.stale_open_traces(wall.now + 1).values()
    saved = SavedTrace.model_validate_json(body).calls
    assert [(tool, started, ended) for tool, _, _, started, ended in saved] == [("a", 0, 1), ("b", 0.5, 1), ("c", 1.5, 2)]
    await traces.end("caller:x")
    assert store.stale_open_traces(wall.now + 1)  # deleted with the next checkpoint, not before
    traces.checkpoint()
    assert store.stale_open_traces(wall.now + 1) == {}
    assert engine.graph.has_edge("b", "c") and not engine.graph.has_edge("a", "b")


async def test_a_dead_processs_open_trace_is_recorded_by_the_next_once_stale_and_only_once() -> None:
    clock, wall, store = Clock(), Wall(), MemoryStore()
    engine = GraphRAGEngine(store=store)
    dead = kept(store, engine, clock, wall)
    for tool in ("a", "b", "c"):
        started = clock.now
        clock.now += 1
        dead.add("caller:x", tool, success=True, started=started)
    dead.checkpoint()
    dead.add("caller:x", "d", success=True)  # after the last checkpoint: what a crash may lose
    # ... the process dies here. Another on the same store:
    survivor = kept(store, engine, Clock(), wall)
    await survivor.recover()
    assert survivor.recovered == 0  # not stale yet: its owner may be alive
    wall.now += survivor.stale_after + 0.1
    await survivor.recover()
    await survivor.recover()  # a second sweep, or a second replica, finds nothing more to learn
    assert survivor.recovered == 1
    assert engine.graph.has_edge("a", "b") and engine.graph.has_edge("b", "c") and not engine.graph.has_edge("c", "d")
    assert engine.graph.edges["a", "b"]["observed_count"] == 1
    assert store.stale_open_traces(math.inf) == {}
    # the owner was only slow after all, and records its trace: the same workflow ids, learned once
    await dead.end("caller:x")
    assert engine.graph.edges["a", "b"]["observed_count"] == 1
    assert not engine.graph.has_edge("c", "d")  # a later call of a trace already recovered is not learned


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
def test_every_store_keeps_open_traces(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if kind == "memory":
        store: GraphStore = MemoryStore()
    elif kind == "sqlite":
        store = SQLiteStore(tmp_path / "graph.db")
    else:
        from graphrag.postgres_store import PostgresStore  # the postgres extra

        store = PostgresStore(request.getfixturevalue("pg_url"))
    try:
        store.save_open_traces({"trace-a": "[1]", "trace-b": "[2]"}, [], 100.0)
        store.save_open_traces({"trace-b": "[3]", "trace-c": "[4]"}, ["trace-a", "trace-none"], 200.0)
        assert store.stale_open_traces(150.0) == {}
        assert store.stale_open_traces(200.5) == {"trace-b": "[3]", "trace-c": "[4]"}
        assert isinstance(store, GraphStore)
    finally:
        store.close()
