"""The MCP server clients talk to: downstream tools plus the gateway's own, over any transport.

Built on the low-level ``Server`` because it re-exposes downstream JSON schemas untouched
(SDK_NOTES §1). It does no checking for us, so every failure is turned into a
``CallToolResult(is_error=True)`` here: an unknown tool, a dead downstream, a timeout.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
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
from mcp_types import SERVER_INFO_META_KEY
from mcp_types import methods as _methods
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from pml_gateway.proxy import tools as gateway_tools
from pml_gateway.proxy.downstream.supervisor import DownstreamPool, error_result
from pml_gateway.proxy.tools import GatewayTools
from pml_gateway.proxy.registry import ToolRegistry
from pml_gateway.proxy.relay import MCP_SESSION_ID_HEADER as MCP_SESSION_ID_HEADER  # imported from here by others
from pml_gateway.proxy.relay import http_session_id, legacy_session_key, upstream_call
from pml_gateway.proxy.surface import Surface
from pml_gateway.proxy.traces import TraceRecorder

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
) -> str:
    """``caller_key`` from its parts, for an HTTP request (shared with the fast path)."""
    explicit = trace_key(meta)
    if explicit is not None:
        return explicit
    if session_id and protocol_version not in MODERN_PROTOCOL_VERSIONS:
        return f"session:{session_id}"
    return f"caller:{client_host or 'local'}:{client_name or 'client'}"


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
        version: str = "0.1.0",
    ) -> None:
        self.registry = registry
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
        await self.surface.session_ended(f"session:{session_id}")
        if self.traces is not None:
            await self.traces.end(f"session:{session_id}")

    # -- handlers ------------------------------------------------------------------------------

    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[*self.tools.definitions(), *(e.tool for e in self.registry.tools())])

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        entry = self.registry.get(name)
        if entry is not None:
            return entry.tool.input_schema
        return self.tools.input_schema(name)

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        name, arguments = params.name, params.arguments
        try:
            if name == gateway_tools.CALL_TOOL:  # the same call as a direct one: same result, same learning
                unwrapped = self.tools.unwrap_call(arguments)
                if isinstance(unwrapped, types.CallToolResult):
                    return unwrapped
                name, arguments = unwrapped
            if name in gateway_tools.NAMES:
                with upstream_call(ctx, progress=False):  # a workflow reports progress of its own
                    return await self.tools.call(name, arguments, _progress_reporter(ctx))
            entry = self.registry.get(name)
            if entry is None:
                why = self.pool.unavailable_reason(name)
                return error_result(f"tool {name!r} is unavailable: {why}" if why else f"unknown tool {name!r}")
            started = time.monotonic()
            with upstream_call(ctx):  # its progress, logs and server-to-client requests come back here
                result = await self.pool.call(entry, arguments)
            if self.traces is not None:
                self.traces.add(caller_key(ctx), entry.name, success=not result.is_error, started=started)
            return result
        except Exception as exc:  # a bug must reach the client as a tool error, never a crash
            logger.exception("tool %r failed inside the gateway", name)
            return error_result(f"internal error in pml-gateway while calling {name!r}: {type(exc).__name__}: {exc}")

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

        What the SDK's request kernel does to a handler's result (``ServerRunner._serialize``):
        validated against and sieved to that version's schema, ``resultType`` and the
        ``serverInfo`` stamp added on 2026-07-28. Raises ``pydantic.ValidationError`` when the
        result does not fit the schema.
        """
        shaped = _methods.serialize_server_result("tools/call", protocol_version, result)
        if protocol_version in MODERN_PROTOCOL_VERSIONS:
            shaped.setdefault("resultType", "complete")
            meta = shaped.get("_meta")
            if meta is None:
                shaped["_meta"] = {SERVER_INFO_META_KEY: self.server.server_info_stamp}
            elif isinstance(meta, dict) and meta.get(SERVER_INFO_META_KEY) is None:
                shaped["_meta"] = {**meta, SERVER_INFO_META_KEY: self.server.server_info_stamp}
        return shaped

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


def _progress_reporter(ctx: ServerRequestContext[Any, Any]) -> Callable[[float, float, str], Awaitable[None]]:
    async def report(progress: float, total: float, message: str) -> None:
        # A no-op unless the request carried a progress token.
        try:
            await ctx.session.report_progress(progress, total, message)
        except Exception as exc:  # the client went away: the workflow still finishes
            logger.debug("progress not delivered: %s", exc)

    return report
