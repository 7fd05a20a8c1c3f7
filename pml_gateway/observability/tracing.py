"""OpenTelemetry tracing, on when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

``configure_tracing()`` installs a global SDK tracer provider with a ``BatchSpanProcessor`` and
the OTLP/HTTP exporter (both configured by the standard ``OTEL_*`` variables: endpoint, headers,
``OTEL_SERVICE_NAME``...). It needs the optional extra ``otel``; without it, or without the
variable, nothing is installed and every span in the process is a no-op.

The global provider is what the MCP SDK's own spans use too (its server middleware and its
client's ``MCP send`` spans get their tracer from the global provider), so one provider covers
the SDK's spans and the gateway's. ``NameDownstreamSpans`` renames the SDK client's span of a
downstream tool call to the semantic-convention name and adds the tool and server, so the SDK path
and the lean link (instrumentation.py) produce the same CLIENT span.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry.trace import SpanKind

from pml_gateway.observability.instrumentation import DOWNSTREAM_CALL, client_attributes

__all__ = ["ENDPOINT_VARIABLES", "NameDownstreamSpans", "configure_tracing", "tracing_requested"]

log = logging.getLogger(__name__)

#: Either one turns tracing on (the second names the traces endpoint exactly).
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_SDK_CLIENT_PREFIX = "MCP send tools/call"


def tracing_requested() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return any(os.environ.get(name) for name in ENDPOINT_VARIABLES)


class NameDownstreamSpans:
    """A span processor: the SDK client's span of a downstream tool call gets the gateway's name.

    The SDK names it ``MCP send tools/call <tool>`` with the downstream's own tool name and knows
    nothing of the server; ``Instrumentation.client_call`` puts both in a context variable that
    this processor reads when the span starts (in the calling task).
    """

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        call = DOWNSTREAM_CALL.get()
        if call is None or span.kind is not SpanKind.CLIENT or not span.name.startswith(_SDK_CLIENT_PREFIX):
            return
        server, tool = call
        span.update_name(f"tools/call {tool}")
        span.set_attributes(client_attributes(server, tool))

    def _on_ending(self, span: Any) -> None:
        return None

    def on_end(self, span: Any) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def configure_tracing() -> Any:
    """Install the OTLP/HTTP tracer provider when asked for by the environment; returns it, or None."""
    if not tracing_requested():
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but tracing needs: pip install 'pml-gateway[otel]' (%s)", exc)
        return None
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "pml-gateway"}
    provider = TracerProvider(resource=Resource.create(attributes))
    install_processors(provider, BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info("OpenTelemetry: exporting spans over OTLP/HTTP")
    return provider


def install_processors(provider: Any, exporter_processor: Any) -> None:
    """The gateway's processors on an SDK provider: span naming first, then the exporting one."""
    provider.add_span_processor(NameDownstreamSpans())
    provider.add_span_processor(exporter_processor)
