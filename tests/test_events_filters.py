"""Stream filters on a real uvicorn: ``?tools=``, ``?servers=``, ``?workflow_id=`` (``*`` patterns),
combined with ``types``, live and in replays (memory and log) (malformed ones: test_events_stream.py); and
``reset`` reporting the oldest id the log can really replay."""

from __future__ import annotations

import httpx
import pytest

from graphrag import GraphEvent
from graphrag.events import EdgeCreatedData, MetricsUpdatedData, ToolAddedData, WorkflowExecutedData
from pml_gateway.events.filters import StreamRequestError, parse_query
from pml_gateway.events.wire import encode_event
from server_helpers import make_settings, open_stream, post_executions, running_app, wait_for_stats
from starlette.datastructures import QueryParams

pytestmark = pytest.mark.anyio

def _execution(workflow_id: str, *tool_ids: str) -> dict[str, object]:
    # The server of each tool is given (POST /executions never parses it out of a name).
    tasks = [{"id": f"t{i}", "tool_id": tool, "server": tool.split("__")[0]} for i, tool in enumerate(tool_ids)]
    return {"workflow_id": workflow_id, "tasks": tasks}


EXECUTIONS = [
    _execution("wf-a1", "files__read", "text__summarize"),
    _execution("wf-b1", "time__get_current_time", "mail__send"),
    _execution("wf-a2", "mail__send", "text__summarize"),
    _execution("final", "text__summarize", "mail__send"),
]


def described(events: list) -> list[tuple[str, object]]:  # type: ignore[type-arg]
    """(type, what it names) of each graph event: tools for edges, the workflow id for workflows.

    ``metrics_updated`` is left out: it passes every tools/servers filter, at a moment of its own."""
    out: list[tuple[str, object]] = []
    for e in events:
        if e.event.startswith("edge_"):
            out.append((e.event, (e.data["from_tool_id"], e.data["to_tool_id"])))
        elif e.event == "workflow_executed":
            out.append((e.event, e.data["workflow_id"]))
        elif e.event == "graph_synced":
            out.append((e.event, None))
    return out


@pytest.mark.parametrize("replay_buffer", [10_000, 2], ids=["replay-from-memory", "replay-from-log"])
async def test_filters_apply_to_replay_and_live_alike(replay_buffer: int) -> None:
    settings = make_settings(replay_buffer=replay_buffer, metrics_interval_seconds=60.0, heartbeat_seconds=0.3)
    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        for body in EXECUTIONS:
            await post_executions(client, body)
        await wait_for_stats(client, lambda s: s["last_event_id"] is not None and s["last_event_id"] >= 9)
        cases = {
            # tools: any named tool matches; graph_synced names none and passes.
            "tools=files__*,time__get_current_time": [
                ("graph_synced", None),
                ("edge_created", ("files__read", "text__summarize")),
                ("workflow_executed", "wf-a1"),
                ("edge_created", ("time__get_current_time", "mail__send")),
                ("workflow_executed", "wf-b1"),
            ],
            # workflow_id with types: all must match.
            "workflow_id=wf-a*&types=workflow_executed": [("workflow_executed", "wf-a1"), ("workflow_executed", "wf-a2")],
            # servers (as the engine knows each tool's server) with tools and types: all must match.
            "servers=mail,nosuchserver&tools=*summarize&types=edge_*": [
                ("edge_created", ("mail__send", "text__summarize")),
                ("edge_created", ("text__summarize", "mail__send")),
            ],
        }
        for query, expected in cases.items():
            # The replay comes before the first heartbeat (live frames wait for it to finish).
            async with open_stream(client, params=QueryParams(f"last_event_id=0&{query}")) as stream:
                replayed = await stream.until(lambda e: e.event == "heartbeat")
            assert described(replayed) == expected, query

        # Live: the same filter object decides.
        async with open_stream(client, params={"tools": "files__*", "types": "workflow_executed"}) as stream:
            await stream.next()
            await post_executions(client, {"workflow_id": "skip-me", "tool_ids": ["mail__send"]})
            await post_executions(client, {"workflow_id": "live", "tool_ids": ["files__write", "mail__send"]})
            live = await stream.until(lambda e: e.event == "workflow_executed")
        assert described(live) == [("workflow_executed", "live")]


async def test_reset_reports_the_oldest_id_the_log_can_replay() -> None:
    """The memory buffer holds 2 events; the log holds them all: reset says 1, and 1 replays."""
    settings = make_settings(replay_buffer=2, metrics_interval_seconds=60.0)
    async with running_app(settings) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        for body in EXECUTIONS:
            await post_executions(client, body)
        stats = await wait_for_stats(client, lambda s: s["last_event_id"] is not None and s["last_event_id"] >= 9)
        assert stats["oldest_buffered_id"] > 1  # the in-memory floor the old reset reported
        async with open_stream(client, params={"last_event_id": str(stats["last_event_id"] + 50)}) as stream:
            reset = (await stream.until(lambda e: e.event == "reset"))[-1]
        assert reset.data["reason"] == "unknown_event_id"
        assert reset.data["oldest_event_id"] == 1
        async with open_stream(client, params={"last_event_id": str(reset.data["oldest_event_id"] - 1)}) as stream:
            replayed = await stream.until(lambda e: e.id == stats["last_event_id"])
        assert [e.id for e in replayed if e.id is not None] == list(range(1, stats["last_event_id"] + 1))


def test_filter_rules_on_frames() -> None:
    """What passes, frame by frame: named tools and servers (through the resolver), workflows."""
    servers = {"files__read": "files", "text__summarize": "text"}
    edge = encode_event(
        GraphEvent.of(
            EdgeCreatedData(
                from_tool_id="files__read", to_tool_id="text__summarize", confidence_score=0.5, observed_count=1, edge_type="sequence"
            ),
            id=3,
        ),
        servers.get,
    )
    added = encode_event(GraphEvent.of(ToolAddedData(tool_id="odd.name", server="my.files"), id=4), servers.get)
    metrics = encode_event(
        GraphEvent.of(MetricsUpdatedData(node_count=0, edge_count=0, density=0, pagerank_top_10=[], communities_count=0), id=5)
    )
    flow = encode_event(
        GraphEvent.of(WorkflowExecutedData(workflow_id="W-1", tool_ids=["x__y"], success=True, execution_time_ms=1), id=6)
    )
    assert edge.servers == {"files", "text"} and added.servers == {"my.files"} and flow.workflow_id == "W-1"

    def passing(query: str) -> list[int | None]:
        event_filter, _ = parse_query(QueryParams(query), None)
        assert event_filter is not None
        return [f.id for f in (edge, added, metrics, flow) if event_filter.passes(f)]

    assert passing("servers=text") == [3, 5]  # the flow names x__y, whose server is unknown
    assert passing("servers=my.*") == [4, 5]  # the server is the event's word, not parsed from a name
    assert passing("tools=*summarize") == [3, 5]
    assert passing("workflow_id=W-*") == [3, 4, 5, 6]
    assert passing("workflow_id=V&types=workflow_executed") == []
    assert passing("types=tool_*,metrics_updated&servers=my.files") == [4, 5]
    with pytest.raises(StreamRequestError) as refused:
        parse_query(QueryParams("tools=a,%0Ab"), None)
    assert refused.value.body["parameter"] == "tools"
