"""Observability: Prometheus metrics (``/metrics``), OpenTelemetry spans, structured logs.

What the rest of the process may use:

- ``Instrumentation``: the one seam the proxy calls (histograms, spans), one per app;
- ``EventCounter``, ``scraped``: what the app's ``/metrics`` serves;
- ``configure_logging``, ``named_stderr``: logs (logs.py);
- ``configure_tracing``: the OTLP exporter when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.
"""

from pml_gateway.observability.instrumentation import Instrumentation, SuggestionStats, spec_method_label
from pml_gateway.observability.logs import configure_logging, named_stderr
from pml_gateway.observability.metrics import EventCounter, scraped, suggestion_stats
from pml_gateway.observability.tracing import configure_tracing

__all__ = [
    "EventCounter",
    "Instrumentation",
    "SuggestionStats",
    "configure_logging",
    "configure_tracing",
    "named_stderr",
    "scraped",
    "spec_method_label",
    "suggestion_stats",
]
