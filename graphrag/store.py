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
  that a restart with the same tools reports nothing new.

The log carries an ``epoch``: a Last-Event-ID from another history (a replaced database) is
recognised by comparing ids with the bounds and answered with a reset.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

from .events import EventPayload, GraphEvent
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


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """One execution and what learning it changes, ready to be committed."""

    execution: WorkflowExecution
    nodes: dict[str, str | None]  # tool id -> server, inserted if new
    edges: Sequence[EdgeState]  # the edges' new states
    payloads: Sequence[EventPayload]  # its events, in order
    transitions: Sequence[TransitionState] = ()  # second-order counts' new states, same transaction


@dataclass(frozen=True, slots=True)
class ToolsRecord:
    """A change of the available tools, ready to be committed with its events."""

    server: str
    added: Sequence[str]  # tool ids now offered by ``server``
    removed: Sequence[str]  # tool ids ``server`` no longer offers
    payloads: Sequence[EventPayload]  # their tool_added / tool_removed events, in order


@runtime_checkable
class GraphStore(Protocol):
    def load(self) -> StoredGraph: ...

    def record_executions(self, records: Sequence[ExecutionRecord]) -> list[list[GraphEvent]]: ...

    def append_events(self, payloads: Sequence[EventPayload]) -> list[GraphEvent]: ...

    def events_after(self, after_id: int, limit: int = 1000) -> list[GraphEvent]: ...

    def bounds(self) -> LogBounds: ...

    def available_tools(self) -> dict[str, str]: ...

    def record_tools(self, record: ToolsRecord) -> list[GraphEvent]: ...

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
        self._lock = threading.Lock()  # events_after may be called from a worker thread

    def load(self) -> StoredGraph:
        with self._lock:
            return StoredGraph(
                dict(self._nodes), list(self._edges.values()), self._bounds(), list(self._transitions.values())
            )

    def record_executions(self, records: Sequence[ExecutionRecord]) -> list[list[GraphEvent]]:
        with self._lock:
            stored = []
            for record in records:
                for tool_id, server in record.nodes.items():
                    self._nodes.setdefault(tool_id, server)
                for edge in record.edges:
                    self._edges[(edge.source, edge.target)] = edge
                for t in record.transitions:
                    self._transitions[(t.first, t.second, t.third)] = t
                stored.append(self._append(record.payloads))
            return stored

    def append_events(self, payloads: Sequence[EventPayload]) -> list[GraphEvent]:
        with self._lock:
            return self._append(payloads)

    def available_tools(self) -> dict[str, str]:
        with self._lock:
            return dict(self._available)

    def record_tools(self, record: ToolsRecord) -> list[GraphEvent]:
        with self._lock:
            for tool_id in record.removed:
                if self._available.get(tool_id) == record.server:
                    del self._available[tool_id]
            self._available.update(dict.fromkeys(record.added, record.server))
            return self._append(record.payloads)

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

    def close(self) -> None:
        pass
