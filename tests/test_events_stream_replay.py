"""Replay on a real uvicorn: Last-Event-ID / ?last_event_id= while events flow, across a restart on
the same database file, and ``reset`` when an id can no longer be replayed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import httpx
import pytest

from graphrag.events import GRAPH_EVENT_TYPES
from server_helpers import WireEvent, make_settings, open_stream, post_executions, running_app, wait_for_stats

pytestmark = pytest.mark.anyio


def workflow(i: int) -> dict:
    return {"workflow_id": f"wf-{i}", "tool_ids": [f"svc__t{i % 5}", f"svc__t{(i + 1) % 5}", f"svc__u{i % 3}"]}


def is_final(event: WireEvent) -> bool:
    return event.event == "workflow_executed" and event.data["workflow_id"] == "final"


def graph_ids(events: list[WireEvent]) -> list[int]:
    return [e.id for e in events if e.event in GRAPH_EVENT_TYPES]  # type: ignore[misc]


@pytest.mark.parametrize(
    ("replay_buffer", "via"),
    [(10_000, "header"), (4, "query")],
    ids=["from-memory-via-header", "from-log-via-query"],
)
async def test_replay_while_events_flow_has_no_gap_and_no_duplicate(replay_buffer: int, via: str) -> None:
    settings = make_settings(replay_buffer=replay_buffer, metrics_interval_seconds=0.02)
    async with (
        running_app(settings) as base_url,
        httpx.AsyncClient(base_url=base_url) as live_client,
        httpx.AsyncClient(base_url=base_url) as resumed_client,
        httpx.AsyncClient(base_url=base_url) as producer,
    ):
        async with open_stream(live_client) as live:
            connected = await live.next()
            assert connected is not None and connected.event == "connected"
            first_live_id = connected.data["last_event_id"] + 1
            produced = anyio.Event()

            async def produce() -> None:
                for i in range(40):
                    await post_executions(producer, workflow(i))
                    await anyio.sleep(0.003)
                await post_executions(producer, {"workflow_id": "final", "tool_ids": ["svc__t0", "svc__end"]})
                produced.set()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(produce)
                # Let some events go by, then resume from the first live one while more keep coming.
                seen = await live.until(lambda e: e.id is not None and e.id >= first_live_id + 12)
                assert not produced.is_set()
                if via == "header":
                    resume = open_stream(resumed_client, headers={"Last-Event-ID": str(first_live_id)})
                else:
                    resume = open_stream(resumed_client, params={"last_event_id": str(first_live_id)})
                async with resume as resumed:
                    seen += await live.until(is_final, timeout=20)
                    replayed = await resumed.until(is_final, timeout=20)

    live_ids = graph_ids(seen)
    assert live_ids == list(range(first_live_id, live_ids[-1] + 1))  # live: contiguous
    assert graph_ids(replayed) == live_ids[1:]  # resumed: everything after the id, once, in order
    assert replayed[0].event == "connected" and not any(e.event == "reset" for e in replayed)
    by_id = {e.id: (e.event, e.data) for e in seen}
    assert all(by_id[e.id] == (e.event, e.data) for e in replayed if e.id is not None)


async def test_replay_across_a_restart_on_the_same_database_file(tmp_path: Path) -> None:
    settings = make_settings(db=str(tmp_path / "graph.db"), metrics_interval_seconds=0.02)
    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        for i in range(3):
            await post_executions(client, workflow(i))
        await post_executions(client, {"workflow_id": "final", "tool_ids": ["svc__t0", "svc__end"]})
        async with open_stream(client, params={"last_event_id": "0"}) as stream:
            before = [e for e in await stream.until(is_final) if e.id is not None]
        graph_before = (await client.get("/graph")).json()
    last = before[-1].id
    assert last is not None and last > 5

    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        async with open_stream(client, headers={"Last-Event-ID": str(last - 3)}) as stream:
            after = await stream.until(lambda e: e.event == "graph_synced")
        graph_after = (await client.get("/graph")).json()

    assert after[0].event == "connected" and not any(e.event == "reset" for e in after)
    replayed = [e for e in after if e.id is not None]
    assert [(e.id, e.event, e.data) for e in replayed[:3]] == [(e.id, e.event, e.data) for e in before[-3:]]
    # The restart's graph_synced continues the ids (they only grow) and reloads the same graph.
    synced = replayed[-1]
    assert synced.id is not None and synced.id > last
    assert graph_ids(replayed) == list(range(last - 2, synced.id + 1))
    assert synced.data["edge_count"] == len(graph_before["edges"]) == len(graph_after["edges"])
    key = lambda e: (e["from_tool_id"], e["to_tool_id"], e["observed_count"], e["confidence"])  # noqa: E731
    assert sorted(map(key, graph_after["edges"])) == sorted(map(key, graph_before["edges"]))


async def test_reset_for_an_id_the_log_no_longer_holds(tmp_path: Path) -> None:
    db = tmp_path / "graph.db"
    settings = make_settings(db=str(db), replay_buffer=3)
    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        for i in range(3):
            await post_executions(client, workflow(i))
    # What the log's pruning does to old events.
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM events WHERE id <= 6")
    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        async with open_stream(client, headers={"Last-Event-ID": "2"}) as stream:
            connected, reset = await stream.next(), await stream.next()
            await post_executions(client, {"workflow_id": "after-reset", "tool_ids": ["a__x", "b__y"]})
            live = await stream.until(lambda e: e.event == "workflow_executed")
        # The oldest id still held replays normally.
        async with open_stream(client, params={"last_event_id": "6"}) as stream:
            replayed = await stream.until(lambda e: e.id is not None)
    assert connected is not None and connected.event == "connected"
    assert reset is not None and reset.event == "reset" and reset.id is None
    assert reset.data["reason"] == "evicted"
    assert reset.data["requested_event_id"] == 2 and reset.data["oldest_event_id"] == 7
    assert live[-1].data["workflow_id"] == "after-reset"
    assert [e.event for e in replayed] == ["connected", replayed[-1].event] and replayed[-1].id == 7


async def test_reset_when_the_id_is_beyond_the_last_as_after_the_database_was_replaced(tmp_path: Path) -> None:
    old = make_settings(db=str(tmp_path / "old.db"))
    async with running_app(old) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        for i in range(4):
            await post_executions(client, workflow(i))
        old_last = (await wait_for_stats(client, lambda s: s["last_event_id"] >= 10))["last_event_id"]

    new = make_settings(db=str(tmp_path / "new.db"))
    async with running_app(new) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        async with open_stream(client, headers={"Last-Event-ID": str(old_last)}) as stream:
            connected, reset = await stream.next(), await stream.next()
            await post_executions(client, {"workflow_id": "fresh", "tool_ids": ["a__x", "b__y"]})
            live = await stream.until(lambda e: e.event == "workflow_executed")
    assert connected is not None and connected.data["last_event_id"] < old_last
    assert reset is not None and reset.event == "reset" and reset.id is None
    assert reset.data == {**reset.data, "reason": "unknown_event_id", "requested_event_id": old_last, "oldest_event_id": 1}
    assert live[0].event == "edge_created" and live[-1].data["workflow_id"] == "fresh"
