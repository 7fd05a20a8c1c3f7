"""GraphRAGEngine: events per learning step, listener order, suggestions, snapshot."""

from __future__ import annotations

import pytest

from executions import sequence
from graphrag import GraphEvent, GraphRAGEngine, TaskRun, WorkflowExecution

pytestmark = pytest.mark.anyio


async def test_first_observation_creates_then_updates() -> None:
    engine = GraphRAGEngine()
    first = await engine.update_from_execution(sequence(["a", "b", "c"], workflow_id="w1"))
    assert [e.type for e in first] == ["edge_created", "edge_created", "workflow_executed"]
    assert first[0].data.from_tool_id == "a" and first[0].data.to_tool_id == "b"
    assert first[0].data.observed_count == 1 and first[0].data.edge_type == "sequence"
    assert first[-1].data.workflow_id == "w1" and first[-1].data.tool_ids == ["a", "b", "c"]

    second = await engine.update_from_execution(sequence(["a", "b"], success=False))
    assert [e.type for e in second] == ["edge_updated", "workflow_executed"]
    update = second[0].data
    assert update.old_confidence == first[0].data.confidence_score
    assert update.new_confidence < update.old_confidence
    assert update.observed_count == 2
    assert engine.graph.edges["a", "b"]["failure_count"] == 1
    assert [e.id for e in first + second] == [1, 2, 3, 4, 5]


async def test_listeners_hear_every_event_in_order_and_off_stops_them() -> None:
    engine = GraphRAGEngine()
    heard: list[tuple[str, int | None, str]] = []

    def first(event: GraphEvent) -> None:
        heard.append(("first", event.id, event.type))

    def broken(event: GraphEvent) -> None:
        raise RuntimeError("listener bug")

    def second(event: GraphEvent) -> None:
        heard.append(("second", event.id, event.type))

    for listener in (first, broken, second):
        engine.on(listener)
    await engine.update_from_execution(sequence(["a", "b"]))
    assert heard == [
        ("first", 1, "edge_created"),
        ("second", 1, "edge_created"),
        ("first", 2, "workflow_executed"),
        ("second", 2, "workflow_executed"),
    ]
    engine.off(first)
    engine.off(broken)
    await engine.update_from_execution(sequence(["a", "b"]))
    assert heard[4:] == [("second", 3, "edge_updated"), ("second", 4, "workflow_executed")]


async def test_dependency_wins_over_sequence() -> None:
    engine = GraphRAGEngine()
    await engine.update_from_execution(sequence(["a", "b"]))
    dag = WorkflowExecution(tasks=[TaskRun(id="1", tool_id="a"), TaskRun(id="2", tool_id="b", depends_on=["1"])])
    events = await engine.update_from_execution(dag)
    assert events[0].data.edge_type == "dependency"
    events = await engine.update_from_execution(sequence(["a", "b"]))
    assert events[0].data.edge_type == "dependency"
    assert engine.graph.edges["a", "b"]["observed_count"] == 3


async def test_metrics_and_sync_events() -> None:
    engine = GraphRAGEngine()
    synced = await engine.sync_from_database()
    assert synced.type == "graph_synced" and synced.data.node_count == 0
    await engine.update_from_execution(sequence(["a", "b", "c"]))
    heard: list[GraphEvent] = []
    engine.on(heard.append)
    metrics = await engine.refresh_metrics()
    assert [e.type for e in heard] == ["metrics_updated"]
    assert heard[0].data.node_count == metrics.node_count == 3
    assert heard[0].data.edge_count == 2
    assert heard[0].data.density == pytest.approx(2 / 6)
    assert engine.get_density() == pytest.approx(2 / 6)
    assert [p.tool_id for p in engine.get_top_pagerank(3)] == ["c", "b", "a"]  # a chain: rank flows downstream
    assert engine.get_communities_count() == metrics.communities_count >= 1
    assert heard[0].id == engine.last_event_id


async def test_suggestions_rank_reliable_successors_first() -> None:
    engine = GraphRAGEngine()
    for _ in range(20):
        await engine.update_from_execution(sequence(["read", "summarize"]))
    for _ in range(20):
        await engine.update_from_execution(
            WorkflowExecution(tasks=[TaskRun(id="1", tool_id="read"), TaskRun(id="2", tool_id="translate", success=False)])
        )
    await engine.update_from_execution(sequence(["read", "lucky"]))
    suggestions = engine.suggest_next(["read"], limit=5)
    assert [s.tool_id for s in suggestions] == ["summarize", "lucky", "translate"]
    assert "observed 20x, 20 succeeded" in suggestions[0].reason
    assert suggestions[0].confidence > suggestions[1].confidence > suggestions[2].confidence
    assert engine.suggest_next(["read"], limit=1)[0].tool_id == "summarize"
    assert engine.suggest_next(["unknown"]) == []
    # the last tool weighs most; tools already used are not suggested again
    await engine.update_from_execution(sequence(["summarize", "save"]))
    assert engine.suggest_next(["read", "summarize"])[0].tool_id == "save"
    assert "summarize" not in [s.tool_id for s in engine.suggest_next(["read", "summarize"])]


async def test_snapshot_matches_the_graph() -> None:
    engine = GraphRAGEngine()
    tasks = [
        TaskRun(id="1", tool_id="files__read", server="files"),
        TaskRun(id="2", tool_id="a__b__summarize", server="a__b"),  # the server comes in, never parsed
        TaskRun(id="3", tool_id="plain"),
    ]
    await engine.update_from_execution(WorkflowExecution(tasks=tasks))
    snapshot = engine.snapshot()
    assert snapshot.last_event_id == 3
    assert {(n.id, n.server) for n in snapshot.nodes} == {("files__read", "files"), ("a__b__summarize", "a__b"), ("plain", None)}
    assert snapshot.metrics is None and all(n.pagerank is None for n in snapshot.nodes)
    await engine.refresh_metrics()
    body = engine.snapshot().model_dump(mode="json")
    assert body["last_event_id"] == 4
    assert {e["from_tool_id"] for e in body["edges"]} == {"files__read", "a__b__summarize"}
    assert set(body["edges"][0]) >= {
        "from_tool_id", "to_tool_id", "confidence", "observed_count", "success_count", "failure_count", "edge_type",
    }
    assert body["metrics"]["node_count"] == 3 and "pagerank" not in body["metrics"]
    assert all(n["pagerank"] is not None and n["community"] is not None for n in body["nodes"])


async def test_a_batch_learns_exactly_as_one_by_one(tmp_path) -> None:
    from graphrag import SQLiteStore

    executions = [
        sequence(["a", "b", "c"], workflow_id="w0"),
        sequence(["a", "b"], success=False, workflow_id="w1"),
        sequence(["b", "c", "a"], workflow_id="w2"),
    ]
    single, batched = GraphRAGEngine(), GraphRAGEngine(store=SQLiteStore(tmp_path / "b.db"))
    expected = [await single.update_from_execution(x) for x in executions]
    heard: list[GraphEvent] = []
    batched.on(heard.append)
    got = await batched.update_from_executions(executions)

    def strip(events):
        return [(e.id, e.type, {k: v for k, v in e.data.model_dump().items() if k != "timestamp"}) for e in events]

    assert [strip(events) for events in got] == [strip(events) for events in expected]
    assert strip(heard) == strip([e for events in expected for e in events])
    def counts(engine):
        return {edge: {k: v for k, v in attrs.items() if k != "last_observed"} for edge, attrs in engine.graph.edges.items()}

    assert counts(batched) == counts(single)
    assert batched.store.execution_count() == 3


async def test_concurrent_executions_share_one_commit() -> None:
    import anyio

    from graphrag import MemoryStore

    class CountingStore(MemoryStore):
        commits = 0

        def commit(self, executions, plan, *, after_id=None):
            self.commits += 1
            return super().commit(executions, plan, after_id=after_id)

    store = CountingStore()
    engine = GraphRAGEngine(store=store)
    results: dict[int, list[GraphEvent]] = {}

    async def submit(i: int) -> None:
        results[i] = await engine.update_from_execution(sequence(["a", f"t{i}"], workflow_id=f"w{i}"))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            for i in range(20):
                tasks.start_soon(submit, i)
    assert store.commits == 1
    assert sorted(events[-1].data.workflow_id for events in results.values()) == sorted(f"w{i}" for i in range(20))
    ids = sorted(e.id for events in results.values() for e in events)
    assert ids == list(range(1, 41))  # each execution got its own edge event and workflow_executed
    # One after the other, each call commits on its own.
    await engine.update_from_execution(sequence(["a", "b"]))
    await engine.update_from_execution(sequence(["a", "b"]))
    assert store.commits == 3


async def test_snapshot_json_is_the_snapshot_document_and_is_cached(tmp_path) -> None:
    import json

    from graphrag import SQLiteStore

    engine = GraphRAGEngine(store=SQLiteStore(tmp_path / "g.db"))
    await engine.update_from_execution(sequence(["files__read", "text__summarize", "plain"]))
    assert json.loads(engine.snapshot_json()) == json.loads(engine.snapshot().model_dump_json())
    await engine.refresh_metrics()
    body = engine.snapshot_json()
    assert json.loads(body) == json.loads(engine.snapshot().model_dump_json())
    assert engine.snapshot_json() is body  # nothing happened: the cached document
    await engine.update_from_execution(sequence(["plain", "files__read"]))
    assert json.loads(engine.snapshot_json())["last_event_id"] == engine.last_event_id
    # reloaded from the file, timestamps read back from SQLite serialise the same way
    reopened = GraphRAGEngine(store=SQLiteStore(tmp_path / "g.db"))
    await reopened.sync_from_database()
    assert json.loads(reopened.snapshot_json()) == json.loads(reopened.snapshot().model_dump_json())


async def test_a_task_without_a_server_asks_the_resolver_the_application_gave() -> None:
    engine = GraphRAGEngine()
    engine.resolve_servers({"x__read": "x.files"}.get)
    tasks = [TaskRun(id="1", tool_id="x__read"), TaskRun(id="2", tool_id="y__write", server="y"), TaskRun(id="3", tool_id="z")]
    await engine.update_from_execution(WorkflowExecution(tasks=tasks))
    assert {n.id: n.server for n in engine.snapshot().nodes} == {"x__read": "x.files", "y__write": "y", "z": None}
async def test_suggestions_report_the_probability_of_next_and_success() -> None:
    engine = GraphRAGEngine()
    # after "a": "b" 6 times (all succeed), "c" 4 times of which 3 fail
    await engine.update_from_executions([WorkflowExecution(tool_ids=["a", "b"]) for _ in range(6)])
    await engine.update_from_executions(
        [WorkflowExecution(tasks=[TaskRun(id="1", tool_id="a"), TaskRun(id="2", tool_id="c", success=i == 0)]) for i in range(4)]
    )
    b, c = engine.suggest_next(["a"])
    assert (b.tool_id, c.tool_id) == ("b", "c")
    assert 0.5 < b.probability < 0.65  # about 6 of 10 transitions, all succeeded
    assert 0.05 < c.probability < 0.15  # 1 of 10
    assert "6 of the 10 transitions out of a" in b.reason


async def test_second_order_evidence_refines_where_it_contradicts_the_last_tool(tmp_path) -> None:
    from graphrag import SQLiteStore

    store = SQLiteStore(tmp_path / "g.db")
    engine = GraphRAGEngine(store=store)
    # after "x" alone, "y" is the usual next tool; but after "p" -> "x" it is always "z"
    await engine.update_from_executions([WorkflowExecution(tool_ids=["q", "x", "y"]) for _ in range(30)])
    await engine.update_from_executions([WorkflowExecution(tool_ids=["p", "x", "z"]) for _ in range(12)])
    assert engine.suggest_next(["x"])[0].tool_id == "y"
    assert engine.suggest_next(["q", "x"])[0].tool_id == "y"
    top = engine.suggest_next(["p", "x"])[0]
    assert top.tool_id == "z" and top.probability > 0.7
    assert "after p -> x it came next and succeeded 12 of 12 times" in top.reason
    # persisted with the edges: a new engine on the same file knows it too
    reloaded = GraphRAGEngine(store=store)
    await reloaded.sync_from_database()
    assert reloaded.suggest_next(["p", "x"])[0].tool_id == "z"
    store.close()


async def test_a_rare_transition_borrows_what_is_known_of_its_target(tmp_path) -> None:
    from graphrag import SQLiteStore
    from graphrag.suggestions import reliability

    def step(source: str, target: str, ok: bool) -> WorkflowExecution:
        return WorkflowExecution(tasks=[TaskRun(id="1", tool_id=source), TaskRun(id="2", tool_id=target, success=ok)])

    store = SQLiteStore(tmp_path / "g.db")
    engine = GraphRAGEngine(store=store)
    # seen elsewhere: "flaky" mostly fails, "steady" always works
    await engine.update_from_executions([step("z", "flaky", i == 0) for i in range(10)] + [step("z", "steady", True) for _ in range(10)])
    # after "a", each seen twice and each worked both times: only the targets' record tells them apart
    await engine.update_from_executions([step("a", "flaky", True), step("a", "flaky", True), step("a", "steady", True), step("a", "steady", True)])
    steady, flaky = engine.suggest_next(["a"])
    assert (steady.tool_id, flaky.tool_id) == ("steady", "flaky") and steady.probability > flaky.probability
    # the per-node sums the estimate uses survive a reload
    reloaded = GraphRAGEngine(store=store)
    await reloaded.sync_from_database()
    for tool in ("flaky", "steady", "a", "z"):
        assert reliability(reloaded.graph, tool) == reliability(engine.graph, tool)
    assert reliability(engine.graph, "flaky") == (1 + 2 + 1) / (12 + 2)
    store.close()


async def test_graph_built_while_learning_is_the_graph_at_its_last_event_id(monkeypatch) -> None:
    """``snapshot_json_async`` lets the loop run between slices; executions learned meanwhile
    (new edges, updated ones, new nodes) never leave the document half old, half new."""
    import asyncio
    import json
    import random

    import graphrag.engine as engine_module

    monkeypatch.setattr(engine_module, "SNAPSHOT_SLICE_EDGES", 5)  # many slices on a small graph
    engine = GraphRAGEngine()
    rng = random.Random(7)
    tools = [f"s{i % 7}__t{i}" for i in range(60)]
    for _ in range(150):
        await engine.update_from_execution(sequence(rng.sample(tools, 4), success=rng.random() > 0.2))
    edges_before = engine.graph.number_of_edges()
    assert edges_before > 100  # dozens of slices

    async def learn_meanwhile() -> int:
        learned = 0
        while not build.done():
            await engine.update_from_execution(sequence(rng.sample(tools + ["late__x", "late__y"], 4)))
            learned += 1
        return learned

    build = asyncio.ensure_future(engine.snapshot_json_async())
    shared = asyncio.ensure_future(engine.snapshot_json_async())  # a second request joins the build
    learned = await learn_meanwhile()
    body = await build
    assert await shared is body
    assert learned > 5  # the loop did run during the build
    document = json.loads(body)
    # Replaying the log up to last_event_id gives exactly the edges and the counts in the document.
    expected: dict[tuple[str, str], int] = {}
    for event in engine.store.events_after(0, 100_000):
        if event.id is not None and event.id <= document["last_event_id"] and event.type in ("edge_created", "edge_updated"):
            expected[(event.data.from_tool_id, event.data.to_tool_id)] = event.data.observed_count
    assert {(e["from_tool_id"], e["to_tool_id"]): e["observed_count"] for e in document["edges"]} == expected
    assert len(document["edges"]) == len(expected)  # each edge once
    # Nothing learned since: the same bytes as the one-go builder, which serves the Python API.
    if engine.last_event_id == document["last_event_id"]:
        assert engine.snapshot_json() == body
    engine._snapshot_cache = None
    assert json.loads(engine.snapshot_json()) == json.loads(engine.snapshot().model_dump_json())


async def test_a_tool_forgotten_during_a_graph_build_is_not_in_the_document(monkeypatch) -> None:
    """An admin's forget between two slices of a ``GET /graph`` build: the edges into the tool,
    copied before it, are copied again (``_drop_tool`` marks their sources)."""
    import asyncio
    import json

    import graphrag.engine as engine_module

    monkeypatch.setattr(engine_module, "SNAPSHOT_SLICE_EDGES", 2)
    engine = GraphRAGEngine()
    for i in range(30):
        await engine.update_from_execution(sequence([f"a{i}", "victim", f"b{i}"]))
        await engine.update_from_execution(sequence([f"x{i}", f"y{i}"]))  # more to copy: a long build
    build = asyncio.ensure_future(engine.snapshot_json_async())
    await asyncio.sleep(0)  # the build has copied its first slices
    await asyncio.sleep(0)
    assert not build.done()
    await engine.forget_tool("victim")
    document = json.loads(await build)
    assert all("victim" not in (e["from_tool_id"], e["to_tool_id"]) for e in document["edges"])
    assert "victim" not in {n["id"] for n in document["nodes"]}
    assert {(e["from_tool_id"], e["to_tool_id"]) for e in document["edges"]} == set(engine.graph.edges)
    assert len(document["edges"]) == 30 and document["last_event_id"] == engine.last_event_id


async def test_a_filtered_graph_build_is_the_document_with_only_the_visible_tools(monkeypatch) -> None:
    """``snapshot_json_async(visible)`` (a profile's GET /graph): the same slices, the same document
    as filtering the whole one (nodes, edges between visible tools, the PageRank top list), counts
    and density of the whole graph; neither cached nor shared with unfiltered builds."""
    import json
    import random

    import graphrag.engine as engine_module

    monkeypatch.setattr(engine_module, "SNAPSHOT_SLICE_EDGES", 3)
    engine = GraphRAGEngine()
    rng = random.Random(3)
    tools = [f"s{i % 4}__t{i}" for i in range(30)]
    for _ in range(80):
        await engine.update_from_execution(sequence(rng.sample(tools, 4)))
    await engine.refresh_metrics()

    def visible(tool_id: str, server: str | None) -> bool:
        return tool_id.startswith(("s0__", "s1__"))

    whole = json.loads(await engine.snapshot_json_async())
    seen = json.loads(await engine.snapshot_json_async(visible))
    shown = {n["id"] for n in whole["nodes"] if visible(n["id"], n["server"])}
    assert shown and len(shown) < len(whole["nodes"])
    assert seen["nodes"] == [n for n in whole["nodes"] if n["id"] in shown]
    assert seen["edges"] == [e for e in whole["edges"] if e["from_tool_id"] in shown and e["to_tool_id"] in shown]
    assert seen["edges"] and len(seen["edges"]) < len(whole["edges"])
    top = [e for e in whole["metrics"]["pagerank_top_10"] if e["tool_id"] in shown]
    assert seen["metrics"] == {**whole["metrics"], "pagerank_top_10": top}
    assert seen["last_event_id"] == whole["last_event_id"]
    assert json.loads(engine.snapshot_json()) == whole  # the cache still holds the whole document


async def test_events_built_without_validation_equal_validated_ones() -> None:
    """The learning step builds its payloads and events with ``events.trusted`` (no validation):
    each must be what validating the same values gives, down to pydantic's instance state and
    the JSON (a pydantic upgrade that changes its slots fails here)."""
    from graphrag.events import GraphEvent as Event

    engine = GraphRAGEngine()
    events = await engine.update_from_execution(sequence(["a", "b", "c"], execution_time_ms=12.5))
    events += await engine.update_from_execution(sequence(["a", "b"], success=False))
    assert {e.type for e in events} == {"edge_created", "edge_updated", "workflow_executed"}
    for event in events:
        payload = event.data
        validated = type(payload)(**dict(payload))  # the same values, validated
        assert payload == validated and payload.model_fields_set == validated.model_fields_set
        assert event.data_json() == validated.model_dump_json()
        assert event == Event(type=event.type, data=validated, id=event.id)
        assert event.model_fields_set == {"type", "data", "id"}
        assert Event.model_validate_json(event.model_dump_json()).model_dump_json() == event.model_dump_json()


async def test_startup_and_a_graph_that_doubled_are_frozen_for_the_collector(monkeypatch) -> None:
    """``gc.freeze()`` after the sync (start-up) and after a ``/graph`` build once the graph has
    doubled since the last freeze, not after every build (each freeze pins what is alive)."""
    import gc

    import graphrag.engine as engine_module

    monkeypatch.setattr(engine_module, "FREEZE_AFTER_EDGES", 3)
    gc.unfreeze()
    try:
        engine = GraphRAGEngine()
        await engine.update_from_execution(sequence(["a", "b", "c", "d"]))  # 3 edges
        await engine.sync_from_database()
        assert gc.get_freeze_count() > 0 and engine._frozen_edges == 3
        gc.unfreeze()
        await engine.update_from_execution(sequence(["d", "e", "f"]))  # 5 edges: not doubled
        await engine.snapshot_json_async()
        assert gc.get_freeze_count() == 0
        await engine.update_from_execution(sequence(["f", "g"]))  # 6 edges: doubled
        await engine.snapshot_json_async()
        assert gc.get_freeze_count() > 0 and engine._frozen_edges == 6
    finally:
        gc.unfreeze()
