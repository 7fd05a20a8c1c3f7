"""Downstream isolation: a server that dies, never starts or clashes never takes the others down."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp.types as types
import pytest
from mcp import Client, ClientSession
from mcp.client.session import IncomingMessage
from mcp.client.streamable_http import streamable_http_client

from gateway_support import (
    FAST,
    TEST_SERVER,
    health,
    http_downstream,
    run_gateway,
    stdio_entry,
    text,
    wait_for,
    wait_listening,
)
from pml_gateway.proxy.downstream.supervisor import SupervisionTiming
from pml_gateway.proxy.registry import NAME_PATTERN

pytestmark = pytest.mark.anyio

#: Slow enough restarts that the gap between death and restart can be observed.
PATIENT = SupervisionTiming(
    backoff_initial=1.5, backoff_max=3, connect_timeout=20, ping_interval=0.3, ping_timeout=5, stable_after=60
)


class Notifications:
    def __init__(self) -> None:
        self.list_changed = 0

    async def __call__(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.list_changed += 1


async def names(session: ClientSession | Client) -> set[str]:
    return {t.name for t in (await session.list_tools()).tools}


async def test_a_stdio_downstream_killed_mid_session(tmp_path: Path) -> None:
    servers = {"victim": stdio_entry(), "steady": stdio_entry()}
    async with run_gateway(tmp_path, servers, timing=PATIENT) as gw:
        seen = Notifications()
        with anyio.fail_after(60):
            async with streamable_http_client(gw.mcp_url) as (r, w), ClientSession(r, w, message_handler=seen) as s:
                await s.initialize()
                assert {"victim__echo", "steady__echo"} <= await names(s)
                pid = (await s.call_tool("victim__pid", {})).structured_content["result"]
                os.kill(pid, signal.SIGKILL)

                # its tools vanish and the client is told
                await wait_for(lambda: seen.list_changed >= 1)
                listed = await names(s)
                assert not any(n.startswith("victim__") for n in listed) and "steady__echo" in listed
                # calling it says why; the other server keeps answering
                down = await s.call_tool("victim__echo", {"text": "x"})
                assert down.is_error and "downstream server 'victim' is" in text(down)
                assert "(its process was killed by signal 9 (SIGKILL))" in text(down)  # how it ended (issue 16)
                steady = await s.call_tool("steady__echo", {"text": "still here"})
                assert not steady.is_error and steady.structured_content["text"] == "still here"
                status = (await health(gw.url))["downstreams"]
                assert status["victim"]["state"] in ("failed", "connecting") and status["victim"]["tools"] == 0
                assert status["victim"]["error"] and status["steady"]["state"] == "connected"

                # restarted with backoff: the tools come back, and the client is told again
                await wait_for(lambda: seen.list_changed >= 2)
                assert "victim__echo" in await names(s)
                back = await s.call_tool("victim__echo", {"text": "back"})
                assert not back.is_error and back.structured_content["pid"] != pid
                status = (await health(gw.url))["downstreams"]["victim"]
                assert status["state"] == "connected" and status["tools"] == 6 and status["restarts"] == 1


async def test_an_http_downstream_killed_and_restarted(tmp_path: Path) -> None:
    with http_downstream() as (url, port, proc):
        await wait_listening(port)
        servers = {"remote": {"url": url}, "local": stdio_entry()}
        async with run_gateway(tmp_path, servers, timing=PATIENT) as gw:
            with anyio.fail_after(60):
                # a 2026-era client hears about changes through subscriptions/listen
                async with Client(gw.mcp_url, cache=None) as client:
                    assert "remote__echo" in await names(client)
                    async with client.listen(tools_list_changed=True) as subscription:
                        proc.kill()
                        proc.wait(timeout=10)
                        event = await anext(aiter(subscription))
                        assert type(event).__name__ == "ToolsListChanged"
                    listed = await names(client)
                    assert "remote__echo" not in listed and "local__echo" in listed
                    # /mcp and the other downstream are unharmed (SDK_NOTES §4: no shared exit stack)
                    ok = await client.call_tool("local__echo", {"text": "fine"})
                    assert not ok.is_error
                    status = (await health(gw.url))["downstreams"]["remote"]
                    assert status["state"] in ("failed", "connecting") and status["error"]

                    # the server comes back on the same port: so do its tools
                    with http_downstream_on(port):
                        await wait_for(lambda: _has(client, "remote__echo"), timeout=30)
                        again = await client.call_tool("remote__echo", {"text": "again"})
                        assert not again.is_error and again.structured_content["text"] == "again"


async def _has(client: Client, name: str) -> bool:
    return name in await names(client)


class http_downstream_on:
    """Start the test server over HTTP on a given port (the restart of a killed one)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def __enter__(self) -> subprocess.Popen[bytes]:
        self.proc = subprocess.Popen(
            [sys.executable, str(TEST_SERVER), "--transport", "streamable-http", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self.proc

    def __exit__(self, *exc: Any) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


async def test_downstreams_that_never_start(tmp_path: Path) -> None:
    servers = {
        "ghost": {"command": str(tmp_path / "no-such-command")},
        "quitter": {"command": sys.executable, "args": ["-c", "import sys; sys.exit(3)"]},
        "refused": {"url": "http://127.0.0.1:9/mcp"},
        "fine": stdio_entry(),
    }
    async with run_gateway(tmp_path, servers, timing=FAST) as gw:
        with anyio.fail_after(60):
            status = (await health(gw.url))["downstreams"]
            assert status["fine"]["state"] == "connected"
            for name in ("ghost", "quitter", "refused"):
                assert status[name]["state"] in ("failed", "connecting") and status[name]["tools"] == 0
            assert "no-such-command" in (await wait_for(lambda: _error_of(gw.url, "ghost")))
            assert await wait_for(lambda: _error_of(gw.url, "quitter"))
            assert "connect" in (await wait_for(lambda: _error_of(gw.url, "refused"))).lower()
            # it keeps trying, with backoff
            await wait_for(lambda: _restarts(gw.url, "quitter", 3))
            async with Client(gw.mcp_url, mode="legacy", cache=None) as client:
                listed = await names(client)
                assert "fine__echo" in listed and not any(n.split("__")[0] in ("ghost", "quitter", "refused") for n in listed)
                result = await client.call_tool("ghost__echo", {"text": "x"})
                assert result.is_error and "'ghost' is" in text(result)
                assert not (await client.call_tool("fine__echo", {"text": "x"})).is_error


async def _error_of(url: str, name: str) -> str | None:
    return (await health(url))["downstreams"][name]["error"]


async def _restarts(url: str, name: str, at_least: int) -> bool:
    return (await health(url))["downstreams"][name]["restarts"] >= at_least


async def test_clashing_and_invalid_names_over_the_wire(tmp_path: Path) -> None:
    servers = {
        "a.b": stdio_entry(),
        "a_b": stdio_entry("--extra-tool", "weird name!", "--extra-tool", "x" * 70),
    }
    async with run_gateway(tmp_path, servers) as gw:
        with anyio.fail_after(30):
            async with Client(gw.mcp_url, mode="legacy", cache=None) as client:
                listed = await names(client)
                assert all(NAME_PATTERN.match(n) for n in listed)
                assert "a_b__echo" in listed  # the server whose name needed no change keeps it
                (other,) = [n for n in listed if n.startswith("a_b__echo_")]
                assert "a_b__weird_name_" in listed
                assert any(n.startswith("a_b__xxxx") and len(n) == 64 for n in listed)
                # each name reaches its own server
                one = await client.call_tool("a_b__echo", {"text": "1"})
                two = await client.call_tool(other, {"text": "2"})
                assert one.structured_content["pid"] != two.structured_content["pid"]
                pids = {
                    (await client.call_tool(n, {})).structured_content["result"]
                    for n in listed
                    if n.startswith("a_b__pid")
                }
                assert len(pids) == 2


def test_a_bad_config_file_stops_start_up_with_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "mcp.json"
    bad.write_text('{"mcpServers": {"files": {"command": "python", "args": "-m x"}}}')
    for command in ("serve", "stdio"):
        done = subprocess.run(
            [sys.executable, "-m", "pml_gateway", command, "--config", str(bad), "--db", ":memory:"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 2
        assert "server 'files': field 'args'" in done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("transport", ["stdio", "streamable-http"])
async def test_a_downstream_dying_during_a_call(tmp_path: Path, transport: str) -> None:
    """The pending call returns an error at once, not after its timeout (SDK_NOTES §4: over HTTP it never would)."""
    with contextlib.ExitStack() as stack:
        if transport == "stdio":
            servers: dict[str, Any] = {"victim": stdio_entry(timeout=120)}
        else:
            url, port, _proc = stack.enter_context(http_downstream())
            await wait_listening(port)
            servers = {"victim": {"url": url, "timeout": 120}}
        async with run_gateway(tmp_path, servers, timing=PATIENT) as gw:
            with anyio.fail_after(60):  # far below the call's own 120 s timeout
                async with Client(gw.mcp_url, mode="legacy", cache=None) as client:
                    pid = (await client.call_tool("victim__pid", {})).structured_content["result"]
                    results: list[types.CallToolResult] = []

                    async def slow_call() -> None:
                        results.append(await client.call_tool("victim__sleep", {"seconds": 100}))

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(slow_call)
                        await anyio.sleep(0.5)
                        os.kill(pid, signal.SIGKILL)
                    (result,) = results
                    assert result.is_error
                    assert "'victim'" in text(result) and ("closed" in text(result) or "disconnected" in text(result))


#: A dead server stays dead for the length of a test.
STAYS_DOWN = SupervisionTiming(
    backoff_initial=60, backoff_max=60, connect_timeout=20, ping_interval=0.3, ping_timeout=5, stable_after=60
)


async def test_servers_named_with_the_separator_or_odd_characters(tmp_path: Path) -> None:
    """``a__b`` and ``my.files``: tools route, /graph names their server, and down means "unavailable"."""
    servers = {
        "a__b": stdio_entry(),
        "my.files": {"command": sys.executable, "args": ["-c", "raise SystemExit(3)"]},  # never starts
    }
    async with run_gateway(tmp_path, servers, timing=STAYS_DOWN) as gw:
        with anyio.fail_after(60):
            async with Client(gw.mcp_url, cache=None) as modern, Client(gw.mcp_url, mode="legacy", cache=None) as legacy:
                listed = await names(modern)
                assert {"a__b__echo", "a__b__pid"} <= listed and not any(n.startswith("my_files__") for n in listed)
                assert (await modern.call_tool("a__b__echo", {"text": "hi"})).structured_content["text"] == "hi"
                pid = (await legacy.call_tool("a__b__pid", {})).structured_content["result"]

                # /graph names the configured server, not the part of the name before the first "__"
                async with httpx.AsyncClient(base_url=gw.url) as http:

                    async def graph_servers() -> dict[str, str | None] | None:
                        nodes = {node["id"]: node["server"] for node in (await http.get("/graph")).json()["nodes"]}
                        return nodes if {"a__b__echo", "a__b__pid"} <= nodes.keys() else None

                    graph = await wait_for(graph_servers)
                    assert graph["a__b__echo"] == graph["a__b__pid"] == "a__b"
                    # an agent's execution that names no server: the registry answers, also for a server that is down
                    posted = await http.post("/executions", json={"tool_ids": ["a__b__write", "my_files__read"]})
                    assert posted.status_code == 202  # recorded by then
                    graph = await graph_servers()
                    assert graph is not None and graph["a__b__write"] == "a__b" and graph["my_files__read"] == "my.files"

                os.kill(pid, signal.SIGKILL)
                await wait_for(lambda: _state(gw.url, "a__b", "failed"))
                for client in (modern, legacy):
                    for name, server in (("a__b__echo", "a__b"), ("my_files__read", "my.files")):
                        result = await client.call_tool(name, {"text": "x"})
                        expected = f"tool {name!r} is unavailable: downstream server {server!r} is failed"
                        assert result.is_error and expected in text(result), (name, text(result))
                    unknown = await client.call_tool("nobody__read", {})
                    assert unknown.is_error and text(unknown) == "unknown tool 'nobody__read'"


async def _state(url: str, server: str, state: str) -> bool:
    return (await health(url))["downstreams"][server]["state"] == state
