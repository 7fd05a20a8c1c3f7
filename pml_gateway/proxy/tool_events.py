"""Tells the engine which tools each downstream server offers, so that it emits ``tool_added`` /
``tool_removed`` whenever they change (connect, crash, ``list_changed``, config change).

The registry announces every change of the exposed tools (``ToolRegistry.on_change``); one sync
per event-loop turn then hands the engine each settled server's current set. The engine keeps
the committed set in its store and reports only differences, so a restart where nothing changed
emits nothing. Which server a tool belongs to comes from the registry, never from its name.

A server's state (``/health``) decides what its empty set means: ``failed`` is ``disconnected``;
a server no longer in the config is ``config_changed``; a tool gone from a connected server is
``removed``; a server still ``connecting`` is left alone (at start-up, its tools from the last
run stay until it settles). Stopping the gateway is not a change: the sync stops first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from graphrag import GraphRAGEngine

from pml_gateway.proxy.registry import ToolRegistry

logger = logging.getLogger(__name__)


class ToolEvents:
    def __init__(
        self, engine: GraphRAGEngine, registry: ToolRegistry, health: Callable[[], Mapping[str, Mapping[str, Any]]]
    ) -> None:
        self._engine = engine
        self._registry = registry
        self._health = health  # server -> {"state": "connected" | "connecting" | "failed", ...}
        self._active = False
        self._scheduled = False
        registry.on_change(self._changed)

    def start(self) -> None:
        """Sync now (the downstreams' first attempts have settled) and after every change."""
        self._active = True
        self.sync()

    def stop(self) -> None:
        self._active = False

    def _changed(self) -> None:
        if self._active and not self._scheduled:
            self._scheduled = True  # one sync for every change of this event-loop turn
            asyncio.get_running_loop().call_soon(self.sync)

    def sync(self) -> None:
        self._scheduled = False
        if not self._active:
            return
        offered: dict[str, list[str]] = {}
        for entry in self._registry.tools():
            offered.setdefault(entry.server, []).append(entry.name)
        health = self._health()
        known = set(self._engine.available_tools.values())
        for server in sorted(known | offered.keys()):
            state = health.get(server, {}).get("state")
            if state == "connecting":
                continue
            reason = "config_changed" if state is None else "removed" if state == "connected" else "disconnected"
            try:
                self._engine.set_server_tools(server, offered.get(server, ()), reason=reason)
            except Exception:  # the store refused: the next change retries the whole set
                logger.exception("could not record the tools of downstream %r", server)
