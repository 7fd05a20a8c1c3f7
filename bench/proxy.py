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
Reported: p50/p99 latency of one ``tools/call`` and calls/s over all clients, after a warm-up.

Observability (``--metrics on,off``, ``--tracing off,on``): one gateway per combination. Metrics
off is the same app with ``Instrumentation(metrics=False)`` (started by this script: there is no
setting for it); tracing on exports every span over OTLP/HTTP (``OTEL_EXPORTER_OTLP_ENDPOINT``,
batch processor) to a sink process that answers 200 to each export. Before the table, the cost
of the seam itself on this machine: what one proxied call adds through ``Instrumentation``
(server and client histograms, spans off), measured in-process.
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


def serve_gateway(port: int, config: str, metrics: bool) -> None:
    """``pml-gateway serve`` with the metrics switched on or off (tracing as the environment says)."""
    from pml_gateway.app import create_app
    from pml_gateway.cli.common import build_extensions, configure_logging
    from pml_gateway.observability import Instrumentation
    from pml_gateway.server import make_server
    from pml_gateway.settings import Settings

    settings = Settings(config=config, port=port, db=":memory:", log_level="warning")
    configure_logging(settings)  # and the OTLP exporter when OTEL_EXPORTER_OTLP_ENDPOINT is set
    app = create_app(settings, extensions=build_extensions(settings), instrumentation=Instrumentation(metrics=metrics))
    make_server(app, settings).run()


def serve_otlp_sink(port: int) -> None:
    """An OTLP/HTTP endpoint that accepts every export and keeps nothing."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    ThreadingHTTPServer(("127.0.0.1", port), Sink).serve_forever()


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def seam_micros(instrumentation: Any, rounds: int) -> float:
    """CPU µs per proxied call spent in the seam: the fast path's server call around a lean client call.

    CPU time of the process (threads included: the span processor's), not wall time, so that other
    jobs on a shared machine do not count.
    """
    meta = {"traceparent": TRACEPARENT}
    started = time.process_time()
    for _ in range(rounds):
        with instrumentation.server_call("tools/call", "echo__echo", meta=meta, protocol_version="2026-07-28"):
            with instrumentation.client_call("echo", "echo__echo", own_span=True) as call:
                call.meta(None)
    return (time.process_time() - started) / rounds * 1e6


def seam_cost(rounds: int = 200_000) -> list[tuple[str, float]]:
    """The seam in-process: spans off, metrics on and off; then spans on, in a child process."""
    from pml_gateway.observability import Instrumentation

    rows = [
        ("metrics on, tracing off (the default)", seam_micros(Instrumentation(metrics=True, tracing=False), rounds)),
        ("metrics off, tracing off", seam_micros(Instrumentation(metrics=False, tracing=False), rounds)),
    ]
    # Spans need a global tracer provider: in a child, so this process's clients stay untraced.
    child = subprocess.run([sys.executable, __file__, "--seam-tracing"], capture_output=True, text=True, check=True)
    rows.append(("metrics on, tracing on (2 spans, batch processor, exporter that drops)", float(child.stdout)))
    return rows


def seam_cost_tracing(rounds: int = 50_000) -> float:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from pml_gateway.observability import Instrumentation
    from pml_gateway.observability.tracing import install_processors

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    install_processors(provider, BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
    return seam_micros(Instrumentation(metrics=True, tracing=True), rounds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    url: str, tool: str, era: str, concurrency: int, seconds: float, warmup: int = 30
) -> dict[str, float]:
    latencies: list[float] = []
    sessions_ready = anyio.Event()
    ready_count = 0
    start_at = 0.0
    end_at = 0.0

    async def client() -> None:
        nonlocal ready_count
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

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(client)
        await sessions_ready.wait()
        start_at = time.perf_counter() + 0.05
        end_at = start_at + seconds
    return summary(latencies, seconds)


def summary(latencies: list[float], seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "rate": len(ordered) / seconds,
        "calls": len(ordered),
        "latencies": ordered,  # type: ignore[dict-item]  # merged across --rounds
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per target and concurrency")
    parser.add_argument("--concurrency", default="1,16", help="comma list of concurrent clients")
    parser.add_argument("--eras", default="2025-11-25,2026-07-28", help="protocol eras of the benchmark clients")
    parser.add_argument("--no-fastmcp", action="store_true", help="skip FastMCP's proxy")
    parser.add_argument("--sdk-path", action="store_true", help="also the gateway with its fast path off")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds per row (each --seconds/rounds)")
    parser.add_argument("--metrics", default="on", help="gateways with metrics on, off, or both (on,off)")
    parser.add_argument("--tracing", default="off", help="gateways with tracing off, on (OTLP export), or both (off,on)")
    parser.add_argument("--serve-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-gateway", nargs=3, metavar=("PORT", "CONFIG", "METRICS"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-otlp-sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--seam-tracing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seam_tracing:
        print(seam_cost_tracing())
        return
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return
    if args.serve_gateway:
        port, config, metrics = args.serve_gateway
        serve_gateway(int(port), config, metrics == "on")
        return
    if args.serve_otlp_sink:
        serve_otlp_sink(args.serve_otlp_sink)
        return
    metrics_modes = [m.strip() for m in args.metrics.split(",")]
    tracing_modes = [t.strip() for t in args.tracing.split(",")]
    if not set(metrics_modes) <= {"on", "off"} or not set(tracing_modes) <= {"on", "off"}:
        parser.error("--metrics and --tracing take on, off or on,off")
    seam = seam_cost()

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

            targets = [("direct", echo_url, "echo")]
            ports = [echo_port]
            sink_port = free_port()
            if "on" in tracing_modes:
                processes.append(subprocess.Popen([sys.executable, __file__, "--serve-otlp-sink", str(sink_port)], **quiet))
                ports.append(sink_port)
            for metrics in metrics_modes:
                for tracing in tracing_modes:
                    port = gateway_port if (metrics, tracing) == ("on", "off") else free_port()
                    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}"} if tracing == "on" else {}
                    if metrics == "on":
                        processes.append(gateway(port, **env))  # the command itself
                    else:
                        command = [sys.executable, __file__, "--serve-gateway", str(port), str(config), "off"]
                        processes.append(subprocess.Popen(command, env={**os.environ, **env}, **quiet))
                    variant = [] if metrics == "on" else ["metrics off"]
                    variant += ["tracing exporting"] if tracing == "on" else []
                    name = "pml-gateway" + (f" ({', '.join(variant)})" if variant else "")
                    targets.append((name, f"http://127.0.0.1:{port}/mcp", "echo__echo"))
                    ports.append(port)
            if args.sdk_path:
                processes.append(gateway(sdk_port, PML_FAST_PATH="0"))
                targets.append(("pml-gateway, SDK path", f"http://127.0.0.1:{sdk_port}/mcp", "echo__echo"))
                ports.append(sdk_port)
            python = None if args.no_fastmcp else fastmcp_python()
            if python is not None:
                processes.append(
                    subprocess.Popen([str(python), "-c", FASTMCP_PROXY, echo_url, str(fastmcp_port)], **quiet)
                )
                targets.append(("FastMCP proxy", f"http://127.0.0.1:{fastmcp_port}/mcp", "echo"))
                ports.append(fastmcp_port)
            for port in ports:
                wait_port(port)

            async def run_all() -> list[tuple[str, str, int, dict[str, float]]]:
                for _, url, tool in targets:
                    await ready(url, tool)
                rows = []
                share = args.seconds / args.rounds
                for era in eras:
                    for concurrency in levels:
                        # Rounds interleave the targets, so that load from elsewhere hits them alike.
                        merged: dict[str, list[float]] = {name: [] for name, _, _ in targets}
                        for _ in range(args.rounds):
                            for name, url, tool in targets:
                                result = await measure(url, tool, era, concurrency, share)
                                merged[name].extend(result["latencies"])  # type: ignore[arg-type]
                        for name, _, _ in targets:
                            result = summary(merged[name], args.seconds)
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

    print("\nThe observability seam, in-process: one proxied call's server and client observations\n")
    print("| seam | µs per call |")
    print("|---|---:|")
    for label, micros in seam:
        print(f"| {label} | {micros:.2f} |")
    direct = {(era, c): m for name, era, c, m in rows if name == "direct"}
    print(f"\nOne tool call through a proxy: {args.seconds:g} s per row, {os.cpu_count()} cores, Python {sys.version.split()[0]}\n")
    print("| client era | target | clients | p50 ms | p99 ms | calls/s | p50 over direct |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, era, concurrency, m in rows:
        over = "" if name == "direct" else f"{m['p50'] - direct[(era, concurrency)]['p50']:+.2f} ms"
        print(f"| {era} | {name} | {concurrency} | {m['p50']:.2f} | {m['p99']:.2f} | {m['rate']:.0f} | {over} |")


if __name__ == "__main__":
    main()
