"""The fast path for proxied calls (fast_path.py upstream, http_link.py downstream) keeps the MCP contract.

The same calls are made with the fast path on and off (``PML_FAST_PATH=0``: every call
through the SDK on both sides) and must give the same answers, in both protocol eras; requests
the fast path must not take (failing a check) get the SDK's own answer; slow calls get an SSE
stream with keep-alives.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp.types as types
import pytest
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_types import HEADER_MISMATCH, INVALID_PARAMS

from gateway_support import MCP_HEADERS, free_port, http_downstream, run_gateway, stdio_entry, wait_for, wait_listening
from pml_gateway.proxy import fast_path
from pml_gateway.proxy.downstream.http_link import HttpLink
FAST_PATH_ENV = "PML_FAST_PATH"

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent
FAST_PATH_SERVER = HERE / "fast_path_test_server.py"
MODERN = "2026-07-28"
LEGACY = "2025-11-25"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@contextlib.contextmanager
def fast_path_server() -> Iterator[tuple[str, int]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(FAST_PATH_SERVER), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield f"http://127.0.0.1:{port}/mcp", port
    finally:
        proc.kill()
        proc.wait(timeout=10)


class RawClient:
    """Hand-made JSON-RPC over HTTP, to see exactly what /mcp answers, in either era."""

    def __init__(self, http: httpx.AsyncClient, url: str, era: str) -> None:
        self.http, self.url, self.era = http, url, era
        self.session_id: str | None = None
        self.ids = 0

    async def open(self) -> RawClient:
        if self.era == LEGACY:
            init = {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "raw-test", "version": "1"}}
            response = await self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init})
            assert response.status_code == 200
            self.session_id = response.headers["mcp-session-id"]
            done = await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
            assert done.status_code == 202
        return self

    def headers(self, method: str, name: str | None) -> dict[str, str]:
        headers = dict(MCP_HEADERS)
        if self.era == MODERN:
            headers.update({"mcp-protocol-version": MODERN, "mcp-method": method})
            if name is not None:
                headers["mcp-name"] = name
        else:
            headers["mcp-protocol-version"] = LEGACY
            if self.session_id:
                headers["mcp-session-id"] = self.session_id
        return headers

    async def post(self, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        if headers is None:
            method = body.get("method", "") if isinstance(body, dict) else ""
            headers = self.headers(method, None)
        return await self.http.post(self.url, content=json.dumps(body), headers=headers)

    def call_body(self, name: str, arguments: dict[str, Any] | None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        self.ids += 1
        params: dict[str, Any] = {"name": name, "arguments": arguments}
        if self.era == MODERN or meta:
            params["_meta"] = {**(META if self.era == MODERN else {}), **(meta or {})}
        return {"jsonrpc": "2.0", "id": self.ids, "method": "tools/call", "params": params}

    async def call(
        self, name: str, arguments: dict[str, Any] | None, *, meta: dict[str, Any] | None = None, **headers: str
    ) -> tuple[httpx.Response, dict[str, Any]]:
        body = self.call_body(name, arguments, meta)
        response = await self.post(body, {**self.headers("tools/call", name), **headers})
        return response, message_of(response)


def message_of(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC message of a response, whether JSON or an SSE stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads(events[-1])
    try:
        return response.json()
    except ValueError:  # an HTTP-level refusal in plain text, or no body
        return {}


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, servers: dict[str, Any], *, fast: bool, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    monkeypatch.setenv(FAST_PATH_ENV, "1" if fast else "0")
    async with run_gateway(tmp_path, servers) as gw:
        assert (gw.gateway.fast_path is not None) is fast
        yield gw


CASES: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]] = [
    ("local__pick", {"count": 2, "mode": "slow"}, None),  # stdio downstream: the SDK's client in both modes
    ("remote__echo", {"text": "there ✓"}, None),  # HTTP downstream in the 2026 era: the lean link
    ("remote__fail", {"message": "nope"}, None),
    ("remote__pick", {"count": 0}, None),  # the downstream's own argument validation
    ("remote__sleep", {"seconds": 5}, None),  # over the configured timeout
    ("odd__region", {"region": "eu-west", "text": "x"}, {"traceparent": TRACEPARENT}),
    ("odd__rich", {}, None),
    ("odd__broken", None, None),
    ("nobody__nothing", {}, None),  # not a registered tool: the SDK answers in both modes
    ("dead__read", {}, None),  # a tool of a server that cannot start: likewise
]
#: A dead server is between restarts ("failed", with its error) or in one ("connecting").
DOWN = re.compile(r"is (connecting|failed)( \([^)]*\))?")


async def _answers(gw: Any, era: str) -> list[tuple[int, dict[str, Any]]]:
    out = []
    async with httpx.AsyncClient(timeout=30) as http:
        raw = await RawClient(http, gw.mcp_url, era).open()
        for name, arguments, meta in CASES:
            # what an SDK client mirrors from the tool's x-mcp-header annotation (checked on 2026-07-28)
            routed = {"mcp-param-region": arguments["region"]} if arguments and "region" in arguments else {}
            response, message = await raw.call(name, arguments, meta=meta, **routed)
            message.pop("id")
            out.append((response.status_code, json.loads(DOWN.sub("is down", json.dumps(message)))))
    return out


async def test_fast_and_sdk_paths_give_the_same_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with http_downstream() as (url, port, _proc), fast_path_server() as (odd_url, odd_port):
        await wait_listening(port)
        await wait_listening(odd_port)
        servers = {
            "local": stdio_entry(),
            "remote": {"url": url, "timeout": 0.5},
            "odd": {"url": odd_url},
            "dead": {"command": sys.executable, "args": ["-c", "raise SystemExit(3)"]},
        }
        answers: dict[bool, dict[str, list[tuple[int, dict[str, Any]]]]] = {}
        for fast in (True, False):
            async with gateway(tmp_path, servers, fast=fast, monkeypatch=monkeypatch) as gw:
                with anyio.fail_after(60):
                    answers[fast] = {era: await _answers(gw, era) for era in (MODERN, LEGACY)}
                    if fast:
                        # every registered tool went the fast way; the unknown and unavailable ones did not
                        assert gw.gateway.fast_path.calls == 2 * (len(CASES) - 2)
                        assert isinstance(gw.gateway.pool.downstreams["remote"].link, HttpLink)
                        assert not isinstance(gw.gateway.pool.downstreams["local"].link, HttpLink)
        for era in (MODERN, LEGACY):
            for (name, _, _), fast_answer, sdk_answer in zip(CASES, answers[True][era], answers[False][era], strict=True):
                assert fast_answer == sdk_answer, (era, name)

        modern = dict(zip((c[0] for c in CASES), answers[True][MODERN], strict=True))
        legacy = dict(zip((c[0] for c in CASES), answers[True][LEGACY], strict=True))
        # what those answers are
        echo = modern["remote__echo"][1]["result"]
        assert echo["structuredContent"]["text"] == "there ✓" and echo["resultType"] == "complete"
        assert echo["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "pml-gateway"  # not the downstream's
        assert "resultType" not in legacy["remote__echo"][1]["result"]  # sieved to 2025-11-25
        assert "_meta" not in legacy["remote__echo"][1]["result"]
        region = modern["odd__region"][1]["result"]["structuredContent"]
        assert region == {"region": "eu-west", "header": "eu-west", "traceparent": TRACEPARENT, "text": "x"}
        rich = modern["odd__rich"][1]["result"]
        assert [c["type"] for c in rich["content"]] == ["text", "image", "resource"]
        assert rich["_meta"]["example.com/kept"] == {"a": 1}
        for name, fragment in [
            ("remote__fail", "nope"),
            ("remote__pick", "count"),
            ("remote__sleep", "timed out after 0.5 s"),
            ("odd__broken", "refused 'broken'"),
            ("nobody__nothing", "unknown tool 'nobody__nothing'"),
            ("dead__read", "tool 'dead__read' is unavailable: downstream server 'dead' is down"),
        ]:
            result = modern[name][1]["result"]
            assert result["isError"] is True and fragment in result["content"][0]["text"], name


async def test_sdk_clients_of_both_eras_over_the_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with fast_path_server() as (odd_url, odd_port):
        await wait_listening(odd_port)
        async with gateway(tmp_path, {"odd": {"url": odd_url}, "local": stdio_entry()}, fast=True, monkeypatch=monkeypatch) as gw:
            with anyio.fail_after(30):
                async with Client(gw.mcp_url, cache=None) as client:  # 2026-07-28
                    await client.list_tools()  # the x-mcp-header map comes from the listing
                    result = await client.call_tool("odd__region", {"region": "ap", "text": "1"})
                    assert not result.is_error and result.structured_content["header"] == "ap"
                    rich = await client.call_tool("odd__rich", {})
                    assert isinstance(rich.content[1], types.ImageContent) and rich.structured_content["n"] == 1
                async with streamable_http_client(gw.mcp_url) as (r, w), ClientSession(r, w) as session:
                    await session.initialize()
                    result = await session.call_tool("odd__region", {"region": "us"})
                    assert not result.is_error and result.structured_content["header"] == "us"
                    local = await session.call_tool("local__echo", {"text": "stdio"})
                    assert not local.is_error and local.structured_content["text"] == "stdio"
                    # workflow tasks reach the HTTP downstream through the lean link too
                    workflow = {
                        "tasks": [
                            {"id": "a", "tool": "odd__region", "arguments": {"region": "sa"}},
                            {"id": "b", "tool": "odd__broken", "arguments": {}, "depends_on": ["a"]},
                        ]
                    }
                    run = await session.call_tool("pml_execute_workflow", workflow)
                    tasks = {t["id"]: t for t in run.structured_content["tasks"]}
                    assert tasks["a"]["status"] == "succeeded" and tasks["a"]["structured_content"]["header"] == "sa"
                    assert tasks["b"]["status"] == "failed" and "refused 'broken'" in tasks["b"]["error"]
                assert gw.gateway.fast_path.calls == 4  # pml_* tools are the SDK's
                assert isinstance(gw.gateway.pool.downstreams["odd"].link, HttpLink)


async def test_requests_failing_a_check_get_the_sdks_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with fast_path_server() as (odd_url, odd_port):
        await wait_listening(odd_port)
        async with gateway(tmp_path, {"odd": {"url": odd_url}}, fast=True, monkeypatch=monkeypatch) as gw:
            fast = gw.gateway.fast_path
            with anyio.fail_after(30):
                async with httpx.AsyncClient(timeout=10) as http:
                    modern = RawClient(http, gw.mcp_url, MODERN)
                    args = {"region": "eu"}
                    # DNS-rebinding protection
                    response, _ = await modern.call("odd__region", args, host="evil.example")
                    assert response.status_code == 421
                    # Accept without text/event-stream
                    response, _ = await modern.call("odd__region", args, accept="application/json")
                    assert response.status_code == 406
                    # routing header that disagrees with the body
                    response, message = await modern.call("odd__region", args, **{"mcp-name": "odd__rich"})
                    assert response.status_code == 400 and message["error"]["code"] == HEADER_MISMATCH
                    # Mcp-Param header missing for an annotated argument, then one that disagrees
                    response, message = await modern.call("odd__region", args)
                    assert message["error"]["code"] == HEADER_MISMATCH and "Mcp-Param-Region" in message["error"]["message"]
                    response, message = await modern.call("odd__region", args, **{"mcp-param-region": "us"})
                    assert message["error"]["code"] == HEADER_MISMATCH
                    # no _meta envelope
                    body = modern.call_body("odd__rich", {})
                    del body["params"]["_meta"]
                    response = await modern.post(body, modern.headers("tools/call", "odd__rich"))
                    assert message_of(response)["error"]["code"] == INVALID_PARAMS
                    # arguments that are not an object
                    body = modern.call_body("odd__rich", {})
                    body["params"]["arguments"] = [1, 2]
                    response = await modern.post(body, modern.headers("tools/call", "odd__rich"))
                    assert "error" in message_of(response)
                    # a body over the size limit: 413, the body replayed to the SDK in full
                    big = modern.call_body("odd__rich", {"pad": "x" * (5 * 1024 * 1024)})
                    response = await modern.post(big, modern.headers("tools/call", "odd__rich"))
                    assert response.status_code == 413

                    legacy = await RawClient(http, gw.mcp_url, LEGACY).open()
                    # an unknown session
                    response, _ = await legacy.call("odd__rich", {}, **{"mcp-session-id": "0" * 32})
                    assert response.status_code == 404
                    # no session at all
                    headers = legacy.headers("tools/call", None)
                    del headers["mcp-session-id"]
                    response = await legacy.post(legacy.call_body("odd__rich", {}), headers)
                    assert response.status_code == 400
                    # a session that was ended
                    assert (await http.delete(gw.mcp_url, headers=legacy.headers("", None))).status_code == 200
                    response, _ = await legacy.call("odd__rich", {})
                    assert response.status_code == 404
                    assert fast.calls == 0

                    # and a well-formed call of each era is taken
                    response, message = await modern.call("odd__region", args, **{"mcp-param-region": "eu"})
                    assert response.headers["content-type"] == "application/json" and message["result"]["structuredContent"]["header"] == "eu"
                    legacy = await RawClient(http, gw.mcp_url, LEGACY).open()
                    response, message = await legacy.call("odd__rich", {})
                    assert response.headers["mcp-session-id"] == legacy.session_id and not message["result"]["isError"]
                    assert fast.calls == 2


async def test_a_slow_call_gets_an_event_stream_with_keepalives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_path, "SSE_AFTER_SECONDS", 0.2)
    with http_downstream() as (url, port, _proc):
        await wait_listening(port)
        async with gateway(tmp_path, {"remote": {"url": url}}, fast=True, monkeypatch=monkeypatch) as gw:
            with anyio.fail_after(30):
                async with httpx.AsyncClient(timeout=10) as http:
                    for era in (MODERN, LEGACY):
                        raw = await RawClient(http, gw.mcp_url, era).open()
                        response, message = await raw.call("remote__sleep", {"seconds": 0.7})
                        assert response.headers["content-type"] == "text/event-stream"
                        assert response.text.count(": ping") >= 2
                        assert message["result"]["content"][0]["text"] == "slept 0.7"
                        # quick calls are plain JSON
                        response, message = await raw.call("remote__echo", {"text": "quick"})
                        assert response.headers["content-type"] == "application/json"
                async with Client(gw.mcp_url, cache=None) as client:
                    slow = await client.call_tool("remote__sleep", {"seconds": 0.5})
                    assert not slow.is_error and slow.content[0].text == "slept 0.5"


async def test_cancelled_calls_stop_downstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with http_downstream() as (url, port, _proc):
        await wait_listening(port)
        async with gateway(tmp_path, {"remote": {"url": url}}, fast=True, monkeypatch=monkeypatch) as gw:
            link = gw.gateway.pool.downstreams["remote"].link
            traces = gw.gateway.traces
            with anyio.fail_after(30):  # far below the 100 s the calls would take
                async with httpx.AsyncClient(timeout=60) as http:
                    # 2025-11-25: notifications/cancelled answers the call with REQUEST_CANCELLED at once
                    legacy = await RawClient(http, gw.mcp_url, LEGACY).open()
                    answers: list[tuple[httpx.Response, dict[str, Any]]] = []

                    async def slow_call() -> None:
                        answers.append(await legacy.call("remote__sleep", {"seconds": 100}))

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(slow_call)
                        await wait_for(lambda: link._open)  # the call reached the downstream
                        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": legacy.ids}}
                        assert (await legacy.post(cancel)).status_code == 202
                    ((response, message),) = answers
                    assert message["error"] == {"code": -32800, "message": "Request cancelled"}
                    assert message["id"] == legacy.ids
                    await wait_for(lambda: not link._open)  # the downstream request was dropped

                    # ending the session ends its calls
                    answers.clear()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(slow_call)
                        await wait_for(lambda: link._open)
                        assert (await http.delete(gw.mcp_url, headers=legacy.headers("", None))).status_code == 200
                    assert answers[0][1]["error"]["code"] == -32800
                    await wait_for(lambda: not link._open)

                    # 2026-07-28: hanging up cancels the call
                    modern = RawClient(http, gw.mcp_url, MODERN)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(modern.call, "remote__sleep", {"seconds": 100})
                        await wait_for(lambda: link._open)
                        await anyio.sleep(fast_path.HANGUP_WATCH_AFTER_SECONDS + 0.2)
                        tg.cancel_scope.cancel()  # closes the client's connection
                    await wait_for(lambda: not link._open)
            assert gw.gateway.fast_path.calls == 3 and traces.open_traces == 0  # cancelled calls are not learned
