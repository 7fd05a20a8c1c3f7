"""Engine benchmark: ingest rate, metrics recompute, event-loop stalls, learning quality.

    .venv/bin/python bench/engine.py              # everything, about 2 minutes on 2 cores
    .venv/bin/python bench/engine.py --quick      # small sizes, a sanity run in seconds
    .venv/bin/python bench/engine.py --only ingest,quality

Prints markdown tables (pasted into bench/README.md, section "Engine"). Sections:

(a) ingest: executions of 5 tools (walks over the TaskBench tool graphs) into a SQLite file and
    into memory, each event serialised to its SSE bytes by a listener, as the event hub does: one
    producer awaiting each, one producer keeping 16 in flight, 16 producers, batches of 50; with
    the process's CPU time per execution, then (a'') what one durable commit (fsync) costs here.
    The collector runs with the thresholds the gateway serves with.
(b) metrics: recompute time (median of several runs, cold and warm) and peak memory on synthetic
    graphs, per part, against networkx's pagerank and Louvain on the same graph.
(c) stalls: the longest event-loop lag (a 1 ms ticker) while a recompute runs in the background.
(d) learning quality: how well suggest_next ranks next tools against the simulation's true model
    (the oracle), a bare success counter, the plain ratio (s+1)/(n+2) and the edge confidence,
    in a default, a harsh (many flaky tools) and a second-order scenario.
(e) on-loop: what runs on the event loop at 10k / 100k, ``GET /graph``'s longest loop stall included.
(f) second-order: what counting three-tool paths costs the learning step.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import networkx as nx
import numpy as np

from graphrag import GraphEvent, GraphRAGEngine, MemoryStore, SQLiteStore, WorkflowExecution
from graphrag.communities import PROCESS_THRESHOLD_EDGES, igraph_available
from graphrag.graph_arrays import GraphArrays
from graphrag.metrics import DAMPING, LOUVAIN_SEED, MetricsComputer

TASKBENCH = Path(os.environ.get("PML_TASKBENCH", Path(__file__).resolve().parents[2] / "shared" / "data" / "taskbench"))


# -- output -------------------------------------------------------------------------------------
def table(title: str, header: Sequence[str], rows: Iterable[Sequence[object]], note: str = "") -> None:
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print(f"\n**{title}**\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    if note:
        print(f"\n{note}")
    sys.stdout.flush()


def size_label(nodes: int, edges: int) -> str:
    def short(value: int) -> str:
        return f"{value / 1e6:g}M" if value >= 1_000_000 else f"{value / 1000:g}k"

    return f"{short(nodes)} / {short(edges)}"


def ms(seconds: float) -> str:
    if seconds < 0.001:
        return f"{seconds * 1000:.2f} ms"
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def mb(size: float) -> str:
    return f"{size / 2**20:.0f} MB"


def median_time(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# -- TaskBench walks ----------------------------------------------------------------------------
def tool_id(prefix: str, name: str) -> str:
    return f"{prefix}__" + re.sub(r"[^A-Za-z0-9_-]", "_", name)


@dataclass
class ToolGraph:
    name: str
    tools: list[str]
    successors: dict[str, list[str]]


def taskbench_graphs() -> list[ToolGraph]:
    graphs = []
    for path, prefix in (("huggingface_graph.json", "hf"), ("multimedia_graph.json", "mm")):
        data = json.loads((TASKBENCH / path).read_text())
        tools = [tool_id(prefix, node["id"]) for node in data["nodes"]]
        successors: dict[str, list[str]] = {t: [] for t in tools}
        for link in data["links"]:
            source, target = tool_id(prefix, link["source"]), tool_id(prefix, link["target"])
            if source != target and target not in successors[source]:
                successors[source].append(target)
        graphs.append(ToolGraph(path.removesuffix("_graph.json"), tools, successors))
    return graphs


def walk(graph: ToolGraph, rng: random.Random, length: int = 5) -> list[str]:
    current = rng.choice(graph.tools)
    path = [current]
    while len(path) < length:
        options = graph.successors[current]
        current = rng.choice(options) if options else rng.choice(graph.tools)
        path.append(current)
    return path


# -- (a) ingest ---------------------------------------------------------------------------------
def sse_frame(event: GraphEvent) -> bytes:
    # What the hub does once per event: the one wire module's encoding.
    from pml_gateway.events.wire import encode_event

    return encode_event(event).sse


def gateway_gc() -> None:
    """The collector's thresholds the gateway serves with (``pml_gateway.server``): what ships."""
    from pml_gateway.server import GC_THRESHOLDS

    gc.set_threshold(*GC_THRESHOLDS)


def bench_ingest(count: int) -> None:
    previous_gc = gc.get_threshold()
    gateway_gc()
    graphs = taskbench_graphs()
    rng = random.Random(1)
    flaky = {t for g in graphs for t in g.tools if rng.random() < 0.2}
    bodies = []
    for i in range(count + 500):
        graph = graphs[i % len(graphs)]
        path = walk(graph, rng)
        tasks = [{"id": f"t{j}", "tool_id": t, "success": rng.random() > (0.4 if t in flaky else 0.05)} for j, t in enumerate(path)]
        bodies.append({"workflow_id": f"wf-{i}", "tasks": tasks, "execution_time_ms": rng.uniform(5, 500)})
    started = time.perf_counter()
    executions = [WorkflowExecution.model_validate(body) for body in bodies]
    validate_us = (time.perf_counter() - started) / len(bodies) * 1e6
    warmup, timed = executions[:500], executions[500:]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, make_store in (
            ("SQLiteStore (file, WAL)", lambda: SQLiteStore(Path(tmp) / "ingest.db")),
            ("MemoryStore", MemoryStore),
        ):
            for mode in ("one by one", "one producer, 16 in flight", "16 concurrent producers", "batches of 50"):
                store = make_store()
                engine = GraphRAGEngine(store=store)
                frames: list[bytes] = []
                sent = [0]

                def listener(event: GraphEvent) -> None:
                    frames.append(sse_frame(event))
                    sent[0] += 1
                    if len(frames) > 10_000:
                        frames.clear()

                engine.on(listener)
                latencies: list[float] = []

                async def run() -> float:
                    await engine.sync_from_database()  # as the gateway starts (then gc.freeze)
                    for execution in warmup:
                        await engine.update_from_execution(execution)
                    gc.collect()
                    sent[0] = 0
                    cpu[0] = time.process_time()
                    begin = time.perf_counter()
                    if mode == "one by one":
                        for execution in timed:
                            t0 = time.perf_counter()
                            await engine.update_from_execution(execution)
                            latencies.append(time.perf_counter() - t0)
                    elif mode == "one producer, 16 in flight":
                        # One client that does not wait for each answer before sending the next
                        # (pipelined, as over HTTP/2): up to 16 executions submitted, not awaited.
                        window = anyio.Semaphore(16)

                        async def submit(execution: WorkflowExecution, t0: float) -> None:
                            await engine.update_from_execution(execution)
                            latencies.append(time.perf_counter() - t0)
                            window.release()

                        async with anyio.create_task_group() as inflight:
                            for execution in timed:
                                await window.acquire()
                                inflight.start_soon(submit, execution, time.perf_counter())
                    elif mode == "16 concurrent producers":
                        # As 16 clients posting at once: the engine's group commit batches them.
                        async def producer(share: list[WorkflowExecution]) -> None:
                            for execution in share:
                                t0 = time.perf_counter()
                                await engine.update_from_execution(execution)
                                latencies.append(time.perf_counter() - t0)

                        async with anyio.create_task_group() as producers:
                            for k in range(16):
                                producers.start_soon(producer, timed[k::16])
                    else:
                        for i in range(0, len(timed), 50):
                            batch = timed[i : i + 50]
                            t0 = time.perf_counter()
                            await engine.update_from_executions(batch)
                            latencies.append(time.perf_counter() - t0)
                    elapsed = time.perf_counter() - begin
                    cpu[0] = time.process_time() - cpu[0]
                    return elapsed

                cpu = [0.0]
                elapsed = anyio.run(run)
                events = sent[0]
                lat = np.array(latencies) * 1e6
                unit = " (per batch)" if mode.startswith("batches") else ""
                rows.append(
                    [
                        label,
                        mode,
                        f"{len(timed) / elapsed:,.0f}",
                        f"{events / elapsed:,.0f}",
                        f"{np.percentile(lat, 50):.0f} µs{unit}",
                        f"{np.percentile(lat, 99):.0f} µs{unit}",
                        f"{cpu[0] / len(timed) * 1e6:.0f} µs",
                    ]
                )
                store.close()
                if isinstance(store, SQLiteStore):
                    for suffix in ("", "-wal", "-shm"):
                        Path(str(store.path) + suffix).unlink(missing_ok=True)
    table(
        f"(a) Ingest: {len(timed):,} executions of 5 tools (TaskBench walks), every event serialised to SSE bytes",
        ["store", "mode", "executions/s", "events/s", "p50 latency", "p99 latency", "CPU per execution"],
        rows,
        f"Goal: >= 5,000 executions/s into the file store. Validating the input (pydantic, full form) "
        f"costs another {validate_us:.0f} µs per execution, not included above. "
        f"Warm-up: 500 executions first. CPU per execution: this process's CPU time (time.process_time) "
        f"over the timed executions, which a busy machine moves far less than the rates. "
        f"The collector runs with the gateway's thresholds {gc.get_threshold()} (pml_gateway.server).",
    )
    gc.set_threshold(*previous_gc)
    fsync_cost(Path(tempfile.gettempdir()))


def ingest_only(count: int, producers: int) -> None:
    """Ingest ``count`` executions into a SQLite file and print nothing: for instruction counts.

    ``valgrind --tool=callgrind`` of this with two counts; the difference of the totals over the
    difference of the counts is the instructions per execution, start-up excluded, exact however
    busy the machine is.
    """
    gateway_gc()
    graphs = taskbench_graphs()
    rng = random.Random(1)
    executions = []
    for i in range(count):
        path = walk(graphs[i % len(graphs)], rng)
        tasks = [{"id": f"t{j}", "tool_id": t, "success": rng.random() > 0.1} for j, t in enumerate(path)]
        executions.append(WorkflowExecution.model_validate({"workflow_id": f"wf-{i}", "tasks": tasks, "execution_time_ms": 5.0}))
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "ingest.db")
        engine = GraphRAGEngine(store=store)
        engine.on(sse_frame)

        async def run() -> None:
            await engine.sync_from_database()  # as the gateway starts

            async def producer(share: list[WorkflowExecution]) -> None:
                for execution in share:
                    await engine.update_from_execution(execution)

            async with anyio.create_task_group() as group:
                for k in range(producers):
                    group.start_soon(producer, executions[k::producers])

        anyio.run(run)
        store.close()


def fsync_cost(directory: Path, rounds: int = 2_000) -> None:
    """What one durable commit costs on this disk, next to the ingest table: the floor of a
    producer that awaits each execution (every commit waits for its fsync)."""
    rows = []
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        handle = os.open(Path(tmp) / "f", os.O_RDWR | os.O_CREAT)
        times = []
        for _ in range(rounds):
            os.write(handle, b"x" * 4096)
            t0 = time.perf_counter()
            os.fsync(handle)
            times.append(time.perf_counter() - t0)
        os.close(handle)
        rows.append(["os.fsync after a 4 KB write", f"{statistics.median(times) * 1e6:.0f} µs"])
        import sqlite3

        for sync in ("NORMAL", "FULL"):
            db = sqlite3.connect(Path(tmp) / f"{sync}.db", isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={sync}")
            db.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT INTO t (b) VALUES (?)", ("y" * 300,))
                db.execute("COMMIT")
                times.append(time.perf_counter() - t0)
            db.close()
            rows.append([f"SQLite WAL, one-row transaction, synchronous={sync}", f"{statistics.median(times) * 1e6:.0f} µs"])
    table("(a'') The cost of one durable commit on this disk (median)", ["operation", "time"], rows)


# -- synthetic graphs ---------------------------------------------------------------------------
def synthetic_graph(nodes: int, edges: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Power-law-ish tool graph: popularity ~ rank^-0.7; tools in servers of 100; 70% of edges
    stay inside the source's server. Unique (src, dst) pairs, no self-loops, weights in (0.05, 1)."""
    rng = np.random.default_rng(seed)
    popularity = np.arange(1, nodes + 1, dtype=np.float64) ** -0.7
    rng.shuffle(popularity)
    p = popularity / popularity.sum()
    server = 100
    keys = np.empty(0, dtype=np.int64)
    while keys.shape[0] < edges:
        k = int((edges - keys.shape[0]) * 1.6) + 1000
        src = rng.choice(nodes, size=k, p=p)
        local = np.minimum((src // server) * server + rng.integers(0, server, size=k), nodes - 1)
        dst = np.where(rng.random(k) < 0.7, local, rng.choice(nodes, size=k, p=p))
        fresh = (src.astype(np.int64) * nodes + dst)[src != dst]
        merged = np.concatenate((keys, fresh))
        _, first = np.unique(merged, return_index=True)
        keys = merged[np.sort(first)]
    keys = keys[:edges]
    src, dst = (keys // nodes).astype(np.int32), (keys % nodes).astype(np.int32)
    weight = rng.uniform(0.05, 1.0, size=edges)
    names = [f"s{i // server}__tool{i}" for i in range(nodes)]
    return names, src, dst, weight


def perturb(arrays: GraphArrays, rng: np.random.Generator, updates: int = 1000, new_edges: int = 50) -> None:
    """A window's worth of learning: weights of known edges move, a few new edges appear."""
    snap = arrays.snapshot()
    names = snap.nodes
    for position in rng.integers(0, snap.edge_count, size=updates).tolist():
        arrays.set_edge(names[int(snap.src[position])], names[int(snap.dst[position])], float(rng.uniform(0.05, 1.0)))
    added = 0
    while added < new_edges:
        a, b = rng.integers(0, len(names), size=2).tolist()
        if a != b:
            before = arrays.edge_count
            arrays.set_edge(names[a], names[b], float(rng.uniform(0.05, 1.0)))
            added += arrays.edge_count > before


def networkx_graph(names: list[str], src: np.ndarray, dst: np.ndarray, weight: np.ndarray) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(names)
    graph.add_weighted_edges_from(
        zip([names[i] for i in src.tolist()], [names[i] for i in dst.tolist()], weight.tolist()), weight="confidence"
    )
    return graph


def child_peak_rss(computer: MetricsComputer) -> int | None:
    worker = computer._worker
    if worker is None or worker.pid is None:
        return None
    try:
        for line in Path(f"/proc/{worker.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# -- (b) metrics --------------------------------------------------------------------------------
def bench_metrics(sizes: Sequence[tuple[int, int]], nx_louvain_limit: int) -> None:
    rows = []
    memory_rows = []
    for nodes, edges in sizes:
        names, src, dst, weight = synthetic_graph(nodes, edges)
        label = size_label(nodes, edges)
        big = edges >= 1_000_000
        cold_runs, warm_runs = (3, 5) if big else (5, 7)

        # Cold: a fresh computer on a graph it has never seen (worker process already running).
        def fresh() -> tuple[MetricsComputer, GraphArrays]:
            computer = MetricsComputer()
            if edges > PROCESS_THRESHOLD_EDGES:
                computer.start_worker()
            return computer, GraphArrays.from_edges(names, src, dst, weight)

        worker_start = []
        cold = {"pagerank": [], "communities": [], "total": []}
        for _ in range(cold_runs):
            started = time.perf_counter()
            computer, arrays = fresh()
            worker_start.append(time.perf_counter() - started)
            snapshot = arrays.snapshot()
            t0 = time.perf_counter()
            computer.pagerank(snapshot)
            t1 = time.perf_counter()
            computer.community_labels(snapshot)
            t2 = time.perf_counter()
            cold["pagerank"].append(t1 - t0)
            cold["communities"].append(t2 - t1)
            computer.close()
            computer, arrays = fresh()
            snapshot = arrays.snapshot()
            t0 = time.perf_counter()
            computer.compute(snapshot)
            cold["total"].append(time.perf_counter() - t0)
            computer.close()

        # Warm: the same computer after a window of changes (1000 weight updates, 50 new edges).
        computer, arrays = fresh()
        computer.compute(arrays.snapshot())
        warm_in_process = edges + 100 * warm_runs > PROCESS_THRESHOLD_EDGES  # the warm runs add edges
        if warm_in_process:
            computer.start_worker()  # as for cold runs, its start-up is reported separately
        rng = np.random.default_rng(7)
        warm = {"pagerank": [], "communities": [], "total": []}
        iterations = []
        for _ in range(warm_runs):
            perturb(arrays, rng)
            snapshot = arrays.snapshot()
            t0 = time.perf_counter()
            computer.pagerank(snapshot)
            t1 = time.perf_counter()
            iterations.append(computer.last_pagerank_iterations)
            computer.community_labels(snapshot)
            t2 = time.perf_counter()
            warm["pagerank"].append(t1 - t0)
            warm["communities"].append(t2 - t1)
            perturb(arrays, rng)
            snapshot = arrays.snapshot()
            t0 = time.perf_counter()
            computer.compute(snapshot)
            warm["total"].append(time.perf_counter() - t0)
        in_process = edges > PROCESS_THRESHOLD_EDGES
        computer.close()

        # Peak memory of one cold compute in this process (numpy and Python), and the child's.
        gc.collect()
        tracemalloc.start()
        computer, arrays = fresh()
        mirror = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        computer.compute(arrays.snapshot())
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        child = child_peak_rss(computer)
        computer.close()
        del arrays
        memory_rows.append(
            [label, mb(mirror), mb(peak), mb(child) if child else "(in-thread)", f"{statistics.median(worker_start) * 1000:.0f} ms" if in_process else "-"]
        )

        # networkx on the same graph.
        graph = networkx_graph(names, src, dst, weight)
        nx_pr = median_time(lambda: nx.pagerank(graph, alpha=DAMPING, weight="confidence"), 1 if big else 3)
        if edges <= nx_louvain_limit:
            undirected = nx.Graph()
            undirected.add_nodes_from(graph.nodes)
            for a, b, w in graph.edges(data="confidence"):
                undirected.add_edge(a, b, weight=undirected[a][b]["weight"] + w if undirected.has_edge(a, b) else w)
            nx_lv = median_time(
                lambda: nx.community.louvain_communities(undirected, weight="weight", seed=LOUVAIN_SEED), 1 if edges >= 100_000 else 3
            )
            del undirected
            nx_lv_cell = ms(nx_lv)
        else:
            nx_lv = math.nan
            nx_lv_cell = "skipped (> 60 s)"
        del graph
        gc.collect()

        med = {k: statistics.median(v) for k, v in cold.items()}
        wmed = {k: statistics.median(v) for k, v in warm.items()}
        rows.append([label, "pagerank", ms(med["pagerank"]), ms(wmed["pagerank"]) + f" ({statistics.median(iterations):.0f} it.)", ms(nx_pr), f"{nx_pr / wmed['pagerank']:.0f}x"])
        rows.append(
            [label, "communities" + (" (worker process)" if in_process else " (thread; warm: worker)" if warm_in_process else " (thread)"),
             ms(med["communities"]), ms(wmed["communities"]), nx_lv_cell,
             "-" if math.isnan(nx_lv) else f"{nx_lv / wmed['communities']:.0f}x"]
        )
        rows.append([label, "total (compute)", ms(med["total"]), ms(wmed["total"]), "-" if math.isnan(nx_lv) else ms(nx_pr + nx_lv), "-" if math.isnan(nx_lv) else f"{(nx_pr + nx_lv) / wmed['total']:.0f}x"])
    table(
        "(b) Metrics recompute (median; cold = fresh computer on a new graph, warm = after 1000 weight updates + 50 new edges)",
        ["nodes / edges", "part", "ours cold", "ours warm", "networkx", "speed-up (warm)"],
        rows,
        f"Community backend: {'igraph Louvain (C)' if igraph_available() else 'networkx Louvain'}; above "
        f"{PROCESS_THRESHOLD_EDGES:,} edges in the worker process. networkx = nx.pagerank(G, weight='confidence') "
        "and nx.community.louvain_communities on the undirected projection, seed fixed, graph already built. "
        "Goals: 10k/100k total <= 0.5 s; 50k/1M PageRank <= 0.1 s and communities <= 2 s.",
    )
    table(
        "(b') Memory",
        ["nodes / edges", "mirror (GraphArrays)", "peak during cold compute (this process)", "worker process peak RSS", "worker start"],
        memory_rows,
        "Peaks measured with tracemalloc (numpy buffers included); the worker's from /proc VmHWM.",
    )


# -- (c) event-loop stalls ----------------------------------------------------------------------
def bench_stalls(sizes: Sequence[tuple[int, int]]) -> None:
    rows = []
    for nodes, edges in sizes:
        names, src, dst, weight = synthetic_graph(nodes, edges, seed=3)
        label = size_label(nodes, edges)
        variants = [("default", PROCESS_THRESHOLD_EDGES)]
        if igraph_available() and edges > PROCESS_THRESHOLD_EDGES:
            variants.append(("igraph in a thread (no worker)", None))
        for variant, threshold in variants:
            computer = MetricsComputer(process_threshold_edges=threshold)
            if threshold is not None and edges > threshold:
                computer.start_worker()
            engine = GraphRAGEngine(metrics_computer=computer)
            engine._arrays = GraphArrays.from_edges(names, src, dst, weight)  # skip building networkx
            rng = np.random.default_rng(5)

            async def measure() -> list[tuple[str, float, float, float, float]]:
                results = []
                for phase in ("cold", "warm", "warm"):
                    if phase == "warm":
                        perturb(engine._arrays, rng)
                    lags: list[float] = []
                    done = anyio.Event()

                    async def ticker() -> None:
                        while not done.is_set():
                            t0 = time.perf_counter()
                            await anyio.sleep(0.001)
                            lags.append(time.perf_counter() - t0 - 0.001)

                    gc.collect()  # leftovers of earlier phases are not this recompute's pauses
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(ticker)
                        await anyio.sleep(0.02)
                        lags.clear()
                        t0 = time.perf_counter()
                        snap0 = time.perf_counter()
                        engine._arrays.snapshot()
                        on_loop = time.perf_counter() - snap0
                        await engine.refresh_metrics()
                        took = time.perf_counter() - t0
                        done.set()
                    results.append((phase, took, max(lags), float(np.percentile(lags, 99)), on_loop))
                return results

            results = anyio.run(measure)
            computer.close()
            # The two warm runs: report the worse one.
            cold_r = results[0]
            warm_r = max(results[1:], key=lambda r: r[2])
            for phase, took, worst, p99, on_loop in (cold_r, warm_r):
                rows.append([label, variant, phase, ms(took), ms(worst), ms(p99), f"{on_loop * 1000:.2f} ms"])
    table(
        "(c) Event-loop lag while refresh_metrics() runs in the background (1 ms ticker)",
        ["nodes / edges", "communities", "recompute", "took", "longest stall", "p99 lag", "snapshot on the loop"],
        rows,
        "Goal: no stall over 50 ms at 10k/100k. python-igraph holds the GIL for the whole of a C call, "
        "so in a worker thread it freezes the loop for the whole Louvain: the default sends graphs above "
        f"{PROCESS_THRESHOLD_EDGES:,} edges to a worker process instead.",
    )


# -- (e) on-loop costs ---------------------------------------------------------------------------
def async_snapshot_stall(engine: GraphRAGEngine, visible: Callable[[str, str | None], bool] | None = None) -> tuple[float, float]:
    """(time taken, longest gap of a 1 ms ticker) for one uncached ``snapshot_json_async``
    (``visible``: a profile's view, as GET /graph builds it for a credential limited to one)."""

    async def run() -> tuple[float, float]:
        engine._snapshot_cache = None
        gaps: list[float] = []
        done = False

        async def ticker() -> None:
            last = time.perf_counter()
            while not done:
                await anyio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        async with anyio.create_task_group() as group:
            group.start_soon(ticker)
            await anyio.sleep(0.01)
            begin = time.perf_counter()
            await engine.snapshot_json_async(visible)
            took = time.perf_counter() - begin
            done = True
        return took, max(gaps)

    results = [anyio.run(run) for _ in range(3)]
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


def bench_on_loop(sizes: Sequence[tuple[int, int]]) -> None:
    """What runs on the event loop itself, at scale: each of these stalls every client while it runs."""
    from datetime import datetime, timezone

    rows = []
    for nodes, edges in sizes:
        names, src, dst, weight = synthetic_graph(nodes, edges, seed=4)
        label = size_label(nodes, edges)
        engine = GraphRAGEngine()
        now = datetime.now(timezone.utc)
        for name in names:
            engine.graph.add_node(name, server=name.partition("__")[0])
        engine.graph.add_edges_from(
            (names[a], names[b], {"edge_type": "sequence", "observed_count": 3, "success_count": 2, "failure_count": 1,
                                  "confidence": c, "last_observed": now})
            for a, b, c in zip(src.tolist(), dst.tolist(), weight.tolist())
        )
        for name, degree in engine.graph.in_degree():  # the sums the engine keeps per node (suggestions)
            engine.graph.nodes[name].update(in_observed=3 * degree, in_success=2 * degree)
        engine._arrays = GraphArrays.from_edges(names, src, dst, weight)
        anyio.run(engine.refresh_metrics)
        engine._computer.close()
        snapshot = engine.snapshot()
        rows.append([label, "GraphArrays.snapshot() (start of refresh_metrics)", ms(median_time(engine._arrays.snapshot, 5))])
        rows.append([label, "engine.snapshot() (Python API, models)", ms(median_time(engine.snapshot, 1))])
        rows.append([label, "GraphSnapshot.model_dump_json()", ms(median_time(snapshot.model_dump_json, 1))])

        def fresh_snapshot_json() -> bytes:
            engine._snapshot_cache = None  # measure the build, not the cache
            return engine.snapshot_json()

        rows.append([label, "engine.snapshot_json() (Python API, one go, uncached)", ms(median_time(fresh_snapshot_json, 1))])
        took, stall = async_snapshot_stall(engine)
        rows.append([label, f"engine.snapshot_json_async() (GET /graph, uncached): longest loop stall (build took {ms(took)})", ms(stall)])
        servers = sorted({name.partition("__")[0] for name in names})
        half = set(servers[: len(servers) // 2])
        took, stall = async_snapshot_stall(engine, lambda tool, server: server in half)
        rows.append([label, f"engine.snapshot_json_async(visible) (GET /graph of a profile, half the servers): longest loop stall (build took {ms(took)})", ms(stall)])
        whole = engine.snapshot_json()

        def parse_and_filter() -> bytes:  # what a profile's GET /graph did before: on the loop
            document = json.loads(whole)
            shown = {n["id"] for n in document["nodes"] if n["server"] in half}
            document["nodes"] = [n for n in document["nodes"] if n["id"] in shown]
            document["edges"] = [e for e in document["edges"] if e["from_tool_id"] in shown and e["to_tool_id"] in shown]
            return json.dumps(document).encode()

        rows.append([label, "before: json.loads of the whole document, filter, json.dumps (a profile's GET /graph, on the loop)", ms(median_time(parse_and_filter, 1))])
        rows.append([label, "engine.get_top_pagerank(50)", ms(median_time(lambda: engine.get_top_pagerank(50), 3))])
        rows.append([label, "engine.suggest_next([tool], 5)", ms(median_time(lambda: engine.suggest_next([names[0]], 5), 3))])
        hub = max(engine.graph.out_degree(), key=lambda item: item[1])

        def grade_uncached() -> None:
            engine._top3.clear()  # as on the first call after a learning step
            engine.grade_next([names[1], hub[0]], names[2])

        rows.append([label, f"engine.grade_next after a hub of {hub[1]} successors, first call after learning", ms(median_time(grade_uncached, 5))])
        rows.append([label, "engine.grade_next, the same history again (cached until the graph changes)", ms(median_time(lambda: engine.grade_next([names[1], hub[0]], names[2]), 5))])
        gc.unfreeze()  # as before the engine froze its graph after a sync or a large /graph build
        rows.append([label, "gc.collect() (a full collection, wherever it happens), nothing frozen", ms(median_time(gc.collect, 3))])
        gc.freeze()
        rows.append([label, "gc.collect() after gc.freeze() (what sync_from_database and a large /graph build do)", ms(median_time(gc.collect, 3))])
        gc.unfreeze()
        del engine, snapshot
        gc.collect()
    names, src, dst, weight = synthetic_graph(50_000, 1_000_000, seed=4)
    arrays = GraphArrays.from_edges(names, src, dst, weight)
    rows.append(["50k / 1M", "GraphArrays.snapshot() (start of refresh_metrics)", ms(median_time(arrays.snapshot, 5))])
    rows.append(["50k / 1M", "gc.collect() with only the mirror in memory", ms(median_time(gc.collect, 3))])
    table(
        "(e) Work done on the event loop (each blocks every client while it runs)",
        ["nodes / edges", "call", "time"],
        rows,
        "The networkx graph is built directly with the engine's edge attributes; it is not built at 1M edges "
        "(to keep the bench short), so only the mirror is measured there.",
    )


# -- (d) learning quality -----------------------------------------------------------------------
@dataclass
class Scenario:
    name: str
    flaky_share: float  # share of tools that fail often
    flaky_failure: float  # how often they fail
    second_order: bool = False  # the next tool depends on the previous two


SCENARIOS = (
    Scenario("default (25% of tools fail 50%)", 0.25, 0.5),
    Scenario("harsh (40% of tools fail 80%)", 0.4, 0.8),
    Scenario("second-order (next depends on the last two)", 0.25, 0.5, second_order=True),
)


@dataclass
class TrueModel:
    graph: ToolGraph
    transition: dict[str, dict[str, float]]  # p(next | current) along the links
    failure: dict[str, float]
    rng: random.Random
    second_order: bool = False
    pairs: dict[tuple[str, str], dict[str, float]] | None = None

    def next_distribution(self, previous: str | None, current: str) -> dict[str, float]:
        """p(next | previous, current): in a second-order world each pair has its own skew."""
        base = self.transition[current]
        if not self.second_order or previous is None or not base:
            return base
        assert self.pairs is not None
        key = (previous, current)
        if key not in self.pairs:
            raw = {v: p * self.rng.gammavariate(0.3, 1.0) + 1e-12 for v, p in base.items()}
            total = sum(raw.values())
            self.pairs[key] = {v: r / total for v, r in raw.items()}
        return self.pairs[key]

    def relevance(self, previous: str | None, current: str) -> dict[str, float]:
        """What a perfect suggester ranks by: next is v, and v works."""
        return {v: p * (1 - self.failure[v]) for v, p in self.next_distribution(previous, current).items()}


def true_model(graph: ToolGraph, scenario: Scenario, rng: random.Random) -> TrueModel:
    transition = {}
    for tool, options in graph.successors.items():
        raw = [rng.gammavariate(0.5, 1.0) + 1e-9 for _ in options]  # Dirichlet(0.5): a few dominate
        total = sum(raw)
        transition[tool] = {v: r / total for v, r in zip(options, raw)}
    failure = {t: (scenario.flaky_failure if rng.random() < scenario.flaky_share else 0.05) for t in graph.tools}
    return TrueModel(graph, transition, failure, random.Random(rng.random()), scenario.second_order, {})


def simulate_paths(model: TrueModel, count: int, rng: random.Random) -> list[list[str]]:
    tools = model.graph.tools
    paths = []
    for _ in range(count):
        path = [rng.choice(tools)]
        while len(path) < 5:
            options = model.next_distribution(path[-2] if len(path) > 1 else None, path[-1])
            path.append(rng.choices(list(options), weights=list(options.values()))[0] if options else rng.choice(tools))
        paths.append(path)
    return paths


def simulate(model: TrueModel, count: int, rng: random.Random) -> list[WorkflowExecution]:
    executions = []
    for i, path in enumerate(simulate_paths(model, count, rng)):
        tasks = [{"id": f"t{j}", "tool_id": t, "success": rng.random() > model.failure[t]} for j, t in enumerate(path)]
        executions.append(WorkflowExecution.model_validate({"workflow_id": f"sim-{i}", "tasks": tasks}))
    return executions


def expected_hits(ranked: list[str], relevance: dict[str, float]) -> tuple[float, float]:
    """P(the next tool is the top suggestion and works), and the same for the top 3."""
    return sum(relevance.get(v, 0.0) for v in ranked[:1]), sum(relevance.get(v, 0.0) for v in ranked[:3])


def bench_quality(budgets: Sequence[int], seeds: int, test_walks: int = 2_000) -> None:
    counters: dict[str, Callable[[dict], float]] = {
        "edge confidence (before)": lambda a: a["confidence"],
        "bare success counter s": lambda a: a["success_count"],
        "plain ratio (s+1)/(n+2)": lambda a: (a["success_count"] + 1) / (a["observed_count"] + 2),
    }
    names = ["oracle (true model)", "suggest_next, last tool", "suggest_next, last two tools", *counters]
    rows = []
    goal_rows = []
    for scenario in SCENARIOS:
        for budget in budgets:
            totals: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
            per_graph: dict[str, dict[str, list[tuple[float, float]]]] = {}
            for seed in range(seeds):
                for graph in taskbench_graphs():
                    rng = random.Random(seed * 1000 + len(graph.tools))
                    model = true_model(graph, scenario, rng)
                    engine = GraphRAGEngine()
                    engine._record_batch(simulate(model, budget, rng))  # synchronous: a simulation, no event loop
                    # Every step of fresh walks from the same model: (previous, current) -> how often.
                    contexts: dict[tuple[str, str], int] = {}
                    for path in simulate_paths(model, test_walks, rng):
                        for previous, current in zip(path, path[1:-1]):
                            if model.transition[current]:
                                contexts[(previous, current)] = contexts.get((previous, current), 0) + 1
                    sums = {name: [0.0, 0.0] for name in names}
                    weight = sum(contexts.values())
                    for (previous, current), count in contexts.items():
                        relevance = model.relevance(previous, current)
                        edges = engine.graph.succ[current] if current in engine.graph else {}
                        rankings = {
                            "oracle (true model)": sorted(relevance, key=lambda v: (-relevance[v], v)),
                            "suggest_next, last tool": [s.tool_id for s in engine.suggest_next([current], 3)],
                            "suggest_next, last two tools": [s.tool_id for s in engine.suggest_next([previous, current], 3)],
                        }
                        for name, score in counters.items():
                            rankings[name] = sorted(edges, key=lambda v: (-score(edges[v]), v))
                        for name, ranked in rankings.items():
                            h1, h3 = expected_hits(ranked, relevance)
                            sums[name][0] += count * h1
                            sums[name][1] += count * h3
                    for name in names:
                        totals[name].append((sums[name][0] / weight, sums[name][1] / weight))
                        per_graph.setdefault(graph.name, {}).setdefault(name, []).append(totals[name][-1])
            for graph_name, results in per_graph.items():
                truth = np.array(results["oracle (true model)"]).mean(axis=0)
                ours = np.array(results["suggest_next, last tool"]).mean(axis=0)
                two = np.array(results["suggest_next, last two tools"]).mean(axis=0)
                goal_rows.append(
                    [scenario.name, graph_name, f"{budget:,}", f"{truth[0]:.3f} / {truth[1]:.3f}",
                     f"{ours[0] - truth[0]:+.3f} / {ours[1] - truth[1]:+.3f}", f"{two[0] - truth[0]:+.3f} / {two[1] - truth[1]:+.3f}"]
                )
            oracle = np.array(totals["oracle (true model)"]).mean(axis=0)
            for name in names:
                h1, h3 = np.array(totals[name]).mean(axis=0)
                rows.append(
                    [scenario.name, f"{budget:,}", name, f"{h1:.3f}", f"{h3:.3f}", f"{h1 - oracle[0]:+.3f}", f"{h3 - oracle[1]:+.3f}"]
                )
    table(
        "(d) Learning quality: next-tool suggestions against the true model (TaskBench graphs, simulated workflows)",
        ["scenario", "executions", "ranked by", "hit@1", "hit@3", "hit@1 vs oracle", "hit@3 vs oracle"],
        rows,
        f"Workflows: 5-tool walks along TaskBench links, next tool drawn from a skewed (Dirichlet 0.5) distribution "
        f"per tool (second-order scenario: each (previous, current) pair re-skews it, Gamma(0.3)); flaky tools as "
        f"named, the others fail 5%. hit@k = P(the tool that really comes next is in the top k AND succeeds), "
        f"computed exactly from the true model over every step of {test_walks:,} fresh walks; the oracle ranks by the "
        f"true p(next) x p(works), the most any ranking can get. Both graphs (63 tools, 674 links), {seeds} seeds.",
    )
    table(
        "(d') The goal, per TaskBench graph: suggest_next against the oracle (hit@1 / hit@3)",
        ["scenario", "graph", "executions", "oracle", "suggest_next, last tool", "suggest_next, last two tools"],
        goal_rows,
        "Goal: within 0.01 of the oracle's hit@1 and hit@3 in the default and harsh scenarios, on both graphs.",
    )


# -- (f) the cost of second-order counts ---------------------------------------------------------
def bench_second_order_cost(count: int) -> None:
    """Learning one by one into memory, with and without the second-order counts (best of 3)."""
    import graphrag.engine as engine_module

    graphs = taskbench_graphs()
    rng = random.Random(1)
    executions = [WorkflowExecution(tool_ids=walk(graphs[i % 2], rng)) for i in range(count)]

    def rate() -> float:
        best = math.inf
        for _ in range(3):
            engine = GraphRAGEngine()
            started = time.perf_counter()
            for execution in executions:
                engine._record_batch([execution])
            best = min(best, time.perf_counter() - started)
        return count / best

    with_counts = rate()
    counted = engine_module.transitions
    engine_module.transitions = lambda execution: []  # type: ignore[assignment]
    try:
        without = rate()
    finally:
        engine_module.transitions = counted
    table(
        f"(f) Cost of the second-order counts: {count:,} executions of 5 tools, MemoryStore, one by one",
        ["learning", "executions/s"],
        [["edges + second-order counts", f"{with_counts:,.0f}"], ["edges only (before)", f"{without:,.0f}"]],
        f"{1 - with_counts / without:.1%} slower with the counts (3 three-tool paths per execution).",
    )


# -- main ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a sanity run in seconds")
    parser.add_argument(
        "--only", default="ingest,metrics,stalls,on-loop,quality,second-order", help="comma list of sections"
    )
    parser.add_argument(
        "--ingest-only", nargs=2, type=int, metavar=("COUNT", "PRODUCERS"),
        help="ingest COUNT executions from PRODUCERS producers into a SQLite file, silently (for callgrind)",
    )
    args = parser.parse_args()
    if args.ingest_only:
        ingest_only(*args.ingest_only)
        return
    sections = set(args.only.split(","))
    print(
        f"pml-gateway engine bench: Python {platform.python_version()}, {os.cpu_count()} cores, "
        f"igraph {'yes' if igraph_available() else 'no'}, {time.strftime('%Y-%m-%d')}"
    )
    started = time.perf_counter()
    if "ingest" in sections:
        bench_ingest(2_000 if args.quick else 20_000)
    if "metrics" in sections:
        sizes = [(1_000, 10_000), (10_000, 100_000)] if args.quick else [(1_000, 10_000), (10_000, 100_000), (50_000, 1_000_000)]
        bench_metrics(sizes, nx_louvain_limit=1_000_000)
    if "stalls" in sections:
        # The largest graph done in-thread, warm runs included (they add 50 edges each).
        at_threshold = (PROCESS_THRESHOLD_EDGES // 5, PROCESS_THRESHOLD_EDGES - 100)
        bench_stalls([at_threshold, (10_000, 100_000)] if args.quick else [at_threshold, (10_000, 100_000), (50_000, 1_000_000)])
    if "on-loop" in sections:
        bench_on_loop([(10_000, 100_000)])
    if "quality" in sections:
        bench_quality([200, 1_000] if args.quick else [100, 300, 1_000, 3_000], seeds=2 if args.quick else 5)
    if "second-order" in sections:
        bench_second_order_cost(2_000 if args.quick else 20_000)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
