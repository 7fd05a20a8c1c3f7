"""Downstream MCP servers, each kept alive by its own supervisor task.

Why one task per server (SDK_NOTES §4): a dead HTTP downstream raises out of its transport as an
``ExceptionGroup`` and cancels the task that entered it. Inside a shared exit stack that takes the
whole app down; in its own task it only ends that server's connection.

A supervisor loops: connect, initialise, list tools and register them, then watch the connection
(a ping while idle, a ``CONNECTION_CLOSED`` seen by any call, a ``tools/list_changed`` from the
server). When the connection ends or never comes up, the server's tools leave the registry (the
registry's listeners tell upstream clients) and it is retried after an exponential backoff, 1 s
doubling up to 30 s by default. Calls never raise: errors, timeouts and dead servers come back as a
``CallToolResult`` with ``is_error`` and a message that says what happened.

Calls to a server that speaks 2026-07-28 over Streamable HTTP skip the SDK's client: they go
through a lean link (``http_link.py``: one POST per call on kept-alive connections, without the
SDK client's tasks and streams), which the supervisor opens with each connection and closes when
it ends. A call that finds the link broken wakes the supervisor, which checks the server at once.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import anyio
import anyio.abc
import httpx2
import mcp.types as types
from mcp import Client, ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.session import IncomingMessage
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import SERVER_INFO_META_KEY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from pml_gateway.proxy.downstream.config import HttpServerConfig, StdioServerConfig
from pml_gateway.proxy.downstream.http_link import HttpLink, LinkError, Redirected, RemoteError, Unreachable, link_supported
from pml_gateway.proxy.registry import RegisteredTool, ToolRegistry

if TYPE_CHECKING:  # issue 9: the MCP surface beyond tools (prompts, resources, relays)
    from pml_gateway.proxy.surface import Surface

ResultT = TypeVar("ResultT", bound=types.Result)
#: Notifications that mean "list again" (tools, and since issue 9 prompts and resources).
_LIST_CHANGED = (types.ToolListChangedNotification, types.PromptListChangedNotification, types.ResourceListChangedNotification)

logger = logging.getLogger(__name__)

ServerConfig = StdioServerConfig | HttpServerConfig

#: Who the gateway is to its downstreams.
CLIENT_INFO = types.Implementation(name="pml-gateway", version="0.1.0")


class DownstreamState(str, Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SupervisionTiming:
    """How patiently downstreams are connected, watched and restarted (short in tests)."""

    backoff_initial: float = 1.0  #: first delay before a restart, seconds
    backoff_max: float = 30.0  #: the delay doubles up to this
    connect_timeout: float = 30.0  #: start + initialize + list tools
    ping_interval: float = 10.0  #: idle time between liveness pings
    ping_timeout: float = 10.0
    #: a connection that lived this long resets the backoff to ``backoff_initial``
    stable_after: float = 30.0

    def backoff(self, failures: int) -> float:
        """Delay before restart number ``failures`` (1-based): 1, 2, 4, ... capped."""
        return min(self.backoff_max, self.backoff_initial * 2 ** max(0, failures - 1))


def error_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)


def error_wire(message: str) -> dict[str, Any]:
    """``error_result`` in wire form (what the fast path passes on): the same as its model dump."""
    return {"content": [{"type": "text", "text": message}], "isError": True, "resultType": "complete"}


def _without_server_info(result: dict[str, Any]) -> dict[str, Any]:
    # A 2026-era result carries its server's identity in _meta (serverInfo). Passed on, the
    # downstream's stamp would pass for the gateway's: it is dropped, and the gateway stamps its own.
    meta = result.get("_meta")
    if isinstance(meta, dict) and SERVER_INFO_META_KEY in meta:
        rest = {key: value for key, value in meta.items() if key != SERVER_INFO_META_KEY}
        result = {**result}
        if rest:
            result["_meta"] = rest
        else:
            del result["_meta"]
    return result


def describe_error(exc: BaseException) -> str:
    """A one-line reason, from the innermost cause of an ``ExceptionGroup``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return exc.message or f"MCP error {exc.code}"
    if isinstance(exc, TimeoutError):
        return str(exc) or "timed out"
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"HTTP {exc.response.status_code} from {exc.request.url}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _ConnectionEnded(Exception):
    """The watch loop saw the connection die."""


class Downstream:
    """One downstream server: its supervisor loop, its state, and calls to its tools."""

    def __init__(
        self,
        config: ServerConfig,
        registry: ToolRegistry,
        timing: SupervisionTiming | None = None,
        *,
        errlog: TextIO | None = None,
        lean_http: bool = True,
        surface: Surface | None = None,
    ) -> None:
        self.config = config
        self.surface = surface  # issue 9: prompts, resources, logs, progress, server-to-client requests
        self.registry = registry
        self.timing = timing or SupervisionTiming()
        self.state = DownstreamState.CONNECTING
        self.last_error: str | None = None
        self.restarts = 0
        self._errlog = errlog
        self._client: Client | None = None
        self._link: HttpLink | None = None  # tools/call without the SDK's client, when it can carry them
        self.lean_http = lean_http
        self._wake = anyio.Event()  # set when the connection died or the tools changed
        self._dead = False
        self._relist = False
        self._inflight: set[anyio.CancelScope] = set()
        self.first_attempt_done = anyio.Event()  #: set once the first connection attempt settled

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def tool_count(self) -> int:
        return len(self.registry.server_tools(self.name)) if self.state is DownstreamState.CONNECTED else 0

    def health(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "tools": self.tool_count,
            "error": None if self.state is DownstreamState.CONNECTED else self.last_error,
            "transport": self.config.transport,
            "restarts": self.restarts,
        }

    # -- supervision ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Supervise forever (until cancelled): connect, watch, restart with backoff."""
        failures = 0
        while True:
            self.state = DownstreamState.CONNECTING
            connected_at: float | None = None
            try:
                async with self._connect() as client:
                    connected_at = time.monotonic()
                    await self._serve(client)
            except Exception as exc:  # includes ExceptionGroup from HTTP transports; never cancellation
                self.last_error = describe_error(exc)
            finally:
                self._client = None
                if self._link is not None:
                    self._link.close()  # lean calls in flight fail at once, like the SDK's below
                    self._link = None
                for scope in list(self._inflight):
                    scope.cancel()  # calls stuck on the dead connection return an error now
                if self.registry.remove_server(self.name):
                    logger.info("downstream %r: its tools left the list", self.name)
                if self.surface is not None:
                    self.surface.disconnected(self.name)
            self.state = DownstreamState.FAILED
            self.first_attempt_done.set()
            if connected_at is not None and time.monotonic() - connected_at >= self.timing.stable_after:
                failures = 0
            failures += 1
            self.restarts += 1
            delay = self.timing.backoff(failures)
            logger.warning("downstream %r failed: %s; restarting in %.1f s", self.name, self.last_error, delay)
            await anyio.sleep(delay)

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[Client]:
        self._wake = anyio.Event()
        self._dead = self._relist = False
        # mode="auto": the 2026-07-28 era when the server speaks it (self-contained requests, kept-alive
        # HTTP connections: a cheaper hop), else the initialize handshake. The read timeout bounds the
        # handshake and tool listing; calls pass their own.
        async with Client(
            self._transport(),
            mode="auto",
            cache=None,
            read_timeout_seconds=self.timing.connect_timeout,
            message_handler=self._on_message,
            client_info=CLIENT_INFO,
            **(self.surface.client_options(self.name) if self.surface is not None else {}),
        ) as client:
            tools = await self._list_tools(client.session)
            self._client = client
            if self.surface is not None:
                await self.surface.connected(self, client)
            self._link = self._lean_link(client)
            self.state = DownstreamState.CONNECTED
            self.last_error = None
            self.first_attempt_done.set()
            self.registry.set_server_tools(self.name, tools)
            logger.info(
                "downstream %r connected (protocol %s): %d tools", self.name, client.protocol_version, len(tools)
            )
            yield client

    def _lean_link(self, client: Client) -> HttpLink | None:
        """A lean link for tools/call when the server speaks 2026-07-28 over Streamable HTTP."""
        config = self.config
        if (
            not self.lean_http
            or not isinstance(config, HttpServerConfig)
            or config.transport == "sse"
            or client.protocol_version not in MODERN_PROTOCOL_VERSIONS
            or not link_supported(config.url, config.headers)
        ):
            return None
        # The gateway's client answers no server-to-client requests (no sampling, elicitation or
        # roots callbacks), so its envelope declares no capabilities, as the SDK's does.
        return HttpLink(
            config.url,
            config.headers,
            protocol_version=client.protocol_version,
            client_info=CLIENT_INFO.model_dump(mode="json", exclude_none=True),
            client_capabilities={},
        )

    def _transport(self) -> AbstractAsyncContextManager[Any]:
        config = self.config
        if isinstance(config, StdioServerConfig):
            params = StdioServerParameters(
                command=config.command,
                args=list(config.args),
                env=dict(config.env) or None,
                cwd=config.cwd,
            )
            return stdio_client(params, errlog=self._errlog or sys.stderr)
        if config.transport == "sse":
            return sse_client(config.url, headers=dict(config.headers) or None, timeout=self.timing.connect_timeout)
        return _streamable_http(config.url, config.headers, self.timing.connect_timeout)

    async def _serve(self, client: Client) -> None:
        """Watch a live connection until it dies; re-list tools when they may have changed."""
        modern = client.protocol_version in MODERN_PROTOCOL_VERSIONS
        async with anyio.create_task_group() as tg:
            if modern:
                tg.start_soon(self._listen_for_changes, client)
            while True:
                with anyio.move_on_after(self.timing.ping_interval):
                    await self._wake.wait()
                if self._dead:
                    raise _ConnectionEnded("connection closed")
                if self._relist or modern:
                    # 2026-07-28 has no ping: listing the tools is the liveness check, and catches changes.
                    self._wake = anyio.Event()
                    self._relist = False
                    try:
                        with anyio.fail_after(self.timing.ping_timeout):
                            tools = await self._list_tools(client.session)
                    except TimeoutError:
                        raise _ConnectionEnded(f"no answer within {self.timing.ping_timeout:g} s") from None
                    if self.registry.set_server_tools(self.name, tools):
                        logger.info("downstream %r: tool list changed (%d tools)", self.name, len(tools))
                    if self.surface is not None:
                        with anyio.fail_after(self.timing.ping_timeout):
                            await self.surface.connected(self, client)
                    continue
                try:
                    with anyio.fail_after(self.timing.ping_timeout):
                        await client.session.send_ping()
                except TimeoutError:
                    raise _ConnectionEnded(f"no answer to ping within {self.timing.ping_timeout:g} s") from None

    async def _listen_for_changes(self, client: Client) -> None:
        """2026-07-28: change notifications come on a subscriptions/listen stream, when served."""
        try:
            async with client.listen(tools_list_changed=True, prompts_list_changed=True, resources_list_changed=True) as subscription:
                async for _event in subscription:
                    self._relist = True
                    self._wake.set()
        except Exception as exc:  # not served, or the stream dropped: the periodic listing still catches changes
            logger.debug("downstream %r: no change subscription (%s)", self.name, describe_error(exc))

    @staticmethod
    async def _list_tools(session: ClientSession) -> list[types.Tool]:
        tools: list[types.Tool] = []
        cursor: str | None = None
        while True:
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_tools(params=params)
            # Tools that require task augmentation are not listed: the gateway does not speak tasks.
            tools.extend(t for t in page.tools if t.execution is None or t.execution.task_support != "required")
            cursor = page.next_cursor
            if not cursor:
                return tools

    async def _on_message(self, message: IncomingMessage) -> None:
        # Runs in the session's receive loop: only flag work here, never await a request.
        if isinstance(message, _LIST_CHANGED):
            self._relist = True
            self._wake.set()
        elif self.surface is not None and isinstance(message, types.ServerNotification):
            await self.surface.on_message(self.name, message)  # logs, resource updates: sent on, bounded
        elif isinstance(message, Exception):
            logger.debug("downstream %r transport error: %s", self.name, describe_error(message))

    # -- calls ---------------------------------------------------------------------------------

    async def call_tool(
        self, tool: str, arguments: dict[str, Any] | None, *, input_schema: Any = None
    ) -> types.CallToolResult:
        """Call one of this server's tools by its own name. Never raises (except cancellation)."""
        if self._link is None or self._needs_sdk():
            return await self._call_sdk(tool, arguments)
        raw = await self.call_tool_raw(tool, arguments, input_schema=input_schema)
        try:
            return types.CallToolResult.model_validate(raw, by_name=False)
        except ValidationError as exc:
            logger.warning("downstream %r: %r returned an invalid result: %s", self.name, tool, exc)
            return error_result(f"tool {tool!r} on downstream server {self.name!r} returned an invalid result")

    async def call_tool_raw(
        self,
        tool: str,
        arguments: dict[str, Any] | None,
        *,
        input_schema: Any = None,
        meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``call_tool`` with the result in wire form (camelCase JSON), unchecked. Never raises.

        Through the lean link when there is one; ``input_schema`` is the tool's (its
        ``x-mcp-header`` arguments are mirrored into headers), ``meta`` extra ``_meta`` keys.
        """
        link = self._link
        if link is None or self._needs_sdk():
            result = await self._call_sdk(tool, arguments)
            return result.model_dump(by_alias=True, mode="json", exclude_none=True)
        timeout = self.config.timeout
        try:
            return _without_server_info(
                await link.call_tool(tool, arguments, input_schema=input_schema, meta=meta, timeout=timeout)
            )
        except RemoteError as exc:
            return error_wire(f"downstream server {self.name!r} refused {tool!r}: {exc.message or f'MCP error {exc.code}'}")
        except TimeoutError:
            return error_wire(f"tool {tool!r} on downstream server {self.name!r} timed out after {timeout:g} s")
        except Redirected:
            # Not run: the SDK's client follows same-origin redirects, so it carries this server's calls.
            logger.info("downstream %r redirects; its calls go through the SDK client", self.name)
            if self._link is link:
                self._link = None
            link.close()
            result = await self._call_sdk(tool, arguments)
            return result.model_dump(by_alias=True, mode="json", exclude_none=True)
        except LinkError as exc:
            if self._link is link:  # the server may be gone: the supervisor checks now
                self._relist = True
                self._wake.set()
            if isinstance(exc, Unreachable):
                return error_wire(f"downstream server {self.name!r} is unreachable: {exc}")
            return error_wire(f"downstream server {self.name!r} closed the connection during {tool!r}: {exc}")

    async def _call_sdk(self, tool: str, arguments: dict[str, Any] | None) -> types.CallToolResult:
        client = self._client
        if client is None:
            reason = f": {self.last_error}" if self.last_error else ""
            return error_result(f"downstream server {self.name!r} is {self.state.value}{reason}")
        timeout = self.config.timeout
        scope = anyio.CancelScope()
        self._inflight.add(scope)
        try:
            with scope, self._in_flight() as caller:
                # The request itself, not Client.call_tool: a proxy passes results through and leaves
                # checking them against the output schema to the client at the end of the chain.
                result = await client.session.send_request(
                    types.CallToolRequest(params=types.CallToolRequestParams(name=tool, arguments=arguments)),
                    types.CallToolResult,
                    request_read_timeout_seconds=timeout,
                    progress_callback=caller.report_progress if caller is not None else None,
                )
                if result.meta and SERVER_INFO_META_KEY in result.meta:  # as _without_server_info
                    rest = {key: value for key, value in result.meta.items() if key != SERVER_INFO_META_KEY}
                    result = result.model_copy(update={"meta": rest or None})
                return result
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                if self._client is client:  # not a stale call on an earlier connection
                    self._dead = True
                    self._wake.set()
                return error_result(f"downstream server {self.name!r} closed the connection during {tool!r}")
            if exc.code == types.REQUEST_TIMEOUT:
                return error_result(f"tool {tool!r} on downstream server {self.name!r} timed out after {timeout:g} s")
            return error_result(f"downstream server {self.name!r} refused {tool!r}: {describe_error(exc)}")
        except Exception as exc:
            return error_result(f"calling {tool!r} on downstream server {self.name!r} failed: {describe_error(exc)}")
        finally:
            self._inflight.discard(scope)
        # Only reached when the supervisor cancelled the scope: the connection died mid-call.
        return error_result(f"downstream server {self.name!r} disconnected during {tool!r}")


    # -- issue 9: requests other than tools/call, and the calls the surface relays for ---------

    @property
    def server_capabilities(self) -> types.ServerCapabilities | None:
        return self._client.server_capabilities if self._client is not None else None

    @property
    def modern(self) -> bool:
        return self._client is not None and self._client.protocol_version in MODERN_PROTOCOL_VERSIONS

    async def request(self, request: types.ClientRequest, result_type: type[ResultT]) -> ResultT:
        """Any request but ``tools/call`` (prompts, resources, completion, logging) on the SDK client.

        Raises ``MCPError``: the server's own error, or one saying the server is not connected.
        """
        client = self._client
        if client is None:
            reason = f": {self.last_error}" if self.last_error else ""
            raise MCPError(types.INTERNAL_ERROR, f"downstream server {self.name!r} is {self.state.value}{reason}")
        with self._in_flight():
            return await client.session.send_request(request, result_type, request_read_timeout_seconds=self.config.timeout)

    async def notify(self, notification: types.ClientNotification) -> None:
        if self._client is not None:
            await self._client.session.send_notification(notification)

    def _in_flight(self) -> AbstractContextManager[Any]:
        return self.surface.relay.in_flight(self.name) if self.surface is not None else nullcontext(None)

    def _needs_sdk(self) -> bool:
        # A caller that wants progress or logs: only the SDK's client relays them (relay.py).
        return self.surface is not None and self.surface.relay.wants_sdk()


@asynccontextmanager
async def _streamable_http(url: str, headers: dict[str, str], connect_timeout: float) -> AsyncIterator[Any]:
    # Headers and timeouts go on an httpx2 client (SDK_NOTES §4); long reads for server streams.
    timeout = httpx2.Timeout(connect_timeout, read=300.0)
    async with httpx2.AsyncClient(headers=headers or None, timeout=timeout) as client:
        async with streamable_http_client(url, http_client=client) as streams:
            yield streams


class DownstreamPool:
    """Every enabled downstream, supervised together; the gateway's view of them."""

    def __init__(
        self,
        configs: Iterable[ServerConfig],
        registry: ToolRegistry,
        timing: SupervisionTiming | None = None,
        *,
        errlog: TextIO | None = None,
        lean_http: bool = True,
        surface: Surface | None = None,
    ) -> None:
        self.registry = registry
        self.downstreams: dict[str, Downstream] = {}
        self._options: dict[str, Any] = {"errlog": errlog, "lean_http": lean_http, "surface": surface}
        self._timing = timing
        self._tg: anyio.abc.TaskGroup | None = None
        self._running: dict[str, tuple[anyio.CancelScope, anyio.Event]] = {}
        for config in configs:
            if not config.enabled:
                logger.info("downstream %r is disabled in the config", config.name)
                continue
            self.downstreams[config.name] = self._downstream(config)

    def _downstream(self, config: ServerConfig) -> Downstream:
        return Downstream(config, self.registry, self._timing, **self._options)

    @asynccontextmanager
    async def running(self, *, startup_timeout: float = 10.0) -> AsyncIterator[DownstreamPool]:
        """Supervise every downstream while inside; waits (bounded) for each one's first attempt."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for downstream in self.downstreams.values():
                self._start(downstream)
            # Serving before the first attempts settle would show clients an empty tool list.
            with anyio.move_on_after(startup_timeout if math.isfinite(startup_timeout) else None):
                for downstream in self.downstreams.values():
                    await downstream.first_attempt_done.wait()
            try:
                yield self
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    # -- issue 9: the config file changed (downstream/watch.py) --------------------------------

    async def apply(self, configs: Iterable[ServerConfig]) -> dict[str, list[str]]:
        """Make the running set match ``configs``: start the added servers, stop the removed ones,
        restart the changed ones. Returns the names per kind of change."""
        wanted = {config.name: config for config in configs if config.enabled}
        changes = {
            "removed": [name for name in self.downstreams if name not in wanted],
            "added": [name for name in wanted if name not in self.downstreams],
            "changed": [name for name in wanted if name in self.downstreams and self.downstreams[name].config != wanted[name]],
        }
        async with anyio.create_task_group() as tg:  # each may take a process's grace period: at once
            for name in changes["removed"] + changes["changed"]:
                tg.start_soon(self._stop, name)
        for name in changes["added"] + changes["changed"]:
            downstream = self.downstreams[name] = self._downstream(wanted[name])
            self._start(downstream)
        return changes

    def _start(self, downstream: Downstream) -> None:
        assert self._tg is not None, "the pool is not running"
        scope, done = anyio.CancelScope(), anyio.Event()
        self._running[downstream.name] = (scope, done)

        async def supervise() -> None:
            try:
                with scope:
                    await downstream.run()
            finally:
                done.set()

        self._tg.start_soon(supervise, name=f"downstream {downstream.name}")

    async def _stop(self, name: str) -> None:
        """Stop one supervisor and wait (bounded) until its tools have left the registry."""
        self.downstreams.pop(name, None)
        scope, done = self._running.pop(name)
        scope.cancel()
        with anyio.move_on_after(10):
            await done.wait()

    def health(self) -> dict[str, dict[str, Any]]:
        return {name: downstream.health() for name, downstream in self.downstreams.items()}

    async def call(self, entry: RegisteredTool, arguments: dict[str, Any] | None) -> types.CallToolResult:
        downstream = self.downstreams.get(entry.server)
        if downstream is None:
            return error_result(f"downstream server {entry.server!r} is not configured")
        return await downstream.call_tool(entry.original_name, arguments, input_schema=entry.tool.input_schema)

    async def call_raw(
        self, entry: RegisteredTool, arguments: dict[str, Any] | None, *, meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """``call`` with the result in wire form, unchecked (the fast path shapes it for its client)."""
        downstream = self.downstreams.get(entry.server)
        if downstream is None:
            return error_wire(f"downstream server {entry.server!r} is not configured")
        return await downstream.call_tool_raw(
            entry.original_name, arguments, input_schema=entry.tool.input_schema, meta=meta
        )

    def unavailable_reason(self, tool_name: str) -> str | None:
        """Why a ``<server>__<tool>`` name is missing, when its server is known but down."""
        server, sep, _ = tool_name.partition("__")
        downstream = self.downstreams.get(server) if sep else None
        if downstream is None or downstream.state is DownstreamState.CONNECTED:
            return None
        reason = f" ({downstream.last_error})" if downstream.last_error else ""
        return f"downstream server {server!r} is {downstream.state.value}{reason}"
