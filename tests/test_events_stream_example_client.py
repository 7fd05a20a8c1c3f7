"""public/examples/events_client.py against a real gateway: it resumes across a restart with
Last-Event-ID (nothing lost, nothing doubled) and refetches /graph on reset."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import Process

from server_helpers import free_port, make_settings, post_executions, running_app

pytestmark = pytest.mark.anyio

CLIENT = Path(__file__).parent.parent / "public" / "examples" / "events_client.py"


class Lines:
    """Lines of a subprocess's stdout, read as they come."""

    def __init__(self, process: Process) -> None:
        assert process.stdout is not None
        self._stream = process.stdout
        self._buffer = b""
        self.seen: list[str] = []

    async def until(self, needle: str, timeout: float = 30.0) -> list[str]:
        with anyio.fail_after(timeout):
            while True:
                while b"\n" in self._buffer:
                    line, self._buffer = self._buffer.split(b"\n", 1)
                    self.seen.append(line.decode())
                    if needle in self.seen[-1]:
                        return self.seen
                self._buffer += await self._stream.receive()


@asynccontextmanager
async def events_client(*args: str) -> AsyncIterator[Lines]:
    process = await anyio.open_process([sys.executable, "-u", str(CLIENT), *args], stderr=None)
    try:
        yield Lines(process)
    finally:
        process.terminate()
        with anyio.fail_after(10):
            await process.wait()
        await process.aclose()


def printed_ids(lines: list[str]) -> list[int]:
    return [int(line.split()[0]) for line in lines if line.split() and line.split()[0].isdigit()]


async def test_example_client_resumes_across_a_restart_without_loss_or_duplicates(tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(db=str(tmp_path / "graph.db"))
    # The client starts first: it retries with backoff until the gateway is up.
    async with events_client("--url", f"http://127.0.0.1:{port}", "--last-event-id", "0") as client:
        async with running_app(settings, port=port) as base_url, httpx.AsyncClient(base_url=base_url) as api:
            await client.until("connected")
            await post_executions(api, {"workflow_id": "one", "tool_ids": ["a__x", "b__y"]})
            await post_executions(api, {"workflow_id": "two", "tool_ids": ["b__y", "c__z"]})
            await client.until('"two"')
        # The restart: the client sees the stream end, backs off, and comes back with Last-Event-ID.
        async with running_app(settings, port=port) as base_url, httpx.AsyncClient(base_url=base_url) as api:
            await post_executions(api, {"workflow_id": "three", "tool_ids": ["c__z", "a__x"]})
            await client.until('"three"')
    ids = printed_ids(client.seen)
    assert ids == list(range(1, ids[-1] + 1)), client.seen
    assert sum(1 for line in client.seen if "graph_synced" in line) == 2  # one per start
    assert sum(1 for line in client.seen if line.split()[1:2] == ["connected"]) >= 2


async def test_example_client_refetches_the_graph_on_reset() -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as api:
        await post_executions(api, {"tool_ids": ["a__x", "b__y", "c__z"]})
        async with events_client("--url", base_url, "--last-event-id", "999999") as client:
            lines = await client.until("refetched /graph")
    assert any(line.split()[1] == "reset" for line in lines if len(line.split()) > 1)
    assert "reset (unknown_event_id): refetched /graph: 3 nodes, 2 edges" in lines[-1]
