"""The engine's side of ``tool_added`` / ``tool_removed`` and ``workflow_progress`` (graphrag only,
no gateway): only differences are reported, in the crash-safe order, durable across a reopen,
with the server as given; live events are never stored."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from graphrag import GraphEvent, GraphRAGEngine, SQLiteStore, WorkflowExecution
from graphrag.events import GraphSyncedData, WorkflowProgressData
from graphrag.store import CatchUp, MemoryStore, Plan


def summary(events: list[GraphEvent]) -> list[tuple[int | None, str, str, str | None]]:
    return [(e.id, e.type, e.data.tool_id, getattr(e.data, "reason", None)) for e in events]  # type: ignore[attr-defined]


@pytest.mark.parametrize("durable", [True, False], ids=["sqlite", "memory"])
def test_only_differences_are_reported_and_survive_a_reopen(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "graph.db"
    engine = GraphRAGEngine(SQLiteStore(path) if durable else MemoryStore())
    heard: list[GraphEvent] = []
    engine.on(heard.append)
    # A server whose name has the gateway's separator in it: the server is the caller's word.
    added = engine.set_server_tools("a__b", ["a__b__read", "a__b__write"])
    assert summary(added) == [(1, "tool_added", "a__b__read", None), (2, "tool_added", "a__b__write", None)]
    assert {e.data.server for e in added} == {"a__b"}  # type: ignore[attr-defined]
    assert engine.set_server_tools("a__b", ["a__b__write", "a__b__read"]) == []  # same set: nothing
    changed = engine.set_server_tools("a__b", ["a__b__read", "a__b__list"])
    assert summary(changed) == [(3, "tool_removed", "a__b__write", "removed"), (4, "tool_added", "a__b__list", None)]
    gone = engine.set_server_tools("a__b", [], reason="disconnected")
    assert summary(gone) == [(5, "tool_removed", "a__b__list", "disconnected"), (6, "tool_removed", "a__b__read", "disconnected")]
    back = engine.set_server_tools("a__b", ["a__b__read"])
    assert heard == added + changed + gone + back  # emitted once each, in order
    assert engine.available_tools == {"a__b__read": "a__b"} and engine.tool_server("a__b__read") == "a__b"
    assert summary(engine.store.events_after(0)) == summary(heard)  # all in the log, same ids
    if durable:
        engine.store.close()
        reopened = GraphRAGEngine(SQLiteStore(path))
        assert reopened.available_tools == {"a__b__read": "a__b"}
        assert reopened.set_server_tools("a__b", ["a__b__read"]) == []  # a restart with nothing new
        assert reopened.store.bounds().last_id == 7
        reopened.store.close()


class RefusingStore(MemoryStore):
    """Plans the write (the engine computes its events), then the transaction fails."""

    def commit(self, executions: Sequence[WorkflowExecution], plan: Plan, *, after_id: int | None = None) -> Any:
        plan(CatchUp(), [True] * len(executions))
        raise OSError("disk full")


def test_a_refused_commit_changes_and_emits_nothing() -> None:
    engine = GraphRAGEngine(RefusingStore())
    heard: list[GraphEvent] = []
    engine.on(heard.append)
    with pytest.raises(OSError):
        engine.set_server_tools("files", ["files__read"])
    assert heard == [] and engine.available_tools == {}


def test_live_events_reach_listeners_without_an_id_and_are_not_stored() -> None:
    engine = GraphRAGEngine()
    heard: list[GraphEvent] = []
    engine.on(heard.append)
    progress = WorkflowProgressData(workflow_id="w", task_id="a", tool_id="x__y", status="started", completed=0, total=1)
    event = engine.emit_live(progress)
    assert heard == [event] and event.id is None and engine.last_event_id is None
    assert engine.store.events_after(0) == []
    with pytest.raises(ValueError, match="graph_synced"):
        engine.emit_live(GraphSyncedData(node_count=0, edge_count=0, sync_duration_ms=0))
