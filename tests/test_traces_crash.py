"""Learning from proxied calls survives a SIGKILL of the gateway (issue 15 item 13).

A real ``pml-gateway serve`` with a real stdio downstream, real MCP clients of both eras making
calls, the gateway SIGKILLed while their traces are still open (``trace_idle_seconds`` 60), then
a new gateway on the same database: the calls made up to ``trace_checkpoint_seconds`` before the
kill are learned, as the traces they were, once (docs/api/mcp-tools.md, "Learning from proxied
calls").
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway_support import free_port, stdio_entry, wait_for, wait_listening, write_config

pytestmark = pytest.mark.anyio

CHECKPOINT = 0.3


def serve(config: Path, db: Path, port: int, idle: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "pml_gateway", "serve", "--config", str(config), "--db", str(db), "--port", str(port),
            "--trace-idle-seconds", str(idle), "--trace-checkpoint-seconds", str(CHECKPOINT), "--log-level", "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own group: the kill takes its downstream too
    )


def stop(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    process.wait(timeout=20)


def traces_recorded(db: Path) -> list[list[str]]:
    """The tool ids of every recorded trace execution, read as another process would."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT body FROM executions WHERE workflow_id LIKE 'trace-%' ORDER BY seq").fetchall()
    return [[task["tool_id"] for task in json.loads(body)["tasks"]] for (body,) in rows]


async def wait_ready(base_url: str) -> None:
    async def connected() -> bool:
        try:
            async with httpx.AsyncClient() as http:
                status = (await http.get(f"{base_url}/health")).json()
        except httpx.HTTPError:
            return False
        return status.get("downstreams", {}).get("local", {}).get("state") == "connected"

    await wait_for(connected, timeout=30, interval=0.1)


async def test_open_traces_are_learned_after_a_sigkill(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"local": stdio_entry()})
    db = tmp_path / "graph.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = serve(config, db, port, idle=60)
    try:
        with anyio.fail_after(60):
            await wait_listening(port)
            await wait_ready(url)
            async with streamable_http_client(f"{url}/mcp") as (read, write), ClientSession(read, write) as old:
                await old.initialize()  # 2025-11-25: one trace for the session
                async with Client(f"{url}/mcp", cache=None) as new:  # 2026-07-28: one trace for the connection
                    for _ in range(2):
                        assert not (await old.call_tool("local__echo", {"text": "x"})).is_error
                        assert not (await old.call_tool("local__pick", {"count": 2})).is_error
                    assert not (await new.call_tool("local__pick", {"count": 1})).is_error
                    assert not (await new.call_tool("local__echo", {"text": "y"})).is_error
                    await anyio.sleep(CHECKPOINT * 3)  # past the documented window
                    assert traces_recorded(db) == []  # still open: without the checkpoint, all lost
                    stop(first, signal.SIGKILL)  # both sessions still open, no DELETE, no flush
    finally:
        if first.poll() is None:
            stop(first, signal.SIGKILL)

    # The same database, a new process (short idle: the dead one's traces are stale after
    # idle + 2 x checkpoint + 2 s of not being saved).
    started = time.monotonic()
    second = serve(config, db, port, idle=0.5)
    try:
        with anyio.fail_after(60):
            await wait_listening(port)
            recorded = await wait_for(lambda: len(traces_recorded(db)) >= 2 and traces_recorded(db), timeout=20, interval=0.2)
            assert time.monotonic() - started < 15
            assert sorted(recorded) == sorted(
                [["local__echo", "local__pick", "local__echo", "local__pick"], ["local__pick", "local__echo"]]
            )
            async with httpx.AsyncClient() as http:
                graph = (await http.get(f"{url}/graph")).json()
            edges = {(e["from_tool_id"], e["to_tool_id"]): e for e in graph["edges"]}
            # an edge counts once per trace: echo -> pick in the first, pick -> echo in both
            assert edges[("local__echo", "local__pick")]["observed_count"] == 1
            assert edges[("local__pick", "local__echo")]["observed_count"] == 2
            await anyio.sleep(1.0)  # more sweeps: nothing learned twice
            assert len(traces_recorded(db)) == 2
    finally:
        stop(second, signal.SIGTERM)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM open_traces").fetchone()[0] == 0
