"""The gateway through real MCP clients: tools listed with their schemas, called, errors as tool errors."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client, ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from gateway_support import TEST_SERVER, health, http_downstream, run_gateway, stdio_entry, text, wait_listening

pytestmark = pytest.mark.anyio


async def test_tools_of_stdio_and_http_downstreams_are_listed_and_called(tmp_path: Path) -> None:
    with http_downstream("--prefix", "h_") as (url, port, _proc):
        await wait_listening(port)
        servers = {"local": stdio_entry(), "remote": {"url": url, "timeout": 10}}
        async with run_gateway(tmp_path, servers) as gw:
            with anyio.fail_after(30):
                async with streamable_http_client(gw.mcp_url) as (read, write), ClientSession(read, write) as session:
                    init = await session.initialize()
                    assert init.capabilities.tools is not None and init.capabilities.tools.list_changed is True
                    tools = {t.name: t for t in (await session.list_tools()).tools}
                    assert {"local__echo", "local__pick", "remote__h_echo", "remote__h_pick"} <= tools.keys()
                    assert {"pml_graph_metrics", "pml_search_tools", "pml_suggest_next_tools", "pml_execute_workflow"} <= tools.keys()
                    # schemas pass through untouched
                    pick = tools["local__pick"].input_schema
                    assert pick["properties"]["count"]["minimum"] == 1 and pick["properties"]["mode"]["enum"] == ["fast", "slow"]
                    assert tools["remote__h_pick"].input_schema == pick
                    assert tools["local__echo"].output_schema is not None

                    local = await session.call_tool("local__echo", {"text": "hi"})
                    remote = await session.call_tool("remote__h_echo", {"text": "there"})
                    assert not local.is_error and local.structured_content["text"] == "hi"
                    assert not remote.is_error and remote.structured_content["text"] == "there"
                    assert local.structured_content["pid"] != remote.structured_content["pid"]

                    # bad arguments: the downstream's own validation, as a tool error
                    bad = await session.call_tool("local__pick", {"count": 0})
                    assert bad.is_error and "count" in text(bad)
                    # a tool that fails
                    failed = await session.call_tool("remote__h_fail", {"message": "nope"})
                    assert failed.is_error and "nope" in text(failed)
                    # an unknown tool
                    unknown = await session.call_tool("nobody__nothing", {})
                    assert unknown.is_error and "unknown tool 'nobody__nothing'" in text(unknown)

            status = await health(gw.url)
            assert status["status"] == "ok"
            assert status["downstreams"]["local"]["state"] == "connected"
            assert status["downstreams"]["local"]["tools"] == 6
            assert status["downstreams"]["remote"] == {**status["downstreams"]["remote"], "state": "connected", "tools": 6, "error": None}


async def test_the_2026_client_in_auto_mode(tmp_path: Path) -> None:
    async with run_gateway(tmp_path, {"local": stdio_entry()}) as gw:
        with anyio.fail_after(30):
            async with Client(gw.mcp_url, cache=None) as client:
                assert client.protocol_version == "2026-07-28"
                names = {t.name for t in (await client.list_tools()).tools}
                assert "local__echo" in names and "pml_search_tools" in names
                result = await client.call_tool("local__echo", {"text": "modern"})
                assert not result.is_error and result.structured_content["text"] == "modern"
                metrics = await client.call_tool("pml_graph_metrics", {})
                assert not metrics.is_error and "node_count" in metrics.structured_content


async def test_a_timeout_comes_back_as_a_tool_error(tmp_path: Path) -> None:
    async with run_gateway(tmp_path, {"slow": stdio_entry(timeout=0.5)}) as gw:
        with anyio.fail_after(30):
            async with Client(gw.mcp_url, mode="legacy", cache=None) as client:
                result = await client.call_tool("slow__sleep", {"seconds": 5})
                assert result.is_error
                assert "timed out after 0.5 s" in text(result)
                # the server is still fine afterwards
                again = await client.call_tool("slow__echo", {"text": "ok"})
                assert not again.is_error


async def test_dns_rebinding_protection_on_localhost(tmp_path: Path) -> None:
    async with run_gateway(tmp_path, {}) as gw:
        body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        async with httpx.AsyncClient() as client:
            evil = await client.post(gw.mcp_url, json=body, headers={**headers, "Host": "evil.example"})
            assert evil.status_code == 421
            fine = await client.post(gw.mcp_url, json=body, headers=headers)
            assert fine.status_code == 200


async def test_over_stdio_with_pml_gateway_stdio(tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    config.write_text('{"mcpServers": {"local": {"command": "python", "args": ["%s"]}}}' % TEST_SERVER)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "pml_gateway", "stdio", "--config", str(config), "--db", ":memory:"],
        cwd=str(tmp_path),
    )
    with anyio.fail_after(60):
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.server_info.name == "pml-gateway"
            names = {t.name for t in (await session.list_tools()).tools}
            assert "local__echo" in names and "pml_execute_workflow" in names
            result = await session.call_tool("local__echo", {"text": "via stdio"})
            assert not result.is_error and result.structured_content["text"] == "via stdio"


async def test_stdio_with_the_http_api_beside_it(tmp_path: Path) -> None:
    from gateway_support import free_port

    config = tmp_path / "mcp.json"
    config.write_text('{"mcpServers": {"local": {"command": "python", "args": ["%s"]}}}' % TEST_SERVER)
    port = free_port()
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "pml_gateway", "stdio", "--config", str(config), "--db", ":memory:", "--events-port", str(port)],
        env={"PML_TRACE_IDLE_SECONDS": "0.3"},
        cwd=str(tmp_path),
    )
    with anyio.fail_after(60):
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            await wait_listening(port)
            base = f"http://127.0.0.1:{port}"
            assert (await health(base))["downstreams"]["local"]["state"] == "connected"
            await session.call_tool("local__echo", {"text": "1"})
            await session.call_tool("local__pid", {})
            async with httpx.AsyncClient() as http:
                while True:  # the stdio session's trace goes quiet, is recorded, and shows up over HTTP
                    edges = (await http.get(f"{base}/graph")).json()["edges"]
                    if edges:
                        break
                    await anyio.sleep(0.1)
            assert [(e["from_tool_id"], e["to_tool_id"]) for e in edges] == [("local__echo", "local__pid")]


async def test_the_example_servers_over_every_transport(tmp_path: Path) -> None:
    from gateway_support import EXAMPLES

    notes_dir = tmp_path / "notes"
    with http_downstream(script=EXAMPLES / "notes_server.py", env={"NOTES_DIR": str(notes_dir)}) as (notes_url, notes_port, _), \
            http_downstream(script=EXAMPLES / "math_server.py", transport="sse") as (math_url, math_port, _):
        await wait_listening(notes_port)
        await wait_listening(math_port)
        servers = {
            "notes": {"type": "http", "url": notes_url},
            "math": {"type": "sse", "url": math_url},
            "text": {"command": "python", "args": [str(EXAMPLES / "text_server.py")]},
        }
        async with run_gateway(tmp_path, servers) as gw:
            with anyio.fail_after(30):
                async with Client(gw.mcp_url, mode="legacy", cache=None) as client:
                    created = await client.call_tool("notes__create_note", {"title": "Plan", "body": "Ship it. Then rest."})
                    assert not created.is_error and (notes_dir / f"{created.structured_content['id']}.json").exists()
                    summary = await client.call_tool("text__summarize", {"text": "Ship it. Then rest.", "sentences": 1})
                    assert summary.structured_content["summary"] == "Ship it."
                    miles = await client.call_tool("math__convert_units", {"value": 42.195, "from_unit": "km", "to_unit": "mi"})
                    assert abs(miles.structured_content["value"] - 26.219) < 0.001
                    bad = await client.call_tool("math__convert_units", {"value": 1, "from_unit": "km", "to_unit": "kg"})
                    assert bad.is_error and "cannot convert length (km) to mass (kg)" in text(bad)
            transports = {name: h["transport"] for name, h in (await health(gw.url))["downstreams"].items()}
            assert transports == {"notes": "streamable-http", "math": "sse", "text": "stdio"}
