"""The event stream: the SSE wire format (``wire``), the hub that fans events out (``hub``), and
the endpoints that serve them (``stream``)."""

from pml_gateway.events.hub import EventHub, HubStats, InProcessEventHub
from pml_gateway.events.stream import EventsStats, EventsStreamManager

__all__ = ["EventHub", "EventsStats", "EventsStreamManager", "HubStats", "InProcessEventHub"]
