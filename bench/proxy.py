"""Tool-call latency and throughput: direct, through pml-gateway, and through FastMCP's proxy.

    .venv/bin/python bench/proxy.py [--seconds 8] [--concurrency 1,16]

One downstream MCP server (an async ``echo`` tool, Streamable HTTP on a local port) is called
by the same client code in three ways, in one run:

- direct: the client talks to the downstream server;
- pml-gateway: ``pml-gateway serve`` with that server in its config (calls learned as traces);
- with ``--sdk-path``, the same gateway with ``PML_FAST_PATH=0``: every call through the
  MCP SDK's transports on both sides, as before the fast path (fast_path.py, http_link.py);
- FastMCP: ``fastmcp.server.create_proxy(url)`` served over HTTP, from the virtual environment
  ``bench/.venv-fastmcp`` (made on first use with ``pip install fastmcp``; gitignored).

Clients speak either protocol era over Streamable HTTP: 2025-11-25 (``ClientSession``, an
``initialize`` handshake and a session each) and 2026-07-28 (``Client``, self-contained requests).
Reported: p50/p99 latency of one ``tools/call`` and calls/s over all clients, after a warm-up,
and the CPU time the serving process spent per call in the measured window (user + system, from
``/proc/<pid>/stat``; for "direct" that is the echo server, for a proxy the proxy process alone).
On a shared, loaded machine latency swings with the neighbours' load; CPU per call much less.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client

HERE = Path(__file__).resolve().parent
FASTMCP_VENV = HERE / ".venv-fastmcp"
FASTMCP_PROXY = """
import sys
from fastmcp.server import create_proxy
proxy = create_proxy(sys.argv[1], name="fastmcp-proxy")
proxy.run(transport="http", host="127.0.0.1", port=int(sys.argv[2]), show_banner=False, log_level="warning")
"""


def serve_echo(port: int) -> None:
    """The downstream: one async tool, so nothing but the MCP machinery is measured."""
    from mcp.server import MCPServer

    server = MCPServer("echo", log_level="WARNING")

    @server.tool()
    async def echo(text: str) -> str:
        """Return the text."""
        return text

    server.run("streamable-http", host="127.0.0.1", port=port)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def fastmcp_python() -> Path | None:
    python = FASTMCP_VENV / "bin" / "python"
    if not python.exists():
        print("bench: creating bench/.venv-fastmcp with fastmcp from PyPI...", file=sys.stderr)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(FASTMCP_VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "fastmcp"], check=True)
        except subprocess.CalledProcessError:
            print("bench: could not install fastmcp; skipping it", file=sys.stderr)
            return None
    return python


async def ready(url: str, tool: str, timeout: float = 60) -> None:
    """Wait until the tool can be called (the gateway connects its downstream after it listens)."""
    with anyio.fail_after(timeout):
        while True:
            try:
                async with streamable_http_client(url) as (r, w), ClientSession(r, w) as s:
                    await s.initialize()
                    if not (await s.call_tool(tool, {"text": "ping"})).is_error:
                        return
            except Exception:
                pass
            await anyio.sleep(0.2)


@asynccontextmanager
async def connect(url: str, era: str) -> AsyncIterator[Callable[[str, dict[str, Any]], Awaitable[Any]]]:
    """A connected client's ``call_tool``: 2025-11-25 (``ClientSession``) or 2026-07-28 (``Client``)."""
    if era == "2026-07-28":
        async with Client(url, cache=None) as client:
            assert client.protocol_version == era
            yield client.session.call_tool
    else:
        async with streamable_http_client(url) as (r, w), ClientSession(r, w) as session:
            await session.initialize()
            yield session.call_tool


async def measure(
    url: str, tool: str, era: str, concurrency: int, seconds: float, pid: int, warmup: int = 30
) -> dict[str, float]:
    latencies: list[float] = []
    cpu_start = 0.0
    counted = 0
    sessions_ready = anyio.Event()
    ready_count = 0
    start_at = 0.0
    end_at = 0.0

    async def client() -> None:
        nonlocal ready_count, counted
        async with connect(url, era) as call_tool:
            for _ in range(warmup):
                await call_tool(tool, {"text": "warm"})
            ready_count += 1
            if ready_count == concurrency:
                sessions_ready.set()
            await sessions_ready.wait()
            while time.perf_counter() < start_at:
                await anyio.sleep(0.001)
            while (t0 := time.perf_counter()) < end_at:
                result = await call_tool(tool, {"text": "hello"})
                latencies.append(time.perf_counter() - t0)
                if result.is_error:
                    raise RuntimeError(f"{tool} failed: {result.content}")
                counted += 1

    async def sample_at_start() -> None:
        nonlocal cpu_start
        await anyio.sleep(max(0.0, start_at - time.perf_counter()))
        cpu_start = cpu_seconds(pid)

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(client)
        await sessions_ready.wait()
        start_at = time.perf_counter() + 0.05
        end_at = start_at + seconds
        tg.start_soon(sample_at_start)
    cpu = cpu_seconds(pid) - cpu_start
    ordered = sorted(latencies)
    return {
        "cpu_ms": cpu / max(1, counted) * 1000,
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "rate": counted / seconds,
        "calls": counted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per target and concurrency")
    parser.add_argument("--concurrency", default="1,16", help="comma list of concurrent clients")
    parser.add_argument("--eras", default="2025-11-25,2026-07-28", help="protocol eras of the benchmark clients")
    parser.add_argument("--no-fastmcp", action="store_true", help="skip FastMCP's proxy")
    parser.add_argument("--sdk-path", action="store_true", help="also the gateway with its fast path off")
    parser.add_argument("--serve-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return

    levels = [int(c) for c in args.concurrency.split(",")]
    eras = [e.strip() for e in args.eras.split(",")]
    processes: list[subprocess.Popen[bytes]] = []
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            echo_port, gateway_port, fastmcp_port, sdk_port = free_port(), free_port(), free_port(), free_port()
            echo_url = f"http://127.0.0.1:{echo_port}/mcp"
            processes.append(subprocess.Popen([sys.executable, __file__, "--serve-echo", str(echo_port)], **quiet))
            config = Path(tmp) / "mcp.json"
            config.write_text(json.dumps({"mcpServers": {"echo": {"url": echo_url}}}))

            def gateway(port: int, **env: str) -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    [sys.executable, "-m", "pml_gateway", "serve", "--config", str(config), "--port", str(port),
                     "--db", ":memory:", "--log-level", "warning"],
                    env={**os.environ, **env},
                    **quiet,
                )

            processes.append(gateway(gateway_port))
            targets = [
                ("direct", echo_url, "echo", processes[0].pid),
                ("pml-gateway", f"http://127.0.0.1:{gateway_port}/mcp", "echo__echo", processes[1].pid),
            ]
            ports = [echo_port, gateway_port]
            if args.sdk_path:
                # PML_GATEWAY_FAST_PATH: its name before the layout move, for comparing with older trees
                processes.append(gateway(sdk_port, PML_FAST_PATH="0", PML_GATEWAY_FAST_PATH="0"))
                targets.append(("pml-gateway, SDK path", f"http://127.0.0.1:{sdk_port}/mcp", "echo__echo", processes[-1].pid))
                ports.append(sdk_port)
            python = None if args.no_fastmcp else fastmcp_python()
            if python is not None:
                processes.append(
                    subprocess.Popen([str(python), "-c", FASTMCP_PROXY, echo_url, str(fastmcp_port)], **quiet)
                )
                targets.append(("FastMCP proxy", f"http://127.0.0.1:{fastmcp_port}/mcp", "echo", processes[-1].pid))
                ports.append(fastmcp_port)
            for port in ports:
                wait_port(port)

            async def run_all() -> list[tuple[str, str, int, dict[str, float]]]:
                for _, url, tool, _ in targets:
                    await ready(url, tool)
                rows = []
                for era in eras:
                    for concurrency in levels:
                        for name, url, tool, pid in targets:
                            result = await measure(url, tool, era, concurrency, args.seconds, pid)
                            rows.append((name, era, concurrency, result))
                            print(f"bench: {era} {name} x{concurrency}: p50 {result['p50']:.2f} ms", file=sys.stderr)
                return rows

            rows = anyio.run(run_all)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()

    direct = {(era, c): m for name, era, c, m in rows if name == "direct"}
    print(f"\nOne tool call through a proxy: {args.seconds:g} s per row, {os.cpu_count()} cores, Python {sys.version.split()[0]}\n")
    print("| client era | target | clients | p50 ms | p99 ms | calls/s | p50 over direct | server CPU ms/call |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, era, concurrency, m in rows:
        over = "" if name == "direct" else f"{m['p50'] - direct[(era, concurrency)]['p50']:+.2f} ms"
        print(
            f"| {era} | {name} | {concurrency} | {m['p50']:.2f} | {m['p99']:.2f} | {m['rate']:.0f} | {over} "
            f"| {m['cpu_ms']:.2f} |"
        )


if __name__ == "__main__":
    main()
