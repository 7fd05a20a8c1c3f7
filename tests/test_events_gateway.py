"""The gateway's own events on the wire: ``tool_added`` / ``tool_removed`` as downstream servers
connect, crash and leave the config (and nothing new on a restart where nothing changed), and
``workflow_progress`` for every task of a ``pml_execute_workflow`` run, in both protocol eras."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from websockets.asyncio.client import connect

from gateway_support import health, run_gateway, stdio_entry, text, wait_for
from server_helpers import WireEvent, WireReader, open_stream

pytestmark = pytest.mark.anyio

TOOLS = ["echo", "fail", "pick", "pid", "sleep", "span"]  # what tests/gateway_test_server.py offers
SERVERS = {"alpha": stdio_entry(), "beta": stdio_entry("--prefix", "b_")}


def tool_events(events: list[WireEvent]) -> list[tuple[str, str, str, str | None]]:
    return [
        (e.event, e.data["server"], e.data["tool_id"], e.data.get("reason"))
        for e in events
        if e.event in ("tool_added", "tool_removed")
    ]


async def read_tool_events(stream: WireReader, count: int, timeout: float = 20) -> list[WireEvent]:
    """Events off the stream until ``count`` tool events have come."""
    seen: list[WireEvent] = []
    with anyio.fail_after(timeout):
        while len(tool_events(seen)) < count:
            event = await stream.next()
            assert event is not None, f"stream ended; saw {tool_events(seen)}"
            seen.append(event)
    return seen


async def all_connected(url: str, servers: dict[str, Any]) -> bool:
    downstreams = (await health(url))["downstreams"]
    return all(downstreams.get(name, {}).get("state") == "connected" for name in servers)


async def test_tool_events_on_connect_crash_restart_and_config_change(tmp_path: Path) -> None:
    db = str(tmp_path / "graph.db")
    alpha_added = [("tool_added", "alpha", f"alpha__{t}", None) for t in TOOLS]
    beta_added = [("tool_added", "beta", f"beta__b_{t}", None) for t in TOOLS]

    async with run_gateway(tmp_path, SERVERS, db=db, heartbeat_seconds=0.3) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            async with open_stream(client, params={"last_event_id": "0", "types": "tool_*"}) as stream:
                seen = await read_tool_events(stream, 12)
            assert sorted(tool_events(seen)) == sorted(alpha_added + beta_added)
            assert all(e.id is not None for e in seen if e.event.startswith("tool_"))

            # ?servers= keeps events naming that server, and those naming no tool (graph_synced).
            params = {"last_event_id": "0", "servers": "beta", "types": "tool_added,graph_synced"}
            async with open_stream(client, params=params) as stream:
                only_beta = await stream.until(lambda e: e.event == "heartbeat")
            assert sorted(tool_events(only_beta)) == sorted(beta_added)
            assert "graph_synced" in [e.event for e in only_beta]

            # A crash: its tools go (disconnected), then come back with the restarted process.
            last = (await client.get("/events/stats")).json()["last_event_id"]
            async with Client(gw.mcp_url, cache=None) as mcp_client:
                pid = int(text(await mcp_client.call_tool("alpha__pid", {})))
            async with open_stream(client, params={"last_event_id": str(last), "servers": "alpha"}) as stream:
                os.kill(pid, signal.SIGKILL)
                crash = await read_tool_events(stream, 12, timeout=30)
            assert tool_events(crash) == [
                ("tool_removed", "alpha", f"alpha__{t}", "disconnected") for t in TOOLS
            ] + alpha_added
            last = (await client.get("/events/stats")).json()["last_event_id"]

    # Restart on the same database with the same servers: no tool event at all.
    async with run_gateway(tmp_path, SERVERS, db=db, heartbeat_seconds=0.3) as gw:
        await wait_for(lambda: all_connected(gw.url, SERVERS))
        async with httpx.AsyncClient(base_url=gw.url) as client:
            async with open_stream(client, params={"last_event_id": str(last), "types": "tool_*,graph_synced"}) as stream:
                after_restart = await stream.until(lambda e: e.event == "heartbeat")
        assert [e.event for e in after_restart] == ["connected", "graph_synced", "heartbeat"]
        last = after_restart[1].id

    # Restart without beta in the config: beta's tools are removed, reason config_changed.
    only_alpha = {"alpha": SERVERS["alpha"]}
    async with run_gateway(tmp_path, only_alpha, db=db, heartbeat_seconds=0.3) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            async with open_stream(client, params={"last_event_id": str(last), "types": "tool_*"}) as stream:
                removed = await read_tool_events(stream, 6)
    assert tool_events(removed) == [("tool_removed", "beta", f"beta__b_{t}", "config_changed") for t in TOOLS]


WORKFLOW = {
    "tasks": [
        {"id": "a", "tool": "local__echo", "arguments": {"text": "hi"}},
        {"id": "b", "tool": "local__fail", "arguments": {"message": "no"}, "depends_on": ["a"]},
        {"id": "c", "tool": "local__echo", "arguments": {"text": "never"}, "depends_on": ["b"]},
        {"id": "d", "tool": "local__echo", "arguments": {"text": "alone"}},
    ]
}


@pytest.mark.parametrize("mode", ["auto", "legacy"], ids=["2026-07-28", "2025-11-25"])
async def test_workflow_progress_for_every_task_over_sse_and_ws(tmp_path: Path, mode: str) -> None:
    async with run_gateway(tmp_path, {"local": stdio_entry()}) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        query = "types=workflow_progress&workflow_id=wf-watched"
        ws_url = gw.url.replace("http://", "ws://") + f"/events/ws?{query}"
        async with open_stream(client, params={"types": "workflow_progress", "workflow_id": "wf-watched"}) as sse:
            async with connect(ws_url) as ws:
                assert json.loads(await ws.recv())["type"] == "connected"
                async with Client(gw.mcp_url, mode=mode, cache=None) as mcp_client:  # type: ignore[arg-type]
                    other = await mcp_client.call_tool("pml_execute_workflow", {**WORKFLOW, "workflow_id": "wf-other"})
                    watched = await mcp_client.call_tool("pml_execute_workflow", {**WORKFLOW, "workflow_id": "wf-watched"})
                assert not other.is_error and not watched.is_error
                over_ws = []
                with anyio.fail_after(10):
                    while len(over_ws) < 7:  # 3 started (c never starts), 4 settled
                        over_ws.append(json.loads(await ws.recv()))
            over_sse = await sse.until(lambda e: e.event == "workflow_progress" and e.data["completed"] == 4)
    progress = [e.data for e in over_sse if e.event == "workflow_progress"]
    assert all(e.id is None for e in over_sse)  # live only: never an id
    assert [(m["id"], m["type"], m["data"]) for m in over_ws] == [(None, "workflow_progress", d) for d in progress]
    assert {d["workflow_id"] for d in progress} == {"wf-watched"} and {d["total"] for d in progress} == {4}
    by_task: dict[str, list[str]] = {}
    for d in progress:
        by_task.setdefault(d["task_id"], []).append(d["status"])
    assert by_task == {"a": ["started", "succeeded"], "b": ["started", "failed"], "c": ["skipped"], "d": ["started", "succeeded"]}
    settled = [d["completed"] for d in progress if d["status"] != "started"]
    assert settled == [1, 2, 3, 4]
    assert {d["tool_id"] for d in progress if d["task_id"] == "b"} == {"local__fail"}
