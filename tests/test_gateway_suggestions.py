"""Learning that earns its keep, through a real gateway: honest traces, pml_call_tool, lean exposure,
tool search, live grading of suggestions and search, unknown tools in suggestions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client

from gateway_support import ROOT, run_gateway, stdio_entry, text, wait_for

pytestmark = pytest.mark.anyio

PY_BIN = ROOT / ".tools" / "py" / "bin"
OWN_TOOLS = {"pml_graph_metrics", "pml_search_tools", "pml_suggest_next_tools", "pml_call_tool", "pml_execute_workflow"}


async def edges(base_url: str) -> set[tuple[str, str]]:
    async with httpx.AsyncClient() as http:
        graph = (await http.get(f"{base_url}/graph")).json()
    return {(e["from_tool_id"], e["to_tool_id"]) for e in graph["edges"]}


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "sdk-path"])
async def test_two_concurrent_2026_agents_on_one_machine_teach_no_cross_edges(tmp_path: Path, fast_path: bool) -> None:
    async with run_gateway(tmp_path, {"local": stdio_entry()}, fast_path=fast_path) as gw:
        await wait_for(lambda: gw.gateway.registry.get("local__echo"))
        plan_a = [("local__echo", {"text": "a"}), ("local__pid", {})] * 3
        plan_b = [("local__pick", {"count": 1}), ("local__sleep", {"seconds": 0})] * 3
        # Same machine, same client name ("mcp"), same era, calls strictly interleaved: a, b, a, b, ...
        async with Client(gw.mcp_url, cache=None) as a, Client(gw.mcp_url, cache=None) as b:
            for (name_a, args_a), (name_b, args_b) in zip(plan_a, plan_b):
                assert not (await a.call_tool(name_a, args_a)).is_error
                assert not (await b.call_tool(name_b, args_b)).is_error
        own = {("local__echo", "local__pid"), ("local__pid", "local__echo"), ("local__pick", "local__sleep"), ("local__sleep", "local__pick")}
        learned = await wait_for(lambda: _all_of(gw.url, own), timeout=20)
        assert learned == own  # each agent's own sequence, nothing across the two
        # every call after the first of its trace was graded live against the suggestions: 5 per agent
        assert gw.gateway.traces is not None
        assert engine_of(gw).grader.next_tool.evaluations == 10


def engine_of(gw: Any) -> Any:
    return gw.app.state.pml.engine


async def _all_of(base_url: str, expected: set[tuple[str, str]]) -> set[tuple[str, str]] | None:
    learned = await edges(base_url)
    return learned if expected <= learned else None


async def call(client: Client, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(name, arguments)
    assert not result.is_error, text(result)
    return result.structured_content


async def test_lean_exposure_search_call_and_live_grading(tmp_path: Path) -> None:
    servers = {"local": stdio_entry(), "time": {"command": str(PY_BIN / "mcp-server-time")}}
    async with run_gateway(tmp_path, servers, tool_exposure="lean") as gw:
        await wait_for(lambda: gw.gateway.registry.get("time__get_current_time") and gw.gateway.registry.get("local__echo"))
        # lean: search is how clients find tools, so its models load at start-up, not at the first search
        await wait_for(lambda: gw.gateway.upstream.tools.search.loaded, timeout=30)
        for mode in ("auto", "legacy"):  # 2026-07-28 and 2025-11-25
            async with Client(gw.mcp_url, mode=mode, cache=None) as client:
                listed = (await client.list_tools()).tools
                assert {t.name for t in listed} == OWN_TOOLS  # lean: only the gateway's own tools
                assert all(t.output_schema is None for t in listed)

                # search: natural words, BM25; results carry description and input schema
                found = await call(client, "pml_search_tools", {"query": "what time is it in Tokyo", "limit": 3})
                # the time server's tools first (which of its two needs meaning, not words: see bench/README.md)
                assert {t["tool_id"] for t in found["tools"][:2]} == {"time__get_current_time", "time__convert_time"}
                top = next(t for t in found["tools"] if t["tool_id"] == "time__get_current_time")
                assert "timezone" in top["input_schema"]["properties"] and top["description"]

                # pml_call_tool answers exactly as the direct call does
                via = await client.call_tool("pml_call_tool", {"tool": "local__echo", "arguments": {"text": "hi"}})
                direct = await client.call_tool("local__echo", {"text": "hi"})
                assert not via.is_error and via.structured_content == direct.structured_content
                assert text(via) == text(direct)
                missing = await client.call_tool("pml_call_tool", {"tool": "local__nope", "arguments": {}})
                assert missing.is_error and "unknown tool 'local__nope'" in text(missing)
                bad = await client.call_tool("pml_call_tool", {"arguments": {}})
                assert bad.is_error and "tool" in text(bad)
                unknown = await client.call_tool("pml_suggest_next_tools", {"after": ["no_such__tool"]})
                assert unknown.is_error and "after.0: unknown tool 'no_such__tool'" in text(unknown)
                none_yet = await call(client, "pml_suggest_next_tools", {"after": ["local__fail"]})
                assert none_yet["suggestions"] == [] and "no tool has been seen" in none_yet["note"]

        # learning through pml_call_tool: echo -> pick taught by two traces (2026 era)
        for _ in range(2):
            async with Client(gw.mcp_url, cache=None) as client:
                await call(client, "pml_call_tool", {"tool": "local__echo", "arguments": {"text": "x"}})
                await call(client, "pml_call_tool", {"tool": "local__pick", "arguments": {"count": 1}})
            await wait_for(lambda: _all_of(gw.url, {("local__echo", "local__pick")}))
        async with Client(gw.mcp_url, cache=None) as client:
            suggested = await call(client, "pml_suggest_next_tools", {"after": ["local__echo"]})
            best = suggested["suggestions"][0]
            assert best["tool_id"] == "local__pick" and 0 < best["probability"] <= 1

            before = (await call(client, "pml_graph_metrics", {}))["suggestions"]
            # a search, then the call it led to: the search is graded and its words learned
            query = "hand me one random choice"
            await call(client, "pml_search_tools", {"query": query})
            await call(client, "pml_call_tool", {"tool": "local__echo", "arguments": {"text": "y"}})
            await call(client, "pml_call_tool", {"tool": "local__pick", "arguments": {"count": 1}})  # graded: a hit
            after = (await call(client, "pml_graph_metrics", {}))["suggestions"]
            assert after["evaluations"] == before["evaluations"] + 1
            assert after["hits_at_1"] == before["hits_at_1"] + 1 and after["hits_at_3"] == before["hits_at_3"] + 1
            assert after["hit_rate_at_1"] is not None
            assert after["search"]["evaluations"] == before["search"]["evaluations"] + 1
            again = await call(client, "pml_search_tools", {"query": query})
            learned = {t["tool_id"]: t for t in again["tools"]}
            assert learned["local__echo"]["feedback_score"] > 0 and "earlier searches" in learned["local__echo"]["reason"]
        async with httpx.AsyncClient() as http:
            graph = await wait_for(lambda: _graph_with_metrics(http, gw.url))
        assert graph["metrics"]["suggestions"]["evaluations"] == after["evaluations"]
        assert graph["metrics"]["suggestions"]["search"]["evaluations"] == after["search"]["evaluations"]


async def _graph_with_metrics(http: httpx.AsyncClient, base_url: str) -> dict[str, Any] | None:
    graph = (await http.get(f"{base_url}/graph")).json()
    return graph if graph["metrics"] is not None else None


async def test_what_search_learned_survives_a_restart(tmp_path: Path) -> None:
    """A search, then the tool called after it: the label is stored with the graph, and a gateway
    started later on the same database (a desktop client's next ``stdio`` session) starts from it."""
    db = str(tmp_path / "graph.db")
    query = "hand me one random choice"
    async with run_gateway(tmp_path, {"local": stdio_entry()}, db=db) as gw:
        await wait_for(lambda: gw.gateway.registry.get("local__pick"))
        async with Client(gw.mcp_url, cache=None) as client:
            first = await call(client, "pml_search_tools", {"query": query})
            assert all(t["feedback_score"] == 0 for t in first["tools"])
            await call(client, "pml_call_tool", {"tool": "local__pick", "arguments": {"count": 1}})
        await wait_for(lambda: gw.gateway.upstream.tools.search.feedback.labels >= 1)
    async with run_gateway(tmp_path, {"local": stdio_entry()}, db=db) as gw:
        await wait_for(lambda: gw.gateway.registry.get("local__pick"))
        async with Client(gw.mcp_url, cache=None) as client:
            again = {t["tool_id"]: t for t in (await call(client, "pml_search_tools", {"query": query}))["tools"]}
        assert again["local__pick"]["feedback_score"] > 0 and "earlier searches" in again["local__pick"]["reason"]
        assert gw.gateway.upstream.tools.search.feedback.queries["local__pick"] == [query]
