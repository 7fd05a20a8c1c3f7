"""The event hub: between the engine, which produces events, and the stream clients.

The hub receives every ``GraphEvent`` once (it is an engine listener), serialises it ONCE to the
bytes that go on the wire, keeps the last ``replay_buffer`` of them, and offers them to every
subscriber's bounded queue. The broadcaster never awaits a client: offering is a bounds check and
a list append; a client whose queue is full is dropped (``clients_dropped_slow``) instead of
slowing everyone down.

Replay (``Last-Event-ID``) is gap-free and duplicate-free by construction: a subscriber is
registered for live events first, synchronously, and remembers the last id published at that
moment (its *seam*). Replay then covers ``(requested, seam]`` (from memory when the buffer still
holds it, else from the store's event log) and live delivery covers ``(seam, ...)``. Live frames
are also deduplicated by id, so a future hub that cannot register atomically stays correct.

A subscriber is consumed one of two ways. Pulled: a task awaits ``next_chunk()`` (one wake-up per
event per client). Pushed (``attach(sink)``): one flush callback per burst of events writes to
every client's ``Sink`` synchronously; only a client whose write cannot complete at once (it
reads slower than we write) is paused until its sink calls ``resume()``, and its queue fills
meanwhile. Pushing costs no task switch and no allocation that outlives the event per client.

``EventHub`` is the small interface the stream depends on; ``InProcessEventHub`` is the
single-process implementation. A Redis Streams hub (several gateway processes) implements the
same interface later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import anyio
from pydantic import BaseModel

from graphrag import GraphEvent, LogBounds
from graphrag.events import EventPayload, ResetData

log = logging.getLogger(__name__)

#: Replayed frames are sent in chunks of this many events (one write each).
REPLAY_CHUNK = 256
#: Events read from the store's log per query while replaying.
LOG_PAGE = 1000


# -- wire format ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Frame:
    """One event as it goes on the wire: serialised once, shared by every client."""

    type: str
    id: int | None
    wire: bytes


#: A subscriber's own view of each frame: the frame, another one for it, or None (not delivered).
FrameView = Callable[[Frame], "Frame | None"]


def encode_event(event: GraphEvent) -> Frame:
    """``id: N\\nevent: T\\ndata: {json}\\n\\n`` (no ``id:`` line for connection events)."""
    head = f"id: {event.id}\n" if event.id is not None else ""
    wire = f"{head}event: {event.type}\ndata: {event.data_json()}\n\n".encode()
    return Frame(event.type, event.id, wire)


def decode_frame(frame: Frame) -> GraphEvent:
    """The event back from its wire bytes (for a subscriber's ``view``; frames keep only bytes)."""
    data = frame.wire.rsplit(b"\ndata: ", 1)[1].rstrip(b"\n")
    return GraphEvent.model_validate({"type": frame.type, "id": frame.id, "data": json.loads(data)})


def encode_payload(payload: EventPayload, *, retry_ms: int | None = None) -> bytes:
    """A connection event (``connected``, ``heartbeat``, ``reset``): never an ``id:`` line."""
    retry = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    return f"event: {payload.event_type}\ndata: {payload.model_dump_json()}\n{retry}\n".encode()


# -- what the hub needs from the store ---------------------------------------------------------
class EventLog(Protocol):
    """The store's event log, as far as replay needs it (``graphrag.GraphStore`` satisfies it)."""

    def events_after(self, after_id: int, limit: int = 1000) -> list[GraphEvent]: ...

    def bounds(self) -> LogBounds: ...


class CloseReason(str, Enum):
    CLIENT = "client"  # the client went away, or the stream ended
    SLOW = "slow"  # its queue overflowed
    SHUTDOWN = "shutdown"  # the hub closed


class Sink(Protocol):
    """Where a pushed subscription writes (the stream's connection)."""

    def write(self, chunk: bytes) -> bool:
        """Write now; False if the write had to wait (then ``Subscription.resume()`` follows)."""
        ...

    def close(self, reason: CloseReason) -> None:
        """The subscription ended (unless ``reason`` is CLIENT, the sink ends the response)."""
        ...


class HubClosed(RuntimeError):
    """Subscribing to a hub that is shutting down."""


class HubStats(BaseModel):
    """The hub's counters (``GET /events/stats`` adds the process's own)."""

    connected_clients: int
    total_connections: int
    events_published: int
    events_delivered: int
    clients_dropped_slow: int
    last_event_id: int | None
    oldest_buffered_id: int | None


# -- the interface ---------------------------------------------------------------------------
class Subscription(ABC):
    """One client's view of the hub: a replay, then live chunks, until closed."""

    __slots__ = ()

    client_id: str
    #: The last event id published when the subscription was registered: replay ends here.
    seam_id: int | None
    #: Why it ended, once it did.
    close_reason: CloseReason | None
    #: Called when the hub drops the client while it is not waiting (it may be stuck in a send
    #: to a client that stopped reading): the stream cancels its response with it.
    on_forced_close: Callable[[], None] | None

    @abstractmethod
    def replay(self) -> AsyncIterator[bytes]:
        """Chunks of wire bytes: a ``reset`` frame, or the events after the requested id up to the seam."""

    @abstractmethod
    async def next_chunk(self) -> bytes | None:
        """Pull: the live frames queued since the last call, joined; waits for one; None once closed.

        May return ``b""`` (everything queued had been replayed already): send nothing then."""

    @abstractmethod
    def attach(self, sink: Sink) -> None:
        """Push from now on: queued and future chunks go to ``sink`` (after the replay)."""

    @abstractmethod
    def resume(self) -> None:
        """The sink's write that had to wait is done: push what queued meanwhile."""

    @abstractmethod
    def close(self) -> None:
        """Unregister (idempotent)."""


class EventHub(ABC):
    """Fan-out of graph events to stream subscribers, with a replay buffer."""

    @property
    @abstractmethod
    def connected_clients(self) -> int: ...

    @property
    @abstractmethod
    def last_event_id(self) -> int | None: ...

    @abstractmethod
    def publish(self, event: GraphEvent) -> None:
        """Hand one graph event (with its id) to every subscriber. Never blocks on a client."""

    @abstractmethod
    def broadcast(self, wire: bytes) -> None:
        """Hand connection-scoped bytes (the heartbeat) to every subscriber, unfiltered, unbuffered."""

    @abstractmethod
    def subscribe(
        self, *, types: frozenset[str] | None = None, last_event_id: int | None = None, view: FrameView | None = None
    ) -> Subscription:
        """Register a client now (live events from this moment on); replay from ``last_event_id``.

        ``view`` sees every graph frame (live and replayed) after the ``types`` filter."""

    @abstractmethod
    def stats(self) -> HubStats: ...

    @abstractmethod
    def close(self) -> None:
        """End every subscription and refuse new ones (process shutdown)."""


# -- the in-process implementation -----------------------------------------------------------
class _Subscriber(Subscription):
    __slots__ = (
        "client_id",
        "seam_id",
        "close_reason",
        "on_forced_close",
        "_hub",
        "_types",
        "_view",
        "_capacity",
        "_queue",
        "_waiter",
        "_requested",
        "_missed",
        "_last_sent_id",
        "_sink",
        "_paused",
        "_scheduled",
    )

    def __init__(
        self,
        hub: InProcessEventHub,
        *,
        types: frozenset[str] | None,
        capacity: int,
        requested: int | None,
        seam: int | None,
        missed: list[Frame] | None,
        view: FrameView | None = None,
    ) -> None:
        self.client_id = uuid.uuid4().hex[:16]
        self.seam_id = seam
        self.close_reason: CloseReason | None = None
        self.on_forced_close: Callable[[], None] | None = None
        self._hub = hub
        self._types = types
        self._view = view
        self._capacity = capacity
        # A list, not a deque: it is always drained whole, and an empty list is 10x smaller.
        self._queue: list[Frame | bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._requested = requested
        self._missed = missed  # replay taken from memory at registration; None: ask the log
        self._last_sent_id = seam if seam is not None else -1
        self._sink: Sink | None = None
        self._paused = False  # push: the sink is finishing a write that had to wait
        self._scheduled = False  # push: waiting for the hub's flush

    # Called by the hub, synchronously, for every frame. Never awaits.
    def _offer(self, item: Frame | bytes) -> None:
        if type(item) is Frame:
            if self._types is not None and item.type not in self._types:
                return
            if self._view is not None and (item := self._view(item)) is None:  # type: ignore[assignment]
                return
        if len(self._queue) >= self._capacity:
            if self._sink is not None and not self._paused:
                # A burst larger than the queue (one request ingesting many executions) from a
                # client that keeps up: write it out now rather than drop the client.
                self._push()
            if len(self._queue) >= self._capacity:
                self._hub._drop_slow(self)
                return
        self._queue.append(item)
        if self._sink is not None:
            if not self._scheduled and not self._paused:
                self._scheduled = True
                self._hub._schedule_flush(self)
        else:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _end(self, reason: CloseReason) -> None:
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self._queue = []
        if self._sink is not None:
            self._sink.close(reason)
            return
        waiter = self._waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)  # it was waiting: it wakes up and ends its stream itself
        elif reason is CloseReason.SLOW and self.on_forced_close is not None:
            self.on_forced_close()  # busy (maybe stuck writing to a client that stopped reading)

    # -- push -----------------------------------------------------------------------------
    def attach(self, sink: Sink) -> None:
        self._sink = sink
        if self.close_reason is not None:  # ended during the replay
            sink.close(self.close_reason)
        else:
            self._push()

    def resume(self) -> None:
        self._paused = False
        self._push()

    def _push(self) -> None:
        """Write what is queued, until the sink has to wait (called by the hub's flush)."""
        self._scheduled = False
        sink = self._sink
        while self._queue and not self._paused and self.close_reason is None and sink is not None:
            chunk = self._take()
            if chunk:
                try:
                    self._paused = not sink.write(chunk)
                except Exception:
                    log.exception("event stream client %s failed", self.client_id)
                    self.close()

    # -- pull -----------------------------------------------------------------------------
    async def next_chunk(self) -> bytes | None:
        while not self._queue:
            if self.close_reason is not None:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.close_reason is not None:
            return None
        return self._take()

    def _take(self) -> bytes:
        """Everything queued, joined; ids already sent (by the replay) skipped."""
        items, self._queue = self._queue, []
        last = self._last_sent_id
        if len(items) == 1:  # the common case: one event since the last write
            item = items[0]
            if type(item) is not Frame:
                return item  # type: ignore[return-value]
            if item.id is not None:
                if item.id <= last:
                    return b""
                self._last_sent_id = item.id
                self._hub._delivered += 1
            return item.wire
        parts: list[bytes] = []
        delivered = 0
        for item in items:
            if type(item) is Frame:
                if item.id is not None:
                    if item.id <= last:
                        continue
                    last = item.id
                    delivered += 1
                parts.append(item.wire)
            else:
                parts.append(item)  # type: ignore[arg-type]
        self._last_sent_id = last
        self._hub._delivered += delivered
        return b"".join(parts)

    async def replay(self) -> AsyncIterator[bytes]:
        requested, seam, hub = self._requested, self.seam_id, self._hub
        if requested is None or requested == seam:
            return
        if seam is None or requested > seam:
            # Beyond the last id: a Last-Event-ID from another history (the database was replaced).
            yield hub._reset_frame("unknown_event_id", requested)
            return
        if self._missed is not None:
            frames: Iterable[Frame] = self._missed
            self._missed = None
            for chunk in self._chunks(frames):
                yield chunk
            return
        # Older than the memory buffer: the store's log, while it still holds the id after it.
        bounds = await anyio.to_thread.run_sync(hub._log.bounds)
        if bounds.oldest_id is None or bounds.oldest_id > requested + 1:
            yield hub._reset_frame("evicted", requested, bounds.oldest_id)
            return
        cursor = requested
        while cursor < seam:
            events = await anyio.to_thread.run_sync(hub._log.events_after, cursor, LOG_PAGE)
            if not events:
                break
            cursor = events[-1].id or cursor
            frames = [encode_event(e) for e in events if e.id is not None and e.id <= seam]
            for chunk in self._chunks(frames):
                yield chunk
            if len(events) < LOG_PAGE:
                break

    def _chunks(self, frames: Iterable[Frame]) -> Iterable[bytes]:
        batch: list[bytes] = []
        types = self._types
        for frame in frames:
            if types is not None and frame.type not in types:
                continue
            if self._view is not None and (frame := self._view(frame)) is None:  # type: ignore[assignment]
                continue
            batch.append(frame.wire)
            self._hub._delivered += 1
            if len(batch) >= REPLAY_CHUNK:
                yield b"".join(batch)
                batch = []
        if batch:
            yield b"".join(batch)

    def close(self) -> None:
        self._hub._unsubscribe(self, CloseReason.CLIENT)


class InProcessEventHub(EventHub):
    """One process: events from this process's engine, subscribers in this process."""

    def __init__(self, log: EventLog, *, replay_buffer: int = 10_000, client_queue: int = 1_000) -> None:
        self._log = log
        self._client_queue = client_queue
        self._buffer: deque[Frame] = deque(maxlen=replay_buffer)
        bounds = log.bounds()
        self._last_id: int | None = bounds.last_id
        # Every event with an id above the floor is in memory; below it, ask the log.
        self._memory_floor: int = bounds.last_id or 0
        self._subscribers: dict[str, _Subscriber] = {}
        self._dirty: list[_Subscriber] = []  # pushed subscribers with something to write
        self._closed = False
        self._published = 0
        self._delivered = 0
        self._total_connections = 0
        self._dropped_slow = 0

    # -- producer side --------------------------------------------------------------------
    @property
    def connected_clients(self) -> int:
        return len(self._subscribers)

    @property
    def last_event_id(self) -> int | None:
        return self._last_id

    @property
    def paused_clients(self) -> int:
        """Pushed clients whose last write is still waiting for them to read (diagnostics)."""
        return sum(1 for subscriber in self._subscribers.values() if subscriber._paused)

    def publish(self, event: GraphEvent) -> None:
        frame = encode_event(event)
        if frame.id is not None:
            if self._last_id is not None and frame.id <= self._last_id:
                log.warning("event id %s does not follow %s: ignored", frame.id, self._last_id)
                return
            buffer = self._buffer
            if buffer.maxlen is not None and len(buffer) == buffer.maxlen:
                self._memory_floor = buffer[0].id  # type: ignore[assignment]  # about to be evicted
            buffer.append(frame)
            self._last_id = frame.id
        self._published += 1
        self._fan_out(frame)

    def broadcast(self, wire: bytes) -> None:
        self._fan_out(wire)

    def _fan_out(self, item: Frame | bytes) -> None:
        # A copy: a subscriber dropped during the loop leaves the dict.
        for subscriber in tuple(self._subscribers.values()):
            subscriber._offer(item)

    def _schedule_flush(self, subscriber: _Subscriber) -> None:
        if not self._dirty:
            # One callback writes to every pushed client, after the publisher's step: a burst of
            # events becomes one write per client.
            asyncio.get_running_loop().call_soon(self._flush)
        self._dirty.append(subscriber)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for subscriber in dirty:
            subscriber._push()

    # -- consumer side --------------------------------------------------------------------
    def subscribe(
        self, *, types: frozenset[str] | None = None, last_event_id: int | None = None, view: FrameView | None = None
    ) -> Subscription:
        if self._closed:
            raise HubClosed("the event hub is shutting down")
        seam = self._last_id
        missed: list[Frame] | None = None
        if last_event_id is not None and seam is not None and last_event_id < seam and last_event_id >= self._memory_floor:
            # Everything after it is in memory now: take it before anything can be evicted.
            missed = []
            for frame in reversed(self._buffer):
                if frame.id is not None and frame.id <= last_event_id:
                    break
                missed.append(frame)
            missed.reverse()
        subscriber = _Subscriber(
            self, types=types, capacity=self._client_queue, requested=last_event_id, seam=seam, missed=missed, view=view
        )
        self._subscribers[subscriber.client_id] = subscriber
        self._total_connections += 1
        return subscriber

    def _unsubscribe(self, subscriber: _Subscriber, reason: CloseReason) -> None:
        if self._subscribers.pop(subscriber.client_id, None) is not None:
            subscriber._end(reason)

    def _drop_slow(self, subscriber: _Subscriber) -> None:
        if subscriber.client_id in self._subscribers:
            self._dropped_slow += 1
            log.warning("event stream client %s dropped: its queue of %d events is full", subscriber.client_id, self._client_queue)
            self._unsubscribe(subscriber, CloseReason.SLOW)

    def _reset_frame(self, reason: str, requested: int, oldest: int | None = None) -> bytes:
        if oldest is None:
            oldest = self._buffer[0].id if self._buffer else None
        return encode_payload(ResetData(reason=reason, oldest_event_id=oldest, requested_event_id=requested))

    def stats(self) -> HubStats:
        return HubStats(
            connected_clients=len(self._subscribers),
            total_connections=self._total_connections,
            events_published=self._published,
            events_delivered=self._delivered,
            clients_dropped_slow=self._dropped_slow,
            last_event_id=self._last_id,
            oldest_buffered_id=self._buffer[0].id if self._buffer else None,
        )

    def close(self) -> None:
        self._closed = True
        for subscriber in tuple(self._subscribers.values()):
            self._unsubscribe(subscriber, CloseReason.SHUTDOWN)
