"""SQLiteStore: round trip through a file, ids that only grow, epoch, pruning, schema checks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from executions import sequence
from graphrag import GraphRAGEngine, MemoryStore, SQLiteStore, StoreError, StoreUnavailable, WorkflowExecution
from graphrag.sqlite_store import SCHEMA_VERSION

pytestmark = pytest.mark.anyio


def _executions() -> list[WorkflowExecution]:
    return [
        sequence(["fs__read", "text__summarize", "notes__save"]),
        sequence(["fs__read", "text__summarize"], success=False),
        WorkflowExecution.model_validate(
            {
                "workflow_id": "dag",
                "tasks": [
                    {"id": "r", "tool_id": "fs__read"},
                    {"id": "s", "tool_id": "text__summarize", "depends_on": ["r"]},
                    {"id": "k", "tool_id": "text__keywords", "depends_on": ["r"]},
                ],
            }
        ),
    ]


async def test_reopened_file_gives_back_the_same_graph(tmp_path: Path) -> None:
    path = tmp_path / "graph.db"
    engine = GraphRAGEngine(store=SQLiteStore(path))
    await engine.sync_from_database()
    for execution in _executions():
        await engine.update_from_execution(execution)
    edges = {(u, v): dict(a) for u, v, a in engine.graph.edges(data=True)}
    nodes = dict(engine.graph.nodes(data=True))
    last = engine.last_event_id
    engine.store.close()

    reopened = GraphRAGEngine(store=SQLiteStore(path))
    synced = await reopened.sync_from_database()
    assert {(u, v): dict(a) for u, v, a in reopened.graph.edges(data=True)} == edges
    assert dict(reopened.graph.nodes(data=True)) == nodes
    assert edges[("fs__read", "text__summarize")]["edge_type"] == "dependency"
    assert edges[("fs__read", "text__summarize")]["observed_count"] == 3
    assert edges[("fs__read", "text__summarize")]["failure_count"] == 1
    assert synced.data.node_count == 4 and synced.data.edge_count == 3
    assert synced.id == last + 1  # ids keep growing across restarts
    assert reopened.store.execution_count() == 3
    assert reopened.store.workflow_ids()[-1] == "dag"


async def test_events_after_replays_the_log_in_order(tmp_path: Path) -> None:
    engine = GraphRAGEngine(store=SQLiteStore(tmp_path / "g.db"))
    emitted = []
    engine.on(emitted.append)
    for execution in _executions():
        await engine.update_from_execution(execution)
    replayed = engine.store.events_after(0, limit=1000)
    assert [(e.id, e.type, e.data_json()) for e in replayed] == [(e.id, e.type, e.data_json()) for e in emitted]
    assert [e.id for e in engine.store.events_after(emitted[2].id, limit=2)] == [emitted[3].id, emitted[4].id]
    bounds = engine.store.bounds()
    assert (bounds.oldest_id, bounds.last_id) == (emitted[0].id, emitted[-1].id)


async def test_epoch_differs_between_databases(tmp_path: Path) -> None:
    a, b = SQLiteStore(tmp_path / "a.db"), SQLiteStore(tmp_path / "b.db")
    assert a.bounds().epoch != b.bounds().epoch
    assert SQLiteStore(tmp_path / "a.db").bounds().epoch == a.bounds().epoch


async def test_log_is_pruned_but_ids_never_reused(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db", max_events=500)
    engine = GraphRAGEngine(store=store)
    for i in range(1500):
        await engine.update_from_execution(sequence([f"t{i % 7}", f"t{(i + 1) % 7}"]))
    bounds = store.bounds()
    assert bounds.last_id == engine.last_event_id
    assert bounds.oldest_id is not None and bounds.oldest_id > 1
    assert bounds.last_id - bounds.oldest_id < 1500  # something was pruned
    assert store.events_after(0, limit=1)[0].id == bounds.oldest_id


@pytest.mark.parametrize("store_factory", [MemoryStore, lambda: SQLiteStore(":memory:")])
async def test_in_memory_stores_count_ids_from_one(store_factory) -> None:
    engine = GraphRAGEngine(store=store_factory())
    events = await engine.update_from_execution(sequence(["a", "b"]))
    assert [e.id for e in events] == [1, 2]
    assert [e.id for e in engine.store.events_after(1)] == [2]


async def test_memory_store_keeps_the_last_events_only() -> None:
    store = MemoryStore(max_events=10)
    engine = GraphRAGEngine(store=store)
    await engine.update_from_executions([sequence(["a", "b"]) for _ in range(20)])
    bounds = store.bounds()
    assert (bounds.oldest_id, bounds.last_id) == (31, 40)
    assert [e.id for e in store.events_after(35)] == [36, 37, 38, 39, 40]
    assert [e.id for e in store.events_after(0, limit=3)] == [31, 32, 33]


def test_newer_schema_and_foreign_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match="schema version"):
        SQLiteStore(path)

    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(StoreError, match="not a pml-gateway database"):
        SQLiteStore(foreign)

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        SQLiteStore(garbage)


async def test_failed_commit_changes_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    engine = GraphRAGEngine(store=store)
    await engine.update_from_execution(sequence(["a", "b"]))
    heard = []
    engine.on(heard.append)
    before = {(u, v): dict(a) for u, v, a in engine.graph.edges(data=True)}
    store._db.execute("CREATE TRIGGER boom BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    with pytest.raises(StoreUnavailable, match="disk says no") as refused:  # the cause, named
        await engine.update_from_execution(sequence(["a", "b", "c"]))
    assert isinstance(refused.value.__cause__, sqlite3.DatabaseError)
    assert engine.store_error is not None and "disk says no" in engine.store_error
    assert {(u, v): dict(a) for u, v, a in engine.graph.edges(data=True)} == before
    assert heard == []
    assert store.execution_count() == 1


async def test_a_version_1_database_gains_the_second_order_table_and_keeps_its_edges(tmp_path: Path) -> None:
    from graphrag.sqlite_store import _SCHEMA_V1

    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:  # a database as pml-gateway wrote it before second-order counts
        db.executescript(_SCHEMA_V1 + "INSERT INTO meta VALUES ('schema_version', '1'), ('epoch', 'e1');")
        db.execute(
            "INSERT INTO edges VALUES ('a', 'b', 'sequence', 3, 3, 0, 0.2, '2026-11-21T12:00:00+00:00')"
        )
    store = SQLiteStore(path)
    engine = GraphRAGEngine(store=store)
    await engine.sync_from_database()
    assert engine.graph.has_edge("a", "b")
    await engine.update_from_execution(WorkflowExecution(tool_ids=["x", "a", "b"]))
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION) == "2"
        assert db.execute("SELECT * FROM transitions").fetchall() == [("x", "a", "b", 1, 1)]


def test_a_commit_is_on_disk_before_it_is_acknowledged(tmp_path: Path) -> None:
    """WAL with synchronous=FULL: an acknowledged execution survives an OS crash, not only a process crash."""
    store = SQLiteStore(tmp_path / "g.db")
    try:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()
