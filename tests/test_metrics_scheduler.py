"""The coalescing metrics scheduler: one recompute and one metrics_updated per window of changes."""

from __future__ import annotations

import random

import anyio
import pytest

from executions import sequence
from graphrag import GraphEvent, GraphRAGEngine, MetricsScheduler, WorkflowExecution
from graphrag.metrics import MetricsComputer

pytestmark = pytest.mark.anyio

WINDOW = 0.3  # seconds; long enough for 100 in-memory executions, short enough for a test


class Recorder:
    """Collects metrics_updated events and lets a test wait for the n-th one."""

    def __init__(self) -> None:
        self.metrics: list[GraphEvent] = []
        self._arrived = anyio.Event()

    def __call__(self, event: GraphEvent) -> None:
        if event.type == "metrics_updated":
            self.metrics.append(event)
            self._arrived.set()

    async def wait_for(self, count: int) -> None:
        while len(self.metrics) < count:
            self._arrived = anyio.Event()
            await self._arrived.wait()


def execution(i: int) -> WorkflowExecution:
    return sequence([f"s__t{i % 7}", f"s__t{(i * 3 + 1) % 7}", f"x__t{i % 5}"], success=i % 4 != 0)


async def test_changes_inside_one_window_give_one_recompute_and_one_event() -> None:
    engine = GraphRAGEngine()
    recorder = Recorder()
    engine.on(recorder)
    scheduler = MetricsScheduler(engine, interval_seconds=WINDOW)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(scheduler.run)
            await anyio.sleep(0)  # let it subscribe
            for i in range(100):
                await engine.update_from_execution(execution(i))
                await anyio.sleep(0)  # interleave with the scheduler, as a server does
            await recorder.wait_for(1)
            first = recorder.metrics[0].data
            # The one recompute saw every change of the window.
            assert (first.node_count, first.edge_count) == (
                engine.graph.number_of_nodes(),
                engine.graph.number_of_edges(),
            )
            assert scheduler.recomputes == 1
            assert engine.metrics is not None and engine.metrics.edge_count == first.edge_count

            # Changes in a later window give exactly one more.
            for i in range(100, 150):
                await engine.update_from_execution(
                    sequence([f"late__t{i % 3}", f"s__t{i % 7}"])
                )
            await recorder.wait_for(2)
            second = recorder.metrics[1].data
            assert second.node_count == engine.graph.number_of_nodes() > first.node_count
            assert recorder.metrics[1].id > recorder.metrics[0].id

            # Quiet: no further recompute, however long we wait (a few windows here).
            await anyio.sleep(3 * WINDOW)
            assert len(recorder.metrics) == 2 and scheduler.recomputes == 2
            tg.cancel_scope.cancel()


async def test_no_change_no_recompute() -> None:
    engine = GraphRAGEngine()
    recorder = Recorder()
    engine.on(recorder)
    scheduler = MetricsScheduler(engine, interval_seconds=0.05)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(scheduler.run)
            await anyio.sleep(0.3)
            assert recorder.metrics == [] and scheduler.recomputes == 0
            scheduler.request()  # an explicit request counts as a change
            await recorder.wait_for(1)
            tg.cancel_scope.cancel()


async def test_the_event_loop_keeps_running_during_a_recompute() -> None:
    computer = MetricsComputer()  # 20k edges: communities go to the worker process
    engine = GraphRAGEngine(metrics_computer=computer)
    rng = random.Random(0)
    tools = [f"s{i % 40}__t{i}" for i in range(2000)]
    for _ in range(200):  # about 20k edges
        await engine.update_from_execution(sequence(rng.sample(tools, 101)))
    assert engine.graph.number_of_edges() > 19_000
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0)
            ticks += 1

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                await anyio.sleep(0)
                before = ticks
                await engine.refresh_metrics()
                during = ticks - before
                tg.cancel_scope.cancel()
    finally:
        computer.close()
    # Computed on the loop, the ticker could not have run at all while we awaited.
    assert during >= 10
    assert engine.metrics is not None and engine.metrics.edge_count == engine.graph.number_of_edges()


async def test_cancellation_stops_it_and_unregisters_its_listener() -> None:
    engine = GraphRAGEngine()
    recorder = Recorder()
    engine.on(recorder)
    scheduler = MetricsScheduler(engine, interval_seconds=0.05)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(scheduler.run)
            await anyio.sleep(0)
            await engine.update_from_execution(execution(1))
            await recorder.wait_for(1)
            # Cancelled in the middle of a window: the pending recompute is dropped.
            await engine.update_from_execution(execution(2))
            tg.cancel_scope.cancel()
    with pytest.raises(ValueError):
        engine.off(scheduler._on_event)  # no longer registered
    await engine.update_from_execution(execution(3))
    await anyio.sleep(0.2)
    assert len(recorder.metrics) == 1 and scheduler.recomputes == 1
    scheduler.request()  # harmless when not running

    # It can run again afterwards.
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(scheduler.run)
            await anyio.sleep(0)
            await engine.update_from_execution(execution(4))
            await recorder.wait_for(2)
            tg.cancel_scope.cancel()
    assert recorder.metrics[1].data.edge_count == engine.graph.number_of_edges()


async def test_a_failing_recompute_does_not_stop_the_scheduler(caplog: pytest.LogCaptureFixture) -> None:
    engine = GraphRAGEngine()
    recorder = Recorder()
    engine.on(recorder)
    failures = 0
    real_compute = engine._computer.compute

    def flaky(snapshot):  # type: ignore[no-untyped-def]
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RuntimeError("boom")
        return real_compute(snapshot)

    engine._computer.compute = flaky  # type: ignore[method-assign]
    scheduler = MetricsScheduler(engine, interval_seconds=0.05)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(scheduler.run)
            await anyio.sleep(0)
            await engine.update_from_execution(execution(1))
            while failures == 0:
                await anyio.sleep(0.01)
            await engine.update_from_execution(execution(2))
            await recorder.wait_for(1)
            tg.cancel_scope.cancel()
    assert "metrics recompute failed" in caplog.text
    assert scheduler.recomputes == 1
