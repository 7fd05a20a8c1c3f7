"""SSE fan-out benchmark: publish-to-receipt latency and memory per client, against a naive baseline.

    .venv/bin/python bench/sse_fanout.py                    # 100, 1,000, 10,000 clients; ~4 minutes
    .venv/bin/python bench/sse_fanout.py --clients 100,1000 --seconds 5

Each case starts a server process (the real ``create_app`` on uvicorn, uvloop + httptools) and
holds the clients on raw sockets in THIS process (asyncio protocols, uvloop). The server publishes
``workflow_executed`` events at a steady rate; each event carries its publish time
(``time.time_ns()``, same machine clock) in ``workflow_id``, and the client records
``receipt - publish`` for every event on every connection.

Three designs, same app, same middleware, same uvicorn:

- ``pml``: the project's ``GET /events/stream``: the hub serialises each event once into bounded
  per-client queues and pushes them to the direct ASGI response, which writes every client from
  one flush callback.
- ``pml-sse``: the same hub and frames, with sse-starlette's ``EventSourceResponse`` carrying the
  bytes, one generator per client pulling from the hub's push (``SSEStarletteBaseline`` below):
  what the product's direct response replaced, kept here as the baseline.
- ``naive``: the textbook design: one unbounded ``asyncio.Queue`` per client, an sse-starlette
  generator per client (default settings, its 15 s ping task included), each event encoded to JSON
  and SSE for each client.

Memory per client = (server RSS with N idle clients connected - RSS before) / N. Server CPU per
delivery = the server process's CPU time while publishing / (events x clients): unlike the latency
it hardly depends on what else the machine is doing.

The server runs with the gateway's GC thresholds (``pml_gateway.server.GC_THRESHOLDS``, all designs
alike); ``--default-gc`` keeps Python's, to show what they are for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MARKER = b'"workflow_id":"bench-'
MODES = ("pml", "pml-sse", "naive")
DEFAULT_RATES = {100: 20.0, 1000: 10.0, 10000: 1.0}


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


# =============================================================================================
# Server side (a subprocess: ``sse_fanout.py --serve pml|naive``)
# =============================================================================================
def serve(mode: str, default_gc: bool) -> None:
    import anyio
    from sse_starlette import EventSourceResponse, ServerSentEvent
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import BaseRoute, Route

    from graphrag import GraphEvent
    from graphrag.events import WorkflowExecutedData
    from pml_gateway.app import create_app
    from pml_gateway.events.hub import CloseReason
    from pml_gateway.events.wire import RETRY_MS, Frame, encode_payload
    from graphrag.events import ConnectedData
    from pml_gateway.server import GC_THRESHOLDS, make_server
    from pml_gateway.state import AppState
    from pml_gateway.settings import Settings

    raise_fd_limit()
    naive_queues: set[asyncio.Queue[GraphEvent]] = set()

    async def naive_stream(request: Request) -> Response:
        queue: asyncio.Queue[GraphEvent] = asyncio.Queue()  # unbounded

        async def events() -> AsyncIterator[ServerSentEvent]:
            naive_queues.add(queue)
            try:
                yield ServerSentEvent(data=json.dumps({"connected": True}), event="connected")
                while True:
                    event = await queue.get()
                    # Encoded for this client: JSON of the payload, then the SSE frame.
                    yield ServerSentEvent(data=event.data.model_dump_json(), event=event.type, id=str(event.id))
            finally:
                naive_queues.discard(queue)

        return EventSourceResponse(events())

    class PullSink:
        """The hub pushes; sse-starlette's generator pulls: a queue of chunks between them."""

        def __init__(self) -> None:
            self.chunks: list[bytes] = []
            self.ready = asyncio.Event()
            self.closed = False

        def write(self, frames: list[Frame]) -> bool:
            self.chunks.append(b"".join(frame.sse for frame in frames))
            self.ready.set()
            return True

        def close(self, reason: CloseReason) -> None:
            self.closed = True
            self.ready.set()

    class SSEStarletteBaseline:
        """``GET /sse-starlette/stream``: a hub subscription served by sse-starlette's response."""

        def __init__(self) -> None:
            self.state: AppState | None = None

        async def stream(self, request: Request) -> Response:
            assert self.state is not None
            hub = self.state.hub
            subscription = hub.subscribe()
            sink = PullSink()
            subscription.attach(sink)
            connected = ConnectedData(
                client_id=subscription.client_id, connected_clients=hub.connected_clients, last_event_id=subscription.seam_id
            )

            async def frames() -> AsyncIterator[bytes]:
                try:
                    yield encode_payload(connected, retry_ms=RETRY_MS).sse
                    subscription.resume()
                    while not sink.closed:
                        await sink.ready.wait()
                        sink.ready.clear()
                        chunks, sink.chunks = sink.chunks, []
                        if chunks:
                            yield b"".join(chunks)
                finally:
                    subscription.close()

            # The heartbeat comes through the hub, so sse-starlette's own ping is off.
            return EventSourceResponse(frames(), ping=0, sep="\n")

    baseline = SSEStarletteBaseline()

    class BenchExtension:
        def __init__(self) -> None:
            self.state: AppState | None = None
            self.tasks: Any = None

        def routes(self) -> list[BaseRoute]:
            return [
                Route("/naive/stream", naive_stream),
                Route("/sse-starlette/stream", baseline.stream),
                Route("/bench/publish", self.publish, methods=["POST"]),
                Route("/bench/clients", self.clients),
            ]

        @asynccontextmanager
        async def _lifespan(self, state: AppState) -> AsyncIterator[None]:
            self.state = baseline.state = state
            async with anyio.create_task_group() as tasks:
                self.tasks = tasks
                yield
                tasks.cancel_scope.cancel()

        def lifespan(self, state: AppState) -> Any:
            return self._lifespan(state)

        def health(self) -> dict[str, Any]:
            return {}

        async def clients(self, request: Request) -> Response:
            assert self.state is not None
            count = len(naive_queues) if mode == "naive" else self.state.hub.connected_clients
            return JSONResponse({"clients": count})

        async def publish(self, request: Request) -> Response:
            body = await request.json()
            self.tasks.start_soon(self._publish, float(body["rate"]), int(body["count"]))
            return JSONResponse({"started": True}, status_code=202)

        async def _publish(self, rate: float, count: int) -> None:
            assert self.state is not None
            hub = self.state.hub
            next_id = (hub.last_event_id or 0) + 1
            interval = 1.0 / rate
            due = time.monotonic()
            for n in range(count):
                due += interval
                await anyio.sleep(max(0.0, due - time.monotonic()))
                event = GraphEvent.of(
                    WorkflowExecutedData(
                        workflow_id=f"bench-{time.time_ns()}",
                        tool_ids=["files__read", "text__summarize", "mail__send"],
                        success=True,
                        execution_time_ms=12.5,
                    ),
                    id=next_id + n,
                )
                if mode == "naive":
                    for queue in list(naive_queues):
                        queue.put_nowait(event)
                else:
                    hub.publish(event)

    settings = Settings(
        db=":memory:",
        config=None,
        port=0,
        max_clients=50_000,
        heartbeat_seconds=3600,  # no heartbeats inside the measurement
        metrics_interval_seconds=3600,
        log_level="warning",
    )
    app = create_app(settings, extensions=[BenchExtension()])
    server = make_server(
        app,
        settings,
        backlog=4096,
        timeout_graceful_shutdown=2,
        access_log=False,
        on_started=lambda url: print(f"READY {url}", flush=True),
        gc_thresholds=None if default_gc else GC_THRESHOLDS,
    )
    server.run()


# =============================================================================================
# Client side (this process)
# =============================================================================================
@dataclass
class Stats:
    connected: int = 0
    closed: int = 0


class SSEClient(asyncio.Protocol):
    """One raw connection. ``data_received`` only timestamps and keeps the bytes (cheap, so the
    client side adds little to the latency); they are parsed after the run."""

    def __init__(self, request: bytes, stats: Stats) -> None:
        self.request = request
        self.stats = stats
        self.reads: list[tuple[int, bytes]] = []
        self.received = 0  # workflow_executed events seen (counted without parsing)
        self.is_connected = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.reads.append((time.time_ns(), data))
        self.received += data.count(MARKER)
        if not self.is_connected and b"event: connected" in data:
            self.is_connected = True
            self.stats.connected += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.closed += 1

    def latencies(self) -> list[int]:
        # A marker never straddles two reads: each event is one chunk of the chunked response.
        found = []
        for received_at, data in self.reads:
            start = data.find(MARKER)
            while start != -1:
                digits = start + len(MARKER)
                close = data.find(b'"', digits)
                found.append(received_at - int(data[digits:close]))
                start = data.find(MARKER, close)
        return found


async def http_json(host: str, port: int, method: str, path: str, body: Any = None) -> Any:
    reader, writer = await asyncio.open_connection(host, port)
    payload = json.dumps(body).encode() if body is not None else b""
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )
    response = await reader.read()
    writer.close()
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def percentile(sorted_values: list[int], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index] / 1e6


async def run_case(mode: str, clients: int, rate: float, seconds: float, default_gc: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--serve", mode, *(["--default-gc"] if default_gc else [])]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 30)  # type: ignore[union-attr]
        host, port_text = line.split("http://", 1)[1].strip().rsplit(":", 1)
        port = int(port_text)
        await asyncio.sleep(0.5)
        rss_before = rss_bytes(server.pid)

        path = {"naive": "/naive/stream", "pml-sse": "/sse-starlette/stream"}.get(mode, "/events/stream")
        request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
        stats = Stats()
        loop = asyncio.get_running_loop()
        protocols: list[SSEClient] = []
        connect_started = time.monotonic()
        batch = 250
        for offset in range(0, clients, batch):
            made = await asyncio.gather(
                *(
                    loop.create_connection(lambda: SSEClient(request, stats), host, port)
                    for _ in range(min(batch, clients - offset))
                )
            )
            protocols.extend(protocol for _, protocol in made)
        deadline = time.monotonic() + 60
        while stats.connected < clients and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        connect_seconds = time.monotonic() - connect_started
        await asyncio.sleep(1.0)  # idle: let the server settle
        rss_idle = rss_bytes(server.pid)
        server_count = (await http_json(host, port, "GET", "/bench/clients"))["clients"]

        count = max(1, round(rate * seconds))
        cpu_before = cpu_seconds(server.pid)
        client_cpu_before = time.process_time()
        await http_json(host, port, "POST", "/bench/publish", {"rate": rate, "count": count})
        deadline = time.monotonic() + seconds + 30
        while time.monotonic() < deadline and any(p.received < count for p in protocols):
            await asyncio.sleep(0.1)
        cpu_used = cpu_seconds(server.pid) - cpu_before
        client_cpu_used = time.process_time() - client_cpu_before
        complete = sum(1 for p in protocols if p.received >= count)

        for protocol in protocols:
            if protocol.transport is not None:
                protocol.transport.close()
        latencies = sorted(latency for protocol in protocols for latency in protocol.latencies())
        return {
            "mode": mode + (", default GC" if default_gc else ""),
            "clients": clients,
            "connected": stats.connected,
            "server_saw": server_count,
            "connect_s": round(connect_seconds, 1),
            "rate": rate,
            "events": count,
            "complete": complete,
            "samples": len(latencies),
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
            "max_ms": latencies[-1] / 1e6 if latencies else float("nan"),
            "kb_per_client": (rss_idle - rss_before) / clients / 1024,
            "cpu_us_per_delivery": cpu_used * 1e6 / (count * clients),
            "client_cpu_us_per_delivery": client_cpu_used * 1e6 / (count * clients),
            "rss_idle_mb": rss_idle / 2**20,
        }
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several rounds of one case: the median of each figure, and every round's p99."""
    summary = dict(runs[0])
    for key in ("p50_ms", "p99_ms", "max_ms", "cpu_us_per_delivery", "client_cpu_us_per_delivery", "kb_per_client"):
        summary[key] = statistics.median(r[key] for r in runs)
    summary["complete"] = min(r["complete"] for r in runs)
    summary["p99_rounds"] = [round(r["p99_ms"], 1) for r in runs]
    return summary


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| clients | design | rate (ev/s) | events | received all | p50 (ms) | p99 (ms) | p99 per round | max (ms)"
        " | server CPU / delivery | RSS / idle client |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['clients']:,} | {r['mode']} | {r['rate']:g} | {r['events']} | {r['complete']:,}/{r['clients']:,} |"
            f" {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {', '.join(map(str, r['p99_rounds']))} | {r['max_ms']:.1f} |"
            f" {r['cpu_us_per_delivery']:.1f} µs | {r['kb_per_client']:.1f} KB |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    results = []
    for clients in args.clients:
        rate = args.rate or DEFAULT_RATES.get(clients, 5.0)
        rounds = args.rounds or (1 if clients >= 10_000 else 3)
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes}
        for _ in range(rounds):  # designs interleaved: a noisy minute hurts them alike
            for mode in args.modes:
                result = await run_case(mode, clients, rate, args.seconds, args.default_gc)
                runs[mode].append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
        results.extend(summarise(runs[mode]) for mode in args.modes)
    by_design = lambda name: name.split(",")[0]  # noqa: E731
    print(table(results))
    print()
    for clients in args.clients:
        by_mode = {by_design(r["mode"]): r for r in results if r["clients"] == clients}
        for other in ("naive", "pml-sse"):
            if {"pml", other} <= set(by_mode):
                p99 = by_mode[other]["p99_ms"] / by_mode["pml"]["p99_ms"]
                cpu = by_mode[other]["cpu_us_per_delivery"] / by_mode["pml"]["cpu_us_per_delivery"]
                print(f"{clients:,} clients: {other} / pml = {p99:.1f}x the p99, {cpu:.1f}x the CPU per delivery")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--clients", default="100,1000,10000", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--modes", default=",".join(MODES), type=lambda s: s.split(","))
    parser.add_argument("--seconds", type=float, default=5.0, help="publishing time per case")
    parser.add_argument("--rate", type=float, help="events per second (default: 20 / 10 / 1 for 100 / 1k / 10k)")
    parser.add_argument("--default-gc", action="store_true", help="keep Python's GC thresholds in the server")
    parser.add_argument("--rounds", type=int, help="rounds per case (default: 3, and 1 for 10,000 clients)")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.default_gc)
        return
    limit = raise_fd_limit()
    if max(args.clients) + 100 > limit:
        sys.exit(f"need {max(args.clients) + 100} file descriptors, the limit is {limit}")
    try:
        import uvloop

        uvloop.run(main_async(args))
    except ImportError:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
