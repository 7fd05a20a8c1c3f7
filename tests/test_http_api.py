"""The JSON API on a real uvicorn: /executions, /graph, /events/stats, /health, and extensions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from pml_gateway.state import AppExtension, AppState
from server_helpers import make_settings, open_stream, post_executions, running_app, wait_for_stats

pytestmark = pytest.mark.anyio

STATS_FIELDS = {
    "connected_clients",
    "max_clients",
    "total_connections",
    "events_published",
    "events_delivered",
    "clients_dropped_slow",
    "last_event_id",
    "oldest_buffered_id",
    "uptime_seconds",
}


async def test_post_executions_accepts_one_or_a_list_in_both_forms() -> None:
    full = {
        "workflow_id": "full-1",
        "tasks": [
            {"id": "read", "tool_id": "files__read"},
            {"id": "sum", "tool_id": "text__summarize", "depends_on": ["read"]},
            {"id": "send", "tool_id": "mail__send", "depends_on": ["sum"], "success": False},
        ],
        "execution_time_ms": 40,
    }
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        one = await client.post("/executions", json={"workflow_id": "short-1", "tool_ids": ["a__x", "b__y"]})
        assert one.status_code == 202 and one.json() == {"workflow_ids": ["short-1"]}
        many = await client.post("/executions", json=[full, {"tool_ids": ["a__x", "c__z"], "success": False}])
        assert many.status_code == 202
        ids = many.json()["workflow_ids"]
        assert ids[0] == "full-1" and ids[1].startswith("wf-")  # generated when not given
        graph = (await client.get("/graph")).json()
    edges = {(e["from_tool_id"], e["to_tool_id"]): e for e in graph["edges"]}
    assert set(edges) == {("a__x", "b__y"), ("files__read", "text__summarize"), ("text__summarize", "mail__send"), ("a__x", "c__z")}
    assert edges[("files__read", "text__summarize")]["edge_type"] == "dependency"
    assert edges[("text__summarize", "mail__send")]["failure_count"] == 1
    assert edges[("a__x", "c__z")]["success_count"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tasks": [{"id": "1"}]}, "tasks.0.tool_id"),
        ({"tool_ids": ["a__x"], "success": "perhaps"}, "success"),
        ({"tool_ids": ["a__x"], "execution_time_ms": -1}, "execution_time_ms"),
        ({"tool_ids": ["a__x"], "colour": "red"}, "colour"),
        ([{"tool_ids": ["a__x"]}, {"tasks": []}], "1.tasks"),
        ({"tasks": [{"id": "a", "tool_id": "x__y", "depends_on": ["zz"]}]}, "depends_on"),
        ({"tool_ids": "a__x"}, "tool_ids"),
        ([], "empty"),
        (42, "int"),
    ],
)
async def test_bad_executions_are_a_422_naming_the_field_and_learn_nothing(body: Any, field: str) -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        before = (await client.get("/events/stats")).json()["last_event_id"]
        response = await client.post("/executions", json=body)
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/json"
        payload = response.json()
        assert field in payload["error"], payload
        assert "Traceback" not in response.text
        assert isinstance(payload["errors"], list) and payload["errors"]
        assert (await client.get("/events/stats")).json()["last_event_id"] == before
        assert (await client.get("/graph")).json()["edges"] == []


async def test_malformed_json_is_a_400() -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        response = await client.post("/executions", content=b'{"tool_ids": [', headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert response.json()["error"].startswith("Malformed JSON body")
        assert (await client.get("/executions")).status_code == 405


async def test_graph_snapshot_then_resume_from_its_last_event_id_misses_nothing() -> None:
    async with running_app(make_settings(metrics_interval_seconds=0.02)) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        await post_executions(client, {"tool_ids": ["a__x", "b__y", "c__z"]})
        await wait_for_stats(client, lambda s: s["events_published"] >= 6)  # graph_synced, metrics, edges...
        snapshot = (await client.get("/graph")).json()
        assert set(snapshot) == {"last_event_id", "nodes", "edges", "metrics"}
        assert {n["id"] for n in snapshot["nodes"]} == {"a__x", "b__y", "c__z"}
        assert {"id", "server", "pagerank"} <= set(snapshot["nodes"][0])
        assert {"from_tool_id", "to_tool_id", "confidence", "observed_count", "success_count", "failure_count", "edge_type"} <= set(
            snapshot["edges"][0]
        )
        await post_executions(client, {"workflow_id": "later", "tool_ids": ["c__z", "d__w"]})
        async with open_stream(client, params={"last_event_id": str(snapshot["last_event_id"])}) as stream:
            events = await stream.until(lambda e: e.event == "workflow_executed")
    graph_events = [e for e in events if e.id is not None]
    assert graph_events[0].id == snapshot["last_event_id"] + 1
    assert [e.id for e in graph_events] == list(range(snapshot["last_event_id"] + 1, graph_events[-1].id + 1))
    assert graph_events[-1].data["workflow_id"] == "later"


async def test_events_stats_has_exactly_the_contract_fields_and_counts() -> None:
    async with running_app(make_settings(max_clients=7)) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        async with open_stream(client, params={"last_event_id": "0"}) as stream:
            await stream.until(lambda e: e.event == "graph_synced")
            stats = (await client.get("/events/stats")).json()
    assert set(stats) == STATS_FIELDS
    assert stats["connected_clients"] == 1 and stats["max_clients"] == 7 and stats["total_connections"] == 1
    assert stats["events_published"] >= 1 and stats["events_delivered"] >= 1 and stats["clients_dropped_slow"] == 0
    assert stats["oldest_buffered_id"] == 1 and stats["last_event_id"] >= 1 and stats["uptime_seconds"] >= 0


class FakeDownstreams:
    """An AppExtension like the gateway's: a route, a lifespan, a health entry."""

    def __init__(self) -> None:
        self.entered_with: AppState | None = None
        self.exited = False

    def routes(self) -> list[BaseRoute]:
        async def ping(request: Request) -> JSONResponse:
            state: AppState = request.app.state.pml
            return JSONResponse({"pong": True, "last_event_id": state.engine.last_event_id})

        return [Route("/ext/ping", ping)]

    @asynccontextmanager
    async def _lifespan(self, state: AppState) -> AsyncIterator[None]:
        assert state.engine.last_event_id is not None  # engine synced before extensions start
        self.entered_with = state
        try:
            yield
        finally:
            self.exited = True

    def lifespan(self, state: AppState) -> Any:
        return self._lifespan(state)

    def health(self) -> dict[str, Any]:
        return {"files": {"state": "connected", "tools": 3, "error": None}}


async def test_health_merges_extension_downstreams_and_extensions_run_in_the_lifespan() -> None:
    extension = FakeDownstreams()
    assert isinstance(extension, AppExtension)
    async with running_app(make_settings(), extensions=[extension]) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        health = (await client.get("/health")).json()
        ping = (await client.get("/ext/ping")).json()
        assert extension.entered_with is not None and not extension.exited
    assert health == {"status": "ok", "downstreams": {"files": {"state": "connected", "tools": 3, "error": None}}}
    assert ping["pong"] is True and ping["last_event_id"] >= 1
    assert extension.exited


async def test_health_without_extensions() -> None:
    async with running_app(make_settings()) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        assert (await client.get("/health")).json() == {"status": "ok", "downstreams": {}}
