"""The admin routes on a real uvicorn: ``DELETE /graph/tools/{tool_id}`` and ``POST /graph/reset``.

Their JSON answers and errors, the events stream clients receive (live, and on replay, also after
a restart), the metrics recomputed after, the ``admin`` scope with authentication on, and the
Host/Origin checks every route has."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from pml_gateway.auth import KeyStore

from gateway_support import run_gateway, stdio_entry, wait_for
from server_helpers import make_settings, open_stream, post_executions, running_app

pytestmark = pytest.mark.anyio


def node_ids(graph: dict[str, Any]) -> set[str]:
    return {node["id"] for node in graph["nodes"]}


def is_graph_event(kind: str) -> Any:
    return lambda event: event.event == kind


async def test_forget_and_reset_answer_json_reach_stream_clients_and_replay(tmp_path: Path) -> None:
    settings = make_settings(db=str(tmp_path / "graph.db"), metrics_interval_seconds=0.05)
    async with running_app(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        await post_executions(client, [
            {"workflow_id": "w1", "tasks": [{"id": "a", "tool_id": "files__read", "server": "files"},
                                            {"id": "b", "tool_id": "ext/x", "depends_on": ["a"]},
                                            {"id": "c", "tool_id": "files__write", "server": "files", "depends_on": ["b"]}]},
            {"workflow_id": "w2", "tool_ids": ["files__read", "files__write"]},
        ])
        before = (await client.get("/graph")).json()
        # The server a task gives is recorded; a tool nobody gave one stays external (null), never parsed.
        assert {n["id"]: n["server"] for n in before["nodes"]} == {"files__read": "files", "ext/x": None, "files__write": "files"}
        start = before["last_event_id"]
        async with open_stream(client, params={"last_event_id": start}) as live:
            # A tool id with a slash: percent-encoded in the path, decoded by the route.
            answer = await client.delete("/graph/tools/ext%2Fx")
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["type"] == "tool_forgotten" and body["id"] == start + 1
            assert {k: v for k, v in body["data"].items() if k != "timestamp"} == {
                "tool_id": "ext/x", "server": None, "edges_removed": 2, "transitions_removed": 1,
            }
            seen = await live.until(is_graph_event("tool_forgotten"))
            assert seen[-1].id == body["id"] and seen[-1].data == body["data"]
            # The metrics are recomputed after it.
            metrics = (await live.until(is_graph_event("metrics_updated")))[-1]
            assert (metrics.data["node_count"], metrics.data["edge_count"]) == (2, 1)

            graph = (await client.get("/graph")).json()
            assert node_ids(graph) == {"files__read", "files__write"} and graph["last_event_id"] >= body["id"]
            assert [(e["from_tool_id"], e["to_tool_id"]) for e in graph["edges"]] == [("files__read", "files__write")]

            missing = await client.delete("/graph/tools/ext%2Fx")
            assert missing.status_code == 404
            assert missing.json() == {"error": "Unknown tool: 'ext/x' has no history in the graph"}

            reset = await client.post("/graph/reset")
            assert reset.status_code == 200, reset.text
            assert reset.json()["type"] == "graph_reset"
            assert {k: v for k, v in reset.json()["data"].items() if k != "timestamp"} == {"nodes_removed": 2, "edges_removed": 1}
            assert (await live.until(is_graph_event("graph_reset")))[-1].id == reset.json()["id"]
            metrics = (await live.until(is_graph_event("metrics_updated")))[-1]
            assert (metrics.data["node_count"], metrics.data["edge_count"]) == (0, 0)
        graph = (await client.get("/graph")).json()
        assert graph["nodes"] == [] and graph["edges"] == []

        # Replay from before the forget (the memory buffer still holds it): the client sees the
        # forget and the reset in order, so it ends empty like the graph.
        async with open_stream(client, params={"last_event_id": start}) as replay:
            seen = await replay.until(is_graph_event("graph_reset"))
        assert [e.event for e in seen if e.id is not None][:1] == ["tool_forgotten"]
        reset_id = reset.json()["id"]
        async with open_stream(client, params={"last_event_id": reset_id}) as resumed:  # nothing before the reset
            assert (await resumed.until(lambda e: e.event == "connected"))[-1].data["last_event_id"] >= reset_id

    # After a restart only the store's log answers: it starts at the reset, so an older id gets a reset.
    async with running_app(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        async with open_stream(client, params={"last_event_id": start}) as replay:
            frames = await replay.until(lambda e: e.event == "reset")
        assert frames[-1].data["reason"] == "evicted" and frames[-1].data["oldest_event_id"] == reset_id
        assert (await client.get("/graph")).json()["nodes"] == []


async def test_admin_routes_check_host_and_origin() -> None:
    async with running_app(make_settings()) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        await post_executions(client, {"tool_ids": ["a__x", "a__y"]})
        foreign = await client.post("/graph/reset", headers={"origin": "http://evil.example"})
        assert foreign.status_code == 403 and "cors_origins" in foreign.json()["error"]
        rebinding = await client.delete("/graph/tools/a__x", headers={"host": "evil.example"})
        assert rebinding.status_code == 421 and "Host" in rebinding.json()["error"]
        assert node_ids((await client.get("/graph")).json()) == {"a__x", "a__y"}  # nothing was deleted
        wrong = await client.get("/graph/reset")
        assert wrong.status_code == 405 and wrong.json() == {"error": "Method GET not allowed on /graph/reset"}


async def test_admin_routes_need_the_admin_scope(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    admin = keys.create("root", ["admin"])
    writer = keys.create("agent", ["events:read", "executions:write"])
    async with running_app(make_settings(keys_file=tmp_path / "keys.json")) as url:
        as_writer = httpx.AsyncClient(base_url=url, timeout=10, headers={"authorization": f"Bearer {writer}"})
        as_admin = httpx.AsyncClient(base_url=url, timeout=10, headers={"authorization": f"Bearer {admin}"})
        async with as_writer, as_admin, httpx.AsyncClient(base_url=url, timeout=10) as anonymous:
            await post_executions(as_writer, {"tool_ids": ["a__x", "a__y"]})
            assert (await anonymous.delete("/graph/tools/a__x")).status_code == 401
            for refused in (await as_writer.delete("/graph/tools/a__x"), await as_writer.post("/graph/reset")):
                assert refused.status_code == 403
                assert refused.json() == {"error": "insufficient_scope", "error_description": "Required scope: admin"}
            assert node_ids((await as_writer.get("/graph")).json()) == {"a__x", "a__y"}
            assert (await as_admin.delete("/graph/tools/a__x")).json()["type"] == "tool_forgotten"
            assert (await as_admin.post("/graph/reset")).json()["type"] == "graph_reset"
            assert (await as_writer.get("/graph")).json()["nodes"] == []




async def test_unknown_tools_stay_external_and_a_forgotten_exposed_tool_stays_listed(tmp_path: Path) -> None:
    """Issue 16 item 7 through the whole gateway: POST /executions with made-up tool ids records no
    made-up server ("a__x" is not server "a"); forgetting them cleans /graph; forgetting a tool a
    server exposes leaves it in /tools (it is not history)."""
    async with run_gateway(tmp_path, {"t": stdio_entry()}) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        await wait_for(lambda: _has_tools(client))
        await post_executions(client, [{"tool_ids": ["t__echo", "a__x", "big__t*"]},
                                       {"tasks": [{"id": "1", "tool_id": "crm__find", "server": "crm"},
                                                  {"id": "2", "tool_id": "t__echo", "depends_on": ["1"]}]}])
        servers = {n["id"]: n["server"] for n in (await client.get("/graph")).json()["nodes"]}
        assert servers == {"t__echo": "t", "a__x": None, "big__t*": None, "crm__find": "crm"}
        listed = {t["tool_id"] for t in (await client.get("/tools")).json()["tools"]}
        assert "t__echo" in listed and not listed & {"a__x", "big__t*", "crm__find"}  # /tools: exposed tools only

        for junk in ("a__x", "big__t%2A"):
            assert (await client.delete(f"/graph/tools/{junk}")).status_code == 200
        answer = await client.delete("/graph/tools/t__echo")
        assert answer.json()["data"]["server"] == "t"
        assert {n["id"] for n in (await client.get("/graph")).json()["nodes"]} == {"crm__find"}
        assert "t__echo" in {t["tool_id"] for t in (await client.get("/tools")).json()["tools"]}


async def _has_tools(client: httpx.AsyncClient) -> bool:
    return bool((await client.get("/tools")).json()["tools"])


async def test_an_admin_limited_to_a_profile_forgets_only_its_tools_and_cannot_reset(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    limited = keys.create("team-admin", ["admin"], profile="reader")
    servers = {"t": stdio_entry()}
    config = tmp_path / "with-profiles.json"
    config.write_text(json.dumps({"mcpServers": servers, "profiles": {"reader": {"tools": ["t__echo"]}}}))
    async with run_gateway(tmp_path, servers, config=config, keys_file=tmp_path / "keys.json") as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=10, headers={"authorization": f"Bearer {limited}"}) as client:
            await post_executions(client, {"tool_ids": ["t__echo", "t__pick"]})
            hidden = await client.delete("/graph/tools/t__pick")
            assert hidden.status_code == 404 and hidden.json() == {"error": "Unknown tool: 't__pick' has no history in the graph"}
            refused = await client.post("/graph/reset")
            assert refused.status_code == 403
            assert refused.json() == {"error": "a credential limited to profile 'reader' cannot reset the whole graph"}
            assert gw.app.state.pml.engine.graph.has_node("t__pick")  # nothing deleted
            assert (await client.delete("/graph/tools/t__echo")).json()["type"] == "tool_forgotten"
