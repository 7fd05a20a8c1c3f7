"""The event hub alone: CPU per delivery of publish -> filter -> queue -> push, without sockets.

    PYTHONPATH=. .venv/bin/python bench/event_hub.py                 # 1,000 clients x 2,000 events
    PYTHONPATH=. .venv/bin/python bench/event_hub.py --clients 100 --events 5000

bench/sse_fanout.py measures the whole stream on real sockets, where the ``write`` system call
is most of a delivery and a shared machine moves the latency a lot. This measures only what the
hub adds per client and event (each event is encoded once; every client's sink counts the write
and returns at once), so that a change of the hub shows up even on a noisy machine; and what a
filter (``?tools=files__*``) adds for the clients that use one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from starlette.datastructures import QueryParams  # noqa: E402

from graphrag import GraphEvent, MemoryStore  # noqa: E402
from graphrag.events import WorkflowExecutedData  # noqa: E402
from pml_gateway.events.filters import parse_query  # noqa: E402
from pml_gateway.events.hub import CloseReason, InProcessEventHub  # noqa: E402
from pml_gateway.events.wire import Frame  # noqa: E402


class CountingSink:
    writes = 0

    def write(self, frames: list[Frame]) -> bool:
        CountingSink.writes += 1
        return True

    def close(self, reason: CloseReason) -> None:
        pass


writes = [0]  # sink writes of the last run


async def run(clients: int, events: int, query: str) -> float:
    hub = InProcessEventHub(MemoryStore(), client_queue=events)
    event_filter = parse_query(QueryParams(query), None)[0] if query else None
    for _ in range(clients):
        subscription = hub.subscribe(event_filter=event_filter)
        subscription.attach(CountingSink())
        subscription.resume()
    batch = [
        GraphEvent.of(
            WorkflowExecutedData(
                workflow_id=f"wf-{i}", tool_ids=["files__read", "text__summarize", "mail__send"], success=True, execution_time_ms=1.0
            ),
            id=i + 1,
        )
        for i in range(events)
    ]
    started = time.process_time()
    for event in batch:
        hub.publish(event)
        await asyncio.sleep(0)  # the hub's flush callback may run (flushes pace themselves)
    while hub.stats().events_delivered < clients * events:  # the last paced flush (sleeping is no CPU)
        await asyncio.sleep(0.001)
    used = time.process_time() - started
    writes[0] = CountingSink.writes
    CountingSink.writes = 0
    return used * 1e6 / (clients * events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    print("| clients | events | filter | hub CPU / delivery | writes per client |")
    print("|---:|---:|---|---:|---:|")
    for query in ("", "tools=files__*"):
        per_delivery = asyncio.run(run(args.clients, args.events, query))
        print(f"| {args.clients:,} | {args.events:,} | {query or 'none'} | {per_delivery:.3f} µs | {writes[0] / args.clients:,.0f} |")


if __name__ == "__main__":
    main()
