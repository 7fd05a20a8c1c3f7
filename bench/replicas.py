"""Replicas on one PostgreSQL: throughput, cross-replica delivery latency, catch-up after a kill.

    PYTHONPATH=. .venv/bin/python bench/replicas.py [--seconds 3] [--concurrency 8]

Starts a throwaway PostgreSQL cluster (Debian's binaries, Unix socket, fsync off: the figures are
about the gateway, not the disk) and real ``pml-gateway serve`` processes on it, then prints:

0. the store path alone: 1, 2 and 3 replica PROCESSES, each an engine + ``Replica`` follower
   (no HTTP), each with 16 concurrent producers calling ``update_from_execution`` (group commit);
1. executions/s with 1, 2 and 3 replicas: ``--concurrency`` HTTP clients per replica posting
   batches of 1 and of 10 executions to ``POST /executions`` for ``--seconds``;
2. delivery latency from a write on replica A (just before the POST is sent) to an SSE client of
   replica B receiving its ``workflow_executed``; for reference, to a client of A itself, and the
   difference per sample (what replication adds: NOTIFY, B's catch-up query, B's fan-out);
3. a replica SIGKILLed during ingest and restarted: time to serve again, and until its ``/graph``
   equals the others'.

The load generator runs in this process, on the same cores as the replicas and the database.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from postgres_support import Cluster, new_cluster  # noqa: E402
from replica_support import converged, execution, replicas  # noqa: E402
from server_helpers import open_stream  # noqa: E402


# One replica without HTTP: an engine on the shared store, following the others, writing flat out.
ENGINE_REPLICA = """
import json, sys, time, anyio
from graphrag import GraphRAGEngine, PostgresStore, Replica, WorkflowExecution

async def main(url, name, start_at, seconds, producers):
    store = PostgresStore(url)
    engine = GraphRAGEngine(store=store)
    await engine.sync_from_database()
    replica = Replica(engine, store)
    done = 0
    async with anyio.create_task_group() as tasks:
        await tasks.start(replica.run)
        await anyio.sleep(max(0.0, start_at - time.time()))
        deadline = time.time() + seconds

        async def produce(p):
            nonlocal done
            i = 0
            while time.time() < deadline:
                tools = [f"s__t{(i + p) % 13}", f"s__t{(i * 7 + p) % 11}", "s__end"]
                await engine.update_from_execution(WorkflowExecution(tool_ids=tools, workflow_id=f"{name}-{p}-{i}"))
                i += 1
                done += 1

        async with anyio.create_task_group() as inner:
            for p in range(producers):
                inner.start_soon(produce, p)
        await anyio.sleep(2.0)  # let the follower apply the others' last events
        print(json.dumps({"done": done, "last_event_id": engine.last_event_id}))
        tasks.cancel_scope.cancel()
    store.close()

anyio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
"""


def store_path(cluster: Cluster, count: int, seconds: float, producers: int = 16) -> tuple[float, bool]:
    """(executions/s across ``count`` engine processes, whether all ended on the same last id)."""
    url = cluster.create_database()
    start_at = time.time() + 3.0  # after every process has imported and synced
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ENGINE_REPLICA, url, f"e{n}", str(start_at), str(seconds), str(producers)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(count)
    ]
    results = [json.loads(proc.communicate(timeout=120)[0]) for proc in procs]
    return sum(r["done"] for r in results) / seconds, len({r["last_event_id"] for r in results}) == 1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def throughput(cluster: Cluster, count: int, batch: int, seconds: float, concurrency: int) -> tuple[float, float, float]:
    """(executions/s, requests/s, p50 request ms) for ``count`` replicas under load."""
    url = cluster.create_database()
    async with replicas(url, Path(tempfile.mkdtemp()), count) as nodes:
        clients = [httpx.AsyncClient(base_url=r.url, timeout=30) for r in nodes]
        latencies: list[float] = []
        done = 0
        deadline = time.perf_counter() + seconds

        async def loop(client: httpx.AsyncClient, name: str) -> None:
            nonlocal done
            i = 0
            while time.perf_counter() < deadline:
                body = [execution(f"{name}-{i}-{j}", (f"s__t{(i + j) % 13}", f"s__t{(i * 7 + j) % 11}", "s__end")) for j in range(batch)]
                i += 1
                started = time.perf_counter()
                response = await client.post("/executions", json=body)
                latencies.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 202, response.text
                done += batch

        started = time.perf_counter()
        async with anyio.create_task_group() as tasks:
            for n, client in enumerate(clients):
                for c in range(concurrency):
                    tasks.start_soon(loop, client, f"r{n}c{c}")
        elapsed = time.perf_counter() - started
        for client in clients:
            await client.aclose()
    return done / elapsed, len(latencies) / elapsed, statistics.median(latencies)


async def delivery(cluster: Cluster, samples: int = 300, rate: float = 100.0) -> dict[str, list[float]]:
    """Milliseconds from a POST to replica A until a stream client of B (and of A) sees it."""
    url = cluster.create_database()
    async with replicas(url, Path(tempfile.mkdtemp()), 2) as (a, b):
        sent: dict[str, float] = {}
        seen: dict[str, dict[str, float]] = {"A -> client of B": {}, "A -> client of A": {}}
        async with httpx.AsyncClient(base_url=a.url, timeout=10) as ca, httpx.AsyncClient(base_url=b.url, timeout=10) as cb:

            async def watch(client: httpx.AsyncClient, into: dict[str, float], ready: anyio.Event) -> None:
                async with open_stream(client, params={"types": "workflow_executed"}) as reader:
                    await reader.next()  # connected
                    ready.set()
                    while len(into) < samples:
                        event = await reader.next()
                        if event is not None and event.event == "workflow_executed":
                            into[event.data["workflow_id"]] = time.perf_counter()

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tasks:
                    ready_b, ready_a = anyio.Event(), anyio.Event()
                    tasks.start_soon(watch, cb, seen["A -> client of B"], ready_b)
                    tasks.start_soon(watch, ca, seen["A -> client of A"], ready_a)
                    await ready_a.wait()
                    await ready_b.wait()
                    for i in range(samples):
                        wid = f"d{i}"
                        sent[wid] = time.perf_counter()
                        tasks.start_soon(lambda w=wid: ca.post("/executions", json=[execution(w, ("s__x", f"s__y{int(w[1:]) % 5}"))]))
                        await anyio.sleep(1 / rate)
    on_b, on_a = seen["A -> client of B"], seen["A -> client of A"]
    latencies = {path: [(times[w] - sent[w]) * 1000 for w in sent] for path, times in seen.items()}
    latencies["replication alone (B's client minus A's)"] = [(on_b[w] - on_a[w]) * 1000 for w in sent]
    return latencies


async def catch_up_after_kill(cluster: Cluster, seconds_down: float = 2.0) -> tuple[float, float, int]:
    """(s until the restarted replica answers, s more until its /graph equals the others', executions meanwhile)."""
    url = cluster.create_database()
    async with replicas(url, Path(tempfile.mkdtemp()), 3) as nodes:
        clients = [httpx.AsyncClient(base_url=r.url, timeout=10) for r in nodes]
        missed = 0
        stop = anyio.Event()

        async def ingest(client: httpx.AsyncClient, name: str) -> None:
            nonlocal missed
            i = 0
            while not stop.is_set():
                await client.post("/executions", json=[execution(f"{name}-{i}-{j}", ("s__a", f"s__b{(i + j) % 17}")) for j in range(10)])
                missed += 10
                i += 1

        async with anyio.create_task_group() as tasks:
            nodes[2].kill()
            missed = 0
            tasks.start_soon(ingest, clients[0], "k0")
            tasks.start_soon(ingest, clients[1], "k1")
            await anyio.sleep(seconds_down)
            stop.set()
        started = time.perf_counter()
        nodes[2].spawn()
        await nodes[2].wait_ready()
        ready = time.perf_counter()
        await converged(clients, timeout=60)
        in_step = time.perf_counter()
        for client in clients:
            await client.aclose()
    return ready - started, in_step - ready, missed


async def main(seconds: float, concurrency: int) -> None:
    cluster = new_cluster()
    try:
        print(f"## Store path: engine processes on one PostgreSQL, 16 producers each, {seconds:g} s per row\n")
        print("| replicas | executions/s (all replicas) | all replicas in step at the end |")
        print("|---:|---:|---|")
        for count in (1, 2, 3):
            rate, in_step = store_path(cluster, count, seconds)
            print(f"| {count} | {rate:,.0f} | {'yes' if in_step else 'NO'} |", flush=True)

        print(f"\n## Throughput: POST /executions, {concurrency} clients per replica, {seconds:g} s per row\n")
        print("| replicas | batch | executions/s | requests/s | p50 request ms |")
        print("|---:|---:|---:|---:|---:|")
        for batch in (1, 10):
            for count in (1, 2, 3):
                executions, requests, p50 = await throughput(cluster, count, batch, seconds, concurrency)
                print(f"| {count} | {batch} | {executions:,.0f} | {requests:,.0f} | {p50:.1f} |", flush=True)

        print("\n## Delivery latency: POST to replica A -> workflow_executed on an SSE client\n")
        print("| path | samples | p50 ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|---:|")
        for path, values in (await delivery(cluster)).items():
            print(f"| {path} | {len(values)} | {percentile(values, 0.5):.1f} | {percentile(values, 0.99):.1f} | {max(values):.1f} |", flush=True)

        ready, in_step, missed = await catch_up_after_kill(cluster)
        print("\n## A replica SIGKILLed during ingest, restarted\n")
        print("| executions recorded while it was down | process start until it answers, s | then until /graph equals the others', s |")
        print("|---:|---:|---:|")
        print(f"| {missed:,} | {ready:.2f} | {in_step:.2f} |")
    finally:
        cluster.stop()
        cluster.remove()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    options = parser.parse_args()
    anyio.run(main, options.seconds, options.concurrency)
