"""Gateway replicas as real processes (``python -m pml_gateway serve``) on one shared store.

Used by the replica tests and by ``bench/replicas.py``: each replica is its own OS process with its
own port, so a SIGKILL is a real crash and the processes share nothing but the database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

from gateway_support import ROOT, free_port, wait_for
from server_helpers import WireEvent, WireReader

START_TIMEOUT = 30.0


@dataclass
class ReplicaProcess:
    db: str
    workdir: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        log = open(self.workdir / f"replica-{self.port}.log", "ab")  # noqa: SIM115  # the child's stderr
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pml_gateway", "serve", "--db", self.db, "--port", str(self.port), "--host", "127.0.0.1"],
            cwd=self.workdir,  # no mcp.json there: no downstreams
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as client:
            with anyio.fail_after(timeout):
                while True:
                    assert self.proc is not None and self.proc.poll() is None, f"replica exited: {self.log_tail()}"
                    try:
                        if (await client.get("/health")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self) -> str:
        path = self.workdir / f"replica-{self.port}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@asynccontextmanager
async def clients_of(nodes: list[ReplicaProcess], timeout: float = 10) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One HTTP client per replica, closed at the end."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(httpx.AsyncClient(base_url=r.url, timeout=timeout)) for r in nodes]


def replica_env(**settings: Any) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PML_LOG_LEVEL": "warning", "PML_METRICS_INTERVAL_SECONDS": "0.2"}
    env.update({f"PML_{name.upper()}": str(value) for name, value in settings.items()})
    return env


@asynccontextmanager
async def replicas(db: str, workdir: Path, count: int, **settings: Any) -> AsyncIterator[list[ReplicaProcess]]:
    """``count`` replicas on ``db``, started together; all stopped (or killed) at the end."""
    env = replica_env(**settings)
    started = [ReplicaProcess(db, workdir, free_port(), env) for _ in range(count)]
    try:
        for replica in started:
            replica.spawn()
        async with anyio.create_task_group() as tasks:
            for replica in started:
                tasks.start_soon(replica.wait_ready)
        yield started
    finally:
        for replica in started:
            replica.stop()


def execution(workflow_id: str, tools: Iterable[str] = ("hot__a", "hot__b"), success: bool = True) -> dict[str, Any]:
    return {"workflow_id": workflow_id, "tool_ids": list(tools), "success": success, "execution_time_ms": 1.0}


def edges_of(graph: dict[str, Any]) -> dict[tuple[str, str], tuple[int, int, int, str]]:
    """An edge's counts and type, by key: what must agree across replicas."""
    return {
        (e["from_tool_id"], e["to_tool_id"]): (e["observed_count"], e["success_count"], e["failure_count"], e["edge_type"])
        for e in graph["edges"]
    }


async def read_until_workflows(reader: WireReader, count: int, timeout: float = 15) -> list[WireEvent]:
    """Graph events (with ids) up to the ``count``-th ``workflow_executed``."""
    seen = 0

    def enough(event: WireEvent) -> bool:
        nonlocal seen
        seen += event.event == "workflow_executed"
        return seen >= count

    return [e for e in await reader.until(enough, timeout=timeout) if e.id is not None]


async def read_for(readers: list[WireReader], seconds: float) -> list[list[WireEvent]]:
    """Every event each reader gets within the same ``seconds`` (the readers are done after this)."""
    received: list[list[WireEvent]] = [[] for _ in readers]

    async def read(reader: WireReader, events: list[WireEvent]) -> None:
        with anyio.move_on_after(seconds):
            while (event := await reader.next()) is not None:
                events.append(event)

    async with anyio.create_task_group() as tasks:
        for reader, events in zip(readers, received):
            tasks.start_soon(read, reader, events)
    return received


async def converged(clients: list[httpx.AsyncClient], timeout: float = 10) -> dict[str, Any]:
    """Wait until every replica's /graph shows the same edges and last id; returns one of them."""

    async def same() -> dict[str, Any] | None:
        graphs = [(await c.get("/graph")).json() for c in clients]
        first = graphs[0]
        if all(edges_of(g) == edges_of(first) and g["last_event_id"] == first["last_event_id"] for g in graphs):
            return first
        return None

    return await wait_for(same, timeout=timeout)  # type: ignore[no-any-return]


async def quiet(client: httpx.AsyncClient, seconds: float = 0.6, timeout: float = 15) -> None:
    """Wait until the log stops growing for ``seconds`` (every pending metrics window has closed)."""
    with anyio.fail_after(timeout):
        last, since = None, anyio.current_time()
        while anyio.current_time() - since < seconds:
            current = (await client.get("/graph")).json()["last_event_id"]
            if current != last:
                last, since = current, anyio.current_time()
            await anyio.sleep(0.05)


async def common_start(clients: list[httpx.AsyncClient]) -> dict[str, str]:
    """Headers that make every client's stream start after the same id: replicas that just
    started are still logging (graph_synced, first metrics), and a stream without Last-Event-ID
    starts wherever its replica is at that moment."""
    await quiet(clients[0])
    return {"Last-Event-ID": str((await converged(clients))["last_event_id"])}
