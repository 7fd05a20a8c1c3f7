"""Every place the gateway relies on the MCP SDK's internals (mcp 2.3.0), and nothing else.

The fast path (``fast_path.py``) answers ``tools/call`` without the SDK's transport, so it must
see what the SDK sees and answer as the SDK would. Three things it needs are not public API:

- the session manager's table of 2025-era sessions and their owners
  (``StreamableHTTPSessionManager._server_instances`` / ``._session_owners``);
- a session transport's idle countdown (``idle_scope``, documented, but its ``deadline`` at
  infinity meaning "the SDK is serving a request of this session" is the SDK's convention);
- how the SDK's request kernel shapes a handler's result for the wire
  (``ServerRunner._serialize``: validate and sieve for the protocol version, ``resultType``, the
  ``serverInfo`` stamp): a copy for ``tools/call`` is ``serialize_tool_result``.

One more reliance, on documented but loosely typed behaviour: the ``on_call_tool`` handler
returns the result as a wire dict (the runner's ``HandlerResult`` is ``BaseModel | dict``,
though ``Server``'s signature names the models); every SDK-path test over the wire exercises it.

``SdkInternals.problems`` lists what is missing from the installed SDK. The gateway logs each one
as a warning at start-up and the fast path then leaves 2025-era sessions to the SDK (never a
silent switch-off); tests/test_sdk_compat.py fails when any of them is missing or behaves
differently, so an SDK upgrade that moves them is caught before release.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import SERVER_INFO_META_KEY
from mcp_types import methods as _methods
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

if TYPE_CHECKING:
    from mcp.server.streamable_http import StreamableHTTPServerTransport

logger = logging.getLogger(__name__)

__all__ = ["SdkInternals", "serialize_tool_result"]

#: The SDK release these internals were read from.
SDK_VERSION = "2.3.0"


class SdkInternals:
    """The session manager's private tables, when the installed SDK still has them."""

    def __init__(self, manager: StreamableHTTPSessionManager) -> None:
        self.manager = manager
        sessions = getattr(manager, "_server_instances", None)
        owners = getattr(manager, "_session_owners", None)
        self._sessions: dict[str, StreamableHTTPServerTransport] | None = sessions if isinstance(sessions, dict) else None
        self._owners: dict[str, Any] | None = owners if isinstance(owners, dict) else None
        self.problems: list[str] = []
        if self._sessions is None:
            self.problems.append("StreamableHTTPSessionManager._server_instances (a dict) is gone")
        if self._owners is None:
            self.problems.append("StreamableHTTPSessionManager._session_owners (a dict) is gone")

    def warn(self) -> None:
        """Log each missing internal once (start-up): what the fast path then leaves to the SDK."""
        for problem in self.problems:
            logger.warning(
                "MCP SDK changed (internals read from %s): %s; 2025-era sessions skip the fast path", SDK_VERSION, problem
            )

    def anonymous_session(self, session_id: str) -> StreamableHTTPServerTransport | None:
        """The live session transport with this id, if it serves unauthenticated callers."""
        if self._sessions is None or self._owners is None:
            return None
        transport = self._sessions.get(session_id)
        if transport is None or transport.is_terminated or self._owners.get(session_id) is not None:
            return None
        idle = transport.idle_scope
        if idle is not None and idle.cancel_called:
            return None  # expiring: the SDK answers (404) and ends it
        return transport

    def hold_session(self, transport: StreamableHTTPServerTransport) -> None:
        """A request of the session's was served: restart its idle countdown if one is running.

        The SDK suspends the countdown (deadline at infinity) while it serves a request and
        restarts it after; a countdown at infinity means the SDK is serving one (an open GET
        stream, typically), so it is left alone.
        """
        idle = transport.idle_scope
        timeout = self.manager.session_idle_timeout
        if idle is not None and timeout is not None and idle.deadline != math.inf:
            idle.deadline = max(idle.deadline, anyio.current_time() + timeout)


def serialize_tool_result(server: Server[Any], protocol_version: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """A ``tools/call`` result in wire form, shaped for ``protocol_version`` as the SDK's kernel does.

    ``ServerRunner._serialize`` for a server without a cache hint on ``tools/call``: validated
    against and sieved to that version's schema, ``resultType`` and the ``serverInfo`` stamp
    added on 2026-07-28. Raises ``pydantic.ValidationError`` when the result does not fit.
    """
    shaped = _methods.serialize_server_result("tools/call", protocol_version, result)
    if protocol_version in MODERN_PROTOCOL_VERSIONS:
        shaped.setdefault("resultType", "complete")
        meta = shaped.get("_meta")
        if meta is None:
            shaped["_meta"] = {SERVER_INFO_META_KEY: server.server_info_stamp}
        elif isinstance(meta, dict) and meta.get(SERVER_INFO_META_KEY) is None:
            shaped["_meta"] = {**meta, SERVER_INFO_META_KEY: server.server_info_stamp}
    return shaped
