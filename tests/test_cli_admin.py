"""``pml-gateway admin forget-tool|reset`` as a separate process, against the database a running
gateway uses (a SQLite file, PostgreSQL): the gateway follows it through replication, its stream
clients receive the event, ``/graph`` drops what was deleted; and the command's errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from server_helpers import make_settings, open_stream, post_executions, running_app

pytestmark = pytest.mark.anyio

PML = [sys.executable, "-m", "pml_gateway"]


async def admin(*args: str) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(30):
        return await anyio.run_process([*PML, "admin", *args], check=False)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "graph.db")
    return str(request.getfixturevalue("pg_url"))


async def test_a_running_gateway_follows_a_cli_forget_and_reset(db: str) -> None:
    async with running_app(make_settings(db=db, metrics_interval_seconds=0.05)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        await post_executions(client, [{"tool_ids": ["files__read", "junk__t*", "files__write"]},
                                       {"tool_ids": ["files__read", "files__write"]}])
        start = (await client.get("/graph")).json()["last_event_id"]
        async with open_stream(client, params={"last_event_id": start}) as live:
            done = await admin("forget-tool", "junk__t*", "--db", db)
            assert done.returncode == 0, done.stderr
            assert done.stdout.decode().startswith("forgot junk__t*: 2 edges and 1 second-order counts deleted (event #")
            event = (await live.until(lambda e: e.event == "tool_forgotten"))[-1]
            assert event.data["tool_id"] == "junk__t*" and event.id is not None and event.id > start
            assert f"event #{event.id})" in done.stdout.decode()
            graph = (await client.get("/graph")).json()
            assert {n["id"] for n in graph["nodes"]} == {"files__read", "files__write"}
            assert graph["last_event_id"] >= event.id
            metrics = (await live.until(lambda e: e.event == "metrics_updated"))[-1]  # recomputed by the gateway
            assert metrics.data["node_count"] == 2

            refused = await admin("reset", "--db", db)
            assert refused.returncode == 2 and b"--yes" in refused.stderr
            assert (await client.get("/graph")).json()["nodes"] != []  # nothing deleted without --yes
            done = await admin("reset", "--db", db, "--yes")
            assert done.returncode == 0, done.stderr
            assert done.stdout.decode().startswith("graph reset: 2 tools and 1 edges deleted")
            event = (await live.until(lambda e: e.event == "graph_reset"))[-1]
            assert event.data["nodes_removed"] == 2
            assert (await client.get("/graph")).json()["nodes"] == []
        # Learning goes on after it, with ids after the reset's.
        await post_executions(client, {"tool_ids": ["files__read", "files__write"]})
        graph = (await client.get("/graph")).json()
        assert len(graph["edges"]) == 1 and graph["last_event_id"] > (event.id or 0)


async def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    missing = await admin("reset", "--yes", "--db", str(tmp_path / "nowhere.db"))
    assert missing.returncode == 2 and missing.stderr.decode().startswith("pml-gateway: error: db: ")
    assert b"does not exist" in missing.stderr and b"Traceback" not in missing.stderr
    memory = await admin("forget-tool", "a__x", "--db", ":memory:")
    assert memory.returncode == 2 and b"keeps nothing between processes" in memory.stderr
    db = str(tmp_path / "graph.db")
    assert (await admin("reset", "--yes", "--db", db + "x")).returncode == 2
    from graphrag import SQLiteStore

    SQLiteStore(db).close()  # an empty database
    unknown = await admin("forget-tool", "a__x", "--db", db)
    assert unknown.returncode == 2
    assert unknown.stderr.decode().strip() == f"pml-gateway: error: unknown tool 'a__x': the graph has no history of it in {db}"
    usage = await admin("forget-tool", "--db", db)
    assert usage.returncode == 2 and b"usage: pml-gateway admin forget-tool" in usage.stderr
