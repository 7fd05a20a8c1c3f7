"""``GET /events/stream``: the Server-Sent Events endpoint, and the manager behind it.

One connection is: a ``connected`` frame (with a ``retry:`` hint), then the replay asked for with
``Last-Event-ID`` / ``?last_event_id=`` (or a ``reset``), then live events from the hub until the
client leaves, is dropped for being slow, or the process shuts down. The heartbeat is one frame
for everyone, made once per ``heartbeat_seconds`` and broadcast through the hub.

The wire bytes come ready-made from the hub (serialised once per event). Two ways to carry them:

- ``"direct"`` (the default): a small ASGI response. The request's task sends the headers and the
  replay, then only waits for the disconnect; the hub pushes live chunks to a ``_ServerSink``,
  which writes them with the server's own ``send`` from one flush callback per burst of events:
  no task wakes up per client and event.
- ``"sse-starlette"``: sse-starlette's ``EventSourceResponse`` around a generator that pulls
  ``next_chunk()``: per connection a task group of three tasks, every event waking a task that
  resumes the whole middleware stack, every send wrapped in a cancel scope. bench/sse_fanout.py
  measured it at about twice the CPU per delivered event and twice the memory per idle client of
  the direct response, so it is kept only as the reference the benchmark compares against.

Both send the same bytes and the same headers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from typing import Any, Literal

import anyio
from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from sse_starlette.sse import AppStatus
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from graphrag.events import EVENT_TYPES, GRAPH_EVENT_TYPES, ConnectedData, HeartbeatData

from pml_gateway.auth import PROFILE_SCOPE_KEY, Profile, current_principal
from pml_gateway.events.hub import (
    CloseReason,
    EventHub,
    Frame,
    FrameView,
    HubClosed,
    HubStats,
    Subscription,
    decode_frame,
    encode_event,
    encode_payload,
)
from pml_gateway.settings import Settings

log = logging.getLogger(__name__)

#: The ``retry:`` hint of the ``connected`` frame: how long EventSource waits before reconnecting.
RETRY_MS = 3000
#: ``Retry-After`` on a 503.
RETRY_AFTER_SECONDS = 5
QUERY_PARAMETERS = ("types", "last_event_id")
#: What sse-starlette sends too: no caching, no proxy buffering.
STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]
ResponseKind = Literal["direct", "sse-starlette"]
#: Scope key under which the app (``pml_gateway.app.GatewayApp``) puts the server's own ``send``.
SERVER_SEND = "pml.server_send"


class StreamRequestError(Exception):
    """A request the stream refuses before opening: answered as JSON with ``status``."""

    def __init__(self, status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> None:
        super().__init__(body.get("error"))
        self.status = status
        self.body = body
        self.headers = headers

    def response(self) -> Response:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


def parse_types(values: Iterable[str]) -> frozenset[str] | None:
    """``?types=edge_*,metrics_updated`` -> the graph event types to send (None: all of them).

    A trailing ``*`` matches a prefix. ``connected``, ``heartbeat`` and ``reset`` always come, so
    naming them is allowed and changes nothing.
    """
    selected: set[str] = set()
    unknown: list[str] = []
    seen_any = False
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if not name:
                continue
            seen_any = True
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
        raise StreamRequestError(
            400,
            {
                "error": f"Unknown event type in types: {', '.join(unknown)}",
                "parameter": "types",
                "unknown": unknown,
                "known": sorted(EVENT_TYPES),
            },
        )
    if not seen_any:
        raise StreamRequestError(400, {"error": "types is empty: name at least one event type", "parameter": "types"})
    if selected >= GRAPH_EVENT_TYPES:
        return None
    return frozenset(selected & GRAPH_EVENT_TYPES)


def parse_event_id(value: str, source: str) -> int | None:
    value = value.strip()
    if not value:
        return None  # an empty Last-Event-ID means "none" (EventSource before its first id)
    if not value.isdigit():
        raise StreamRequestError(
            400, {"error": f"{source} must be a non-negative integer event id, got {value!r}", "parameter": source}
        )
    return int(value)


def parse_request(request: Request) -> tuple[frozenset[str] | None, int | None]:
    """Filter and replay point of a stream request; ``StreamRequestError`` on anything unknown."""
    params = request.query_params
    unknown = [key for key in params.keys() if key not in QUERY_PARAMETERS]
    if unknown:
        raise StreamRequestError(
            400,
            {
                "error": f"Unknown query parameter: {', '.join(unknown)}",
                "parameter": unknown[0],
                "allowed": list(QUERY_PARAMETERS),
            },
        )
    types = parse_types(params.getlist("types")) if "types" in params else None
    ids = params.getlist("last_event_id")
    if len(ids) > 1:
        raise StreamRequestError(400, {"error": "last_event_id is given more than once", "parameter": "last_event_id"})
    last_event_id = parse_event_id(ids[0], "last_event_id") if ids else None
    # The header is what EventSource sends on reconnect: newer than the URL it was opened with.
    header = request.headers.get("last-event-id")
    if header is not None:
        from_header = parse_event_id(header, "Last-Event-ID")
        if from_header is not None:
            last_event_id = from_header
    return types, last_event_id


def profile_view(profile: Profile | None) -> FrameView | None:
    """[auth] A profile's view of the stream: events about its tools only, its tools in the metrics."""
    if not isinstance(profile, Profile):
        return None

    def view(frame: Frame) -> Frame | None:
        event = decode_frame(frame)
        seen = profile.filter_event(event)
        if seen is None:
            return None
        return frame if seen is event else encode_event(seen)

    return view


class EventsStats(HubStats):
    """``GET /events/stats``: the hub's counters, the client limit and the uptime."""

    max_clients: int
    uptime_seconds: float


class EventsStreamManager:
    """The ASGI endpoint of ``GET /events/stream`` and the stream's heartbeat.

    Built with the app; bound to the hub once the lifespan has one (``bind``); ``close`` ends
    every open stream and refuses new ones (shutdown).
    """

    def __init__(self, settings: Settings, *, response: ResponseKind = "direct") -> None:
        self.settings = settings
        self.response_kind = response
        self._hub: EventHub | None = None
        self._started_at = time.time()
        self._closing = False

    @property
    def hub(self) -> EventHub:
        if self._hub is None:
            raise RuntimeError("the event stream is not bound to a hub yet")
        return self._hub

    def bind(self, hub: EventHub, *, started_at: float) -> None:
        self._hub = hub
        self._started_at = started_at
        self._closing = False

    def uptime_seconds(self) -> float:
        return round(max(0.0, time.time() - self._started_at), 3)

    async def run_heartbeat(self) -> None:
        """Broadcast one ``heartbeat`` every ``heartbeat_seconds`` until cancelled."""
        while True:
            await anyio.sleep(self.settings.heartbeat_seconds)
            hub = self.hub
            if hub.connected_clients:
                payload = HeartbeatData(connected_clients=hub.connected_clients, uptime_seconds=self.uptime_seconds())
                hub.broadcast(encode_payload(payload))

    async def watch_exit_signal(self) -> None:
        """End the streams on SIGINT/SIGTERM under any uvicorn runner, not only ``GatewayServer``.

        sse-starlette patches uvicorn's signal handler to set ``AppStatus.should_exit``; uvicorn
        itself would wait for the open streams before telling the app anything.
        """
        while not AppStatus.should_exit:
            await anyio.sleep(0.5)
        self.close()

    def close(self) -> None:
        """End every open stream cleanly (each gets its final chunk) and refuse new ones."""
        self._closing = True
        if self._hub is not None:
            self._hub.close()

    def stats(self) -> EventsStats:
        return EventsStats(
            **self.hub.stats().model_dump(), max_clients=self.settings.max_clients, uptime_seconds=self.uptime_seconds()
        )

    # -- the endpoint ---------------------------------------------------------------------
    def _check_open(self) -> EventHub:
        if self._hub is None or self._closing:
            raise StreamRequestError(
                503, {"error": "Shutting down"}, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
            )
        if self._hub.connected_clients >= self.settings.max_clients:
            raise StreamRequestError(
                503,
                {"error": "Too many clients", "max": self.settings.max_clients},
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        return self._hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            # Parsed from a Request that is not kept: this frame lives as long as the stream.
            types, last_event_id = parse_request(Request(scope))
            hub = self._check_open()
            if scope["method"] == "HEAD":
                # The headers a GET would get, and no stream, no subscription.
                await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            view = profile_view(scope.get(PROFILE_SCOPE_KEY))  # [auth] a profile sees only its tools' events
            lifetime = credential_lifetime(scope)  # [auth] the stream ends when its credential does
            subscription = hub.subscribe(types=types, last_event_id=last_event_id, view=view)
        except HubClosed:
            await StreamRequestError(503, {"error": "Shutting down"}, {"Retry-After": str(RETRY_AFTER_SECONDS)}).response()(
                scope, receive, send
            )
            return
        except StreamRequestError as refused:
            await refused.response()(scope, receive, send)
            return

        connected = encode_payload(
            ConnectedData(
                client_id=subscription.client_id,
                connected_clients=hub.connected_clients,
                last_event_id=subscription.seam_id,
            ),
            retry_ms=RETRY_MS,
        )
        log.debug("stream client %s connected (types=%s, last_event_id=%s)", subscription.client_id, types, last_event_id)
        started: list[bool] = []
        with anyio.CancelScope() as cancel_scope:
            # A client dropped for being slow may be stuck in a send that never completes:
            # cancelling the response is the only way to free it.
            subscription.on_forced_close = cancel_scope.cancel
            if lifetime is not None:
                cancel_scope.deadline = anyio.current_time() + lifetime
                send = _noting_start(send, started)
            try:
                if self.response_kind == "direct":
                    await _stream(subscription, connected, scope, receive, send, cancel_scope.cancel)
                else:
                    # The heartbeat comes through the hub, so sse-starlette's own ping is off.
                    response = EventSourceResponse(_frames(subscription, connected), ping=0, sep="\n")
                    await response(scope, receive, send)
            finally:
                subscription.close()
                log.debug("stream client %s gone (%s)", subscription.client_id, subscription.close_reason)
        if started and cancel_scope.cancelled_caught and anyio.current_time() >= cancel_scope.deadline:
            # [auth] the credential expired: end the body cleanly; the client reconnects with a new one
            with anyio.move_on_after(1):
                await send({"type": "http.response.body", "body": b"", "more_body": False})


def credential_lifetime(scope: Scope) -> float | None:
    """[auth] Seconds the request's credential stays valid (None: it does not expire); refused if none left."""
    principal = current_principal(scope)
    if principal is None or principal.expires_at is None:
        return None
    left = principal.expires_at - time.time()
    if left <= 0:
        raise StreamRequestError(401, {"error": "the credential has expired: get a new one"})
    return left


def _noting_start(send: Send, started: list[bool]) -> Send:
    async def noting(message: Message) -> None:
        if message["type"] == "http.response.start":
            started.append(True)
        await send(message)

    return noting


async def _stream(
    subscription: Subscription, connected: bytes, scope: Scope, receive: Receive, send: Send, end: Callable[[], None]
) -> None:
    """The direct response: headers, replay, then the hub pushes live chunks to a ``_ServerSink``.

    This task only waits for the disconnect. Body chunks go to the server's own ``send`` when the
    app put it in the scope (``GatewayApp``): this app's middleware only looks at response starts.
    The start message still goes through it: CORS adds its headers there. ``end()`` cancels this
    task (its caller's cancel scope) when the stream is ended from the hub's side.
    """
    await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
    body_send: Send = scope.get(SERVER_SEND, send)
    await body_send(_body(connected))
    async for chunk in subscription.replay():
        await body_send(_body(chunk))
    sink = _ServerSink(subscription, body_send, end)
    subscription.attach(sink)
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    finally:
        sink.abort()


class _ServerSink:
    """Writes pushed chunks with the ASGI ``send``, synchronously when it does not have to wait.

    uvicorn's ``send`` only suspends when the connection's buffers are full (flow control). So a
    write first runs the ``send`` coroutine one step by hand: usually it finishes right there,
    with no task and no wake-up. When it suspends instead, a task finishes it (``_Resume``) and
    tells the subscription to ``resume()``; meanwhile the client's queue in the hub fills up.
    """

    __slots__ = ("_subscription", "_send", "_end", "_waiting")

    def __init__(self, subscription: Subscription, send: Send, end: Callable[[], None]) -> None:
        self._subscription = subscription
        self._send = send
        self._end = end
        self._waiting: asyncio.Task[None] | None = None

    def write(self, chunk: bytes) -> bool:
        return self._start({"type": "http.response.body", "body": chunk, "more_body": True})

    def _start(self, message: Message) -> bool:
        step = self._send(message)
        try:
            pending = step.send(None)  # type: ignore[attr-defined]
        except StopIteration:
            return True
        self._waiting = asyncio.get_running_loop().create_task(self._finish(_Resume(step, pending)))
        return False

    async def _finish(self, rest: _Resume) -> None:
        try:
            await rest
        except Exception:
            log.exception("event stream client %s failed", self._subscription.client_id)
            self._waiting = None
            self._subscription.close()
            return
        self._waiting = None
        self._subscription.resume()

    def close(self, reason: CloseReason) -> None:
        if reason is CloseReason.SHUTDOWN and self._waiting is None:
            self._start({"type": "http.response.body", "body": b"", "more_body": False})  # a clean end
        self._end()  # stop the response's task (a no-op when it is the one leaving)

    def abort(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()


class _Resume:
    """Awaitable that finishes a coroutine which already ran up to its first suspension.

    The coroutine yielded ``pending`` (the future it waits for); a task awaiting this object
    waits for that future, then drives the coroutine on, exactly as if it had awaited it itself.
    """

    __slots__ = ("_coroutine", "_pending")

    def __init__(self, coroutine: Any, pending: Any) -> None:
        self._coroutine = coroutine
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, None]:
        pending = self._pending
        while True:
            try:
                value = yield pending
            except BaseException as exc:  # cancellation included: the coroutine sees it
                try:
                    pending = self._coroutine.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    pending = self._coroutine.send(value)
                except StopIteration:
                    return


def _body(chunk: bytes) -> Message:
    return {"type": "http.response.body", "body": chunk, "more_body": True}


async def _frames(subscription: Subscription, connected: bytes) -> AsyncIterator[bytes]:
    yield connected
    async for chunk in subscription.replay():
        yield chunk
    while (chunk := await subscription.next_chunk()) is not None:
        if chunk:
            yield chunk

