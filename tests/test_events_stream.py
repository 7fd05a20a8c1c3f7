"""GET /events/stream on a real uvicorn: wire format, every event type, heartbeat, filters, errors,
headers, HEAD and CORS."""

from __future__ import annotations

import json
import re

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

from graphrag.events import GRAPH_EVENT_TYPES, PAYLOAD_MODELS
from server_helpers import make_settings, open_stream, post_executions, running_app, wait_for_stats

pytestmark = pytest.mark.anyio

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FLOW = {"tool_ids": ["files__read", "text__summarize", "mail__send"], "execution_time_ms": 12.5}


def check_payload(event_type: str, data: dict) -> None:
    """The data line is exactly the payload model's fields, timestamp last, and validates."""
    model = PAYLOAD_MODELS[event_type]
    assert list(data) == [*(name for name in model.model_fields if name != "timestamp"), "timestamp"]
    assert TIMESTAMP.match(data["timestamp"]), data["timestamp"]
    model.model_validate(data)


async def test_every_event_type_is_emitted_with_the_contract_wire_format() -> None:
    settings = make_settings(heartbeat_seconds=0.2, metrics_interval_seconds=0.05)
    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        # From 0: the start-up graph_synced is replayed from the log.
        async with open_stream(client, params={"last_event_id": "0"}) as stream:
            connected = await stream.next()
            assert connected is not None and connected.event == "connected"
            assert connected.id is None and connected.retry == 3000
            assert connected.raw[0] == "event: connected" and connected.raw[-1] == "retry: 3000"
            assert connected.data["connected_clients"] == 1 and connected.data["client_id"]
            check_payload("connected", connected.data)

            await post_executions(client, FLOW)
            await post_executions(client, FLOW)  # the same edges again: edge_updated
            # tool_added / tool_removed need a downstream server: tests/test_events_gateway.py;
            # tool_forgotten / graph_reset an administrator: tests/test_http_admin.py.
            wanted = set(GRAPH_EVENT_TYPES) - {"tool_added", "tool_removed", "tool_forgotten", "graph_reset"} | {"heartbeat"}
            seen_types: set[str] = set()

            def all_seen(event) -> bool:  # type: ignore[no-untyped-def]
                # metrics_updated after the ingestion (edges counted), not just the start-up one.
                if event.event != "metrics_updated" or event.data["edge_count"] == 2:
                    seen_types.add(event.event)
                return wanted <= seen_types

            events = await stream.until(all_seen, timeout=15)

    graph_events = [e for e in events if e.event in GRAPH_EVENT_TYPES]
    ids = [e.id for e in graph_events]
    assert ids == list(range(1, len(ids) + 1)), ids  # every graph event has an id that only grows
    assert graph_events[0].event == "graph_synced"
    for event in events:
        check_payload(event.event, event.data)
        if event.event in GRAPH_EVENT_TYPES:
            assert event.raw == [f"id: {event.id}", f"event: {event.event}", f"data: {json.dumps(event.data, separators=(',', ':'))}"]
        else:
            assert event.id is None and not any(line.startswith("id:") for line in event.raw)
    created = [e.data for e in graph_events if e.event == "edge_created"]
    assert [(d["from_tool_id"], d["to_tool_id"]) for d in created] == [
        ("files__read", "text__summarize"),
        ("text__summarize", "mail__send"),
    ]
    updated = [e.data for e in graph_events if e.event == "edge_updated"]
    assert len(updated) == 2 and all(d["observed_count"] == 2 and d["new_confidence"] > d["old_confidence"] for d in updated)
    executed = [e for e in graph_events if e.event == "workflow_executed"]
    assert len(executed) == 2 and executed[0].data["tool_ids"] == FLOW["tool_ids"]
    # One workflow_executed per execution, after its edge events.
    first_executed = graph_events.index(executed[0])
    assert [e.event for e in graph_events[first_executed - 2 : first_executed]] == ["edge_created", "edge_created"]


async def test_heartbeat_arrives_every_interval_without_id() -> None:
    async with running_app(make_settings(heartbeat_seconds=0.2)) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        async with open_stream(client) as stream:
            beats = [e for e in await stream.until(lambda e: e.event == "heartbeat") if e.event == "heartbeat"]
            beats += [e for e in await stream.until(lambda e: e.event == "heartbeat") if e.event == "heartbeat"]
    assert len(beats) == 2
    assert all(b.id is None and b.data["connected_clients"] == 1 for b in beats)
    assert beats[1].data["uptime_seconds"] > beats[0].data["uptime_seconds"]


async def test_types_filter_with_prefix_sends_only_matching_graph_events() -> None:
    settings = make_settings(heartbeat_seconds=0.2, metrics_interval_seconds=0.05)
    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        await post_executions(client, FLOW)
        await post_executions(client, {"tool_ids": ["files__read", "text__summarize", "files__write"]})
        stats = await wait_for_stats(client, lambda s: s["last_event_id"] is not None and s["last_event_id"] >= 9)
        last = stats["last_event_id"]
        async with open_stream(client, params={"last_event_id": "0"}) as everything:
            all_events = await everything.until(lambda e: e.id == last)
        expected = [
            (e.id, e.event) for e in all_events if e.event.startswith("edge_") or e.event == "metrics_updated"
        ]
        assert {t for _, t in expected} >= {"edge_created", "edge_updated", "metrics_updated"}
        params = {"types": "edge_*,metrics_updated", "last_event_id": "0"}
        async with open_stream(client, params=params) as filtered:
            got = await filtered.until(lambda e: e.id == expected[-1][0])
            # connected and heartbeat always come.
            got += await filtered.until(lambda e: e.event == "heartbeat")
    assert got[0].event == "connected"
    assert [(e.id, e.event) for e in got if e.id is not None] == expected
    assert {e.event for e in got if e.id is None} == {"connected", "heartbeat"}


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("types=edge_created,nonsense", "nonsense"),
        ("types=bogus_*", "bogus_*"),
        ("types=", "types"),
        ("colour=blue", "colour"),
        ("last_event_id=abc", "last_event_id"),
        ("last_event_id=-1", "last_event_id"),
        # Malformed filter patterns (a server nobody knows is fine: tests/test_events_filters.py).
        ("tools=", "tools"),
        ("tools=files__*,,time__now", "tools"),
        ("servers=%20", "servers"),
        ("servers=files,%20time", "servers"),
        ("servers=fi%09les", "servers"),
        ("workflow_id=a%00b", "workflow_id"),
    ],
)
async def test_bad_query_is_a_400_json_error_naming_it(query: str, named: str) -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        response = await client.get(f"/events/stream?{query}")
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json"
        assert named in response.json()["error"]
        assert (await client.get("/events/stats")).json()["total_connections"] == 0


async def test_bad_last_event_id_header_is_a_400() -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        response = await client.get("/events/stream", headers={"Last-Event-ID": "x7"})
        assert response.status_code == 400 and "Last-Event-ID" in response.json()["error"]


async def test_stream_headers_and_head_without_a_stream() -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        async with client.stream("GET", "/events/stream") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["x-accel-buffering"] == "no"
        with anyio.fail_after(5):
            head = await client.head("/events/stream?types=edge_*")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-type"].startswith("text/event-stream")
        stats = await wait_for_stats(client, lambda s: s["connected_clients"] == 0)
        assert stats["total_connections"] == 1  # the GET only: HEAD opened no stream


async def test_httpx_sse_client_reads_the_stream() -> None:
    """A stock SSE client library parses the stream (ids, types, JSON data)."""
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        async with aconnect_sse(client, "GET", "/events/stream", params={"last_event_id": "0"}) as source:
            events = source.aiter_sse()
            with anyio.fail_after(10):
                first = await anext(events)
                synced = await anext(events)
    assert first.event == "connected" and first.retry == 3000
    assert synced.event == "graph_synced" and synced.id == "1" and synced.json()["node_count"] == 0


# -- CORS --------------------------------------------------------------------------------------
async def test_cors_allowed_origin_is_echoed_with_vary() -> None:
    settings = make_settings(cors_origins="http://localhost:*,https://*.example.com")
    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        for origin in ("http://localhost:5173", "https://dash.example.com"):
            async with client.stream("GET", "/events/stream", headers={"Origin": origin}) as response:
                assert response.headers["access-control-allow-origin"] == origin
                assert "Origin" in response.headers["vary"]
            stats = await client.get("/events/stats", headers={"Origin": origin})
            assert stats.headers["access-control-allow-origin"] == origin
        preflight = await client.options(
            "/executions",
            headers={
                "Origin": "http://localhost:3000",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "content-type" in preflight.headers["access-control-allow-headers"].lower()


async def test_cors_refused_origin_gets_no_cors_headers() -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        for origin in ("http://evil.example", "https://localhost:8000", "http://localhost.evil.example"):
            async with client.stream("GET", "/events/stream", headers={"Origin": origin}) as response:
                assert response.status_code == 200
                assert not any(name.startswith("access-control-") for name in response.headers)
                assert "Origin" in response.headers["vary"]
        preflight = await client.options(
            "/events/stream", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
        )
        assert preflight.status_code == 403
        assert not any(name.startswith("access-control-") for name in preflight.headers)
        assert "evil.example" in preflight.json()["error"]
