"""What crosses the gateway besides requests and results: server-to-client requests, progress, logs.

A downstream's server-to-client request (``sampling/createMessage``, ``elicitation/create``,
``roots/list``) arrives on the gateway's client session with that downstream, in the session's
own receive task: nothing in it says which upstream call caused it (stdio carries no such link).
So every upstream request that reaches a downstream is recorded while it is in flight
(``upstream_call`` puts its ``ServerRequestContext`` in a context variable; ``Relay.in_flight``
files it under the downstream it calls), and a request from that downstream is relayed to the
newest call in flight there, on that call's own response stream (``related_request_id``), in
the era that allows it:

- 2025-11-25 sessions that declared the capability: relayed, the client's answer goes back.
- 2026-07-28 clients (the era forbids server-to-client requests), clients that did not declare
  the capability, or no call in flight: the downstream gets an error that says which.

Progress: the SDK's client gives the downstream request its own progress token
(``progress_callback``); what the downstream reports is relayed to the caller under the
caller's token (``report_progress``, a no-op when the caller sent none).

Logs: a downstream's ``notifications/message`` reaches every 2025-era session (standalone
stream, at or above the level that session set) with the server's name as ``logger``, and the
2026-era callers in flight on that server that opted in with ``io.modelcontextprotocol/logLevel``
(the only way that era delivers logs: on the request's own stream).

Per-client downstream sessions (issue 16, ``downstream/session_pool.py``): a call is filed under
the downstream session it went over (``in_flight(server, session)``: the upstream session's own,
or None for the supervisor's), so a server-to-client request from an upstream session's own
downstream session reaches that upstream session only (its newest call there, else its standalone
stream), and its logs go to that session only. The logs of a per_client server's shared session
go to the 2026-era callers in flight on it, not to every 2025-era session.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, get_args

import anyio
import mcp.types as types
from mcp import MCPError
from mcp.client.session import ClientRequestContext
from mcp.server import ServerRequestContext
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPDeprecationWarning, NoBackChannelError
from mcp.shared.message import ServerMessageMetadata
from mcp_types import LOG_LEVEL_META_KEY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

logger = logging.getLogger(__name__)

__all__ = [
    "MCP_SESSION_ID_HEADER",
    "Relay",
    "UpstreamCall",
    "current_session",
    "fast_path_call",
    "has_own_sessions",
    "hears",
    "http_session_id",
    "legacy_session_key",
    "needs_sdk_path",
    "own_session_key",
    "quietly",
    "upstream_call",
]

MCP_SESSION_ID_HEADER = "mcp-session-id"
_LEVELS: tuple[str, ...] = get_args(types.LoggingLevel)
#: An upstream notification that does not go out within this long is dropped (a stuck client
#: must not stall the downstream session's receive loop, where relayed notifications start).
SEND_TIMEOUT_SECONDS = 2.0


@dataclass(eq=False, slots=True)
class UpstreamCall:
    """An upstream request in flight: where its progress, logs and back-channel requests go."""

    session: ServerSession | None  #: request-scoped (notifications ride its stream); None on the fast path
    request_id: types.RequestId | None
    protocol_version: str
    wants_relay: bool = False  #: a progress token or a log-level opt-in came with the request
    progress: bool = True  #: False when the call reports progress of its own (a workflow)
    #: the 2025-era upstream session it came from over HTTP (``session:<id>``), for per_client servers
    key: str | None = None

    @property
    def modern(self) -> bool:
        return self.protocol_version in MODERN_PROTOCOL_VERSIONS

    async def report_progress(self, progress: float, total: float | None, message: str | None) -> None:
        if self.session is None or not self.progress:
            return
        try:
            await self.session.report_progress(progress, total, message)
        except Exception as exc:  # the caller went away: the call goes on
            logger.debug("progress not relayed: %s", exc)

    def refusal(self, capability: types.ClientCapabilities, what: str) -> str | None:
        """Why this caller cannot be asked ``what``, or None when it can."""
        if self.modern:
            return f"the client speaks {self.protocol_version}, which does not allow server-to-client requests ({what})"
        if self.session is None or not self.session.check_client_capability(capability):
            return f"the client did not declare the {what} capability"
        if self.request_id is not None and not self.session.can_send_request:  # request-scoped: its stream must allow it
            return f"the client's connection cannot carry server-to-client requests ({what})"
        return None


_current: ContextVar[UpstreamCall | None] = ContextVar("pml_upstream_call", default=None)


def upstream_call(ctx: ServerRequestContext[Any, Any], *, progress: bool = True) -> AbstractContextManager[UpstreamCall]:
    """Mark the running upstream request as the cause of the downstream calls made inside.

    ``progress=False``: the downstream calls' progress is not relayed (the request reports its own).
    """
    call = UpstreamCall(
        ctx.session, ctx.request_id, ctx.protocol_version, needs_sdk_path(ctx.meta, None), progress, own_session_key(ctx)
    )
    return _calling(call)


def fast_path_call(protocol_version: str, session_id: str | None = None) -> AbstractContextManager[UpstreamCall]:
    """``upstream_call`` for a call the fast path serves: no session (it needs none, ``needs_sdk_path``);
    ``session_id``: the 2025-era session it came in, whose own downstream sessions it uses (issue 16)."""
    key = f"session:{session_id}" if session_id else None
    return _calling(UpstreamCall(None, None, protocol_version, key=key))


@contextmanager
def _calling(call: UpstreamCall) -> Iterator[UpstreamCall]:
    token = _current.set(call)
    try:
        yield call
    finally:
        _current.reset(token)


def current_call() -> UpstreamCall | None:
    return _current.get()


def legacy_session_key(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The key of a 2025-era session (``session:<id>``; ``local`` over stdio), None on 2026-07-28."""
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return None
    if ctx.request is None:
        return "local"
    session_id = http_session_id(ctx)
    return f"session:{session_id}" if session_id else None


def own_session_key(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The upstream session that gets downstream sessions of its own on per_client servers (issue 16).

    Only 2025-era HTTP sessions: the 2026-07-28 era has no sessions, and a stdio upstream is one
    client, for which the shared downstream session is its own already.
    """
    key = legacy_session_key(ctx)
    return key if key is not None and has_own_sessions(key) else None


def has_own_sessions(key: str) -> bool:
    """Whether 2025-era session ``key`` gets downstream sessions of its own on per_client servers."""
    return key.startswith("session:")


def hears(key: str, session: str | None, per_client: bool) -> bool:
    """Whether upstream session ``key`` hears a notification of a downstream: one from upstream
    ``session``'s own downstream session only that session; one from a per_client server's shared
    session only the sessions without their own there; else every session."""
    if session is not None:
        return key == session
    return not (per_client and has_own_sessions(key))


def current_session() -> str | None:
    """``own_session_key`` of the upstream call running now, if any."""
    call = _current.get()
    return call.key if call is not None else None


def http_session_id(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The ``Mcp-Session-Id`` the request came with, if any."""
    headers = getattr(ctx.request, "headers", None)
    return headers.get(MCP_SESSION_ID_HEADER) if headers is not None else None


def needs_sdk_path(meta: Mapping[str, Any] | None, capabilities: types.ClientCapabilities | None) -> bool:
    """Whether a ``tools/call`` needs the relays of this module (so the fast path must leave it to the SDK).

    A progress token or a log-level opt-in in ``_meta``, or a client that can answer
    server-to-client requests: those reach the client only through the SDK's request context.
    """
    if meta and any(key in meta for key in ("progressToken", "progress_token", LOG_LEVEL_META_KEY)):
        return True
    return capabilities is not None and any(
        getattr(capabilities, name, None) is not None for name in ("sampling", "elicitation", "roots")
    )


class Relay:
    """Per-call routing of server-to-client requests, progress and logs (see the module docstring)."""

    def __init__(self) -> None:
        # (server, the upstream session whose own downstream session the call went over, or None)
        self._in_flight: dict[tuple[str, str | None], list[UpstreamCall]] = {}
        self._sessions: Callable[[], Iterable[tuple[str, ServerSession]]] = lambda: ()
        self._session_levels: dict[str, str] = {}
        self._roots_from: str | None = None  # the session whose roots/list_changed was passed on last
        self.relayed_requests = 0  #: server-to-client requests answered by an upstream client

    def attach(self, sessions: Callable[[], Iterable[tuple[str, ServerSession]]]) -> None:
        """Where the live 2025-era sessions are found (the upstream server keeps them)."""
        self._sessions = sessions

    # -- calls in flight -------------------------------------------------------------------------

    @contextmanager
    def in_flight(self, server: str, session: str | None = None) -> Iterator[UpstreamCall | None]:
        """File the current upstream call (if any) under ``server`` while a request to it runs, over
        upstream ``session``'s own downstream session or (None) the shared one."""
        call = _current.get()
        if call is None:
            yield None
            return
        where = (server, session)
        calls = self._in_flight.setdefault(where, [])
        calls.append(call)
        try:
            yield call
        finally:
            calls.remove(call)
            if not calls:
                del self._in_flight[where]

    def wants_sdk(self) -> bool:
        """Whether the current upstream call needs the SDK's client downstream (progress, logs)."""
        call = _current.get()
        return call is not None and call.wants_relay

    def caller(self, server: str, session: str | None = None) -> UpstreamCall | None:
        """The newest upstream call in flight on ``server`` (over ``session``'s own downstream session)."""
        calls = self._in_flight.get((server, session))
        return calls[-1] if calls else None

    # -- server-to-client requests -------------------------------------------------------------

    def client_options(self, server: str, session: str | None = None) -> dict[str, Any]:
        """The ``Client`` callbacks that relay ``server``'s requests (declaring those capabilities),
        for its shared session or (per_client) upstream ``session``'s own."""

        async def sampling(
            context: ClientRequestContext, params: types.CreateMessageRequestParams
        ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
            result_type = types.CreateMessageResultWithTools if params.tools else types.CreateMessageResult
            capability = types.ClientCapabilities(sampling=types.SamplingCapability())
            return await self._ask(server, session, "sampling", capability, types.CreateMessageRequest(params=params), result_type)

        async def elicitation(
            context: ClientRequestContext, params: types.ElicitRequestParams
        ) -> types.ElicitResult | types.ErrorData:
            capability = types.ClientCapabilities(elicitation=types.ElicitationCapability())
            return await self._ask(server, session, "elicitation", capability, types.ElicitRequest(params=params), types.ElicitResult)

        async def roots(context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
            capability = types.ClientCapabilities(roots=types.RootsCapability())
            return await self._ask(server, session, "roots", capability, types.ListRootsRequest(), types.ListRootsResult)

        return {"sampling_callback": sampling, "elicitation_callback": elicitation, "list_roots_callback": roots}

    async def _ask(
        self,
        server: str,
        session: str | None,
        what: str,
        capability: types.ClientCapabilities,
        request: types.ServerRequest,
        result_type: type[Any],
    ) -> Any:
        call = self.caller(server, session)
        if call is None and session is not None:  # an upstream session's own: that session, and only it
            call = self._session_caller(session)
        elif call is None and isinstance(request, types.ListRootsRequest):
            call = self._session_caller(self._roots_from)
        if call is None:
            return _refused(f"no client call to {server!r} is in flight through the gateway to answer {what}")
        why = call.refusal(capability, what)
        if why is not None:
            return _refused(why)
        assert call.session is not None  # refusal() said so
        try:
            result = await call.session.send_request(
                request, result_type, metadata=ServerMessageMetadata(related_request_id=call.request_id)
            )
        except MCPError as exc:  # the client's own answer: passed on as it is
            return types.ErrorData(code=exc.code, message=exc.message, data=exc.data)
        except NoBackChannelError:
            return _refused(f"the client's connection cannot carry server-to-client requests ({what})")
        self.relayed_requests += 1
        return result

    def roots_changed(self, key: str | None) -> None:
        """A session said its roots changed: the ``roots/list`` this causes downstream goes to it."""
        self._roots_from = key

    def _session_caller(self, key: str | None) -> UpstreamCall | None:
        session = dict(self._sessions()).get(key) if key else None
        if session is None:
            return None
        return UpstreamCall(session, None, session.protocol_version, key=key)  # its standalone stream

    # -- logging -------------------------------------------------------------------------------

    def set_session_level(self, key: str | None, level: str) -> None:
        if key is not None:
            self._session_levels[key] = level

    def session_level(self, key: str) -> str | None:
        """The logging level upstream session ``key`` set, if it did."""
        return self._session_levels.get(key)

    def forget_session(self, key: str) -> None:
        self._session_levels.pop(key, None)

    async def relay_log(
        self,
        server: str,
        params: types.LoggingMessageNotificationParams,
        *,
        session: str | None = None,
        per_client: bool = False,
    ) -> None:
        """A downstream's log message, to every client that may receive it (``logger`` = the server).

        ``session``: it came over that upstream session's own downstream session, and goes to it
        only. ``per_client``: it came over a per_client server's shared session, and goes to no
        session that has its own there.
        """
        rank = _LEVELS.index(params.level) if params.level in _LEVELS else 0
        with warnings.catch_warnings(), anyio.move_on_after(SEND_TIMEOUT_SECONDS):
            warnings.simplefilter("ignore", MCPDeprecationWarning)  # logging: deprecated, still spoken
            for key, upstream in list(self._sessions()):
                if not hears(key, session, per_client):
                    continue
                wanted = self._session_levels.get(key)
                if wanted is not None and rank < _LEVELS.index(wanted):
                    continue
                await quietly(upstream.send_log_message(params.level, params.data, logger=server))
            for call in list(self._in_flight.get((server, session), ())):
                if call.modern and call.session is not None:  # the SDK drops it unless this request opted in at that level
                    await quietly(call.session.send_log_message(params.level, params.data, logger=server))


def _refused(message: str) -> types.ErrorData:
    logger.info("server-to-client request refused: %s", message)
    return types.ErrorData(code=types.INVALID_REQUEST, message=f"pml-gateway: {message}")


async def quietly(send: Awaitable[Any], what: str = "notification") -> bool:
    """Await ``send``; a failure is logged at debug level (a gone peer is no error of ours)."""
    try:
        await send
        return True
    except Exception as exc:
        logger.debug("%s failed: %s", what, exc)
        return False
