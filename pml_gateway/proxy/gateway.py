"""The MCP gateway as an extension of the app: ``/mcp``, the downstream servers, learning from calls.

``Gateway(settings)`` reads the downstream config at once, so a bad file stops the process before
anything starts. Its lifespan (entered by the app once engine, hub and metrics scheduler are up)
starts one supervisor per downstream, the MCP server's background work (change notifications,
trace closing) and the Streamable HTTP session manager. The same running gateway also serves MCP
over stdio (``serve_stdio``), which is how ``pml-gateway stdio`` works.

On ``/mcp``, a ``tools/call`` of a downstream tool takes the fast path (``fast_path.py``) when it
passes the SDK's checks; every other request, and any that fails one, goes to the SDK's session
manager. The ``fast_path`` setting (``--fast-path 0`` / ``PML_FAST_PATH=0``) turns the fast path
and the lean downstream link off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TextIO

import anyio
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from graphrag import GraphRAGEngine, WorkflowExecution

from pml_gateway.auth import Profile, caller_in_context, outcome_of, record_tool_call
from pml_gateway.observability import Instrumentation
from pml_gateway.proxy import tools as gateway_tools
from pml_gateway.proxy.downstream.config import ServerConfig, load_config, load_profiles
from pml_gateway.proxy.downstream.supervisor import DownstreamPool, SupervisionTiming
from pml_gateway.proxy.downstream.watch import watch_config
from pml_gateway.proxy.fast_path import FastPath
from pml_gateway.proxy.tool_events import ToolEvents
from pml_gateway.proxy.sdk_compat import BoundedSessionManager, SdkInternals
from pml_gateway.proxy.tools import GatewayTools
from pml_gateway.host_check import transport_settings
from pml_gateway.settings import Settings
from pml_gateway.proxy.registry import ToolRegistry
from pml_gateway.proxy.search import SearchFeedback, ToolSearch
from pml_gateway.proxy.traces import TraceRecorder
from pml_gateway.proxy.server import UpstreamServer
from pml_gateway.proxy.resources import GraphResources
from pml_gateway.proxy.surface import Surface

if TYPE_CHECKING:
    from pml_gateway.state import AppState

logger = logging.getLogger(__name__)


__all__ = ["Gateway"]


class Gateway:
    """The MCP gateway (an ``AppExtension``): downstream servers in, one MCP server out."""

    def __init__(
        self,
        settings: Settings,
        *,
        servers: list[ServerConfig] | None = None,
        timing: SupervisionTiming | None = None,
        startup_timeout: float | None = None,
        errlog: TextIO | None = None,
    ) -> None:
        self.settings = settings
        fast_path = settings.fast_path
        #: tools/call of downstream tools without the SDK's transports (fast_path.py, http_link.py)
        self.fast_path_enabled = fast_path
        # Read the config now: a bad file is one clear ConfigError before anything starts.
        if servers is None:
            servers = load_config(settings.config) if settings.config is not None else []
        self.servers = servers
        #: per-client tool sets (auth/profiles.py), read from the same file; the app's auth gate uses them
        self.profiles = load_profiles(settings.config) if settings.config is not None else {}
        self.registry = ToolRegistry(reserved=gateway_tools.NAMES, servers=[s.name for s in servers if s.enabled])
        if timing is None:
            timing = SupervisionTiming(connect_timeout=settings.connect_timeout_seconds)
        # issue 9: prompts, resources and the relays, fed by every downstream's supervisor
        self.surface = Surface(lambda name: self.pool.downstreams.get(name))
        self.pool = DownstreamPool(
            servers, self.registry, timing, errlog=errlog, lean_http=fast_path, surface=self.surface,
            max_line_bytes=settings.downstream_max_line_bytes,
        )
        self.startup_timeout = settings.startup_timeout_seconds if startup_timeout is None else startup_timeout
        self.upstream: UpstreamServer | None = None
        self.traces: TraceRecorder | None = None
        self.session_manager: StreamableHTTPSessionManager | None = None
        self.fast_path: FastPath | None = None
        self.instrumentation = Instrumentation(metrics=False, tracing=False)  # the app's, once running
        self._http_app: StreamableHTTPASGIApp | None = None

    # -- AppExtension --------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [Route("/mcp", _MCPEndpoint(self))]

    @asynccontextmanager
    async def lifespan(self, state: AppState) -> AsyncIterator[None]:
        async with self.running(state.engine, state.instrumentation):
            yield

    def health(self) -> dict[str, Any]:
        return self.pool.health()

    # -- running -------------------------------------------------------------------------------

    @asynccontextmanager
    async def running(
        self, engine: GraphRAGEngine, instrumentation: Instrumentation | None = None
    ) -> AsyncIterator[Gateway]:
        """Downstreams, the MCP server and the HTTP session manager, learning into ``engine``."""
        # observability: one seam for metrics and spans, shared by the SDK path and the fast path
        self.instrumentation = instrumentation = instrumentation or Instrumentation()
        self.pool.instrumentation = instrumentation

        async def record(execution: WorkflowExecution) -> None:
            await engine.update_from_execution(execution)

        async def record_workflow(execution: WorkflowExecution) -> None:
            try:
                await record(execution)
            except Exception:  # the caller still gets its results
                logger.exception("could not record workflow %s", execution.workflow_id)

        async def call_task(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
            # observability: a workflow task's span, child of the workflow's request span
            started = time.monotonic()
            with instrumentation.task_span(name):
                result = await self.pool.call(name, arguments)
            # [auth] audited as the caller who ran the workflow
            record_tool_call(caller_in_context(), name, started, outcome_of(result))
            return result

        # What search learned (a search, then the tool called) lives in the store like the graph.
        search = ToolSearch(SearchFeedback(keep=engine.store))
        search.feedback.restore()

        def search_label(query: str, ranked: Sequence[str], called: str) -> None:
            engine.grader.search.grade(ranked, called)
            search.feedback.learn(query, called)

        self.traces = TraceRecorder(
            record,
            idle_seconds=self.settings.trace_idle_seconds,
            grade_next=engine.grade_next,
            on_search_label=search_label,
            keep=engine.store,  # open traces survive a crash (traces.py)
            checkpoint_seconds=self.settings.trace_checkpoint_seconds,
        )
        tools = GatewayTools(
            engine,
            self.registry,
            call_task,
            record_workflow,
            missing=self.pool.missing,
            traces=self.traces,
            search=search,
        )
        upstream = UpstreamServer(
            self.registry,
            self.pool,
            tools,
            self.traces,
            instrumentation=instrumentation,
            tool_exposure=self.settings.tool_exposure,
            surface=self.surface,
        )

        async def metrics_json(profile: Profile | None) -> str:
            return gateway_tools.output_json(await tools.graph_metrics(tools.visibility(profile)))

        self.surface.graph = GraphResources(engine, metrics_json, self.surface.notify_updated)
        security = transport_settings(self.settings)  # the same Host/Origin lists as every other route
        manager = BoundedSessionManager(  # issue 15: 2025-era sessions bounded per address and overall
            upstream.server,
            security_settings=security,
            max_sessions=self.settings.max_mcp_sessions,
            max_per_client=self.settings.max_mcp_sessions_per_client,
            idle_timeout=self.settings.mcp_session_idle_seconds,
        )
        manager.warn()  # an SDK that moved what the bounds rely on: said at start-up, never silent

        async def session_end(session_id: str) -> None:
            # However a 2025-era session ended (DELETE, idle timeout, evicted): its fast-path calls
            # end as the SDK's own do, and the gateway forgets it and records its trace now.
            if self.fast_path is not None:
                self.fast_path.session_ended(session_id)
            await upstream.session_ended(session_id)

        manager.on_session_end = session_end
        tool_events = ToolEvents(engine, self.registry, self.pool.health)  # tool_added / tool_removed
        # Executions that name no server (POST /executions) get it from the registry, not from the name.
        engine.resolve_servers(self.registry.owner)
        async with (
            self.pool.running(startup_timeout=self.startup_timeout),
            upstream.running(),
            manager.run(),
            anyio.create_task_group() as watcher,
        ):
            tool_events.start()
            engine.on(search.feedback.on_event)  # an admin forget or reset forgets search labels too
            if self.settings.tool_exposure == "lean":
                # Search is how lean clients find tools: the models (semantic extra) load now, in a
                # worker thread. Otherwise at the first search (pml_search_tools), also off the loop:
                # a gateway nobody searches does not carry them (+250 MB resident).
                watcher.start_soon(anyio.to_thread.run_sync, search.load, name="search models")
            if self.settings.config is not None:  # issue 9: edits of the config file apply at once
                watcher.start_soon(watch_config, self.settings.config, self.pool, self.profiles, name="config watcher")
            self.upstream, self.session_manager = upstream, manager
            self._http_app = StreamableHTTPASGIApp(manager)
            if self.fast_path_enabled:
                internals = SdkInternals(manager)
                internals.warn()  # an SDK that moved its internals: said at start-up, never silent
                self.fast_path = FastPath(self.registry, upstream, internals, security, instrumentation)
            try:
                yield self
            finally:
                tool_events.stop()  # stopping the downstreams is not a change of their tools
                engine.off(search.feedback.on_event)
                watcher.cancel_scope.cancel()
                self.upstream = self.session_manager = self._http_app = self.fast_path = None
                engine.resolve_servers(None)

    async def serve_stdio(self) -> None:
        """Serve MCP over this process's stdin/stdout until the client closes it (inside ``running``)."""
        if self.upstream is None:
            raise RuntimeError("the gateway is not running")
        server = self.upstream.server
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
        if self.traces is not None:
            await self.traces.flush()  # the stdio session ended


class _MCPEndpoint:
    """``/mcp``: the fast path for calls, else the session manager's ASGI app."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.gateway._http_app
        upstream = self.gateway.upstream
        if app is None or upstream is None:
            await JSONResponse({"error": "the MCP gateway is not running"}, status_code=503)(scope, receive, send)
            return
        fast = self.gateway.fast_path
        if fast is not None and scope.get("method") == "POST":
            limit = self.gateway.session_manager.max_request_body_size if self.gateway.session_manager else 0
            body, rest = await _read_body(receive, limit)
            if rest is None and len(body) <= limit:
                if await fast.handle(scope, body, receive, send):
                    return
                fast.note_cancellation(scope, body)  # cancels a call in flight on the fast path, if it names one
            receive = _Replay(body, rest, receive)  # the SDK reads the request as if untouched
        response = _ResponseState(send)
        await app(scope, receive, response.send)
        if response.started and not response.completed:
            # The SDK ends a session's GET stream at shutdown without a last chunk; finish it cleanly.
            await response.finish()


class _ResponseState:
    """Watches what an ASGI app sent, to complete a response it left open."""

    __slots__ = ("_send", "started", "completed", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.completed = False
        self.status: int | None = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            self.status = message["status"]
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.completed = True
        await self._send(message)

    async def finish(self) -> None:
        try:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        except Exception:  # the client is gone already
            pass


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, Message | None]:
    """The request body, up to ``limit`` bytes; and the message that stopped the reading, if any.

    ``None`` means the whole body was read. Otherwise the second value is what ``receive`` gave
    next (more body past the limit, or a disconnect), for the SDK to see after the body so far.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), None
        if size > limit:
            return b"".join(chunks), {"type": "http.request", "body": b"", "more_body": True}


class _Replay:
    """A ``receive`` that first gives back what ``_read_body`` consumed, then the real one."""

    __slots__ = ("_pending", "_receive")

    def __init__(self, body: bytes, rest: Message | None, receive: Receive) -> None:
        first: Message = {"type": "http.request", "body": body, "more_body": rest is not None}
        self._pending: list[Message] = [first]
        if rest is not None and rest["type"] != "http.request":
            self._pending.append(rest)  # a disconnect seen while reading
        self._receive = receive

    async def __call__(self) -> Message:
        if self._pending:
            return self._pending.pop(0)
        return await self._receive()

