"""The one seam the proxy calls to be observed: duration histograms and OpenTelemetry spans.

Every MCP request the gateway answers (SDK path: ``server_middleware``; fast path:
``server_call``) and every call it makes to a downstream (``client_call``) goes through here, so
both paths record the same metric with the same labels and open the same spans.

Spans follow the MCP semantic conventions and build on what the MCP SDK already does:

- SDK path: the SDK's own ``OpenTelemetryMiddleware`` (on by default) opens the SERVER span
  ``{mcp.method.name} {gen_ai.tool.name}`` from the ``traceparent`` in ``params._meta`` and marks
  tool errors; ``server_middleware`` runs inside it and only adds what it lacks
  (``mcp.session.id``, ``network.transport``). The fast path opens the same span itself.
- Downstream calls: the SDK's client opens a CLIENT span (``MCP send tools/call ...``) and
  injects ``traceparent``; the lean HTTP link has no SDK underneath, so ``client_call`` opens the
  CLIENT span and injects it into the request's ``_meta`` itself. Either way one CLIENT span.

Tracing is decided once, at construction: with no OpenTelemetry SDK configured, span methods
return a shared no-op object and never touch the OpenTelemetry API. Measured (bench/README.md,
CPU time per proxied call, server and client side together): 1.3 µs for the seam with nothing
on, 2.7 µs with the histograms (labelled children cached), about 80 µs with spans exported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from mcp_types import methods as _methods
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics

# No ``*_created`` series beside each histogram: a start timestamp per label set that doubles
# the scrape and that Prometheus does not use (process-wide: prometheus-client's own switch).
disable_created_metrics()

__all__ = ["DOWNSTREAM_CALL", "ClientCall", "Instrumentation", "ServerCall", "SuggestionStats", "error_type_of", "no_suggestion_stats"]

#: Buckets for MCP operation durations, in seconds (a proxied call is ~1 ms, a slow tool minutes).
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: Label value for a tool name or method the gateway does not serve (keeps labels bounded).
UNKNOWN = "_unknown"
TOOL_ERROR = "tool_error"

#: The downstream call in flight in this task, for the SDK's CLIENT span (tracing.py names it).
DOWNSTREAM_CALL: ContextVar[tuple[str, str] | None] = ContextVar("pml_downstream_call", default=None)


def error_type_of(exc: BaseException) -> str:
    """``error.type`` of a failed request: the JSON-RPC code of an MCP error, else the class name."""
    code = getattr(getattr(exc, "error", None), "code", None)
    return str(code) if isinstance(code, int) else type(exc).__qualname__


class _NoSpan:
    """What the span methods return when tracing is off: nothing to start, nothing to end."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


class _Observed:
    """A timed operation with an optional span: what ``ServerCall`` and ``ClientCall`` share."""

    __slots__ = ("_owner", "_tool", "_span", "_scope", "_started", "error_type")

    def __init__(self, owner: Instrumentation, tool: str) -> None:
        self._owner = owner
        self._tool = tool
        self._span: Any = None
        self._scope: Any = None
        self.error_type = ""  #: set by the caller: "tool_error" when the result is an error

    def _open_span(self, name: str, kind: SpanKind, attributes: dict[str, Any], context: Any = None) -> None:
        self._span = self._owner.tracer.start_span(name, context=context, kind=kind, attributes=attributes)
        self._scope = trace.use_span(self._span, end_on_exit=True)
        self._scope.__enter__()

    def _close(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> tuple[str, float]:
        """Ends the span; returns the error type ("" on success) and the elapsed seconds."""
        elapsed = time.perf_counter() - self._started
        error_type = error_type_of(exc) if exc is not None else self.error_type
        if self._span is not None:
            if error_type:
                self._span.set_attribute("error.type", error_type)
                self._span.set_status(StatusCode.ERROR)
            self._scope.__exit__(exc_type, exc, tb)
        return error_type, elapsed


class ServerCall(_Observed):
    """One upstream request answered outside the SDK (the fast path): timed, and a SERVER span.

    ``with instrumentation.server_call(...) as call: ...; call.error_type = "tool_error"``.
    """

    __slots__ = ("_method", "_attributes", "_context")

    def __init__(
        self,
        owner: Instrumentation,
        method: str,
        tool: str,
        meta: Mapping[str, Any] | None,
        attributes: dict[str, Any] | None,
    ) -> None:
        super().__init__(owner, tool)
        self._method = method
        self._attributes = attributes
        self._context = meta

    def __enter__(self) -> ServerCall:
        if self._attributes is not None:
            name = f"{self._method} {self._tool}"
            self._open_span(name, SpanKind.SERVER, self._attributes, _extract(self._context))
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        error_type, elapsed = self._close(exc_type, exc, tb)
        self._owner.observe_server(self._method, self._tool, error_type, elapsed)


class ClientCall(_Observed):
    """One call to a downstream tool: timed, and (lean link only) a CLIENT span.

    ``meta(extra)`` gives the ``_meta`` to send: ``extra`` plus this span's ``traceparent``.
    """

    __slots__ = ("_server", "_span_wanted", "_token")

    def __init__(self, owner: Instrumentation, server: str, tool: str, own_span: bool) -> None:
        super().__init__(owner, tool)
        self._server = server
        self._span_wanted = own_span and owner.tracing
        self._token: Any = None

    def __enter__(self) -> ClientCall:
        if self._span_wanted:
            self._open_span(f"tools/call {self._tool}", SpanKind.CLIENT, client_attributes(self._server, self._tool))
        elif self._owner.tracing:
            self._token = DOWNSTREAM_CALL.set((self._server, self._tool))  # for the SDK's span
        self._started = time.perf_counter()
        return self

    def meta(self, extra: dict[str, Any] | None) -> dict[str, Any] | None:
        if self._span is None:
            return extra
        carrier: dict[str, Any] = dict(extra) if extra else {}
        propagate.inject(carrier)  # the current context is this CLIENT span
        return carrier

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self._token is not None:
            DOWNSTREAM_CALL.reset(self._token)
        error_type, elapsed = self._close(exc_type, exc, tb)
        self._owner.observe_client(self._server, self._tool, error_type, elapsed)


def client_attributes(server: str, tool: str) -> dict[str, Any]:
    """Attributes of a CLIENT span to a downstream tool (also given to the SDK's own span)."""
    return {
        "mcp.method.name": "tools/call",
        "gen_ai.tool.name": tool,
        "gen_ai.operation.name": "execute_tool",
        "pml.downstream.server": server,
    }


def _extract(meta: Mapping[str, Any] | None) -> Any:
    if not meta or "traceparent" not in meta:
        return None
    try:
        context = propagate.extract(meta)
    except (ValueError, TypeError):
        return None
    return context if trace.get_current_span(context).get_span_context().is_valid else None


@dataclass(frozen=True, slots=True)
class SuggestionStats:
    """Live grading of suggestions: how many calls were checked, and hits per top-k."""

    evaluations: int = 0
    hits: dict[int, int] = field(default_factory=lambda: {1: 0, 3: 0})


def no_suggestion_stats() -> SuggestionStats:
    return SuggestionStats()


class Instrumentation:
    """Histograms of MCP operations (one registry per app) and the spans around them.

    ``metrics=False`` records nothing (bench/proxy.py ``--metrics off``); ``tracing=None`` means
    "on when an OpenTelemetry SDK tracer provider is installed" (``tracing.configure_tracing``).
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        metrics: bool = True,
        tracing: bool | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = metrics
        self.tracing = tracing_installed() if tracing is None else tracing
        self.tracer = trace.get_tracer("pml_gateway")
        self.server_duration = Histogram(
            "pml_mcp_server_operation_duration_seconds",
            "MCP requests the gateway answered, by method, tool and error type (empty: success).",
            ["mcp_method_name", "gen_ai_tool_name", "error_type"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.client_duration = Histogram(
            "pml_mcp_client_operation_duration_seconds",
            "Tool calls the gateway made to downstream servers, by server, tool and error type.",
            ["mcp_method_name", "gen_ai_tool_name", "error_type", "server"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        #: live suggestion grading for ``/metrics`` (metrics.py); the learning side sets it
        self.suggestion_stats: Callable[[], SuggestionStats] = no_suggestion_stats
        self._server_children: dict[tuple[str, str, str], Any] = {}
        self._client_children: dict[tuple[str, str, str], Any] = {}

    # -- metrics -------------------------------------------------------------------------------

    def observe_server(self, method: str, tool: str, error_type: str, seconds: float) -> None:
        if not self.metrics:
            return
        key = (method, tool, error_type)
        child = self._server_children.get(key)
        if child is None:  # labels() takes a lock and builds a tuple: once per label set
            child = self._server_children[key] = self.server_duration.labels(method, tool, error_type)
        child.observe(seconds)

    def observe_client(self, server: str, tool: str, error_type: str, seconds: float) -> None:
        if not self.metrics:
            return
        key = (server, tool, error_type)
        child = self._client_children.get(key)
        if child is None:
            child = self._client_children[key] = self.client_duration.labels("tools/call", tool, error_type, server)
        child.observe(seconds)

    # -- the seams -----------------------------------------------------------------------------

    def server_call(
        self,
        method: str,
        tool: str,
        *,
        meta: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        protocol_version: str | None = None,
        transport: str = "tcp",
    ) -> ServerCall:
        """A request answered outside the SDK: the SERVER span the SDK would open, and the histogram."""
        attributes = None
        if self.tracing:
            attributes = server_attributes(method, tool, session_id, protocol_version, transport)
        return ServerCall(self, method, tool, meta, attributes)

    def client_call(self, server: str, tool: str, *, own_span: bool) -> ClientCall:
        """A downstream tool call. ``own_span``: no SDK client underneath opens a CLIENT span."""
        return ClientCall(self, server, tool, own_span)

    def task_span(self, tool: str) -> Any:
        """A workflow task's INTERNAL span ``execute_tool {tool}``, or a no-op when tracing is off."""
        if not self.tracing:
            return _NO_SPAN
        attributes = {"gen_ai.tool.name": tool, "gen_ai.operation.name": "execute_tool"}
        return self.tracer.start_as_current_span(f"execute_tool {tool}", attributes=attributes)

    def server_middleware(self, method_label: Callable[[str], str], tool_label: Callable[[str], str]) -> Any:
        """SDK server middleware: times every request, adds session and transport to its span.

        Appended after the SDK's ``OpenTelemetryMiddleware``, so it runs inside that SERVER span.
        ``method_label`` and ``tool_label`` map what the client sent to bounded label values.
        """

        async def observe(ctx: Any, call_next: Any) -> Any:
            if ctx.request_id is None:  # a notification: no operation to time
                return await call_next(ctx)
            method = method_label(ctx.method)
            name = ctx.params.get("name") if ctx.params else None
            tool = tool_label(name) if method == "tools/call" and isinstance(name, str) else ""
            if self.tracing:
                span = trace.get_current_span()
                request = ctx.request
                session_id = request.headers.get("mcp-session-id") if request is not None else None
                span.set_attribute("network.transport", "tcp" if request is not None else "pipe")
                if session_id:
                    span.set_attribute("mcp.session.id", session_id)
            started = time.perf_counter()
            try:
                result = await call_next(ctx)
            except BaseException as exc:
                self.observe_server(method, tool, error_type_of(exc), time.perf_counter() - started)
                raise
            failed = isinstance(result, dict) and result.get("isError") is True
            self.observe_server(method, tool, TOOL_ERROR if failed else "", time.perf_counter() - started)
            return result

        return observe


def server_attributes(
    method: str, tool: str, session_id: str | None, protocol_version: str | None, transport: str
) -> dict[str, Any]:
    """Attributes of a SERVER span, as the SDK sets them plus session and transport."""
    attributes: dict[str, Any] = {"mcp.method.name": method, "network.transport": transport}
    if method == "tools/call":
        attributes["gen_ai.operation.name"] = "execute_tool"
        attributes["gen_ai.tool.name"] = tool
    if protocol_version:
        attributes["mcp.protocol.version"] = protocol_version
    if session_id:
        attributes["mcp.session.id"] = session_id
    return attributes


def spec_method_label(method: str) -> str:
    """A method label bounded to the MCP specification's request methods."""
    return method if method in _methods.SPEC_CLIENT_METHODS else UNKNOWN


def tracing_installed() -> bool:
    """Whether an OpenTelemetry SDK tracer provider is installed (spans would be recorded)."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
