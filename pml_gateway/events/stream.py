"""``GET /events/stream`` (Server-Sent Events) and ``GET /events/ws`` (WebSocket), and the manager behind them.

One connection is: a ``connected`` frame (with a ``retry:`` hint on SSE), then the replay asked
for with ``Last-Event-ID`` / ``?last_event_id=`` (or a ``reset``), then live events from the hub
until the client leaves, is dropped for being slow, or the process shuts down. The heartbeat is
one frame for everyone, made once per ``heartbeat_seconds`` and broadcast through the hub.

Both endpoints are one code path with two encodings: the same query parsing and filters
(``filters.py``), the same admission (``max_clients``, ``max_streams_per_address``), the same hub
subscription (one replay path), and a sink the hub pushes to from its flush callback (no task
wakes up per client and event). SSE sends the frames' bytes joined in one body chunk; WebSocket
sends one text message per frame.

Under the gateway's own server (``pml_gateway.server``) an SSE connection is handed over from
uvicorn once its response has started (``DETACH``): ``_DetachedStream`` then owns the transport
and is the sink, so an open stream keeps no task, no request cycle and no middleware frames, and
a burst is one ``transport.write``; a slow client is aborted (its socket freed at once). Under
another server, and for WebSockets, ``_AsgiSink`` writes with the ASGI ``send`` instead.
Measured (bench/sse_fanout.py, bench/README.md, "Issue 17"): memory per idle SSE
client 18 KB -> 5.6 KB at 1,000 clients (2.8 KB at 10,000); server CPU per delivered frame at
1,000 clients 4.1 -> 2.3 µs (with the hub's paced flushes: 0.95 µs at 5,000 clients).

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
#: Scope key under which the gateway's own server (``pml_gateway.server``) offers to hand an HTTP
#: connection over once the response has started: ``detach(scope, protocol)`` moves the transport
#: to ``protocol`` (and calls its ``adopt(transport)``) and says whether it did.
DETACH = "pml.detach"
#: The last chunk of a chunked HTTP/1.1 body: the clean end of a detached stream.
_LAST_CHUNK = b"0\r\n\r\n"
#: The last burst written by a detached stream and its bytes: [frames, body] (see ``write``).
_BURST: list[Any] = [None, b""]
#: WebSocket close codes: the server is going away; a request refused (no HTTP denial support).
WS_GOING_AWAY = 1001
WS_POLICY_VIOLATION = 1008

Encoder = Callable[[list[Frame]], list[Message]]
Detach = Callable[[Scope, asyncio.Protocol], bool]


def _sse_messages(frames: list[Frame]) -> list[Message]:
    body = frames[0].sse if len(frames) == 1 else b"".join(frame.sse for frame in frames)
    return [{"type": "http.response.body", "body": body, "more_body": True}]


def _ws_messages(frames: list[Frame]) -> list[Message]:
    return [{"type": "websocket.send", "text": frame.ws_text()} for frame in frames]


_SSE_END: Message = {"type": "http.response.body", "body": b"", "more_body": False}
_WS_END: Message = {"type": "websocket.close", "code": WS_GOING_AWAY, "reason": "server shutting down"}


def _address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else ""


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
        #: Open streams per client address (``max_streams_per_address``): SSE and WebSocket together.
        self._per_address: dict[str, int] = {}

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
        per_address = self.settings.max_streams_per_address
        if self._per_address.get(_address(scope), 0) >= per_address:
            # One host cannot take every stream (slowloris, a runaway client): the others still get in.
            too_many = {"error": "Too many streams from this address", "max": per_address, "setting": "max_streams_per_address"}
            raise StreamRequestError(429, too_many, retry)
        return self._hub, event_filter, last_event_id

    def _hold(self, scope: Scope) -> Callable[[], None]:
        """Count an open stream against its address; the returned callable (idempotent) releases it."""
        address = _address(scope)
        counts = self._per_address
        counts[address] = counts.get(address, 0) + 1
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                if counts[address] <= 1:
                    del counts[address]
                else:
                    counts[address] -= 1

        return release

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
        release = self._hold(scope)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
        except BaseException:
            subscription.close()
            release()
            raise
        first = self._connected(hub, subscription)
        detach: Detach | None = scope.get(DETACH)
        if detach is not None:
            # The gateway's own server hands the connection over: no task stays per client.
            stream = _DetachedStream(subscription, release)
            if detach(scope, stream):
                await stream.start(first, lifetime)
                return
        # Under another server: body chunks go to the server's own send when the app put it in
        # the scope (GatewayApp): this app's middleware only looks at response starts.
        sink = _AsgiSink(subscription, scope.get(SERVER_SEND, send), _sse_messages, _SSE_END)
        await _serve(subscription, sink, first, receive, "http.disconnect", lifetime, release)

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
        release = self._hold(scope)
        try:
            await websocket.accept()
        except BaseException:
            subscription.close()
            release()
            raise
        sink = _AsgiSink(subscription, send, _ws_messages, _WS_END)
        await _serve(subscription, sink, self._connected(hub, subscription), receive, "websocket.disconnect", lifetime, release)


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
    lifetime: float | None,
    release: Callable[[], None],
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
            release()
            log.debug("stream client %s gone (%s)", subscription.client_id, subscription.close_reason)
    if lifetime is not None and cancel_scope.cancelled_caught and anyio.current_time() >= cancel_scope.deadline:
        # [auth] the credential expired: end cleanly; the client reconnects with a new one
        with anyio.move_on_after(1):
            await sink.finish()


class _DetachedStream(asyncio.Protocol):
    """An SSE connection once the server has handed it over: the hub writes to its transport.

    What stays per open stream is this object, the hub's subscription and the transport: no task,
    no ASGI request cycle, no middleware frames, no buffer of its own (the transport's buffer is
    the queue; the hub queues events only while the transport is paused). A burst of events is one
    ``transport.write`` of the events' HTTP chunks, each made once per event (``Frame.http_chunk``).

    The transport's flow control is the slow-client signal: ``pause_writing`` makes ``write``
    answer False (the hub queues, up to ``client_queue``), ``resume_writing`` resumes the hub.
    Every end goes through the transport: a clean one (shutdown, the credential expired) writes the
    last chunk and closes; a client dropped for being slow is aborted (RST: its socket and kernel
    send queue are freed at once, instead of waiting forever for a client that does not read).
    ``connection_lost`` then closes the subscription and releases the address's slot.
    """

    __slots__ = ("_subscription", "_release", "_transport", "_paused", "_live", "_drained", "_timer", "_connections")

    def __init__(self, subscription: Subscription, release: Callable[[], None]) -> None:
        self._subscription = subscription
        self._release = release
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._live = False  # the endpoint has written the replay: resume_writing resumes the hub
        self._drained: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._connections: set[Any] | None = None

    def adopt(self, transport: asyncio.Transport, connections: set[Any]) -> None:
        """Called by the server's detach: the connection is this object's from now on."""
        self._transport = transport
        self._connections = connections  # the server's open connections (limit, shutdown)

    async def start(self, first: Frame, lifetime: float | None) -> None:
        """Write the first frame and the replay (waiting while paused), then hand over to the hub."""
        subscription = self._subscription
        subscription.attach(self)
        if lifetime is not None:
            # [auth] the credential expires: end cleanly; the client reconnects with a new one
            self._timer = asyncio.get_running_loop().call_later(lifetime, self.shutdown)
        try:
            await self._write_waiting([first])
            async for frames in subscription.replay():
                if subscription.close_reason is not None:
                    return
                await self._write_waiting(frames)
        except BaseException:
            self.close(CloseReason.CLIENT)
            raise
        self._live = True
        subscription.resume()

    async def _write_waiting(self, frames: list[Frame]) -> None:
        if not self.write(frames) and self._subscription.close_reason is None:
            self._drained = asyncio.get_running_loop().create_future()
            try:
                await self._drained
            finally:
                self._drained = None

    # -- Sink (called by the hub) ---------------------------------------------------------
    def write(self, frames: list[Frame]) -> bool:
        transport = self._transport
        if transport is None or transport.is_closing():
            return True  # ended: connection_lost closes the subscription
        if len(frames) == 1:
            transport.write(frames[0].http_chunk())
        else:  # one write per burst; the hub hands every in-step client the same list: joined once
            burst = _BURST
            if burst[0] is not frames:
                burst[0], burst[1] = frames, b"".join([frame.http_chunk() for frame in frames])
            transport.write(burst[1])
        return not self._paused

    def close(self, reason: CloseReason) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if reason is CloseReason.SHUTDOWN:
            self.shutdown()
        else:
            transport.abort()

    # -- asyncio.Protocol (called by the transport) and the server's shutdown --------------
    def shutdown(self) -> None:
        """The clean end: the last chunk, then close once it is written."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(_LAST_CHUNK)
            transport.close()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None:
            if not self._drained.done():
                self._drained.set_result(None)
        elif self._live:
            self._subscription.resume()

    def data_received(self, data: bytes) -> None:
        pass  # a stream's request is complete: nothing more is expected, nothing is kept

    def connection_lost(self, exc: Exception | None) -> None:
        if self._connections is not None:
            self._connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._subscription.close()
        self._release()


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
        if frame.type != "metrics_updated":  # the frame knows the tools it names: nothing to decode
            return frame if profile.allows_event(frame.tools, frame.server) else None
        # its PageRank top list is cut to the profile's tools: a new frame (about once a second)
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
