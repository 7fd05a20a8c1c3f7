"""SSE fan-out benchmark: publish-to-receipt latency, server CPU per delivered frame, memory per client.

    .venv/bin/python bench/sse_fanout.py --clients 1000,5000,10000 --modes pml --source executions --seconds 10 --stall
    .venv/bin/python bench/sse_fanout.py --clients 100,1000 --seconds 5     # the three designs, synthetic events

Each case starts a server process (the real ``create_app`` on uvicorn, uvloop + httptools) and
load generator processes (``--loadgen``: one up to 1,000 clients, else two) that hold the
clients on raw sockets (asyncio protocols, uvloop) and record ``receipt - send`` for every
``workflow_executed`` event on every connection (the send time travels in its ``workflow_id``,
same machine clock). Events come from:

- ``--source executions``: real ``POST /executions`` from this process, open loop at ``--rate``
  per second (20 by default): ingest, learning and every event of an execution (3 here) included;
  "answered" counts the 202s.
- ``--source publish``: ``workflow_executed`` events published by the server itself at a steady
  rate (the earlier tables).

``--stall`` adds a case with one more client that sends its request and never reads: the
others' latency should not move.

Three designs, same app, same middleware, same uvicorn:

- ``pml``: the project's ``GET /events/stream``.
- ``pml-sse``: the same hub and frames, with sse-starlette's ``EventSourceResponse`` carrying the
  bytes, one generator per client pulling from the hub's push (``SSEStarletteBaseline`` below):
  what the product's direct response replaced, kept here as the baseline.
- ``naive``: the textbook design: one unbounded ``asyncio.Queue`` per client, an sse-starlette
  generator per client (default settings, its 15 s ping task included), each event encoded to JSON
  and SSE for each client.

Memory per client = (server RSS with N idle clients connected - RSS before) / N. Server CPU per
frame = the server process's CPU time (user + system, from /proc) from the first event sent to
the last one received / the frames the hub delivered (``/events/stats``): unlike the latency it
hardly depends on what else the machine is doing. "in kernel" is the system share of that CPU
(the writes). The load average (1 min) at the start of each case is the last column.

The server runs with the gateway's GC thresholds (``pml_gateway.server.GC_THRESHOLDS``, all designs
alike); ``--default-gc`` keeps Python's, to show what they are for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


# =============================================================================================
# Server side (a subprocess: ``sse_fanout.py --serve pml|naive``)
# =============================================================================================
def serve(mode: str, default_gc: bool, client_queue: int) -> None:
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

    per_address = {"max_streams_per_address": 50_000} if "max_streams_per_address" in Settings.model_fields else {}
    settings = Settings(
        db=":memory:",
        config=None,
        port=0,
        max_clients=50_000,
        **per_address,  # every client is 127.0.0.1 here (the setting is newer than some trees measured)
        max_connections=50_000,
        client_queue=client_queue,
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
# Load generators (subprocesses: ``sse_fanout.py --loadgen``), each holding its share of clients
# =============================================================================================
class SSEClient(asyncio.Protocol):
    """One raw connection. ``data_received`` only timestamps and keeps the bytes (cheap, so the
    client side adds little to the latency); they are parsed after the run."""

    def __init__(self, request: bytes, ready: list[int]) -> None:
        self.request = request
        self.ready = ready
        self.reads: list[tuple[int, bytes]] = []
        self.received = 0  # workflow_executed events seen (counted without parsing)
        self.is_connected = False
        self.closed = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.reads.append((time.time_ns(), data))
        self.received += data.count(MARKER)
        if not self.is_connected and b"event: connected" in data:
            self.is_connected = True
            self.ready[0] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def latencies(self) -> list[int]:
        # A marker never straddles two reads here: writes are a few KB at most.
        found = []
        for received_at, data in self.reads:
            start = data.find(MARKER)
            while start != -1:
                digits = start + len(MARKER)
                close = data.find(b'"', digits)
                found.append(received_at - int(data[digits:close]))
                start = data.find(MARKER, close)
        return found


async def loadgen_async(host: str, port: int, path: str, clients: int, stall: bool) -> None:
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
    loop = asyncio.get_running_loop()
    ready = [0]
    protocols: list[SSEClient] = []
    for offset in range(0, clients, 250):
        made = await asyncio.gather(
            *(loop.create_connection(lambda: SSEClient(request, ready), host, port) for _ in range(min(250, clients - offset)))
        )
        protocols.extend(protocol for _, protocol in made)
    deadline = time.monotonic() + 120
    while ready[0] < clients and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stalled = None
    if stall:
        # A client that sends its request and never reads a byte (a small receive buffer).
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((host, port))
        stalled.send(request)
    print(f"READY {ready[0]}", flush=True)
    line = await loop.run_in_executor(None, sys.stdin.readline)  # "COLLECT <events> <timeout>"
    _, count_text, timeout_text = line.split()
    count, deadline = int(count_text), time.monotonic() + float(timeout_text)
    while time.monotonic() < deadline and any(p.received < count for p in protocols):
        await asyncio.sleep(0.02)
    done_at = time.time()
    histogram: dict[int, int] = {}
    for protocol in protocols:
        for latency in protocol.latencies():
            bucket = latency // 10_000  # 10 µs buckets
            histogram[bucket] = histogram.get(bucket, 0) + 1
    result = {
        "connected": ready[0],
        "complete": sum(1 for p in protocols if p.received >= count),
        "closed": sum(1 for p in protocols if p.closed),
        "histogram": histogram,
        "done_at": done_at,  # when every client had every event (or the deadline)
    }
    print(json.dumps(result), flush=True)
    for protocol in protocols:
        if protocol.transport is not None:
            protocol.transport.close()
    if stalled is not None:
        stalled.close()


# =============================================================================================
# The harness (this process): the server, the load generators, the executions
# =============================================================================================
async def http_json(host: str, port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection(host, port)
    payload = json.dumps(body).encode() if body is not None else b""
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )
    response = await reader.read()
    writer.close()
    head, _, body_bytes = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body_bytes) if body_bytes else None


def percentile_of(histogram: dict[int, int], p: float) -> float:
    """The p-th percentile (ms) of latencies kept in 10 µs buckets."""
    total = sum(histogram.values())
    if not total:
        return float("nan")
    rank, seen = p / 100 * total, 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return (bucket + 1) / 100
    return max(histogram) / 100


async def post_executions(host: str, port: int, rate: float, count: int) -> list[float]:
    """``count`` executions at ``rate``/s, open loop (each POST on its own schedule); their latencies."""
    answered: list[float] = []

    async def one(n: int) -> None:
        body = {"workflow_id": f"bench-{time.time_ns()}", "tool_ids": ["files__read", "text__summarize", f"mail__send_{n % 5}"]}
        started = time.monotonic()
        try:
            status, _ = await asyncio.wait_for(http_json(host, port, "POST", "/executions", body), 30)
        except (OSError, asyncio.TimeoutError):
            return
        if status == 202:
            answered.append(time.monotonic() - started)

    due = time.monotonic()
    tasks = []
    for n in range(count):
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        tasks.append(asyncio.create_task(one(n)))
        due += 1 / rate
    await asyncio.gather(*tasks)
    return answered


async def run_case(args: argparse.Namespace, mode: str, clients: int, rate: float, stall: bool) -> dict[str, Any]:
    serve_args = ["--serve", mode, "--client-queue", str(args.client_queue), *(["--default-gc"] if args.default_gc else [])]
    server = subprocess.Popen([sys.executable, __file__, *serve_args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    loadgens: list[subprocess.Popen[str]] = []
    try:
        line = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 30)  # type: ignore[union-attr]
        host, port_text = line.split("http://", 1)[1].strip().rsplit(":", 1)
        port = int(port_text)
        await asyncio.sleep(0.5)
        rss_before = rss_bytes(server.pid)

        path = {"naive": "/naive/stream", "pml-sse": "/sse-starlette/stream"}.get(mode, "/events/stream")
        processes = args.processes or (1 if clients <= 1000 else 2)
        shares = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
        connect_started = time.monotonic()
        for i, share in enumerate(shares):
            command = [sys.executable, __file__, "--loadgen", f"{host}:{port}{path}", "--clients", str(share)]
            if stall and i == 0:
                command.append("--stall")
            loadgens.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        connected = 0
        for loadgen in loadgens:
            ready = await asyncio.wait_for(asyncio.to_thread(loadgen.stdout.readline), 180)  # type: ignore[union-attr]
            connected += int(ready.split()[1])
        connect_seconds = time.monotonic() - connect_started
        await asyncio.sleep(2.0)  # idle: let the server settle
        rss_idle = rss_bytes(server.pid)
        _, counted = await http_json(host, port, "GET", "/bench/clients")

        count = max(1, round(rate * args.seconds))
        _, stats_before = await http_json(host, port, "GET", "/events/stats")
        load_before = os.getloadavg()[0]
        user_before, system_before = cpu_times(server.pid)
        started = time.time()
        if args.source == "executions":
            answered = await post_executions(host, port, rate, count)
        else:
            await http_json(host, port, "POST", "/bench/publish", {"rate": rate, "count": count})
            answered = []
        for loadgen in loadgens:
            loadgen.stdin.write(f"COLLECT {count} {args.seconds + 30}\n")  # type: ignore[union-attr]
            loadgen.stdin.flush()  # type: ignore[union-attr]
        reports = [json.loads(await asyncio.wait_for(asyncio.to_thread(g.stdout.readline), args.seconds + 90)) for g in loadgens]  # type: ignore[union-attr]
        user_after, system_after = cpu_times(server.pid)  # the server is idle once all is delivered
        cpu_used = user_after - user_before + system_after - system_before
        system_share = (system_after - system_before) / cpu_used if cpu_used else 0.0
        wall = max(report["done_at"] for report in reports) - started  # publishing until the last delivery
        _, stats_after = await http_json(host, port, "GET", "/events/stats")
        histogram: dict[int, int] = {}
        for report in reports:
            for bucket, n in report["histogram"].items():
                histogram[int(bucket)] = histogram.get(int(bucket), 0) + n
        # The naive design has no hub: its frames are the events its clients received.
        frames = stats_after["events_delivered"] - stats_before["events_delivered"] or sum(histogram.values())
        answered.sort()
        return {
            "mode": mode
            + (", default GC" if args.default_gc else "")
            + (f", 1 stalled client ({'dropped' if stats_after['clients_dropped_slow'] else 'not dropped'})" if stall else ""),
            "source": args.source,
            "clients": clients,
            "processes": processes,
            "connected": connected,
            "server_saw": counted["clients"],
            "connect_s": round(connect_seconds, 1),
            "rate": rate,
            "events": count,
            "answered": len(answered) if args.source == "executions" else count,
            "post_p99_ms": answered[max(0, round(0.99 * len(answered)) - 1)] * 1000 if answered else float("nan"),
            "complete": sum(r["complete"] for r in reports),
            "samples": sum(histogram.values()),
            "p50_ms": percentile_of(histogram, 50),
            "p99_ms": percentile_of(histogram, 99),
            "max_ms": (max(histogram) + 1) / 100 if histogram else float("nan"),
            "frames": frames,
            "frames_per_s": frames / wall,
            "dropped_slow": stats_after["clients_dropped_slow"],
            "kb_per_client": (rss_idle - rss_before) / clients / 1024,
            "cpu_us_per_frame": cpu_used * 1e6 / max(1, frames),
            "cpu_share": cpu_used / wall,
        "system_share": system_share,  # of the server's CPU: in the kernel (the writes)
            "load": round(load_before, 1),
        }
    finally:
        for process in (*loadgens, server):
            process.terminate()
        for process in (*loadgens, server):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several rounds of one case: the median of each figure, and every round's p99."""
    summary = dict(runs[0])
    for key in ("p50_ms", "p99_ms", "max_ms", "cpu_us_per_frame", "kb_per_client", "cpu_share", "system_share", "frames_per_s", "post_p99_ms"):
        summary[key] = statistics.median(r[key] for r in runs)
    summary["complete"] = min(r["complete"] for r in runs)
    summary["answered"] = min(r["answered"] for r in runs)
    summary["p99_rounds"] = [round(r["p99_ms"], 1) for r in runs]
    summary["load"] = "-".join(str(r["load"]) for r in runs)
    return summary


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| clients | design | rate (/s) | sent | answered | received all | p50 (ms) | p99 (ms) | p99 per round | max (ms)"
        " | frames/s | server CPU | in kernel | server CPU / frame | RSS / idle client | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['clients']:,} | {r['mode']} | {r['rate']:g} | {r['events']} | {r['answered']} | {r['complete']:,}/{r['clients']:,} |"
            f" {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {', '.join(map(str, r['p99_rounds']))} | {r['max_ms']:.0f} |"
            f" {r['frames_per_s']:,.0f} | {r['cpu_share']:.0%} | {r['system_share']:.0%} | {r['cpu_us_per_frame']:.2f} µs | {r['kb_per_client']:.1f} KB | {r['load']} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    results = []
    for clients in args.clients:
        rate = args.rate or (20.0 if args.source == "executions" else DEFAULT_RATES.get(clients, 5.0))
        rounds = args.rounds or (1 if clients >= 5_000 else 3)
        cases = [(mode, False) for mode in args.modes] + ([("pml", True)] if args.stall else [])
        runs: dict[tuple[str, bool], list[dict[str, Any]]] = {case: [] for case in cases}
        for _ in range(rounds):  # designs interleaved: a noisy minute hurts them alike
            for mode, stall in cases:
                result = await run_case(args, mode, clients, rate, stall)
                runs[(mode, stall)].append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
        results.extend(summarise(runs[case]) for case in cases)
    print(table(results))


def send_floor(connections: int, rounds: int = 200, size: int = 1000, rate: float = 20.0) -> str:
    """The floor of any fan-out: CPU of one blocking ``send()`` of ``size`` bytes to each of
    ``connections`` loopback TCP connections, ``rate`` rounds per second, a child process draining them."""
    import select

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:  # the reader
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
        poller = select.epoll()
        for conn in conns:
            conn.setblocking(False)
            poller.register(conn.fileno(), select.EPOLLIN)
        by_fd, got, need = {conn.fileno(): conn for conn in conns}, 0, connections * rounds * size
        while got < need:
            for fd, _ in poller.poll(1):
                try:
                    got += len(by_fd[fd].recv(65536))
                except BlockingIOError:
                    pass
        os._exit(0)
    peers = [listener.accept()[0] for _ in range(connections)]
    for peer in peers:
        peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as uvloop's transports
    data = b"x" * size
    time.sleep(0.5)
    before, due = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    for _ in range(rounds):
        due += 1 / rate
        time.sleep(max(0.0, due - time.monotonic()))
        for peer in peers:
            peer.send(data)
    after = resource.getrusage(resource.RUSAGE_SELF)
    os.waitpid(child, 0)
    user, system, sends = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, connections * rounds
    return (
        f"{connections:,} connections, {size} bytes: {(user + system) / sends * 1e6:.2f} µs per send"
        f" ({system / sends * 1e6:.2f} µs in the kernel), load {os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)  # host:port/path
    parser.add_argument("--stall", action="store_true", help="add one client that never reads (pml only)")
    parser.add_argument("--floor", action="store_true", help="only the cost of one send() per client (--clients)")
    parser.add_argument("--clients", default="100,1000,10000", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--modes", default=",".join(MODES), type=lambda s: s.split(","))
    parser.add_argument("--source", choices=("publish", "executions"), default="publish",
                        help="events published by the server itself, or real POST /executions")
    parser.add_argument("--seconds", type=float, default=5.0, help="publishing time per case")
    parser.add_argument("--rate", type=float, help="events (or executions) per second (default: 20 / 10 / 1 for 100 / 1k / 10k; 20 executions)")
    parser.add_argument("--processes", type=int, help="load generator processes (default: 1 up to 1,000 clients, else 2)")
    parser.add_argument("--client-queue", type=int, default=1000, help="the server's client_queue setting")
    parser.add_argument("--default-gc", action="store_true", help="keep Python's GC thresholds in the server")
    parser.add_argument("--rounds", type=int, help="rounds per case (default: 3, and 1 from 5,000 clients)")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.default_gc, args.client_queue)
        return
    limit = raise_fd_limit()
    if max(args.clients) + 100 > limit:
        sys.exit(f"need {max(args.clients) + 100} file descriptors, the limit is {limit}")
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run  # type: ignore[assignment]
    if args.floor:
        for clients in args.clients:
            print(send_floor(clients))
        return
    if args.loadgen:
        address, _, path = args.loadgen.partition("/")
        host, _, port = address.rpartition(":")
        run(loadgen_async(host, int(port), "/" + path, args.clients[0], args.stall))
        return
    run(main_async(args))


if __name__ == "__main__":
    main()
