"""2025-era MCP sessions are bounded per client address and overall (issue 15 item 6).

10,100 never-closed sessions locked new 2025-era clients out for 30 minutes. Now a client
address holds at most ``max_mcp_sessions_per_client`` sessions and the process ``max_mcp_sessions``;
past either the oldest idle session is evicted, and only when none is idle is the new one refused,
with a JSON answer naming the setting. 2026-era clients hold no session and are never refused.

Clients on other addresses connect from 127.0.0.2 / 127.0.0.3 (any 127/8 address is loopback).
"Never-closed" sessions are opened as the fault run opened them: initialize, then nothing.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client, ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from gateway_support import LEGACY_INITIALIZE, MCP_HEADERS, RunningGateway, run_gateway, stdio_entry, text, wait_for

pytestmark = pytest.mark.anyio

def client_from(address: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(headers=MCP_HEADERS, transport=httpx.AsyncHTTPTransport(local_address=address), timeout=10)


async def open_session(http: httpx.AsyncClient, url: str) -> str:
    """A 2025-era session opened and then left alone (no GET stream, never DELETEd)."""
    opened = await http.post(url, json=LEGACY_INITIALIZE)
    assert opened.status_code == 200, opened.text
    session_id = opened.headers["mcp-session-id"]
    done = await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=_session(session_id))
    assert done.status_code == 202
    return session_id


def _session(session_id: str) -> dict[str, str]:
    return {"mcp-session-id": session_id, "mcp-protocol-version": "2025-11-25"}


async def status_of(http: httpx.AsyncClient, url: str, session_id: str) -> int:
    """200 while the session lives, 404 once it is gone."""
    answer = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=_session(session_id))
    return answer.status_code


def busy(gw: RunningGateway, session_id: str) -> bool:
    """The SDK counts the session as in use (a request or a GET stream of its open)."""
    transport = gw.gateway.session_manager._server_instances.get(session_id)  # type: ignore[union-attr]
    return transport is not None and transport.idle_scope is not None and transport.idle_scope.deadline == math.inf


@asynccontextmanager
async def get_stream(http: httpx.AsyncClient, gw: RunningGateway, session_id: str) -> AsyncIterator[None]:
    """The session's standalone GET stream held open: the session is in use, not idle."""
    async with http.stream("GET", gw.mcp_url, headers={**_session(session_id), "accept": "text/event-stream"}) as stream:
        assert stream.status_code == 200
        await wait_for(lambda: busy(gw, session_id), timeout=5)
        yield


@asynccontextmanager
async def sdk_session(gw: RunningGateway) -> AsyncIterator[ClientSession]:
    """A real 2025-era client (the SDK's ClientSession), its GET stream open once yielded."""
    async with streamable_http_client(gw.mcp_url) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        manager: Any = gw.gateway.session_manager
        await wait_for(lambda: any(busy(gw, sid) for sid in list(manager._server_instances)), timeout=5)
        yield session


async def new_sdk_session(gw: RunningGateway) -> None:
    async with streamable_http_client(gw.mcp_url) as (read, write), ClientSession(read, write) as session:
        await session.initialize()


async def new_legacy_client(gw: RunningGateway) -> None:
    async with Client(gw.mcp_url, mode="legacy", cache=None) as client:
        await client.list_tools()


async def refusal(opening: Awaitable[None]) -> str:
    """The MCPError message a client got when opening its session (the SDK wraps it in groups)."""
    try:
        await opening
    except BaseException as exc:  # noqa: BLE001  # unwrapped below; anything else fails the test
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        assert isinstance(exc, MCPError), repr(exc)
        return exc.message
    raise AssertionError("the session was opened")


async def test_an_address_at_its_cap_evicts_its_oldest_idle_session_then_refuses(tmp_path: Path) -> None:
    async with run_gateway(tmp_path, {"local": stdio_entry()}, max_mcp_sessions_per_client=2) as gw:
        manager: Any = gw.gateway.session_manager
        with anyio.fail_after(30):
            async with client_from("127.0.0.1") as http, client_from("127.0.0.2") as other:
                first = await open_session(http, gw.mcp_url)
                second = await open_session(http, gw.mcp_url)
                # a real client from the same address: the oldest idle session makes room
                async with sdk_session(gw) as session:
                    assert await status_of(http, gw.mcp_url, first) == 404
                    assert await status_of(http, gw.mcp_url, second) == 200
                    echoed = await session.call_tool("local__echo", {"text": "in"})
                    assert not echoed.is_error and "in" in text(echoed)
                    # another address has a cap of its own
                    assert await status_of(other, gw.mcp_url, await open_session(other, gw.mcp_url)) == 200
                    # the SDK client's session is in use (its GET stream): `second` is the only idle one here
                    third = await open_session(http, gw.mcp_url)
                    assert await status_of(http, gw.mcp_url, second) == 404
                    async with get_stream(http, gw, third):
                        # both sessions of 127.0.0.1 in use: a new one is refused, naming the setting
                        assert "max_mcp_sessions_per_client = 2" in await refusal(new_sdk_session(gw))
                        answer = await http.post(gw.mcp_url, json=LEGACY_INITIALIZE)
                        assert answer.status_code == 429
                        assert "max_mcp_sessions_per_client" in answer.json()["error"]["message"]
                        # the session in use still works
                        again = await session.call_tool("local__echo", {"text": "still"})
                        assert not again.is_error and "still" in text(again)
                assert manager.evicted == 2


async def test_the_process_cap_evicts_the_oldest_idle_session_of_any_address(tmp_path: Path) -> None:
    async with run_gateway(tmp_path, {}, max_mcp_sessions=2) as gw:
        with anyio.fail_after(30):
            async with client_from("127.0.0.1") as one, client_from("127.0.0.2") as two, client_from("127.0.0.3") as three:
                oldest = await open_session(one, gw.mcp_url)
                newer = await open_session(two, gw.mcp_url)
                newest = await open_session(three, gw.mcp_url)
                assert await status_of(one, gw.mcp_url, oldest) == 404
                assert await status_of(two, gw.mcp_url, newer) == 200
                async with get_stream(two, gw, newer), get_stream(three, gw, newest):
                    answer = await one.post(gw.mcp_url, json=LEGACY_INITIALIZE)
                    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
                    assert answer.headers["content-type"] == "application/json"
                    assert "max_mcp_sessions = 2" in answer.json()["error"]["message"]
                    assert len(gw.gateway.session_manager._server_instances) == 2  # type: ignore[union-attr]


async def call(http: httpx.AsyncClient, url: str, session_id: str, tool: str, arguments: dict[str, Any]) -> None:
    body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    answer = await http.post(url, json=body, headers=_session(session_id))
    assert answer.status_code == 200 and '"isError":false' in answer.text.replace(" ", "")


async def test_an_idle_session_ends_after_the_idle_timeout_one_in_use_does_not(tmp_path: Path) -> None:
    settings = {"mcp_session_idle_seconds": 0.5, "trace_idle_seconds": 60}
    async with run_gateway(tmp_path, {"local": stdio_entry()}, **settings) as gw:
        manager: Any = gw.gateway.session_manager
        upstream: Any = gw.gateway.upstream
        engine = gw.app.state.pml.engine
        with anyio.fail_after(30):
            async with client_from("127.0.0.1") as http:
                idle = await open_session(http, gw.mcp_url)
                await call(http, gw.mcp_url, idle, "local__echo", {"text": "a"})
                await call(http, gw.mcp_url, idle, "local__pick", {"count": 1})
                held = await open_session(http, gw.mcp_url)
                async with get_stream(http, gw, held):
                    await wait_for(lambda: idle not in manager._server_instances, timeout=5)
                    assert await status_of(http, gw.mcp_url, idle) == 404
                    # the gateway forgot it too, and its trace is recorded now, not after trace_idle_seconds
                    await wait_for(lambda: engine.graph.has_edge("local__echo", "local__pick"), timeout=5)
                    assert upstream.legacy_session(idle) is None
                    await anyio.sleep(1.0)  # twice the timeout: the held session is still there
                    assert held in manager._server_instances
                assert await status_of(http, gw.mcp_url, held) == 200
                assert manager.evicted == 0  # ended by the timeout, not evicted


async def test_2026_clients_hold_no_session_and_are_never_refused(tmp_path: Path) -> None:
    async with run_gateway(tmp_path, {"local": stdio_entry()}, max_mcp_sessions=1, max_mcp_sessions_per_client=1) as gw:
        with anyio.fail_after(30):
            async with sdk_session(gw):  # the only session there may be, in use
                assert "max_mcp_sessions_per_client = 1" in await refusal(new_legacy_client(gw))
                for _ in range(3):
                    async with Client(gw.mcp_url, cache=None) as modern:  # 2026-07-28: no session
                        echoed = await modern.call_tool("local__echo", {"text": "modern"})
                        assert not echoed.is_error and "modern" in text(echoed)
                assert len(gw.gateway.session_manager._server_instances) == 1  # type: ignore[union-attr]


async def test_a_session_whose_call_the_fast_path_is_serving_is_not_evicted(tmp_path: Path) -> None:
    async with run_gateway(tmp_path, {"local": stdio_entry()}, max_mcp_sessions_per_client=2) as gw:
        manager: Any = gw.gateway.session_manager
        with anyio.fail_after(30):
            async with client_from("127.0.0.1") as http:
                calling = await open_session(http, gw.mcp_url)
                answers: list[httpx.Response] = []

                async def slow_call() -> None:
                    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "local__sleep", "arguments": {"seconds": 1.5}}}
                    answers.append(await http.post(gw.mcp_url, json=call, headers=_session(calling)))

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(slow_call)
                    await wait_for(lambda: calling in manager.fast_path_calls, timeout=5)
                    newer = await open_session(http, gw.mcp_url)  # idle, but its last request is newer
                    await open_session(http, gw.mcp_url)  # at the cap: the idle one goes, not the one in use
                    assert await status_of(http, gw.mcp_url, newer) == 404
                (answer,) = answers
                assert answer.status_code == 200 and "slept 1.5" in answer.text
                assert await status_of(http, gw.mcp_url, calling) == 200
                assert manager.fast_path_calls == {}
