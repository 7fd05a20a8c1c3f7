"""GET /events/ws on a real uvicorn, read with the ``websockets`` client library: the same events,
filters, replay and limits as the SSE stream, one JSON text message per event."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server_helpers import drain_until_closed, make_settings, open_stream, post_executions, running_app, running_server, wait_for_stats

pytestmark = pytest.mark.anyio

FLOW = {"workflow_id": "ws-1", "tool_ids": ["files__read", "text__summarize", "mail__send"]}


def ws_url(base_url: str, query: str = "") -> str:
    return base_url.replace("http://", "ws://") + "/events/ws" + (f"?{query}" if query else "")


async def next_message(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        text = await ws.recv()
    assert isinstance(text, str)  # text frames, never binary
    message = json.loads(text)
    assert list(message) == ["id", "type", "data"]
    return message  # type: ignore[no-any-return]


async def until(ws: ClientConnection, predicate: Any) -> list[dict[str, Any]]:
    seen = []
    while True:
        seen.append(await next_message(ws))
        if predicate(seen[-1]):
            return seen


async def test_ws_carries_the_same_events_as_sse_with_replay() -> None:
    async with running_app(make_settings(heartbeat_seconds=0.3)) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        await post_executions(client, FLOW)
        async with open_stream(client, params={"last_event_id": "0"}) as sse:
            over_sse = await sse.until(lambda e: e.event == "workflow_executed")
        async with connect(ws_url(base_url, "last_event_id=0")) as ws:
            connected = await next_message(ws)
            over_ws = await until(ws, lambda m: m["type"] == "workflow_executed")
            beat = await until(ws, lambda m: m["type"] == "heartbeat")
    assert connected["type"] == "connected" and connected["id"] is None
    assert connected["data"]["connected_clients"] == 1 and connected["data"]["last_event_id"] == over_ws[-1]["id"]
    # Replay from 0: exactly the graph events the SSE stream replayed, same ids, same payloads.
    assert [(m["id"], m["type"], m["data"]) for m in over_ws] == [(e.id, e.event, e.data) for e in over_sse[1:]]
    assert [m["id"] for m in over_ws] == list(range(1, len(over_ws) + 1))
    assert beat[-1]["id"] is None and beat[-1]["data"]["connected_clients"] == 1


async def test_ws_live_events_and_filters() -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        query = "types=edge_created,workflow_executed&tools=files__*&workflow_id=ws-*"
        async with connect(ws_url(base_url, query)) as ws:
            assert (await next_message(ws))["type"] == "connected"
            await post_executions(client, {"workflow_id": "other", "tool_ids": ["files__read", "mail__send"]})
            await post_executions(client, {"workflow_id": "ws-2", "tool_ids": ["time__now", "mail__send"]})
            await post_executions(client, FLOW)
            got = await until(ws, lambda m: m["type"] == "workflow_executed")
    # "other" fails the workflow filter; ws-2 names no files__ tool; edges of FLOW: only the one
    # that names files__read; edge events name no workflow, so the workflow filter passes them.
    assert [(m["type"], m["data"].get("workflow_id")) for m in got] == [
        ("edge_created", None),
        ("edge_created", None),
        ("workflow_executed", "ws-1"),
    ]
    assert [m["data"]["from_tool_id"] for m in got[:2]] == ["files__read", "files__read"]


@pytest.mark.parametrize(
    ("query", "named"),
    [("colour=blue", "colour"), ("types=nope", "nope"), ("tools=", "tools"), ("last_event_id=x", "last_event_id")],
)
async def test_ws_bad_query_is_refused_with_the_same_json_error(query: str, named: str) -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(base_url, query)):
                pass
        response = refused.value.response
        assert response.status_code == 400
        assert named in json.loads(response.body)["error"]
        assert (await client.get(f"/events/stream?{query}")).json() == json.loads(response.body)


async def test_ws_refuses_a_foreign_origin() -> None:
    async with running_app(make_settings()) as base_url:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(base_url), origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        async with connect(ws_url(base_url), origin="http://localhost:5173") as ws:  # type: ignore[arg-type]
            assert (await next_message(ws))["type"] == "connected"


async def test_ws_and_sse_share_max_clients() -> None:
    async with running_app(make_settings(max_clients=2)) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        async with open_stream(client) as sse, connect(ws_url(base_url)) as ws:
            assert (await sse.next()).event == "connected"  # type: ignore[union-attr]
            assert (await next_message(ws))["type"] == "connected"
            with pytest.raises(InvalidStatus) as refused:
                async with connect(ws_url(base_url)):
                    pass
            assert refused.value.response.status_code == 503
            assert json.loads(refused.value.response.body) == {"error": "Too many clients", "max": 2}
            assert refused.value.response.headers["Retry-After"] == "5"
        await wait_for_stats(client, lambda s: s["connected_clients"] == 0)


async def test_ws_reset_when_the_id_cannot_be_replayed() -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        async with connect(ws_url(base_url, "last_event_id=999")) as ws:
            await next_message(ws)
            reset = await next_message(ws)
    assert reset["type"] == "reset" and reset["id"] is None
    assert reset["data"]["reason"] == "unknown_event_id" and reset["data"]["oldest_event_id"] == 1


async def test_ws_slow_client_is_dropped() -> None:
    """A WebSocket client that stops reading is dropped like an SSE one; others are unaffected."""
    settings = make_settings(client_queue=20, metrics_interval_seconds=60.0)
    burst = [{"tool_ids": [f"s__{'x' * 200}_{i}_{j}" for j in range(20)]} for i in range(10)]
    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        # The slow client: a raw socket that does the handshake, then never reads again (a
        # client library would keep draining the socket into its own memory).
        slow = await anyio.connect_tcp("127.0.0.1", int(base_url.rsplit(":", 1)[1]))
        await slow.send(
            b"GET /events/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = b""
        with anyio.fail_after(10):
            while b"connected" not in head:
                head += await slow.receive()
        assert head.startswith(b"HTTP/1.1 101")
        async with connect(ws_url(base_url), max_size=None) as fast:
            await next_message(fast)
            received: list[dict[str, Any]] = []

            async def read_fast() -> None:
                while True:
                    received.append(await next_message(fast, timeout=60))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(read_fast)
                with anyio.fail_after(60):
                    while (await client.get("/events/stats")).json()["clients_dropped_slow"] == 0:
                        await post_executions(client, burst)
                stats = await wait_for_stats(client, lambda s: s["connected_clients"] == 1)
                with anyio.fail_after(30):
                    while not received or received[-1]["id"] != stats["last_event_id"]:
                        await anyio.sleep(0.01)
                tasks.cancel_scope.cancel()
        ids = [m["id"] for m in received if m["id"] is not None]
        assert ids == list(range(ids[0], stats["last_event_id"] + 1))  # the fast one got everything
        await drain_until_closed(slow)  # the server closed the slow one's connection
    assert stats["clients_dropped_slow"] == 1


async def test_ws_ends_with_going_away_on_shutdown() -> None:
    async with running_server(make_settings()) as running:
        async with connect(ws_url(running.base_url)) as ws:
            assert (await next_message(ws))["type"] == "connected"
            with anyio.fail_after(15):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(running.stop)
                    with pytest.raises(ConnectionClosed) as closed:
                        while True:  # the start-up metrics_updated may come first
                            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
