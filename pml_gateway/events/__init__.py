"""The event stream: the wire format (``wire``), the filters (``filters``), the hub that fans
events out (``hub``), and the endpoints that serve them, SSE and WebSocket (``stream``)."""

from pml_gateway.events.filters import EventFilter, StreamRequestError
from pml_gateway.events.hub import EventHub, HubStats, InProcessEventHub
from pml_gateway.events.stream import EventsStats, EventsStreamManager

__all__ = [
    "EventFilter",
    "EventHub",
    "EventsStats",
    "EventsStreamManager",
    "HubStats",
    "InProcessEventHub",
    "StreamRequestError",
]
