"""The GraphRAG engine: learns tool-to-tool edges from executions and reports every step as an event.

Order of one learning step (``update_from_execution``), which is what makes it crash-safe:
1. compute the new edge states and the events from the current graph (nothing changed yet);
2. commit execution, edges and events to the store in one transaction (ids assigned);
3. apply the edges to the in-memory graph;
4. call the listeners, in registration order, with each stored event.
A crash before 2 loses nothing anyone saw; after 2 everything is on disk.

The engine is driven from one asyncio event loop; each learning step runs without awaiting, so
steps never interleave. Metrics are computed in a worker thread from an array snapshot.

Tool ids are opaque here: the server a tool belongs to comes with its task (``TaskRun.server``),
or, for a task that names none, from the resolver the application gave ``resolve_servers`` (the
gateway's name registry); it is stored with the node the first time the tool is seen and never
parsed out of the id.

Several processes on one store (replicas): step 2 first applies what the others committed since
this engine's last event (the store reads it under its write lock, ``GraphStore.commit``), so
step 1 learns from the committed graph and their events go out before ours, in id order.
``follow`` applies the others' events between writes (``graphrag.replication`` calls it). Only
the replica with ``emits_metrics`` logs ``metrics_updated``; the others compute the same metrics
for themselves and relay the leader's event from the log. Everything a replica learns goes
through that one path: executions with their edges and second-order transitions, and the
available tools with their ``tool_added``/``tool_removed`` events, which a follower applies to
its own map of available tools.

An administrator may delete learned history (``forget_tool``, ``reset_graph``): through the same
commit (a ``ForgetRecord`` with its ``tool_forgotten`` / ``graph_reset`` event), then applied in
memory, then emitted. A follower that meets such an event reloads the whole graph (``CatchUp.full``
replaces what it holds).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import anyio
import networkx as nx
from pydantic_core import to_json

from .events import (
    EdgeCreatedData,
    EdgeUpdatedData,
    EventPayload,
    GraphEvent,
    GraphResetData,
    GraphSyncedData,
    MetricsUpdatedData,
    PageRankEntry,
    ToolAddedData,
    ToolForgottenData,
    ToolRemovedData,
    ToolRemovedReason,
    WorkflowExecutedData,
    trusted,
    utcnow,
)
from .execution import WorkflowExecution
from .graph_arrays import GraphArrays
from .grading import SuggestionGrader
from .learning import EdgeState, TransitionState, learn, learn_transition, observations, transitions
from .metrics import GraphMetrics, MetricsComputer, top_k
from .snapshot import GraphSnapshot
from .store import (
    CatchUp,
    ExecutionRecord,
    ForgetRecord,
    GraphStore,
    MemoryStore,
    Plan,
    StoreUnavailable,
    ToolsRecord,
    apply_tool_event,
)
from .suggestions import Suggestion, rank_next, suggest_next

log = logging.getLogger(__name__)

Listener = Callable[[GraphEvent], None]
#: Which server a tool id belongs to, as whoever named the tools knows it (``None``: unknown).
ServerResolver = Callable[[str], str | None]
#: Whether a viewer sees a tool, given its id and server (``snapshot_json_async``).
ToolFilter = Callable[[str, str | None], bool]

#: Edges copied or serialised between two turns of the loop in ``snapshot_json_async``: a few ms.
SNAPSHOT_SLICE_EDGES = 1_000
#: A ``GET /graph`` build of at least this many edges, and twice as many as at the last freeze,
#: ends with ``gc.freeze()``: a full collection walked a 100k-edge graph in 84-138 ms
#: (bench/README.md, table (e)); frozen objects are skipped.
FREEZE_AFTER_EDGES = 10_000


class UnknownTool(LookupError):
    """``forget_tool`` of a tool the graph has no history of."""

    def __init__(self, tool_id: str) -> None:
        super().__init__(f"unknown tool {tool_id!r}: the graph has no history of it")
        self.tool_id = tool_id


def _edge_docs(graph: nx.DiGraph, source: str) -> list[dict[str, Any]]:
    """The ``GET /graph`` entries of one node's outgoing edges (copies: safe to serialise later)."""
    return [
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
        for target, attrs in graph.adj[source].items()
    ]


class GraphRAGEngine:
    def __init__(self, store: GraphStore | None = None, *, metrics_computer: MetricsComputer | None = None) -> None:
        self.store: GraphStore = store if store is not None else MemoryStore()
        self.graph: nx.DiGraph = nx.DiGraph()
        #: Second-order evidence (see learning.py): (first, second) -> third -> counts.
        self.transitions: dict[tuple[str, str], dict[str, TransitionState]] = {}
        self.metrics: GraphMetrics | None = None
        #: Live hit rates of suggestions and search (grading.py), for the metrics.
        self.grader = SuggestionGrader()
        # Top 3 per history, for live grading on every proxied call; valid until the graph changes.
        self._top3: dict[tuple[str, ...], list[str]] = {}
        self._arrays = GraphArrays()
        self._computer = metrics_computer or MetricsComputer()
        self._listeners: list[Listener] = []
        self._last_event_id: int | None = self.store.bounds().last_id
        self._metrics_lock: anyio.Lock | None = None
        self._snapshot_cache: tuple[tuple[int, int | None, int], bytes] | None = None
        self._snapshot_task: asyncio.Future[bytes] | None = None
        #: Edges in the graph at the last ``gc.freeze()`` (start-up, or a large ``GET /graph`` build).
        self._frozen_edges = 0
        #: One set per ``GET /graph`` build under way: the sources whose edges changed meanwhile.
        self._snapshot_dirty: list[set[str]] = []
        self._group: list[tuple[WorkflowExecution, asyncio.Future[list[GraphEvent]]]] = []
        #: False on a replica that is not the metrics leader: it computes, the leader logs the event.
        self.emits_metrics = True
        #: The tools the downstream servers offer now (tool id -> server), as last committed.
        self._available: dict[str, str] = self.store.available_tools()
        self._resolver: ServerResolver | None = None
        #: Why the last write failed (disk full, read-only, the database server away), until one succeeds.
        self.store_error: str | None = None

    def resolve_servers(self, resolver: ServerResolver | None) -> None:
        """Ask ``resolver`` for the server of a new tool whose task names none (``None``: stop asking)."""
        self._resolver = resolver

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
            self._notify(event)

    def _notify(self, event: GraphEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # one broken listener must not stop learning or the others
                log.exception("event listener %r failed on %s", listener, event.type)

    def emit_live(self, payload: EventPayload) -> GraphEvent:
        """Tell the listeners about a live-only event (``workflow_progress``): no id, not stored."""
        if payload.has_id or payload.per_connection:
            raise ValueError(f"{payload.event_type} is not a live-only event")
        event = GraphEvent.of(payload)
        self._notify(event)
        return event

    @property
    def last_event_id(self) -> int | None:
        return self._last_event_id

    # -- loading --------------------------------------------------------------------------
    async def sync_from_database(self) -> GraphEvent:
        started = time.perf_counter()
        self.load()
        payload = GraphSyncedData(
            node_count=self.graph.number_of_nodes(),
            edge_count=self.graph.number_of_edges(),
            sync_duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        (event,) = self._store_and_emit([payload])
        # Start-up is done: what is alive now (the imported modules, ~130k objects, and the graph
        # just loaded) lives as long as the process. Frozen, the collector stops walking it: a full
        # collection cost 50-75 ms after the imports alone, 138 ms at 100k edges, paid by whichever
        # learning step triggers one; ingest spent a third of its CPU there (bench/README.md,
        # issue 17). Collected first, so that no garbage is frozen with it.
        gc.collect()
        gc.freeze()
        self._frozen_edges = self.graph.number_of_edges()
        return event

    def load(self) -> None:
        """Read the committed graph into memory without logging ``graph_synced``: for a short-lived
        process that only acts on the store (``pml-gateway admin``); a server syncs instead."""
        stored = self.store.load()
        self._available = self.store.available_tools()
        self.graph = nx.DiGraph()
        self._arrays = GraphArrays()
        for tool_id, server in stored.nodes.items():
            self._add_node(tool_id, server)
        for edge in stored.edges:
            self._apply_edge(edge)
        self.transitions = {}
        for transition in stored.transitions:
            self._apply_transition(transition)
        self._top3.clear()
        self._last_event_id = stored.bounds.last_id

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
            results = self._record_batch([execution for execution, _ in group])
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
        return self._record_batch(executions)

    def _record_batch(self, executions: Sequence[WorkflowExecution]) -> list[list[GraphEvent]]:
        """Compute, commit, apply, emit (the module's order) for a batch; nothing awaited."""
        if not executions:
            return []
        now = utcnow()
        staged: dict[tuple[str, str], EdgeState] = {}  # edges changed earlier in this batch
        staged_paths: dict[tuple[str, str, str], TransitionState] = {}
        records: list[ExecutionRecord] = []
        kept: list[bool] = []

        def plan(caught: CatchUp, fresh: Sequence[bool]) -> list[ExecutionRecord]:
            self._apply_caught_up(caught)  # learn from the graph as committed, others' changes included
            kept.extend(fresh)
            records.extend(self._learn(e, staged, staged_paths, now) for e, new in zip(executions, fresh) if new)
            return records

        caught, stored = self._commit(executions, plan)
        for record in records:
            for tool_id, server in record.nodes.items():
                self._add_node(tool_id, server)
        for edge in staged.values():
            self._apply_edge(edge)
        for transition in staged_paths.values():
            self._apply_transition(transition)
        self._top3.clear()
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
        if caught.full:  # the whole graph as committed: history may have been deleted (admin)
            self._clear_memory()
        for tool_id, server in caught.nodes.items():
            self._add_node(tool_id, server)
        for edge in caught.edges:
            self._apply_edge(edge)
        for transition in caught.transitions:
            self._apply_transition(transition)
        if caught.available is not None:  # the whole table (the log no longer holds every change)
            self._available = dict(caught.available)
        else:
            for event in caught.events:  # others' tool changes, in id order
                apply_tool_event(self._available, event)
        if caught.events or caught.edges or caught.transitions:
            self._top3.clear()

    def _learn(
        self,
        execution: WorkflowExecution,
        staged: dict[tuple[str, str], EdgeState],
        staged_paths: dict[tuple[str, str, str], TransitionState],
        now: datetime,
    ) -> ExecutionRecord:
        changes: list[EdgeState] = []
        path_changes: list[TransitionState] = []
        for path in transitions(execution):
            key3 = path[:3]
            previous_path = staged_paths.get(key3) or self.transitions.get(key3[:2], {}).get(key3[2])
            path_changes.append(learn_transition(previous_path, path))
            staged_paths[key3] = path_changes[-1]
        payloads: list[EventPayload] = []
        for observation in observations(execution):
            key = (observation.source, observation.target)
            previous = staged.get(key) or self._edge_state(*key)
            edge = staged[key] = learn(previous, observation, now)
            changes.append(edge)
            # Payloads from values computed here (in range by construction): built, not validated.
            if previous is None:
                payloads.append(
                    trusted(
                        EdgeCreatedData,
                        {
                            "from_tool_id": edge.source,
                            "to_tool_id": edge.target,
                            "confidence_score": edge.confidence,
                            "observed_count": edge.observed_count,
                            "edge_type": edge.edge_type,
                            "timestamp": now,
                        },
                    )
                )
            else:
                payloads.append(
                    trusted(
                        EdgeUpdatedData,
                        {
                            "from_tool_id": edge.source,
                            "to_tool_id": edge.target,
                            "old_confidence": previous.confidence,
                            "new_confidence": edge.confidence,
                            "observed_count": edge.observed_count,
                            "edge_type": edge.edge_type,
                            "timestamp": now,
                        },
                    )
                )
        payloads.append(
            trusted(
                WorkflowExecutedData,
                {
                    "workflow_id": execution.workflow_id,
                    "tool_ids": execution.tool_ids,
                    "success": execution.success,
                    "execution_time_ms": execution.execution_time_ms,
                    "timestamp": now,
                },
            )
        )
        # Only tools the graph does not know yet (the store inserts nodes once), with their server
        # as the tasks give it (the first task of a tool that names one).
        nodes: dict[str, str | None] = {}
        for task in execution.tasks:
            if task.tool_id not in self.graph and nodes.get(task.tool_id) is None:
                server = task.server
                if server is None and self._resolver is not None:
                    server = self._resolver(task.tool_id)
                nodes[task.tool_id] = server
        return ExecutionRecord(execution, nodes, changes, payloads, path_changes)

    def _add_node(self, tool_id: str, server: str | None) -> None:
        if tool_id not in self.graph:
            # in_observed / in_success: sums over the node's incoming edges (suggestions.reliability)
            self.graph.add_node(tool_id, server=server, in_observed=0, in_success=0)
            self._arrays.node_index(tool_id)

    def _apply_edge(self, edge: EdgeState) -> None:
        # Nodes are added with their server before their edges; a store that lacks one still loads.
        self._add_node(edge.source, None)
        self._add_node(edge.target, None)
        previous = self.graph.get_edge_data(edge.source, edge.target)
        target = self.graph.nodes[edge.target]
        target["in_observed"] += edge.observed_count - (previous["observed_count"] if previous else 0)
        target["in_success"] += edge.success_count - (previous["success_count"] if previous else 0)
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
        for dirty in self._snapshot_dirty:
            dirty.add(edge.source)

    def _apply_transition(self, transition: TransitionState) -> None:
        self.transitions.setdefault((transition.first, transition.second), {})[transition.third] = transition

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

    # -- available tools ------------------------------------------------------------------
    @property
    def available_tools(self) -> dict[str, str]:
        """The tools the downstream servers offer (tool id -> server), as last committed."""
        return dict(self._available)

    def tool_server(self, tool_id: str) -> str | None:
        """The server a tool belongs to: as its server reported it, else as the graph learned it."""
        server = self._available.get(tool_id)
        if server is None and tool_id in self.graph:
            server = self.graph.nodes[tool_id].get("server")
        return server

    def set_server_tools(
        self, server: str, tool_ids: Iterable[str], *, reason: ToolRemovedReason = "removed"
    ) -> list[GraphEvent]:
        """Make ``tool_ids`` the tools ``server`` offers; returns the events, once committed.

        Only differences from the committed set are reported: one ``tool_removed`` (with
        ``reason``) per tool that is gone, then one ``tool_added`` per new one. The same set
        again (a restart where nothing changed) commits and emits nothing. Crash-safe order:
        compute, commit, apply, emit. The server is the caller's word, never parsed from a name.
        """
        wanted = set(tool_ids)
        records: list[ExecutionRecord] = []

        def plan(caught: CatchUp, _fresh: Sequence[bool]) -> list[ExecutionRecord]:
            self._apply_caught_up(caught)  # the set as committed, other replicas' changes included
            current = {tool_id for tool_id, owner in self._available.items() if owner == server}
            added, removed = sorted(wanted - current), sorted(current - wanted)
            if added or removed:
                now = utcnow()
                payloads: list[EventPayload] = [
                    ToolRemovedData(tool_id=tool_id, server=server, reason=reason, timestamp=now) for tool_id in removed
                ]
                payloads += [ToolAddedData(tool_id=tool_id, server=server, timestamp=now) for tool_id in added]
                records.append(ExecutionRecord(None, {}, (), payloads, tools=ToolsRecord(server, added, removed, payloads)))
            return records

        # Always through the write path: another replica may have changed the set meanwhile.
        caught, stored = self.store.commit([], plan, after_id=self._last_event_id or 0)
        for record in records:
            assert record.tools is not None
            for tool_id in record.tools.removed:
                del self._available[tool_id]
            self._available.update(dict.fromkeys(record.tools.added, server))
        self._emit(caught.events)
        events = [event for batch in stored for event in batch]
        self._emit(events)
        return events

    # -- forgetting (admin) ---------------------------------------------------------------
    # Apart from the ingest path on purpose: rare, whole-graph work is fine here. Same order as
    # learning: plan from the committed graph, commit (the store deletes), apply, emit.
    async def forget_tool(self, tool_id: str) -> GraphEvent:
        """Delete what was learned about ``tool_id``: its node, every edge to or from it, every
        second-order count naming it. Returns its ``tool_forgotten`` event, once committed.
        ``UnknownTool`` when the graph (as committed, other replicas' changes included) has no
        such tool. Whether its server still offers it (``available_tools``) does not change."""
        known: list[bool] = []

        def plan(caught: CatchUp, _fresh: Sequence[bool]) -> list[ExecutionRecord]:
            self._apply_caught_up(caught)
            if tool_id not in self.graph:
                return []
            known.append(True)
            payload = ToolForgottenData(
                tool_id=tool_id,
                server=self.graph.nodes[tool_id].get("server"),
                edges_removed=self.graph.degree(tool_id) - (1 if self.graph.has_edge(tool_id, tool_id) else 0),
                transitions_removed=sum(1 for _ in self._transitions_naming(tool_id)),
            )
            return [ExecutionRecord(None, {}, (), [payload], forget=ForgetRecord(tool_id))]

        events = self._commit_forget(plan)
        if not known:
            raise UnknownTool(tool_id)
        self._drop_tool(tool_id)
        self._emit(events)
        return events[0]

    async def reset_graph(self) -> GraphEvent:
        """Delete the whole learned graph, the recorded executions and the event log before the
        ``graph_reset`` event this returns (ids go on growing). The available tools stay."""

        def plan(caught: CatchUp, _fresh: Sequence[bool]) -> list[ExecutionRecord]:
            self._apply_caught_up(caught)
            payload = GraphResetData(nodes_removed=self.graph.number_of_nodes(), edges_removed=self.graph.number_of_edges())
            return [ExecutionRecord(None, {}, (), [payload], forget=ForgetRecord(None))]

        events = self._commit_forget(plan)
        self._clear_memory()
        self._emit(events)
        return events[0]

    def _commit_forget(self, plan: Plan) -> list[GraphEvent]:
        """Commit a forget plan; emit what others committed before it; return its own events (not emitted)."""
        caught, stored = self._commit([], plan)
        self._emit(caught.events)
        return [event for batch in stored for event in batch]

    def _commit(self, executions: Sequence[WorkflowExecution], plan: Plan) -> tuple[CatchUp, list[list[GraphEvent]]]:
        """The store's commit after this engine's last event, remembering whether the store refused it."""
        try:
            caught, stored = self.store.commit(executions, plan, after_id=self._last_event_id or 0)
        except StoreUnavailable as exc:
            self.store_error = str(exc)  # nothing was applied; said by /health until a commit works again
            raise
        self.store_error = None
        return caught, stored

    def _transitions_naming(self, tool_id: str) -> Iterable[TransitionState]:
        for (first, second), thirds in self.transitions.items():
            for third, transition in thirds.items():
                if tool_id in (first, second, third):
                    yield transition

    def _drop_tool(self, tool_id: str) -> None:
        """Remove a tool from memory as the store did: node, edges (and what they added to their
        targets' incoming sums), second-order counts; the array mirror is rebuilt (append-only)."""
        for dirty in self._snapshot_dirty:  # a /graph build in progress copies their edges again
            dirty.update(source for source in self.graph.predecessors(tool_id) if source != tool_id)
        for target in list(self.graph.successors(tool_id)):
            edge, node = self.graph.edges[tool_id, target], self.graph.nodes[target]
            node["in_observed"] -= edge["observed_count"]
            node["in_success"] -= edge["success_count"]
        self.graph.remove_node(tool_id)
        kept: dict[tuple[str, str], dict[str, TransitionState]] = {}
        for pair, thirds in self.transitions.items():
            if tool_id in pair:
                continue
            rest = {third: t for third, t in thirds.items() if third != tool_id}
            if rest:
                kept[pair] = rest
        self.transitions = kept
        arrays = GraphArrays()
        for node in self.graph:
            arrays.node_index(node)
        for source, target, confidence in self.graph.edges(data="confidence"):
            arrays.set_edge(source, target, confidence)
        self._arrays = arrays  # a new lineage: the metrics computer rebuilds rather than extends
        self._top3.clear()

    def _clear_memory(self) -> None:
        """An empty graph in memory (the available tools are not the graph's: they stay)."""
        self.graph = nx.DiGraph()
        self._arrays = GraphArrays()
        self.transitions = {}
        self._top3.clear()

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
        return top_k(self.metrics.pagerank, k)

    def get_communities_count(self) -> int:
        return self.metrics.communities_count if self.metrics is not None else 0

    # -- queries --------------------------------------------------------------------------
    def suggest_next(self, after: Sequence[str], limit: int = 5) -> list[Suggestion]:
        """The most probable next tools (see suggestions.py), each with ``probability`` and why."""
        return suggest_next(self.graph, after, limit, self.transitions)

    def grade_next(self, history: Sequence[str], actual: str) -> None:
        """Live grading: was ``actual``, used right after ``history``, in the top 1 / 3 suggested?"""
        key = tuple(history[-2:])
        ranked = self._top3.get(key)
        if ranked is None:  # ranking a hub's successors costs milliseconds: once per graph change
            if len(self._top3) >= 10_000:
                self._top3.clear()
            ranked = self._top3[key] = rank_next(self.graph, key, 3, self.transitions)
        self.grader.next_tool.grade(ranked, actual)

    def snapshot_json(self) -> bytes:
        """The ``GET /graph`` document, built from plain dicts and cached until the next event.

        Per-edge pydantic models cost ~8 µs an edge, plain dicts serialised by pydantic-core ~2 µs;
        a dashboard refetching after each ``metrics_updated`` hits the cache. This builds it in one
        go; ``snapshot_json_async`` (the route's) is the same builder with the loop served between
        slices.
        """
        for body in self._snapshot_steps():
            if body is not None:
                return body
        raise AssertionError("the builder ends with the body")

    async def snapshot_json_async(self, visible: ToolFilter | None = None) -> bytes:
        """``snapshot_json`` without stalling the loop: the event loop runs between slices of
        ``SNAPSHOT_SLICE_EDGES`` edges (at 100k edges the one-go build held it ~0.25 s). Requests
        arriving during a build share it; a cancelled request does not stop it.

        With ``visible``, the document as one who sees only those tools may see it: their nodes,
        the edges between them, only them in the PageRank top list (counts and density stay the
        whole graph's). Built by the same slices, neither shared nor cached.
        """
        if visible is not None:
            return await self._drive_snapshot(visible)
        task = self._snapshot_task
        if task is None or task.done():
            task = self._snapshot_task = asyncio.ensure_future(self._drive_snapshot())
        return await asyncio.shield(task)

    async def _drive_snapshot(self, visible: ToolFilter | None = None) -> bytes:
        for body in self._snapshot_steps(visible):
            if body is not None:
                return body
            await asyncio.sleep(0)  # the rest of the loop runs here
        raise AssertionError("the builder ends with the body")

    def _snapshot_key(self) -> tuple[int, int | None, int]:
        return (id(self.graph), self._last_event_id, self.grader.version)

    def _snapshot_steps(self, visible: ToolFilter | None = None) -> Iterator[bytes | None]:
        """The builder: yields None where the loop may run, and last the body.

        Consistency across the yields: edges are copied into dicts per source node; every source
        whose edges change meanwhile (``_apply_edge`` marks it) is copied again at the end, with
        the nodes, the metrics and ``last_event_id``, without yielding: the document is the graph
        as of that moment. Only then is it serialised, slice by slice (the dicts are copies).
        ``visible`` (``snapshot_json_async``) is applied at that moment too, to the copies.
        """
        key = self._snapshot_key()
        if visible is None and self._snapshot_cache is not None and self._snapshot_cache[0] == key:
            yield self._snapshot_cache[1]
            return
        graph = self.graph
        marks: set[str] = set()
        dirty = marks
        self._snapshot_dirty.append(marks)
        try:
            docs: dict[str, list[dict[str, Any]]] = {}
            copied = 0
            for source in list(graph):
                docs[source] = _edge_docs(graph, source)
                copied += len(docs[source])
                if copied >= SNAPSHOT_SLICE_EDGES:
                    copied = 0
                    yield
            # From here to the end of the copy, nothing yields: this is the moment the document shows.
            if graph is not self.graph:  # replaced meanwhile (a sync): copy the new one, at once
                graph, docs = self.graph, {}
                dirty = set(graph)
            for source in dirty:
                docs[source] = _edge_docs(graph, source)
            if sum(map(len, docs.values())) != graph.number_of_edges():  # changed past _apply_edge's marks
                docs = {source: _edge_docs(graph, source) for source in graph}
            key = self._snapshot_key()
            last_event_id = self._last_event_id
            metrics = self.metrics
            pagerank = metrics.pagerank if metrics else {}
            communities = metrics.communities if metrics else {}
            nodes = [
                {"id": node, "server": attrs.get("server"), "pagerank": pagerank.get(node), "community": communities.get(node)}
                for node, attrs in graph.nodes(data=True)
                if visible is None or visible(node, attrs.get("server"))
            ]
            shown = None if visible is None else {node["id"] for node in nodes}
            order = list(graph) if shown is None else [node for node in graph if node in shown]
            metrics_doc = {**metrics.model_dump(mode="json"), "suggestions": self.grader.stats().model_dump()} if metrics else None
            if metrics_doc is not None and shown is not None:
                metrics_doc["pagerank_top_10"] = [e for e in metrics_doc["pagerank_top_10"] if e["tool_id"] in shown]
        finally:
            self._snapshot_dirty.remove(marks)
        # pydantic-core writes datetimes exactly as the models do; the edge list goes out in slices,
        # and the copies are dropped as they go (freeing 100k dicts at once is a stall of its own).
        parts = [b'{"last_event_id":', to_json(last_event_id), b',"nodes":', to_json(nodes), b',"edges":[']
        del nodes
        batch: list[dict[str, Any]] = []
        for node in order:
            edges_of = docs.pop(node, ())
            batch += edges_of if shown is None else [e for e in edges_of if e["to_tool_id"] in shown]
            if len(batch) >= SNAPSHOT_SLICE_EDGES:
                parts += (to_json(batch)[1:-1], b",")
                batch = []
                yield
        if batch:
            parts.append(to_json(batch)[1:-1])
        elif parts[-1] == b",":
            parts.pop()
        parts += [b'],"metrics":', to_json(metrics_doc), b"}"]
        body = b"".join(parts)
        if shown is not None:
            yield body  # one viewer's document: not the cache's, and no freeze for it
            return
        self._snapshot_cache = (key, body)
        edges = graph.number_of_edges()
        if edges >= max(FREEZE_AFTER_EDGES, 2 * self._frozen_edges):
            # The graph grew large since start-up: freeze it, so full collections stop walking it.
            # Not collected first (that full walk is the stall this avoids): garbage alive right
            # now is pinned too, which is bounded because this happens once per doubling.
            self._frozen_edges = edges
            gc.freeze()
        yield body

    def snapshot(self) -> GraphSnapshot:
        """The graph as models (the ``GET /graph`` document, parsed): one builder serves both."""
        return GraphSnapshot.model_validate_json(self.snapshot_json())
