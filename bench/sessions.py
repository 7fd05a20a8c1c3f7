"""What ``"session": "per_client"`` costs (issue 16): memory and start-up per extra downstream
session, and the latency of a call, against the same server shared.

    .venv/bin/python bench/sessions.py [--clients 8] [--calls 200] [--kinds stdio,http]

One ``pml-gateway serve`` (a subprocess) with server-everything four times: over stdio and over
Streamable HTTP (one server-everything process on a local port), each once ``shared`` and once
``per_client``. ``--clients`` 2025-era clients (a session each) then call ``echo`` on each server:

- start-up: the first call of each client to a per_client server (it opens that client's session:
  a process, or an ``initialize`` on the URL) against its later calls (median of the differences);
- memory per extra session: the PSS (proportional set size, from ``/proc/<pid>/smaps_rollup``;
  pages shared between processes counted once) of the gateway and its child processes, and of
  the HTTP server-everything process, before and after the clients' sessions opened, divided by
  the number of sessions opened;
- call latency: p50 / p99 of ``echo`` after the warm-up, one client at a time, shared against
  per_client, over the fast path (each call is its client's own session either way).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx
from mcp import Client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from gateway_support import wait_listening  # noqa: E402
from server_helpers import free_port  # noqa: E402

EVERYTHING = ROOT / ".tools" / "node_modules" / ".bin" / "mcp-server-everything"


def pss_kib(pid: int) -> int:
    """The process's proportional set size, KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            out.extend(tree(int(child)))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    return sum(cpu_seconds(p) for p in tree(pid))


def tree_pss(pid: int) -> tuple[int, int]:
    """(PSS of the whole tree in KiB, number of processes)."""
    pids = tree(pid)
    return sum(pss_kib(p) for p in pids), len(pids)


async def echo(client: Client, server: str) -> float:
    started = time.perf_counter()
    result = await client.call_tool(f"{server}__echo", {"message": "hi"})
    elapsed = time.perf_counter() - started
    assert not result.is_error, result
    return elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(clients: int, calls: int, kinds: list[str]) -> None:
    http_port, gateway_port = free_port(), free_port()
    everything_http = subprocess.Popen(
        [str(EVERYTHING), "streamableHttp"],
        env={**os.environ, "PORT": str(http_port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{http_port}/mcp"
    stdio = {"command": str(EVERYTHING), "args": ["stdio"]}
    many = {"session": "per_client", "max_sessions": clients + 1}
    config = {
        "stdio_shared": stdio,
        "stdio_own": {**stdio, **many},
        "http_shared": {"url": url},
        "http_own": {"url": url, **many},
    }
    workdir = Path(tempfile.mkdtemp(prefix="pml-bench-sessions-"))
    (workdir / "mcp.json").write_text(json.dumps({"mcpServers": config}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PML_LOG_LEVEL": "warning"}
    gateway = subprocess.Popen(
        [sys.executable, "-m", "pml_gateway", "serve", "--config", str(workdir / "mcp.json"),
         "--port", str(gateway_port), "--db", ":memory:"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    mcp_url = f"http://127.0.0.1:{gateway_port}/mcp"
    try:
        await wait_listening(http_port, timeout=30)
        await wait_listening(gateway_port, timeout=30)
        async with httpx.AsyncClient() as http:
            with anyio.fail_after(60):
                while True:
                    downstreams = (await http.get(f"http://127.0.0.1:{gateway_port}/health")).json()["downstreams"]
                    if all(d["state"] == "connected" for d in downstreams.values()) and len(downstreams) == 4:
                        break
                    await anyio.sleep(0.2)
        print(f"load average before: {os.getloadavg()[0]:.2f}; {clients} clients, {calls} calls per server")
        sessions = [Client(mcp_url, mode="legacy") for _ in range(clients)]
        for client in sessions:
            await client.__aenter__()
        try:
            for client in sessions:  # warm: each client's shared calls, and the gateway's code paths
                for server in ("stdio_shared", "http_shared"):
                    await echo(client, server)
            rows = []
            for kind in kinds:
                own = f"{kind}_own"
                tree_before, procs_before = tree_pss(gateway.pid)
                gw_before, http_before = pss_kib(gateway.pid), pss_kib(everything_http.pid)
                cpu_gw_before, cpu_tree_before = cpu_seconds(gateway.pid), tree_cpu(gateway.pid)
                cpu_http_before = cpu_seconds(everything_http.pid)
                first = [await echo(client, own) for client in sessions]  # opens a session each
                second = [await echo(client, own) for client in sessions]
                await anyio.sleep(1.0)  # let the new processes settle
                cpu_gw = (cpu_seconds(gateway.pid) - cpu_gw_before) / clients
                cpu_server = (
                    tree_cpu(gateway.pid) - cpu_tree_before - cpu_gw * clients + cpu_seconds(everything_http.pid) - cpu_http_before
                ) / clients
                tree_after, procs_after = tree_pss(gateway.pid)
                gw_after, http_after = pss_kib(gateway.pid), pss_kib(everything_http.pid)
                startup = statistics.median(f - s for f, s in zip(first, second))
                gateway_kib = (gw_after - gw_before) / clients
                # the downstream's share: the new child processes (stdio), the HTTP server's growth (http)
                server_kib = (tree_after - tree_before - (gw_after - gw_before) + http_after - http_before) / clients
                shared, own_latency = [], []
                for _ in range(calls):
                    for client in sessions[:1]:
                        shared.append(await echo(client, f"{kind}_shared"))
                        own_latency.append(await echo(client, own))
                rows.append((kind, startup, cpu_gw, cpu_server, gateway_kib, server_kib, procs_after - procs_before, shared, own_latency))
            print()
            print("| downstream | start-up of a session (wall) | CPU to open one: gateway / downstream | "
                  "PSS per extra session: gateway / downstream | processes added | "
                  "call p50 / p99 shared | call p50 / p99 per_client |")
            print("|---|---|---|---|---|---|---|")
            for kind, startup, cpu_gw, cpu_server, gateway_kib, server_kib, procs, shared, own_latency in rows:
                print(
                    f"| {kind} | {startup * 1000:.0f} ms | {cpu_gw * 1000:.0f} / {cpu_server * 1000:.0f} ms | "
                    f"{gateway_kib / 1024:.2f} / {server_kib / 1024:.1f} MiB | {procs} | "
                    f"{percentile(shared, 0.5) * 1000:.2f} / {percentile(shared, 0.99) * 1000:.2f} ms | "
                    f"{percentile(own_latency, 0.5) * 1000:.2f} / {percentile(own_latency, 0.99) * 1000:.2f} ms |"
                )
            print(f"\nload average after: {os.getloadavg()[0]:.2f}")
        finally:
            for client in reversed(sessions):
                await client.__aexit__(None, None, None)
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
        everything_http.kill()
        everything_http.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="2025-era clients, a session each")
    parser.add_argument("--calls", type=int, default=200, help="calls per server for the latency")
    parser.add_argument("--kinds", default="stdio,http", help="downstreams to measure: stdio, http or both")
    args = parser.parse_args()
    anyio.run(run, args.clients, args.calls, args.kinds.split(","))


if __name__ == "__main__":
    main()
