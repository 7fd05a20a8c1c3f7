"""The event hub: between the engine, which produces events, and the stream clients.

The hub receives every ``GraphEvent`` once (it is an engine listener), turns it ONCE into a
``wire.Frame`` (the bytes that go on the wire, and what filters look at), keeps the last
``replay_buffer`` of them, and offers them to every subscriber's bounded queue. The broadcaster
never awaits a client: offering is a filter check, a bounds check and a list append; a client
whose queue is full is dropped (``clients_dropped_slow``) instead of slowing everyone down.

Replay (``Last-Event-ID``) is gap-free and duplicate-free by construction: a subscriber is
registered for live events first, synchronously, and remembers the last id published at that
moment (its *seam*). Replay then covers ``(requested, seam]`` (from memory when the buffer still
holds it, else from the store's event log) and live delivery covers ``(seam, ...)``. Live frames
are also deduplicated by id, so a future hub that cannot register atomically stays correct.

Delivery is pushed: a subscription is attached to its connection's ``Sink`` when it opens, stays
paused while the endpoint writes the replay, then one flush callback per burst of events writes
to every client's sink synchronously. Only a client whose write cannot complete at once (it reads
slower than we write) is paused until its sink calls ``resume()``; its queue fills meanwhile.
Pushing costs no task switch per client and event. Every way a subscription ends (the client
left, it was too slow, the hub closed) goes through one place: ``Sink.close(reason)``.

Flushes pace themselves: the next one waits as long as the last one took, so that writing to
every client never takes more than half of the event loop. A few clients flush at once (a
flush takes microseconds); thousands of them get the events of that wait in one write each.
The write system call is nearly all of a delivery (85% of the server's CPU is in the kernel at
5,000 clients; one send to a loopback socket costs 5-7 µs on the 2-core machine): at 5,000
clients and 20 executions/s this took the server's CPU per delivered frame from 2.7 to 0.95 µs
and the p99 from 8.5 s to 0.5 s on the shared machine (load 8); on a quieter one (load 2.6)
flushes are shorter, fewer events share a write: 1.6 µs and a p99 of 171 ms (bench/README.md,
"Issue 17").

Clients that take every event as it comes (no filter, caught up, their last write complete) are
"in step": they are not offered events one by one, they share each burst (the same list goes
to every in-step sink, which an SSE sink joins once). A client whose write has to wait leaves
the group and is offered events one by one (queued, dropped when its queue is full); once it
has caught up it joins again, at the end of a flush (never twice the same frame).

Events without an id (``workflow_progress``, live only) are fanned out and filtered like graph
events but never buffered; ``broadcast`` sends connection frames (the heartbeat) to everyone.

``EventHub`` is the small interface the endpoints depend on; ``InProcessEventHub`` is the
single-process implementation.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Iterable
from enum import Enum
from typing import Protocol

import anyio
from pydantic import BaseModel

from graphrag import GraphEvent, LogBounds
from graphrag.events import ResetData

from pml_gateway.events.filters import EventFilter
from pml_gateway.events.wire import Frame, ServerOf, encode_event, encode_payload

log = logging.getLogger(__name__)

#: Replayed frames are written in batches of this many events.
REPLAY_CHUNK = 256
#: Events read from the store's log per query while replaying.
LOG_PAGE = 1000


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
    """Where a subscription writes: one client's connection (SSE response or WebSocket)."""

    def write(self, frames: list[Frame]) -> bool:
        """Write now; False if the write had to wait (then ``Subscription.resume()`` follows)."""
        ...

    def close(self, reason: CloseReason) -> None:
        """The subscription ended: the sink ends its connection (cleanly on SHUTDOWN)."""
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
    """One client's view of the hub: attached to its sink, a replay, then live pushes, until closed."""

    __slots__ = ()

    client_id: str
    #: The last event id published when the subscription was registered: replay ends here.
    seam_id: int | None
    #: Why it ended, once it did.
    close_reason: CloseReason | None

    @abstractmethod
    def attach(self, sink: Sink) -> None:
        """Where this subscription writes; paused (live events queue) until ``resume()``."""

    @abstractmethod
    def replay(self) -> AsyncIterator[list[Frame]]:
        """Batches of frames: a ``reset``, or the events after the requested id up to the seam."""

    @abstractmethod
    def resume(self) -> None:
        """Push what queued, and every later event, until a write has to wait (or it ends)."""

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
        """Hand one event to every subscriber whose filter passes it. Never blocks on a client.

        Graph events (with an id) are also kept for replay; live ones (no id) are not."""

    @abstractmethod
    def broadcast(self, frame: Frame) -> None:
        """Hand a connection frame (the heartbeat) to every subscriber, unfiltered, unbuffered."""

    @abstractmethod
    def subscribe(self, *, event_filter: EventFilter | None = None, last_event_id: int | None = None) -> Subscription:
        """Register a client now (live events from this moment on); replay from ``last_event_id``."""

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
        "_hub",
        "_filter",
        "_capacity",
        "_queue",
        "_requested",
        "_missed",
        "_last_sent_id",
        "_sink",
        "_paused",
        "_scheduled",
        "_in_step",
    )

    def __init__(
        self,
        hub: InProcessEventHub,
        *,
        event_filter: EventFilter | None,
        capacity: int,
        requested: int | None,
        seam: int | None,
        missed: list[Frame] | None,
    ) -> None:
        self.client_id = uuid.uuid4().hex[:16]
        self.seam_id = seam
        self.close_reason: CloseReason | None = None
        self._hub = hub
        self._filter = event_filter
        self._capacity = capacity
        # A list, not a deque: it is always drained whole, and an empty list is 10x smaller.
        self._queue: list[Frame] = []
        self._requested = requested
        self._missed = missed  # replay taken from memory at registration; None: ask the log
        self._last_sent_id = seam if seam is not None else -1
        self._sink: Sink | None = None
        self._paused = True  # until the endpoint has written the replay; then while a write waits
        self._scheduled = False  # waiting for the hub's flush
        self._in_step = False  # one of the hub's in-step clients (they share each burst)

    # Called by the hub, synchronously, for every frame. Never awaits.
    def _offer(self, frame: Frame) -> None:
        event_filter = self._filter
        if event_filter is not None and (frame := event_filter.apply(frame)) is None:  # type: ignore[assignment]
            return
        if len(self._queue) >= self._capacity:
            if not self._paused:
                # A burst larger than the queue (one request ingesting many executions) from a
                # client that keeps up: write it out now rather than drop the client.
                self._push()
            if len(self._queue) >= self._capacity:
                self._hub._drop_slow(self)
                return
        self._queue.append(frame)
        if not self._scheduled and not self._paused:
            self._scheduled = True
            self._hub._schedule_flush(self)

    def _end(self, reason: CloseReason) -> None:
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self._queue = []
        if self._sink is not None:
            self._sink.close(reason)

    def attach(self, sink: Sink) -> None:
        self._sink = sink
        if self.close_reason is not None:  # ended before its endpoint got here (during a handshake)
            sink.close(self.close_reason)

    def resume(self) -> None:
        self._paused = False
        self._push()

    def _push(self) -> None:
        """Write what is queued, until the sink has to wait (called by the hub's flush)."""
        self._scheduled = False
        sink = self._sink
        while self._queue and not self._paused and self.close_reason is None and sink is not None:
            frames = self._take()
            if frames:
                try:
                    self._paused = not sink.write(frames)
                except Exception:
                    log.exception("event stream client %s failed", self.client_id)
                    self.close()
        if not self._queue and not self._paused and self._filter is None and self.close_reason is None and sink is not None:
            self._hub._join_in_step(self)

    def _take(self) -> list[Frame]:
        """Everything queued; graph events already sent (by the replay) skipped."""
        frames, self._queue = self._queue, []
        last = self._last_sent_id
        if len(frames) == 1:  # the common case: one event since the last write
            frame = frames[0]
            if frame.id is not None:
                if frame.id <= last:
                    return []
                self._last_sent_id = frame.id
            if not frame.always:
                self._hub._delivered += 1
            return frames
        kept: list[Frame] = []
        for frame in frames:
            if frame.id is not None:
                if frame.id <= last:
                    continue
                last = frame.id
            kept.append(frame)
        self._hub._delivered += sum(1 for frame in kept if not frame.always)
        self._last_sent_id = last
        return kept

    async def replay(self) -> AsyncIterator[list[Frame]]:
        requested, seam, hub = self._requested, self.seam_id, self._hub
        if requested is None or requested == seam:
            return
        if seam is None or requested > seam:
            # Beyond the last id: a Last-Event-ID from another history (the database was replaced).
            yield [await hub._reset_frame("unknown_event_id", requested)]
            return
        if self._missed is not None:
            frames: Iterable[Frame] = self._missed
            self._missed = None
            for batch in self._batches(frames):
                yield batch
            return
        # Older than the memory buffer: the store's log, while it still holds the id after it.
        bounds = await anyio.to_thread.run_sync(hub._log.bounds)
        if bounds.oldest_id is None or bounds.oldest_id > requested + 1:
            yield [hub._reset_payload("evicted", requested, bounds)]
            return
        cursor = requested
        while cursor < seam:
            try:
                events = await anyio.to_thread.run_sync(hub._log.events_after, cursor, LOG_PAGE)
            except Exception as exc:  # a stored event that no longer reads: never a dead stream
                log.warning("replay after event %s failed (%s): the client gets a reset", cursor, exc)
                yield [await hub._reset_frame("unreadable_log", requested)]
                return
            if not events:
                break
            cursor = events[-1].id or cursor
            for batch in self._batches(hub._encode(e) for e in events if e.id is not None and e.id <= seam):
                yield batch
            if len(events) < LOG_PAGE:
                break

    def _batches(self, frames: Iterable[Frame]) -> Iterable[list[Frame]]:
        batch: list[Frame] = []
        event_filter = self._filter
        for frame in frames:
            if event_filter is not None and (frame := event_filter.apply(frame)) is None:  # type: ignore[assignment]
                continue
            batch.append(frame)
            self._hub._delivered += 1
            if len(batch) >= REPLAY_CHUNK:
                yield batch
                batch = []
        if batch:
            yield batch

    def close(self) -> None:
        self._hub._unsubscribe(self, CloseReason.CLIENT)


class InProcessEventHub(EventHub):
    """One process: events from this process's engine, subscribers in this process.

    ``server_of`` names the server of a tool id, for ``?servers=`` filters (the engine's
    ``tool_server``); it is asked once per event, when the event is encoded.
    """

    def __init__(
        self,
        log: EventLog,
        *,
        replay_buffer: int = 10_000,
        client_queue: int = 1_000,
        server_of: ServerOf | None = None,
    ) -> None:
        self._log = log
        self._client_queue = client_queue
        self._server_of: ServerOf = server_of or (lambda tool_id: None)
        self._buffer: deque[Frame] = deque(maxlen=replay_buffer)
        bounds = log.bounds()
        self._last_id: int | None = bounds.last_id
        # Every event with an id above the floor is in memory; below it, ask the log.
        self._memory_floor: int = bounds.last_id or 0
        self._subscribers: dict[str, _Subscriber] = {}
        # Clients that take every event as it comes (no filter, caught up, not waiting for a
        # write): they are not offered events one by one but share one burst, written to each
        # sink as the same list (an SSE sink joins it once per burst). The others are offered
        # each event (filter, queue, drop when full).
        self._in_step: dict[str, _Subscriber] = {}
        self._others: dict[str, _Subscriber] = {}
        self._burst: list[Frame] = []
        self._joining: list[_Subscriber] = []
        self._dirty: list[_Subscriber] = []  # subscribers with something to write
        self._flush_scheduled = False
        self._next_flush_at = 0.0  # loop time: no flush before (the fan-out's share of the loop)
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
        """Clients whose last write is still waiting for them to read (diagnostics)."""
        return sum(1 for subscriber in self._subscribers.values() if subscriber._paused)

    def _encode(self, event: GraphEvent) -> Frame:
        return encode_event(event, self._server_of)

    def publish(self, event: GraphEvent) -> None:
        frame = self._encode(event)
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

    def broadcast(self, frame: Frame) -> None:
        self._fan_out(frame)

    def _fan_out(self, frame: Frame) -> None:
        if self._in_step:
            self._burst.append(frame)
            self._ensure_flush()
        # A copy: a subscriber dropped during the loop leaves the dict.
        for subscriber in tuple(self._others.values()):
            subscriber._offer(frame)

    def _ensure_flush(self) -> None:
        if not self._flush_scheduled:
            # One callback writes to every client, after the publisher's step: a burst of
            # events becomes one write per client.
            self._flush_scheduled = True
            loop = asyncio.get_running_loop()
            wait = self._next_flush_at - loop.time()
            if wait > 0:
                loop.call_later(wait, self._flush)
            else:
                loop.call_soon(self._flush)

    def _schedule_flush(self, subscriber: _Subscriber) -> None:
        self._ensure_flush()
        self._dirty.append(subscriber)

    def _join_in_step(self, subscriber: _Subscriber) -> None:
        # Joins at the end of a flush: the burst being gathered may hold frames it was offered
        # one by one already (no duplicate).
        self._joining.append(subscriber)
        self._ensure_flush()

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            self._flush_now()
        finally:
            # The next flush waits as long as this one took: the fan-out never takes more than
            # half of the loop (requests keep being answered), and with thousands of clients the
            # events of that wait share one write per client (the write is the cost: see above).
            ended = loop.time()
            self._next_flush_at = ended + (ended - started)

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        burst, self._burst = self._burst, []
        if burst:
            self._write_in_step(burst)
        dirty, self._dirty = self._dirty, []
        for subscriber in dirty:
            subscriber._push()
        if self._joining:
            joining, self._joining = self._joining, []
            for subscriber in joining:
                if (
                    not subscriber._in_step
                    and not subscriber._queue
                    and not subscriber._paused
                    and subscriber.close_reason is None
                    and self._others.pop(subscriber.client_id, None) is not None
                ):
                    subscriber._in_step = True
                    self._in_step[subscriber.client_id] = subscriber

    def _write_in_step(self, burst: list[Frame]) -> None:
        """The burst to every in-step client: the same list to each sink, one write each."""
        counted = sum(1 for frame in burst if not frame.always)
        last_id = next((frame.id for frame in reversed(burst) if frame.id is not None), None)
        written = 0
        for subscriber in tuple(self._in_step.values()):
            try:
                ready = subscriber._sink.write(burst)  # type: ignore[union-attr]  # in step: attached
            except Exception:
                log.exception("event stream client %s failed", subscriber.client_id)
                subscriber.close()
                continue
            written += 1
            if not ready:  # its write has to wait: from now on it is offered events one by one
                self._fall_behind(subscriber, last_id)
        self._delivered += counted * written

    def _fall_behind(self, subscriber: _Subscriber, last_id: int | None) -> None:
        if self._in_step.pop(subscriber.client_id, None) is not None:
            subscriber._in_step = False
            subscriber._paused = True
            if last_id is not None:  # in step, its last id is the last burst's (kept up to date only now)
                subscriber._last_sent_id = max(subscriber._last_sent_id, last_id)
            self._others[subscriber.client_id] = subscriber

    # -- consumer side --------------------------------------------------------------------
    def subscribe(self, *, event_filter: EventFilter | None = None, last_event_id: int | None = None) -> Subscription:
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
            self, event_filter=event_filter, capacity=self._client_queue, requested=last_event_id, seam=seam, missed=missed
        )
        self._subscribers[subscriber.client_id] = subscriber
        self._others[subscriber.client_id] = subscriber
        self._total_connections += 1
        return subscriber

    def _unsubscribe(self, subscriber: _Subscriber, reason: CloseReason) -> None:
        if self._subscribers.pop(subscriber.client_id, None) is not None:
            self._in_step.pop(subscriber.client_id, None)
            self._others.pop(subscriber.client_id, None)
            subscriber._in_step = False
            subscriber._end(reason)

    def _drop_slow(self, subscriber: _Subscriber) -> None:
        if subscriber.client_id in self._subscribers:
            self._dropped_slow += 1
            log.warning("event stream client %s dropped: its queue of %d events is full", subscriber.client_id, self._client_queue)
            self._unsubscribe(subscriber, CloseReason.SLOW)

    async def _reset_frame(self, reason: str, requested: int) -> Frame:
        return self._reset_payload(reason, requested, await anyio.to_thread.run_sync(self._log.bounds))

    def _reset_payload(self, reason: str, requested: int, bounds: LogBounds) -> Frame:
        # The oldest id really replayable: the log holds at least what the memory buffer does.
        oldest = bounds.oldest_id
        if oldest is None and self._buffer:
            oldest = self._buffer[0].id
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
