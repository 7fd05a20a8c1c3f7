"""The shared stores themselves, in one process: commit order, epoch, idempotent ingest, catch-up, leader lock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import anyio
import psycopg
import pytest

from graphrag import GraphRAGEngine, PostgresStore, Replica, SQLiteStore
from graphrag.events import WorkflowExecutedData
from graphrag.postgres_store import LEADER_LOCK
from graphrag.store import ExecutionRecord

from executions import sequence

pytestmark = pytest.mark.anyio


def edge_counts(engine: GraphRAGEngine) -> dict[tuple[str, str], tuple[int, int, int]]:
    return {
        key: (attrs["observed_count"], attrs["success_count"], attrs["failure_count"])
        for key, attrs in engine.graph.edges.items()
    }


def test_ids_follow_commit_order_under_concurrent_writers(pg_url: str) -> None:
    """A reader polling "after the last id it saw" misses nothing while 4 processes' worth of stores write."""
    writers = [PostgresStore(pg_url) for _ in range(4)]
    reader = PostgresStore(pg_url)
    start = reader.bounds().last_id
    assert start is not None and start > time.time_ns() // 1000 - 600_000_000  # a new log starts at now, in µs
    done = threading.Event()
    seen: list[int] = []

    def write(store: PostgresStore, n: int) -> None:
        for i in range(60):
            payload = WorkflowExecutedData(workflow_id=f"w{n}-{i}", tool_ids=["a"], success=True, execution_time_ms=1)
            store.record_executions([ExecutionRecord(sequence(["a"], workflow_id=f"w{n}-{i}"), {}, (), [payload])])

    def read() -> None:
        last = start
        while True:
            finished = done.is_set()
            events = reader.events_after(last, 10_000)
            seen.extend(e.id for e in events)  # type: ignore[misc]
            last = events[-1].id if events else last
            if finished and not events:
                return

    threads = [threading.Thread(target=write, args=(store, n)) for n, store in enumerate(writers)]
    poller = threading.Thread(target=read)
    poller.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    done.set()
    poller.join(timeout=60)
    assert seen == list(range(start + 1, start + 1 + 240))  # every event, once, in order: none skipped
    for store in (*writers, reader):
        store.close()


async def test_engines_on_one_database_learn_from_each_other_and_ignore_retries(pg_url: str) -> None:
    a, b = GraphRAGEngine(store=PostgresStore(pg_url)), GraphRAGEngine(store=PostgresStore(pg_url))
    await a.sync_from_database()
    await b.sync_from_database()
    await a.update_from_execution(sequence(["x__a", "x__b"], workflow_id="w1"))
    # B has not followed yet: its commit catches up first, so it learns from the committed graph.
    events = await b.update_from_execution(sequence(["x__a", "x__b"], workflow_id="w2", success=False))
    assert [e.type for e in events] == ["edge_updated", "workflow_executed"]
    assert edge_counts(b) == {("x__a", "x__b"): (2, 1, 1)}
    assert await b.update_from_execution(sequence(["x__a", "x__b"], workflow_id="w1")) == []  # a retry
    a.follow(a.store.catch_up(a.last_event_id or 0))  # type: ignore[attr-defined]
    assert edge_counts(a) == edge_counts(b) == {("x__a", "x__b"): (2, 1, 1)}
    assert a.last_event_id == b.last_event_id
    assert a.store.execution_count() == 2  # type: ignore[attr-defined]
    a.store.close()
    b.store.close()


async def test_the_leader_lock_moves_when_its_connection_dies(pg_url: str) -> None:
    stores = [PostgresStore(pg_url), PostgresStore(pg_url)]
    replicas = []
    for store in stores:
        engine = GraphRAGEngine(store=store)
        await engine.sync_from_database()
        replicas.append(Replica(engine, store))

    def leaders() -> list[Replica]:
        return [r for r in replicas if r.leader]

    with anyio.fail_after(15):
        async with anyio.create_task_group() as tasks:
            scopes = []
            for replica in replicas:
                scope = anyio.CancelScope()
                scopes.append(scope)

                async def run(replica: Replica = replica, scope: anyio.CancelScope = scope, *, task_status: anyio.abc.TaskStatus[None]) -> None:
                    with scope:
                        await replica.run(task_status=task_status)

                await tasks.start(run)
            (leader,) = leaders()
            assert leader.engine.emits_metrics and sum(r.engine.emits_metrics for r in replicas) == 1

            # The server drops the leader's connection: the lock is free, one replica takes it again.
            with psycopg.connect(pg_url, autocommit=True) as conn:
                killed = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND ((classid::bigint << 32) | objid::bigint) = %s",
                    (LEADER_LOCK,),
                ).fetchall()
            assert killed == [(True,)]
            await anyio.sleep(1.5)
            assert len(leaders()) == 1

            # The leading process goes away (its connection with it): the other one takes over.
            (leader,) = leaders()
            scopes[replicas.index(leader)].cancel()
            other = next(r for r in replicas if r is not leader)
            while not other.leader:
                await anyio.sleep(0.05)
            tasks.cancel_scope.cancel()
    for store in stores:
        store.close()


async def test_two_stores_on_one_sqlite_file_follow_each_other(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    a, b = GraphRAGEngine(store=SQLiteStore(db)), GraphRAGEngine(store=SQLiteStore(db))
    await a.sync_from_database()
    await b.sync_from_database()
    first = await a.update_from_execution(sequence(["x__a", "x__b"], workflow_id="w1"))
    second = await b.update_from_execution(sequence(["x__a", "x__b"], workflow_id="w2"))
    assert second[0].type == "edge_updated" and second[0].id == first[-1].id + 1  # commit order across connections
    a.follow(a.store.catch_up(a.last_event_id or 0))  # type: ignore[attr-defined]
    assert edge_counts(a) == edge_counts(b) == {("x__a", "x__b"): (2, 2, 0)}
    # One leader per file; it is released when its store closes.
    assert a.store.try_lead() and not b.store.try_lead()  # type: ignore[attr-defined]
    a.store.close()
    assert b.store.try_lead()  # type: ignore[attr-defined]
    b.store.close()


async def test_a_replica_behind_the_pruned_log_reloads_the_graph(pg_url: str) -> None:
    a = GraphRAGEngine(store=PostgresStore(pg_url, max_events=100))
    b = GraphRAGEngine(store=PostgresStore(pg_url, max_events=100))
    await a.sync_from_database()
    await b.sync_from_database()
    await a.update_from_executions(
        [sequence(["x__a", f"x__t{i % 7}"], workflow_id=f"w{i}") for i in range(600)]
    )
    bounds = a.store.bounds()
    assert bounds.oldest_id is not None and bounds.oldest_id > (b.last_event_id or 0) + 1  # B's next id is gone
    caught = b.store.catch_up(b.last_event_id or 0)  # type: ignore[attr-defined]
    assert caught.full
    b.follow(caught)
    assert edge_counts(b) == edge_counts(a) and b.last_event_id == a.last_event_id
    a.store.close()
    b.store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One store, opened by several engines as separate processes would (own connections)."""
    if request.param == "sqlite":
        return str(tmp_path / "shared.db")
    return str(request.getfixturevalue("pg_url"))


def open_shared(db: str) -> SQLiteStore | PostgresStore:
    return PostgresStore(db) if db.startswith("postgresql://") else SQLiteStore(db)


async def test_transitions_and_available_tools_reach_the_other_replicas(shared_db: str) -> None:
    """Second-order counts and tool_added / tool_removed go through the one write path and the log:
    another replica following it has the same transitions and the same available tools."""
    a, b = GraphRAGEngine(store=open_shared(shared_db)), GraphRAGEngine(store=open_shared(shared_db))
    for engine in (a, b):
        await engine.sync_from_database()
    seen_by_b: list[str] = []
    b.on(lambda event: seen_by_b.append(event.type))

    await a.update_from_execution(sequence(["x", "y", "z"], workflow_id="w1"))
    added = a.set_server_tools("srv", ["srv_t1", "srv_t2"])
    assert [e.type for e in added] == ["tool_added", "tool_added"]

    b.follow(b.store.catch_up(b.last_event_id or 0))  # type: ignore[attr-defined]
    assert "tool_added" in seen_by_b and "workflow_executed" in seen_by_b
    assert b.transitions[("x", "y")]["z"].observed_count == 1
    assert b.available_tools == {"srv_t1": "srv", "srv_t2": "srv"}
    assert b.set_server_tools("srv", ["srv_t1", "srv_t2"]) == []  # nothing new: it followed

    # B writes without A having followed: A's next write catches up under the lock first.
    await b.update_from_execution(sequence(["x", "y", "z"], workflow_id="w2", success=False))
    removed = b.set_server_tools("srv", ["srv_t1"])
    assert [(e.type, e.data.tool_id) for e in removed] == [("tool_removed", "srv_t2")]  # type: ignore[attr-defined]
    assert a.set_server_tools("srv", ["srv_t1"]) == []  # A's stale view was caught up inside the commit
    assert a.available_tools == {"srv_t1": "srv"}
    await a.update_from_execution(sequence(["x", "y", "z"], workflow_id="w3"))
    b.follow(b.store.catch_up(b.last_event_id or 0))  # type: ignore[attr-defined]
    for engine in (a, b):
        state = engine.transitions[("x", "y")]["z"]
        assert (state.observed_count, state.success_count) == (3, 2)
        assert engine.available_tools == {"srv_t1": "srv"}
    assert a.last_event_id == b.last_event_id
    assert a.suggest_next(["x", "y"])[0].tool_id == b.suggest_next(["x", "y"])[0].tool_id == "z"

    c = GraphRAGEngine(store=open_shared(shared_db))  # a replica starting later loads the same state
    await c.sync_from_database()
    assert c.transitions[("x", "y")]["z"] == a.transitions[("x", "y")]["z"]
    assert c.available_tools == {"srv_t1": "srv"}
    for engine in (a, b, c):
        engine.store.close()
