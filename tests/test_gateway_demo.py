"""`pml-gateway demo`: the bundled example servers and workload make events flow within seconds."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading

import anyio
import httpx
import pytest

from server_helpers import interrupt
from httpx_sse import aconnect_sse

pytestmark = pytest.mark.anyio


async def test_the_demo_learns_from_its_workload_at_once(tmp_path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pml_gateway", "demo", "--port", "0", "--db", str(tmp_path / "demo.db")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines: list[str] = []
        with anyio.fail_after(60):
            while True:
                line = await anyio.to_thread.run_sync(proc.stderr.readline)
                assert line, "demo exited early:\n" + "".join(lines)
                lines.append(line)
                if "demo workload driving" in line:
                    break
        # keep reading the log so the pipe never fills up
        drain = threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True)
        drain.start()
        text = "".join(lines)
        events_url = re.search(r"events at (http://\S+/events/stream)", text).group(1)
        assert re.search(r"dashboard at http://\S+/dashboard", text)
        base = events_url.removesuffix("/events/stream")
        seen: dict[str, dict] = {}
        with anyio.fail_after(30):
            async with httpx.AsyncClient(timeout=None) as client:
                health = (await client.get(f"{base}/health")).json()["downstreams"]
                assert {name: h["state"] for name, h in health.items()} == {
                    "notes": "connected", "text": "connected", "math": "connected",
                }
                async with aconnect_sse(client, "GET", events_url) as source:
                    async for event in source.aiter_sse():
                        if event.event in ("edge_created", "edge_updated", "workflow_executed"):
                            seen.setdefault(event.event, json.loads(event.data))
                        if "workflow_executed" in seen and ("edge_created" in seen or "edge_updated" in seen):
                            break
        tools = seen["workflow_executed"]["tool_ids"]
        assert all(t.split("__")[0] in ("notes", "text", "math") for t in tools)
    finally:
        interrupt(proc)
    assert proc.returncode in (0, 130)  # 130: uvicorn re-raises the Ctrl+C once it has shut down cleanly
