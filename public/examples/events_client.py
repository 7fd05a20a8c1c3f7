"""Follow a pml-gateway's event stream and print every event as it comes.

    python public/examples/events_client.py --url http://127.0.0.1:8000 --types 'edge_*,metrics_updated'

What a robust client does, in about a hundred lines (httpx + httpx-sse):
- reconnects when the stream breaks, after an exponential backoff with full jitter;
- resumes where it stopped: the ``Last-Event-ID`` header carries the last id it received, so the
  server replays what was missed, with nothing lost or doubled;
- on ``reset`` (the id is too old, or from another database) it refetches ``GET /graph`` and
  continues from the snapshot's ``last_event_id``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

import httpx
from httpx_sse import connect_sse

#: Events that belong to one connection: they carry no id and never move Last-Event-ID.
CONNECTION_EVENTS = {"connected", "heartbeat", "reset"}
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0


def backoff(attempt: int, at_least: float = 0.0) -> float:
    """Full jitter: a random wait up to base * 2**attempt (capped), so clients don't reconnect in step."""
    return max(at_least, random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt)))


def show(kind: str, event_id: int | None, data: Any) -> None:
    print(f"{event_id if event_id is not None else '-':>6}  {kind:<18} {json.dumps(data)}", flush=True)


def fetch_graph(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/graph")
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def follow(base_url: str, types: str | None = None, last_event_id: int | None = None) -> None:
    params = {"types": types} if types else {}
    attempt = 0
    # No read timeout: the stream is quiet between events (the heartbeat keeps proxies awake).
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(10.0, read=None)) as client:
        while True:
            headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
            wait_at_least = 0.0
            try:
                with connect_sse(client, "GET", "/events/stream", params=params, headers=headers) as source:
                    response = source.response
                    if response.status_code == 503:  # too many clients (or shutting down): come back later
                        wait_at_least = float(response.headers.get("Retry-After", "1"))
                        raise httpx.HTTPStatusError("503", request=response.request, response=response)
                    if response.status_code != 200:
                        response.read()
                        sys.exit(f"refused: {response.status_code} {response.text}")
                    for sse in source.iter_sse():
                        if not sse.event or not sse.data:
                            continue  # a comment-only block
                        attempt = 0  # connected: the next failure starts the backoff over
                        data = sse.json()
                        if sse.event in CONNECTION_EVENTS:
                            show(sse.event, None, data)
                            if sse.event == "reset":
                                graph = fetch_graph(client)
                                last_event_id = graph["last_event_id"]
                                print(
                                    f"reset ({data['reason']}): refetched /graph: {len(graph['nodes'])} nodes,"
                                    f" {len(graph['edges'])} edges, at event {last_event_id}",
                                    flush=True,
                                )
                            continue
                        event_id = int(sse.id)
                        if last_event_id is not None and event_id <= last_event_id:
                            continue  # already part of the snapshot fetched after a reset
                        last_event_id = event_id
                        show(sse.event, event_id, data)
                print("stream ended (server shutting down?)", file=sys.stderr, flush=True)
            except httpx.HTTPStatusError:
                print("server busy", file=sys.stderr, flush=True)
            except httpx.TransportError as exc:
                print(f"connection lost: {exc!r}", file=sys.stderr, flush=True)
            delay = backoff(attempt, wait_at_least)
            attempt += 1
            print(f"reconnecting in {delay:.2f}s from event {last_event_id}", file=sys.stderr, flush=True)
            time.sleep(delay)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway's base URL")
    parser.add_argument("--types", help="comma list of event types to receive ('edge_*' matches a prefix)")
    parser.add_argument("--last-event-id", type=int, help="start by replaying the events after this id")
    args = parser.parse_args()
    try:
        follow(args.url, args.types, args.last_event_id)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
