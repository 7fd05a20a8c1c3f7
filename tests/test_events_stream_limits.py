"""Event streams on a real uvicorn: the per-address cap (SSE and WebSocket together), a slow SSE
client's socket really closed when the hub drops it (no uvicorn error line), and an open SSE
stream holding no task of its own (the connection is handed over from uvicorn's request cycle)."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from server_helpers import make_settings, open_stream, post_executions, running_server, wait_for_stats

pytestmark = pytest.mark.anyio

TOO_MANY = {"error": "Too many streams from this address", "max": 2, "setting": "max_streams_per_address"}


async def test_streams_per_address_are_capped_sse_and_websocket_together() -> None:
    settings = make_settings(max_streams_per_address=2, max_clients=10)
    async with running_server(settings) as running, httpx.AsyncClient(base_url=running.base_url) as client:
        ws_url = running.base_url.replace("http://", "ws://") + "/events/ws"
        async with open_stream(client) as sse, connect(ws_url) as ws:
            assert (await sse.next()).event == "connected"  # type: ignore[union-attr]
            with anyio.fail_after(10):
                assert json.loads(await ws.recv())["type"] == "connected"
            refused = await client.get("/events/stream")
            assert refused.status_code == 429
            assert refused.json() == TOO_MANY
            assert int(refused.headers["retry-after"]) > 0
            with pytest.raises(InvalidStatus) as denied:
                async with connect(ws_url):
                    pass
            assert denied.value.response.status_code == 429
            assert json.loads(denied.value.response.body) == TOO_MANY
            # Other routes are not limited by it.
            assert (await client.get("/health")).status_code == 200
        # Both left: the address's slots are free again.
        await wait_for_stats(client, lambda s: s["connected_clients"] == 0)
        async with open_stream(client) as first, open_stream(client) as second:
            assert (await first.next()).event == "connected"  # type: ignore[union-attr]
            assert (await second.next()).event == "connected"  # type: ignore[union-attr]
        # Every slot is released once its stream ends.
        with anyio.fail_after(10):
            while running.app.state.events_stream._per_address:
                await anyio.sleep(0.02)


async def test_an_open_sse_stream_holds_no_task() -> None:
    """Once the stream runs, uvicorn's request task has finished: the connection is the stream's."""
    async with running_server(make_settings()) as running, httpx.AsyncClient(base_url=running.base_url) as client:
        state = running.server.server_state
        async with open_stream(client) as a, open_stream(client) as b:
            await a.next()
            await b.next()
            with anyio.fail_after(10):
                while state.tasks:
                    await anyio.sleep(0.01)
            assert len(state.connections) >= 2  # still the server's connections (limit, shutdown)
            await post_executions(client, {"workflow_id": "after", "tool_ids": ["a__x", "b__y"]})
            with anyio.fail_after(10):
                while (event := await a.next()) is not None and event.event != "workflow_executed":
                    pass
            assert event is not None and event.data["workflow_id"] == "after"


def _established(server_port: int, client_port: int) -> bool:
    """Whether the server's side of one TCP connection is still ESTABLISHED (from /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            return state == "01"
    return False


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_a_dropped_slow_client_is_disconnected_at_once_without_uvicorn_errors() -> None:
    settings = make_settings(client_queue=20, metrics_interval_seconds=60.0)
    async with running_server(settings) as running, httpx.AsyncClient(base_url=running.base_url) as producer:
        lines = _Lines()  # after start-up: uvicorn's logging config replaces handlers when it loads
        uvicorn_log = logging.getLogger("uvicorn.error")
        uvicorn_log.addHandler(lines)
        try:
            port = int(running.base_url.rsplit(":", 1)[1])
            # A client that connects, sends its request and never reads (a small receive buffer,
            # so the server's writes stall soon).
            slow = socket.socket()
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            slow.connect(("127.0.0.1", port))
            slow.send(b"GET /events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            client_port = slow.getsockname()[1]
            await wait_for_stats(producer, lambda s: s["connected_clients"] == 1)
            assert _established(port, client_port)
            burst = [{"tool_ids": [f"s__{'x' * 200}_{i}_{j}" for j in range(20)]} for i in range(40)]
            with anyio.fail_after(60):
                while (await producer.get("/events/stats")).json()["clients_dropped_slow"] == 0:
                    await post_executions(producer, burst)
            # The server's side of the connection is gone within a bounded time, although the
            # client has not read a byte (a plain close would wait forever to flush its buffers).
            with anyio.fail_after(5):
                while _established(port, client_port):
                    await anyio.sleep(0.02)
            await wait_for_stats(producer, lambda s: s["connected_clients"] == 0)
            # The client sees the end too: RST, or EOF after what was already delivered (a
            # connection still open would make recv time out instead).
            slow.settimeout(5)
            try:
                while slow.recv(1 << 20):
                    pass
            except ConnectionResetError:
                pass
            slow.close()
        finally:
            uvicorn_log.removeHandler(lines)
        assert not [m for m in lines.messages if "without completing response" in m or "Exception in ASGI" in m]
