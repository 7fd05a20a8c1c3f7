"""Which ``/mcp`` requests the fast path takes, and which it leaves to the SDK: no server, no sockets.

``FastPath.handle`` is driven with hand-made ASGI scopes. A request it leaves to the SDK must get
``False`` and nothing sent (the SDK then answers it); one it takes gets one JSON-RPC response.
The over-the-wire versions of these cases (with the SDK's own answers) are in
tests/test_gateway_fast_path.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import mcp.types as types
import pytest
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from graphrag import GraphRAGEngine
from pml_gateway.proxy import tools as gateway_tools
from pml_gateway.proxy.downstream.supervisor import DownstreamPool
from pml_gateway.proxy.fast_path import FastPath
from pml_gateway.host_check import transport_settings
from pml_gateway.settings import Settings
from pml_gateway.proxy.registry import ToolRegistry
from pml_gateway.proxy.sdk_compat import SdkInternals
from pml_gateway.proxy.server import UpstreamServer
from pml_gateway.proxy.tools import GatewayTools
from test_gateway_fast_path import LEGACY, META, MODERN

pytestmark = pytest.mark.anyio

ENVELOPE = META  # the 2026-07-28 _meta envelope a client sends
REGION_SCHEMA = {"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}


@pytest.fixture
def fast() -> Iterator[FastPath]:
    registry = ToolRegistry(reserved=gateway_tools.NAMES)
    registry.set_server_tools(
        "s",
        [
            types.Tool(name="echo", input_schema={"type": "object"}),
            types.Tool(name="region", input_schema=REGION_SCHEMA),
        ],
    )
    pool = DownstreamPool([], registry)  # "s" is not running: an admitted call gets a tool error
    tools = GatewayTools(GraphRAGEngine(), registry, pool.call, lambda execution: _nothing())
    upstream = UpstreamServer(registry, pool, tools)
    manager = StreamableHTTPSessionManager(app=upstream.server)
    yield FastPath(registry, upstream, SdkInternals(manager), transport_settings(Settings(db=":memory:", config=None)))


async def _nothing() -> None:
    return None


def body(name: str = "s__echo", arguments: Any = None, *, meta: Any = ENVELOPE, **changes: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": {} if arguments is None else arguments}
    if meta is not None:
        params["_meta"] = meta
    message = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
    message.update(changes)
    return message


def modern_headers(name: str = "s__echo", **extra: str) -> dict[str, str]:
    headers = {
        "host": "127.0.0.1:8000",
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": name,
    }
    headers.update(extra)
    return {k: v for k, v in headers.items() if v}


def scope(headers: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/mcp",
        "scheme": "http",
        "query_string": b"",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        **extra,
    }


async def handle(fast: FastPath, message: Any, headers: dict[str, str], **extra: Any) -> tuple[bool, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    raw = message if isinstance(message, bytes) else json.dumps(message).encode()
    taken = await fast.handle(scope(headers, **extra), raw, receive, send)
    return taken, sent


async def test_a_well_formed_2026_call_is_taken_and_answered_once(fast: FastPath) -> None:
    taken, sent = await handle(fast, body(), modern_headers())
    assert taken and fast.calls == 1
    start, end = sent
    assert start["status"] == 200 and (b"content-type", b"application/json") in start["headers"]
    answer = json.loads(end["body"])
    assert answer["id"] == 7 and answer["result"]["isError"] is True
    assert answer["result"]["content"][0]["text"] == "downstream server 's' is not configured"
    assert answer["result"]["resultType"] == "complete"  # shaped for 2026-07-28


@pytest.mark.parametrize(
    ("case", "message", "headers"),
    [
        ("not JSON", b"{nope", modern_headers()),
        ("another method", body(method="tools/list"), modern_headers()),
        ("a notification (no id)", {k: v for k, v in body().items() if k != "id"}, modern_headers()),
        ("a boolean id", body(id=True), modern_headers()),
        ("not JSON-RPC 2.0", body(jsonrpc="1.0"), modern_headers()),
        ("an unknown tool: the SDK words the error", body("s__nothing"), modern_headers("s__nothing")),
        ("a gateway tool: the SDK runs it", body("pml_graph_metrics"), modern_headers("pml_graph_metrics")),
        ("arguments that are not an object", body(arguments=[1]), modern_headers()),
        ("DNS rebinding: a foreign Host", body(), modern_headers(host="evil.example")),
        ("a foreign Origin", body(), modern_headers(origin="http://evil.example")),
        ("Accept without event streams", body(), modern_headers(accept="application/json")),
        ("no JSON content type", body(), modern_headers(**{"content-type": "text/plain"})),
        ("no _meta envelope", body(meta=None), modern_headers()),
        ("Mcp-Name disagreeing with the body", body(), modern_headers("s__region")),
        ("an annotated argument without its header", body("s__region", {"region": "eu"}), modern_headers("s__region")),
        ("a header for an annotated argument that disagrees", body("s__region", {"region": "eu"}), modern_headers("s__region", **{"mcp-param-region": "us"})),
        ("a 2025 request without a session", body(meta={}), modern_headers(**{"mcp-protocol-version": LEGACY})),
        (
            "a 2025 request of an unknown session",
            body(meta={}),
            modern_headers(**{"mcp-protocol-version": LEGACY, "mcp-session-id": "0" * 32}),
        ),
    ],
)
async def test_requests_left_to_the_sdk(fast: FastPath, case: str, message: Any, headers: dict[str, str]) -> None:
    taken, sent = await handle(fast, message, headers)
    assert not taken and sent == [] and fast.calls == 0, case


async def test_the_annotated_header_that_matches_is_taken(fast: FastPath) -> None:
    taken, _ = await handle(fast, body("s__region", {"region": "eu"}), modern_headers("s__region", **{"mcp-param-region": "eu"}))
    assert taken


async def test_authenticated_requests_are_left_to_the_sdk(fast: FastPath) -> None:
    token = AccessToken(token="t", client_id="c", scopes=["mcp"])
    taken, sent = await handle(fast, body(), modern_headers(), user=AuthenticatedUser(token))
    assert not taken and sent == []


async def test_a_cache_hint_on_tools_call_switches_the_fast_path_off(fast: FastPath) -> None:
    fast.upstream.server.cache_hints["tools/call"] = object()  # type: ignore[assignment]
    rebuilt = FastPath(fast.registry, fast.upstream, fast.internals, None)
    assert not rebuilt.enabled
    taken, _ = await handle(rebuilt, body(), modern_headers())
    assert not taken
