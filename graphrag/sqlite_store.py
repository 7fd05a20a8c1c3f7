"""The embedded default store: one SQLite file (WAL), versioned schema, append-only event log.

Durability: WAL with ``synchronous=NORMAL`` keeps every committed transaction across a crash of
the process (SIGKILL included); only a power loss may lose the last transactions, and never
half of one. The engine emits an execution's events only after ``record_executions`` committed.

Ids: the log's ``INTEGER PRIMARY KEY AUTOINCREMENT`` never reuses an id, even after pruning, and
SQLite has one writer at a time, so ids are assigned in commit order.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from .events import EventPayload, GraphEvent
from .learning import EdgeState, TransitionState
from .store import ExecutionRecord, LogBounds, StoredGraph, ToolsRecord

SCHEMA_VERSION = 2

_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE nodes (tool_id TEXT PRIMARY KEY, server TEXT) WITHOUT ROWID;
CREATE TABLE edges (
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
CREATE TABLE executions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id TEXT NOT NULL,
    success INTEGER NOT NULL,
    execution_time_ms REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    data TEXT NOT NULL
);
"""

#: Version 2: second-order evidence for suggestions (graphrag/learning.py ``TransitionState``),
#: written in the same transaction as the execution and its edges.
_SCHEMA_V2 = """
CREATE TABLE transitions (
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
_AVAILABLE_TOOLS = "CREATE TABLE IF NOT EXISTS available_tools (tool_id TEXT PRIMARY KEY, server TEXT NOT NULL) WITHOUT ROWID"


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
            self._db.execute("PRAGMA synchronous=NORMAL")
            # Checkpoint (the only fsync in WAL mode) every ~40 MB of log rather than every ~4 MB:
            # the commit that triggers it runs on the event loop and pays for it.
            self._db.execute("PRAGMA wal_autocheckpoint=10000")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._epoch = self._migrate()
            self._db.execute(_AVAILABLE_TOOLS)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"db: {self.path} is not a usable SQLite database ({exc})") from exc
        self._appended_since_prune = 0

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
                + f"INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'), ('epoch', '{epoch}');"
                + "COMMIT;"
            )
            return epoch
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
            nodes = dict(self._db.execute("SELECT tool_id, server FROM nodes").fetchall())
            edges = [
                EdgeState(
                    source=row[0],
                    target=row[1],
                    edge_type=row[2],
                    observed_count=row[3],
                    success_count=row[4],
                    failure_count=row[5],
                    confidence=row[6],
                    last_observed=datetime.fromisoformat(row[7]),
                )
                for row in self._db.execute(
                    "SELECT from_tool_id, to_tool_id, edge_type, observed_count, success_count, failure_count,"
                    " confidence, last_observed FROM edges"
                )
            ]
            paths = [TransitionState(*row) for row in self._db.execute("SELECT * FROM transitions")]
            return StoredGraph(nodes, edges, self._bounds(), paths)

    def events_after(self, after_id: int, limit: int = 1000) -> list[GraphEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, type, data FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        return [GraphEvent.model_validate({"id": i, "type": t, "data": json.loads(d)}) for i, t, d in rows]

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

    def workflow_ids(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT workflow_id FROM executions ORDER BY seq")]

    # -- writes ---------------------------------------------------------------------------
    def record_executions(self, records: Sequence[ExecutionRecord]) -> list[list[GraphEvent]]:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO executions (workflow_id, success, execution_time_ms, body) VALUES (?, ?, ?, ?)",
                    [
                        (r.execution.workflow_id, int(r.execution.success), r.execution.execution_time_ms, r.execution.model_dump_json())
                        for r in records
                    ],
                )
                new_nodes = [item for r in records for item in r.nodes.items()]
                if new_nodes:
                    db.executemany("INSERT OR IGNORE INTO nodes (tool_id, server) VALUES (?, ?)", new_nodes)
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
                            e.last_observed.isoformat(),
                        )
                        for r in records
                        for e in r.edges
                    ],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO transitions VALUES (?, ?, ?, ?, ?)",
                    [(t.first, t.second, t.third, t.observed_count, t.success_count) for r in records for t in r.transitions],
                )
                events = self._insert_events([p for r in records for p in r.payloads])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        stored, start = [], 0
        for r in records:
            stored.append(events[start : start + len(r.payloads)])
            start += len(r.payloads)
        return stored

    def append_events(self, payloads: Sequence[EventPayload]) -> list[GraphEvent]:
        with self._transaction():
            return self._insert_events(payloads)

    def record_tools(self, record: ToolsRecord) -> list[GraphEvent]:
        with self._transaction() as db:
            db.executemany(
                "DELETE FROM available_tools WHERE tool_id = ? AND server = ?",
                [(tool_id, record.server) for tool_id in record.removed],
            )
            db.executemany(
                "INSERT OR REPLACE INTO available_tools (tool_id, server) VALUES (?, ?)",
                [(tool_id, record.server) for tool_id in record.added],
            )
            return self._insert_events(record.payloads)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock: committed on exit, rolled back on any error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

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

    def close(self) -> None:
        with self._lock:
            self._db.close()
