"""The MCP server clients talk to: downstream tools plus the gateway's own, over any transport.

Built on the low-level ``Server`` because it re-exposes downstream JSON schemas untouched
(SDK_NOTES §1). It does no checking for us, so every failure is turned into a tool error here
(worded by ``downstream/errors.py``): an unknown tool, a dead downstream, a timeout, a bug.

``UpstreamServer.call`` is the one way a ``tools/call`` is answered: the SDK's handler and the
fast path both go through it, so they answer alike. Results are wire dicts from the downstream
to the client (the SDK's handlers may return them), shaped once for the client's protocol version.

Tool-list changes reach clients of both protocol eras (SDK_NOTES §8): 2025-era sessions get
``notifications/tools/list_changed`` on their standalone stream (the gateway keeps one
``ServerSession`` per live session for that), 2026-era clients through ``subscriptions/listen``;
prompt and resource list changes go the same way. Everything besides tools (prompts, resources,
completion, logging, subscriptions, the relays of progress and server-to-client requests) is
served by ``surface.py``: this module only registers its handlers.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp.types as types
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ServerEvent,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from pml_gateway.auth import Caller, Profile, calling_as, outcome_of, record_tool_call, request_caller
from pml_gateway.observability import Instrumentation, spec_method_label
from pml_gateway.proxy import tools as gateway_tools
from pml_gateway.proxy.downstream import errors
from pml_gateway.proxy.downstream.supervisor import DownstreamPool
from pml_gateway.proxy.registry import ToolRegistry
from pml_gateway.proxy.relay import MCP_SESSION_ID_HEADER as MCP_SESSION_ID_HEADER  # imported from here by others
from pml_gateway.proxy.relay import http_session_id, legacy_session_key, upstream_call
from pml_gateway.proxy.sdk_compat import serialize_tool_result
from pml_gateway.proxy.surface import Surface
from pml_gateway.proxy.tools import GatewayTools, ProgressReporter
from pml_gateway.proxy.traces import TraceRecorder
from pml_gateway.version import VERSION

logger = logging.getLogger(__name__)

#: ``_meta`` key a client may send to group its calls into one trace explicitly.
TRACE_ID_META_KEY = "pml-gateway/trace_id"
#: Sessions not heard from for this long are forgotten (the SDK's own idle timeout is 30 min).
SESSION_FORGET_SECONDS = 1800.0


class UpstreamMCPServer(Server[Any]):
    """A low-level server that advertises ``listChanged`` (tools, prompts, resources) on every transport."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        # The HTTP session manager calls this without arguments (SDK_NOTES §8).
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True, prompts_changed=True, resources_changed=True),
            experimental_capabilities,
            extensions,
        )


def caller_key(ctx: ServerRequestContext[Any, Any]) -> str:
    """Who is calling, for grouping calls into traces (see traces.py)."""
    request = ctx.request
    if request is None:
        return trace_key(ctx.meta) or "local"  # stdio or in-process: the one peer of this connection
    params = ctx.session.client_params
    client = getattr(request, "client", None)
    return caller_key_of(
        ctx.meta,
        ctx.protocol_version,
        session_id=http_session_id(ctx),
        client_host=client.host if client is not None else None,
        client_name=params.client_info.name if params is not None else None,
        principal=_caller(ctx).principal,
        client_port=client.port if client is not None else None,
    )


def trace_key(meta: Mapping[str, Any] | None) -> str | None:
    """The trace a client named explicitly in ``_meta``, if any."""
    trace_id = meta.get(TRACE_ID_META_KEY) if meta else None
    return f"trace:{trace_id}" if isinstance(trace_id, str) and trace_id else None


def caller_key_of(
    meta: Mapping[str, Any] | None,
    protocol_version: str,
    *,
    session_id: str | None,
    client_host: str | None,
    client_name: str | None,
    principal: str | None = None,
    client_port: int | None = None,
) -> str:
    """``caller_key`` from its parts, for an HTTP request (shared with the fast path).

    Without a session or an explicit trace id, the TCP connection (address and port) tells
    callers apart: two agents on one machine with the same client name have two connections
    (see traces.py, "honest traces").
    """
    explicit = trace_key(meta)
    if explicit is not None:
        return explicit
    if session_id and protocol_version not in MODERN_PROTOCOL_VERSIONS:
        return f"session:{session_id}"
    if principal is not None:  # [auth] an authenticated principal is who calls, wherever from
        return f"principal:{principal}:{client_name or 'client'}"
    connection = f"{client_host or 'local'}:{client_port}" if client_port else (client_host or "local")
    return f"caller:{connection}:{client_name or 'client'}"


class UpstreamServer:
    """The gateway's MCP server over the tool registry, the downstream pool and the pml_* tools."""

    def __init__(
        self,
        registry: ToolRegistry,
        pool: DownstreamPool,
        tools: GatewayTools,
        traces: TraceRecorder | None = None,
        *,
        surface: Surface | None = None,
        name: str = "pml-gateway",
        version: str = VERSION,
        instrumentation: Instrumentation | None = None,
        tool_exposure: str = "all",
    ) -> None:
        self.registry = registry
        self.tool_exposure = tool_exposure
        self.pool = pool
        self.tools = tools
        self.traces = traces
        self.bus = InMemorySubscriptionBus()
        self.listen = ListenHandler(self.bus)
        # issue 9: prompts, resources, completion, logging and subscriptions (surface.py)
        self.surface = surface or Surface(lambda name: pool.downstreams.get(name))
        with warnings.catch_warnings():  # logging and roots are deprecated in 2026-07-28, still served to 2025 sessions
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            self.server = UpstreamMCPServer(
                name,
                version=version,
                instructions=(
                    "pml-gateway: the tools of several MCP servers as <server>__<tool>, plus pml_* tools that "
                    "search them, suggest what comes next from learned usage, and run workflows of them."
                ),
                on_list_tools=self._list_tools,
                on_call_tool=self._call_tool,
                get_tool_input_schema=self._input_schema,
                **self.surface.handlers(),
            )
        self.server.middleware.append(self._track_session)
        # observability: duration histogram and span attributes for every request (inside the SDK's span)
        observed = instrumentation or Instrumentation(metrics=False, tracing=False)
        self.server.middleware.append(observed.server_middleware(spec_method_label, self.tool_label))
        self._sessions: dict[str, tuple[ServerSession, float]] = {}
        self.surface.attach(self.server, self.legacy_sessions, self.bus, self.listen)
        self._changed = anyio.Event()
        self._pending: set[type[ServerEvent]] = set()
        self.list_changed_sent = 0  #: notifications sent (both eras), for tests and stats
        registry.on_change(lambda: self._flag(ToolsListChanged))
        self.surface.prompts.on_change(lambda: self._flag(PromptsListChanged))
        self.surface.resources.on_change(lambda: self._flag(ResourcesListChanged))

    # -- lifecycle -----------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[UpstreamServer]:
        """Background work while serving: change notifications and closing idle traces."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._notify_changes, name="list_changed notifier")
            if self.surface.graph is not None:
                tg.start_soon(self.surface.graph.run, name="graph resources notifier")
            if self.traces is not None:
                tg.start_soon(self.traces.run, name="trace closer")
            try:
                yield self
            finally:
                self.listen.close()  # end 2026-era listen streams so HTTP shutdown is not held up
                tg.cancel_scope.cancel()

    async def session_ended(self, session_id: str) -> None:
        """A 2025-era HTTP session was deleted: forget it and record its trace now."""
        self._sessions.pop(f"session:{session_id}", None)
        self.pool.session_ended(f"session:{session_id}")  # issue 16: its own downstream sessions close
        await self.surface.session_ended(f"session:{session_id}")
        if self.traces is not None:
            await self.traces.end(f"session:{session_id}")

    # -- handlers ------------------------------------------------------------------------------

    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        if self.tool_exposure == "lean":  # only the pml_* tools: the rest is found by search, called by pml_call_tool
            return types.ListToolsResult(tools=self.tools.lean_definitions())
        visible = self.tools.visibility(_caller(ctx).profile)  # [auth] a profile sees only its tools
        entries = [e for e in self.registry.tools() if visible(e.name)]
        return types.ListToolsResult(tools=[*self.tools.definitions(), *(e.tool for e in entries)])

    def tool_label(self, name: str) -> str:
        """``name`` as a metric label: a tool the gateway serves, else one bounded value."""
        return name if name in gateway_tools.NAMES or self.registry.get(name) is not None else "_unknown"

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        entry = self.registry.get(name)
        if entry is not None:
            return entry.tool.input_schema
        return self.tools.input_schema(name)

    async def _call_tool(self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
        # Progress, logs and server-to-client requests of the downstream call come back to this
        # request (issue 9); a workflow reports progress of its own.
        relayed = params.name not in gateway_tools.NAMES or params.name == gateway_tools.CALL_TOOL
        with upstream_call(ctx, progress=relayed):
            # A wire dict, not a CallToolResult: the SDK's kernel takes either (HandlerResult).
            return await self.call(
                params.name,
                params.arguments,
                version=ctx.protocol_version,
                caller=caller_key(ctx),
                progress=_progress_reporter(ctx),
                who=_caller(ctx),
            )

    async def call(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        *,
        version: str,
        caller: str,
        meta: dict[str, Any] | None = None,
        progress: ProgressReporter | None = None,
        who: Caller | None = None,
    ) -> dict[str, Any]:
        """Answer one ``tools/call``: the result in wire form, shaped for ``version``. Never raises.

        The one path of every call, the SDK's and the fast path's: ``who`` (auth) may call it or not
        (their profile), one audit line per call; a downstream call joins ``caller``'s trace;
        ``meta`` goes on to the downstream's request.
        """
        who = who or ANONYMOUS
        started = time.monotonic()
        outcome = "error"
        try:
            if name == gateway_tools.CALL_TOOL:  # then exactly as if the tool had been called directly
                target = self.tools.call_target(arguments)
                if isinstance(target, dict):  # bad arguments: the tool error to answer with
                    return self.shape_call_result(version, target)
                name, arguments = target
            # [auth] after the pml_call_tool rewrite: the profile limits the tool really called
            if who.profile is not None and not self.tools.visibility(who.profile)(name):
                result = errors.tool_error(errors.not_allowed(name, who.profile.name))
                outcome = "denied"
            else:
                with calling_as(who):  # a workflow's tasks are audited as this caller's
                    result = await self._dispatch(name, arguments, caller, meta, progress, who.profile)
                outcome = outcome_of(result)
            try:
                return self.shape_call_result(version, result)
            except ValidationError as exc:
                logger.warning("tool %r returned a result that does not fit %s: %s", name, version, exc)
                message = errors.invalid_result(name)
        except Exception as exc:  # a bug must reach the client as a tool error, never a crash
            logger.exception("tool %r failed inside the gateway", name)
            message = errors.internal_error(name, exc)
        finally:
            record_tool_call(who, name, started, outcome)
        return self.shape_call_result(version, errors.tool_error(message))

    async def _dispatch(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        caller: str,
        meta: dict[str, Any] | None,
        progress: ProgressReporter | None,
        profile: Profile | None,
    ) -> dict[str, Any]:
        if name in gateway_tools.NAMES:
            return await self.tools.call(name, arguments, progress, profile=profile, caller=caller)
        entry = self.registry.get(name)  # only calls of tools that exist join a trace
        started = time.monotonic()
        result = await self.pool.call(name, arguments, meta=meta)
        if entry is not None and self.traces is not None:
            success = result.get("isError") is not True
            self.traces.add(caller, name, server=entry.server, success=success, started=started)
        return result

    # -- sessions and change notifications -----------------------------------------------------

    async def _track_session(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        # Any message of a 2025-era session (notifications/initialized included) lets us reach it later.
        key = legacy_session_key(ctx)
        if key is not None:
            self._sessions[key] = (ctx.session, time.monotonic())
        return await call_next(ctx)

    def legacy_sessions(self) -> list[tuple[str, ServerSession]]:
        """The live 2025-era sessions (key, session), for notifications that are not replies."""
        return [(key, session) for key, (session, _seen) in self._sessions.items()]

    def legacy_session(self, session_id: str) -> ServerSession | None:
        """The live 2025-era session with this id, once it has sent anything after ``initialize``.

        Marks it as seen (what ``_track_session`` does for requests that go through the SDK).
        """
        key = f"session:{session_id}"
        entry = self._sessions.get(key)
        if entry is None:
            return None
        self._sessions[key] = (entry[0], time.monotonic())
        return entry[0]

    def shape_call_result(self, protocol_version: str, result: Mapping[str, Any]) -> dict[str, Any]:
        """A ``tools/call`` result in wire form, shaped for ``protocol_version`` as the SDK does.

        Raises ``pydantic.ValidationError`` when the result does not fit the schema.
        """
        return serialize_tool_result(self.server, protocol_version, result)

    def _flag(self, kind: type[ServerEvent]) -> None:
        self._pending.add(kind)
        self._changed.set()

    async def _notify_changes(self) -> None:
        while True:
            await self._changed.wait()
            self._changed = anyio.Event()
            kinds, self._pending = self._pending, set()
            for kind in (ToolsListChanged, PromptsListChanged, ResourcesListChanged):
                if kind in kinds:
                    await self._send_list_changed(kind)
            await anyio.sleep(0.05)  # coalesce a burst (several servers coming up at once)

    async def _send_list_changed(self, kind: type[ServerEvent] = ToolsListChanged) -> None:
        now = time.monotonic()
        for key, (session, seen) in list(self._sessions.items()):
            if now - seen > SESSION_FORGET_SECONDS:
                del self._sessions[key]
                self.pool.session_ended(key)  # issue 16: and its own downstream sessions
                continue
            try:
                if kind is PromptsListChanged:
                    await session.send_prompt_list_changed()
                elif kind is ResourcesListChanged:
                    await session.send_resource_list_changed()
                else:
                    await session.send_tool_list_changed()
                self.list_changed_sent += 1
            except Exception as exc:  # a closed session: drop it
                logger.debug("session %s is gone (%s)", key, exc)
                del self._sessions[key]
        await self.bus.publish(kind())


#: Who calls when nobody authenticated (stdio, a local gateway): unlimited.
ANONYMOUS = Caller(None, None)


def _caller(ctx: ServerRequestContext[Any, Any]) -> Caller:
    """[auth] Who calls: the gate (auth/guard.py) put the principal and its profile in the request's scope."""
    return request_caller(getattr(ctx.request, "scope", None))


def _progress_reporter(ctx: ServerRequestContext[Any, Any]) -> ProgressReporter:
    async def report(progress: float, total: float, message: str) -> None:
        # A no-op unless the request carried a progress token.
        try:
            await ctx.session.report_progress(progress, total, message)
        except Exception as exc:  # the client went away: the workflow still finishes
            logger.debug("progress not delivered: %s", exc)

    return report
