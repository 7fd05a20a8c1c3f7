"""The learning rule on its own: observations from an execution, and confidence movement."""

from __future__ import annotations

from datetime import datetime, timezone

from executions import sequence
from graphrag import TaskRun, WorkflowExecution
from graphrag.learning import Observation, confidence, learn, observations

NOW = datetime(2026, 11, 21, tzinfo=timezone.utc)


def test_sequence_edges_from_consecutive_tools() -> None:
    execution = sequence(["a", "b", "c"])
    assert observations(execution) == [Observation("a", "b", "sequence", True), Observation("b", "c", "sequence", True)]


def test_dependency_edges_from_depends_on_only() -> None:
    execution = WorkflowExecution(
        tasks=[
            TaskRun(id="1", tool_id="a"),
            TaskRun(id="2", tool_id="b"),
            TaskRun(id="3", tool_id="c", depends_on=["1", "2"], success=False),
        ]
    )
    # a and b ran in parallel: no a -> b edge; both feed c, which failed.
    assert observations(execution) == [Observation("a", "c", "dependency", False), Observation("b", "c", "dependency", False)]


def test_self_loops_skipped_and_repeats_counted_once() -> None:
    execution = WorkflowExecution(
        tasks=[
            TaskRun(id="1", tool_id="a"),
            TaskRun(id="2", tool_id="a"),
            TaskRun(id="3", tool_id="b"),
            TaskRun(id="4", tool_id="a", success=False),
            TaskRun(id="5", tool_id="b"),
        ]
    )
    # a->b seen twice: once a success, once after a failed a: one observation, failed.
    assert observations(execution) == [Observation("a", "b", "sequence", False), Observation("b", "a", "sequence", False)]


def test_confidence_is_in_unit_interval_and_orders_by_evidence() -> None:
    for edge_type in ("sequence", "dependency"):
        for n in range(0, 300, 7):
            for s in range(0, n + 1, 3):
                assert 0 < confidence(edge_type, s, n) <= 1
    # One lucky observation does not tie a transition seen a hundred times.
    assert confidence("sequence", 100, 100) > 10 * confidence("sequence", 1, 1)
    assert confidence("dependency", 5, 5) > confidence("sequence", 5, 5)


def test_success_raises_and_failure_lowers() -> None:
    edge = learn(None, Observation("a", "b", "sequence", True), NOW)
    assert (edge.observed_count, edge.success_count, edge.failure_count) == (1, 1, 0)
    for _ in range(20):
        up = learn(edge, Observation("a", "b", "sequence", True), NOW)
        down = learn(edge, Observation("a", "b", "sequence", False), NOW)
        assert up.confidence > edge.confidence > down.confidence
        assert (down.observed_count, down.failure_count) == (edge.observed_count + 1, edge.failure_count + 1)
        edge = up


def test_dependency_never_downgraded_but_sequence_upgraded() -> None:
    seq = learn(None, Observation("a", "b", "sequence", True), NOW)
    dep = learn(seq, Observation("a", "b", "dependency", True), NOW)
    assert dep.edge_type == "dependency"
    again = learn(dep, Observation("a", "b", "sequence", True), NOW)
    assert again.edge_type == "dependency"
    assert again.observed_count == 3
