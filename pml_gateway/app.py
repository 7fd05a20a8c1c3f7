"""The Starlette app of one gateway process (``server.py`` runs it under uvicorn).

``create_app(settings, extensions=[...])`` assembles the HTTP surface: each extension's routes
first (the MCP gateway's ``/mcp``, the dashboard), then ``/events/stream`` and the JSON API. The
lifespan opens the store, builds and syncs the engine, starts the event hub, the heartbeat and the
metrics scheduler, then enters each extension's lifespan with the resulting ``AppState``.
Shutdown runs in reverse: extensions first, then streams, scheduler and store.
"""

from __future__ import annotations

import logging
import time
from collections import ChainMap
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from graphrag import GraphRAGEngine, GraphStore, MemoryStore, MetricsScheduler, Replica, SharedStore, SQLiteStore, StoreError
from graphrag.store import is_postgres_url

from pml_gateway.auth import AuthPolicy, Profile, configure_audit
from pml_gateway.cors import cors_middleware
from pml_gateway.host_check import HostCheckMiddleware
from pml_gateway.events.hub import InProcessEventHub
from pml_gateway.events.stream import SERVER_SEND, EventsStreamManager
from pml_gateway.http_api import http_routes, json_http_error
from pml_gateway.observability import EventCounter, Instrumentation, scraped, suggestion_stats
from pml_gateway.settings import Settings
from pml_gateway.state import AppExtension, AppState

log = logging.getLogger(__name__)


def open_store(settings: Settings) -> GraphStore:
    """``:memory:`` -> a MemoryStore; ``postgresql://...`` -> PostgreSQL shared by replicas;
    anything else is a SQLite file (its directory is created)."""
    if settings.in_memory:
        return MemoryStore()
    if is_postgres_url(settings.db):
        try:
            from graphrag.postgres_store import PostgresStore
        except ImportError as exc:
            raise StoreError(f"db: a PostgreSQL URL needs the extra: pip install 'pml-gateway[postgres]' ({exc})") from exc
        return PostgresStore(settings.db)
    return SQLiteStore(Path(settings.db).expanduser())


async def _initial_metrics(engine: GraphRAGEngine) -> None:
    # Metrics for the graph as loaded, off the start-up path; later ones come from the scheduler.
    try:
        await engine.refresh_metrics()
    except Exception:
        log.exception("initial metrics computation failed")


def profiles_of(extensions: Sequence[AppExtension]) -> Mapping[str, Profile]:
    """The profiles the extensions define (the MCP gateway reads them from its config).

    A live view (``ChainMap``), not a copy: a config edit that changes them (proxy/downstream/
    watch.py) takes effect at the next request.
    """
    return ChainMap(*(getattr(ext, "profiles", {}) for ext in extensions))


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


def create_app(
    settings: Settings,
    *,
    extensions: Sequence[AppExtension] = (),
    instrumentation: Instrumentation | None = None,
    auth: AuthPolicy | None = None,
) -> Starlette:
    extensions = tuple(extensions)
    instrumentation = instrumentation if instrumentation is not None else Instrumentation()  # /metrics, spans
    if auth is None:  # who may do what (pml_gateway/auth)
        auth = AuthPolicy(settings, profiles_of(extensions))
    stream = EventsStreamManager(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started_at = time.time()
        store = open_store(settings)
        engine: GraphRAGEngine | None = None
        try:
            engine = GraphRAGEngine(store=store)
            hub = InProcessEventHub(
                store, replay_buffer=settings.replay_buffer, client_queue=settings.client_queue, server_of=engine.tool_server
            )
            engine.on(hub.publish)
            events = EventCounter()  # observability: events per type, for /metrics
            engine.on(events)
            instrumentation.suggestion_stats = lambda: suggestion_stats(engine.grader.next_tool.stats())
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
                instrumentation=instrumentation,
            )
            app.state.pml = state
            configure_audit(settings.audit_log)
            async with anyio.create_task_group() as tasks:
                if isinstance(store, SharedStore):  # other processes may write it: follow them
                    await tasks.start(Replica(engine, store).run)
                tasks.start_soon(scheduler.run)
                tasks.start_soon(stream.run_heartbeat)
                tasks.start_soon(_initial_metrics, engine)
                try:
                    async with AsyncExitStack() as stack:
                        stack.enter_context(scraped(state, events))  # /metrics reads the state
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
    routes.extend(auth.routes())
    routes.append(Route("/events/stream", stream, methods=["GET"]))
    routes.append(WebSocketRoute("/events/ws", stream.websocket_app))
    routes.extend(http_routes())
    middleware = [
        Middleware(HostCheckMiddleware.from_settings, settings=settings),
        cors_middleware(settings.cors_origins),
        auth.middleware(),
    ]
    app = GatewayApp(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: json_http_error},
    )
    app.state.events_stream = stream  # for the server: ends the streams when shutdown begins
    app.state.auth = auth  # for the banner (cli/common.py announce)
    return app
