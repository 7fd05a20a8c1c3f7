"""The GraphRAG engine: learns tool-to-tool edges from executions and reports every step as an event.

Order of one learning step (``update_from_execution``), which is what makes it crash-safe:
1. compute the new edge states and the events from the current graph (nothing changed yet);
2. commit execution, edges and events to the store in one transaction (ids assigned);
3. apply the edges to the in-memory graph;
4. call the listeners, in registration order, with each stored event.
A crash before 2 loses nothing anyone saw; after 2 everything is on disk.

The engine is driven from one asyncio event loop; each learning step runs without awaiting, so
steps never interleave. Metrics are computed in a worker thread from an array snapshot.

Several processes on one store (replicas): step 2 first applies what the others committed since
this engine's last event (the store reads it under its write lock, ``GraphStore.commit``), so
step 1 learns from the committed graph and their events go out before ours, in id order.
``follow`` applies the others' events between writes (``graphrag.replication`` calls it). Only
the replica with ``emits_metrics`` logs ``metrics_updated``; the others compute the same metrics
for themselves and relay the leader's event from the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

import anyio
import networkx as nx
from pydantic_core import to_json

from .events import (
    EdgeCreatedData,
    EdgeUpdatedData,
    EventPayload,
    GraphEvent,
    GraphSyncedData,
    MetricsUpdatedData,
    PageRankEntry,
    WorkflowExecutedData,
    utcnow,
)
from .execution import WorkflowExecution
from .graph_arrays import GraphArrays
from .learning import EdgeState, learn, observations
from .metrics import GraphMetrics, MetricsComputer
from .snapshot import GraphSnapshot
from .store import CatchUp, ExecutionRecord, GraphStore, MemoryStore
from .suggestions import Suggestion, suggest_next

log = logging.getLogger(__name__)

Listener = Callable[[GraphEvent], None]

#: Tool ids from the gateway are "<server>__<tool>".
SERVER_SEPARATOR = "__"


def server_of(tool_id: str) -> str | None:
    server, sep, _ = tool_id.partition(SERVER_SEPARATOR)
    return server if sep and server else None


class GraphRAGEngine:
    def __init__(self, store: GraphStore | None = None, *, metrics_computer: MetricsComputer | None = None) -> None:
        self.store: GraphStore = store if store is not None else MemoryStore()
        self.graph: nx.DiGraph = nx.DiGraph()
        self.metrics: GraphMetrics | None = None
        self._arrays = GraphArrays()
        self._computer = metrics_computer or MetricsComputer()
        self._listeners: list[Listener] = []
        self._last_event_id: int | None = self.store.bounds().last_id
        self._metrics_lock: anyio.Lock | None = None
        self._snapshot_cache: tuple[tuple[int, int | None], bytes] | None = None
        self._group: list[tuple[WorkflowExecution, asyncio.Future[list[GraphEvent]]]] = []
        #: False on a replica that is not the metrics leader: it computes, the leader logs the event.
        self.emits_metrics = True

    def close(self) -> None:
        """Stop the metrics worker process, if one was started (the store is closed by its owner)."""
        self._computer.close()

    # -- listeners ------------------------------------------------------------------------
    def on(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def off(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def _emit(self, events: Sequence[GraphEvent]) -> None:
        if events:
            self._last_event_id = events[-1].id
        for event in events:
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:  # one broken listener must not stop learning or the others
                    log.exception("event listener %r failed on %s", listener, event.type)

    @property
    def last_event_id(self) -> int | None:
        return self._last_event_id

    # -- loading --------------------------------------------------------------------------
    async def sync_from_database(self) -> GraphEvent:
        started = time.perf_counter()
        stored = self.store.load()
        self.graph = nx.DiGraph()
        self._arrays = GraphArrays()
        for tool_id, server in stored.nodes.items():
            self._add_node(tool_id, server)
        for edge in stored.edges:
            self._apply_edge(edge)
        self._last_event_id = stored.bounds.last_id
        payload = GraphSyncedData(
            node_count=self.graph.number_of_nodes(),
            edge_count=self.graph.number_of_edges(),
            sync_duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        (event,) = self._store_and_emit([payload])
        return event

    # -- learning -------------------------------------------------------------------------
    async def update_from_execution(self, execution: WorkflowExecution) -> list[GraphEvent]:
        """Learn from one execution; returns its events (with ids) once they are committed.

        Group commit: executions submitted during the same event-loop turn (concurrent requests,
        traces closing together) share one transaction, committed at the end of that turn. Each
        still gets its own events, in submission order. If the caller is cancelled while it
        waits, its execution is recorded all the same.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[list[GraphEvent]] = loop.create_future()
        if not self._group:
            loop.call_soon(self._commit_group)
        self._group.append((execution, waiter))
        return await waiter  # cancelled: the future is too, and its result is dropped

    def _commit_group(self) -> None:
        group, self._group = self._group, []
        try:
            results = self.record_many([execution for execution, _ in group])
        except Exception as exc:  # the store refused the transaction: nothing of it was applied
            for _, waiter in group:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for (_, waiter), events in zip(group, results):
            if not waiter.done():
                waiter.set_result(events)

    async def update_from_executions(self, executions: Sequence[WorkflowExecution]) -> list[list[GraphEvent]]:
        """Learn from several executions at once: one commit for all, events as if one by one."""
        return self.record_many(executions)

    def record(self, execution: WorkflowExecution) -> list[GraphEvent]:
        """``update_from_execution`` for synchronous callers (benchmarks, scripts)."""
        return self.record_many([execution])[0]

    def record_many(self, executions: Sequence[WorkflowExecution]) -> list[list[GraphEvent]]:
        if not executions:
            return []
        now = utcnow()
        staged: dict[tuple[str, str], EdgeState] = {}  # edges changed earlier in this batch
        records: list[ExecutionRecord] = []
        kept: list[bool] = []

        def plan(caught: CatchUp, fresh: Sequence[bool]) -> list[ExecutionRecord]:
            self._apply_caught_up(caught)  # learn from the graph as committed, others' changes included
            kept.extend(fresh)
            records.extend(self._learn(e, staged, now) for e, new in zip(executions, fresh) if new)
            return records

        caught, stored = self.store.commit(executions, plan, after_id=self._last_event_id or 0)  # the commit
        for record in records:
            for tool_id, server in record.nodes.items():
                self._add_node(tool_id, server)
        for edge in staged.values():
            self._apply_edge(edge)
        self._emit(caught.events)
        for events in stored:
            self._emit(events)
        results = iter(stored)
        return [next(results) if new else [] for new in kept]  # a retried execution: nothing new

    def follow(self, caught: CatchUp) -> None:
        """Apply and emit what other processes committed (their events, with their ids)."""
        self._apply_caught_up(caught)
        self._emit(caught.events)

    def _apply_caught_up(self, caught: CatchUp) -> None:
        for tool_id, server in caught.nodes.items():
            self._add_node(tool_id, server)
        for edge in caught.edges:
            self._apply_edge(edge)

    def _learn(self, execution: WorkflowExecution, staged: dict[tuple[str, str], EdgeState], now: datetime) -> ExecutionRecord:
        changes: list[EdgeState] = []
        payloads: list[EventPayload] = []
        for observation in observations(execution):
            key = (observation.source, observation.target)
            previous = staged.get(key) or self._edge_state(*key)
            edge = staged[key] = learn(previous, observation, now)
            changes.append(edge)
            if previous is None:
                payloads.append(
                    EdgeCreatedData(
                        from_tool_id=edge.source,
                        to_tool_id=edge.target,
                        confidence_score=edge.confidence,
                        observed_count=edge.observed_count,
                        edge_type=edge.edge_type,
                        timestamp=now,
                    )
                )
            else:
                payloads.append(
                    EdgeUpdatedData(
                        from_tool_id=edge.source,
                        to_tool_id=edge.target,
                        old_confidence=previous.confidence,
                        new_confidence=edge.confidence,
                        observed_count=edge.observed_count,
                        edge_type=edge.edge_type,
                        timestamp=now,
                    )
                )
        payloads.append(
            WorkflowExecutedData(
                workflow_id=execution.workflow_id,
                tool_ids=execution.tool_ids,
                success=execution.success,
                execution_time_ms=execution.execution_time_ms,
                timestamp=now,
            )
        )
        # Only tools the graph does not know yet: the store inserts nodes once.
        nodes = {tool_id: server_of(tool_id) for tool_id in execution.tool_ids if tool_id not in self.graph}
        return ExecutionRecord(execution, nodes, changes, payloads)

    def _add_node(self, tool_id: str, server: str | None) -> None:
        if tool_id not in self.graph:
            self.graph.add_node(tool_id, server=server)
            self._arrays.node_index(tool_id)

    def _apply_edge(self, edge: EdgeState) -> None:
        self._add_node(edge.source, server_of(edge.source))
        self._add_node(edge.target, server_of(edge.target))
        self.graph.add_edge(
            edge.source,
            edge.target,
            edge_type=edge.edge_type,
            observed_count=edge.observed_count,
            success_count=edge.success_count,
            failure_count=edge.failure_count,
            confidence=edge.confidence,
            last_observed=edge.last_observed,
        )
        self._arrays.set_edge(edge.source, edge.target, edge.confidence)

    def _edge_state(self, source: str, target: str) -> EdgeState | None:
        attrs = self.graph.get_edge_data(source, target)
        if attrs is None:
            return None
        return EdgeState(source=source, target=target, **attrs)

    def _store_and_emit(self, payloads: Sequence[EventPayload]) -> list[GraphEvent]:
        def plan(caught: CatchUp, _fresh: Sequence[bool]) -> list[ExecutionRecord]:
            self._apply_caught_up(caught)
            return [ExecutionRecord(None, {}, (), payloads)]

        caught, (stored,) = self.store.commit([], plan, after_id=self._last_event_id or 0)
        self._emit(caught.events)
        self._emit(stored)
        return stored

    # -- metrics --------------------------------------------------------------------------
    async def refresh_metrics(self) -> GraphMetrics:
        """Recompute now, off the event loop; emits ``metrics_updated``; returns the metrics."""
        if self._metrics_lock is None:
            self._metrics_lock = anyio.Lock()
        async with self._metrics_lock:  # one recompute at a time: the computer keeps warm state
            snapshot = self._arrays.snapshot()
            metrics = await anyio.to_thread.run_sync(self._computer.compute, snapshot)
            self.metrics = metrics
            if not self.emits_metrics:
                return metrics  # another replica leads: its event reaches us through the log
            self._store_and_emit(
                [
                    MetricsUpdatedData(
                        node_count=metrics.node_count,
                        edge_count=metrics.edge_count,
                        density=metrics.density,
                        pagerank_top_10=metrics.pagerank_top_10,
                        communities_count=metrics.communities_count,
                    )
                ]
            )
            return metrics

    def get_density(self) -> float:
        n = self.graph.number_of_nodes()
        return self.graph.number_of_edges() / (n * (n - 1)) if n > 1 else 0.0

    def get_top_pagerank(self, k: int = 10) -> list[PageRankEntry]:
        """The top ``k`` of the last computed PageRank (empty before the first ``refresh_metrics``)."""
        if self.metrics is None:
            return []
        if k <= len(self.metrics.pagerank_top_10):
            return self.metrics.pagerank_top_10[:k]
        ranked = sorted(self.metrics.pagerank.items(), key=lambda item: (-item[1], item[0]))[:k]
        return [PageRankEntry(tool_id=t, score=s) for t, s in ranked]

    def get_communities_count(self) -> int:
        return self.metrics.communities_count if self.metrics is not None else 0

    # -- queries --------------------------------------------------------------------------
    def suggest_next(self, after: Sequence[str], limit: int = 5) -> list[Suggestion]:
        return suggest_next(self.graph, after, limit)

    def snapshot_json(self) -> bytes:
        """The ``GET /graph`` document, built from plain dicts and cached until the next event.

        ``GET /graph`` runs on the event loop: per-edge pydantic models cost ~8 µs an edge, plain
        dicts serialised by pydantic-core ~2 µs; a dashboard refetching after each
        ``metrics_updated`` hits the cache.
        """
        key = (id(self.graph), self._last_event_id)
        if self._snapshot_cache is not None and self._snapshot_cache[0] == key:
            return self._snapshot_cache[1]
        metrics = self.metrics
        pagerank = metrics.pagerank if metrics else {}
        communities = metrics.communities if metrics else {}
        document = {
            "last_event_id": self._last_event_id,
            "nodes": [
                {"id": node, "server": attrs.get("server"), "pagerank": pagerank.get(node), "community": communities.get(node)}
                for node, attrs in self.graph.nodes(data=True)
            ],
            "edges": [
                {
                    "from_tool_id": source,
                    "to_tool_id": target,
                    "confidence": attrs["confidence"],
                    "observed_count": attrs["observed_count"],
                    "success_count": attrs["success_count"],
                    "failure_count": attrs["failure_count"],
                    "edge_type": attrs["edge_type"],
                    "last_observed": attrs["last_observed"],
                }
                for source, target, attrs in self.graph.edges(data=True)
            ],
            "metrics": metrics.model_dump(mode="json") if metrics else None,
        }
        body = to_json(document)  # pydantic-core: datetimes exactly as the models write them
        self._snapshot_cache = (key, body)
        return body

    def snapshot(self) -> GraphSnapshot:
        """The graph as models (the ``GET /graph`` document, parsed): one builder serves both."""
        return GraphSnapshot.model_validate_json(self.snapshot_json())
