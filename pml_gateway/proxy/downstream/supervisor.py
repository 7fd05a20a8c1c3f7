"""Downstream MCP servers, each kept alive by its own supervisor task.

Why one task per server (SDK_NOTES §4): a dead HTTP downstream raises out of its transport as an
``ExceptionGroup`` and cancels the task that entered it. Inside a shared exit stack that takes the
whole app down; in its own task it only ends that server's connection.

A supervisor loops: connect, initialise, list tools and register them, then watch the connection
(a ping while idle, a ``CONNECTION_CLOSED`` seen by any call, a ``tools/list_changed`` from the
server). When the connection ends or never comes up, the server's tools leave the registry (the
registry's listeners tell upstream clients) and it is retried after an exponential backoff, 1 s
doubling up to 30 s by default. Calls never raise: errors, timeouts and dead servers come back as a
tool error (wire form, worded by ``errors.py``) that says what happened.

Calls go through one ``DownstreamLink`` (``link.py``), chosen once per connection: the lean HTTP
link (``http_link.py``: one POST per call on kept-alive connections, without the SDK client's
tasks and streams) when the server speaks 2026-07-28 over Streamable HTTP, else the SDK client's
(``sdk_link.py``). The supervisor opens it with each connection and closes it when it ends. A call
that finds the link broken wakes the supervisor, which checks the server at once.

A server configured ``"session": "per_client"`` (issue 16) also has a ``SessionPool``
(``session_pool.py``) while its connection lives: the calls and requests of a 2025-era upstream
session go over a downstream session of that upstream session's own, the catalogs and every other
caller over the supervisor's connection.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, AbstractContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, TextIO, TypeVar

import anyio
import anyio.abc
import httpx2
import mcp.types as types
from mcp import Client, ClientSession, MCPError, StdioServerParameters
from mcp.client.session import IncomingMessage
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import SERVER_INFO_META_KEY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from pml_gateway.proxy.downstream.config import HttpServerConfig, ServerConfig, StdioServerConfig
from pml_gateway.proxy.downstream import errors
from pml_gateway.proxy.downstream.http_link import HttpLink, link_supported
from pml_gateway.proxy.downstream.link import DownstreamLink, LinkError, Redirected, RemoteError, Unreachable
from pml_gateway.proxy.downstream.sdk_link import SdkLink
from pml_gateway.proxy.downstream.session_pool import OwnSession, SessionPool, SessionUnavailable
from pml_gateway.proxy.downstream.stdio_transport import DEFAULT_MAX_LINE_BYTES, StdioTransport
from pml_gateway.proxy.registry import ToolRegistry
from pml_gateway.observability import Instrumentation
from pml_gateway.version import VERSION

ResultT = TypeVar("ResultT", bound=types.Result)


class DownstreamHooks(Protocol):
    """What a supervisor tells the layer above it and asks of it: the MCP surface beyond tools
    (prompts, resources, logs, progress, server-to-client requests; ``proxy/surface.py``).

    A protocol here, so that downstreams never import the layer that uses them.
    """

    # ``session``: the upstream session whose own downstream session it is (per_client), None for
    # the supervisor's connection.
    def client_options(self, server: str, session: str | None = None) -> dict[str, Any]: ...
    async def connected(self, downstream: Downstream, client: Client) -> None: ...
    def disconnected(self, server: str) -> None: ...
    async def on_message(self, server: str, message: Any, session: str | None = None) -> None: ...
    def in_flight(self, server: str, session: str | None = None) -> AbstractContextManager[Any]: ...
    def wants_sdk(self) -> bool: ...
    def session_key(self) -> str | None: ...  #: the upstream session of the call running now, if any
    #: an upstream session's own downstream session opened: give it that session's state; the URIs it subscribed to
    async def session_opened(self, downstream: Downstream, session: str, client: Client) -> set[str]: ...
#: Notifications that mean "list again" (tools, and since issue 9 prompts and resources).
_LIST_CHANGED = (types.ToolListChangedNotification, types.PromptListChangedNotification, types.ResourceListChangedNotification)

logger = logging.getLogger(__name__)

#: Who the gateway is to its downstreams.
CLIENT_INFO = types.Implementation(name="pml-gateway", version=VERSION)


class DownstreamState(str, Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SupervisionTiming:
    """How patiently downstreams are connected, watched and restarted (short in tests)."""

    backoff_initial: float = 1.0  #: first delay before a restart, seconds
    #: The delay doubles up to this. Kept short: after a hang of any length clears, the server is
    #: back within this plus one connect (a 30 s cap measured 25-38 s); a retry of a dead server
    #: every 8 s costs one failed connect.
    backoff_max: float = 8.0
    connect_timeout: float = 30.0  #: start + initialize + list tools
    ping_interval: float = 10.0  #: idle time between liveness pings
    ping_timeout: float = 10.0
    #: a connection that lived this long resets the backoff to ``backoff_initial``
    stable_after: float = 10.0

    def backoff(self, failures: int) -> float:
        """Delay before restart number ``failures`` (1-based): 1, 2, 4, ... capped."""
        return min(self.backoff_max, self.backoff_initial * 2 ** max(0, failures - 1))


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
        surface: DownstreamHooks | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self.config = config
        self.max_line_bytes = max_line_bytes  # a stdio server's longest stdout line (stdio_transport.py)
        self.surface = surface  # issue 9: prompts, resources, logs, progress, server-to-client requests
        self.registry = registry
        self.timing = timing or SupervisionTiming()
        self.state = DownstreamState.CONNECTING
        self.last_error: str | None = None
        self.restarts = 0
        self._errlog = errlog
        self._link: DownstreamLink | None = None  # how calls reach the server while connected
        self._fallback: DownstreamLink | None = None  # the SDK's link, when _link is the lean one
        self._client: Client | None = None  # the SDK's client: requests other than tools/call (issue 9)
        self.lean_http = lean_http
        self._wake = anyio.Event()  # set when the connection died or the tools changed
        self._dead = False
        self._relist = False
        self.first_attempt_done = anyio.Event()  #: set once the first connection attempt settled
        #: issue 16: the upstream sessions' own downstream sessions ("session": "per_client")
        self.sessions: SessionPool | None = None
        self._sessions_http: httpx2.AsyncClient | None = None  # the HTTP client per-client sessions share
        if config.session == "per_client":
            self.sessions = SessionPool(
                config.name,
                self._new_client,
                max_sessions=config.max_sessions,
                idle_seconds=config.session_idle_seconds,
                opened=self._session_opened,
            )

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def link(self) -> DownstreamLink | None:
        """How calls reach the server now (``None`` while it is not connected)."""
        return self._link

    @property
    def lean(self) -> bool:
        """Calls go over the lean HTTP link (no SDK client underneath to open their spans)."""
        return isinstance(self._link, HttpLink)

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
            **({"sessions": len(self.sessions)} if self.sessions is not None else {}),  # per_client: open now
        }

    # -- supervision ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Supervise forever (until cancelled): connect, watch, restart with backoff."""
        failures = 0
        while True:
            self.state = DownstreamState.CONNECTING
            connected_at: float | None = None
            try:
                # One deadline for the whole connect (start, handshake, tool list): the SDK's
                # server/discover probe has a fixed 10 s timeout of its own, outside the client's
                # read timeout, so a hung server held each attempt 10 s past connect_timeout.
                with anyio.CancelScope(deadline=anyio.current_time() + self.timing.connect_timeout) as connecting:
                    async with self._connect() as client:
                        connecting.deadline = math.inf
                        connected_at = time.monotonic()
                        await self._serve(client)
                if connecting.cancelled_caught:
                    self.last_error = errors.connect_timed_out(self.timing.connect_timeout)
            except Exception as exc:  # includes ExceptionGroup from HTTP transports; never cancellation
                self.last_error = errors.describe_error(exc)
            finally:
                for link in (self._link, self._fallback):
                    if link is not None:
                        link.close()  # calls stuck on the dead connection return an error now
                self._link = self._fallback = None
                self._client = None
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
        transport = self._transport()  # kept: a stdio transport tells how its process ended
        async with self._new_client(transport=transport) as client, self._own_sessions():
            tools = await self._list_tools(client.session)
            self._client = client
            if self.surface is not None:
                await self.surface.connected(self, client)
            # a call the stdio transport saw end says how (the exit code): issue 16
            ended = (lambda: transport.ended) if isinstance(transport, StdioTransport) else None
            self._fallback = SdkLink(client, ended=ended)
            self._link = self._lean_link(client) or self._fallback
            self.state = DownstreamState.CONNECTED
            self.last_error = None
            self.first_attempt_done.set()
            self.registry.set_server_tools(self.name, tools)
            logger.info(
                "downstream %r connected (protocol %s): %d tools", self.name, client.protocol_version, len(tools)
            )
            yield client

    @asynccontextmanager
    async def _own_sessions(self) -> AsyncIterator[None]:
        """While the connection lives: the per-client sessions (if per_client), and for Streamable
        HTTP one HTTP client they share (creating one costs about 20 ms of CPU: its TLS context)."""
        if self.sessions is None:
            yield
            return
        async with AsyncExitStack() as stack:
            if isinstance(self.config, HttpServerConfig) and self.config.transport != "sse":
                # Each session holds a GET stream open: no bound on connections beyond max_sessions.
                http = _http_client(self.config.headers, self.timing.connect_timeout, httpx2.Limits(max_connections=None))
                self._sessions_http = await stack.enter_async_context(http)
            await stack.enter_async_context(self.sessions.running())
            try:
                yield
            finally:
                self._sessions_http = None

    def _new_client(self, session: str | None = None, transport: AbstractAsyncContextManager[Any] | None = None) -> Client:
        """A client of this server: the supervisor's (``session`` None) or an upstream session's own."""
        # mode="auto": the 2026-07-28 era when the server speaks it (self-contained requests, kept-alive
        # HTTP connections: a cheaper hop), else the initialize handshake. The read timeout bounds the
        # handshake and tool listing; calls pass their own.
        return Client(
            transport if transport is not None else self._transport(session),
            mode="auto",
            cache=None,
            read_timeout_seconds=self.timing.connect_timeout,
            message_handler=functools.partial(self._on_message, session=session),
            client_info=CLIENT_INFO,
            **(self.surface.client_options(self.name, session) if self.surface is not None else {}),
        )

    async def _session_opened(self, session: str, client: Client) -> set[str]:
        return await self.surface.session_opened(self, session, client) if self.surface is not None else set()

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

    def _transport(self, session: str | None = None) -> AbstractAsyncContextManager[Any]:
        config = self.config
        if isinstance(config, StdioServerConfig):
            params = StdioServerParameters(
                command=config.command,
                args=list(config.args),
                env=dict(config.env) or None,
                cwd=config.cwd,
            )
            return StdioTransport(params, server=self.name, copy_stderr_to=self._errlog, max_line_bytes=self.max_line_bytes)
        if config.transport == "sse":
            return sse_client(config.url, headers=dict(config.headers) or None, timeout=self.timing.connect_timeout)
        if session is not None and self._sessions_http is not None:  # a separate MCP session on the shared client
            return streamable_http_client(config.url, http_client=self._sessions_http)
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
                    raise errors.ConnectionEnded("Connection closed")
                if self._relist or modern:
                    # 2026-07-28 has no ping: listing the tools is the liveness check, and catches changes.
                    self._wake = anyio.Event()
                    self._relist = False
                    try:
                        with anyio.fail_after(self.timing.ping_timeout):
                            tools = await self._list_tools(client.session)
                    except TimeoutError:
                        raise errors.ConnectionEnded(
                            f"the server stopped answering (no answer within {self.timing.ping_timeout:g} s)"
                        ) from None
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
                    raise errors.ConnectionEnded(
                        f"the server stopped answering (no answer to ping within {self.timing.ping_timeout:g} s)"
                    ) from None

    async def _listen_for_changes(self, client: Client) -> None:
        """2026-07-28: change notifications come on a subscriptions/listen stream, when served."""
        try:
            async with client.listen(tools_list_changed=True, prompts_list_changed=True, resources_list_changed=True) as subscription:
                async for _event in subscription:
                    self._relist = True
                    self._wake.set()
        except Exception as exc:  # not served, or the stream dropped: the periodic listing still catches changes
            logger.debug("downstream %r: no change subscription (%s)", self.name, errors.describe_error(exc))

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

    async def _on_message(self, message: IncomingMessage, *, session: str | None = None) -> None:
        # Runs in the session's receive loop: only flag work here, never await a request.
        if isinstance(message, _LIST_CHANGED):
            if session is None:  # the catalogs come from the supervisor's connection only
                self._relist = True
                self._wake.set()
        elif self.surface is not None and isinstance(message, types.ServerNotification):
            await self.surface.on_message(self.name, message, session)  # logs, resource updates: sent on, bounded
        elif isinstance(message, Exception):
            logger.debug("downstream %r transport error: %s", self.name, errors.describe_error(message))

    # -- calls ---------------------------------------------------------------------------------

    async def call_tool(
        self,
        tool: str,
        arguments: dict[str, Any] | None,
        *,
        input_schema: Any = None,
        meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Call one of this server's tools by its own name; the result in wire form, unchecked.

        Never raises (except cancellation): every failure is a tool error. ``input_schema`` is the
        tool's, ``meta`` extra ``_meta`` keys for the request (see ``DownstreamLink``).
        """
        link: DownstreamLink | None = self._link
        if link is None:
            return errors.tool_error(errors.server_down(self.name, self.state.value, self.last_error))
        own: OwnSession | None = None
        if self.sessions is not None and self.surface is not None:  # shared servers: not a step more per call
            try:
                own = await self._own_session(self.surface.session_key())
            except SessionUnavailable as exc:
                return errors.tool_error(errors.no_session(self.name, str(exc)))
        if own is not None:  # issue 16: the caller's own session (per_client)
            link = own.link
            if link is None:
                return errors.tool_error(errors.connection_lost(self.name, tool, "its session closed"))
        elif self._needs_sdk():  # a caller that wants progress or logs: only the SDK's client relays them
            link = self._fallback or link
        timeout = self.config.timeout
        try:
            # issue 9: server-to-client requests and progress reach this caller
            with self._in_flight(own) as caller, own.using() if own is not None else nullcontext():
                progress = caller.report_progress if caller is not None else None
                result = await link.call_tool(
                    tool, arguments, input_schema=input_schema, meta=meta, timeout=timeout, progress=progress
                )
        except RemoteError as exc:
            return errors.tool_error(errors.refused(self.name, tool, exc.message or f"MCP error {exc.code}"))
        except TimeoutError:
            return errors.tool_error(errors.timed_out(self.name, tool, timeout))
        except Redirected:
            # Not run: the SDK's client follows same-origin redirects, so it carries this server's calls.
            fallback = self._fallback
            if self._link is not link or fallback is None or fallback is link:
                return errors.tool_error(errors.connection_lost(self.name, tool, "redirected"))
            logger.info("downstream %r redirects; its calls go through the SDK client", self.name)
            self._link = fallback
            link.close()
            return await self.call_tool(tool, arguments, input_schema=input_schema, meta=meta)
        except LinkError as exc:
            if own is not None and self.sessions is not None:  # its own session broke: the next call opens another
                self.sessions.discard(own)
            elif link in (self._link, self._fallback):  # not a stale call on an earlier connection: the supervisor checks now
                if exc.dead:
                    self._dead = True
                else:
                    self._relist = True
                self._wake.set()
            if isinstance(exc, Unreachable):
                return errors.tool_error(errors.unreachable(self.name, str(exc)))
            return errors.tool_error(errors.connection_lost(self.name, tool, str(exc)))
        except Exception as exc:
            return errors.tool_error(errors.call_failed(self.name, tool, errors.describe_error(exc)))
        return _without_server_info(result)


    # -- issue 9: requests other than tools/call, and the calls the surface relays for ---------

    @property
    def server_capabilities(self) -> types.ServerCapabilities | None:
        return self._client.server_capabilities if self._client is not None else None

    @property
    def modern(self) -> bool:
        return self._client is not None and self._client.protocol_version in MODERN_PROTOCOL_VERSIONS

    @property
    def per_client(self) -> bool:
        """Each upstream session has a downstream session of its own (issue 16)."""
        return self.sessions is not None

    async def request(
        self, request: types.ClientRequest, result_type: type[ResultT], *, session: str | None = None
    ) -> ResultT:
        """Any request but ``tools/call`` (prompts, resources, completion, logging) on the SDK client:
        the supervisor's, or upstream ``session``'s own on a per_client server.

        Raises ``MCPError``: the server's own error, or one saying the server is not connected.
        """
        client = self._client
        if client is None:
            reason = f": {self.last_error}" if self.last_error else ""
            raise MCPError(types.INTERNAL_ERROR, f"downstream server {self.name!r} is {self.state.value}{reason}")
        try:
            own = await self._own_session(session)
        except SessionUnavailable as exc:
            raise MCPError(types.INTERNAL_ERROR, errors.no_session(self.name, str(exc))) from None
        target = own.client if own is not None and own.client is not None else client
        with self._in_flight(own), own.using() if own is not None else nullcontext():
            try:
                return await target.session.send_request(
                    request, result_type, request_read_timeout_seconds=self.config.timeout
                )
            except MCPError as exc:
                if own is not None and self.sessions is not None and exc.code == types.CONNECTION_CLOSED:
                    self.sessions.discard(own)
                raise

    async def notify(self, notification: types.ClientNotification, *, session: str | None = None) -> None:
        """A notification on the supervisor's connection, or on ``session``'s own when it has one open."""
        own = self.sessions.get(session) if self.sessions is not None and session is not None else None
        client = own.client if own is not None else self._client
        if client is not None:
            await client.session.send_notification(notification)

    async def _own_session(self, session: str | None) -> OwnSession | None:
        """Upstream ``session``'s own downstream session, opened now if need be; None when it uses the
        supervisor's (a shared server, or no upstream session). Raises ``SessionUnavailable``."""
        if self.sessions is None or session is None:
            return None
        return await self.sessions.session(session)

    def _in_flight(self, own: OwnSession | None = None) -> AbstractContextManager[Any]:
        if self.surface is None:
            return nullcontext(None)
        return self.surface.in_flight(self.name, own.key if own is not None else None)

    def _needs_sdk(self) -> bool:
        # A caller that wants progress or logs: only the SDK's client relays them (relay.py).
        return self.surface is not None and self.surface.wants_sdk()


@asynccontextmanager
async def _streamable_http(url: str, headers: dict[str, str], connect_timeout: float) -> AsyncIterator[Any]:
    async with _http_client(headers, connect_timeout) as client:
        async with streamable_http_client(url, http_client=client) as streams:
            yield streams


def _http_client(headers: dict[str, str], connect_timeout: float, limits: httpx2.Limits | None = None) -> httpx2.AsyncClient:
    # Headers and timeouts go on an httpx2 client (SDK_NOTES §4); long reads for server streams.
    timeout = httpx2.Timeout(connect_timeout, read=300.0)
    return httpx2.AsyncClient(headers=headers or None, timeout=timeout, **({"limits": limits} if limits else {}))


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
        surface: DownstreamHooks | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self.registry = registry
        self.instrumentation = Instrumentation(metrics=False, tracing=False)  # the gateway's, once running
        self.downstreams: dict[str, Downstream] = {}
        self._options: dict[str, Any] = {
            "errlog": errlog, "lean_http": lean_http, "surface": surface, "max_line_bytes": max_line_bytes
        }
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
        self.registry.set_servers(wanted)  # names of removed servers are freed; new ones are known
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

    def session_ended(self, session: str) -> None:
        """An upstream session ended: its own downstream sessions (per_client servers) close."""
        for downstream in self.downstreams.values():
            if downstream.sessions is not None:
                downstream.sessions.close(session)

    def missing(self, name: str) -> str:
        """Why the exposed name ``name`` cannot be called: its server is down, or no such tool."""
        server = self.registry.owner(name)
        downstream = self.downstreams.get(server) if server is not None else None
        if downstream is None or downstream.state is DownstreamState.CONNECTED:
            return errors.unknown_tool(name)
        return errors.unavailable(name, errors.server_down(server, downstream.state.value, downstream.last_error))

    async def call(
        self, name: str, arguments: dict[str, Any] | None, *, meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Call a downstream tool by its exposed name; the result in wire form. Never raises.

        The one way every proxied call reaches a downstream: the SDK path, the fast path and
        workflow tasks alike.
        """
        entry = self.registry.get(name)
        if entry is None:
            return errors.tool_error(self.missing(name))
        downstream = self.downstreams.get(entry.server)
        if downstream is None:
            return errors.tool_error(errors.not_configured(entry.server))
        # observability: histogram, and a CLIENT span unless the SDK's client opens one
        with self.instrumentation.client_call(entry.server, entry.name, own_span=downstream.lean) as observed:
            result = await downstream.call_tool(
                entry.original_name, arguments, input_schema=entry.tool.input_schema, meta=observed.meta(meta)
            )
            observed.error_type = "tool_error" if result.get("isError") is True else ""
        return result
