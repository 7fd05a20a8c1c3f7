"""Never-closed 2025-era MCP sessions against a real gateway, then one new client (issue 15 item 6).

    PYTHONPATH=. .venv/bin/python bench/session_flood.py [--sessions 10100] [--concurrency 16]

Starts ``pml-gateway serve`` (no downstreams, ``--db :memory:``, default session settings) as a
subprocess, opens ``--sessions`` sessions from one address the way the fault run did (an
``initialize`` each, never used again, never deleted), then opens a real ``ClientSession``.
Reports the answers to the flood, the server's resident memory before and after, and whether the
new client got in. It runs against whichever tree is on ``PYTHONPATH``, so the same command
compares two checkouts. Too slow for the test suite (about 85 s for 10,100 sessions on 2 busy
cores); tests/test_mcp_sessions.py checks the same rules with caps of 1-2.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from gateway_support import LEGACY_INITIALIZE, MCP_HEADERS  # noqa: E402
from server_helpers import free_port  # noqa: E402


def rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))


async def main(sessions: int, concurrency: int) -> None:
    port = free_port()
    command = [sys.executable, "-m", "pml_gateway", "serve", "--port", str(port), "--db", ":memory:", "--config", ""]
    proc = subprocess.Popen([*command, "--log-level", "error"], stderr=subprocess.DEVNULL)
    base, url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/mcp"
    try:
        async with httpx.AsyncClient(headers=MCP_HEADERS, timeout=30) as http:
            with anyio.fail_after(30):
                while True:
                    try:
                        await http.get(f"{base}/health")
                        break
                    except httpx.HTTPError:
                        await anyio.sleep(0.1)
            before = rss_mb(proc.pid)
            answers: dict[int, int] = {}
            gate = anyio.Semaphore(concurrency)

            async def abandon() -> None:
                async with gate:
                    status = (await http.post(url, json=LEGACY_INITIALIZE)).status_code
                    answers[status] = answers.get(status, 0) + 1

            started = time.perf_counter()
            async with anyio.create_task_group() as tasks:
                for _ in range(sessions):
                    tasks.start_soon(abandon)
            flood_seconds = time.perf_counter() - started
            after = rss_mb(proc.pid)
        started = time.perf_counter()
        try:
            with anyio.fail_after(30):
                async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
                    await session.initialize()
                    await session.list_tools()
            late = f"got in, {1000 * (time.perf_counter() - started):.0f} ms"
        except BaseException as exc:  # noqa: BLE001  # the refusal is the result
            while isinstance(exc, BaseExceptionGroup):
                exc = exc.exceptions[0]
            late = f"refused: {exc}"
        print(f"{sessions} abandoned sessions in {flood_seconds:.1f} s, answers {answers}")
        print(f"server RSS {before} -> {after} MB; a new 2025-era client {late}")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_100)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    anyio.run(main, args.sessions, args.concurrency)
