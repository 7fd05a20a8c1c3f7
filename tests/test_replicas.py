"""Replicas on one PostgreSQL database: real processes, real sockets, one shared log.

Every replica learns from every execution any of them records, serves every event with the same
ids in the same order, agrees on ``/graph``, and exactly one of them emits ``metrics_updated`` per
window. (The failure cases are in ``test_replicas_failures.py``; processes on one SQLite file in
``test_replicas_sqlite.py``.)
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from replica_support import clients_of, common_start, quiet, converged, edges_of, execution, read_for, read_until_workflows, replicas
from server_helpers import open_stream, post_executions

pytestmark = pytest.mark.anyio


async def test_every_replica_serves_every_event_with_the_same_ids(pg_url: str, tmp_path: Path) -> None:
    async with replicas(pg_url, tmp_path, 3) as nodes, clients_of(nodes) as clients, AsyncExitStack() as stack:
        start = await common_start(clients)
        readers = [await stack.enter_async_context(open_stream(c, headers=start)) for c in clients]
        for reader in readers:
            assert (await reader.next()).event == "connected"  # type: ignore[union-attr]

        async with anyio.create_task_group() as tasks:  # spread over the replicas, concurrently
            for i in range(30):
                tools = (f"svc__t{i % 4}", f"svc__t{(i + 1) % 4}", f"svc__t{(i + 2) % 4}")
                tasks.start_soon(post_executions, clients[i % 3], [execution(f"w{i}", tools)])

        streams = [await read_until_workflows(reader, 30) for reader in readers]
        as_sent = [[(e.id, e.event, e.data) for e in stream] for stream in streams]
        assert as_sent[0] == as_sent[1] == as_sent[2]  # same events, same ids, same order, same payloads
        ids = [e.id for e in streams[0]]
        assert ids == sorted(set(ids))
        assert {e.data["workflow_id"] for e in streams[0] if e.event == "workflow_executed"} == {f"w{i}" for i in range(30)}

        graph = await converged(clients)
        assert sum(count for count, *_ in edges_of(graph).values()) == 60  # 30 executions x 2 edges, none lost or doubled

        # Exactly one metrics_updated per window across the replicas: after a quiet moment, one
        # more execution (on a replica that may or may not lead) gives ONE event on every stream.
        await quiet(clients[0])
        await post_executions(clients[1], [execution("one-more", ("svc__t0", "svc__x"))])
        windows = await read_for(readers, 2.0)
        after = [events[[(e.data or {}).get("workflow_id") for e in events].index("one-more") :] for events in windows]
        metrics = [[e.id for e in events if e.event == "metrics_updated"] for events in after]
        assert len(metrics[0]) == 1, [[e.event for e in events] for events in windows]
        assert metrics[0] == metrics[1] == metrics[2]


async def test_resume_on_another_replica_has_no_gap_and_no_duplicate(pg_url: str, tmp_path: Path) -> None:
    async with replicas(pg_url, tmp_path, 2) as nodes, clients_of(nodes) as (a, b):
        start = (await a.get("/graph")).json()["last_event_id"]

        async def ingest(first: int, count: int) -> None:
            async with anyio.create_task_group() as tasks:
                for i in range(first, first + count):
                    tasks.start_soon(post_executions, (a, b)[i % 2], [execution(f"r{i}", ("svc__a", f"svc__b{i % 3}"))])

        headers = {"Last-Event-ID": str(start)}
        async with open_stream(a, headers=headers) as on_a:
            await ingest(0, 20)
            before = await read_until_workflows(on_a, 10)  # the client goes away mid-way
        await ingest(20, 10)
        async with open_stream(b, headers={"Last-Event-ID": str(before[-1].id)}) as on_b:
            after = await read_until_workflows(on_b, 20)  # resumed on the other replica
        ids = [e.id for e in before + after]
        assert ids == list(range(start + 1, start + 1 + len(ids)))  # consecutive: no gap, no duplicate
        workflows = [e.data["workflow_id"] for e in before + after if e.event == "workflow_executed"]
        assert sorted(workflows) == sorted(f"r{i}" for i in range(30))

        # A Last-Event-ID from another history (another database, an old log) gets a reset.
        async with open_stream(b, headers={"Last-Event-ID": "42"}) as stale:
            first, second = await stale.next(), await stale.next()
            assert first is not None and first.event == "connected"
            assert second is not None and second.event == "reset" and second.data["requested_event_id"] == 42


async def test_a_hot_edge_written_from_every_replica_counts_exactly(pg_url: str, tmp_path: Path) -> None:
    async with replicas(pg_url, tmp_path, 3) as nodes, clients_of(nodes, timeout=20) as clients:
        statuses: list[int] = []

        async def post(client: httpx.AsyncClient, body: list[dict[str, Any]]) -> None:
            statuses.append((await client.post("/executions", json=body)).status_code)

        with anyio.fail_after(30):  # a deadlock would show here
            async with anyio.create_task_group() as tasks:
                for i in range(120):
                    tasks.start_soon(post, clients[i % 3], [execution(f"hot{i}", success=i % 5 != 0)])
                for i in range(0, 120, 10):  # retries of recorded executions, on another replica
                    tasks.start_soon(post, clients[(i + 1) % 3], [execution(f"hot{i}", success=i % 5 != 0)])
        assert statuses == [202] * 132
        graph = await converged(clients)
        assert edges_of(graph)[("hot__a", "hot__b")] == (120, 96, 24, "sequence")  # retries not counted twice
