"""OpenTelemetry spans through the gateway: one trace from the client into the downstream.

In this process: an SDK tracer provider with the in-memory exporter (and the gateway's own span
processor), real uvicorn, a stdio downstream behind the SDK's client and an HTTP downstream behind
the lean link. Then a real OTLP/HTTP export: ``pml-gateway serve`` in a subprocess with
``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a receiver this test runs, decoded with
opentelemetry-proto.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway_support import FAST, ROOT, free_port, run_gateway, text, wait_for, wait_listening, write_config
from graphrag import GraphRAGEngine
from pml_gateway.observability import Instrumentation
from pml_gateway.observability.tracing import install_processors
from pml_gateway.proxy import Gateway
from pml_gateway.settings import Settings
from test_gateway_fast_path import fast_path_server

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent
DOWNSTREAM = HERE / "observability_downstream.py"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The process's tracer provider (set once per process), exporting to memory."""
    memory = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    install_processors(provider, SimpleSpanProcessor(memory))
    return memory


def trace_id_of(traceparent: str) -> int:
    return int(traceparent.split("-")[1], 16)


def by_name(spans: tuple[ReadableSpan, ...], name: str, kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name and span.kind is kind]


async def test_one_trace_crosses_the_gateway_on_both_paths(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    servers: dict[str, Any] = {"obs": {"command": sys.executable, "args": [str(DOWNSTREAM)]}}
    with fast_path_server() as (odd_url, odd_port):
        await wait_listening(odd_port)
        servers["odd"] = {"url": odd_url}
        async with run_gateway(tmp_path, servers) as gw:
            assert gw.app.state.pml.instrumentation.tracing
            exporter.clear()
            with anyio.fail_after(60):
                async with Client(gw.mcp_url) as modern, Client(gw.mcp_url, mode="legacy") as legacy:
                    # The fast path, lean link downstream (2026-07-28 client).
                    with tracer.start_as_current_span("fast") as root:
                        region = await modern.call_tool("odd__region", {"region": "eu"})
                    fast_trace = root.get_span_context().trace_id
                    # The SDK path: a workflow, one task per downstream path (2025-11-25 session).
                    with tracer.start_as_current_span("workflow") as root:
                        tasks = [
                            {"id": "a", "tool": "obs__meta", "arguments": {}},
                            {"id": "b", "tool": "odd__region", "arguments": {"region": "us"}, "depends_on": ["a"]},
                        ]
                        workflow = await legacy.call_tool("pml_execute_workflow", {"tasks": tasks})
                    workflow_trace = root.get_span_context().trace_id
                    failed = await modern.call_tool("obs__fail", {})
    assert not region.is_error and not workflow.is_error and failed.is_error
    spans = exporter.get_finished_spans()

    # Fast path: the downstream saw the same trace, parented by the gateway's CLIENT span.
    seen = region.structured_content["traceparent"]
    assert trace_id_of(seen) == fast_trace
    (server,) = [s for s in by_name(spans, "tools/call odd__region", SpanKind.SERVER) if s.context.trace_id == fast_trace]
    (client,) = [s for s in by_name(spans, "tools/call odd__region", SpanKind.CLIENT) if s.context.trace_id == fast_trace]
    assert client.parent.span_id == server.context.span_id
    assert seen.split("-")[2] == format(client.context.span_id, "016x")
    assert server.attributes["mcp.method.name"] == "tools/call"
    assert server.attributes["gen_ai.tool.name"] == "odd__region"
    assert server.attributes["gen_ai.operation.name"] == "execute_tool"
    assert server.attributes["mcp.protocol.version"] == "2026-07-28"
    assert server.attributes["network.transport"] == "tcp"
    assert "error.type" not in server.attributes
    assert client.attributes["pml.downstream.server"] == "odd"

    # SDK path: the workflow's SERVER span (the SDK's, with the session added) has a child per task,
    # each with one CLIENT span (the SDK client's renamed, or the lean link's), and both
    # downstreams saw the workflow's trace.
    (parent,) = [s for s in by_name(spans, "tools/call pml_execute_workflow", SpanKind.SERVER)]
    assert parent.context.trace_id == workflow_trace
    assert parent.attributes["mcp.session.id"]
    assert parent.attributes["mcp.protocol.version"] == "2025-11-25"
    task_spans = [s for s in spans if s.name.startswith("execute_tool ") and s.context.trace_id == workflow_trace]
    assert sorted(s.name for s in task_spans) == ["execute_tool obs__meta", "execute_tool odd__region"]
    assert all(s.parent.span_id == parent.context.span_id for s in task_spans)
    for task in task_spans:
        tool = task.name.removeprefix("execute_tool ")
        (call,) = [s for s in spans if s.kind is SpanKind.CLIENT and s.parent is not None and s.parent.span_id == task.context.span_id]
        assert call.name == f"tools/call {tool}"
        assert call.attributes["gen_ai.tool.name"] == tool
        assert call.attributes["pml.downstream.server"] == tool.split("__")[0]
    outcome = json.loads(text(workflow))
    for task in outcome["tasks"]:
        downstream_saw = task["structured_content"]["traceparent"]
        assert downstream_saw, task
        assert trace_id_of(downstream_saw) == workflow_trace
    # The SDK client's span of a downstream call (named after the downstream's own tool) was renamed.
    assert not [s for s in spans if s.name in {"MCP send tools/call meta", "MCP send tools/call fail"}]

    # A tool error is marked on the SERVER span.
    (error_span,) = by_name(spans, "tools/call obs__fail", SpanKind.SERVER)
    assert error_span.attributes["error.type"] == "tool_error"


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[bytes]

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/v1/traces":
            self.server.bodies.append(body)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[str, list[bytes]]]:
    """An OTLP/HTTP endpoint on 127.0.0.1 that keeps every POST /v1/traces body."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.bodies  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def exported_spans(bodies: list[bytes]) -> list[Any]:
    spans = []
    for body in list(bodies):
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                spans.extend(scope_spans.spans)
    return spans


async def test_spans_are_exported_over_otlp_http(tmp_path: Path, otlp_receiver: tuple[str, list[bytes]]) -> None:
    endpoint, bodies = otlp_receiver
    port = free_port()
    config = write_config(tmp_path, {"obs": {"command": sys.executable, "args": [str(DOWNSTREAM)]}})
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds: export at once
        "OTEL_SERVICE_NAME": "pml-gateway-test",
    }
    command = [sys.executable, "-m", "pml_gateway", "serve", "--config", str(config), "--db", ":memory:", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    try:
        await wait_listening(port, timeout=30)
        with anyio.fail_after(30):
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                await wait_for(lambda: _has_tool(client), timeout=20)
                result = await client.call_tool("obs__meta", {}, meta={"traceparent": traceparent})
            found = await wait_for(lambda: _named(exported_spans(bodies), "tools/call obs__meta"), timeout=20)
    finally:
        process.terminate()
        process.wait(timeout=10)
    # This process has no tracer provider of its own unless another test set one: then its
    # client replaced the traceparent with its own span's; the trace id is what crossed either way.
    sent = ast.literal_eval(text(result))["traceparent"]
    assert sent is not None
    trace_ids = {span.trace_id.hex() for span in found}
    assert trace_ids == {sent.split("-")[1]}
    kinds = {span.kind for span in found}
    assert {2, 3} <= kinds  # SPAN_KIND_SERVER, SPAN_KIND_CLIENT
    request = ExportTraceServiceRequest()
    request.ParseFromString(bodies[0])
    names = {a.value.string_value for r in request.resource_spans for a in r.resource.attributes if a.key == "service.name"}
    assert names == {"pml-gateway-test"}


async def _has_tool(client: Client) -> bool:
    return any(tool.name == "obs__meta" for tool in (await client.list_tools()).tools)


def _named(spans: list[Any], name: str) -> list[Any]:
    matching = [span for span in spans if span.name == name]
    return matching if len({span.kind for span in matching}) >= 2 else []


async def test_a_pipe_transport_is_named_and_timed(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    """The SDK path without HTTP (what ``pml-gateway stdio`` serves): ``network.transport`` is ``pipe``."""
    config = write_config(tmp_path, {"obs": {"command": sys.executable, "args": [str(DOWNSTREAM)]}})
    gateway = Gateway(Settings(config=config, db=":memory:"), timing=FAST)
    instrumentation = Instrumentation()
    exporter.clear()
    with anyio.fail_after(30):
        async with gateway.running(GraphRAGEngine(), instrumentation):
            assert gateway.upstream is not None
            async with Client(gateway.upstream.server, mode="legacy") as client:
                result = await client.call_tool("obs__meta", {})
    assert not result.is_error
    (server,) = by_name(exporter.get_finished_spans(), "tools/call obs__meta", SpanKind.SERVER)
    assert server.attributes["network.transport"] == "pipe"
    assert "mcp.session.id" not in server.attributes
    labels = {"mcp_method_name": "tools/call", "gen_ai_tool_name": "obs__meta", "error_type": ""}
    count = instrumentation.registry.get_sample_value("pml_mcp_server_operation_duration_seconds_count", labels)
    assert count == 1
