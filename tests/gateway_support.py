"""Shared pieces of the gateway tests: real servers on real ports, real MCP clients.

``run_gateway`` runs the whole app with a ``Gateway`` through server_helpers' ``running_server``
(the product's ``make_server``: its start-up and its shutdown).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp.types as types

from pml_gateway.proxy.downstream.supervisor import SupervisionTiming
from pml_gateway.proxy.gateway import Gateway
from pml_gateway.settings import Settings
from server_helpers import free_port, running_server

__all__ = ["free_port"]  # re-exported: gateway tests import it from here

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLES = ROOT / "public" / "examples"
TEST_SERVER = HERE / "gateway_test_server.py"

#: A raw 2025-era ``initialize`` request and the headers Streamable HTTP wants, for tests that
#: open (and abandon) sessions by hand rather than through an SDK client.
LEGACY_INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}

#: Fast supervision for tests: restarts within a fraction of a second, dead servers noticed quickly.
FAST = SupervisionTiming(
    backoff_initial=0.1, backoff_max=0.4, connect_timeout=20, ping_interval=0.3, ping_timeout=5, stable_after=5
)


def stdio_entry(*args: str, **extra: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [str(TEST_SERVER), *args], **extra}


def write_config(tmp_path: Path, servers: dict[str, Any]) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": servers}))
    return path


@dataclass
class RunningGateway:
    url: str  # http://127.0.0.1:port
    gateway: Gateway
    app: Any

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"


@asynccontextmanager
async def run_gateway(
    tmp_path: Path,
    servers: dict[str, Any],
    *,
    timing: SupervisionTiming = FAST,
    **settings: Any,
) -> AsyncIterator[RunningGateway]:
    """The whole app (events, API, /mcp) on a real uvicorn, port 0, with these downstreams."""
    values: dict[str, Any] = {
        "config": write_config(tmp_path, servers),
        "db": ":memory:",
        "port": 0,
        "trace_idle_seconds": 0.5,
        "metrics_interval_seconds": 0.2,
        "heartbeat_seconds": 5,
        "log_level": "warning",
    }
    values.update(settings)
    gateway = Gateway(Settings(**values), timing=timing)
    async with running_server(gateway.settings, [gateway]) as running:
        yield RunningGateway(url=running.base_url, gateway=gateway, app=running.app)


@contextmanager
def http_downstream(
    *args: str, script: Path = TEST_SERVER, transport: str = "streamable-http", env: dict[str, str] | None = None
) -> Iterator[tuple[str, int, subprocess.Popen[bytes]]]:
    """A downstream server over HTTP on a real port, as a subprocess; yields (url, port, process)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(script), "--transport", transport, "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=script.parent,
        env={**os.environ, **(env or {})},
    )
    path = "/sse" if transport == "sse" else "/mcp"
    try:
        yield f"http://127.0.0.1:{port}{path}", port, proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def wait_listening(port: int, timeout: float = 20) -> None:
    with anyio.fail_after(timeout):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.05)
            else:
                await stream.aclose()
                return


async def health(base_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{base_url}/health")
        response.raise_for_status()
        return response.json()


async def wait_for(predicate: Any, timeout: float = 20, interval: float = 0.05) -> Any:
    """Poll an async or sync predicate until truthy; returns its value."""
    with anyio.fail_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return value
            await anyio.sleep(interval)


def text(result: types.CallToolResult) -> str:
    """The text parts of a tool result, joined."""
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))
