"""Who may do what, over real HTTP: API keys, JWTs from a JWKS server, scopes, stream tokens.

One gateway for the module (real uvicorn, a stdio downstream, an HTTP downstream that records
the credentials it receives), with API keys in a keys file and JWTs signed by a test-made RSA key
that a small local HTTP server publishes as JWKS.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from auth_support import AUDIENCE, ISSUER, Signer, bearer, jwks_server, sdk_http
from gateway_support import HERE, http_downstream, run_gateway, stdio_entry, text, wait_for, wait_listening
from pml_gateway.auth import KeyStore

pytestmark = pytest.mark.anyio

PROFILES = {"reader": {"tools": ["t__echo", "t__pick"], "servers": ["h"]}}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class World:
    url: str
    mcp_url: str
    keys: dict[str, str]
    store: KeyStore
    signer: Signer
    jwks_requests: list[str]
    audit_log: Path


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("auth")
    store = KeyStore(tmp / "keys.json")
    keys = {
        "admin": store.create("admin", ["admin"]),
        "events": store.create("events", ["events:read"]),
        "mcp": store.create("mcp-only", ["mcp"]),
        "reader": store.create("reader", ["mcp", "events:read"], profile="reader"),
        "ghost": store.create("ghost", ["mcp"], profile="nope"),
        "doomed": store.create("doomed", ["admin"]),
    }
    signer = Signer("k1")
    with jwks_server(signer) as (jwks_url, jwks_requests), http_downstream(script=HERE / "auth_header_server.py") as (h_url, port, _):
        await wait_listening(port)
        servers = {"t": stdio_entry(), "h": {"url": h_url}}
        config = tmp / "with-profiles.json"  # run_gateway writes mcp.json itself
        config.write_text(json.dumps({"mcpServers": servers, "profiles": PROFILES}))
        async with run_gateway(
            tmp, servers, config=config, keys_file=tmp / "keys.json", jwt_issuer=ISSUER, jwt_audience=AUDIENCE,
            jwt_jwks_url=jwks_url, audit_log=tmp / "audit.jsonl",
        ) as gw:
            async with httpx.AsyncClient(headers=bearer(keys["admin"])) as http:
                async def ready() -> bool:
                    body = (await http.get(f"{gw.url}/health")).json()
                    return all(d.get("state") == "connected" for d in body["downstreams"].values()) and len(body["downstreams"]) == 2
                await wait_for(ready)
            yield World(gw.url, gw.mcp_url, keys, store, signer, jwks_requests, tmp / "audit.jsonl")


async def get(world: World, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(headers=bearer(token) if token else {}) as http:
        return await http.get(f"{world.url}{path}", **kwargs)


async def post(world: World, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(headers=bearer(token) if token else {}) as http:
        return await http.post(f"{world.url}{path}", **kwargs)


# -- HTTP routes and their scopes -------------------------------------------------------------------


async def test_no_credential_is_401_with_resource_metadata(world: World) -> None:
    for path in ("/graph", "/events/stats", "/events/stream", "/metrics"):
        response = await get(world, path)
        assert response.status_code == 401, path
        assert response.json()["error"] == "invalid_token"
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        assert f'resource_metadata="{world.url}/.well-known/oauth-protected-resource/mcp"' in challenge
    assert (await post(world, "/mcp", json={})).status_code == 401


async def test_resource_metadata_names_the_authorization_server(world: World) -> None:
    response = await get(world, "/.well-known/oauth-protected-resource/mcp")
    assert response.status_code == 200
    body = response.json()
    assert body["resource"] == f"{world.url}/mcp"
    assert body["authorization_servers"] == [f"{ISSUER}/"]
    assert "events:read" in body["scopes_supported"] and body["bearer_methods_supported"] == ["header"]


async def test_each_route_needs_its_scope(world: World) -> None:
    keys = world.keys
    assert (await get(world, "/graph", keys["events"])).status_code == 200
    assert (await get(world, "/events/stats", keys["events"])).status_code == 200
    refused = await get(world, "/graph", keys["mcp"])
    assert refused.status_code == 403 and refused.json()["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    execution = {"workflow_id": "scoped", "tool_ids": ["t__echo", "t__pick"], "success": True, "execution_time_ms": 3}
    assert (await post(world, "/executions", keys["events"], json=execution)).status_code == 403
    assert (await post(world, "/executions", keys["admin"], json=execution)).status_code == 202
    assert (await get(world, "/metrics", keys["events"])).status_code == 403  # metrics:read only (or admin)
    # A path no rule names needs admin, and then answers as usual (JSON 404).
    assert (await get(world, "/nowhere", keys["events"])).status_code == 403
    assert (await get(world, "/nowhere", keys["admin"])).status_code == 404


async def test_health_details_only_with_a_credential(world: World) -> None:
    assert (await get(world, "/health")).json() == {"status": "ok"}
    assert (await get(world, "/health", "pml_not-a-key")).json() == {"status": "ok"}
    detailed = (await get(world, "/health", world.keys["mcp"])).json()
    assert set(detailed["downstreams"]) == {"t", "h"}


# -- JWTs -----------------------------------------------------------------------------------------------


async def test_jwt_checks_signature_issuer_audience_expiry_and_scope(world: World, caplog: pytest.LogCaptureFixture) -> None:
    signer = world.signer
    good = signer.token(scope="events:read mcp")
    assert (await get(world, "/graph", good)).status_code == 200
    stranger = Signer("k1")  # same kid, another key: the signature fails
    refused = {
        "expired": signer.token(scope="events:read", expires_in=-120),
        "wrong audience": signer.token(scope="events:read", aud="someone-else"),
        "wrong issuer": signer.token(scope="events:read", iss="https://evil.test"),
        "bad signature": stranger.token(scope="events:read"),
        "unknown kid": Signer("k2").token(scope="events:read"),
        "not a JWT": "abc.def.ghi",
        "garbage": "%%%",
    }
    with caplog.at_level(logging.INFO):
        for why, token in refused.items():
            response = await get(world, "/graph", token)
            assert response.status_code == 401, why
            assert response.json()["error"] == "invalid_token", why
    assert not [r for r in caplog.records if r.exc_info], "a bad token must never become a traceback"
    # The key set is fetched once and cached, not per request (an unknown kid refetches it at
    # most once per cooldown: jwt.py).
    assert world.jwks_requests == ["/jwks.json"]
    no_scope = await get(world, "/graph", signer.token(scope="mcp"))
    assert no_scope.status_code == 403 and no_scope.json()["error"] == "insufficient_scope"
    admin = await get(world, "/graph", signer.token(scope="admin"))
    assert admin.status_code == 200


# -- MCP, both protocol eras ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_mcp_with_key_and_jwt_in_both_eras_and_no_token_reaches_a_downstream(world: World, mode: str) -> None:
    jwt_token = world.signer.token(scope="mcp")
    for token in (world.keys["mcp"], jwt_token):
        with anyio.fail_after(30):
            async with Client(streamable_http_client(world.mcp_url, http_client=sdk_http(token)), mode=mode, cache=None) as client:  # type: ignore[arg-type]
                names = {tool.name for tool in (await client.list_tools()).tools}
                assert {"t__echo", "t__fail", "h__seen_authorization"} <= names
                assert "hello" in text(await client.call_tool("t__echo", {"text": "hello"}))
                seen = json.loads(text(await client.call_tool("h__seen_authorization", {})))
    # Neither credential (nor any other) ever reached the downstream.
    assert seen == []
    # A bad token is refused at the door: the downstream is not even asked.
    async with httpx.AsyncClient(headers={**bearer("pml_forged"), "Accept": "application/json, text/event-stream"}) as http:
        response = await http.post(world.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                                        "params": {"name": "h__seen_authorization", "arguments": {}}})
    assert response.status_code == 401 and "Traceback" not in response.text


async def test_revoked_key_stops_working_at_once(world: World) -> None:
    assert (await get(world, "/graph", world.keys["doomed"])).status_code == 200
    world.store.revoke("doomed")
    assert (await get(world, "/graph", world.keys["doomed"])).status_code == 401


async def test_a_keys_file_damaged_while_running_refuses_keys_without_a_traceback(world: World) -> None:
    saved = world.store.path.read_bytes()
    try:
        world.store.path.write_text("{not json")
        response = await get(world, "/graph", world.keys["admin"])
        assert response.status_code == 401 and response.json()["error"] == "invalid_token"
        # JWTs still work meanwhile.
        assert (await get(world, "/graph", world.signer.token(scope="events:read"))).status_code == 200
    finally:
        world.store.path.write_bytes(saved)
    assert (await get(world, "/graph", world.keys["admin"])).status_code == 200


# -- stream tokens ----------------------------------------------------------------------------------------


async def test_stream_token_opens_the_stream_and_nothing_else(world: World) -> None:
    minted = await post(world, "/events/token", world.keys["events"])
    assert minted.status_code == 200
    body = minted.json()
    assert set(body) == {"token", "expires_in"} and 0 < body["expires_in"] <= 300
    async with httpx.AsyncClient(timeout=10) as http:
        with anyio.fail_after(10):
            async with http.stream("GET", f"{world.url}/events/stream", params={"access_token": body["token"]}) as stream:
                assert stream.status_code == 200
                async for line in stream.aiter_lines():
                    assert line == "event: connected"
                    break
        # Never an API key or a JWT in the URL, even a valid one.
        for credential in (world.keys["events"], world.signer.token(scope="events:read")):
            response = await http.get(f"{world.url}/events/stream", params={"access_token": credential})
            assert response.status_code == 401
        # The stream token is no bearer credential, and the URL form works on the stream routes only.
        assert (await http.get(f"{world.url}/graph", headers=bearer(body["token"]))).status_code == 401
        wrong_route = await http.get(f"{world.url}/graph", params={"access_token": body["token"]})
        assert wrong_route.status_code == 400 and "access_token" in wrong_route.json()["error"]
    # Minting needs events:read.
    assert (await post(world, "/events/token", world.keys["mcp"])).status_code == 403
    assert (await post(world, "/events/token")).status_code == 401


# -- profiles ---------------------------------------------------------------------------------------------


async def test_profile_limits_tools_calls_search_suggestions_and_workflows(world: World) -> None:
    # Learned history: echo -> fail, echo -> pick.
    executions = [
        {"workflow_id": f"p{i}", "tool_ids": ["t__echo", "t__fail" if i % 2 else "t__pick"], "success": True,
         "execution_time_ms": 1} for i in range(6)
    ]
    assert (await post(world, "/executions", world.keys["admin"], json=executions)).status_code == 202
    with anyio.fail_after(30):
        async with Client(streamable_http_client(world.mcp_url, http_client=sdk_http(world.keys["reader"])), cache=None) as client:  # type: ignore[arg-type]
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert {"t__echo", "t__pick", "h__seen_authorization", "pml_search_tools"} <= names
            assert "t__fail" not in names and "t__sleep" not in names
            refused = await client.call_tool("t__fail", {"message": "x"})
            assert refused.is_error and "not allowed" in text(refused)
            found = (await client.call_tool("pml_search_tools", {"query": "fail echo sleep", "limit": 50})).structured_content
            assert found is not None
            assert "t__fail" not in {m["tool_id"] for m in found["tools"]} and "t__echo" in {m["tool_id"] for m in found["tools"]}
            suggested = (await client.call_tool("pml_suggest_next_tools", {"after": ["t__echo"]})).structured_content
            assert suggested is not None
            ids = {s["tool_id"] for s in suggested["suggestions"]}
            assert "t__pick" in ids and "t__fail" not in ids
            workflow = await client.call_tool(
                "pml_execute_workflow", {"tasks": [{"id": "a", "tool": "t__sleep", "arguments": {"seconds": 0}}]}
            )
            assert workflow.is_error and "not allowed" in text(workflow)
            metrics = (await client.call_tool("pml_graph_metrics", {})).structured_content
            assert metrics is not None and all(e["tool_id"] != "t__fail" for e in metrics["pagerank_top_10"])
    # Without the profile, the same history suggests both.
    async with Client(streamable_http_client(world.mcp_url, http_client=sdk_http(world.keys["mcp"])), cache=None) as client:  # type: ignore[arg-type]
        suggested = (await client.call_tool("pml_suggest_next_tools", {"after": ["t__echo"]})).structured_content
        assert suggested is not None and {"t__pick", "t__fail"} <= {s["tool_id"] for s in suggested["suggestions"]}


async def test_profile_filters_the_event_stream(world: World) -> None:
    executions = [
        {"workflow_id": "seen", "tool_ids": ["t__echo", "t__pick"], "success": True, "execution_time_ms": 1},
        {"workflow_id": "hidden", "tool_ids": ["t__sleep", "t__span"], "success": True, "execution_time_ms": 1},
    ]
    token = (await post(world, "/events/token", world.keys["reader"])).json()["token"]
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await post(world, "/executions", world.keys["admin"], json=executions)).status_code == 202
        events: list[tuple[str, dict[str, Any]]] = []
        with anyio.fail_after(15):
            # Replay from the start: every event so far, as the reader may see it.
            params = {"access_token": token, "last_event_id": "0"}
            async with http.stream("GET", f"{world.url}/events/stream", params=params) as stream:
                kind = ""
                async for line in stream.aiter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        events.append((kind, json.loads(line[6:])))
                        if kind == "workflow_executed" and events[-1][1]["workflow_id"] == "seen":
                            break
    workflows = {data["workflow_id"] for kind, data in events if kind == "workflow_executed"}
    assert "seen" in workflows and "hidden" not in workflows
    named = {tool for _, data in events for key in ("from_tool_id", "to_tool_id", "tool_id") if (tool := data.get(key))}
    assert named and named <= {"t__echo", "t__pick", "h__seen_authorization"}
    # The snapshot the stream resumes from agrees with it.
    async with httpx.AsyncClient(headers=bearer(world.keys["reader"])) as http:
        graph = (await http.get(f"{world.url}/graph")).json()
    assert {node["id"] for node in graph["nodes"]} <= {"t__echo", "t__pick", "h__seen_authorization"}
    assert {"t__echo", "t__pick"} <= {node["id"] for node in graph["nodes"]}
    assert all(e["to_tool_id"] != "t__span" for e in graph["edges"])
    full = (await get(world, "/graph", world.keys["admin"])).json()
    assert "t__span" in {node["id"] for node in full["nodes"]}


async def test_profile_route_and_unknown_profiles(world: World) -> None:
    # A credential limited to one profile cannot ask for another, nor for one that does not exist.
    async with httpx.AsyncClient(headers=bearer(world.keys["ghost"])) as http:
        response = await http.post(world.mcp_url, json={})
        assert response.status_code == 403 and "not defined" in response.json()["error"]
    assert (await post(world, "/profiles/nope/mcp", world.keys["admin"], json={})).status_code == 404
    with anyio.fail_after(30):
        url = f"{world.url}/profiles/reader/mcp"
        async with Client(streamable_http_client(url, http_client=sdk_http(world.keys["admin"])), cache=None) as client:  # type: ignore[arg-type]
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert "t__echo" in names and "t__fail" not in names
        # A JWT names its profile in the pml_profile claim.
        token = world.signer.token(scope="mcp", pml_profile="reader")
        async with Client(streamable_http_client(world.mcp_url, http_client=sdk_http(token)), mode="legacy", cache=None) as client:  # type: ignore[arg-type]
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert "t__echo" in names and "t__fail" not in names
            refused = await client.call_tool("t__sleep", {"seconds": 0})
            assert refused.is_error and "not allowed for profile 'reader'" in text(refused)


# -- audit --------------------------------------------------------------------------------------------------


async def test_audit_has_one_line_per_call_and_no_arguments(world: World) -> None:
    async with Client(streamable_http_client(world.mcp_url, http_client=sdk_http(world.keys["reader"])), mode="legacy", cache=None) as client:  # type: ignore[arg-type]
        await client.call_tool("t__echo", {"text": "secret-argument"})
        await client.call_tool("t__fail", {"message": "x"})
        tasks = [{"id": "a", "tool": "t__pick", "arguments": {"count": 2}}]
        assert not (await client.call_tool("pml_execute_workflow", {"tasks": tasks})).is_error
    lines = [json.loads(line) for line in world.audit_log.read_text().splitlines()]
    assert "secret-argument" not in world.audit_log.read_text()
    echo = [line for line in lines if line["tool"] == "t__echo" and line["principal"] == "reader"][-1]
    assert set(echo) == {"time", "principal", "profile", "tool", "duration_ms", "outcome"}
    assert echo["profile"] == "reader" and echo["outcome"] == "ok" and echo["duration_ms"] >= 0
    denied = [line for line in lines if line["tool"] == "t__fail" and line["principal"] == "reader"][-1]
    assert denied["outcome"] == "denied"
    # A workflow is one line, and each of its tasks one more, as the same caller.
    assert any(line["tool"] == "pml_execute_workflow" and line["principal"] == "reader" for line in lines)
    task = [line for line in lines if line["tool"] == "t__pick" and line["principal"] == "reader"][-1]
    assert task["profile"] == "reader" and task["outcome"] == "ok"


async def test_websocket_needs_a_credential_too(world: World) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    ws_url = world.url.replace("http://", "ws://") + "/events/ws"
    with anyio.fail_after(10):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url):
                pass
    assert refused.value.response.status_code == 403  # closed before the handshake completes
    with anyio.fail_after(10):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url + "?access_token=" + world.keys["events"]):  # never a key in a URL
                pass
    assert refused.value.response.status_code == 403


async def test_a_stream_ends_when_its_credential_expires(world: World) -> None:
    token = world.signer.token(scope="events:read", expires_in=2)
    lines: list[str] = []
    async with httpx.AsyncClient(headers=bearer(token), timeout=10) as http:
        with anyio.fail_after(10):
            async with http.stream("GET", f"{world.url}/events/stream") as stream:
                assert stream.status_code == 200
                async for line in stream.aiter_lines():  # ends cleanly at the token's exp
                    lines.append(line)
        assert lines[0] == "event: connected"
        expired = await http.get(f"{world.url}/events/stream")  # within the JWT leeway, but spent
        assert expired.status_code in (401,) and "error" in expired.json()
