"""The embedded default store: one SQLite file (WAL), versioned schema, append-only event log.

Durability: WAL with ``synchronous=FULL``: a commit is on disk (fsync'd) before the engine emits
its events, across a crash of the process or of the OS, never half of one. That fsync is the floor
of a producer awaiting each execution: 110-200 µs on the 2-core machine, against ~10 µs for the
whole transaction with ``NORMAL`` (bench/README.md, table (a'')); the engine's group commit shares
it among the executions submitted in one event-loop turn.

Ids: the log's ``INTEGER PRIMARY KEY AUTOINCREMENT`` never reuses an id, even after pruning, and
SQLite has one writer at a time, so ids are assigned in commit order.

Several processes on one file (two ``serve``, or Claude Desktop and Cursor each running
``pml-gateway stdio`` on the default database) are replicas of one another, not rivals: every
write takes SQLite's write lock first (``BEGIN IMMEDIATE``), reads what the others committed since
this process last looked (``commit``'s catch-up), learns from the graph including it, and numbers
its events inside that transaction, so ids stay in commit order across processes. ``watch`` polls
``PRAGMA data_version`` (a counter that moves only when ANOTHER connection commits; microseconds
to read) so a follower applies the others' events within ~50 ms, and a lock on a side file
(``<db>-leader``, released by the OS when its process dies) elects the one process that emits
``metrics_updated``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from .events import EventPayload, GraphEvent
from .execution import WorkflowExecution
from .learning import TransitionState
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
    fresh_executions,
    record_executions,
    record_tools,
    split_events,
    touched,
)

SCHEMA_VERSION = 2

#: How often ``watch`` looks for other processes' commits, and how often it retries leadership.
POLL_SECONDS = 0.05
LEAD_RETRY_SECONDS = 0.5

# IF NOT EXISTS: two processes creating the same new file at once both succeed.
_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (tool_id TEXT PRIMARY KEY, server TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS edges (
    from_tool_id TEXT NOT NULL,
    to_tool_id TEXT NOT NULL,
    edge_type TEXT NOT NULL CHECK (edge_type IN ('dependency', 'sequence')),
    observed_count INTEGER NOT NULL,
    success_count INTEGER NOT NULL,
    failure_count INTEGER NOT NULL,
    confidence REAL NOT NULL,
    last_observed TEXT NOT NULL,
    PRIMARY KEY (from_tool_id, to_tool_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS executions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id TEXT NOT NULL,
    success INTEGER NOT NULL,
    execution_time_ms REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    data TEXT NOT NULL
);
"""

#: Version 2: second-order evidence for suggestions (graphrag/learning.py ``TransitionState``),
#: written in the same transaction as the execution and its edges.
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS transitions (
    first_tool_id TEXT NOT NULL,
    second_tool_id TEXT NOT NULL,
    third_tool_id TEXT NOT NULL,
    observed_count INTEGER NOT NULL,
    success_count INTEGER NOT NULL,
    PRIMARY KEY (first_tool_id, second_tool_id, third_tool_id)
) WITHOUT ROWID;
"""


#: The tools the downstream servers offer (``record_tools``). Created where missing rather than
#: by a schema version: an older pml-gateway opening the file simply ignores it.
#: Idempotent ingest looks executions up by workflow_id inside every write transaction.
_WORKFLOW_INDEX = "CREATE INDEX IF NOT EXISTS executions_by_workflow_id ON executions (workflow_id)"
_AVAILABLE_TOOLS = "CREATE TABLE IF NOT EXISTS available_tools (tool_id TEXT PRIMARY KEY, server TEXT NOT NULL) WITHOUT ROWID"
#: What pml_search_tools learned (``add_search_labels``): the words of a search, and the tool called after it.
_SEARCH_LABELS = (
    "CREATE TABLE IF NOT EXISTS search_labels (seq INTEGER PRIMARY KEY AUTOINCREMENT, tool_id TEXT NOT NULL, words TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS search_labels_by_tool ON search_labels (tool_id, seq)",
)
#: The gateway's traces still open (``save_open_traces``), created where missing like the above.
_OPEN_TRACES = (
    "CREATE TABLE IF NOT EXISTS open_traces (trace_id TEXT PRIMARY KEY, body TEXT NOT NULL, updated_at REAL NOT NULL)"
)



@contextmanager
def _unavailable_on_storage_errors(path: str) -> Iterator[None]:
    """Disk full, a read-only or failing filesystem, damaged pages: ``StoreUnavailable`` naming the
    cause (the gateway answers 503 and says so in /health), never a bare ``sqlite3`` error."""
    try:
        yield
    except sqlite3.DatabaseError as exc:  # OperationalError (full, read-only, I/O) and corruption
        raise StoreUnavailable(f"{path}: {exc}") from exc


def _event(row: Sequence[Any]) -> GraphEvent:
    return GraphEvent.model_validate({"id": row[0], "type": row[1], "data": json.loads(row[2])})


class StoreError(RuntimeError):
    """The database file cannot be used (newer schema, not a pml-gateway database, ...)."""


class SQLiteStore:
    """Nodes, edges, executions and the event log in one SQLite file (or ``":memory:"``).

    ``max_events`` bounds the log: older events are pruned in batches, and a client asking to
    replay from before the oldest kept id gets a reset.
    """

    def __init__(self, path: str | Path, *, max_events: int = 1_000_000) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._max_events = max_events
        self._lock = threading.Lock()  # one connection, shared by the loop and replay threads
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the engine emits its events, so what a client saw
            # survives an OS crash too, not only a process crash (NORMAL lost 100 of 100 acknowledged
            # writes on a forced read-only remount). The group commit pays one fsync per event-loop
            # turn: 16 concurrent producers 7,139 -> 6,512 executions/s (bench/README.md, "Durability").
            self._db.execute("PRAGMA synchronous=FULL")
            # Checkpoint (the only fsync in WAL mode) every ~40 MB of log rather than every ~4 MB:
            # the commit that triggers it runs on the event loop and pays for it.
            self._db.execute("PRAGMA wal_autocheckpoint=10000")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._epoch = self._migrate()
            self._db.execute(_AVAILABLE_TOOLS)
            self._db.execute(_WORKFLOW_INDEX)
            self._db.execute(_OPEN_TRACES)
            for statement in _SEARCH_LABELS:
                self._db.execute(statement)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"db: {self.path} is not a usable SQLite database ({exc})") from exc
        self._appended_since_prune = 0
        self._data_version: int | None = None
        self._leader_file: Any = None  # the open side file whose lock makes this process the leader

    # -- schema ---------------------------------------------------------------------------
    def _migrate(self) -> str:
        db = self._db
        has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            other = db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
            if other:
                raise StoreError(f"db: {self.path} holds other tables: not a pml-gateway database")
            epoch = uuid.uuid4().hex  # hex only: safe to inline in the script
            db.executescript(
                "BEGIN IMMEDIATE;"
                + _SCHEMA_V1
                + _SCHEMA_V2
                + f"INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'), ('epoch', '{epoch}');"
                + "COMMIT;"
            )
        version = int(db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"db: {self.path} has schema version {version}; this pml-gateway knows up to {SCHEMA_VERSION}: upgrade it"
            )
        # One `if version < N:` step per migration.
        if version < 2:
            db.executescript(
                "BEGIN IMMEDIATE;" + _SCHEMA_V2 + "UPDATE meta SET value = '2' WHERE key = 'schema_version';COMMIT;"
            )
        return str(db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0])

    # -- reads ----------------------------------------------------------------------------
    def load(self) -> StoredGraph:
        with self._lock:
            self._db.execute("BEGIN")  # one snapshot: another process may be committing meanwhile
            try:
                nodes = dict(self._db.execute("SELECT tool_id, server FROM nodes").fetchall())
                edges = [edge_from_row(row) for row in self._db.execute(f"SELECT {EDGE_COLUMNS} FROM edges")]
                return StoredGraph(nodes, edges, self._bounds(), self._transitions())
            finally:
                self._db.execute("COMMIT")

    def _transitions(self, where: str = "", args: Sequence[Any] = ()) -> list[TransitionState]:
        return [
            TransitionState(*row)
            for row in self._db.execute(
                "SELECT first_tool_id, second_tool_id, third_tool_id, observed_count, success_count FROM transitions" + where,
                args,
            )
        ]

    def events_after(self, after_id: int, limit: int = 1000) -> list[GraphEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, type, data FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        return [_event(row) for row in rows]

    def bounds(self) -> LogBounds:
        with self._lock:
            return self._bounds()

    def _bounds(self) -> LogBounds:
        oldest, last = self._db.execute("SELECT min(id), max(id) FROM events").fetchone()
        if last is None:  # empty log: ids still continue after what was pruned
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
            return LogBounds(self._epoch, None, row[0] if row else None)
        return LogBounds(self._epoch, oldest, last)

    def available_tools(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT tool_id, server FROM available_tools").fetchall())

    def execution_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM executions").fetchone()[0])

    def _recorded(self, workflow_ids: list[str]) -> set[str]:
        """Which of these executions are already recorded (inside the write transaction)."""
        found: set[str] = set()
        for start in range(0, len(workflow_ids), 500):  # SQLite's bound-parameter limit
            chunk = workflow_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(row[0] for row in self._db.execute(f"SELECT workflow_id FROM executions WHERE workflow_id IN ({marks})", chunk))
        return found

    def workflow_ids(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT workflow_id FROM executions ORDER BY seq")]

    # -- writes ---------------------------------------------------------------------------
    def commit(
        self, executions: Sequence[WorkflowExecution], plan: Plan, *, after_id: int | None = None
    ) -> tuple[CatchUp, list[list[GraphEvent]]]:
        with self._lock, _unavailable_on_storage_errors(self.path):
            db = self._db
            db.execute("BEGIN IMMEDIATE")  # SQLite's write lock, across processes: ids in commit order
            try:
                caught = self._catch_up(after_id) if after_id is not None else CatchUp()
                records = plan(caught, fresh_executions(executions, self._recorded))
                for forget in [r.forget for r in records if r.forget is not None]:
                    self._forget(forget)
                done = [r.execution for r in records if r.execution is not None]
                if done:
                    db.executemany(
                        "INSERT INTO executions (workflow_id, success, execution_time_ms, body) VALUES (?, ?, ?, ?)",
                        [(e.workflow_id, int(e.success), e.execution_time_ms, e.model_dump_json()) for e in done],
                    )
                new_nodes = [item for r in records for item in r.nodes.items()]
                if new_nodes:
                    db.executemany("INSERT OR IGNORE INTO nodes (tool_id, server) VALUES (?, ?)", new_nodes)
                stamps: dict[Any, str] = {}  # a learning step's edges share one timestamp: format it once
                db.executemany(
                    "INSERT OR REPLACE INTO edges VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            e.source,
                            e.target,
                            e.edge_type,
                            e.observed_count,
                            e.success_count,
                            e.failure_count,
                            e.confidence,
                            stamps.get(e.last_observed) or stamps.setdefault(e.last_observed, e.last_observed.isoformat()),
                        )
                        for r in records
                        for e in r.edges
                    ],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO transitions VALUES (?, ?, ?, ?, ?)",
                    [(t.first, t.second, t.third, t.observed_count, t.success_count) for r in records for t in r.transitions],
                )
                for tools in [r.tools for r in records if r.tools is not None]:
                    db.executemany(
                        "DELETE FROM available_tools WHERE tool_id = ? AND server = ?",
                        [(tool_id, tools.server) for tool_id in tools.removed],
                    )
                    db.executemany(
                        "INSERT OR REPLACE INTO available_tools (tool_id, server) VALUES (?, ?)",
                        [(tool_id, tools.server) for tool_id in tools.added],
                    )
                events = self._insert_events([p for r in records for p in r.payloads])
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # a failed COMMIT may have ended it already: never mask the cause
                    db.execute("ROLLBACK")
                raise
        return caught, split_events(records, events)

    def _forget(self, forget: ForgetRecord) -> None:
        """Delete learned history inside the write transaction (``ForgetRecord``)."""
        tool_id = forget.tool_id
        if tool_id is None:  # the reset event is numbered after these: ids go on (sqlite_sequence)
            for table in ("nodes", "edges", "transitions", "executions", "events", "search_labels"):
                self._db.execute(f"DELETE FROM {table}")
            return
        self._db.execute("DELETE FROM nodes WHERE tool_id = ?", (tool_id,))
        self._db.execute("DELETE FROM search_labels WHERE tool_id = ?", (tool_id,))
        self._db.execute("DELETE FROM edges WHERE from_tool_id = ?1 OR to_tool_id = ?1", (tool_id,))
        self._db.execute(
            "DELETE FROM transitions WHERE first_tool_id = ?1 OR second_tool_id = ?1 OR third_tool_id = ?1", (tool_id,)
        )

    def record_executions(self, records: Sequence[ExecutionRecord]) -> list[list[GraphEvent]]:
        return record_executions(self, records)

    def append_events(self, payloads: Sequence[EventPayload]) -> list[GraphEvent]:
        return append_events(self, payloads)

    def record_tools(self, record: ToolsRecord) -> list[GraphEvent]:
        return record_tools(self, record)

    def _insert_events(self, payloads: Sequence[EventPayload]) -> list[GraphEvent]:
        # Inside the write transaction: nobody else can take ids, so number them here and insert
        # them in one statement. AUTOINCREMENT's counter follows explicit ids.
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        first = (row[0] if row else 0) + 1
        stored = [GraphEvent.stored(payload, first + offset) for offset, payload in enumerate(payloads)]
        self._db.executemany(
            "INSERT INTO events (id, type, data) VALUES (?, ?, ?)", [(e.id, e.type, e.data_json()) for e in stored]
        )
        self._appended_since_prune += len(stored)
        if self._appended_since_prune >= max(1000, self._max_events // 100):
            self._appended_since_prune = 0
            self._db.execute("DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?", (self._max_events,))
        return stored

    # -- open traces (pml_gateway/proxy/traces.py) ------------------------------------------
    def save_open_traces(self, saved: Mapping[str, str], dropped: Sequence[str], now: float) -> None:
        with self._lock, _unavailable_on_storage_errors(self.path):
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT OR REPLACE INTO open_traces VALUES (?, ?, ?)", [(k, b, now) for k, b in saved.items()])
                db.executemany("DELETE FROM open_traces WHERE trace_id = ?", [(k,) for k in dropped])
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    # -- search labels (pml_gateway/proxy/search.py) -----------------------------------------
    def add_search_labels(self, labels: Sequence[tuple[str, str]], keep: int) -> None:
        with self._lock, _unavailable_on_storage_errors(self.path):
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO search_labels (tool_id, words) VALUES (?, ?)", labels)
                db.executemany(
                    "DELETE FROM search_labels WHERE tool_id = ?1 AND seq NOT IN"
                    " (SELECT seq FROM search_labels WHERE tool_id = ?1 ORDER BY seq DESC LIMIT ?2)",
                    [(tool_id, keep) for tool_id in sorted({tool_id for tool_id, _ in labels})],
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def search_labels(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(row[0], row[1]) for row in self._db.execute("SELECT tool_id, words FROM search_labels ORDER BY seq")]

    def stale_open_traces(self, before: float) -> dict[str, str]:
        with self._lock, _unavailable_on_storage_errors(self.path):
            return dict(self._db.execute("SELECT trace_id, body FROM open_traces WHERE updated_at < ?", (before,)).fetchall())

    # -- other processes on the same file ----------------------------------------------------
    def catch_up(self, after_id: int) -> CatchUp:
        """What other processes committed after ``after_id``, read in one snapshot."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                return self._catch_up(after_id)
            finally:
                self._db.execute("COMMIT")

    def _catch_up(self, after_id: int) -> CatchUp:
        db = self._db
        events = [_event(row) for row in db.execute("SELECT id, type, data FROM events WHERE id > ? ORDER BY id", (after_id,))]
        if not events:  # pruning keeps the newest events: none after it means nothing new
            return CatchUp()
        if events[0].id != after_id + 1 or erases(events):  # pruned past it, or history deleted: the whole graph
            nodes = dict(db.execute("SELECT tool_id, server FROM nodes").fetchall())
            edges = [edge_from_row(row) for row in db.execute(f"SELECT {EDGE_COLUMNS} FROM edges")]
            available = dict(db.execute("SELECT tool_id, server FROM available_tools").fetchall())
            return CatchUp(events, nodes, edges, full=True, transitions=self._transitions(), available=available)
        tools, keys = touched(events)
        nodes = {}
        for tool_id in tools:
            row = db.execute("SELECT server FROM nodes WHERE tool_id = ?", (tool_id,)).fetchone()
            if row is not None:
                nodes[tool_id] = row[0]
        edges = []
        for source, target in keys:
            row = db.execute(
                f"SELECT {EDGE_COLUMNS} FROM edges WHERE from_tool_id = ? AND to_tool_id = ?", (source, target)
            ).fetchone()
            if row is not None:
                edges.append(edge_from_row(row))
        # Second-order counts: an execution's paths run through its own tools only, so the
        # transitions starting at one of them and staying within them cover every one it changed
        # (states are absolute: re-reading an unchanged one is harmless).
        transitions: dict[tuple[str, str, str], TransitionState] = {}
        for event in events:
            if event.type != "workflow_executed":
                continue
            ids = set(event.data.tool_ids)  # type: ignore[attr-defined]
            for first in ids:
                for t in self._transitions(" WHERE first_tool_id = ?", (first,)):
                    if t.second in ids and t.third in ids:
                        transitions[(t.first, t.second, t.third)] = t
        return CatchUp(events, nodes, edges, transitions=list(transitions.values()))

    def _changed(self) -> bool:
        """Did another connection commit since the last look? (``PRAGMA data_version``)"""
        with self._lock:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
        changed = version != self._data_version
        self._data_version = version
        return changed

    def try_lead(self) -> bool:
        """Take the leader lock on ``<db>-leader`` if free; kept until ``close`` or process exit."""
        if self._leader_file is not None:
            return True
        if self.path == ":memory:":
            return True
        handle = open(f"{Path(self.path).expanduser()}-leader", "a+b")  # noqa: SIM115  # kept open while leading
        if not _try_lock_file(handle):
            handle.close()
            return False
        self._leader_file = handle
        return True

    async def watch(self, wake: Callable[[int | None], None], lead: Callable[[bool], None]) -> None:
        """Follow other processes on this file until cancelled: ``wake(None)`` after they commit,
        ``lead(True)`` once this process holds the leader lock."""
        leader = self.try_lead()
        lead(leader)
        self._changed()
        next_try = anyio.current_time() + LEAD_RETRY_SECONDS
        while True:
            await anyio.sleep(POLL_SECONDS)
            if self._changed():
                wake(None)
            if not leader and anyio.current_time() >= next_try:
                next_try = anyio.current_time() + LEAD_RETRY_SECONDS
                leader = self.try_lead()
                if leader:
                    lead(True)

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._leader_file is not None:
            self._leader_file.close()  # releases the lock: another process takes over
            self._leader_file = None


def _try_lock_file(handle: Any) -> bool:
    """A non-blocking exclusive lock that the OS drops when the process dies."""
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True
