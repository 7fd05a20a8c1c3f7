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

Bounding 2025-era sessions (issue 15) needs two more, plus the session tables and the idle
countdown above: where the session manager admits a new session (``_admit_session(requestor)``,
called under its creation lock, synchronously, before any session state exists) and where it
forgets one, however it ended (``_discard_session(session_id, transport)``, awaited once or more
per session). ``BoundedSessionManager`` overrides both, to bound sessions per client address, to
evict the oldest idle session before refusing one, and to tell the gateway a session is gone; its
own ``problems`` say (at start-up, as a warning) when they are missing.

One more reliance, on documented but loosely typed behaviour: the ``on_call_tool`` handler
returns the result as a wire dict (the runner's ``HandlerResult`` is ``BaseModel | dict``,
though ``Server``'s signature names the models); every SDK-path test over the wire exercises it.

``SdkInternals.problems`` lists what is missing from the installed SDK. The gateway logs each one
as a warning at start-up and the fast path then leaves 2025-era sessions to the SDK (never a
silent switch-off); tests/test_sdk_compat.py fails when any of them is missing or behaves
differently, so an SDK upgrade that moves them is caught before release.
"""

from __future__ import annotations

import contextvars
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import INTERNAL_ERROR, SERVER_INFO_META_KEY, ErrorData, JSONRPCError
from mcp_types import methods as _methods
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.responses import Response

if TYPE_CHECKING:
    from mcp.server.streamable_http import StreamableHTTPServerTransport

logger = logging.getLogger(__name__)

__all__ = ["BoundedSessionManager", "SdkInternals", "serialize_tool_result"]

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

    def call_started(self, transport: StreamableHTTPServerTransport) -> None:
        """The fast path serves a call of this session: held, and never evicted while it runs."""
        self.hold_session(transport)
        if isinstance(self.manager, BoundedSessionManager) and transport.mcp_session_id is not None:
            calls = self.manager.fast_path_calls
            calls[transport.mcp_session_id] = calls.get(transport.mcp_session_id, 0) + 1

    def call_ended(self, transport: StreamableHTTPServerTransport) -> None:
        """The fast path's call of this session is over: its idle countdown restarts from now."""
        if isinstance(self.manager, BoundedSessionManager) and transport.mcp_session_id is not None:
            calls = self.manager.fast_path_calls
            left = calls.get(transport.mcp_session_id, 1) - 1
            if left > 0:
                calls[transport.mcp_session_id] = left
            else:
                calls.pop(transport.mcp_session_id, None)
        self.hold_session(transport)

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


# -- 2025-era sessions: bounded per client address and overall ---------------------------------

#: The client address of the request being admitted: ``_admit_session`` is called in the task
#: that serves the request, so the ASGI wrapper below hands it the scope's address this way.
_CLIENT_ADDRESS: contextvars.ContextVar[str] = contextvars.ContextVar("pml_mcp_client_address", default="")


class SessionRefused(Exception):
    """No room for a new session: the answer names the setting that bounds it."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class BoundedSessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, with 2025-era sessions bounded per client address and overall.

    Why: the SDK bounds sessions overall only (``max_sessions``, 10,000 by default) and refuses
    once full, and an idle session lives 30 minutes. 10,100 never-closed sessions of 38 KB each
    (one client, one initialize each) locked every new 2025-era client out for 30 minutes.

    Here a new session is admitted as follows, under the SDK's creation lock:
    1. its address already holds ``max_per_client`` sessions: that address's oldest idle session
       is evicted, else the request is refused (429);
    2. ``max_sessions`` are open: the oldest idle session of any address is evicted, else the
       request is refused (503 with ``Retry-After``).
    A session is idle when no request of its is being served (by the SDK or the fast path) and no
    GET stream of its is open (the SDK's idle countdown runs and no fast-path call does); the
    oldest idle is the one whose countdown ends first, i.e. whose last request ended longest ago. An idle session also ends by itself after
    ``idle_timeout`` seconds. An evicted session's id answers 404 (the SDK's "Session not found"),
    on which a client starts a new session (the spec's rule for an expired one). A refusal is a
    JSON-RPC error body, as the SDK's own ``/mcp`` errors are, so an MCP client shows its text.
    2026-era requests (no session) never reach this: the SDK serves them without session state.
    ``on_session_end(session_id)`` is awaited once per session when it is gone, whatever ended it
    (DELETE, idle timeout, eviction, shutdown): the gateway forgets it and records its trace.

    Relies on ``_admit_session`` and the session tables (``problems`` says when they are gone;
    then the SDK's own ``max_sessions`` still bounds sessions overall, refusing without eviction).
    """

    def __init__(
        self,
        app: Server[Any],
        *,
        security_settings: TransportSecuritySettings | None,
        max_sessions: int,
        max_per_client: int,
        idle_timeout: float,
    ) -> None:
        super().__init__(
            app=app, security_settings=security_settings, session_idle_timeout=idle_timeout, max_sessions=max_sessions
        )
        self.max_per_client = max_per_client
        self.evicted = 0  #: sessions evicted to make room so far
        #: session id -> tools/call the fast path is serving (the SDK's countdown does not see them)
        self.fast_path_calls: dict[str, int] = {}
        #: awaited once per session when the manager forgets it (however it ended)
        self.on_session_end: Callable[[str], Awaitable[None]] | None = None
        self._addresses: dict[str, str] = {}  # session id -> client address, until it is gone
        self.problems: list[str] = []
        for method in ("_admit_session", "_discard_session"):
            if not callable(getattr(StreamableHTTPSessionManager, method, None)):
                self.problems.append(f"StreamableHTTPSessionManager.{method} is gone")
        for name in ("_server_instances", "_session_owners"):
            if not isinstance(getattr(self, name, None), dict):
                self.problems.append(f"StreamableHTTPSessionManager.{name} (a dict) is gone")
        inner = self.asgi_app

        async def admitting(scope: Any, receive: Any, send: Any) -> None:
            client = scope.get("client")
            token = _CLIENT_ADDRESS.set(str(client[0]) if client else "")
            try:
                await inner(scope, receive, send)
            except SessionRefused as refused:  # raised before anything of a session existed
                body = JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=INTERNAL_ERROR, message=str(refused)))
                headers = {"retry-after": "1"} if refused.status == 503 else {}
                response = Response(
                    body.model_dump_json(by_alias=True, exclude_unset=True),
                    status_code=refused.status,
                    media_type="application/json",
                    headers=headers,
                )
                await response(scope, receive, send)
            finally:
                _CLIENT_ADDRESS.reset(token)

        self.asgi_app = admitting  # StreamableHTTPASGIApp calls this

    def warn(self) -> None:
        """Log each missing internal once (start-up): sessions are then bounded by the SDK alone."""
        for problem in self.problems:
            logger.warning(
                "MCP SDK changed (internals read from %s): %s; 2025-era sessions are bounded overall only "
                "(max_mcp_sessions, refused when full, no eviction, no per-client bound)",
                SDK_VERSION,
                problem,
            )

    def sessions_of(self, address: str) -> list[str]:
        """The open sessions that ``address`` opened."""
        return [sid for sid, owner in self._addresses.items() if owner == address and sid in self._server_instances]

    def _admit_session(self, requestor: Any) -> StreamableHTTPServerTransport | None:
        address = _CLIENT_ADDRESS.get()
        live = self._server_instances
        mine = self.sessions_of(address)
        if len(mine) >= self.max_per_client and not self._evict_oldest_idle(mine):
            raise SessionRefused(
                f"Too many open MCP sessions from {address or 'an unknown address'} "
                f"(max_mcp_sessions_per_client = {self.max_per_client}), "
                "none of them idle: end one (DELETE /mcp) or retry later",
                429,
            )
        if self.max_sessions is not None and len(live) >= self.max_sessions and not self._evict_oldest_idle(list(live)):
            raise SessionRefused(
                f"Too many open MCP sessions (max_mcp_sessions = {self.max_sessions}), none of them idle: retry later",
                503,
            )
        transport = super()._admit_session(requestor)
        if transport is not None and transport.mcp_session_id is not None:
            self._addresses[transport.mcp_session_id] = address
        return transport

    async def _discard_session(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        await super()._discard_session(session_id, transport)
        if self._addresses.pop(session_id, None) is None:
            return  # told already (the SDK discards a DELETEd session twice), or never admitted
        self.fast_path_calls.pop(session_id, None)
        if self.on_session_end is not None:
            # shielded: the session's task may be ending by cancellation (shutdown)
            with anyio.move_on_after(5, shield=True):
                try:
                    await self.on_session_end(session_id)
                except Exception:  # a session's end must never break the manager
                    logger.exception("could not end session %s", session_id)

    def _evict_oldest_idle(self, session_ids: list[str]) -> bool:
        """End the idle session among these whose last request ended first; False if none is idle.

        Synchronous (admission holds the SDK's lock): the session is forgotten at once, so its id
        answers 404 and the room is free now; cancelling its idle countdown ends its server task,
        which terminates the transport as on an idle timeout and tells ``on_session_end``.
        """
        oldest: tuple[float, str] | None = None
        for sid in session_ids:
            if sid in self.fast_path_calls:
                continue  # in use, though the SDK's countdown runs
            transport = self._server_instances.get(sid)
            idle = transport.idle_scope if transport is not None else None
            if transport is None or transport.is_terminated or idle is None or idle.cancel_called:
                continue
            if math.isfinite(idle.deadline) and (oldest is None or idle.deadline < oldest[0]):
                oldest = (idle.deadline, sid)
        if oldest is None:
            return False
        sid = oldest[1]
        transport = self._server_instances.pop(sid)
        self._session_owners.pop(sid, None)
        assert transport.idle_scope is not None
        transport.idle_scope.cancel()
        self.evicted += 1
        logger.info("MCP session %s evicted (idle) to make room for a new one", sid)
        return True
