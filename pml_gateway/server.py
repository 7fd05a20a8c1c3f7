"""The uvicorn server that runs the app, ending open event streams as soon as shutdown begins."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from starlette.applications import Starlette

from pml_gateway.events.stream import DETACH, EventsStreamManager
from pml_gateway.settings import Settings

__all__ = ["GC_THRESHOLDS", "GRACEFUL_SHUTDOWN_SECONDS", "GatewayServer", "make_server"]

#: How long uvicorn waits for open responses when the process stops (event streams end at once).
GRACEFUL_SHUTDOWN_SECONDS = 5.0
#: Garbage-collector thresholds while serving (Python's default: 700, 10, 10). Thousands of open
#: streams are hundreds of thousands of long-lived objects, and every event makes a few
#: short-lived ones per client: with the default young generation, survivors reach the old one
#: often and its full collections become the tail of the fan-out latency (bench/sse_fanout.py,
#: 1,000 clients: p99 about 20 ms with the default, 12 ms with these).
GC_THRESHOLDS = (20_000, 20, 10)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, closing connections that do not finish their request headers in time.

    uvicorn times out idle keep-alive connections only after a first response: a client that
    connects and then sends nothing, or a header a byte at a time (slowloris), holds a descriptor
    forever, and about a thousand of them stop all service. Each request's headers must be
    complete within ``header_timeout`` seconds of the connection (or of the request's first byte).

    It also offers each HTTP request a way to hand its connection over once a streaming response
    has started (``scope[DETACH]``, used by ``GET /events/stream``): then the connection belongs to
    the new protocol, and uvicorn's request cycle, task and parser are freed (an open event stream
    then costs no task and a fraction of the memory: bench/sse_fanout.py). The skip of uvicorn is
    here only, and refused for anything but a chunked response under way on an unpipelined
    connection.
    """

    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._start_header_timer()

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        self.scope[DETACH] = self._detach  # type: ignore[literal-required]
        super().on_headers_complete()

    def _detach(self, scope: Any, protocol: Any) -> bool:
        """Hand the connection to ``protocol`` (``adopt(transport, connections)``), the response started."""
        cycle = self.cycle
        if (
            cycle is None
            or cycle.scope is not scope
            or not cycle.response_started
            or cycle.response_complete
            or not cycle.chunked_encoding
            or self.pipeline
            or self.transport.is_closing()
        ):
            return False
        cycle.response_complete = True  # uvicorn is done with it: the rest of the body is the protocol's
        cycle.keep_alive = False
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        # Still one of the server's connections: counted by limit_concurrency, ended at shutdown.
        self.connections.discard(self)
        self.connections.add(protocol)
        protocol.adopt(self.transport, self.connections)
        self.transport.set_protocol(protocol)
        if self.flow.write_paused:
            protocol.pause_writing()
        self.flow.resume_reading()  # to see the client leave
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _start_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutProtocol]:
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": seconds})


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
        if self._gc_thresholds is not None and self.started:
            # What start-up built (the engine's graph, the app, imported modules) lives as long as
            # the process: out of the collector's sight, so full collections no longer walk it.
            gc.collect()
            gc.freeze()
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
        "http": header_timeout_protocol(settings.header_timeout_seconds),
        # Past this many open connections uvicorn answers 503 at once instead of queueing forever.
        "limit_concurrency": settings.max_connections,
    }
    if settings.log_format == "json":
        options["log_config"] = None  # uvicorn's records go to the root handler: JSON like the rest
    options.update(config)
    stream: EventsStreamManager | None = getattr(app.state, "events_stream", None)
    return GatewayServer(
        uvicorn.Config(app, **options),
        on_shutdown=stream.close if stream else None,
        on_started=on_started,
        gc_thresholds=gc_thresholds,
    )
