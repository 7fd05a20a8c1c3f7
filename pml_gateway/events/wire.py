"""The event stream's wire format, in one place: frames, headers, connection frames, comments.

Every event is turned into a ``Frame`` ONCE, when it is published (or read back from the log for
a replay), and that frame is shared by every client. The SSE bytes are made by sse-starlette's
own ``ServerSentEvent.encode()`` (the library made for the format; ``id`` must be a ``str`` and
``sep`` is ``"\\n"``: SDK_NOTES §6). The WebSocket message of the same event
(``{"id", "type", "data"}``) is made on first use and shared the same way, and so is the SSE
frame as one chunk of a chunked HTTP/1.1 body (``http_chunk``: what a stream handed over from
uvicorn writes itself, events/stream.py).

A frame also carries what filters look at, computed once here, so that filtering costs an
unfiltered client nothing: the tool ids the event names, the servers of those tools (through the
``ServerOf`` resolver the hub is given: graphrag never parses tool names), and its workflow id.

The MCP endpoint's fast path answers long calls with an SSE stream too (``MCP_SSE_HEADERS``,
``mcp_message``, ``PING``): those mirror what the MCP SDK's Streamable HTTP transport sends, so
they keep its headers and ``\\r\\n`` separator.
"""

from __future__ import annotations

from collections.abc import Callable

from sse_starlette import ServerSentEvent

from graphrag import GraphEvent
from graphrag.events import EventPayload

__all__ = [
    "MCP_SSE_HEADERS",
    "PING",
    "RETRY_MS",
    "STREAM_HEADERS",
    "Frame",
    "ServerOf",
    "comment",
    "encode_event",
    "encode_payload",
    "mcp_message",
]

#: The ``retry:`` hint of the ``connected`` frame: how long EventSource waits before reconnecting.
RETRY_MS = 3000
#: ``GET /events/stream``'s headers (what sse-starlette's response sends too): no caching, no
#: proxy buffering.
STREAM_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]
#: An SSE answer on ``/mcp``: the headers the MCP SDK's Streamable HTTP transport sends.
MCP_SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]

#: Tool id -> the server it belongs to (None when unknown).
ServerOf = Callable[[str], "str | None"]


def _no_server(tool_id: str) -> str | None:
    return None


class Frame:
    """One event as it goes on the wire: made once, shared by every client and every filter."""

    __slots__ = ("type", "id", "sse", "data_json", "always", "tools", "server", "servers", "workflow_id", "_ws", "_chunk")

    def __init__(
        self,
        type: str,
        id: int | None,
        sse: bytes,
        data_json: str,
        *,
        always: bool = False,
        tools: frozenset[str] = frozenset(),
        server: str | None = None,
        servers: frozenset[str] = frozenset(),
        workflow_id: str | None = None,
    ) -> None:
        self.type = type
        self.id = id
        self.sse = sse
        self.data_json = data_json
        #: A connection event (``connected``, ``heartbeat``, ``reset``): passes every filter.
        self.always = always
        self.tools = tools
        #: The server the event names itself (``tool_added``'s, ``tool_forgotten``'s), if any.
        self.server = server
        #: ``server`` and the servers of ``tools``, as far as the gateway knows them (``?servers=``).
        self.servers = servers
        self.workflow_id = workflow_id
        self._ws: str | None = None
        self._chunk: bytes | None = None

    def http_chunk(self) -> bytes:
        """The SSE bytes as one chunk of a chunked HTTP/1.1 body (what uvicorn would write)."""
        chunk = self._chunk
        if chunk is None:
            sse = self.sse
            chunk = self._chunk = b"%x\r\n%b\r\n" % (len(sse), sse)
        return chunk

    def ws_text(self) -> str:
        """The WebSocket message: ``{"id": 42, "type": "edge_created", "data": {...}}``."""
        text = self._ws
        if text is None:
            # The type is a plain identifier and data_json is already JSON: no re-serialisation.
            ident = "null" if self.id is None else str(self.id)
            text = self._ws = f'{{"id":{ident},"type":"{self.type}","data":{self.data_json}}}'
        return text

    def __repr__(self) -> str:
        return f"Frame({self.type!r}, id={self.id})"


def _frame(payload: EventPayload, id: int | None, data_json: str, server_of: ServerOf, retry_ms: int | None = None) -> Frame:
    sse = ServerSentEvent(
        data=data_json, event=payload.event_type, id=None if id is None else str(id), retry=retry_ms, sep="\n"
    ).encode()
    if payload.per_connection:
        return Frame(payload.event_type, None, sse, data_json, always=True)
    tools = payload.named_tools()
    servers = {server for server in map(server_of, tools) if server is not None}
    own = payload.named_server()
    if own is not None:
        servers.add(own)
    return Frame(
        payload.event_type,
        id,
        sse,
        data_json,
        tools=frozenset(tools),
        server=own,
        servers=frozenset(servers),
        workflow_id=payload.named_workflow(),
    )


def encode_event(event: GraphEvent, server_of: ServerOf = _no_server) -> Frame:
    """A graph event (``id:`` line) or a live one (``workflow_progress``: no ``id:``)."""
    return _frame(event.data, event.id, event.data_json(), server_of)


def encode_payload(payload: EventPayload, *, retry_ms: int | None = None) -> Frame:
    """A connection event (``connected``, ``heartbeat``, ``reset``): never an ``id:`` line."""
    return _frame(payload, None, payload.model_dump_json(), _no_server, retry_ms)


def comment(text: str) -> bytes:
    """An SSE comment block (``: text``), ignored by clients: a keep-alive."""
    return ServerSentEvent(comment=text).encode()


#: The fast path's keep-alive while a long call runs (``\r\n``, as the SDK's responses).
PING = comment("ping")


def mcp_message(data_json: str) -> bytes:
    """A JSON-RPC message as an ``event: message`` SSE frame on ``/mcp`` (the SDK's framing)."""
    return ServerSentEvent(data=data_json, event="message").encode()
