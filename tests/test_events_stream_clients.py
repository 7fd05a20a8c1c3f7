"""Clients on a real uvicorn: the max_clients limit, a slow client dropped while a fast one keeps
everything, the connected count going back to 0, and shutdown with open streams."""

from __future__ import annotations

import re
import signal
import socket
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import SocketAttribute, TaskStatus

from server_helpers import drain_until_closed, WireEvent, make_settings, open_stream, post_executions, running_app, running_server, wait_for_stats

pytestmark = pytest.mark.anyio


async def test_past_max_clients_503_with_retry_after_then_accepted_again_after_one_leaves() -> None:
    async with running_app(make_settings(max_clients=2)) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        async with open_stream(client) as first:
            assert (await first.next()).event == "connected"  # type: ignore[union-attr]
            async with open_stream(client) as second:
                assert (await second.next()).event == "connected"  # type: ignore[union-attr]
                refused = await client.get("/events/stream")
                assert refused.status_code == 503
                assert refused.json() == {"error": "Too many clients", "max": 2}
                assert int(refused.headers["retry-after"]) > 0
            await wait_for_stats(client, lambda s: s["connected_clients"] == 1)
            async with open_stream(client) as third:
                connected = await third.next()
        assert connected is not None and connected.event == "connected"
        assert connected.data["connected_clients"] == 2


async def test_connected_count_goes_back_to_zero_however_clients_leave() -> None:
    async with running_server(make_settings()) as running, httpx.AsyncClient(base_url=running.base_url) as client:
        port = int(running.base_url.rsplit(":", 1)[1])
        async with open_stream(client) as a, open_stream(client) as b:
            await a.next()
            await b.next()
            raw = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(3)]
            for stream in raw:
                await stream.send(b"GET /events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            stats = await wait_for_stats(client, lambda s: s["connected_clients"] == 5)
            await raw[0].aclose()  # orderly close
            raw[1].extra(SocketAttribute.raw_socket).setsockopt(  # abortive close (RST)
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            await raw[1].aclose()
            await raw[2].send_eof()  # half close, then close
            await raw[2].aclose()
            await wait_for_stats(client, lambda s: s["connected_clients"] == 2)
        stats = await wait_for_stats(client, lambda s: s["connected_clients"] == 0)
        assert stats["total_connections"] == 5
        assert running.state.hub.connected_clients == 0


def big_workflow(i: int) -> dict:
    # Long tool ids: many bytes per event, so a client that stops reading fills its buffers soon.
    return {"workflow_id": f"big-{i}", "tool_ids": [f"s{i % 7}__{'x' * 80}_{j}" for j in range(30)]}


async def test_slow_client_is_dropped_while_a_fast_client_receives_everything() -> None:
    settings = make_settings(client_queue=60, metrics_interval_seconds=60.0)
    async with (
        running_server(settings) as running,
        httpx.AsyncClient(base_url=running.base_url) as fast_client,
        httpx.AsyncClient(base_url=running.base_url) as producer,
    ):
        port = int(running.base_url.rsplit(":", 1)[1])
        # The slow client: a raw socket that reads the first frame only.
        slow = await anyio.connect_tcp("127.0.0.1", port)
        await slow.send(b"GET /events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = b""
        with anyio.fail_after(10):
            while b"event: connected" not in head:
                head += await slow.receive()
        assert head.startswith(b"HTTP/1.1 200")

        received: list[WireEvent] = []
        caught_up = anyio.Event()
        waiting_for = [""]

        async def read_fast(*, task_status: TaskStatus[int]) -> None:
            async with open_stream(fast_client) as fast:
                connected = await fast.next()
                assert connected is not None
                task_status.started(connected.data["last_event_id"])
                while (event := await fast.next()) is not None:
                    received.append(event)
                    if event.event == "workflow_executed" and event.data["workflow_id"] == waiting_for[0]:
                        caught_up.set()

        async def ingest(body: dict) -> None:
            # Wait for the fast client to see each execution before the next: it is fast by design.
            nonlocal caught_up
            caught_up = anyio.Event()
            waiting_for[0] = body["workflow_id"]
            await post_executions(producer, body)
            with anyio.fail_after(10):
                await caught_up.wait()

        async with anyio.create_task_group() as tasks:
            seam = await tasks.start(read_fast)
            await wait_for_stats(producer, lambda s: s["connected_clients"] == 2)
            i = 0
            with anyio.fail_after(120):
                while (await producer.get("/events/stats")).json()["clients_dropped_slow"] == 0:
                    await ingest(big_workflow(i))
                    i += 1
            for j in range(3):  # the fast client keeps receiving after the drop
                await ingest(big_workflow(i + j))
            stats = await wait_for_stats(producer, lambda s: s["connected_clients"] == 1)
            tasks.cancel_scope.cancel()

        assert stats["clients_dropped_slow"] == 1
        last_id = stats["last_event_id"]
        ids = [e.id for e in received if e.id is not None]
        assert ids == list(range((seam or 0) + 1, last_id + 1))  # everything, once, in order
        assert received[-1].data["workflow_id"] == f"big-{i + 2}"
        # The slow client's connection was closed by the server: draining it reaches the end.
        await drain_until_closed(slow)  # the server closed the slow one's connection
        await wait_for_stats(producer, lambda s: s["connected_clients"] == 0)


async def test_shutdown_ends_open_streams_cleanly() -> None:
    ended: list[int] = []
    async with running_server(make_settings()) as running, httpx.AsyncClient(base_url=running.base_url) as client:

        async def reader(n: int, *, task_status: TaskStatus[None]) -> None:
            async with open_stream(client) as stream:
                assert (await stream.next()).event == "connected"  # type: ignore[union-attr]
                task_status.started()
                # A clean end is the chunked terminator: next() returns None. A connection cut by
                # uvicorn's graceful timeout would raise RemoteProtocolError here instead.
                while await stream.next() is not None:
                    pass
                ended.append(n)

        async with anyio.create_task_group() as tasks:
            await tasks.start(reader, 1)
            await tasks.start(reader, 2)
            await running.stop()
    assert sorted(ended) == [1, 2]


async def test_serve_command_ends_streams_on_sigterm(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pml_gateway", "serve", "--port", "0", "--db", ":memory:", "--log-level", "warning"]
    process = await anyio.open_process(command, cwd=tmp_path)
    try:
        assert process.stderr is not None
        output = b""
        with anyio.fail_after(30):
            while b"events at " not in output:
                output += await process.stderr.receive()
        base_url = output.split(b"listening on ", 1)[1].split(b"\n", 1)[0].decode().strip()
        async with httpx.AsyncClient(base_url=base_url) as client, open_stream(client) as stream:
            assert (await stream.next()).event == "connected"  # type: ignore[union-attr]
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(15):
                while await stream.next() is not None:
                    pass
        with anyio.fail_after(15):
            code = await process.wait()
        # uvicorn re-raises the signal it caught once it has shut down cleanly.
        assert code in (0, -signal.SIGTERM)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


async def test_client_that_pauses_reading_gets_everything_once_it_reads_again() -> None:
    """A client whose connection fills up is paused (its events queue in the hub), not dropped,
    and receives everything, in order, when it reads again."""
    settings = make_settings(client_queue=5_000, metrics_interval_seconds=60.0)
    async with (
        running_server(settings) as running,
        httpx.AsyncClient(base_url=running.base_url) as producer,
    ):
        hub = running.state.hub
        port = int(running.base_url.rsplit(":", 1)[1])
        paused = await anyio.connect_tcp("127.0.0.1", port)
        await paused.send(b"GET /events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        with anyio.fail_after(10):
            while b"event: connected" not in received:
                received += await paused.receive()
        seam = int(re.search(rb'"last_event_id":(\d+|null)', received).group(1).replace(b"null", b"0"))  # type: ignore[union-attr]
        i = 0
        with anyio.fail_after(120):
            while hub.paused_clients == 0:  # until its buffers are full and a write had to wait
                await post_executions(producer, big_workflow(i))
                i += 1
        for j in range(3):  # these queue in the hub while it is paused
            await post_executions(producer, big_workflow(i + j))
        last = f"big-{i + 2}".encode()
        with anyio.fail_after(60):
            while b'"workflow_id":"' + last + b'"' not in received:
                received += await paused.receive(1 << 20)
        stats = (await producer.get("/events/stats")).json()
        await paused.aclose()
    ids = [int(m) for m in re.findall(rb"^id: (\d+)$", received, flags=re.MULTILINE)]
    assert ids == list(range(seam + 1, stats["last_event_id"] + 1))
    assert stats["clients_dropped_slow"] == 0 and hub.paused_clients == 0


async def test_a_burst_larger_than_the_client_queue_does_not_drop_a_client_that_keeps_up() -> None:
    settings = make_settings(client_queue=20, metrics_interval_seconds=60.0)
    async with (
        running_server(settings) as running,
        httpx.AsyncClient(base_url=running.base_url) as client,
        httpx.AsyncClient(base_url=running.base_url) as producer,
    ):
        async with open_stream(client) as stream:
            connected = await stream.next()
            assert connected is not None and connected.event == "connected"
            # One request, 40 executions of 4 tools: 160 events at once, eight times the queue.
            body = [{"workflow_id": f"burst-{i}", "tool_ids": [f"s__t{i}", "s__a", "s__b", f"s__u{i}"]} for i in range(40)]
            await post_executions(producer, body)
            seen: list[WireEvent] = []
            with anyio.fail_after(20):
                while not (seen and seen[-1].event == "workflow_executed" and seen[-1].data["workflow_id"] == "burst-39"):
                    event = await stream.next()
                    assert event is not None, "the stream ended: the client was dropped"
                    if event.id is not None:
                        seen.append(event)
        ids = [e.id for e in seen]
        assert ids == list(range(ids[0], ids[0] + 160)) and len(ids) == 160
        stats = (await producer.get("/events/stats")).json()
        assert stats["clients_dropped_slow"] == 0
