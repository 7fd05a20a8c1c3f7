"""What a stream client asked to see: ``?types=``, ``?tools=``, ``?servers=``, ``?workflow_id=``.

One parser for both endpoints (``/events/stream`` and ``/events/ws``), and one ``EventFilter``
the hub applies to each frame before queueing it. The filter only reads what the frame already
carries (``wire.Frame``: its tools, their servers, its workflow, computed once per event), so a
client without filters pays nothing, and a filtered one a few set lookups.

Rules: every given filter must pass (they combine with AND). Connection events (``connected``,
``heartbeat``, ``reset``) always pass. A ``tools`` (``servers``, ``workflow_id``) filter passes an
event that names no tool (server, workflow): ``metrics_updated`` and ``graph_synced`` name none,
so a dashboard following one server still gets them. Patterns are comma lists where ``*``
matches any run of characters; a server nobody knows is fine (it matches nothing yet), but an
empty, blank or control-character pattern is refused, naming the parameter.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from starlette.datastructures import QueryParams

from graphrag.events import EVENT_TYPES, FILTERABLE_EVENT_TYPES

from pml_gateway.events.wire import Frame

#: Every query parameter a stream accepts (anything else is a 400 naming it).
QUERY_PARAMETERS = ("types", "tools", "servers", "workflow_id", "last_event_id")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class StreamRequestError(Exception):
    """A request a stream refuses before opening: answered as JSON ``body`` with ``status``."""

    def __init__(self, status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> None:
        super().__init__(body.get("error"))
        self.status = status
        self.body = body
        self.headers = headers


def _bad(parameter: str, message: str, **extra: object) -> StreamRequestError:
    return StreamRequestError(400, {"error": message, "parameter": parameter, **extra})


@dataclass(frozen=True, slots=True)
class EventFilter:
    """The events one client wants; ``None`` fields do not filter."""

    types: frozenset[str] | None = None
    tools: re.Pattern[str] | None = None
    servers: re.Pattern[str] | None = None
    workflow_ids: re.Pattern[str] | None = None
    #: [auth] A profile's view: its tools' events only, its tools in the metrics (``None``: all).
    view: Callable[[Frame], Frame | None] | None = None

    def apply(self, frame: Frame) -> Frame | None:
        """The frame as this client gets it, or None when it does not pass."""
        if not self.passes(frame):
            return None
        if self.view is None or frame.always:
            return frame
        return self.view(frame)

    def passes(self, frame: Frame) -> bool:
        if frame.always:
            return True
        if self.types is not None and frame.type not in self.types:
            return False
        tools = self.tools
        if tools is not None and frame.tools and not any(tools.fullmatch(tool) for tool in frame.tools):
            return False
        servers = self.servers
        if servers is not None and (frame.tools or frame.servers):
            if not any(servers.fullmatch(server) for server in frame.servers):
                return False
        workflows = self.workflow_ids
        if workflows is not None and frame.workflow_id is not None and not workflows.fullmatch(frame.workflow_id):
            return False
        return True


def _items(parameter: str, values: Iterable[str]) -> list[str]:
    """The comma-separated items of every occurrence of a parameter; malformed ones refused."""
    items: list[str] = []
    for value in values:
        for item in value.split(","):
            if _CONTROL.search(item):
                raise _bad(parameter, f"{parameter} contains a control character: {item!r}")
            if not item.strip():
                raise _bad(parameter, f"{parameter} has an empty or blank item: name at least one, separated by commas")
            if item != item.strip():
                raise _bad(parameter, f"{parameter} item {item!r} has leading or trailing whitespace")
            items.append(item)
    return items


def _pattern(items: list[str]) -> re.Pattern[str]:
    """One regular expression matching any of the ``*`` patterns, whole strings only."""
    return re.compile("|".join(re.escape(item).replace(r"\*", ".*") for item in items), re.DOTALL)


def parse_types(values: Iterable[str]) -> frozenset[str] | None:
    """``edge_*,metrics_updated`` -> the filterable types to send (None: all of them).

    A trailing ``*`` matches a prefix. ``connected``, ``heartbeat`` and ``reset`` always come, so
    naming them is allowed and changes nothing.
    """
    selected: set[str] = set()
    unknown: list[str] = []
    for name in (part.strip() for value in values for part in value.split(",")):
        if not name:
            continue
        if name.endswith("*"):
            matches = {t for t in EVENT_TYPES if t.startswith(name[:-1])}
            if not matches:
                unknown.append(name)
            selected |= matches
        elif name in EVENT_TYPES:
            selected.add(name)
        else:
            unknown.append(name)
    if unknown:
        raise _bad(
            "types",
            f"Unknown event type in types: {', '.join(unknown)}",
            unknown=unknown,
            known=sorted(EVENT_TYPES),
        )
    if not selected:
        raise _bad("types", "types is empty: name at least one event type")
    if selected >= FILTERABLE_EVENT_TYPES:
        return None
    return frozenset(selected & FILTERABLE_EVENT_TYPES)


MAX_EVENT_ID_DIGITS = 19


def parse_event_id(value: str, source: str) -> int | None:
    value = value.strip()
    if not value:
        return None  # an empty Last-Event-ID means "none" (EventSource before its first id)
    # ASCII digits only ("²" and Arabic-Indic digits pass str.isdigit), and at most 19 of them
    # (ids are below 2**63): a 5,000-digit id is refused, not converted.
    if not (value.isascii() and value.isdigit()) or len(value) > MAX_EVENT_ID_DIGITS:
        raise _bad(source, f"{source} must be a non-negative integer event id, got {value[:40]!r}")
    return int(value)


def parse_query(params: QueryParams, last_event_id_header: str | None) -> tuple[EventFilter | None, int | None]:
    """The filter (None: everything) and the replay point of a stream request."""
    unknown = [key for key in params.keys() if key not in QUERY_PARAMETERS]
    if unknown:
        raise _bad(unknown[0], f"Unknown query parameter: {', '.join(unknown)}", allowed=list(QUERY_PARAMETERS))
    types = parse_types(params.getlist("types")) if "types" in params else None
    patterns = {
        name: _pattern(_items(name, params.getlist(name))) if name in params else None
        for name in ("tools", "servers", "workflow_id")
    }
    ids = params.getlist("last_event_id")
    if len(ids) > 1:
        raise _bad("last_event_id", "last_event_id is given more than once")
    last_event_id = parse_event_id(ids[0], "last_event_id") if ids else None
    # The header is what EventSource sends on reconnect: newer than the URL it was opened with.
    if last_event_id_header is not None:
        from_header = parse_event_id(last_event_id_header, "Last-Event-ID")
        if from_header is not None:
            last_event_id = from_header
    event_filter = EventFilter(types, patterns["tools"], patterns["servers"], patterns["workflow_id"])
    if event_filter == EventFilter():
        return None, last_event_id
    return event_filter, last_event_id


def with_view(event_filter: EventFilter | None, view: Callable[[Frame], Frame | None] | None) -> EventFilter | None:
    """``event_filter`` that also applies ``view`` (a profile's) to what passes."""
    if view is None:
        return event_filter
    return replace(event_filter, view=view) if event_filter is not None else EventFilter(view=view)
