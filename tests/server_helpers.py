"""Run the real app on a real uvicorn (127.0.0.1, port 0) inside a test, and read SSE off the wire.

    async with running_app(settings) as base_url: ...
    async with running_server(settings, extensions=[...]) as running:   # .base_url .app .server .stop()

The one way tests run the app: through ``pml_gateway.server.make_server``, so start-up and
shutdown are the product's own (tests/gateway_support.py's ``run_gateway`` builds on it).
``free_port`` is for processes that must be told their port in advance.
"""

from __future__ import annotations

import json
import signal
import subprocess
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import httpx
from starlette.applications import Starlette

from pml_gateway.app import create_app
from pml_gateway.server import GatewayServer, make_server
from pml_gateway.state import AppExtension, AppState
from pml_gateway.settings import Settings

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (for subprocesses given a port up front)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(**overrides: Any) -> Settings:
    """Settings for a test server: in memory, no downstreams, quiet logs, short intervals."""
    values: dict[str, Any] = {"db": ":memory:", "config": None, "log_level": "warning", "port": 0}
    values.update(overrides)
    return Settings(**values)


@dataclass
class RunningServer:
    base_url: str
    app: Starlette
    server: GatewayServer
    _stopped: anyio.Event = field(default_factory=anyio.Event)

    @property
    def state(self) -> AppState:
        return self.app.state.pml  # type: ignore[no-any-return]

    async def stop(self) -> None:
        """Shut down as on Ctrl-C, and wait until uvicorn has finished (bounded)."""
        self.server.should_exit = True
        with anyio.fail_after(STOP_TIMEOUT):
            await self._stopped.wait()


@asynccontextmanager
async def running_server(
    settings: Settings, extensions: Sequence[AppExtension] = (), **uvicorn_options: Any
) -> AsyncIterator[RunningServer]:
    app = create_app(settings, extensions=extensions)
    options = {"host": "127.0.0.1", "port": 0, "log_level": "warning", "timeout_graceful_shutdown": 5.0}
    options.update(uvicorn_options)
    server = make_server(app, settings, **options)
    running = RunningServer("", app, server)

    async def serve() -> None:
        try:
            await server.serve()
        finally:
            running._stopped.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(serve)
        with anyio.fail_after(START_TIMEOUT):
            while not server.started:
                if running._stopped.is_set():
                    raise RuntimeError("the app failed to start (see the log above)")
                await anyio.sleep(0.01)
        running.base_url = server.base_url
        try:
            yield running
        finally:
            await running.stop()


@asynccontextmanager
async def running_app(
    settings: Settings, extensions: Sequence[AppExtension] = (), **uvicorn_options: Any
) -> AsyncIterator[str]:
    """The app on a real uvicorn; yields its base URL (``http://127.0.0.1:PORT``)."""
    async with running_server(settings, extensions, **uvicorn_options) as running:
        yield running.base_url


# -- reading the stream off the wire ---------------------------------------------------------
@dataclass
class WireEvent:
    """One SSE event as sent: ``id`` is None when the frame had no ``id:`` line."""

    event: str
    data: Any
    id: int | None = None
    retry: int | None = None
    raw: list[str] = field(default_factory=list)


class WireReader:
    """Parses an httpx streaming response into ``WireEvent``s, exactly as framed on the wire."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self) -> WireEvent | None:
        """The next event, or None at the end of the stream."""
        fields: dict[str, str] = {}
        raw: list[str] = []
        async for line in self._lines:
            if line == "":
                if not raw:
                    continue
                return WireEvent(
                    event=fields.get("event", "message"),
                    data=json.loads(fields["data"]) if "data" in fields else None,
                    id=int(fields["id"]) if "id" in fields else None,
                    retry=int(fields["retry"]) if "retry" in fields else None,
                    raw=raw,
                )
            raw.append(line)
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            if name in fields:
                raise AssertionError(f"field {name!r} twice in one event: {raw}")
            fields[name] = value[1:] if value.startswith(" ") else value
        return None

    async def until(self, predicate: Any, *, timeout: float = 10.0) -> list[WireEvent]:
        """Every event up to and including the first that satisfies ``predicate``."""
        seen: list[WireEvent] = []
        with anyio.fail_after(timeout):
            while True:
                event = await self.next()
                if event is None:
                    raise AssertionError(f"stream ended before the expected event; saw {[e.event for e in seen]}")
                seen.append(event)
                if predicate(event):
                    return seen


@asynccontextmanager
async def open_stream(client: httpx.AsyncClient, path: str = "/events/stream", **kwargs: Any) -> AsyncIterator[WireReader]:
    """``GET`` the stream; asserts 200 and yields a reader positioned before the first event."""
    async with client.stream("GET", path, **kwargs) as response:
        if response.status_code != 200:
            await response.aread()
            raise AssertionError(f"stream refused: {response.status_code} {response.text}")
        yield WireReader(response)


async def post_executions(client: httpx.AsyncClient, body: Any) -> list[str]:
    response = await client.post("/executions", json=body)
    assert response.status_code == 202, response.text
    return response.json()["workflow_ids"]  # type: ignore[no-any-return]


async def wait_for_stats(client: httpx.AsyncClient, predicate: Any, *, timeout: float = 10.0) -> dict[str, Any]:
    """Poll ``/events/stats`` until ``predicate(stats)``; returns those stats."""
    with anyio.fail_after(timeout):
        while True:
            stats = (await client.get("/events/stats")).json()
            if predicate(stats):
                return stats  # type: ignore[no-any-return]
            await anyio.sleep(0.02)


async def drain_until_closed(stream: anyio.abc.ByteStream, timeout: float = 30.0) -> None:
    """Read a raw connection until the server closes it (bounded)."""
    with anyio.fail_after(timeout):
        try:
            while await stream.receive(1 << 20):
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    await stream.aclose()


def interrupt(process: "subprocess.Popen[Any]", timeout: float = 20) -> None:
    """Stop a gateway process as Ctrl+C does; killed if it has not ended within ``timeout``."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
