"""What the running process is, as route handlers and extensions see it (``app.state.pml``).

Its own module so that the app, the HTTP API, the dashboard and the proxy all import it without
importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute

from graphrag import GraphRAGEngine, MetricsScheduler

from pml_gateway.settings import Settings

if TYPE_CHECKING:
    from pml_gateway.events.hub import EventHub
    from pml_gateway.events.stream import EventsStreamManager
    from pml_gateway.observability import Instrumentation

__all__ = ["AppExtension", "AppState", "app_state"]


@dataclass
class AppState:
    """The running process, as route handlers and extensions see it (``app.state.pml``)."""

    settings: Settings
    engine: GraphRAGEngine
    hub: EventHub
    started_at: float  # time.time() when the lifespan began
    stream: EventsStreamManager
    scheduler: MetricsScheduler
    instrumentation: Instrumentation  # metrics registry and spans (observability/)
    extensions: Sequence[AppExtension] = field(default_factory=tuple)


@runtime_checkable
class AppExtension(Protocol):
    """A part of the process that plugs into the app (the MCP gateway, the dashboard)."""

    def routes(self) -> list[BaseRoute]:
        """Routes placed BEFORE the app's own."""
        ...

    def lifespan(self, state: AppState) -> AbstractAsyncContextManager[None]:
        """Entered once engine, hub and scheduler are up; exited before they shut down."""
        ...

    def health(self) -> dict[str, Any]:
        """Merged into ``GET /health``'s ``downstreams`` object."""
        ...



def app_state(connection: HTTPConnection) -> AppState:
    """The running process behind a request (set by the app's lifespan)."""
    return connection.app.state.pml  # type: ignore[no-any-return]
