"""The Starlette app of one gateway process, and the uvicorn server that runs it.

``create_app(settings, extensions=[...])`` assembles the HTTP surface: each extension's routes
first (the MCP gateway's ``/mcp``, the dashboard), then ``/events/stream`` and the JSON API. The
lifespan opens the store, builds and syncs the engine, starts the event hub, the heartbeat and the
metrics scheduler, then enters each extension's lifespan with the resulting ``AppState``.
Shutdown runs in reverse: extensions first, then streams, scheduler and store.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from graphrag import GraphRAGEngine, GraphStore, MemoryStore, MetricsScheduler, SQLiteStore

from .cors import cors_middleware
from .event_hub import EventHub, InProcessEventHub
from .events_stream import SERVER_SEND, EventsStreamManager
from .http_api import http_routes
from .settings import Settings

log = logging.getLogger(__name__)

#: How long uvicorn waits for open responses when the process stops (event streams end at once).
GRACEFUL_SHUTDOWN_SECONDS = 5.0
#: Garbage-collector thresholds while serving (Python's default: 700, 10, 10). Thousands of open
#: streams are hundreds of thousands of long-lived objects, and every event makes a few
#: short-lived ones per client: with the default young generation, survivors reach the old one
#: often and its full collections become the tail of the fan-out latency (bench/sse_fanout.py,
#: 1,000 clients: p99 about 20 ms with the default, 12 ms with these).
GC_THRESHOLDS = (20_000, 20, 10)


@dataclass
class AppState:
    """The running process, as route handlers and extensions see it (``app.state.pml``)."""

    settings: Settings
    engine: GraphRAGEngine
    hub: EventHub
    started_at: float  # time.time() when the lifespan began
    stream: EventsStreamManager
    scheduler: MetricsScheduler
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


def open_store(settings: Settings) -> GraphStore:
    """``:memory:`` -> a MemoryStore; anything else is a SQLite file (its directory is created)."""
    if settings.in_memory:
        return MemoryStore()
    return SQLiteStore(Path(settings.db).expanduser())


async def _initial_metrics(engine: GraphRAGEngine) -> None:
    # Metrics for the graph as loaded, off the start-up path; later ones come from the scheduler.
    try:
        await engine.refresh_metrics()
    except Exception:
        log.exception("initial metrics computation failed")


class GatewayApp(Starlette):
    """Starlette, with the server's own ``send`` in each HTTP scope (``SERVER_SEND``).

    The event stream sends its body chunks there directly: this app's middleware only looks at
    response starts, and skipping it is a tenth of the CPU of each delivery (bench/sse_fanout.py).
    Middleware that rewrites bodies (compression) must not be added: SSE must not be buffered.
    """

    def build_middleware_stack(self) -> ASGIApp:
        app = super().build_middleware_stack()

        async def with_server_send(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                scope[SERVER_SEND] = send
            await app(scope, receive, send)

        return with_server_send


def create_app(settings: Settings, *, extensions: Sequence[AppExtension] = ()) -> Starlette:
    extensions = tuple(extensions)
    stream = EventsStreamManager(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started_at = time.time()
        store = open_store(settings)
        engine: GraphRAGEngine | None = None
        try:
            engine = GraphRAGEngine(store=store)
            hub = InProcessEventHub(store, replay_buffer=settings.replay_buffer, client_queue=settings.client_queue)
            engine.on(hub.publish)
            scheduler = MetricsScheduler(engine, interval_seconds=settings.metrics_interval_seconds)
            await engine.sync_from_database()
            stream.bind(hub, started_at=started_at)
            state = AppState(
                settings=settings,
                engine=engine,
                hub=hub,
                started_at=started_at,
                stream=stream,
                scheduler=scheduler,
                extensions=extensions,
            )
            app.state.pml = state
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(scheduler.run)
                tasks.start_soon(stream.run_heartbeat)
                tasks.start_soon(stream.watch_exit_signal)
                tasks.start_soon(_initial_metrics, engine)
                try:
                    async with AsyncExitStack() as stack:
                        for extension in extensions:
                            await stack.enter_async_context(extension.lifespan(state))
                        yield
                finally:
                    stream.close()
                    tasks.cancel_scope.cancel()
        finally:
            if engine is not None:
                engine.close()  # the metrics worker process, if one was started
            store.close()

    routes: list[BaseRoute] = [route for extension in extensions for route in extension.routes()]
    routes.append(Route("/events/stream", stream, methods=["GET"]))
    routes.extend(http_routes())
    app = GatewayApp(routes=routes, middleware=[cors_middleware(settings.cors_origins)], lifespan=lifespan)
    app.state.events_stream = stream  # for the server: ends the streams when shutdown begins
    return app


class GatewayServer(uvicorn.Server):
    """uvicorn's server, ending the open event streams as soon as shutdown begins.

    uvicorn waits for open responses (up to its graceful timeout) BEFORE the lifespan shutdown,
    and an event stream never ends by itself: so the streams are ended here, right after the
    listening sockets close.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        on_shutdown: Callable[[], None] | None = None,
        on_started: Callable[[str], None] | None = None,
        gc_thresholds: tuple[int, int, int] | None = GC_THRESHOLDS,
    ) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown
        self._on_started = on_started
        self._gc_thresholds = gc_thresholds

    @property
    def base_url(self) -> str:
        """``http://host:port`` as bound (the real port when the config asked for port 0)."""
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    async def startup(self, sockets: list[Any] | None = None) -> None:
        if self._gc_thresholds is not None:
            gc.set_threshold(*self._gc_thresholds)  # process-wide: this process serves
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started(self.base_url)

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        for server in self.servers:
            server.close()
        if self._on_shutdown is not None:
            self._on_shutdown()
        await super().shutdown(sockets)


def make_server(
    app: Starlette,
    settings: Settings,
    *,
    on_started: Callable[[str], None] | None = None,
    gc_thresholds: tuple[int, int, int] | None = GC_THRESHOLDS,
    **config: Any,
) -> GatewayServer:
    """A server for ``app`` on ``settings.host:settings.port``; ``config`` overrides uvicorn options.

    ``on_started(base_url)`` runs once it listens; ``gc_thresholds=None`` leaves the garbage
    collector as it is. Run it with ``server.run()`` (blocking) or
    ``await server.serve()`` (inside an event loop, e.g. next to the stdio transport).
    """
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        "lifespan": "on",
    }
    options.update(config)
    stream: EventsStreamManager | None = getattr(app.state, "events_stream", None)
    return GatewayServer(
        uvicorn.Config(app, **options),
        on_shutdown=stream.close if stream else None,
        on_started=on_started,
        gc_thresholds=gc_thresholds,
    )
