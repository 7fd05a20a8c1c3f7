"""The MCP SDK internals the gateway relies on (pml_gateway/proxy/sdk_compat.py) are still there.

Each test fails loudly when an SDK upgrade moves one of them; and a gateway started on such an
SDK says so in its log instead of switching the fast path off in silence.
"""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp.server.lowlevel.server import Server
from mcp.server.runner import ServerRunner
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from gateway_support import LEGACY_INITIALIZE, MCP_HEADERS, run_gateway
from pml_gateway.proxy.sdk_compat import BoundedSessionManager, SdkInternals, serialize_tool_result

pytestmark = pytest.mark.anyio

def test_the_session_tables_are_there() -> None:
    internals = SdkInternals(StreamableHTTPSessionManager(app=Server("compat")))
    assert internals.problems == []


def test_the_session_admission_seam_is_there() -> None:
    # BoundedSessionManager overrides it: called with the requestor, returning the new transport or None
    admit = StreamableHTTPSessionManager._admit_session
    assert list(inspect.signature(admit).parameters) == ["self", "requestor"]
    source = inspect.getsource(StreamableHTTPSessionManager._handle_stateful_request)
    assert "self._admit_session(requestor)" in source and "_session_creation_lock" in source
    # ... and its _discard_session: awaited however a session ends (DELETE, idle timeout, crash)
    discard = StreamableHTTPSessionManager._discard_session
    assert list(inspect.signature(discard).parameters) == ["self", "session_id", "transport"]
    assert inspect.iscoroutinefunction(discard)
    serving = inspect.getsource(StreamableHTTPSessionManager._serve_opening_request)
    assert "finally:" in serving and "await self._discard_session(session_id, http_transport)" in serving
    manager = BoundedSessionManager(Server("compat"), security_settings=None, max_sessions=5, max_per_client=2, idle_timeout=9)
    assert manager.problems == []
    assert (manager.max_sessions, manager.session_idle_timeout) == (5, 9)


def test_a_missing_internal_is_said_at_start_up_and_sessions_stay_with_the_sdk(caplog: pytest.LogCaptureFixture) -> None:
    manager = StreamableHTTPSessionManager(app=Server("compat"))
    del manager._server_instances  # what an SDK that renamed it looks like
    internals = SdkInternals(manager)
    assert internals.problems and "_server_instances" in internals.problems[0]
    with caplog.at_level(logging.WARNING, logger="pml_gateway.proxy.sdk_compat"):
        internals.warn()
    assert "MCP SDK changed" in caplog.text and "_server_instances" in caplog.text
    assert internals.anonymous_session("a" * 32) is None


RESULTS: list[dict[str, Any]] = [  # as the proxy holds them: wire form, resultType included
    {"content": [{"type": "text", "text": "hi"}], "isError": False, "resultType": "complete"},
    {"content": [{"type": "text", "text": "x"}], "structuredContent": {"a": 1}, "_meta": {"k": 1}, "resultType": "complete"},
    {"content": [], "isError": True, "_meta": {"io.modelcontextprotocol/serverInfo": None}, "resultType": "complete"},
]


@pytest.mark.parametrize("version", ["2025-11-25", "2025-06-18", "2026-07-28"])
@pytest.mark.parametrize("result", RESULTS)
def test_tool_results_are_shaped_as_the_sdks_kernel_shapes_them(version: str, result: dict[str, Any]) -> None:
    server = Server("compat", version="9")
    runner = ServerRunner(server, None, None)  # type: ignore[arg-type]  # _serialize reads only .server
    assert serialize_tool_result(server, version, result) == runner._serialize("tools/call", version, dict(result))


async def test_a_live_2025_session_is_found_held_and_forgotten(tmp_path: Path) -> None:
    async with run_gateway(tmp_path, {}) as gw:
        internals = gw.gateway.fast_path.internals
        with anyio.fail_after(20):
            async with httpx.AsyncClient(headers=MCP_HEADERS) as http:
                opened = await http.post(gw.mcp_url, json=LEGACY_INITIALIZE)
                session_id = opened.headers["mcp-session-id"]
                headers = {"mcp-session-id": session_id, "mcp-protocol-version": "2025-11-25"}
                done = await http.post(gw.mcp_url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
                assert done.status_code == 202
                transport = internals.anonymous_session(session_id)
                assert transport is not None and transport.mcp_session_id == session_id
                # idle between requests: a finite countdown (infinity would mean "serving one")
                idle = transport.idle_scope
                assert idle is not None and math.isfinite(idle.deadline)
                idle.deadline = anyio.current_time() + 1.0
                internals.hold_session(transport)
                assert idle.deadline >= anyio.current_time() + gw.gateway.session_manager.session_idle_timeout - 1
                assert (await http.delete(gw.mcp_url, headers=headers)).status_code == 200
                assert internals.anonymous_session(session_id) is None
