"""The hub's in-step group and paced flushes, without sockets: a client whose write has to wait
leaves the shared bursts, queues, catches up and rejoins, and gets every event exactly once, in
order; a client that stays paused is dropped when its queue is full while the others keep
everything; a joined burst goes out as one write."""

from __future__ import annotations

import asyncio

import pytest

from graphrag import GraphEvent, MemoryStore
from graphrag.events import WorkflowExecutedData
from pml_gateway.events.hub import CloseReason, InProcessEventHub
from pml_gateway.events.wire import Frame

pytestmark = pytest.mark.anyio


class RecordingSink:
    """Records each write; answers False (the write has to wait) while ``stalled``."""

    def __init__(self) -> None:
        self.writes: list[list[Frame]] = []
        self.stalled = False
        self.closed: CloseReason | None = None

    def write(self, frames: list[Frame]) -> bool:
        self.writes.append(frames)
        return not self.stalled

    def close(self, reason: CloseReason) -> None:
        self.closed = reason

    def ids(self) -> list[int]:
        return [frame.id for frames in self.writes for frame in frames if frame.id is not None]


def event(n: int) -> GraphEvent:
    data = WorkflowExecutedData(workflow_id=f"wf-{n}", tool_ids=["a__x", "b__y"], success=True, execution_time_ms=1.0)
    return GraphEvent.of(data, id=n)


async def settle(hub: InProcessEventHub) -> None:
    """Until no flush is pending (flushes pace themselves: bounded by the test's own time)."""
    for _ in range(1000):
        await asyncio.sleep(0.001)
        if not hub._flush_scheduled:
            return
    raise AssertionError("the hub never settled")


async def connect(hub: InProcessEventHub) -> tuple[object, RecordingSink]:
    subscription = hub.subscribe()
    sink = RecordingSink()
    subscription.attach(sink)
    subscription.resume()
    return subscription, sink


async def test_a_client_that_falls_behind_rejoins_without_gap_or_duplicate() -> None:
    hub = InProcessEventHub(MemoryStore(), client_queue=100)
    (steady, steady_sink), (wobbly, wobbly_sink) = await connect(hub), await connect(hub)
    next_id = 1
    for _ in range(3):  # in step: bursts shared, the same list to both
        hub.publish(event(next_id))
        next_id += 1
        await settle(hub)
    assert len(hub._in_step) == 2
    assert steady_sink.writes[-1] is wobbly_sink.writes[-1]

    wobbly_sink.stalled = True
    hub.publish(event(next_id))  # written, but the write has to wait: it falls behind
    next_id += 1
    await settle(hub)
    assert list(hub._in_step) == [steady.client_id]  # type: ignore[attr-defined]
    for _ in range(5):  # queued for it meanwhile
        hub.publish(event(next_id))
        next_id += 1
        await settle(hub)
    assert len(wobbly._queue) == 5  # type: ignore[attr-defined]

    wobbly_sink.stalled = False
    wobbly.resume()  # type: ignore[attr-defined]  # its sink drained
    hub.publish(event(next_id))  # published before the rejoin takes effect
    next_id += 1
    await settle(hub)
    assert len(hub._in_step) == 2  # rejoined at the end of a flush
    for _ in range(3):
        hub.publish(event(next_id))
        next_id += 1
        await settle(hub)

    expected = list(range(1, next_id))
    assert steady_sink.ids() == expected
    assert wobbly_sink.ids() == expected
    assert hub.stats().events_delivered == 2 * len(expected)


async def test_a_client_that_stays_paused_is_dropped_and_the_others_keep_everything() -> None:
    hub = InProcessEventHub(MemoryStore(), client_queue=10)
    (_, steady_sink), (_, stuck_sink) = await connect(hub), await connect(hub)
    stuck_sink.stalled = True
    for n in range(1, 31):
        hub.publish(event(n))
        await settle(hub)
    assert stuck_sink.closed is CloseReason.SLOW
    assert hub.stats().clients_dropped_slow == 1 and hub.connected_clients == 1
    assert steady_sink.ids() == list(range(1, 31))


async def test_events_published_in_one_step_are_one_write_per_client() -> None:
    hub = InProcessEventHub(MemoryStore())
    sinks = [(await connect(hub))[1] for _ in range(3)]
    await settle(hub)
    for n in range(1, 6):
        hub.publish(event(n))
    await settle(hub)
    for sink in sinks:
        assert [[frame.id for frame in frames] for frames in sink.writes] == [[1, 2, 3, 4, 5]]
