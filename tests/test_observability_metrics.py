"""``GET /metrics`` after a known workload through a real gateway with real downstreams.

The workload runs through both upstream paths (the fast path for downstream tools, the SDK for
``tools/list`` and the gateway's own tools) and both downstream paths (the SDK's stdio client,
the lean HTTP link), in both protocol eras; the scrape is parsed with prometheus-client's own
parser and every counted value is checked.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families

from gateway_support import run_gateway, wait_for, wait_listening
from test_gateway_fast_path import fast_path_server
from pml_gateway.observability import Instrumentation, SuggestionStats

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent
DOWNSTREAM = HERE / "observability_downstream.py"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, keyed by name and label set."""
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(scrape: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return scrape.get((name, frozenset(labels.items())))


async def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return samples(response.text)


async def test_metrics_after_a_known_workload(tmp_path: Path) -> None:
    servers: dict[str, Any] = {"obs": {"command": sys.executable, "args": [str(DOWNSTREAM)]}}
    with fast_path_server() as (odd_url, odd_port):
        await wait_listening(odd_port)
        servers["odd"] = {"url": odd_url}
        servers["gone"] = {"command": sys.executable, "args": ["-c", "raise SystemExit(3)"]}
        async with run_gateway(tmp_path, servers) as gw:
            with anyio.fail_after(60):
                async with Client(gw.mcp_url) as modern, Client(gw.mcp_url, mode="legacy") as legacy:
                    for _ in range(3):
                        assert not (await modern.call_tool("obs__meta", {})).is_error
                    assert (await modern.call_tool("obs__fail", {})).is_error
                    for _ in range(2):
                        assert not (await legacy.call_tool("odd__region", {"region": "eu"})).is_error
                    assert not (await legacy.call_tool("obs__meta", {})).is_error
                    assert (await modern.call_tool("no_such_tool", {})).is_error
                    assert not (await legacy.call_tool("pml_graph_metrics", {})).is_error
                    await legacy.list_tools()
                async with httpx.AsyncClient() as http, http.stream("GET", f"{gw.url}/events/stream") as stream:
                    assert stream.status_code == 200
                    connected = await wait_for(lambda: gw.app.state.pml.hub.connected_clients == 1)
                    assert connected
                    during = await scrape(gw.url)
                # Traces close after 0.5 s of quiet: both callers' calls are learned.
                await wait_for(lambda: gw.app.state.pml.engine.graph.number_of_edges() >= 1)
                await wait_for(lambda: gw.app.state.pml.engine.metrics is not None)
                after = await scrape(gw.url)
                graded = gw.app.state.pml.engine.grader.next_tool.stats()

    server = "pml_mcp_server_operation_duration_seconds_count"
    assert value(after, server, mcp_method_name="tools/call", gen_ai_tool_name="obs__meta", error_type="") == 4
    assert value(after, server, mcp_method_name="tools/call", gen_ai_tool_name="obs__fail", error_type="tool_error") == 1
    assert value(after, server, mcp_method_name="tools/call", gen_ai_tool_name="odd__region", error_type="") == 2
    assert value(after, server, mcp_method_name="tools/call", gen_ai_tool_name="pml_graph_metrics", error_type="") == 1
    # An unknown name is one bounded label value, never the name the client sent.
    assert value(after, server, mcp_method_name="tools/call", gen_ai_tool_name="_unknown", error_type="tool_error") == 1
    assert value(after, server, mcp_method_name="tools/list", gen_ai_tool_name="", error_type="") >= 1
    assert not any("no_such_tool" in str(labels) for _, labels in after)

    client = "pml_mcp_client_operation_duration_seconds_count"
    meta = {"mcp_method_name": "tools/call", "error_type": ""}
    assert value(after, client, server="obs", gen_ai_tool_name="obs__meta", **meta) == 4
    assert value(after, client, server="odd", gen_ai_tool_name="odd__region", **meta) == 2
    failed = {"mcp_method_name": "tools/call", "error_type": "tool_error"}
    assert value(after, client, server="obs", gen_ai_tool_name="obs__fail", **failed) == 1
    assert value(after, "pml_mcp_client_operation_duration_seconds_sum", server="odd", gen_ai_tool_name="odd__region", **meta) > 0

    assert value(after, "pml_downstream_up", server="obs") == 1
    assert value(after, "pml_downstream_up", server="odd") == 1
    assert value(after, "pml_downstream_up", server="gone") == 0
    assert value(during, "pml_sse_clients") == 1
    assert value(after, "pml_sse_clients") == 0
    assert value(after, "pml_sse_clients_dropped_total") == 0

    executions = value(after, "pml_executions_recorded_total")
    assert executions is not None and executions >= 1
    assert value(after, "pml_events_published_total", type="workflow_executed") == executions
    assert value(after, "pml_events_published_total", type="graph_synced") == 1
    assert value(after, "pml_events_published_total", type="edge_created") >= 1
    nodes = value(after, "pml_graph_nodes")
    edges = value(after, "pml_graph_edges")
    assert nodes is not None and nodes >= 2 and edges is not None and edges >= 1
    assert value(after, "pml_graph_density") == pytest.approx(edges / (nodes * (nodes - 1)))
    assert value(after, "pml_graph_communities") is not None
    # Live grading (graphrag's grader): each proxied call after another in its trace is checked.
    assert value(after, "pml_suggestion_evaluations_total") == graded.evaluations > 0
    assert value(after, "pml_suggestion_hits_total", k="1") == graded.hits_at_1
    assert value(after, "pml_suggestion_hits_total", k="3") == graded.hits_at_3


async def test_each_app_has_its_own_registry_and_suggestion_source(tmp_path: Path) -> None:
    async with run_gateway(tmp_path, {}) as first, run_gateway(tmp_path, {}) as second:
        first.app.state.pml.instrumentation.suggestion_stats = lambda: SuggestionStats(evaluations=7, hits={1: 2, 3: 5})
        one, two = await scrape(first.url), await scrape(second.url)
    assert value(one, "pml_suggestion_evaluations_total") == 7
    assert value(one, "pml_suggestion_hits_total", k="3") == 5
    assert value(two, "pml_suggestion_evaluations_total") == 0
    assert value(one, "pml_events_published_total", type="graph_synced") == 1
    assert value(two, "pml_events_published_total", type="graph_synced") == 1


def test_metrics_off_records_nothing() -> None:
    instrumentation = Instrumentation(metrics=False, tracing=False)
    instrumentation.observe_server("tools/call", "a__b", "", 0.01)
    with instrumentation.client_call("a", "a__b", own_span=True) as call:
        assert call.meta({"k": 1}) == {"k": 1}  # no span, no traceparent
    families = {f.name: f for f in instrumentation.registry.collect()}
    assert all(not family.samples for family in families.values())
