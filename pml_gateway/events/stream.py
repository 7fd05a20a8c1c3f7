"""``GET /events/stream`` (Server-Sent Events) and ``GET /events/ws`` (WebSocket), and the manager behind them.

One connection is: a ``connected`` frame (with a ``retry:`` hint on SSE), then the replay asked
for with ``Last-Event-ID`` / ``?last_event_id=`` (or a ``reset``), then live events from the hub
until the client leaves, is dropped for being slow, or the process shuts down. The heartbeat is
one frame for everyone, made once per ``heartbeat_seconds`` and broadcast through the hub.

Both endpoints are one code path with two encodings: the same query parsing and filters
(``filters.py``), the same admission (``max_clients``), the same hub subscription (one replay
path), and the same ``_AsgiSink``, which writes each pushed batch of frames with the server's own
``send`` from the hub's flush callback (no task wakes up per client and event). SSE sends the
frames' bytes joined in one body chunk; WebSocket sends one text message per frame.

One shutdown path: ``EventsStreamManager.close()`` closes the hub, which ends every subscription
through its sink (``Sink.close(SHUTDOWN)``: the last empty chunk of the SSE response, a 1001 close
of the WebSocket). The server calls it as soon as shutdown begins (``server.GatewayServer``);
the app's lifespan calls it again on its way out (a no-op by then, or the only call when the app
runs under another server). A client that is dropped for being slow, or leaves, ends through
the same sink.

sse-starlette's per-client ``EventSourceResponse`` (a task group per connection, a task woken
per event) is what this replaced; it lives on in bench/sse_fanout.py as the baseline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Generator
from typing import Any

import anyio
from starlette.datastructures import QueryParams
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from graphrag import GraphEvent
from graphrag.events import ConnectedData, HeartbeatData

from pml_gateway.auth import PROFILE_SCOPE_KEY, Profile, current_principal
from pml_gateway.events.filters import EventFilter, StreamRequestError, parse_query, with_view
from pml_gateway.events.hub import CloseReason, EventHub, HubClosed, HubStats, Subscription
from pml_gateway.events.wire import RETRY_MS, STREAM_HEADERS, Frame, encode_event, encode_payload
from pml_gateway.settings import Settings

log = logging.getLogger(__name__)

#: ``Retry-After`` on a 503.
RETRY_AFTER_SECONDS = 5
#: Scope key under which the app (``pml_gateway.app.GatewayApp``) puts the server's own ``send``.
SERVER_SEND = "pml.server_send"
#: WebSocket close codes: the server is going away; a request refused (no HTTP denial support).
WS_GOING_AWAY = 1001
WS_POLICY_VIOLATION = 1008

Encoder = Callable[[list[Frame]], list[Message]]


def _sse_messages(frames: list[Frame]) -> list[Message]:
    body = frames[0].sse if len(frames) == 1 else b"".join(frame.sse for frame in frames)
    return [{"type": "http.response.body", "body": body, "more_body": True}]


def _ws_messages(frames: list[Frame]) -> list[Message]:
    return [{"type": "websocket.send", "text": frame.ws_text()} for frame in frames]


_SSE_END: Message = {"type": "http.response.body", "body": b"", "more_body": False}
_WS_END: Message = {"type": "websocket.close", "code": WS_GOING_AWAY, "reason": "server shutting down"}


def _refusal(refused: StreamRequestError) -> JSONResponse:
    return JSONResponse(refused.body, status_code=refused.status, headers=refused.headers)


class EventsStats(HubStats):
    """``GET /events/stats``: the hub's counters, the client limit and the uptime."""

    max_clients: int
    uptime_seconds: float


class EventsStreamManager:
    """The endpoints of ``/events/stream`` (``__call__``) and ``/events/ws`` (``websocket``), and the heartbeat.

    Built with the app; bound to the hub once the lifespan has one (``bind``); ``close`` ends
    every open stream and refuses new ones (shutdown).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: The ASGI app of ``/events/ws`` (a route given a method would call it with a WebSocket).
        self.websocket_app = _WebSocketApp(self)
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

    def close(self) -> None:
        """The one shutdown path: end every open stream cleanly and refuse new ones (idempotent)."""
        self._closing = True
        if self._hub is not None:
            self._hub.close()

    def stats(self) -> EventsStats:
        return EventsStats(
            **self.hub.stats().model_dump(), max_clients=self.settings.max_clients, uptime_seconds=self.uptime_seconds()
        )

    # -- admission (both endpoints) -------------------------------------------------------
    def _admit(
        self, scope: Scope, params: QueryParams, last_event_id_header: str | None
    ) -> tuple[EventHub, EventFilter | None, int | None]:
        """Parse the request and check the limits; ``StreamRequestError`` says why not."""
        event_filter, last_event_id = parse_query(params, last_event_id_header)
        # [auth] a profile sees only its tools' events
        event_filter = with_view(event_filter, profile_view(scope.get(PROFILE_SCOPE_KEY)))
        shutting_down = {"error": "Shutting down"}
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        if self._hub is None or self._closing:
            raise StreamRequestError(503, shutting_down, retry)
        if self._hub.connected_clients >= self.settings.max_clients:
            raise StreamRequestError(503, {"error": "Too many clients", "max": self.settings.max_clients}, retry)
        return self._hub, event_filter, last_event_id

    def _subscribe(self, hub: EventHub, event_filter: EventFilter | None, last_event_id: int | None) -> Subscription:
        try:
            return hub.subscribe(event_filter=event_filter, last_event_id=last_event_id)
        except HubClosed:
            raise StreamRequestError(503, {"error": "Shutting down"}, {"Retry-After": str(RETRY_AFTER_SECONDS)}) from None

    @staticmethod
    def _connected(hub: EventHub, subscription: Subscription) -> Frame:
        payload = ConnectedData(
            client_id=subscription.client_id, connected_clients=hub.connected_clients, last_event_id=subscription.seam_id
        )
        return encode_payload(payload, retry_ms=RETRY_MS)

    # -- GET /events/stream -----------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        last_event_id_header = headers.get(b"last-event-id")
        try:
            hub, event_filter, last_event_id = self._admit(
                scope,
                QueryParams(scope["query_string"]),
                None if last_event_id_header is None else last_event_id_header.decode("latin-1"),
            )
            lifetime = credential_lifetime(scope)
            if scope["method"] == "HEAD":
                # The headers a GET would get, and no stream, no subscription.
                await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            subscription = self._subscribe(hub, event_filter, last_event_id)
        except StreamRequestError as refused:
            await _refusal(refused)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
        # Body chunks go to the server's own send when the app put it in the scope (GatewayApp):
        # this app's middleware only looks at response starts (CORS adds its headers there).
        sink = _AsgiSink(subscription, scope.get(SERVER_SEND, send), _sse_messages, _SSE_END)
        await _serve(subscription, sink, self._connected(hub, subscription), receive, "http.disconnect", lifetime)

    # -- GET /events/ws -----------------------------------------------------------------------
    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        try:
            # Origin (browsers apply no CORS to WebSockets) is checked for every route: host_check.py
            hub, event_filter, last_event_id = self._admit(scope, websocket.query_params, None)
            lifetime = credential_lifetime(scope)
            subscription = self._subscribe(hub, event_filter, last_event_id)
        except StreamRequestError as refused:
            if "websocket.http.response" in scope.get("extensions", {}):
                await websocket.send_denial_response(_refusal(refused))  # the same JSON error as SSE
            else:
                await websocket.close(WS_POLICY_VIOLATION, str(refused.body["error"])[:120])
            return
        try:
            await websocket.accept()
        except BaseException:
            subscription.close()
            raise
        sink = _AsgiSink(subscription, send, _ws_messages, _WS_END)
        await _serve(subscription, sink, self._connected(hub, subscription), receive, "websocket.disconnect", lifetime)


class _WebSocketApp:
    __slots__ = ("_manager",)

    def __init__(self, manager: EventsStreamManager) -> None:
        self._manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._manager.websocket(scope, receive, send)


async def _serve(
    subscription: Subscription,
    sink: _AsgiSink,
    first: Frame,
    receive: Receive,
    disconnect: str,
    lifetime: float | None = None,
) -> None:
    """One connection after its start: the first frame, the replay, then live pushes until it ends.

    This task writes the replay itself, then only waits for the disconnect; the hub pushes live
    frames to the sink. Whatever ends the subscription (the client, the hub, the expiry of the
    credential it was opened with) ends here.
    """
    with anyio.CancelScope() as cancel_scope:
        if lifetime is not None:
            cancel_scope.deadline = anyio.current_time() + lifetime
        # A client dropped for being slow may be stuck in a send that never completes:
        # cancelling this task is the only way to free it.
        sink.end = cancel_scope.cancel
        subscription.attach(sink)
        try:
            await sink.send([first])
            del first  # not kept for the connection's lifetime (memory per idle client)
            async for frames in subscription.replay():
                await sink.send(frames)
            subscription.resume()
            while (await receive())["type"] != disconnect:
                pass
        finally:
            sink.abort()
            subscription.close()
            log.debug("stream client %s gone (%s)", subscription.client_id, subscription.close_reason)
    if lifetime is not None and cancel_scope.cancelled_caught and anyio.current_time() >= cancel_scope.deadline:
        # [auth] the credential expired: end cleanly; the client reconnects with a new one
        with anyio.move_on_after(1):
            await sink.finish()


class _AsgiSink:
    """Writes pushed frames with the ASGI ``send``, synchronously when it does not have to wait.

    uvicorn's ``send`` only suspends when the connection's buffers are full (flow control). So a
    write first runs each ``send`` coroutine one step by hand: usually it finishes right there,
    with no task and no wake-up. When one suspends instead, a task finishes it and the rest
    (``_Resume``) and tells the subscription to ``resume()``; meanwhile the client's queue in the
    hub fills up. ``send`` (awaited) is for the endpoint's own writes: the first frame and the replay.
    """

    __slots__ = ("_subscription", "_send", "_encode", "_final", "end", "_waiting", "_busy")

    def __init__(self, subscription: Subscription, send: Send, encode: Encoder, final: Message) -> None:
        self._subscription = subscription
        self._send = send
        self._encode = encode
        self._final = final
        #: Ends the connection's task (set by ``_serve``).
        self.end: Callable[[], None] = lambda: None
        self._waiting: asyncio.Task[None] | None = None
        self._busy = False  # the endpoint's task is in a send of its own

    async def send(self, frames: list[Frame]) -> None:
        self._busy = True
        try:
            for message in self._encode(frames):
                await self._send(message)
        finally:
            self._busy = False

    def write(self, frames: list[Frame]) -> bool:
        return self._start(self._encode(frames))

    def _start(self, messages: list[Message]) -> bool:
        for index, message in enumerate(messages):
            step = self._send(message)
            try:
                pending = step.send(None)  # type: ignore[attr-defined]
            except StopIteration:
                continue
            rest = messages[index + 1 :]
            self._waiting = asyncio.get_running_loop().create_task(self._finish(_Resume(step, pending), rest))
            return False
        return True

    async def _finish(self, step: _Resume, rest: list[Message]) -> None:
        try:
            await step
            for message in rest:
                await self._send(message)
        except Exception:
            log.exception("event stream client %s failed", self._subscription.client_id)
            self._waiting = None
            self._subscription.close()
            return
        self._waiting = None
        self._subscription.resume()

    def close(self, reason: CloseReason) -> None:
        if reason is CloseReason.SHUTDOWN and self._waiting is None and not self._busy:
            self._start([self._final])  # a clean end
        self.end()  # stop the connection's task (a no-op when it is the one leaving)

    def abort(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()

    async def finish(self) -> None:
        """The clean end of the connection (a last empty chunk, or a WebSocket close)."""
        try:
            await self._send(self._final)
        except Exception:  # the client is gone already
            pass


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


def profile_view(profile: object) -> Callable[[Frame], Frame | None] | None:
    """[auth] A profile's view of the stream: events about its tools only, its tools in the metrics."""
    if not isinstance(profile, Profile):
        return None

    def view(frame: Frame) -> Frame | None:
        event = GraphEvent.model_validate({"type": frame.type, "id": frame.id, "data": json.loads(frame.data_json)})
        seen = profile.filter_event(event)
        if seen is None:
            return None
        return frame if seen is event else encode_event(seen)

    return view


def credential_lifetime(scope: Scope) -> float | None:
    """[auth] Seconds the request's credential stays valid (None: it does not expire); refused if none left."""
    principal = current_principal(scope)
    if principal is None or principal.expires_at is None:
        return None
    left = principal.expires_at - time.time()
    if left <= 0:
        raise StreamRequestError(401, {"error": "the credential has expired: get a new one"})
    return left
