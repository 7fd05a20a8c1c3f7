"""Nothing a client saw is lost on a crash: SIGKILL a process mid-ingest, reopen, compare."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio

from graphrag import GraphRAGEngine, SQLiteStore

# Ingests executions forever; its listener prints each event as it is emitted, flushing, so the
# parent knows exactly what a stream client could have seen before the kill.
INGESTER = textwrap.dedent(
    """
    import sys, anyio
    from graphrag import GraphRAGEngine, SQLiteStore, WorkflowExecution

    async def main():
        engine = GraphRAGEngine(store=SQLiteStore(sys.argv[1]))
        await engine.sync_from_database()
        def listener(event):
            wid = getattr(event.data, "workflow_id", "-")
            sys.stdout.write(f"{event.id} {event.type} {wid}\\n")
            sys.stdout.flush()
        engine.on(listener)
        i = 0
        while True:
            tools = [f"s{(i + k) % 5}__t{(i * 7 + k) % 11}" for k in range(5)]
            execution = WorkflowExecution.model_validate({"tool_ids": tools, "workflow_id": f"w{i}"})
            await engine.update_from_execution(execution)
            i += 1

    anyio.run(main)
    """
)


def test_every_emitted_execution_survives_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    proc = subprocess.Popen([sys.executable, "-c", INGESTER, str(db)], stdout=subprocess.PIPE, text=True)
    seen: list[tuple[int, str, str]] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while len(seen) < 3000 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            event_id, event_type, workflow_id = line.split()
            seen.append((int(event_id), event_type, workflow_id))
        proc.send_signal(signal.SIGKILL)  # mid-stream: the child is still writing
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert len(seen) >= 3000, "the ingester did not get going"

    store = SQLiteStore(db)
    recorded = set(store.workflow_ids())
    executed = [wid for _, event_type, wid in seen if event_type == "workflow_executed"]
    assert executed and set(executed) <= recorded  # every execution whose events went out is there
    # Every event that went out is in the log, with the same id and type.
    logged = {(e.id, e.type) for e in store.events_after(0, limit=len(seen) + 1000)}
    assert {(i, t) for i, t, _ in seen} <= logged
    # The reopened graph is consistent: an edge's counts add up, and ids go on growing.
    reopened = GraphRAGEngine(store=store)
    synced = anyio.run(reopened.sync_from_database)
    assert synced.id > max(i for i, _, _ in seen)
    for _, _, attrs in reopened.graph.edges(data=True):
        assert attrs["observed_count"] == attrs["success_count"] + attrs["failure_count"]
