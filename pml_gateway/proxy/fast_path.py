"""The hot path of ``/mcp``: a ``tools/call`` of a downstream tool, answered without the SDK's machinery.

Through the SDK, one proxied call costs the gateway's upstream side about 0.45 ms more CPU than
here (its Streamable HTTP transport: per-request task groups and memory streams, an SSE response
with its own task group on 2025-era sessions, pydantic round trips). This module takes only the
common case and leaves everything else to the SDK: a POST whose body is one JSON-RPC
``tools/call`` request for a registered downstream tool, that passes every check the SDK would
make on it, first:

- the transport checks: ``Content-Type``, DNS-rebinding protection (Host, Origin), ``Accept``;
- 2026-07-28 requests: the SDK's own inbound ladder (``classify_inbound_request``: envelope in
  ``_meta``, routing headers against the body, version), ``Mcp-Param-*`` headers against the
  tool's schema;
- 2025-era requests: a live session (the session manager knows it and has not ended it, and the
  client has already talked to it through the SDK), and the session's protocol version;
- both: the params against the protocol version's schema (``validate_client_request``).

If any check fails, nothing has been sent yet and the request goes to the SDK, which answers it
(with the error it owes the client). Otherwise the call is answered by ``UpstreamServer.call``,
the same code the SDK's handler runs (downstream call through its ``DownstreamLink``, trace,
tool errors, the result shaped for the client's protocol version as the SDK's kernel would),
and the answer is one JSON response, or, when the call outlasts
``SSE_AFTER_SECONDS``, an SSE stream with keep-alive comments that ends with the response (what
the SDK does on 2026-07-28). Cancelling works as through the SDK: a 2025-era session's
``notifications/cancelled`` ends the call with ``REQUEST_CANCELLED``; a 2026-era client that
closes the connection ends it with no answer (watched once the call has run for
``HANGUP_WATCH_AFTER_SECONDS``); the downstream request is dropped and the call is not learned.
Observed like the SDK path, through the same seam (``observability.Instrumentation``): the
duration histogram, and, when tracing is configured, the SERVER span the SDK's middleware would
open (continuing the ``traceparent`` in ``_meta``); without tracing, the W3C trace context in
``_meta`` is passed on to the downstream unchanged, as the SDK does. What it needs of the SDK's
private state (the session table, the idle countdown) it gets from ``sdk_compat.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from opentelemetry import propagate
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.connection import Connection
from mcp.server.streamable_http import REQUEST_CANCELLED, check_accept_headers
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.dispatcher import coerce_request_id
from mcp.shared.inbound import (
    MCP_PARAM_HEADER_PREFIX,
    MCP_PROTOCOL_VERSION_HEADER,
    InboundModernRoute,
    classify_inbound_request,
    find_duplicated_routing_header,
    validate_mcp_param_headers,
    x_mcp_header_map,
)
from mcp.shared.jsonrpc_dispatcher import cancelled_request_id_from_params
from mcp_types import methods
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from pml_gateway.auth import Caller, request_caller
from pml_gateway.events.wire import MCP_SSE_HEADERS, PING, mcp_message
from pml_gateway.observability import Instrumentation
from pml_gateway.proxy.registry import RegisteredTool, ToolRegistry
from pml_gateway.proxy.relay import fast_path_call, needs_sdk_path
from pml_gateway.proxy.sdk_compat import SdkInternals
from pml_gateway.proxy.server import MCP_SESSION_ID_HEADER, UpstreamServer, caller_key_of

if TYPE_CHECKING:
    from mcp.server.streamable_http import StreamableHTTPServerTransport

logger = logging.getLogger(__name__)

__all__ = ["FastPath", "SSE_AFTER_SECONDS"]

#: A call still running after this long gets an SSE response with keep-alive comments, so that
#: proxies with idle-read timeouts keep the connection (the SDK's value on 2026-07-28).
SSE_AFTER_SECONDS = 15.0
#: A 2026-era call still running after this long is cancelled if its client hangs up.
HANGUP_WATCH_AFTER_SECONDS = 0.25
#: W3C trace-context keys a client may put in ``_meta``: passed on to the downstream.
TRACE_CONTEXT_KEYS = ("traceparent", "tracestate", "baggage")

_JSON_HEADERS = [(b"content-type", b"application/json")]
_PARAM_PREFIX = MCP_PARAM_HEADER_PREFIX.lower()


class FastPath:
    """Answers eligible ``tools/call`` POSTs on ``/mcp``; ``handle`` says whether it did."""

    def __init__(
        self,
        registry: ToolRegistry,
        upstream: UpstreamServer,
        internals: SdkInternals,
        security: TransportSecuritySettings | None,
        instrumentation: Instrumentation | None = None,
    ) -> None:
        self.registry = registry
        self.instrumentation = instrumentation or Instrumentation(metrics=False, tracing=False)
        self.upstream = upstream
        # 2025-era sessions are looked up in the session manager's table; if the SDK no longer
        # has it, those requests stay with the SDK (and start-up said so).
        self.internals = internals
        self.security = TransportSecurityMiddleware(security)
        # A cache hint on tools/call would change the result's shape: leave that to the SDK.
        self.enabled = not upstream.server.cache_hints.get("tools/call")
        self.calls = 0  #: calls answered here, for tests and stats
        self._declared: dict[int, tuple[Any, bool]] = {}
        self._cancellable: dict[tuple[str, str | int], anyio.CancelScope] = {}

    async def handle(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> bool:
        """Answer this POST if it is an eligible call; ``False`` (and nothing sent) otherwise.

        ``body`` is the whole request body, already read from ``receive``.
        """
        if not self.enabled or b"tools/call" not in body:
            return False
        try:
            call = await self._admit(scope, body)
        except Exception:  # a check that broke: the SDK answers, as for any refused request
            logger.exception("fast path: could not check a tools/call request; the SDK answers it")
            return False
        if call is None:
            return False
        self.calls += 1
        await self._serve(call, send, receive)
        return True

    async def _admit(self, scope: Scope, body: bytes) -> _Call | None:
        """The call, if the request is one the fast path may answer (every check passed)."""
        try:
            message = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(message, dict) or message.get("method") != "tools/call" or message.get("jsonrpc") != "2.0":
            return None
        request_id = message.get("id")
        if isinstance(request_id, bool) or not isinstance(request_id, str | int):
            return None
        params = message.get("params")
        if not isinstance(params, dict):
            return None
        name = params.get("name")
        entry = self.registry.get(name) if isinstance(name, str) else None
        arguments = params.get("arguments")
        if entry is None or (arguments is not None and not isinstance(arguments, dict)):
            return None
        if isinstance(scope.get("user"), AuthenticatedUser):
            return None  # authenticated requests: the SDK owns credential checks
        request = Request(scope)
        headers = request.headers
        if not await self._transport_ok(request):
            return None
        meta = params.get("_meta")
        meta = meta if isinstance(meta, dict) else None
        requested = headers.get(MCP_PROTOCOL_VERSION_HEADER)
        if requested is None or requested in HANDSHAKE_PROTOCOL_VERSIONS:
            session_id = headers.get(MCP_SESSION_ID_HEADER)
            if not session_id:
                return None
            transport = self.internals.anonymous_session(session_id)
            server_session = self.upstream.legacy_session(session_id) if transport is not None else None
            if server_session is None:
                return None
            version = server_session.protocol_version
            if needs_sdk_path(meta, server_session.client_capabilities):
                return None  # issue 9: progress, logs and server-to-client requests are relayed by the SDK path
            caller = caller_key_of(meta, version, session_id=session_id, client_host=None, client_name=None)
            reply_headers = [*_JSON_HEADERS, (MCP_SESSION_ID_HEADER.encode(), session_id.encode("latin-1"))]
        else:
            transport = session_id = None
            verdict = self._modern_verdict(message, headers, entry.tool.input_schema, arguments)
            if verdict is None:
                return None
            version = verdict.protocol_version
            if needs_sdk_path(meta, None):
                return None  # issue 9: progress and logs are relayed by the SDK path
            client_params = Connection.from_envelope(version, verdict.client_info, verdict.client_capabilities).client_params
            client = scope.get("client")
            caller = caller_key_of(
                meta,
                version,
                session_id=None,
                client_host=client[0] if client else None,
                client_name=client_params.client_info.name if client_params is not None else None,
                client_port=client[1] if client else None,
            )
            reply_headers = _JSON_HEADERS
        try:
            methods.validate_client_request("tools/call", version, params)
        except (ValidationError, KeyError, ValueError):
            return None
        return _Call(
            request_id,
            entry,
            arguments,
            version,
            caller,
            _trace_context(meta),
            transport,
            session_id,
            reply_headers,
            request_caller(scope),  # [auth] a /profiles/{name}/mcp caller keeps its profile here too
        )

    async def _serve(self, call: _Call, send: Send, receive: Receive) -> None:
        reply = _Reply(send, call.reply_headers)
        cancel = anyio.CancelScope()
        key = (call.session_id, coerce_request_id(call.request_id)) if call.session_id is not None else None
        if key is not None:
            self._cancellable[key] = cancel  # notifications/cancelled of the session can reach it
            hangup = None
        else:
            hangup = _HangupWatch(receive, cancel)  # 2026-07-28: closing the response cancels
        if call.session is not None:
            self.internals.call_started(call.session)
        try:
            # observability: the SERVER span and histogram the SDK path gets from its middleware
            with cancel, self.instrumentation.server_call(
                "tools/call",
                call.entry.name,
                meta=call.trace_context,
                session_id=call.session_id,
                protocol_version=call.version,
            ) as observed, fast_path_call(call.version, call.session_id):  # issue 9 and 16: relays, own sessions
                shaped = await self.upstream.call(
                    call.entry.name,
                    call.arguments,
                    version=call.version,
                    caller=call.caller,
                    meta=call.trace_context,
                    who=call.who,
                )
                observed.error_type = "tool_error" if shaped.get("isError") is True else ""
        except BaseException:
            reply.abandon()  # cancelled (shutdown): no keep-alives for a response that will not come
            raise
        finally:
            if key is not None and self._cancellable.get(key) is cancel:
                del self._cancellable[key]
            if hangup is not None:
                hangup.stop()
            if call.session is not None:
                self.internals.call_ended(call.session)
        if not cancel.cancelled_caught:
            await reply.finish({"jsonrpc": "2.0", "id": call.request_id, "result": shaped})
        elif key is not None:
            # The 2025-era wire ends a request's stream only with a response: the SDK's is this one.
            error = {"code": REQUEST_CANCELLED, "message": "Request cancelled"}
            await reply.finish({"jsonrpc": "2.0", "id": call.request_id, "error": error})
        else:
            reply.abandon()  # the client hung up: nobody to answer (2026-07-28 never answers then)

    def session_ended(self, session_id: str) -> None:
        """A 2025-era session was deleted: its calls in flight here end, as the SDK ends its own."""
        for (owner, _), cancel in list(self._cancellable.items()):
            if owner == session_id:
                cancel.cancel()

    def note_cancellation(self, scope: Scope, body: bytes) -> None:
        """A POST the SDK will handle: if it cancels a call in flight here, cancel that call.

        Only 2025-era sessions send ``notifications/cancelled`` (the 2026 wire cancels by closing
        the response); the notification is keyed by the session, as the SDK's dispatcher keys it.
        """
        if not self._cancellable or b"notifications/cancelled" not in body:
            return
        try:
            message = json.loads(body)
        except (ValueError, RecursionError):
            return
        if not isinstance(message, dict) or message.get("method") != "notifications/cancelled":
            return
        params = message.get("params")
        request_id = cancelled_request_id_from_params(params if isinstance(params, dict) else None)
        session_id = Headers(scope=scope).get(MCP_SESSION_ID_HEADER)
        if request_id is not None and session_id:
            cancel = self._cancellable.get((session_id, coerce_request_id(request_id)))
            if cancel is not None:
                cancel.cancel()

    # -- checks --------------------------------------------------------------------------------

    async def _transport_ok(self, request: Request) -> bool:
        """Content-Type, DNS-rebinding protection (Host, Origin) and Accept, the SDK's own checks."""
        if await self.security.validate_request(request, is_post=True) is not None:
            return False
        has_json, has_sse = check_accept_headers(request)
        return has_json and has_sse  # the manager serves SSE responses: both are required

    def _modern_verdict(
        self,
        message: dict[str, Any],
        headers: Headers,
        input_schema: Any,
        arguments: dict[str, Any] | None,
    ) -> InboundModernRoute | None:
        # As handle_modern_request runs them: duplicates on the raw lines, the ladder on a mapping.
        if find_duplicated_routing_header(headers.items()) is not None:
            return None
        verdict = classify_inbound_request(message, headers=dict(headers))
        if not isinstance(verdict, InboundModernRoute):
            return None
        # With no x-mcp-header in the schema the check can only fail on stray Mcp-Param headers.
        if (arguments and self._declares_headers(input_schema)) or any(key.startswith(_PARAM_PREFIX) for key in headers):
            if validate_mcp_param_headers(input_schema, arguments or {}, headers) is not None:
                return None
        return verdict

    def _declares_headers(self, schema: Any) -> bool:
        """Whether a tool's input schema has ``x-mcp-header`` annotations (cached per schema object)."""
        key = id(schema)
        cached = self._declared.get(key)
        if cached is None or cached[0] is not schema:
            cached = self._declared[key] = (schema, bool(x_mcp_header_map(schema)))
            if len(self._declared) > 4096:  # schemas of tools long gone
                self._declared = {key: cached}
        return cached[1]


@dataclass(frozen=True, slots=True)
class _Call:
    """An admitted call: what serving it needs."""

    request_id: str | int
    entry: RegisteredTool
    arguments: dict[str, Any] | None
    version: str  #: the client's protocol version (the result is shaped for it)
    caller: str  #: its trace key
    trace_context: dict[str, str] | None  #: W3C trace context for the downstream's _meta
    session: StreamableHTTPServerTransport | None  #: a 2025-era session's transport
    session_id: str | None
    reply_headers: list[tuple[bytes, bytes]]
    who: Caller  #: who calls (auth): their profile limits the call, the audit line names them


def _trace_context(meta: dict[str, Any] | None) -> dict[str, str] | None:
    """The W3C trace context the SDK's client would pass on for this request's ``_meta``.

    Through the SDK, the server's span continues the client's trace and the downstream request
    carries it on; with no OpenTelemetry SDK configured that is the client's context as given
    (normalised by the propagators). It is also the parent of the fast path's SERVER span; with
    tracing on, the downstream gets the gateway's CLIENT span instead (``Instrumentation.client_call``).
    """
    if not meta or not any(key in meta for key in TRACE_CONTEXT_KEYS):
        return None
    carrier: dict[str, str] = {}
    try:
        propagate.inject(carrier, context=propagate.extract(meta))
    except (ValueError, TypeError):
        return None
    return carrier or None


class _HangupWatch:
    """Cancels a call when its client closes the connection: started only once the call is slow.

    Most calls end in well under ``HANGUP_WATCH_AFTER_SECONDS``; watching costs them nothing.
    """

    __slots__ = ("_receive", "_cancel", "_timer", "_task")

    def __init__(self, receive: Receive, cancel: anyio.CancelScope) -> None:
        self._receive = receive
        self._cancel = cancel
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            HANGUP_WATCH_AFTER_SECONDS, self._start
        )

    def _start(self) -> None:
        self._timer = None
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._cancel.cancel()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()


class _Reply:
    """The answer to one call: JSON when it is ready in time, else an SSE stream with keep-alives."""

    __slots__ = ("_send", "_headers", "_timer", "_pinger", "_streaming")

    def __init__(self, send: Send, headers: list[tuple[bytes, bytes]]) -> None:
        self._send = send
        self._headers = headers
        self._pinger: asyncio.Task[None] | None = None
        self._streaming = False
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            SSE_AFTER_SECONDS, self._start_stream
        )

    def _start_stream(self) -> None:
        self._timer = None
        self._pinger = asyncio.get_running_loop().create_task(self._ping())

    async def _ping(self) -> None:
        extra = [header for header in self._headers if header[0] != b"content-type"]
        await self._send({"type": "http.response.start", "status": 200, "headers": [*MCP_SSE_HEADERS, *extra]})
        self._streaming = True
        while True:
            await self._send({"type": "http.response.body", "body": PING, "more_body": True})
            await asyncio.sleep(SSE_AFTER_SECONDS)

    def abandon(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pinger is not None:
            self._pinger.cancel()

    async def finish(self, message: dict[str, Any]) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pinger = self._pinger
        if pinger is not None:
            pinger.cancel()
            try:
                await pinger
            except asyncio.CancelledError:
                pass
            except Exception:  # the keep-alives failed: the final send reports the real problem
                logger.debug("keep-alive stream failed", exc_info=True)
        if self._streaming:
            event = mcp_message(json.dumps(message, separators=(",", ":")))
            await self._send({"type": "http.response.body", "body": event, "more_body": False})
            return
        body = json.dumps(message, separators=(",", ":")).encode()
        headers = [*self._headers, (b"content-length", str(len(body)).encode())]
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
