"""Who may do what, the parts around the wire: the keys file and its CLI, settings, profiles in
the config, the start-up refusal, HS256 and public-key JWTs, and profiles served without auth."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from mcp import Client

from auth_support import AUDIENCE, ISSUER, Signer, bearer
from gateway_support import ROOT, run_gateway, stdio_entry, text
from pml_gateway.auth import KeysFileError, KeyStore, Profile
from pml_gateway.auth.scopes import ADMIN, PUBLIC, effective_scopes, required_scope
from pml_gateway.cli import main
from pml_gateway.proxy.downstream.config import ConfigError, parse_profiles
from server_helpers import make_settings, running_server

pytestmark = pytest.mark.anyio
DEV = "a-development-secret-of-32-bytes!"


# -- the keys file ------------------------------------------------------------------------------------


def cli(*args: str, keys_file: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PML_KEYS_FILE": str(keys_file)}
    return subprocess.run(
        [sys.executable, "-m", "pml_gateway", "keys", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_keys_cli_end_to_end(tmp_path: Path) -> None:
    keys_file = tmp_path / "data" / "keys.json"
    created = cli("create", "--name", "ci", "--scopes", "mcp,events:read", "--profile", "reader", keys_file=keys_file)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("pml_") and len(key) > 40 and "shown only this once" in created.stderr
    # Only the hash is stored, in a file only its owner can read.
    content = keys_file.read_text()
    assert key not in content and "sha256" in content
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert KeyStore(keys_file).verify(key) is not None
    listed = cli("list", keys_file=keys_file)
    assert listed.returncode == 0
    name, scopes, profile, created_at = listed.stdout.strip().split("\t")
    assert (name, scopes, profile) == ("ci", "mcp,events:read", "reader") and created_at.endswith("Z")
    assert key not in listed.stdout
    duplicate = cli("create", "--name", "ci", "--scopes", "mcp", keys_file=keys_file)
    assert duplicate.returncode == 2 and duplicate.stderr.startswith("pml-gateway: error: name:")
    bad_scope = cli("create", "--name", "x", "--scopes", "mcp,everything", keys_file=keys_file)
    assert bad_scope.returncode == 2 and "unknown scope 'everything'" in bad_scope.stderr
    assert "Traceback" not in duplicate.stderr + bad_scope.stderr
    assert cli("revoke", "ci", keys_file=keys_file).returncode == 0
    assert KeyStore(keys_file).verify(key) is None
    gone = cli("revoke", "ci", keys_file=keys_file)
    assert gone.returncode == 2 and "no key named 'ci'" in gone.stderr


def test_key_store_refuses_a_damaged_file_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"keys": [{"name": "a"}]}')
    with pytest.raises(KeysFileError, match=r"^keys_file: .*keys\.0\.sha256"):
        KeyStore(path).load()
    assert KeyStore(tmp_path / "missing.json").load() == []


def test_key_verification_needs_the_exact_key(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    key = store.create("a", ["admin"])
    record = store.verify(key)
    assert record is not None and record.name == "a" and record.scopes == ["admin"]
    assert store.verify(key[:-1]) is None and store.verify(key + "x") is None and store.verify("Bearer") is None


# -- scopes, settings, profiles ----------------------------------------------------------------------------


def test_scope_table() -> None:
    assert required_scope("/mcp") == "mcp" and required_scope("/profiles/reader/mcp") == "mcp"
    assert required_scope("/events/stream") == required_scope("/events/ws") == required_scope("/graph") == "events:read"
    assert required_scope("/executions") == "executions:write" and required_scope("/metrics") == "metrics:read"
    for public in ("/health", "/dashboard", "/dashboard/static/app.js", "/.well-known/oauth-protected-resource/mcp"):
        assert required_scope(public) == PUBLIC
    assert required_scope("/something-new") == ADMIN  # unlisted: refused by default
    assert effective_scopes(["mcp", "unknown"]) == ["mcp"]


def test_jwt_settings_must_be_complete() -> None:
    with pytest.raises(ValueError, match="exactly one of jwt_jwks_url, jwt_public_key_file, jwt_secret"):
        make_settings(jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    with pytest.raises(ValueError, match="jwt_issuer"):
        make_settings(jwt_secret=DEV, jwt_audience=AUDIENCE)
    assert make_settings(jwt_secret=DEV, jwt_issuer=ISSUER, jwt_audience=AUDIENCE).jwt_enabled
    with pytest.raises(ValueError, match=r"jwt_secret\n.*at least 32 bytes"):
        make_settings(jwt_secret="short", jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    assert not make_settings().jwt_enabled


def test_profiles_in_the_config() -> None:
    profiles = parse_profiles(
        {"mcpServers": {}, "profiles": {"r": {"tools": ["files__read_*"], "servers": ["time zone"]}}}, label="c.json"
    )
    reader = profiles["r"]
    assert reader.allows_tool("files__read_file") and not reader.allows_tool("files__write_file")
    assert reader.allows_tool("time_zone__now")  # the server's tools, by their exposed names
    assert reader.allows_tool("anything", server="time zone")
    with pytest.raises(ConfigError, match=r"^c\.json: profile 'r': field 'tools': must be a list"):
        parse_profiles({"profiles": {"r": {"tools": "files__*"}}}, label="c.json")
    with pytest.raises(ConfigError, match=r"^c\.json: profile 'r': field 'colour'"):
        parse_profiles({"profiles": {"r": {"colour": "red"}}}, label="c.json")
    with pytest.raises(ConfigError, match=r"field 'profiles'"):
        parse_profiles({"profiles": []}, label="c.json")


def test_profile_filters_events() -> None:
    from graphrag import GraphEvent
    from graphrag.events import EdgeCreatedData, MetricsUpdatedData, PageRankEntry

    profile = Profile(name="p", tools=("a__*",))
    inside = GraphEvent.of(EdgeCreatedData(from_tool_id="a__x", to_tool_id="a__y", confidence_score=0.5,
                                           observed_count=1, edge_type="sequence"), id=1)
    across = GraphEvent.of(EdgeCreatedData(from_tool_id="a__x", to_tool_id="b__y", confidence_score=0.5,
                                           observed_count=1, edge_type="sequence"), id=2)
    assert profile.filter_event(inside) is inside and profile.filter_event(across) is None
    metrics = GraphEvent.of(MetricsUpdatedData(node_count=2, edge_count=1, density=0.5, communities_count=1,
                                               pagerank_top_10=[PageRankEntry(tool_id="b__y", score=0.6),
                                                                PageRankEntry(tool_id="a__x", score=0.4)]), id=3)
    seen = profile.filter_event(metrics)
    assert seen is not None and [e.tool_id for e in seen.data.pagerank_top_10] == ["a__x"]  # type: ignore[attr-defined]


# -- start-up -------------------------------------------------------------------------------------------------


def test_non_loopback_without_auth_refuses_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./mcp.json
    code = main(["serve", "--host", "0.0.0.0", "--db", ":memory:", "--keys-file", str(tmp_path / "none.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "refusing to serve 0.0.0.0 without authentication" in err
    assert "--allow-unauthenticated" in err


def test_allow_unauthenticated_is_a_switch_and_the_banner_says_so(tmp_path: Path) -> None:
    from pml_gateway.auth import AuthPolicy, is_loopback
    from pml_gateway.cli import build_parser
    from pml_gateway.cli.common import settings_from_args

    args = build_parser().parse_args(["serve", "--allow-unauthenticated", "--host", "0.0.0.0", "--keys-file", str(tmp_path / "k")])
    settings = settings_from_args(args)
    assert settings.allow_unauthenticated is True
    assert "anyone who reaches this address" in AuthPolicy(settings).describe()
    KeyStore(tmp_path / "k").create("a", ["mcp"])
    assert AuthPolicy(settings).describe().startswith("auth: on: API keys (1 in ")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("gw.example.com")


# -- HS256 and public-key JWTs, on a real server ------------------------------------------------------------------


def hs256(secret: str, **claims: object) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "dev", "exp": now + 60, "scope": "events:read", **claims},
                      secret, algorithm="HS256")


async def test_hs256_secret(tmp_path: Path) -> None:
    settings = make_settings(jwt_secret=DEV, jwt_issuer=ISSUER, jwt_audience=AUDIENCE, keys_file=tmp_path / "k.json")
    async with running_server(settings) as running, httpx.AsyncClient() as http:
        url = f"{running.base_url}/graph"
        assert (await http.get(url, headers=bearer(hs256(DEV)))).status_code == 200
        assert (await http.get(url, headers=bearer(hs256(DEV.upper())))).status_code == 401
        assert (await http.get(url, headers=bearer(hs256(DEV, exp=int(time.time()) - 600)))).status_code == 401
        assert (await http.get(url, headers=bearer(hs256(DEV, aud="x")))).status_code == 401
        # Algorithm confusion: an RS256 token is not accepted by an HS256 verifier.
        assert (await http.get(url, headers=bearer(Signer("k").token(scope="events:read")))).status_code == 401


async def test_public_key_file(tmp_path: Path) -> None:
    signer = Signer("k")
    pem = signer.private_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "signer.pem").write_bytes(pem)
    settings = make_settings(jwt_public_key_file=tmp_path / "signer.pem", jwt_issuer=ISSUER, jwt_audience=AUDIENCE,
                             keys_file=tmp_path / "k.json")
    async with running_server(settings) as running, httpx.AsyncClient() as http:
        url = f"{running.base_url}/graph"
        assert (await http.get(url, headers=bearer(signer.token(scope="events:read")))).status_code == 200
        assert (await http.get(url, headers=bearer(Signer("k").token(scope="events:read")))).status_code == 401
        assert (await http.get(url, headers=bearer(signer.token(scope="events:read", iss="x")))).status_code == 401


# -- profiles without authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_profile_route_without_auth(tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    servers = {"t": stdio_entry()}
    config = tmp_path / "profiles.json"
    config.write_text(json.dumps({"mcpServers": servers, "profiles": {"echo-only": {"tools": ["t__echo"]}}}))
    caplog.set_level(logging.INFO, logger="pml_gateway.audit")
    async with run_gateway(tmp_path, servers, config=config, keys_file=tmp_path / "none.json") as gw:
        with anyio.fail_after(30):
            async with Client(f"{gw.url}/profiles/echo-only/mcp", mode=mode, cache=None) as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                assert "t__echo" in names and "t__fail" not in names and "t__pid" not in names
                assert "hi" in text(await client.call_tool("t__echo", {"text": "hi"}))
                refused = await client.call_tool("t__pid", {})
                assert refused.is_error and "not allowed for profile 'echo-only'" in text(refused)
            async with Client(gw.mcp_url, mode=mode, cache=None) as client:  # /mcp itself is unlimited
                assert "t__pid" in {tool.name for tool in (await client.list_tools()).tools}
                await client.call_tool("t__pid", {})  # whichever path serves it (fast or SDK)
        audit = [json.loads(r.getMessage()) for r in caplog.records if r.name == "pml_gateway.audit"]
        assert {(a["principal"], a["profile"], a["tool"], a["outcome"]) for a in audit} >= {
            ("anonymous", "echo-only", "t__pid", "denied"),
            ("anonymous", "echo-only", "t__echo", "ok"),
            (None, None, "t__pid", "ok"),
        }
        async with httpx.AsyncClient() as http:
            unknown = await http.post(f"{gw.url}/profiles/nope/mcp", json={})
            assert unknown.status_code == 404 and "unknown profile 'nope'" in unknown.json()["error"]
            # Auth is off: POST /events/token says so, and /health shows everything.
            assert (await http.post(f"{gw.url}/events/token")).status_code == 404
            assert "downstreams" in (await http.get(f"{gw.url}/health")).json()


async def test_allowed_hosts_extend_dns_rebinding_protection(tmp_path: Path) -> None:
    async with run_gateway(tmp_path, {}, keys_file=tmp_path / "none.json", allowed_hosts=["gw.example.com"]) as gw:
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}}
        headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
        async with httpx.AsyncClient() as http:
            named = await http.post(gw.mcp_url, json=ping, headers={**headers, "Host": "gw.example.com"})
            assert named.status_code != 421
            local = await http.post(gw.mcp_url, json=ping, headers=headers)
            assert local.status_code != 421
            evil = await http.post(gw.mcp_url, json=ping, headers={**headers, "Host": "evil.example"})
            assert evil.status_code == 421


def test_a_profiles_stream_view_decides_from_the_frame_as_filter_event_does() -> None:
    """The stream's profile view reads the tools a frame names (no JSON decoding, but for
    metrics_updated's top list): for every kind of event it lets through what ``filter_event``
    lets through, and the same data."""
    from graphrag import GraphEvent
    from graphrag.events import (
        EdgeCreatedData,
        GraphResetData,
        MetricsUpdatedData,
        PageRankEntry,
        ToolAddedData,
        ToolForgottenData,
        WorkflowExecutedData,
    )
    from pml_gateway.events.stream import profile_view
    from pml_gateway.events.wire import encode_event

    profile = Profile(name="p", tools=("a__*",), servers=("ops",))
    view = profile_view(profile)
    assert view is not None
    payloads = [
        EdgeCreatedData(from_tool_id="a__x", to_tool_id="a__y", confidence_score=0.5, observed_count=1, edge_type="sequence"),
        EdgeCreatedData(from_tool_id="a__x", to_tool_id="b__y", confidence_score=0.5, observed_count=1, edge_type="sequence"),
        WorkflowExecutedData(workflow_id="w", tool_ids=["a__x", "a__y"], success=True, execution_time_ms=1),
        WorkflowExecutedData(workflow_id="v", tool_ids=["a__x", "c__z"], success=True, execution_time_ms=1),
        ToolAddedData(tool_id="deploy", server="ops"),  # allowed by its own server
        ToolAddedData(tool_id="deploy", server="other"),
        ToolForgottenData(tool_id="b__y", server="b", edges_removed=1, transitions_removed=0),
        GraphResetData(nodes_removed=3, edges_removed=2),
        MetricsUpdatedData(node_count=2, edge_count=1, density=0.5, communities_count=1,
                           pagerank_top_10=[PageRankEntry(tool_id="a__x", score=0.6), PageRankEntry(tool_id="b__y", score=0.4)]),
    ]
    passed = 0
    for i, payload in enumerate(payloads, start=1):
        event = GraphEvent(id=i, type=payload.event_type, data=payload)
        expected = profile.filter_event(event)
        seen = view(encode_event(event))
        assert (seen is None) == (expected is None), payload
        if seen is not None and expected is not None:
            assert json.loads(seen.data_json) == json.loads(expected.data_json()), payload
            passed += 1
    assert passed == 5  # edge a->a, workflow w, deploy of ops, the reset, the metrics (cut to a__x)
