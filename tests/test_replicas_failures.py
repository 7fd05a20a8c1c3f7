"""Replicas under failure: a replica SIGKILLed mid-ingest, PostgreSQL stopped mid-ingest.

What must hold: nothing acknowledged (202) is lost; the other replicas keep serving; a restarted
replica catches up to the same ``/graph``; while the database is away, writes get a clear 503
JSON error and the replicas reconnect by themselves once it is back. Every wait is bounded.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import psycopg
import pytest

from postgres_support import new_cluster
from replica_support import clients_of, converged, edges_of, execution, replicas

pytestmark = pytest.mark.anyio


class Ingest:
    """Clients posting small batches in a loop; remembers what was acknowledged and what refused."""

    def __init__(self) -> None:
        self.acked: set[str] = set()
        self.refusals: list[tuple[int, dict[str, object]]] = []
        self.stopped = anyio.Event()

    def start(self, tasks: anyio.abc.TaskGroup, clients: list[httpx.AsyncClient], prefix: str) -> None:
        for n, client in enumerate(clients):
            tasks.start_soon(self.loop, client, f"{prefix}{n}")

    async def loop(self, client: httpx.AsyncClient, prefix: str) -> None:
        i = 0
        while not self.stopped.is_set():
            batch = [execution(f"{prefix}-{i}-{j}") for j in range(3)]
            i += 1
            try:
                response = await client.post("/executions", json=batch)
            except httpx.TransportError:  # its replica was killed
                return
            if response.status_code == 202:
                self.acked.update(response.json()["workflow_ids"])
            else:
                self.refusals.append((response.status_code, response.json()))
                await anyio.sleep(0.05)


def recorded_workflows(url: str) -> set[str]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return {row[0] for row in conn.execute("SELECT workflow_id FROM pml_executions")}


async def test_a_replica_killed_mid_ingest_loses_nothing_and_catches_up(pg_url: str, tmp_path: Path) -> None:
    async with replicas(pg_url, tmp_path, 3) as nodes, clients_of(nodes) as clients:
        ingest = Ingest()
        async with anyio.create_task_group() as tasks:
            ingest.start(tasks, clients, "k")
            await anyio.sleep(1.0)
            nodes[2].kill()  # mid-ingest: requests in flight on it
            killed_at = len(ingest.acked)
            await anyio.sleep(1.0)
            ingest.stopped.set()
        assert len(ingest.acked) > killed_at  # the others kept serving
        assert ingest.refusals == []
        recorded = recorded_workflows(pg_url)
        assert ingest.acked <= recorded  # nothing acknowledged was lost

        started = time.monotonic()
        nodes[2].spawn()
        await nodes[2].wait_ready()
        graph = await converged(clients)
        print(f"killed replica back in step in {time.monotonic() - started:.2f}s (process start included)")
        observed, successes, failures, _ = edges_of(graph)[("hot__a", "hot__b")]
        assert observed == successes == len(recorded) and failures == 0  # every execution once, none twice


async def test_postgres_stopped_mid_ingest(tmp_path: Path) -> None:
    cluster = new_cluster(fsync=True)  # durability is the point here
    try:
        url = cluster.create_database()
        async with replicas(url, tmp_path, 2) as nodes, clients_of(nodes, timeout=20) as clients:
            ingest = Ingest()
            async with anyio.create_task_group() as tasks:
                ingest.start(tasks, clients, "p")
                await anyio.sleep(0.8)
                cluster.stop("immediate")  # a crash of the database server, mid-commit
                before_restart = len(ingest.acked)
                await anyio.sleep(1.0)
                assert ingest.refusals, "writes went on without a database"
                cluster.start()
                with anyio.fail_after(20):  # the replicas reconnect by themselves
                    while len(ingest.acked) <= before_restart + 10:
                        await anyio.sleep(0.05)
                ingest.stopped.set()
            statuses = {status for status, _ in ingest.refusals}
            assert statuses == {503}
            assert all("Store unavailable" in str(body["error"]) for _, body in ingest.refusals)
            recorded = recorded_workflows(url)
            assert ingest.acked <= recorded  # every acknowledged execution survived the crash
            graph = await converged(clients, timeout=15)
            assert edges_of(graph)[("hot__a", "hot__b")][0] == len(recorded)
    finally:
        cluster.stop()
        cluster.remove()
