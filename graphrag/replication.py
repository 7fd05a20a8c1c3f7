"""Every process on a shared store is a replica: it follows the log that all of them write.

One engine per process keeps the graph in memory; the store (a PostgreSQL database, or one SQLite
file opened by several processes) holds the one log they share. A ``Replica`` keeps its engine in
step with that log:

- **Follow.** The store's ``watch`` wakes it when others commit (PostgreSQL: LISTEN/NOTIFY,
  ~2 ms; SQLite: ``PRAGMA data_version`` polled every 50 ms). It then reads
  ``WHERE id > applied ORDER BY id`` with the current state of what those events touched, applies
  that to the in-memory graph and emits the events to the engine's listeners (the hub) with
  their ids: every replica's stream carries every event, same ids, same order.
- **Write.** A replica's own writes go through ``GraphStore.commit``, which catches up under the
  store's write lock first; its own events are emitted at once and advance ``applied``, so the
  follower never applies them twice (a NOTIFY naming an id already applied is ignored).
- **Lead.** Exactly one replica logs ``metrics_updated`` per window: the one holding the store's
  leader lock (PostgreSQL: a session-level advisory lock on the watch connection; SQLite: a lock
  on ``<db>-leader``). Losing the connection loses the lock, and another replica takes it within
  ~``WATCH_TICK``. The others compute the same metrics locally (for ``/graph`` and the MCP tools)
  without logging them, and relay the leader's event from the log.

Nothing here knows HTTP or MCP: the app's lifespan starts ``Replica.run`` in its task group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import anyio

from .engine import GraphRAGEngine
from .store import CatchUp, GraphStore, StoreUnavailable

log = logging.getLogger(__name__)


@runtime_checkable
class SharedStore(GraphStore, Protocol):
    """A store that other processes may write too (``SQLiteStore``, ``PostgresStore``)."""

    def catch_up(self, after_id: int) -> CatchUp:
        """Others' events after ``after_id`` and the current state of what they touched."""
        ...

    async def watch(self, wake: Callable[[int | None], None], lead: Callable[[bool], None]) -> None:
        """Until cancelled: ``wake(last_id or None)`` when the log may have grown; ``lead(bool)``
        when this process wins or loses the leader lock. Reconnects by itself."""
        ...


class Replica:
    """Keeps ``engine`` in step with the other processes on its shared store."""

    def __init__(self, engine: GraphRAGEngine, store: SharedStore) -> None:
        self.engine = engine
        self.store = store
        self.leader = False
        self.caught_up = 0  # catch-ups that brought events (diagnostics, tests)
        self._decided = False  # the first decision (at start) is not news; a change later is
        engine.emits_metrics = False  # until the leader lock is ours

    def wake(self, last_id: int | None = None) -> None:
        """Apply what others committed (synchronously: never interleaves with a learning step)."""
        applied = self.engine.last_event_id or 0
        if last_id is not None and last_id <= applied:
            return  # our own write, or already applied
        try:
            caught = self.store.catch_up(applied)
        except StoreUnavailable as exc:
            log.debug("replica: catch-up deferred: %s", exc)  # the watch reconnects, then wakes us
            return
        except Exception:  # keep serving; the next wake-up (at most WATCH_TICK away) retries
            log.exception("replica: catch-up after event %s failed", applied)
            return
        if caught.events:
            self.caught_up += 1
            self.engine.follow(caught)

    def lead(self, leader: bool) -> None:
        if leader != self.leader:
            # Leading from the start is every single-process gateway: said at debug level only.
            level = logging.INFO if self._decided else logging.DEBUG
            log.log(level, "replica: %s the metrics leader", "now" if leader else "no longer")
        self._decided = True
        self.leader = leader
        self.engine.emits_metrics = leader

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow until cancelled. Started once the leader lock was tried (or the store could
        not be reached), so the first metrics are emitted by the leader only."""
        started = False

        def lead(leader: bool) -> None:
            nonlocal started
            self.lead(leader)
            if not started:
                started = True
                task_status.started()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.store.watch, self.wake, lead)
            with anyio.move_on_after(5):  # PostgreSQL down at start: serve anyway, follow later
                while not started:
                    await anyio.sleep(0.01)
            if not started:
                started = True
                task_status.started()
