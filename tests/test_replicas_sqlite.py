"""Two gateway processes on ONE SQLite file follow one log instead of diverging.

As when Claude Desktop and Cursor each launch ``pml-gateway stdio`` on the default database: both
learn from every execution either records, serve the same events with the same ids, agree on
``/graph``, and only one emits ``metrics_updated`` per window.
"""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from gateway_support import ROOT, stdio_entry, write_config
from graphrag import SQLiteStore
from replica_support import clients_of, common_start, quiet, converged, edges_of, execution, read_for, read_until_workflows, replicas
from server_helpers import open_stream, post_executions

pytestmark = pytest.mark.anyio


async def test_two_processes_on_one_sqlite_file_share_the_log(tmp_path: Path) -> None:
    db = str(tmp_path / "shared.db")
    async with replicas(db, tmp_path, 2) as nodes, clients_of(nodes) as clients, AsyncExitStack() as stack:
        start = await common_start(clients)
        readers = [await stack.enter_async_context(open_stream(c, headers=start)) for c in clients]
        for reader in readers:
            assert (await reader.next()).event == "connected"  # type: ignore[union-attr]

        async with anyio.create_task_group() as tasks:  # both write at once: one hot edge, exact count
            for i in range(40):
                tasks.start_soon(post_executions, clients[i % 2], [execution(f"s{i}", success=i % 4 != 0)])

        streams = [await read_until_workflows(reader, 40) for reader in readers]
        assert [(e.id, e.event, e.data) for e in streams[0]] == [(e.id, e.event, e.data) for e in streams[1]]
        ids = [e.id for e in streams[0]]
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # commit order across processes: no gap

        graph = await converged(clients)
        assert edges_of(graph)[("hot__a", "hot__b")] == (40, 30, 10, "sequence")

        await quiet(clients[0])  # one window across both processes: one metrics_updated
        await post_executions(clients[0], [execution("one-more")])
        windows = await read_for(readers, 2.0)
        after = [events[[(e.data or {}).get("workflow_id") for e in events].index("one-more") :] for events in windows]
        metrics = [[e.id for e in events if e.event == "metrics_updated"] for events in after]
        assert len(metrics[0]) == 1 and metrics[0] == metrics[1]

    store = SQLiteStore(db)  # and the file holds each execution once
    try:
        assert store.execution_count() == 41
    finally:
        store.close()


async def test_two_stdio_gateways_on_the_same_database_learn_from_each_other(tmp_path: Path) -> None:
    """Claude Desktop (a 2025-11-25 session) and Cursor (2026-07-28) each launch ``pml-gateway stdio``."""
    config = write_config(tmp_path, {"local": stdio_entry()})
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "pml_gateway", "stdio", "--config", str(config), "--db", str(tmp_path / "graph.db")],
        env={"PYTHONPATH": str(ROOT), "PML_METRICS_INTERVAL_SECONDS": "0.2"},
        cwd=str(tmp_path),
    )
    workflow = {
        "workflow_id": "from-desktop",
        "tasks": [
            {"id": "a", "tool": "local__echo", "arguments": {"text": "hi"}},
            {"id": "b", "tool": "local__pid", "arguments": {}, "depends_on": ["a"]},
        ],
    }
    with anyio.fail_after(60):
        async with Client(params, mode="legacy") as desktop, Client(params) as cursor:
            assert not (await desktop.call_tool("pml_execute_workflow", workflow)).is_error
            while True:  # the other process follows the file within ~50 ms
                suggested = (await cursor.call_tool("pml_suggest_next_tools", {"after": ["local__echo"]})).structured_content
                if suggested and suggested["suggestions"]:
                    break
                await anyio.sleep(0.05)
            assert suggested["suggestions"][0]["tool_id"] == "local__pid"
            assert "dependency" in suggested["suggestions"][0]["reason"]
            # and back: what Cursor runs, Desktop knows
            workflow = {**workflow, "workflow_id": "from-cursor", "tasks": [{**workflow["tasks"][0]}, {"id": "c", "tool": "local__pick", "arguments": {"count": 1}, "depends_on": ["a"]}]}
            assert not (await cursor.call_tool("pml_execute_workflow", workflow)).is_error
            while True:
                metrics = (await desktop.call_tool("pml_graph_metrics", {})).structured_content
                if metrics and metrics["edge_count"] == 2:
                    break
                await anyio.sleep(0.05)


def test_leading_from_the_start_is_not_news_a_change_later_is(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A single-process gateway leads from its first look at the lock: that stays out of the INFO
    log (the demo said "replica: now the metrics leader" at every start); taking over or losing
    the lead later is said at INFO."""
    from graphrag import GraphRAGEngine
    from graphrag.replication import Replica

    store = SQLiteStore(tmp_path / "one.db")
    try:
        replica = Replica(GraphRAGEngine(store), store)
        with caplog.at_level("DEBUG", logger="graphrag.replication"):
            replica.lead(True)
            replica.lead(False)
            replica.lead(True)
        said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "graphrag.replication"]
        assert said == [
            ("DEBUG", "replica: now the metrics leader"),
            ("INFO", "replica: no longer the metrics leader"),
            ("INFO", "replica: now the metrics leader"),
        ]
        assert replica.engine.emits_metrics
    finally:
        store.close()
