"""The uvicorn server that runs the app, ending open event streams as soon as shutdown begins."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette

from pml_gateway.events.stream import EventsStreamManager
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
