"""TraceRecorder on its own: sequences cut where calls overlap, live grading, search labels."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from graphrag import WorkflowExecution
from pml_gateway.proxy.traces import TraceRecorder

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
