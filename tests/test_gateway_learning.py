"""Learning through the gateway: workflows (DAGs) and traces of proxied calls, seen on /events/stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway_support import run_gateway, stdio_entry, text

pytestmark = pytest.mark.anyio

SERVERS = {"local": stdio_entry(), "steady": stdio_entry()}


class EventLog:
    """Graph events read from /events/stream in the background."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._changed = anyio.Event()

    def add(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, kind: str, predicate: Any = lambda d: True, timeout: float = 20) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            while True:
                for k, d in self.events:
                    if k == kind and predicate(d):
                        return d
                await self._changed.wait()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for k, d in self.events if k == kind]


@asynccontextmanager
async def event_log(base_url: str) -> AsyncIterator[EventLog]:
    log = EventLog()
    connected = anyio.Event()

    async def read() -> None:
        async with httpx.AsyncClient(timeout=None) as client:
            async with aconnect_sse(client, "GET", f"{base_url}/events/stream") as source:
                async for event in source.aiter_sse():
                    if event.event == "connected":
                        connected.set()
                    elif event.event and event.data:
                        log.add(event.event, json.loads(event.data))

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        with anyio.fail_after(10):
            await connected.wait()
        yield log
        tg.cancel_scope.cancel()


async def test_a_dag_with_parallel_branches_and_a_failing_task(tmp_path: Path) -> None:
    async with run_gateway(tmp_path, SERVERS) as gw, event_log(gw.url) as log:
        progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append((value, total, message))

        workflow = {
            "workflow_id": "wf-test-dag",
            "tasks": [
                {"id": "a", "tool": "local__span", "arguments": {"seconds": 0.4}},
                {"id": "b", "tool": "steady__span", "arguments": {"seconds": 0.4}},
                {"id": "c", "tool": "local__echo", "arguments": {"text": "joined"}, "depends_on": ["a", "b"]},
                {"id": "d", "tool": "local__fail", "arguments": {"message": "broken on purpose"}},
                {"id": "e", "tool": "local__pick", "arguments": {"count": 1}, "depends_on": ["d"]},
                {"id": "f", "tool": "steady__echo", "arguments": {"text": "last"}, "depends_on": ["c"]},
            ],
        }
        with anyio.fail_after(30):
            async with streamable_http_client(gw.mcp_url) as (r, w), ClientSession(r, w) as session:
                await session.initialize()
                result = await session.call_tool("pml_execute_workflow", workflow, progress_callback=on_progress)
        assert not result.is_error
        out = result.structured_content
        assert json.loads(text(result)) == out  # the same JSON as text
        tasks = {t["id"]: t for t in out["tasks"]}
        assert out["workflow_id"] == "wf-test-dag" and out["success"] is False
        assert {k: t["status"] for k, t in tasks.items()} == {
            "a": "succeeded", "b": "succeeded", "c": "succeeded", "d": "failed", "e": "skipped", "f": "succeeded",
        }
        assert "broken on purpose" in tasks["d"]["error"] and "d failed" in tasks["e"]["error"]
        assert tasks["f"]["structured_content"]["text"] == "last"
        a, b = tasks["a"]["structured_content"], tasks["b"]["structured_content"]
        assert a["start"] < b["end"] and b["start"] < a["end"]  # a and b overlapped: they ran in parallel

        # progress: one notification per settled task, counting up to the total
        assert [p[0] for p in progress] == [1, 2, 3, 4, 5, 6] and {p[1] for p in progress} == {6}
        assert any("e" in (p[2] or "") and "skipped" in (p[2] or "") for p in progress)

        # recorded with its dependency edges; the skipped task never ran, so it is not learned
        done = await log.wait_for("workflow_executed", lambda d: d["workflow_id"] == "wf-test-dag")
        assert done["success"] is False and sorted(done["tool_ids"]) == sorted(
            ["local__span", "steady__span", "local__echo", "local__fail", "steady__echo"]
        )
        created = {(d["from_tool_id"], d["to_tool_id"]): d for d in log.of("edge_created")}
        assert set(created) == {
            ("local__span", "local__echo"),
            ("steady__span", "local__echo"),
            ("local__echo", "steady__echo"),
        }
        assert {d["edge_type"] for d in created.values()} == {"dependency"}


async def test_bad_workflows_are_tool_errors_naming_the_field(tmp_path: Path) -> None:
    async with run_gateway(tmp_path, {"local": stdio_entry()}) as gw:
        with anyio.fail_after(30):
            async with Client(gw.mcp_url, mode="legacy", cache=None) as client:
                cases = {
                    "tasks: dependency cycle": {"tasks": [
                        {"id": "x", "tool": "local__echo", "depends_on": ["y"]},
                        {"id": "y", "tool": "local__echo", "depends_on": ["x"]},
                    ]},
                    "depends_on: 'nope' names no task": {"tasks": [{"id": "x", "tool": "local__echo", "depends_on": ["nope"]}]},
                    "duplicate task id": {"tasks": [{"id": "x", "tool": "local__echo"}, {"id": "x", "tool": "local__echo"}]},
                    "tasks.0.tool: unknown tool 'local__nothing'": {"tasks": [{"id": "x", "tool": "local__nothing"}]},
                    "tasks: List should have at least 1 item": {"tasks": []},
                    "tasks.0.arguments: Input should be a valid dictionary": {"tasks": [{"id": "x", "tool": "local__echo", "arguments": [1]}]},
                    "gateway's own tools cannot run": {"tasks": [{"id": "x", "tool": "pml_graph_metrics"}]},
                }
                for expected, arguments in cases.items():
                    result = await client.call_tool("pml_execute_workflow", arguments)
                    assert result.is_error, expected
                    assert expected in text(result) and "invalid arguments for pml_execute_workflow" in text(result)
                missing = await client.call_tool("pml_suggest_next_tools", {})
                assert missing.is_error and "after: Field required" in text(missing)
                extra = await client.call_tool("pml_search_tools", {"query": "x", "limt": 3})
                assert extra.is_error and "limt: Extra inputs are not permitted" in text(extra)
                low = await client.call_tool("pml_search_tools", {"query": "x", "limit": 0})
                assert low.is_error and "limit: Input should be greater than or equal to 1" in text(low)


async def test_proxied_calls_of_a_session_become_one_trace(tmp_path: Path) -> None:
    async with run_gateway(tmp_path, SERVERS, trace_idle_seconds=60) as gw, event_log(gw.url) as log:
        with anyio.fail_after(30):
            async with streamable_http_client(gw.mcp_url) as (r, w), ClientSession(r, w) as session:
                await session.initialize()
                assert not (await session.call_tool("local__echo", {"text": "1"})).is_error
                assert not (await session.call_tool("pml_graph_metrics", {})).is_error  # not part of the trace
                assert not (await session.call_tool("local__pick", {"count": 2})).is_error
                assert (await session.call_tool("steady__fail", {"message": "x"})).is_error
            # the session ended (DELETE): the trace is recorded at once, long before 60 s of quiet
            done = await log.wait_for("workflow_executed", lambda d: d["workflow_id"].startswith("trace-"))
        assert done["tool_ids"] == ["local__echo", "local__pick", "steady__fail"]
        assert done["success"] is False
        created = [(d["from_tool_id"], d["to_tool_id"], d["edge_type"]) for d in log.of("edge_created")]
        assert created == [
            ("local__echo", "local__pick", "sequence"),
            ("local__pick", "steady__fail", "sequence"),
        ]


async def test_a_quiet_caller_without_session_gets_its_trace_closed(tmp_path: Path) -> None:
    async with run_gateway(tmp_path, SERVERS, trace_idle_seconds=0.5) as gw, event_log(gw.url) as log:
        with anyio.fail_after(30):
            async with Client(gw.mcp_url, cache=None) as client:  # 2026-07-28: no session
                assert client.protocol_version == "2026-07-28"
                await client.call_tool("steady__echo", {"text": "1"})
                await client.call_tool("local__echo", {"text": "2"})
                done = await log.wait_for("workflow_executed")
                assert done["tool_ids"] == ["steady__echo", "local__echo"] and done["success"] is True
                edge = await log.wait_for("edge_created")
                assert (edge["from_tool_id"], edge["to_tool_id"]) == ("steady__echo", "local__echo")
                # the same caller again, after the quiet: a new trace, and the edge is updated
                await client.call_tool("steady__echo", {"text": "3"})
                await client.call_tool("local__echo", {"text": "4"})
                updated = await log.wait_for("edge_updated")
                assert updated["observed_count"] == 2 and updated["new_confidence"] > updated["old_confidence"]


async def test_graph_tools_agree_with_the_http_api(tmp_path: Path) -> None:
    async with run_gateway(tmp_path, SERVERS, trace_idle_seconds=60) as gw, event_log(gw.url) as log:
        with anyio.fail_after(60):
            for _ in range(3):
                async with Client(gw.mcp_url, mode="legacy", cache=None) as client:
                    for name, args in [("local__echo", {"text": "a"}), ("local__pick", {"count": 1}), ("steady__echo", {"text": "b"})]:
                        await client.call_tool(name, args)
            async with Client(gw.mcp_url, mode="legacy", cache=None) as client:
                await client.call_tool("local__echo", {"text": "a"})
                await client.call_tool("steady__span", {"seconds": 0})
            await log.wait_for("workflow_executed", lambda d: d["tool_ids"] == ["local__echo", "steady__span"])

            async with Client(gw.mcp_url, mode="legacy", cache=None) as client, httpx.AsyncClient() as http:
                # metrics may be recomputed in the background at any time: read until both sides agree
                while True:
                    metrics = (await client.call_tool("pml_graph_metrics", {})).structured_content
                    graph = (await http.get(f"{gw.url}/graph")).json()
                    if graph["last_event_id"] == metrics["last_event_id"]:
                        break
                    await anyio.sleep(0.1)
                assert metrics["node_count"] == len(graph["nodes"]) == 4
                assert metrics["edge_count"] == len(graph["edges"]) == 3
                for key in ("density", "communities_count", "pagerank_top_10"):
                    assert metrics[key] == graph["metrics"][key], key
                assert {e["tool_id"] for e in metrics["pagerank_top_10"]} == {n["id"] for n in graph["nodes"]}

                suggested = (await client.call_tool("pml_suggest_next_tools", {"after": ["local__echo"]})).structured_content
                ranked = [s["tool_id"] for s in suggested["suggestions"]]
                assert ranked[0] == "local__pick" and set(ranked) == {"local__pick", "steady__span"}
                assert suggested["suggestions"][0]["available"] is True
                assert "sequence edge from local__echo" in suggested["suggestions"][0]["reason"]
                assert suggested["suggestions"][0]["confidence"] > suggested["suggestions"][1]["confidence"]

                found = (await client.call_tool("pml_search_tools", {"query": "echo"})).structured_content
                assert {t["tool_id"] for t in found["tools"][:2]} == {"local__echo", "steady__echo"}
                boosted = (
                    await client.call_tool("pml_search_tools", {"query": "echo", "context_tools": ["local__pick"]})
                ).structured_content
                assert boosted["tools"][0]["tool_id"] == "steady__echo"  # local__pick -> steady__echo was learned
                assert boosted["tools"][0]["graph_score"] > 0 and "sequence edge" in boosted["tools"][0]["reason"]
                described = (await client.call_tool("pml_search_tools", {"query": "parallel", "limit": 1})).structured_content
                assert [t["tool_id"] for t in described["tools"]][0].endswith("__span")
