"""Forgetting one tool's history and resetting the graph, at the engine and store level, on every
store: what is deleted (node, edges, second-order counts; everything on reset), what stays (the
available tools; executions on forget), the events and their ids, a restart, and another process
on the same store (SQLite file, PostgreSQL) learning of it from the log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from graphrag import GraphRAGEngine, GraphStore, MemoryStore, SQLiteStore, UnknownTool
from graphrag.store import StoredGraph

from executions import sequence

pytestmark = pytest.mark.anyio

StoreFactory = Callable[[], GraphStore]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens stores on one database: each call is another process's view of it (memory: one store)."""
    opened: list[GraphStore] = []
    if request.param == "memory":
        memory = MemoryStore()
        yield lambda: memory
        return
    if request.param == "sqlite":
        path = tmp_path / "graph.db"

        def factory() -> GraphStore:
            opened.append(SQLiteStore(path))
            return opened[-1]
    else:
        from graphrag import PostgresStore

        url = request.getfixturevalue("pg_url")

        def factory() -> GraphStore:
            opened.append(PostgresStore(url))
            return opened[-1]

    yield factory
    for store in opened:
        store.close()


async def learned(store: GraphStore) -> GraphRAGEngine:
    engine = GraphRAGEngine(store=store)
    await engine.sync_from_database()
    engine.set_server_tools("files", ["files__read", "files__write"])
    await engine.update_from_executions(
        [
            sequence(["files__read", "ext__x", "files__write"], workflow_id="w1"),
            sequence(["ext__x", "files__read", "files__write"], workflow_id="w2", success=False),
            sequence(["files__read", "files__write"], workflow_id="w3"),
        ]
    )
    return engine


def triples(stored: StoredGraph) -> set[tuple[str, str, str]]:
    return {(t.first, t.second, t.third) for t in stored.transitions}


async def test_forget_tool_deletes_its_node_edges_and_counts_everywhere(new_store: StoreFactory) -> None:
    engine = await learned(new_store())
    assert ("ext__x", "files__read", "files__write") in triples(engine.store.load())
    before = engine.graph.nodes["files__write"]["in_observed"]
    received = []
    engine.on(received.append)

    event = await engine.forget_tool("ext__x")

    assert event.type == "tool_forgotten" and event.id == engine.last_event_id and received == [event]
    assert event.data.model_dump(exclude={"timestamp"}) == {
        "tool_id": "ext__x", "server": None, "edges_removed": 3, "transitions_removed": 2,
    }
    stored = engine.store.load()
    assert "ext__x" not in stored.nodes and "ext__x" not in engine.graph
    assert {(e.source, e.target) for e in stored.edges} == set(engine.graph.edges) == {("files__read", "files__write")}
    assert triples(stored) == set() and engine.transitions == {}
    # files__write's incoming sums lost what ext__x -> files__write had added (1 observation).
    assert engine.graph.nodes["files__write"]["in_observed"] == before - 1
    assert engine.available_tools == {"files__read": "files", "files__write": "files"}  # not history
    metrics = await engine.refresh_metrics()
    assert (metrics.node_count, metrics.edge_count) == (2, 1)
    assert [s.tool_id for s in engine.suggest_next(["files__read"])] == ["files__write"]
    with pytest.raises(UnknownTool, match="unknown tool 'ext__x'"):
        await engine.forget_tool("ext__x")
    # A retried execution is still recognised (executions stay recorded): nothing re-learned.
    assert await engine.update_from_executions([sequence(["files__read", "ext__x"], workflow_id="w1")]) == [[]]

    # A restart (or another process) loads the graph without it.
    again = GraphRAGEngine(store=new_store())
    await again.sync_from_database()
    assert set(again.graph.nodes) == {"files__read", "files__write"} and again.transitions == {}
    # What forget_tool left in memory is what loading the store gives (incoming sums included).
    assert dict(again.graph.nodes(data=True)) == dict(engine.graph.nodes(data=True))
    assert again.suggest_next(["files__read"]) == engine.suggest_next(["files__read"])


async def test_reset_empties_the_graph_and_the_log_and_ids_go_on(new_store: StoreFactory) -> None:
    engine = await learned(new_store())
    last = engine.last_event_id or 0

    event = await engine.reset_graph()

    assert event.type == "graph_reset" and event.id == last + 1
    assert event.data.model_dump(exclude={"timestamp"}) == {"nodes_removed": 3, "edges_removed": 4}
    stored = engine.store.load()
    assert (stored.nodes, stored.edges, stored.transitions) == ({}, [], [])
    assert engine.graph.number_of_nodes() == 0 and engine.transitions == {}
    bounds = engine.store.bounds()
    assert (bounds.oldest_id, bounds.last_id) == (event.id, event.id)  # the history before it is gone
    assert [e.type for e in engine.store.events_after(0)] == ["graph_reset"]
    assert engine.available_tools == {"files__read": "files", "files__write": "files"}
    # The executions went too: the same workflow id is learned anew.
    (events,) = await engine.update_from_executions([sequence(["files__read", "files__write"], workflow_id="w3")])
    assert [e.type for e in events] == ["edge_created", "workflow_executed"] and events[0].id == event.id + 1
    assert (await engine.refresh_metrics()).node_count == 2


@pytest.mark.parametrize("new_store", ["sqlite", "postgres"], indirect=True)  # a MemoryStore has one process
async def test_another_process_on_the_store_follows_a_forget_and_a_reset(new_store: StoreFactory) -> None:
    server = await learned(new_store())
    admin = GraphRAGEngine(store=new_store())  # what `pml-gateway admin` does
    admin.load()
    assert "ext__x" in admin.graph
    await admin.forget_tool("ext__x")

    caught = server.store.catch_up(server.last_event_id or 0)  # type: ignore[attr-defined]
    assert caught.full and [e.type for e in caught.events] == ["tool_forgotten"]
    server.follow(caught)
    assert "ext__x" not in server.graph and server.transitions == {}
    assert set(server.graph.edges) == {("files__read", "files__write")}
    assert server.last_event_id == admin.last_event_id
    # Learning on the server after the forget: its commit catches up first, the tool is not back.
    await server.update_from_executions([sequence(["files__write", "files__read"], workflow_id="w4")])
    assert "ext__x" not in server.graph and server.graph.has_edge("files__write", "files__read")

    # The admin process is behind now; its reset still catches up first, then deletes everything.
    event = await admin.reset_graph()
    assert event.data.model_dump(exclude={"timestamp"}) == {"nodes_removed": 2, "edges_removed": 2}
    server.follow(server.store.catch_up(server.last_event_id or 0))  # type: ignore[attr-defined]
    assert server.graph.number_of_nodes() == 0 and server.last_event_id == event.id
    assert server.available_tools == {"files__read": "files", "files__write": "files"}


async def test_search_labels_keep_the_newest_per_tool_and_go_with_their_tool(new_store: StoreFactory) -> None:
    engine = await learned(new_store())
    engine.store.add_search_labels([("files__read", f"open file {i}") for i in range(4)], keep=3)
    engine.store.add_search_labels([("ext__x", "do the x"), ("files__read", "show the file")], keep=3)
    reads = [("files__read", "open file 2"), ("files__read", "open file 3")]
    # oldest first, the newest 3 of each tool; another process (or a restart) reads the same
    assert new_store().search_labels() == [*reads, ("ext__x", "do the x"), ("files__read", "show the file")]

    await engine.forget_tool("ext__x")  # learned history: forgotten with its tool
    assert new_store().search_labels() == [*reads, ("files__read", "show the file")]
    await engine.reset_graph()
    assert new_store().search_labels() == []
