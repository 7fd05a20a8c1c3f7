"""``"session": "per_client"`` (issue 16): each upstream session has its own downstream session.

Against the real ``@modelcontextprotocol/server-everything``, whose ``toggle-simulated-logging``
keeps state per session ("Started..." / "Stopped..."), over stdio (one process per session) and
Streamable HTTP (one MCP session per upstream session, each named in its answers), with real SDK
clients of both protocol eras through a real gateway.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import mcp.types as types
import pytest
from gateway_support import (
    RunningGateway,
    health,
    run_gateway,
    text,
    wait_for,
    wait_listening,
)
from mcp import Client

from test_mcp_surface import EVERYTHING, everything_over_http
TOGGLE = "toggle-simulated-logging"

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not EVERYTHING.exists() and not os.environ.get("CI"), reason="server-everything is installed by `make test`"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # MCPDeprecationWarning: logging
]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def everything_http() -> Iterator[str]:
    """server-everything over Streamable HTTP, as a subprocess; its URL."""
    with everything_over_http() as (url, _port):
        yield url


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory, everything_http: str) -> AsyncIterator[RunningGateway]:
    await wait_listening(int(everything_http.rsplit(":", 1)[1].split("/")[0]))
    stdio = {"command": str(EVERYTHING), "args": ["stdio"]}
    servers = {
        "shared": stdio,
        "own": {**stdio, "session": "per_client"},
        "web": {"url": everything_http, "session": "per_client"},
        "tight": {"url": everything_http, "session": "per_client", "max_sessions": 1},
        "brief": {"url": everything_http, "session": "per_client", "session_idle_seconds": 0.4},
    }
    async with run_gateway(tmp_path_factory.mktemp("sessions"), servers) as running:
        await wait_for(lambda: all(f"{name}__echo" in running.gateway.registry for name in servers), timeout=30)
        yield running


class Inbox:
    """The log messages a client was sent."""

    def __init__(self) -> None:
        self.logs: list[types.LoggingMessageNotificationParams] = []

    async def handler(self, message: Any) -> None:
        if isinstance(message, types.LoggingMessageNotification):
            self.logs.append(message.params)


async def toggle(client: Client, server: str) -> str:
    result = await client.call_tool(f"{server}__{TOGGLE}", {})
    assert not result.is_error, text(result)
    return text(result).split(" ", 1)[0]  # "Started" / "Stopped"


async def sessions(gateway: RunningGateway, server: str) -> int:
    return (await health(gateway.url))["downstreams"][server]["sessions"]


async def test_a_shared_server_leaks_the_toggle_and_a_per_client_one_does_not(gateway: RunningGateway) -> None:
    # a: plain client (its calls take the fast path); b: declares sampling (its calls go through the SDK)
    async def sample(context: Any, params: Any) -> types.CreateMessageResult:
        raise AssertionError("not asked")

    async with Client(gateway.mcp_url, mode="legacy") as a, Client(gateway.mcp_url, mode="legacy", sampling_callback=sample) as b:
        # shared: b's toggle is a's toggle (what issue 16 saw)
        assert [await toggle(a, "shared"), await toggle(b, "shared")] == ["Started", "Stopped"]
        # per_client over stdio: a process each
        fast = gateway.gateway.fast_path
        assert fast is not None
        before = fast.calls
        assert [await toggle(a, "own"), await toggle(b, "own")] == ["Started", "Started"]
        assert fast.calls == before + 1  # a's call took the fast path, b's the SDK's: both reach their own session
        assert [await toggle(a, "own"), await toggle(b, "own")] == ["Stopped", "Stopped"]
        assert await sessions(gateway, "own") == 2
        # a 2026-era client has no session of its own: it uses the shared one, which neither a nor b touched
        async with Client(gateway.mcp_url) as modern:
            assert modern.protocol_version == "2026-07-28"
            assert [await toggle(modern, "own"), await toggle(modern, "own")] == ["Started", "Stopped"]
        assert await sessions(gateway, "own") == 2
    # the upstream sessions ended (DELETE): their downstream sessions (processes) close
    await wait_for(lambda: sessions_are(gateway, "own", 0), timeout=10)


async def sessions_are(gateway: RunningGateway, server: str, count: int) -> bool:
    return await sessions(gateway, server) == count


async def test_the_logging_level_one_client_sets_does_not_reach_another(gateway: RunningGateway) -> None:
    inbox_a, inbox_b = Inbox(), Inbox()
    async with (
        Client(gateway.mcp_url, mode="legacy", message_handler=inbox_a.handler) as a,
        Client(gateway.mcp_url, mode="legacy", message_handler=inbox_b.handler) as b,
    ):
        await a.set_logging_level("debug")
        await b.set_logging_level("emergency")  # shared, this would be the level a's messages are sent at
        assert await toggle(a, "own") == "Started"  # server-everything logs once at once, at a random level
        try:
            await wait_for(lambda: inbox_a.logs, timeout=10)
        finally:
            assert await toggle(a, "own") == "Stopped"
        assert {log.logger for log in inbox_a.logs} == {"own"}
        assert inbox_b.logs == []  # b never toggled: nothing of a's session reaches it


async def test_an_http_downstream_gives_each_client_its_own_mcp_session(gateway: RunningGateway) -> None:
    inbox_a, inbox_b = Inbox(), Inbox()
    async with (
        Client(gateway.mcp_url, mode="legacy", message_handler=inbox_a.handler) as a,
        Client(gateway.mcp_url, mode="legacy", message_handler=inbox_b.handler) as b,
    ):
        started_a = text(await a.call_tool(f"web__{TOGGLE}", {}))
        started_b = text(await b.call_tool(f"web__{TOGGLE}", {}))
        assert started_a.startswith("Started") and started_b.startswith("Started")
        session_a = started_a.split("for session ", 1)[1].split(" ", 1)[0]
        session_b = started_b.split("for session ", 1)[1].split(" ", 1)[0]
        assert session_a != session_b
        try:
            await wait_for(lambda: inbox_a.logs and inbox_b.logs, timeout=10)
        finally:
            await a.call_tool(f"web__{TOGGLE}", {})
            await b.call_tool(f"web__{TOGGLE}", {})
        # each client hears its own downstream session's messages, never the other's
        assert all(f"SessionId {session_a}" in str(log.data) for log in inbox_a.logs)
        assert all(f"SessionId {session_b}" in str(log.data) for log in inbox_b.logs)


async def test_at_max_sessions_the_least_recently_used_session_is_closed(gateway: RunningGateway) -> None:
    async with Client(gateway.mcp_url, mode="legacy") as a, Client(gateway.mcp_url, mode="legacy") as b:
        assert await toggle(a, "tight") == "Started"
        assert await toggle(b, "tight") == "Started"  # a's session was closed for b's (max_sessions 1)
        assert await sessions(gateway, "tight") == 1
        assert await toggle(a, "tight") == "Started"  # a fresh session: what a's held went with it
        assert await toggle(a, "tight") == "Stopped"
    assert gateway.gateway.pool.downstreams["tight"].sessions.evicted_total >= 2  # type: ignore[union-attr]


async def test_an_idle_session_is_closed_and_reopened_on_the_next_request(gateway: RunningGateway) -> None:
    async with Client(gateway.mcp_url, mode="legacy") as a:
        assert await toggle(a, "brief") == "Started"
        await wait_for(lambda: sessions_are(gateway, "brief", 0), timeout=10)  # idle 0.4 s
        assert await toggle(a, "brief") == "Started"  # a new session
        assert await toggle(a, "brief") == "Stopped"


async def test_a_subscription_is_made_and_heard_on_the_subscribers_own_session(gateway: RunningGateway) -> None:
    # 'brief' (first by name) serves the static documents: subscriptions go to the caller's own session there
    doc = "demo://resource/static/document/features.md"
    updated_a: list[str] = []
    updated_b: list[str] = []

    def inbox(seen: list[str]) -> Any:
        async def handler(message: Any) -> None:
            if isinstance(message, types.ResourceUpdatedNotification):
                seen.append(message.params.uri)

        return handler

    async with (
        Client(gateway.mcp_url, mode="legacy", message_handler=inbox(updated_a)) as a,
        Client(gateway.mcp_url, mode="legacy", message_handler=inbox(updated_b)) as b,
    ):
        await a.subscribe_resource(doc)
        await b.call_tool("brief__toggle-subscriber-updates", {})  # b's own session: b subscribed to nothing
        await a.call_tool("brief__toggle-subscriber-updates", {})  # a's: one update at once, then every 5 s
        try:
            await wait_for(lambda: updated_a, timeout=10)
            await anyio.sleep(1.0)  # idle 0.4 s: b's session closed, a's holds a subscription and stays open
            assert await sessions(gateway, "brief") == 1 and updated_b == []
        finally:
            await a.call_tool("brief__toggle-subscriber-updates", {})
        assert set(updated_a) == {doc}
        await a.unsubscribe_resource(doc)
        await wait_for(lambda: sessions_are(gateway, "brief", 0), timeout=10)  # now idle closes it too


async def test_a_reopened_session_gets_its_clients_subscriptions_again(gateway: RunningGateway) -> None:
    doc = "demo://resource/static/document/features.md"  # served by 'brief'
    updated: list[str] = []

    async def handler(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.append(message.params.uri)

    pool = gateway.gateway.pool.downstreams["brief"].sessions
    assert pool is not None
    async with Client(gateway.mcp_url, mode="legacy", message_handler=handler) as a:
        await a.subscribe_resource(doc)
        assert await sessions(gateway, "brief") == 1
        (key,) = pool._sessions  # a's upstream session
        pool.close(key)  # as a restart of the server's connection would
        await wait_for(lambda: sessions_are(gateway, "brief", 0), timeout=10)
        await a.call_tool("brief__toggle-subscriber-updates", {})  # reopens it: subscribed again, so updated at once
        try:
            await wait_for(lambda: updated, timeout=10)
        finally:
            await a.call_tool("brief__toggle-subscriber-updates", {})
        assert pool.get(key) is not None and pool.get(key).subscriptions == {doc}  # type: ignore[union-attr]
        await a.unsubscribe_resource(doc)


async def test_at_max_sessions_with_every_session_busy_the_call_fails_saying_so(gateway: RunningGateway) -> None:
    async with Client(gateway.mcp_url, mode="legacy") as a, Client(gateway.mcp_url, mode="legacy") as b:
        long_call: list[types.CallToolResult] = []

        async def busy() -> None:
            long_call.append(await a.call_tool("tight__trigger-long-running-operation", {"duration": 1.5, "steps": 1}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(busy)
            pool = gateway.gateway.pool.downstreams["tight"].sessions
            assert pool is not None
            await wait_for(lambda: any(s.busy for s in pool._sessions.values()), timeout=10)
            refused = await b.call_tool("tight__echo", {"message": "hi"})
        assert refused.is_error and text(refused) == (
            "downstream server 'tight' has no session for this client: "
            "all 1 of its sessions (max_sessions) have requests in flight"
        )
        assert not long_call[0].is_error
        assert not (await b.call_tool("tight__echo", {"message": "hi"})).is_error  # a's is idle now: evicted for b's
