"""What ``GET /metrics`` serves: Prometheus text format from one ``CollectorRegistry`` per app.

The route itself is in ``http_api.py`` beside the other routes.

Two kinds of metric live here:

- the operation histograms, observed on the call path (``Instrumentation``, about 2 µs each);
- everything else, read at scrape time by ``StateCollector`` from what the process already
  counts (the hub's stats, the graph, the downstream pool's health, the events the engine
  emitted): nothing is updated on a hot path for them.

Labels stay bounded: event types, downstream server names and tool names all come from the
code or the config; no session or workflow id is ever a label.

Suggestion grading (hit rates of live suggestions) is read through ``suggestion_stats``, a
callback that returns ``SuggestionStats``; until the learning side exposes the numbers, it
returns zeros.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from graphrag import GraphEvent, GraphRAGEngine

from pml_gateway.observability.instrumentation import SuggestionStats

if TYPE_CHECKING:
    from pml_gateway.events.hub import EventHub
    from pml_gateway.observability.instrumentation import Instrumentation

__all__ = [
    "EventCounter",
    "ScrapedState",
    "StateCollector",
    "scraped",
    "suggestion_stats",
]


def suggestion_stats(ranking: Any) -> SuggestionStats:
    """The engine's live grading (``graphrag`` ``RankingStats``) as the metrics expose it."""
    return SuggestionStats(evaluations=ranking.evaluations, hits={1: ranking.hits_at_1, 3: ranking.hits_at_3})


class EventCounter:
    """An engine listener: events emitted, per type (a dict increment per event)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, event: GraphEvent) -> None:
        self.counts[event.type] = self.counts.get(event.type, 0) + 1


class ScrapedState(Protocol):
    """What a scrape reads of the running process (``pml_gateway.state.AppState`` has it).

    A protocol rather than ``AppState`` itself, so that observability never imports the app's
    state module (which names ``Instrumentation``): no import cycle, not even for types.
    """

    @property
    def engine(self) -> GraphRAGEngine: ...
    @property
    def hub(self) -> EventHub: ...
    @property
    def instrumentation(self) -> Instrumentation: ...
    @property
    def extensions(self) -> Sequence[Any]: ...  # AppExtension: their ``health()``


class StateCollector(Collector):
    """The process's gauges and counters, read from the running process at scrape time."""

    def __init__(self, state: ScrapedState, events: EventCounter) -> None:
        self.state = state
        self.events = events

    def collect(self) -> Iterator[Metric]:
        state = self.state
        up = GaugeMetricFamily("pml_downstream_up", "1 when the downstream server is connected, else 0.", labels=["server"])
        for extension in state.extensions:
            for name, health in extension.health().items():
                up.add_metric([name], 1.0 if health.get("state") == "connected" else 0.0)
        yield up

        published = CounterMetricFamily(
            "pml_events_published", "Graph events emitted by this process, by type.", labels=["type"]
        )
        for kind, count in sorted(self.events.counts.items()):
            published.add_metric([kind], count)
        yield published

        stats = state.hub.stats()
        yield GaugeMetricFamily("pml_sse_clients", "Open event streams.", value=stats.connected_clients)
        yield CounterMetricFamily(
            "pml_sse_clients_dropped", "Event stream clients closed for being too slow.", value=stats.clients_dropped_slow
        )

        graph = state.engine.graph
        nodes, edges = graph.number_of_nodes(), graph.number_of_edges()
        metrics = state.engine.metrics
        yield GaugeMetricFamily("pml_graph_nodes", "Tools in the graph.", value=nodes)
        yield GaugeMetricFamily("pml_graph_edges", "Learned tool-to-tool edges.", value=edges)
        yield GaugeMetricFamily("pml_graph_density", "E / (N (N - 1)).", value=state.engine.get_density())
        yield GaugeMetricFamily(
            "pml_graph_communities",
            "Louvain communities at the last metrics computation.",
            value=metrics.communities_count if metrics is not None else 0,
        )
        yield CounterMetricFamily(
            "pml_executions_recorded",
            "Workflow executions learned by this process (traces, workflows, POST /executions).",
            value=self.events.counts.get("workflow_executed", 0),
        )

        grading = state.instrumentation.suggestion_stats()
        yield CounterMetricFamily(
            "pml_suggestion_evaluations",
            "Proxied calls checked against the suggestions made after the previous call.",
            value=grading.evaluations,
        )
        hits = CounterMetricFamily(
            "pml_suggestion_hits", "Calls that were among the top k suggestions.", labels=["k"]
        )
        for k, count in sorted(grading.hits.items()):
            hits.add_metric([str(k)], count)
        yield hits


@contextmanager
def scraped(state: ScrapedState, events: EventCounter) -> Iterator[StateCollector]:
    """While inside, the app's registry also serves ``state``'s gauges and counters."""
    collector = StateCollector(state, events)
    registry = state.instrumentation.registry
    registry.register(collector)
    try:
        yield collector
    finally:
        registry.unregister(collector)
