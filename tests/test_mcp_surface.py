"""The whole MCP surface through the gateway, against the real ``@modelcontextprotocol/server-everything``.

One gateway for the module (server-everything over stdio behind it), real SDK clients of both
protocol eras (``mode="legacy"`` = 2025-11-25, ``Client(url)`` = 2026-07-28). Each row of the
capability table in docs/api/mcp-tools.md is observed end to end here or in
test_mcp_surface_reload.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp.types as types
import pytest
from mcp import Client, MCPError
from mcp.shared.subscriptions import ResourceUpdated

from gateway_support import ROOT, RunningGateway, free_port, run_gateway, text, wait_for, wait_listening

EVERYTHING = ROOT / ".tools" / "node_modules" / ".bin" / "mcp-server-everything"
STATIC_DOC = "demo://resource/static/document/features.md"
MODES = ["legacy", "auto"]
PROFILES = {"reader": {"tools": ["every__echo"], "prompts": ["every__simple-prompt"], "resources": ["demo://resource/static/*"]}}

pytestmark = [
    pytest.mark.anyio,
    # In CI (`make test` installs it) a missing server fails the tests instead of skipping them.
    pytest.mark.skipif(not EVERYTHING.exists() and not os.environ.get("CI"), reason="server-everything is installed by `make test`"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # MCPDeprecationWarning: logging, roots, ping
]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("surface")
    servers = {"every": {"command": str(EVERYTHING), "args": ["stdio"]}}
    config = tmp / "with-profiles.json"  # /mcp stays unlimited; /profiles/reader/mcp is limited
    config.write_text(json.dumps({"mcpServers": servers, "profiles": PROFILES}))
    async with run_gateway(tmp, servers, config=config) as running:
        await wait_for(lambda: "every__echo" in running.gateway.registry)
        yield running


class Inbox:
    """What a client was sent besides replies, and answers for the server-to-client requests it gets."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.asked: list[str] = []

    async def handler(self, message: Any) -> None:
        self.messages.append(message)

    def of(self, kind: type[Any]) -> list[Any]:
        return [m for m in self.messages if isinstance(m, kind)]

    async def sampling(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.asked.append("sampling")
        prompt = params.messages[0].content
        said = prompt.text if isinstance(prompt, types.TextContent) else "?"
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=f"sampled: {said}"), model="test-model"
        )

    async def elicitation(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.asked.append("elicitation")
        return types.ElicitResult(action="accept", content={"name": "Ada", "check": True, "integer": 7})

    def client(self, gateway: RunningGateway, mode: str, **options: Any) -> Client:
        return Client(
            gateway.mcp_url,
            mode=mode,
            message_handler=self.handler,
            sampling_callback=self.sampling,
            elicitation_callback=self.elicitation,
            **options,
        )


# -- discovery: capabilities, instructions -----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_capabilities_and_merged_instructions(gateway: RunningGateway, mode: str) -> None:
    async with Client(gateway.mcp_url, mode=mode) as client:
        caps = client.server_capabilities
        assert caps.prompts is not None and caps.prompts.list_changed
        assert caps.resources is not None and caps.resources.subscribe and caps.resources.list_changed
        assert caps.tools is not None and caps.tools.list_changed
        assert caps.completions is not None
        instructions = client.instructions or ""
        assert instructions.startswith("pml-gateway:")
        assert "## every\n" in instructions and "Everything Server" in instructions


# -- prompts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_prompts_are_listed_under_server_names_and_got_from_their_server(gateway: RunningGateway, mode: str) -> None:
    async with Client(gateway.mcp_url, mode=mode) as client:
        names = {p.name for p in (await client.list_prompts()).prompts}
        assert {"every__simple-prompt", "every__args-prompt", "every__completable-prompt"} <= names
        args_prompt = next(p for p in (await client.list_prompts()).prompts if p.name == "every__args-prompt")
        assert {a.name for a in args_prompt.arguments or []} == {"city", "state"}  # the definition, untouched

        got = await client.get_prompt("every__args-prompt", {"city": "Paris"})
        assert "Paris" in got.messages[0].content.text  # type: ignore[union-attr]

        with pytest.raises(MCPError, match="unknown prompt 'every__nope'"):
            await client.get_prompt("every__nope")


# -- resources -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_resources_keep_their_uris_and_are_read_from_their_owner(gateway: RunningGateway, mode: str) -> None:
    async with Client(gateway.mcp_url, mode=mode) as client:
        uris = [r.uri for r in (await client.list_resources()).resources]
        assert uris[:2] == ["graph://metrics", "graph://snapshot"]
        assert STATIC_DOC in uris
        templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
        assert "demo://resource/dynamic/text/{resourceId}" in templates

        exact = await client.read_resource(STATIC_DOC)
        assert "Everything Server" in exact.contents[0].text  # type: ignore[union-attr]
        by_template = await client.read_resource("demo://resource/dynamic/text/3")
        assert by_template.contents[0].text.startswith("Resource 3:")  # type: ignore[union-attr]

        # A resource_link a tool returns reads through the gateway as it is.
        links = await client.call_tool("every__get-resource-links", {"count": 2})
        link = next(c for c in links.content if isinstance(c, types.ResourceLink))
        assert (await client.read_resource(str(link.uri))).contents[0].uri == str(link.uri)

        with pytest.raises(MCPError) as refused:
            await client.read_resource("nowhere://x")
        assert refused.value.code == -32002 and "unknown resource 'nowhere://x'" in refused.value.message


@pytest.mark.parametrize("mode", MODES)
async def test_completion_is_routed_by_reference(gateway: RunningGateway, mode: str) -> None:
    async with Client(gateway.mcp_url, mode=mode) as client:
        ref = types.PromptReference(type="ref/prompt", name="every__completable-prompt")
        done = await client.complete(ref, {"name": "department", "value": "Eng"})
        assert done.completion.values == ["Engineering"]
        template = types.ResourceTemplateReference(type="ref/resource", uri="demo://resource/dynamic/text/{resourceId}")
        done = await client.complete(template, {"name": "resourceId", "value": "1"})
        assert all(value.startswith("1") for value in done.completion.values)
        with pytest.raises(MCPError, match="unknown prompt"):
            await client.complete(types.PromptReference(type="ref/prompt", name="nope"), {"name": "x", "value": ""})


@pytest.mark.parametrize("mode", MODES)
async def test_a_profile_limits_prompts_and_resources_too(gateway: RunningGateway, mode: str) -> None:
    async with Client(f"{gateway.url}/profiles/reader/mcp", mode=mode) as client:
        assert {p.name for p in (await client.list_prompts()).prompts} == {"every__simple-prompt"}
        assert (await client.get_prompt("every__simple-prompt")).messages
        with pytest.raises(MCPError, match="prompt 'every__args-prompt' is not allowed for profile 'reader'"):
            await client.get_prompt("every__args-prompt", {"city": "Paris"})
        with pytest.raises(MCPError, match="not allowed for profile 'reader'"):
            await client.complete(
                types.PromptReference(type="ref/prompt", name="every__completable-prompt"), {"name": "department", "value": "E"}
            )

        uris = [r.uri for r in (await client.list_resources()).resources]
        assert uris[:2] == ["graph://metrics", "graph://snapshot"] and STATIC_DOC in uris
        assert all(uri.startswith("demo://resource/static/") for uri in uris[2:])
        assert (await client.list_resource_templates()).resource_templates == []
        assert "Everything Server" in (await client.read_resource(STATIC_DOC)).contents[0].text  # type: ignore[union-attr]
        with pytest.raises(MCPError) as refused:
            await client.read_resource("demo://resource/dynamic/text/3")
        assert refused.value.code == -32002 and "not allowed for profile 'reader'" in refused.value.message

        # The gateway's own resources answer as GET /graph and pml_graph_metrics do for the profile.
        async with httpx.AsyncClient(base_url=gateway.url) as http:
            response = await http.post("/executions", json={"tool_ids": ["every__echo", "every__add"], "success": True})
            assert response.status_code == 202
        snapshot = json.loads((await client.read_resource("graph://snapshot")).contents[0].text)  # type: ignore[union-attr]
        assert {node["id"] for node in snapshot["nodes"]} <= {"every__echo"}
        metrics = json.loads((await client.read_resource("graph://metrics")).contents[0].text)  # type: ignore[union-attr]
        assert all(entry["tool_id"] == "every__echo" for entry in metrics["pagerank_top_10"])


# -- progress, logs -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_progress_of_a_proxied_call_reaches_its_caller(gateway: RunningGateway, mode: str) -> None:
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async with Client(gateway.mcp_url, mode=mode) as client:
        result = await client.call_tool(
            "every__trigger-long-running-operation", {"duration": 0.3, "steps": 3}, progress_callback=on_progress
        )
    assert not result.is_error
    assert seen == [(1.0, 3.0), (2.0, 3.0), (3.0, 3.0)]


async def test_downstream_logs_reach_2025_sessions_with_the_server_as_logger(gateway: RunningGateway) -> None:
    inbox = Inbox()
    async with inbox.client(gateway, "legacy") as client:
        await client.set_logging_level("debug")  # forwarded to server-everything
        await client.call_tool("every__toggle-simulated-logging", {})
        try:
            logs = await wait_for(lambda: inbox.of(types.LoggingMessageNotification), timeout=15)
        finally:
            await client.call_tool("every__toggle-simulated-logging", {})
    assert {log.params.logger for log in logs} == {"every"}


# -- server-to-client requests ------------------------------------------------------------------------


async def test_sampling_and_elicitation_are_answered_by_the_calling_client(gateway: RunningGateway) -> None:
    inbox = Inbox()
    async with inbox.client(gateway, "legacy") as client:
        sampled = await client.call_tool("every__trigger-sampling-request", {"prompt": "hello", "maxTokens": 20})
        assert not sampled.is_error, text(sampled)
        assert "sampled: Resource trigger-sampling-request context: hello" in text(sampled)
        assert "test-model" in text(sampled)
        elicited = await client.call_tool("every__trigger-elicitation-request", {})
        assert not elicited.is_error and "Ada" in text(elicited)
    assert inbox.asked == ["sampling", "elicitation"]


async def test_a_2026_client_is_not_asked_and_the_downstream_is_told_why(gateway: RunningGateway) -> None:
    inbox = Inbox()
    async with inbox.client(gateway, "auto") as client:
        sampled = await client.call_tool("every__trigger-sampling-request", {"prompt": "hello", "maxTokens": 20})
    assert sampled.is_error
    assert "2026-07-28" in text(sampled) and "server-to-client requests" in text(sampled)
    assert inbox.asked == []


async def test_roots_are_asked_of_the_calling_client_and_again_when_they_change(gateway: RunningGateway) -> None:
    roots = [types.Root(uri="file:///tmp/first", name="first")]

    async def list_roots(context: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=roots)

    async with Client(gateway.mcp_url, mode="legacy", list_roots_callback=list_roots) as client:
        # server-everything asks for the roots during the call (it could not before: nobody to ask)
        listed = await client.call_tool("every__get-roots-list", {})
        assert "file:///tmp/first" in text(listed), text(listed)
        roots = [types.Root(uri="file:///tmp/second", name="second")]
        await client.send_roots_list_changed()  # forwarded; the downstream asks again, outside any call

        async def updated() -> bool:
            return "file:///tmp/second" in text(await client.call_tool("every__get-roots-list", {}))

        assert await wait_for(updated, timeout=10, interval=0.2)


# -- subscriptions -----------------------------------------------------------------------------------


async def test_a_downstream_resource_update_reaches_subscribers_of_both_eras(gateway: RunningGateway) -> None:
    legacy_inbox = Inbox()
    async with legacy_inbox.client(gateway, "legacy") as legacy, Client(gateway.mcp_url) as modern:
        await legacy.subscribe_resource(STATIC_DOC)
        async with modern.listen(resource_subscriptions=[STATIC_DOC]) as subscription:
            await legacy.call_tool("every__toggle-subscriber-updates", {})  # every 5 s, for the gateway's session
            try:
                with anyio.fail_after(15):
                    event = await subscription.__anext__()
                await wait_for(lambda: legacy_inbox.of(types.ResourceUpdatedNotification), timeout=10)
            finally:
                await legacy.call_tool("every__toggle-subscriber-updates", {})
        assert isinstance(event, ResourceUpdated) and event.uri == STATIC_DOC
        assert {n.params.uri for n in legacy_inbox.of(types.ResourceUpdatedNotification)} == {STATIC_DOC}
        await legacy.unsubscribe_resource(STATIC_DOC)
    assert gateway.gateway.surface.subscriptions.uris() == set()  # the last subscriber left: relaying stopped


async def test_graph_resources_read_as_the_tool_and_the_route_and_notify_both_eras(gateway: RunningGateway) -> None:
    legacy_inbox = Inbox()
    async with legacy_inbox.client(gateway, "legacy") as legacy, Client(gateway.mcp_url) as modern, httpx.AsyncClient(
        base_url=gateway.url
    ) as http:
        metrics = json.loads((await legacy.read_resource("graph://metrics")).contents[0].text)  # type: ignore[union-attr]
        tool = (await legacy.call_tool("pml_graph_metrics", {})).structured_content
        assert metrics == tool
        snapshot = json.loads((await modern.read_resource("graph://snapshot")).contents[0].text)  # type: ignore[union-attr]
        assert snapshot == (await http.get("/graph")).json()

        await legacy.subscribe_resource("graph://metrics")
        await legacy.subscribe_resource("graph://snapshot")
        async with modern.listen(resource_subscriptions=["graph://metrics", "graph://snapshot"]) as subscription:
            response = await http.post("/executions", json={"tool_ids": ["a__x", "a__y"], "success": True})
            assert response.status_code == 202
            got: set[str] = set()
            with anyio.fail_after(10):
                async for event in subscription:
                    got.add(event.uri)  # type: ignore[union-attr]
                    if got == {"graph://metrics", "graph://snapshot"}:
                        break
        updated = await wait_for(
            lambda: {n.params.uri for n in legacy_inbox.of(types.ResourceUpdatedNotification)}
            >= {"graph://metrics", "graph://snapshot"},
            timeout=10,
        )
        assert updated

        # A burst of graph changes: the snapshot's subscribers hear of it at most once a second.
        legacy_inbox.messages.clear()
        started = anyio.current_time()
        burst = [{"tool_ids": ["b__x", f"b__y{i}"], "success": True} for i in range(20)]
        for execution in burst:
            assert (await http.post("/executions", json=execution)).status_code == 202
        await anyio.sleep(1.5)
        snapshots = [n for n in legacy_inbox.of(types.ResourceUpdatedNotification) if n.params.uri == "graph://snapshot"]
        seconds = anyio.current_time() - started
        assert 1 <= len(snapshots) <= int(seconds) + 1, (len(snapshots), seconds)


# -- tools -----------------------------------------------------------------------------------------


async def test_tools_that_require_tasks_are_not_listed(gateway: RunningGateway) -> None:
    async with Client(gateway.mcp_url, mode="legacy") as client:
        names = {t.name for t in (await client.list_tools()).tools}
    # Registered by server-everything only for clients that can elicit, like the research tool:
    assert "every__trigger-elicitation-request" in names
    assert "every__simulate-research-query" not in names  # execution.taskSupport: "required"


@pytest.mark.parametrize("mode", MODES)
async def test_pml_call_tool_is_a_direct_call(gateway: RunningGateway, mode: str) -> None:
    trace = f"pml-call-{mode}"
    meta = {"pml-gateway/trace_id": trace}
    async with Client(gateway.mcp_url, mode=mode) as client:
        direct = await client.call_tool("every__get-sum", {"a": 2, "b": 3}, meta=meta)
        wrapped = await client.call_tool("pml_call_tool", {"tool": "every__get-sum", "arguments": {"a": 2, "b": 3}}, meta=meta)
        assert wrapped.model_dump(exclude={"meta"}) == direct.model_dump(exclude={"meta"})
        echoed = await client.call_tool("pml_call_tool", {"tool": "every__echo", "arguments": {"message": "hi"}}, meta=meta)
        assert text(echoed) == "Echo: hi"

        unknown = await client.call_tool("pml_call_tool", {"tool": "every__nope"})
        assert unknown.is_error and "unknown tool 'every__nope'" in text(unknown)
        own = await client.call_tool("pml_call_tool", {"tool": "pml_graph_metrics"})
        assert own.is_error and "call it directly" in text(own)
        bad = await client.call_tool("pml_call_tool", {"arguments": {}})
        assert bad.is_error and "tool: Field required" in text(bad)

    def learned() -> bool:
        snapshot = json.loads(gateway.gateway.surface.graph.engine.snapshot_json())  # type: ignore[union-attr]
        return any((e["from_tool_id"], e["to_tool_id"]) == ("every__get-sum", "every__echo") for e in snapshot["edges"])

    assert await wait_for(learned, timeout=10)  # the wrapped echo joined the trace like a direct call


async def test_a_2026_caller_that_opted_in_gets_the_logs_of_its_call(gateway: RunningGateway) -> None:
    logs: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async with Client(gateway.mcp_url, log_level="debug", logging_callback=on_log) as client:
        assert client.protocol_version == "2026-07-28"
        await client.call_tool("every__toggle-simulated-logging", {})  # logs once while the call runs
        await client.call_tool("every__toggle-simulated-logging", {})
    assert logs and {log.logger for log in logs} == {"every"}


@contextmanager
def everything_over_http() -> Iterator[tuple[str, int]]:
    """server-everything over Streamable HTTP, as a subprocess: (its /mcp URL, its port)."""
    port = free_port()
    process = subprocess.Popen(
        [str(EVERYTHING), "streamableHttp"],
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}/mcp", port
    finally:
        process.kill()
        process.wait(timeout=10)


async def test_the_relays_work_over_an_http_downstream_too(tmp_path: Path) -> None:
    """server-everything over Streamable HTTP: its requests arrive on the SDK client's SSE streams."""
    with everything_over_http() as (url, port):
        await wait_listening(port)
        servers = {"web": {"url": url}}
        async with run_gateway(tmp_path, servers) as gateway:
            await wait_for(lambda: "web__echo" in gateway.gateway.registry)
            inbox = Inbox()
            progress: list[float] = []

            async def on_progress(value: float, total: float | None, message: str | None) -> None:
                progress.append(value)

            async with inbox.client(gateway, "legacy") as client:
                sampled = await client.call_tool("web__trigger-sampling-request", {"prompt": "over http", "maxTokens": 5})
                assert "sampled: Resource trigger-sampling-request context: over http" in text(sampled)
                await client.call_tool(
                    "web__trigger-long-running-operation", {"duration": 0.2, "steps": 2}, progress_callback=on_progress
                )
                assert progress == [1.0, 2.0]
                await client.subscribe_resource(STATIC_DOC)
                await client.call_tool("web__toggle-subscriber-updates", {})
                try:
                    await wait_for(lambda: inbox.of(types.ResourceUpdatedNotification), timeout=15)
                finally:
                    await client.call_tool("web__toggle-subscriber-updates", {})
