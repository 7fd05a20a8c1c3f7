"""PostgreSQL as the store shared by gateway replicas (``db = postgresql://...``; extra ``postgres``).

Every process pointed at one database is a replica (``graphrag.replication``); this module is the
storage side of that. What makes it correct, each point measured here (SDK_NOTES §10):

- **Ids in commit order.** A sequence is not: ``nextval`` is taken at insert time, concurrent
  writers commit out of order, and a reader "after N" loses 1.7-4.8% of events. Every transaction
  that appends to the log first takes ``pg_advisory_xact_lock(LOG_LOCK)``; it is released only
  once the commit is visible, so a transaction numbers its events after every earlier one is
  readable. Ids come from a counter row (``pml_log_head``) updated under that lock: a rolled-back
  transaction leaves no gap, a killed one leaves at most a gap, never a reordering.
- **Learning from the committed graph.** Under the same lock, ``commit`` reads what other replicas
  committed after this one's last event (a ``CatchUp``) and hands it to the engine's plan, so two
  replicas never compute an edge from the same stale count. Each log row carries the state a
  follower needs (an edge event's full edge state, an execution's new nodes), so catching up is
  one indexed query. Execution, nodes, edges and events go in ONE transaction; arrays are sent
  in binary (``%b``: no text escaping of JSON).
- **Idempotent ingest.** ``pml_executions.workflow_id`` is unique; a retried execution (same
  ``workflow_id``) inserts nothing and is planned as not fresh, so it is not counted twice.
- **No deadlocks.** Edges are upserted in sorted key order (unsorted upserts deadlocked once in
  ~3,000 executions when measured without the lock; with it they cannot, sorting keeps it so).
- **Epoch.** A new log starts its ids at the current Unix time in microseconds (~1.8e15, below
  2^53 for JavaScript's ``EventSource``), so a Last-Event-ID from another history falls outside
  ``[oldest, last]`` and the stream answers ``reset`` by itself.
- **Wake-ups.** The writer sends ``NOTIFY pml_events, '<last id>'`` in its transaction (delivered
  at commit, in commit order); ``watch`` LISTENs on a dedicated connection. A notification is only
  a wake-up: the follower reads ``WHERE id > applied ORDER BY id``, so a lost one costs latency,
  never an event. The same connection holds the session-level advisory lock that makes one replica
  the metrics leader; PostgreSQL drops it when that connection dies, and another replica takes it.

Connections: the event loop's writes and catch-ups use one dedicated connection (the engine's
learning steps never interleave, so one is enough, and a dead server is noticed at once instead of
after a pool's wait); replay reads from worker threads use a ``psycopg_pool`` pool. Every wait is
bounded (connect, lock and statement timeouts); while the server is unreachable every call raises
``StoreUnavailable`` at once, and the next one after ``RETRY_SECONDS`` reconnects.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from .events import EventPayload, GraphEvent
from .execution import WorkflowExecution
from .learning import EdgeState, TransitionState
from .sqlite_store import StoreError
from .store import (
    EDGE_COLUMNS,
    CatchUp,
    ExecutionRecord,
    ForgetRecord,
    LogBounds,
    Plan,
    StoredGraph,
    StoreUnavailable,
    ToolsRecord,
    append_events,
    edge_from_row,
    erases,
    record_executions,
    record_tools,
    split_events,
)

log = logging.getLogger(__name__)

#: 2: second-order transition counts (``pml_transitions``) and the available tools
#: (``pml_available_tools``), both written through ``commit`` and carried by the log.
SCHEMA_VERSION = 2
#: Advisory lock keys (64-bit, ASCII of their names): the log's writers, the metrics leader, migrations.
LOG_LOCK = 0x706D6C5F6C6F67  # "pml_log"
LEADER_LOCK = 0x706D6C5F6C6561  # "pml_lea"
SCHEMA_LOCK = 0x706D6C5F736368  # "pml_sch"
CHANNEL = "pml_events"

CONNECT_TIMEOUT = 3  # seconds (libpq: whole seconds)
#: After a failure, calls fail at once for this long before one tries to reconnect.
RETRY_SECONDS = 0.5
#: Server-side bounds on one session: a writer never waits forever on a stuck replica.
SESSION_OPTIONS = "-c lock_timeout=5s -c statement_timeout=15s -c idle_in_transaction_session_timeout=30s"
#: ``watch``: how long one wait for notifications lasts before it checks leadership and catches up.
WATCH_TICK = 0.5
WATCH_BACKOFF_MAX = 2.0

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS pml_meta (key text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pml_nodes (tool_id text PRIMARY KEY, server text)",
    """CREATE TABLE IF NOT EXISTS pml_edges (
        from_tool_id text NOT NULL,
        to_tool_id text NOT NULL,
        edge_type text NOT NULL CHECK (edge_type IN ('dependency', 'sequence')),
        observed_count integer NOT NULL,
        success_count integer NOT NULL,
        failure_count integer NOT NULL,
        confidence double precision NOT NULL,
        last_observed timestamptz NOT NULL,
        PRIMARY KEY (from_tool_id, to_tool_id))""",
    """CREATE TABLE IF NOT EXISTS pml_executions (
        seq bigserial PRIMARY KEY,
        workflow_id text NOT NULL UNIQUE,
        success boolean NOT NULL,
        execution_time_ms double precision NOT NULL,
        body text NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now())""",
    # ``state``: what a follower needs to apply the event without reading other tables: an edge
    # event's full edge state after it, a workflow_executed's new nodes (JSON; NULL otherwise).
    # Second-order evidence (graphrag/learning.py ``TransitionState``), as SQLite's ``transitions``.
    """CREATE TABLE IF NOT EXISTS pml_transitions (
        first_tool_id text NOT NULL,
        second_tool_id text NOT NULL,
        third_tool_id text NOT NULL,
        observed_count integer NOT NULL,
        success_count integer NOT NULL,
        PRIMARY KEY (first_tool_id, second_tool_id, third_tool_id))""",
    # The tools the downstream servers offer (``record_tools``), as SQLite's ``available_tools``.
    "CREATE TABLE IF NOT EXISTS pml_available_tools (tool_id text PRIMARY KEY, server text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pml_events (id bigint PRIMARY KEY, type text NOT NULL, data text NOT NULL, state text)",
    """CREATE TABLE IF NOT EXISTS pml_log_head (
        only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        epoch text NOT NULL,
        first_id bigint NOT NULL,
        next_id bigint NOT NULL)""",
    # The gateway's traces still open (``save_open_traces``; pml_gateway/proxy/traces.py).
    "CREATE TABLE IF NOT EXISTS pml_open_traces (trace_id text PRIMARY KEY, body text NOT NULL, updated_at double precision NOT NULL)",
    # What pml_search_tools learned (``add_search_labels``): the words of a search, the tool called after it.
    "CREATE TABLE IF NOT EXISTS pml_search_labels (seq bigserial PRIMARY KEY, tool_id text NOT NULL, words text NOT NULL)",
    "CREATE INDEX IF NOT EXISTS pml_search_labels_by_tool ON pml_search_labels (tool_id, seq)",
]

_INSERT_EXECUTIONS = (
    "INSERT INTO pml_executions (workflow_id, success, execution_time_ms, body)"
    " SELECT * FROM unnest(%b::text[], %b::bool[], %b::float8[], %b::text[])"
    " ON CONFLICT (workflow_id) DO NOTHING RETURNING workflow_id"
)
_UPSERT_EDGES = f"""
INSERT INTO pml_edges ({EDGE_COLUMNS})
SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::int4[], %b::int4[], %b::int4[], %b::float8[], %b::timestamptz[])
ON CONFLICT (from_tool_id, to_tool_id) DO UPDATE SET
    edge_type = EXCLUDED.edge_type, observed_count = EXCLUDED.observed_count,
    success_count = EXCLUDED.success_count, failure_count = EXCLUDED.failure_count,
    confidence = EXCLUDED.confidence, last_observed = EXCLUDED.last_observed
"""
_UPSERT_TRANSITIONS = """
INSERT INTO pml_transitions (first_tool_id, second_tool_id, third_tool_id, observed_count, success_count)
SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::int4[], %b::int4[])
ON CONFLICT (first_tool_id, second_tool_id, third_tool_id) DO UPDATE SET
    observed_count = EXCLUDED.observed_count, success_count = EXCLUDED.success_count
"""
_TRANSITION_COLUMNS = "first_tool_id, second_tool_id, third_tool_id, observed_count, success_count"


def _event(row: Sequence[Any]) -> GraphEvent:
    return GraphEvent.model_validate({"id": row[0], "type": row[1], "data": json.loads(row[2])})


def _fresh(executions: Sequence[WorkflowExecution], inserted: set[str]) -> list[bool]:
    """True for the first occurrence of each execution this commit inserted (the rest: retries)."""
    fresh = []
    for execution in executions:
        fresh.append(execution.workflow_id in inserted)
        inserted.discard(execution.workflow_id)  # the same id twice in one batch counts once
    return fresh


class LoggedState(BaseModel):
    """``pml_events.state``: what a follower needs to apply one event without reading other tables."""

    edge: EdgeState | None = None  # an edge event: the edge's state after it
    nodes: dict[str, str | None] | None = None  # a workflow_executed: the nodes it introduced
    #: A workflow_executed: the second-order counts it changed, after it. (``tool_added`` and
    #: ``tool_removed`` need no state: the event names the tool and its server.)
    transitions: list[TransitionState] | None = None

    @classmethod
    def of(cls, record: ExecutionRecord, index: int) -> str | None:
        """The state of payload ``index`` of ``record``, as JSON (None for other events)."""
        if record.execution is None:
            return None
        if index < len(record.edges):  # edge events come first, one per edge state, in order
            return cls(edge=record.edges[index]).model_dump_json(exclude_none=True)
        if index == len(record.payloads) - 1:  # its workflow_executed
            return cls(nodes=dict(record.nodes), transitions=list(record.transitions) or None).model_dump_json(
                exclude_none=True
            )
        return None


def _transitions(conn: psycopg.Connection[Any]) -> list[TransitionState]:
    return [TransitionState(*row) for row in conn.execute(f"SELECT {_TRANSITION_COLUMNS} FROM pml_transitions")]


def _forget(conn: psycopg.Connection[Any], forget: ForgetRecord) -> None:
    """Delete learned history inside the write transaction (``ForgetRecord``), under the log lock."""
    if forget.tool_id is None:  # ids go on from pml_log_head: the reset event is numbered after these
        # DELETE, not TRUNCATE: TRUNCATE is not MVCC-safe for replicas reading a snapshot meanwhile.
        for table in ("pml_nodes", "pml_edges", "pml_transitions", "pml_executions", "pml_events", "pml_search_labels"):
            conn.execute(f"DELETE FROM {table}")
        return
    conn.execute("DELETE FROM pml_nodes WHERE tool_id = %s", (forget.tool_id,))
    conn.execute("DELETE FROM pml_search_labels WHERE tool_id = %s", (forget.tool_id,))
    conn.execute("DELETE FROM pml_edges WHERE from_tool_id = %(t)s OR to_tool_id = %(t)s", {"t": forget.tool_id})
    conn.execute(
        "DELETE FROM pml_transitions WHERE first_tool_id = %(t)s OR second_tool_id = %(t)s OR third_tool_id = %(t)s",
        {"t": forget.tool_id},
    )


def _reason(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class PostgresStore:
    """Nodes, edges, executions and the event log in PostgreSQL, shared by every replica.

    ``max_events`` bounds the log, as for SQLite: older events are deleted in batches; a stream
    client asking for an older id gets a reset, a replica that fell further behind reloads the
    graph (``CatchUp.full``).
    """

    def __init__(self, conninfo: str, *, pool_size: int = 4, max_events: int = 1_000_000) -> None:
        self.conninfo = conninfo
        self._max_events = max_events
        self._appended_since_prune = 0
        self._connect_args: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "options": SESSION_OPTIONS,
            # Over TCP, a server that vanished without a word (a cut network) is noticed within
            # ~10 s instead of the OS's minutes (ignored on Unix sockets).
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
            "tcp_user_timeout": 10_000,
        }
        self._conn: psycopg.Connection[Any] | None = None
        # Set by ``watch``: while its own connection is down, the loop's calls fail at once
        # rather than block the event loop in a connect that cannot succeed.
        self._watched = False
        self._reachable = True
        self._retry_at = 0.0
        self._down_reason = ""
        try:
            with psycopg.connect(conninfo, **self._connect_args) as conn:
                self._epoch = self._migrate(conn)
        except psycopg.Error as exc:
            raise StoreError(f"db: cannot use PostgreSQL at {redact(conninfo)}: {_reason(exc)}") from exc
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=pool_size,
            kwargs={**self._connect_args, "autocommit": True},
            check=ConnectionPool.check_connection,
            open=False,
            name="pml-replay",
        )
        self._pool.open(wait=False)

    # -- schema ---------------------------------------------------------------------------
    def _migrate(self, conn: psycopg.Connection[Any]) -> str:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))  # replicas starting together
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO pml_meta VALUES ('schema_version', %s) ON CONFLICT DO NOTHING", (str(SCHEMA_VERSION),)
            )
            start = time.time_ns() // 1000  # the epoch: a new log's ids start at now in µs
            conn.execute(
                "INSERT INTO pml_log_head (epoch, first_id, next_id) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (uuid.uuid4().hex, start, start),
            )
            version = int(conn.execute("SELECT value FROM pml_meta WHERE key = 'schema_version'").fetchone()[0])  # type: ignore[index]
            if version < SCHEMA_VERSION:  # 1 -> 2: the new tables were created above (IF NOT EXISTS)
                conn.execute("UPDATE pml_meta SET value = %s WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"db: {redact(self.conninfo)} has schema version {version}; this pml-gateway knows up to {SCHEMA_VERSION}: upgrade it"
                )
            return str(conn.execute("SELECT epoch FROM pml_log_head").fetchone()[0])  # type: ignore[index]

    # -- connections ----------------------------------------------------------------------
    @contextmanager
    def _session(self) -> Iterator[psycopg.Connection[Any]]:
        """The event loop's connection; ``StoreUnavailable`` while the server cannot be reached."""
        conn = self._conn
        if conn is None or conn.closed:
            if time.monotonic() < self._retry_at or (self._watched and not self._reachable):
                raise StoreUnavailable(f"db: PostgreSQL unavailable: {self._down_reason}")
            try:
                conn = self._conn = psycopg.connect(self.conninfo, autocommit=True, **self._connect_args)
            except psycopg.OperationalError as exc:
                self._down(exc)
                raise StoreUnavailable(f"db: PostgreSQL unavailable: {self._down_reason}") from exc
        try:
            yield conn
        except psycopg.OperationalError as exc:  # server gone, restarting, or a timeout: retry later
            if conn.broken or conn.closed:
                conn.close()
                self._conn = None
                self._down(exc)
            raise StoreUnavailable(f"db: PostgreSQL unavailable: {_reason(exc)}") from exc

    def _down(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + RETRY_SECONDS
        self._down_reason = _reason(exc)

    @contextmanager
    def _pooled(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, for reads from worker threads (replay, load)."""
        try:
            with self._pool.connection(timeout=CONNECT_TIMEOUT) as conn:
                yield conn
        except psycopg.OperationalError as exc:  # PoolTimeout included
            raise StoreUnavailable(f"db: PostgreSQL unavailable: {_reason(exc)}") from exc

    # -- reads ----------------------------------------------------------------------------
    def load(self) -> StoredGraph:
        with self._pooled() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")  # one snapshot
            nodes = dict(conn.execute("SELECT tool_id, server FROM pml_nodes").fetchall())
            edges = [edge_from_row(row) for row in conn.execute(f"SELECT {EDGE_COLUMNS} FROM pml_edges")]
            return StoredGraph(nodes, edges, self._bounds(conn), _transitions(conn))

    def events_after(self, after_id: int, limit: int = 1000) -> list[GraphEvent]:
        with self._pooled() as conn:
            rows = conn.execute(
                "SELECT id, type, data FROM pml_events WHERE id > %s ORDER BY id LIMIT %s", (after_id, limit)
            ).fetchall()
        return [_event(row) for row in rows]

    def bounds(self) -> LogBounds:
        with self._pooled() as conn:
            return self._bounds(conn)

    def _bounds(self, conn: psycopg.Connection[Any]) -> LogBounds:
        oldest, last, next_id = conn.execute(
            "SELECT (SELECT min(id) FROM pml_events), (SELECT max(id) FROM pml_events), next_id FROM pml_log_head"
        ).fetchone()  # type: ignore[misc]
        if last is None:  # empty log: ids continue after what was taken, or after the epoch's start
            # (never None: a hub must know that ids below the epoch were never in this log)
            return LogBounds(self._epoch, None, next_id - 1)
        return LogBounds(self._epoch, oldest, last)

    def available_tools(self) -> dict[str, str]:
        with self._pooled() as conn:
            return dict(conn.execute("SELECT tool_id, server FROM pml_available_tools").fetchall())

    def execution_count(self) -> int:
        with self._pooled() as conn:
            return int(conn.execute("SELECT count(*) FROM pml_executions").fetchone()[0])  # type: ignore[index]

    def workflow_ids(self) -> list[str]:
        with self._pooled() as conn:
            return [row[0] for row in conn.execute("SELECT workflow_id FROM pml_executions ORDER BY seq")]

    # -- open traces (pml_gateway/proxy/traces.py) ------------------------------------------
    def save_open_traces(self, saved: Mapping[str, str], dropped: Sequence[str], now: float) -> None:
        with self._session() as conn, conn.transaction():
            if saved:
                conn.execute(
                    "INSERT INTO pml_open_traces SELECT t, b, %s FROM unnest(%b::text[], %b::text[]) AS u(t, b)"
                    " ON CONFLICT (trace_id) DO UPDATE SET body = EXCLUDED.body, updated_at = EXCLUDED.updated_at",
                    (now, sorted(saved), [saved[k] for k in sorted(saved)]),
                )
            if dropped:
                conn.execute("DELETE FROM pml_open_traces WHERE trace_id = ANY(%s)", (sorted(dropped),))

    def stale_open_traces(self, before: float) -> dict[str, str]:
        with self._session() as conn:
            return dict(conn.execute("SELECT trace_id, body FROM pml_open_traces WHERE updated_at < %s", (before,)).fetchall())

    # -- search labels (pml_gateway/proxy/search.py) -----------------------------------------
    def add_search_labels(self, labels: Sequence[tuple[str, str]], keep: int) -> None:
        with self._session() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO pml_search_labels (tool_id, words) SELECT t, w FROM unnest(%s::text[], %s::text[]) AS u(t, w)",
                ([tool_id for tool_id, _ in labels], [words for _, words in labels]),
            )
            conn.execute(
                "DELETE FROM pml_search_labels AS l USING (SELECT seq, row_number() OVER"
                " (PARTITION BY tool_id ORDER BY seq DESC) AS newer FROM pml_search_labels WHERE tool_id = ANY(%s)) AS r"
                " WHERE l.seq = r.seq AND r.newer > %s",
                (sorted({tool_id for tool_id, _ in labels}), keep),
            )

    def search_labels(self) -> list[tuple[str, str]]:
        with self._session() as conn:
            return [(row[0], row[1]) for row in conn.execute("SELECT tool_id, words FROM pml_search_labels ORDER BY seq")]

    # -- writes ---------------------------------------------------------------------------
    def commit(
        self, executions: Sequence[WorkflowExecution], plan: Plan, *, after_id: int | None = None
    ) -> tuple[CatchUp, list[list[GraphEvent]]]:
        # Every statement takes its snapshot when it starts, i.e. after the lock was granted.
        # (psycopg's pipeline mode, tried here to save round trips under the lock, was slower.)
        with self._session() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOG_LOCK,))
            head = conn.execute("SELECT next_id FROM pml_log_head")
            inserted = conn.execute(
                _INSERT_EXECUTIONS,
                (
                    [e.workflow_id for e in executions],
                    [e.success for e in executions],
                    [e.execution_time_ms for e in executions],
                    [e.model_dump_json() for e in executions],
                ),
            )
            newer = None
            if after_id is not None:
                newer = conn.execute("SELECT id, type, data, state FROM pml_events WHERE id > %s ORDER BY id", (after_id,))
            first = int(head.fetchone()[0])  # type: ignore[index]
            fresh = _fresh(executions, {row[0] for row in inserted.fetchall()})
            caught = self._caught_up(conn, newer.fetchall(), after_id) if newer is not None and after_id is not None else CatchUp()
            records = plan(caught, fresh)
            events = self._write(conn, records, first)
        return caught, split_events(records, events)

    def _write(self, conn: psycopg.Connection[Any], records: Sequence[ExecutionRecord], first: int) -> list[GraphEvent]:
        """Queue the writes (no result awaited): nodes, edges in key order, the log, NOTIFY."""
        for forget in [r.forget for r in records if r.forget is not None]:
            _forget(conn, forget)
        nodes = sorted({tool_id: server for r in records for tool_id, server in r.nodes.items()}.items())
        if nodes:
            conn.execute(
                "INSERT INTO pml_nodes (tool_id, server) SELECT * FROM unnest(%b::text[], %b::text[]) ON CONFLICT DO NOTHING",
                ([n for n, _ in nodes], [server for _, server in nodes]),
            )
        # The last state of each edge in the batch, in key order: a fixed lock order, no deadlock.
        edges = sorted({(e.source, e.target): e for r in records for e in r.edges}.items())
        if edges:
            conn.execute(
                _UPSERT_EDGES,
                (
                    [k[0] for k, _ in edges],
                    [k[1] for k, _ in edges],
                    [e.edge_type for _, e in edges],
                    [e.observed_count for _, e in edges],
                    [e.success_count for _, e in edges],
                    [e.failure_count for _, e in edges],
                    [e.confidence for _, e in edges],
                    [e.last_observed for _, e in edges],
                ),
            )
        # Second-order counts likewise: the last state of each, in key order.
        paths = sorted({(t.first, t.second, t.third): t for r in records for t in r.transitions}.items())
        if paths:
            conn.execute(
                _UPSERT_TRANSITIONS,
                (
                    [k[0] for k, _ in paths],
                    [k[1] for k, _ in paths],
                    [k[2] for k, _ in paths],
                    [t.observed_count for _, t in paths],
                    [t.success_count for _, t in paths],
                ),
            )
        for tools in [r.tools for r in records if r.tools is not None]:
            if tools.removed:
                conn.execute(
                    "DELETE FROM pml_available_tools WHERE server = %s AND tool_id = ANY(%s)",
                    (tools.server, sorted(tools.removed)),
                )
            if tools.added:
                conn.execute(
                    "INSERT INTO pml_available_tools (tool_id, server) SELECT t, %s FROM unnest(%b::text[]) AS t"
                    " ON CONFLICT (tool_id) DO UPDATE SET server = EXCLUDED.server",
                    (tools.server, sorted(tools.added)),
                )
        stored: list[GraphEvent] = []
        states: list[str | None] = []
        for record in records:
            for index, payload in enumerate(record.payloads):
                stored.append(GraphEvent.stored(payload, first + len(stored)))
                states.append(LoggedState.of(record, index))
        if stored:
            conn.execute("UPDATE pml_log_head SET next_id = %s", (first + len(stored),))
            conn.execute(
                "INSERT INTO pml_events (id, type, data, state) SELECT * FROM unnest(%b::int8[], %b::text[], %b::text[], %b::text[])",
                ([e.id for e in stored], [e.type for e in stored], [e.data_json() for e in stored], states),
            )
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(stored[-1].id)))  # delivered at commit
            self._appended_since_prune += len(stored)
            if self._appended_since_prune >= max(1000, self._max_events // 100):  # in batches, as SQLite does
                self._appended_since_prune = 0
                conn.execute("DELETE FROM pml_events WHERE id <= %s", (stored[-1].id - self._max_events,))
        return stored

    def record_executions(self, records: Sequence[ExecutionRecord]) -> list[list[GraphEvent]]:
        return record_executions(self, records)

    def append_events(self, payloads: Sequence[EventPayload]) -> list[GraphEvent]:
        return append_events(self, payloads)

    def record_tools(self, record: ToolsRecord) -> list[GraphEvent]:
        return record_tools(self, record)

    # -- following the other replicas -----------------------------------------------------
    def catch_up(self, after_id: int) -> CatchUp:
        """What other replicas committed after ``after_id``: one query (the log carries the states)."""
        with self._session() as conn:
            rows = conn.execute(
                "SELECT id, type, data, state FROM pml_events WHERE id > %s ORDER BY id", (after_id,)
            ).fetchall()
            return self._caught_up(conn, rows, after_id)

    def _caught_up(self, conn: psycopg.Connection[Any], rows: Sequence[Sequence[Any]], after_id: int) -> CatchUp:
        if not rows:
            return CatchUp()
        events = [_event(row) for row in rows]
        # A new log (the epoch), ids it never saw, or deleted history (whose logged states are
        # stale): take the whole graph.
        if events[0].id != after_id + 1 or erases(events):
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                nodes = dict(conn.execute("SELECT tool_id, server FROM pml_nodes").fetchall())
                edges = [edge_from_row(row) for row in conn.execute(f"SELECT {EDGE_COLUMNS} FROM pml_edges")]
                paths = _transitions(conn)
                available = dict(conn.execute("SELECT tool_id, server FROM pml_available_tools").fetchall())
            return CatchUp(events, nodes, edges, full=True, transitions=paths, available=available)
        nodes: dict[str, str | None] = {}
        changed: dict[tuple[str, str], EdgeState] = {}
        changed_paths: dict[tuple[str, str, str], TransitionState] = {}
        for event, row in zip(events, rows):
            if row[3] is None:
                continue
            state = LoggedState.model_validate_json(row[3])
            if state.nodes is not None:
                nodes.update(state.nodes)
            if state.edge is not None:
                changed[(state.edge.source, state.edge.target)] = state.edge
            for t in state.transitions or ():
                changed_paths[(t.first, t.second, t.third)] = t
        return CatchUp(events, nodes, list(changed.values()), transitions=list(changed_paths.values()))

    async def watch(self, wake: Callable[[int | None], None], lead: Callable[[bool], None]) -> None:
        """Follow the other replicas until cancelled; reconnects by itself.

        ``wake(last_id)`` on each NOTIFY (``wake(None)`` after (re)connecting and every
        ``WATCH_TICK``: a safety net that costs one indexed query); ``lead(True/False)`` as the
        leader lock is won or lost with this connection.
        """
        delay = 0.1
        leader = False
        self._watched = True
        while True:
            try:
                with anyio.fail_after(CONNECT_TIMEOUT + 1):
                    conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True, **self._connect_args)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if not self._reachable:
                        log.warning("replica: PostgreSQL reachable again; following the log")
                    self._reachable, self._down_reason = True, ""
                    delay = 0.1
                    while True:
                        if not leader:
                            row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,))).fetchone()
                            leader = bool(row and row[0])
                            lead(leader)
                        wake(None)
                        async for note in conn.notifies(timeout=WATCH_TICK):
                            wake(int(note.payload) if note.payload.isdigit() else None)
                        await conn.execute("SELECT 1")  # a dead server shows here even when idle
            except (psycopg.Error, OSError, TimeoutError) as exc:
                self._reachable = False
                if self._down_reason != _reason(exc):  # one line per cause, not one per retry
                    log.warning("replica: lost PostgreSQL (%s); reconnecting", _reason(exc))
                self._down(exc)
            if leader:
                leader = False
                lead(False)  # the lock went with the connection
            await anyio.sleep(delay)
            delay = min(delay * 2, WATCH_BACKOFF_MAX)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._pool.close()


def redact(conninfo: str) -> str:
    """The URL without its password (for messages)."""
    parts = urlsplit(conninfo)
    if parts.password is None:
        return conninfo
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
