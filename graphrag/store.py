"""The store seam: where the graph, the executions and the event log live.

The engine needs little of a store, so that SQLite (the embedded default), memory, and later
PostgreSQL can all sit behind it:

- ``load()``: the graph as last committed, with the log's bounds.
- ``record_executions(records)``: executions, their edge changes and their events in ONE
  transaction; returns each execution's events with their log ids. Ids are assigned in commit
  order and only grow. (A batch shares one commit: the cost of ingesting lists.)
- ``append_events(...)``: payloads of events that change no edge (``graph_synced``, ``metrics_updated``).
- ``events_after(id, limit)`` and ``bounds()``: replay for stream clients.
- ``available_tools()`` and ``record_tools(record)``: which tools the downstream servers offer
  (tool id -> server), changed together with their ``tool_added``/``tool_removed`` events, so
  that a restart with the same tools reports nothing new (a record's ``tools``, committed
  through ``commit`` like everything else).
- ``save_open_traces(saved, dropped, now)`` and ``stale_open_traces(before)``: the gateway's traces
  still open (JSON it writes and reads back), kept so that a crash does not lose them; see
  ``pml_gateway/proxy/traces.py``. Outside the log: they are not learned until recorded.
- ``commit(executions, plan, after_id=...)``: the one write path the engine uses. Inside the write
  transaction (the store's write lock held), the store first reads what OTHER processes committed
  after ``after_id`` (a ``CatchUp``), then calls ``plan`` to compute the records from a graph that
  includes it, then writes them. Several processes on one store therefore never learn from a
  stale graph and never take ids out of commit order (see ``graphrag.replication``).

Deleting learned history (an administrator forgetting one tool, or resetting the graph) is a
record of that same commit too (``ForgetRecord``, with its ``tool_forgotten``/``graph_reset``
event): other processes learn of it from the log like of anything else, and reload the whole
graph when they meet such an event (``erases``).

The log carries an ``epoch``: a Last-Event-ID from another history (a replaced database) is
recognised by comparing ids with the bounds and answered with a reset.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple, Protocol, runtime_checkable

from .events import ERASING_EVENT_TYPES, EventPayload, GraphEvent
from .execution import WorkflowExecution
from .learning import EdgeState, TransitionState


class LogBounds(NamedTuple):
    """The event log's identity and range: ``oldest_id``/``last_id`` are None while it is empty."""

    epoch: str
    oldest_id: int | None
    last_id: int | None


@dataclass
class StoredGraph:
    """Everything ``sync_from_database`` needs to rebuild the in-memory graph."""

    nodes: dict[str, str | None] = field(default_factory=dict)  # tool id -> server
    edges: list[EdgeState] = field(default_factory=list)
    bounds: LogBounds = LogBounds("", None, None)
    transitions: list[TransitionState] = field(default_factory=list)  # second-order evidence


class StoreUnavailable(RuntimeError):
    """The store cannot be reached right now (a database server down or restarting): retry later."""


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """One execution and what learning it changes, ready to be committed.

    ``execution`` is None for events that record no execution (``graph_synced``, ``metrics_updated``).
    Otherwise ``payloads`` are one edge event per entry of ``edges`` (``edges[i]`` is the state
    after ``payloads[i]``), then its ``workflow_executed``.
    """

    execution: WorkflowExecution | None
    nodes: dict[str, str | None]  # tool id -> server, inserted if new
    edges: Sequence[EdgeState]  # the edges' new states
    payloads: Sequence[EventPayload]  # its events, in order
    transitions: Sequence[TransitionState] = ()  # second-order counts' new states, same transaction
    tools: ToolsRecord | None = None  # a change of the available tools (then ``payloads`` are its events)
    forget: ForgetRecord | None = None  # learned history to delete (then ``payloads`` are its event)


@dataclass(frozen=True, slots=True)
class ToolsRecord:
    """A change of the available tools, ready to be committed with its events."""

    server: str
    added: Sequence[str]  # tool ids now offered by ``server``
    removed: Sequence[str]  # tool ids ``server`` no longer offers
    payloads: Sequence[EventPayload]  # their tool_added / tool_removed events, in order


@dataclass(frozen=True, slots=True)
class ForgetRecord:
    """Learned history to delete, committed with its ``tool_forgotten`` / ``graph_reset`` event.

    ``tool_id``: that tool's node, every edge to or from it, every second-order count naming it
    (its executions stay recorded, so a retried POST is still not learned twice). ``None``: the
    whole graph, the recorded executions and the event log before the reset event. The tools the
    servers offer (``available_tools``) are not history and stay. A store applies it before the
    other writes of the same commit; the engine commits it alone.
    """

    tool_id: str | None


def erases(events: Sequence[GraphEvent]) -> bool:
    """Do these events delete history? Then a follower reloads the whole graph (``CatchUp.full``):
    states of what they deleted are no longer in the tables to be read one by one."""
    return any(event.type in ERASING_EVENT_TYPES for event in events)


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What other processes committed after a given id: their events in id order, and the
    CURRENT state of every node and edge those events touched (states are absolute, so applying
    them twice is harmless). ``full``: the log no longer holds every event after the id (pruned,
    or a new log), so ``nodes`` and ``edges`` are the whole graph."""

    events: Sequence[GraphEvent] = ()
    nodes: Mapping[str, str | None] = field(default_factory=dict)
    edges: Sequence[EdgeState] = ()
    full: bool = False
    #: The current counts of the second-order transitions those events touched (all when ``full``).
    transitions: Sequence[TransitionState] = ()
    #: ``full`` only: the whole ``available_tools`` table (otherwise the engine applies the
    #: ``tool_added``/``tool_removed`` events themselves, in id order).
    available: Mapping[str, str] | None = None


#: ``plan(catch_up, fresh)``: the records to commit, computed once the catch-up is applied.
#: ``fresh[i]`` is False when execution i was recorded before (same ``workflow_id``, on a store
#: that ingests idempotently): it gets no record.
Plan = Callable[[CatchUp, Sequence[bool]], Sequence[ExecutionRecord]]


def fresh_executions(executions: Sequence[WorkflowExecution], known: Callable[[list[str]], set[str]]) -> list[bool]:
    """Idempotent ingest: False for an execution whose ``workflow_id`` is already recorded (``known``
    answers which of some ids are), or that came earlier in the same batch. A retried POST after a
    lost answer is not counted twice."""
    seen = known(list(dict.fromkeys(e.workflow_id for e in executions)))
    fresh = []
    for execution in executions:
        fresh.append(execution.workflow_id not in seen)
        seen.add(execution.workflow_id)
    return fresh


#: The columns of an edge row, in ``edge_from_row``'s order (both stores' ``edges`` tables).
EDGE_COLUMNS = (
    "from_tool_id, to_tool_id, edge_type, observed_count, success_count, failure_count, confidence, last_observed"
)


def edge_from_row(row: Sequence[Any]) -> EdgeState:
    """An edge row (``EDGE_COLUMNS``); ``last_observed`` as ISO text (SQLite) or a datetime (PostgreSQL)."""
    observed = row[7] if isinstance(row[7], datetime) else datetime.fromisoformat(row[7])
    observed = observed.replace(tzinfo=timezone.utc) if observed.tzinfo is None else observed
    return EdgeState(
        source=row[0],
        target=row[1],
        edge_type=row[2],
        observed_count=row[3],
        success_count=row[4],
        failure_count=row[5],
        confidence=row[6],
        last_observed=observed.astimezone(timezone.utc),  # the server's zone never leaks into /graph
    )


def is_postgres_url(db: str) -> bool:
    """Does this ``db`` setting name a PostgreSQL database (rather than a SQLite file)?"""
    return db.startswith(("postgresql://", "postgres://"))


def split_events(records: Sequence[ExecutionRecord], events: Sequence[GraphEvent]) -> list[list[GraphEvent]]:
    """The events of one commit, cut back into one list per record."""
    stored, start = [], 0
    for record in records:
        stored.append(list(events[start : start + len(record.payloads)]))
        start += len(record.payloads)
    return stored


def touched(events: Sequence[GraphEvent]) -> tuple[list[str], list[tuple[str, str]]]:
    """The tools and the edges a run of events names (what a follower must re-read)."""
    tools: dict[str, None] = {}
    keys: dict[tuple[str, str], None] = {}
    for event in events:
        data = event.data
        if event.type in ("edge_created", "edge_updated"):
            keys[(data.from_tool_id, data.to_tool_id)] = None  # type: ignore[attr-defined]
            tools[data.from_tool_id] = None  # type: ignore[attr-defined]
            tools[data.to_tool_id] = None  # type: ignore[attr-defined]
        elif event.type == "workflow_executed":
            for tool_id in data.tool_ids:  # type: ignore[attr-defined]
                tools[tool_id] = None
    return list(tools), sorted(keys)


@runtime_checkable
class GraphStore(Protocol):
    def load(self) -> StoredGraph: ...

    def commit(
        self, executions: Sequence[WorkflowExecution], plan: Plan, *, after_id: int | None = None
    ) -> tuple[CatchUp, list[list[GraphEvent]]]:
        """Catch up after ``after_id`` (None: do not), plan, write; one transaction. Returns the
        catch-up and, per planned record, its stored events."""
        ...

    def record_executions(self, records: Sequence[ExecutionRecord]) -> list[list[GraphEvent]]: ...

    def append_events(self, payloads: Sequence[EventPayload]) -> list[GraphEvent]: ...

    def events_after(self, after_id: int, limit: int = 1000) -> list[GraphEvent]: ...

    def bounds(self) -> LogBounds: ...

    def available_tools(self) -> dict[str, str]: ...

    def record_tools(self, record: ToolsRecord) -> list[GraphEvent]: ...

    # -- open traces (pml_gateway/proxy/traces.py) ------------------------------------------
    def save_open_traces(self, saved: Mapping[str, str], dropped: Sequence[str], now: float) -> None:
        """In one transaction: store each trace id's body stamped ``now`` (Unix time), delete ``dropped``."""
        ...

    def stale_open_traces(self, before: float) -> dict[str, str]:
        """The stored traces last saved before ``before`` (Unix time): trace id -> body."""
        ...

    # -- search labels (pml_gateway/proxy/search.py) -----------------------------------------
    def add_search_labels(self, labels: Sequence[tuple[str, str]], keep: int) -> None:
        """In one transaction: add these (tool id, text) labels, then keep only the newest ``keep`` of
        each tool named. Learned history like the edges: a ``ForgetRecord`` deletes a tool's, or all."""
        ...

    def search_labels(self) -> list[tuple[str, str]]:
        """Every kept label, (tool id, text), oldest first."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    """A store that forgets on exit: for tests, benchmarks and ``db=":memory:"``.

    Its event log keeps the last ``max_events`` events, so replay behaves as with a file.
    """

    def __init__(self, *, max_events: int = 100_000) -> None:
        self._epoch = uuid.uuid4().hex
        self._nodes: dict[str, str | None] = {}
        self._edges: dict[tuple[str, str], EdgeState] = {}
        self._transitions: dict[tuple[str, str, str], TransitionState] = {}
        self._events: deque[GraphEvent] = deque(maxlen=max_events)
        self._available: dict[str, str] = {}  # tool id -> server
        self._next_id = 1
        self._workflow_ids: set[str] = set()  # recorded executions: a retry is not counted twice
        self._open_traces: dict[str, tuple[str, float]] = {}  # trace id -> (body, saved at)
        self._search_labels: list[tuple[str, str]] = []  # (tool id, text), oldest first
        self._lock = threading.Lock()  # events_after may be called from a worker thread

    def load(self) -> StoredGraph:
        with self._lock:
            return StoredGraph(
                dict(self._nodes), list(self._edges.values()), self._bounds(), list(self._transitions.values())
            )

    def commit(
        self, executions: Sequence[WorkflowExecution], plan: Plan, *, after_id: int | None = None
    ) -> tuple[CatchUp, list[list[GraphEvent]]]:
        # One process owns it: nothing to catch up with.
        caught = CatchUp()
        records = plan(caught, fresh_executions(executions, self._workflow_ids.intersection))
        with self._lock:
            self._workflow_ids.update(r.execution.workflow_id for r in records if r.execution is not None)
            stored = []
            for record in records:
                if record.forget is not None:
                    self._forget(record.forget)
                for tool_id, server in record.nodes.items():
                    self._nodes.setdefault(tool_id, server)
                for edge in record.edges:
                    self._edges[(edge.source, edge.target)] = edge
                for t in record.transitions:
                    self._transitions[(t.first, t.second, t.third)] = t
                if record.tools is not None:
                    self._apply_tools(record.tools)
                stored.append(self._append(record.payloads))
            return caught, stored

    def record_executions(self, records: Sequence[ExecutionRecord]) -> list[list[GraphEvent]]:
        return record_executions(self, records)

    def append_events(self, payloads: Sequence[EventPayload]) -> list[GraphEvent]:
        return append_events(self, payloads)

    def available_tools(self) -> dict[str, str]:
        with self._lock:
            return dict(self._available)

    def record_tools(self, record: ToolsRecord) -> list[GraphEvent]:
        return record_tools(self, record)

    def _apply_tools(self, record: ToolsRecord) -> None:
        for tool_id in record.removed:
            if self._available.get(tool_id) == record.server:
                del self._available[tool_id]
        self._available.update(dict.fromkeys(record.added, record.server))

    def _forget(self, forget: ForgetRecord) -> None:
        tool_id = forget.tool_id
        if tool_id is None:
            self._nodes.clear()
            self._edges.clear()
            self._transitions.clear()
            self._workflow_ids.clear()
            self._events.clear()  # ids go on from _next_id
            self._search_labels.clear()
            return
        self._nodes.pop(tool_id, None)
        self._search_labels = [label for label in self._search_labels if label[0] != tool_id]
        self._edges = {key: edge for key, edge in self._edges.items() if tool_id not in key}
        self._transitions = {key: t for key, t in self._transitions.items() if tool_id not in key}

    def _append(self, payloads: Sequence[EventPayload]) -> list[GraphEvent]:
        stored = [GraphEvent.stored(payload, self._next_id + offset) for offset, payload in enumerate(payloads)]
        self._next_id += len(stored)
        self._events.extend(stored)
        return stored

    def events_after(self, after_id: int, limit: int = 1000) -> list[GraphEvent]:
        with self._lock:
            if not self._events:
                return []
            start = max(0, after_id + 1 - self._events[0].id)  # ids are contiguous in memory
            return [self._events[i] for i in range(start, min(len(self._events), start + limit))]

    def bounds(self) -> LogBounds:
        with self._lock:
            return self._bounds()

    def _bounds(self) -> LogBounds:
        if not self._events:
            return LogBounds(self._epoch, None, self._next_id - 1 or None)
        return LogBounds(self._epoch, self._events[0].id, self._events[-1].id)

    # -- open traces (pml_gateway/proxy/traces.py) ------------------------------------------
    def save_open_traces(self, saved: Mapping[str, str], dropped: Sequence[str], now: float) -> None:
        with self._lock:
            self._open_traces.update((trace_id, (body, now)) for trace_id, body in saved.items())
            for trace_id in dropped:
                self._open_traces.pop(trace_id, None)

    def stale_open_traces(self, before: float) -> dict[str, str]:
        with self._lock:
            return {trace_id: body for trace_id, (body, at) in self._open_traces.items() if at < before}

    # -- search labels (pml_gateway/proxy/search.py) -----------------------------------------
    def add_search_labels(self, labels: Sequence[tuple[str, str]], keep: int) -> None:
        with self._lock:
            self._search_labels += labels
            named = {tool_id for tool_id, _ in labels}
            left = {tool_id: keep for tool_id in named}
            kept = []
            for tool_id, text in reversed(self._search_labels):  # newest first: the last ``keep`` stay
                if tool_id in named:
                    if not left[tool_id]:
                        continue
                    left[tool_id] -= 1
                kept.append((tool_id, text))
            self._search_labels = kept[::-1]

    def search_labels(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._search_labels)

    def close(self) -> None:
        pass


def record_executions(store: GraphStore, records: Sequence[ExecutionRecord]) -> list[list[GraphEvent]]:
    """Commit ready-made records, without catching up (scripts, tests, benchmarks)."""
    executions = [record.execution for record in records if record.execution is not None]
    return store.commit(executions, lambda _caught, _fresh: records)[1]


def append_events(store: GraphStore, payloads: Sequence[EventPayload]) -> list[GraphEvent]:
    """Log events that record no execution, without catching up."""
    return store.commit([], lambda _caught, _fresh: [ExecutionRecord(None, {}, (), payloads)])[1][0]


def record_tools(store: GraphStore, record: ToolsRecord) -> list[GraphEvent]:
    """Commit a change of the available tools with its events, without catching up."""
    return store.commit([], lambda _caught, _fresh: [ExecutionRecord(None, {}, (), record.payloads, tools=record)])[1][0]


def apply_tool_event(available: dict[str, str], event: GraphEvent) -> bool:
    """Apply a ``tool_added``/``tool_removed`` event to a tool id -> server map (what a follower
    does with another replica's tool changes). Returns whether it was one."""
    if event.type == "tool_added":
        available[event.data.tool_id] = event.data.server  # type: ignore[attr-defined]
        return True
    if event.type == "tool_removed":
        if available.get(event.data.tool_id) == event.data.server:  # type: ignore[attr-defined]
            del available[event.data.tool_id]  # type: ignore[attr-defined]
        return True
    return False
