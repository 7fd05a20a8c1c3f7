"""Coalesced metrics: many graph changes inside one interval give one recompute and one event.

The first change after a quiet period opens a window of ``interval_seconds``; every change inside
it is folded into the one recompute at its end. Changes that land while a recompute runs open the
next window. The recompute itself runs in a worker thread (``GraphRAGEngine.refresh_metrics``).
"""

from __future__ import annotations

import logging

import anyio

from .engine import GraphRAGEngine
from .events import GraphEvent

log = logging.getLogger(__name__)

#: Events that change what the metrics describe.
_CHANGES = frozenset({"edge_created", "edge_updated", "graph_synced", "tool_forgotten", "graph_reset"})


class MetricsScheduler:
    def __init__(self, engine: GraphRAGEngine, interval_seconds: float = 1.0) -> None:
        self.engine = engine
        self.interval_seconds = interval_seconds
        self.recomputes = 0
        self._pending: anyio.Event | None = None

    def request(self) -> None:
        """Ask for a recompute at the end of the current window."""
        if self._pending is not None:
            self._pending.set()

    def _on_event(self, event: GraphEvent) -> None:
        if event.type in _CHANGES:
            self.request()

    async def run(self) -> None:
        """Run until cancelled (inside a task group of the app's lifespan)."""
        self._pending = anyio.Event()
        self.engine.on(self._on_event)
        try:
            while True:
                await self._pending.wait()
                await anyio.sleep(self.interval_seconds)
                self._pending = anyio.Event()  # changes from now on belong to the next window
                try:
                    await self.engine.refresh_metrics()
                    self.recomputes += 1
                except Exception:  # keep serving; the next change retries
                    log.exception("metrics recompute failed")
        finally:
            self.engine.off(self._on_event)
            self._pending = None
