"""Metrics: density, PageRank and communities, checked by hand and against networkx.

PageRank is compared with networkx run to convergence (``tol=1e-12``): networkx's default stops
when one step changes the scores by less than N × 1e-6 in total, which leaves its own answer
a few 1e-6 away from the fixed point; ours stops when the distance to the fixed point is
provably below that, so the two defaults may differ by slightly more than 1e-6.
"""

from __future__ import annotations

import itertools
import os
import random
import sys

import networkx as nx
import numpy as np
import pytest

from executions import sequence
from graphrag import GraphRAGEngine
from graphrag.communities import CommunityWorker, igraph_available
from graphrag.graph_arrays import GraphArrays
from graphrag.metrics import DAMPING, MetricsComputer, density

pytestmark = pytest.mark.anyio

BACKENDS = [
    "networkx",
    pytest.param("igraph", marks=pytest.mark.skipif(not igraph_available(), reason="igraph not installed")),
]


def arrays_of(graph: nx.DiGraph) -> GraphArrays:
    """The numeric mirror of a networkx graph with ``confidence`` weights, nodes in graph order."""
    arrays = GraphArrays()
    for node in graph.nodes:
        arrays.node_index(str(node))
    for source, target, attrs in graph.edges(data=True):
        arrays.set_edge(str(source), str(target), attrs["confidence"])
    return arrays


def networkx_pagerank(graph: nx.DiGraph) -> dict[str, float]:
    exact = nx.pagerank(graph, alpha=DAMPING, weight="confidence", tol=1e-12, max_iter=10_000)
    return {str(node): score for node, score in exact.items()}


def assert_pagerank_matches(computer: MetricsComputer, arrays: GraphArrays, graph: nx.DiGraph) -> None:
    snapshot = arrays.snapshot()
    scores = dict(zip(snapshot.nodes, computer.pagerank(snapshot).tolist()))
    expected = networkx_pagerank(graph)
    assert scores.keys() == expected.keys()
    for node, score in expected.items():
        assert scores[node] == pytest.approx(score, abs=1e-6), node


def random_weighted_digraph(nodes: int, edges: int, seed: int) -> nx.DiGraph:
    rng = random.Random(seed)
    graph = nx.gnm_random_graph(nodes, edges, directed=True, seed=seed)
    for source, target in graph.edges:
        graph[source][target]["confidence"] = rng.uniform(0.01, 1.0)
    return graph


def two_cliques(size: int = 5) -> nx.DiGraph:
    """Two dense groups of tools, both directions inside each, one weak link between them."""
    graph = nx.DiGraph()
    groups = [[f"a__t{i}" for i in range(size)], [f"b__t{i}" for i in range(size)]]
    for group in groups:
        graph.add_nodes_from(group)
    for group in groups:
        for source, target in itertools.permutations(group, 2):
            graph.add_edge(source, target, confidence=0.9)
    graph.add_edge(groups[0][-1], groups[1][0], confidence=0.05)
    return graph


# -- by hand ------------------------------------------------------------------------------------
def test_density_by_hand() -> None:
    assert density(0, 0) == 0.0
    assert density(1, 0) == 0.0
    assert density(4, 3) == 3 / 12
    assert density(3, 6) == 1.0


def test_pagerank_of_one_edge_by_hand() -> None:
    # a -> b, b dangling (its mass is spread over both). With d = 0.85, n = 2:
    #   x_a = 0.15/2 + 0.85 * x_b/2,  x_a + x_b = 1  =>  x_a = 0.5 / 1.425 = 20/57.
    graph = nx.DiGraph()
    graph.add_edge("a", "b", confidence=0.7)
    scores = MetricsComputer().pagerank(arrays_of(graph).snapshot())
    assert scores.tolist() == pytest.approx([20 / 57, 37 / 57], abs=1e-7)


def test_pagerank_of_a_cycle_is_uniform_whatever_the_weights() -> None:
    graph = nx.DiGraph()
    graph.add_edge("a", "b", confidence=0.1)
    graph.add_edge("b", "c", confidence=0.9)
    graph.add_edge("c", "a", confidence=0.5)
    scores = MetricsComputer().pagerank(arrays_of(graph).snapshot())
    assert scores.tolist() == pytest.approx([1 / 3] * 3, abs=1e-9)


def test_metrics_of_a_hand_checked_graph() -> None:
    # 4 tools, 3 edges: density 3 / (4 * 3); d is isolated; a -> b, a -> c with weights 3:1.
    graph = nx.DiGraph()
    graph.add_nodes_from(["s__a", "s__b", "s__c", "s__d"])
    graph.add_edge("s__a", "s__b", confidence=0.75)
    graph.add_edge("s__a", "s__c", confidence=0.25)
    graph.add_edge("s__b", "s__c", confidence=0.5)
    metrics = MetricsComputer().compute(arrays_of(graph).snapshot())
    assert (metrics.node_count, metrics.edge_count) == (4, 3)
    assert metrics.density == 0.25
    assert sum(metrics.pagerank.values()) == pytest.approx(1.0)
    # c is fed by both a and b, b by a alone, a and d by nobody (teleport and dangling mass only).
    ranked = [entry.tool_id for entry in metrics.pagerank_top_10]
    assert ranked[:2] == ["s__c", "s__b"]
    assert metrics.pagerank["s__a"] == pytest.approx(metrics.pagerank["s__d"])
    assert ranked[2:] == ["s__a", "s__d"]  # a tie, broken by tool id
    # a, b, c hang together; d has no edge and is a community of its own.
    assert metrics.communities_count == 2
    assert metrics.communities["s__a"] == metrics.communities["s__b"] == metrics.communities["s__c"] == 0
    assert metrics.communities["s__d"] == 1


# -- PageRank against networkx ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("nodes", "edges", "seed"),
    [(2, 1, 0), (5, 4, 1), (12, 20, 2), (30, 60, 3), (60, 400, 4), (80, 150, 5)],
)
def test_pagerank_equals_networkx_on_random_graphs(nodes: int, edges: int, seed: int) -> None:
    graph = random_weighted_digraph(nodes, edges, seed)
    # Every graph gets a dangling node (a sink) and an isolated one.
    graph.add_edge(0, "sink", confidence=0.3)
    graph.add_node("isolated")
    assert_pagerank_matches(MetricsComputer(), arrays_of(graph), graph)


def test_pagerank_equals_networkx_with_dangling_and_isolated_nodes() -> None:
    graph = nx.DiGraph()
    graph.add_nodes_from(["lonely", "sink"])
    graph.add_edge("a", "b", confidence=0.9)
    graph.add_edge("b", "a", confidence=0.2)
    graph.add_edge("b", "sink", confidence=0.6)
    graph.add_edge("a", "sink", confidence=0.05)
    assert_pagerank_matches(MetricsComputer(), arrays_of(graph), graph)


def test_pagerank_with_no_edges_is_uniform() -> None:
    arrays = GraphArrays()
    for node in "abcd":
        arrays.node_index(node)
    assert MetricsComputer().pagerank(arrays.snapshot()).tolist() == pytest.approx([0.25] * 4)
    assert MetricsComputer().pagerank(GraphArrays().snapshot()).shape == (0,)


async def test_engine_pagerank_equals_networkx_on_the_learned_graph() -> None:
    engine = GraphRAGEngine()
    rng = random.Random(7)
    tools = [f"s{i % 3}__tool{i}" for i in range(15)]
    for _ in range(60):
        path = rng.sample(tools, rng.randint(2, 5))
        await engine.update_from_execution(sequence(path, success=rng.random() < 0.7))
    metrics = await engine.refresh_metrics()
    expected = networkx_pagerank(engine.graph)
    for node, score in expected.items():
        assert metrics.pagerank[node] == pytest.approx(score, abs=1e-6)


# -- warm state ---------------------------------------------------------------------------------
def test_warm_start_gives_the_cold_answer_in_fewer_iterations() -> None:
    graph = random_weighted_digraph(300, 2000, seed=11)
    arrays = arrays_of(graph)
    warm = MetricsComputer()
    warm.pagerank(arrays.snapshot())
    cold_iterations = warm.last_pagerank_iterations
    # A few weights move, as after a window of executions.
    rng = random.Random(3)
    for source, target in rng.sample(list(graph.edges), 10):
        graph[source][target]["confidence"] = rng.uniform(0.01, 1.0)
        arrays.set_edge(str(source), str(target), graph[source][target]["confidence"])
    snapshot = arrays.snapshot()
    warm_scores = warm.pagerank(snapshot)
    assert warm.last_pagerank_iterations < cold_iterations
    cold = MetricsComputer()
    cold_scores = cold.pagerank(snapshot)
    np.testing.assert_allclose(warm_scores, cold_scores, atol=1e-6, rtol=0)
    assert_pagerank_matches(warm, arrays, graph)


def test_weight_only_updates_reuse_the_sparse_structure() -> None:
    graph = random_weighted_digraph(100, 600, seed=5)
    arrays = arrays_of(graph)
    computer = MetricsComputer()
    first = arrays.snapshot()
    computer.pagerank(first)
    matrix, order = computer._matrix.main, computer._matrix.order
    source, target = next(iter(graph.edges))
    graph[source][target]["confidence"] = 0.001
    arrays.set_edge(str(source), str(target), 0.001)
    second = arrays.snapshot()
    assert (second.lineage, second.edge_count) == (first.lineage, first.edge_count)  # weights only
    assert_pagerank_matches(computer, arrays, graph)
    assert computer._matrix.main is matrix and computer._matrix.order is order
    assert computer._matrix.delta is None


def test_new_edges_extend_the_matrix_until_it_is_rebuilt() -> None:
    graph = random_weighted_digraph(200, 1000, seed=8)
    arrays = arrays_of(graph)
    computer = MetricsComputer()
    computer.pagerank(arrays.snapshot())
    main = computer._matrix.main
    # A few new edges, one to a brand-new node: kept aside, the main matrix is reused.
    graph.add_edge(0, "newcomer", confidence=0.8)
    arrays.set_edge("0", "newcomer", 0.8)
    for source, target in [(1, 2), (2, 1), (3, 4)]:
        if not graph.has_edge(source, target):
            graph.add_edge(source, target, confidence=0.5)
            arrays.set_edge(str(source), str(target), 0.5)
    assert_pagerank_matches(computer, arrays, graph)
    assert computer._matrix.main is main and computer._matrix.delta is not None
    # Many new edges: merged into a new main matrix.
    rng = random.Random(1)
    added = 0
    while added < 5000:
        source, target = rng.randrange(200), rng.randrange(200)
        if source != target and not graph.has_edge(source, target):
            graph.add_edge(source, target, confidence=rng.uniform(0.01, 1.0))
            arrays.set_edge(str(source), str(target), graph[source][target]["confidence"])
            added += 1
    assert_pagerank_matches(computer, arrays, graph)
    assert computer._matrix.main is not main and computer._matrix.delta is None


def test_a_new_mirror_is_never_mistaken_for_the_old_one() -> None:
    # The engine starts a fresh mirror on every sync: same sizes, different edges.
    first, second = nx.DiGraph(), nx.DiGraph()
    first.add_weighted_edges_from([("a", "b", 0.9), ("b", "c", 0.9)], weight="confidence")
    second.add_weighted_edges_from([("c", "a", 0.9), ("a", "b", 0.1)], weight="confidence")
    computer = MetricsComputer()
    assert_pagerank_matches(computer, arrays_of(first), first)
    assert_pagerank_matches(computer, arrays_of(second), second)


# -- communities --------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_obvious_communities(backend: str) -> None:
    graph = two_cliques()
    metrics = MetricsComputer(community_backend=backend).compute(arrays_of(graph).snapshot())
    assert metrics.communities_count == 2
    # Equal sizes: community 0 is the one holding the first node.
    assert {metrics.communities[f"a__t{i}"] for i in range(5)} == {0}
    assert {metrics.communities[f"b__t{i}"] for i in range(5)} == {1}


@pytest.mark.parametrize("backend", BACKENDS)
def test_communities_are_deterministic_and_incremental_updates_match_a_cold_run(backend: str) -> None:
    graph = random_weighted_digraph(150, 600, seed=21)
    arrays = arrays_of(graph)
    warm = MetricsComputer(community_backend=backend)
    first = warm.communities(arrays.snapshot())
    assert first == MetricsComputer(community_backend=backend).communities(arrays.snapshot())
    rng = random.Random(2)
    for _ in range(40):
        source, target = rng.randrange(150), rng.randrange(150)
        if source != target:
            arrays.set_edge(str(source), str(target), rng.uniform(0.01, 1.0))
    arrays.set_edge("0", "late__tool", 0.4)
    snapshot = arrays.snapshot()
    assert warm.communities(snapshot) == MetricsComputer(community_backend=backend).communities(snapshot)


def test_labels_are_ordered_by_size_then_first_member() -> None:
    graph = two_cliques(4)
    graph.add_nodes_from(["z__alone"])
    for source, target in itertools.permutations(["c__t0", "c__t1", "c__t2", "c__t3", "c__t4", "c__t5"], 2):
        graph.add_edge(source, target, confidence=0.9)
    metrics = MetricsComputer().compute(arrays_of(graph).snapshot())
    assert metrics.communities["c__t0"] == 0  # six members: the largest
    assert metrics.communities["a__t0"] == 1  # four members, comes first
    assert metrics.communities["b__t0"] == 2
    assert metrics.communities["z__alone"] == 3
    assert metrics.communities_count == 4


def test_unknown_backend_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="community_backend: 'fast'"):
        MetricsComputer(community_backend="fast")


@pytest.mark.skipif(not igraph_available(), reason="igraph not installed")
def test_worker_process_gives_the_in_thread_answer_and_stops_on_close() -> None:
    graph = random_weighted_digraph(120, 500, seed=9)
    arrays = arrays_of(graph)
    in_thread = MetricsComputer(process_threshold_edges=None)
    in_process = MetricsComputer(process_threshold_edges=0)
    try:
        assert in_process.communities(arrays.snapshot()) == in_thread.communities(arrays.snapshot())
        worker = in_process._worker
        assert worker is not None and worker.running
        pid = worker.pid
        # Only new edges travel to the child; the answer still matches a cold run.
        arrays.set_edge("0", "brand__new", 0.9)
        arrays.set_edge("brand__new", "1", 0.9)
        snapshot = arrays.snapshot()
        assert in_process.communities(snapshot) == MetricsComputer(process_threshold_edges=None).communities(snapshot)
        assert worker.pid == pid
    finally:
        in_process.close()
    assert not worker.running
    assert not _alive(pid)


@pytest.mark.skipif(not igraph_available(), reason="igraph not installed")
def test_a_dead_worker_is_replaced() -> None:
    graph = two_cliques()
    snapshot = arrays_of(graph).snapshot()
    computer = MetricsComputer(process_threshold_edges=0)
    try:
        expected = computer.communities(snapshot)
        worker = computer._worker
        assert worker is not None and worker._process is not None
        first_pid = worker.pid
        worker._process.kill()
        worker._process.wait(timeout=10)
        # The next call notices and starts a new child.
        assert computer.communities(snapshot) == expected
        assert worker.running and worker.pid != first_pid
    finally:
        computer.close()


def test_without_a_worker_process_communities_are_computed_in_thread(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    snapshot = arrays_of(two_cliques()).snapshot()
    expected = MetricsComputer(process_threshold_edges=None).communities(snapshot)
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")  # subprocesses cannot start
    computer = MetricsComputer(process_threshold_edges=0)
    for _ in range(3):
        assert computer.communities(snapshot) == expected
    assert "could not start" in caplog.text
    assert computer.process_threshold_edges is None  # given up after three attempts: no more logs
    computer.close()


def test_closing_an_unstarted_worker_is_harmless() -> None:
    worker = CommunityWorker()
    worker.close()
    assert not worker.running
    MetricsComputer().close()


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- the mirror ---------------------------------------------------------------------------------
def test_snapshots_do_not_change_when_the_graph_does() -> None:
    arrays = GraphArrays(capacity=2)
    arrays.set_edge("a", "b", 0.5)
    before = arrays.snapshot()
    arrays.set_edge("a", "b", 0.9)  # weight change
    for i in range(10):  # growth past the capacity
        arrays.set_edge("b", f"n{i}", 0.1)
    after = arrays.snapshot()
    assert before.weight.tolist() == [0.5] and before.edge_count == 1 and before.node_count == 2
    assert after.weight[0] == 0.9 and after.edge_count == 11 and after.node_count == 12
    assert (after.src[:1] == before.src).all() and (after.dst[:1] == before.dst).all()
    assert after.lineage == before.lineage
    with pytest.raises(ValueError):
        after.src[0] = 5  # shared with the mirror: read-only


def test_bulk_loaded_mirror_behaves_like_one_built_edge_by_edge() -> None:
    graph = random_weighted_digraph(50, 200, seed=4)
    one_by_one = arrays_of(graph)
    snap = one_by_one.snapshot()
    bulk = GraphArrays.from_edges(snap.nodes, snap.src, snap.dst, snap.weight)
    assert bulk.snapshot().nodes == snap.nodes and bulk.snapshot().lineage != snap.lineage
    bulk.set_edge(snap.nodes[int(snap.src[0])], snap.nodes[int(snap.dst[0])], 0.123)  # known edge
    assert bulk.edge_count == snap.edge_count and bulk.snapshot().weight[0] == 0.123
    with pytest.raises(ValueError, match="duplicate"):
        GraphArrays.from_edges(["a", "b"], np.array([0, 0]), np.array([1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="node"):
        GraphArrays.from_edges(["a", "b"], np.array([0]), np.array([2]), np.array([0.1]))


# -- through the engine -------------------------------------------------------------------------
async def test_engine_getters_after_refresh() -> None:
    engine = GraphRAGEngine()
    assert engine.get_top_pagerank(10) == [] and engine.get_communities_count() == 0
    for path in (["a__x", "a__y", "a__z"], ["a__y", "a__z"], ["b__p", "b__q"], ["b__q", "b__p"]):
        await engine.update_from_execution(sequence(path))
    metrics = await engine.refresh_metrics()
    # 5 tools, 5 edges: a__x->a__y, a__y->a__z, b__p->b__q, b__q->b__p (a__y->a__z seen twice).
    assert engine.get_density() == 4 / (5 * 4) == metrics.density
    assert engine.get_communities_count() == metrics.communities_count == 2
    top = engine.get_top_pagerank(3)
    expected = networkx_pagerank(engine.graph)
    assert [entry.tool_id for entry in top] == sorted(expected, key=lambda t: -expected[t])[:3]
    everything = engine.get_top_pagerank(50)  # more than the 10 kept in the event
    assert len(everything) == 5 and everything[:3] == top
    assert sum(entry.score for entry in everything) == pytest.approx(1.0)


async def test_graph_snapshot_nodes_carry_pagerank_and_community() -> None:
    engine = GraphRAGEngine()
    for path in (["a__x", "a__y"], ["a__y", "a__x"], ["b__p", "b__q"], ["b__q", "b__p"]):
        await engine.update_from_execution(sequence(path))
    before = engine.snapshot().model_dump(mode="json")
    assert all(node["pagerank"] is None and node["community"] is None for node in before["nodes"])
    await engine.refresh_metrics()
    body = engine.snapshot().model_dump(mode="json")
    nodes = {node["id"]: node for node in body["nodes"]}
    assert set(nodes) == {"a__x", "a__y", "b__p", "b__q"}
    assert sum(node["pagerank"] for node in nodes.values()) == pytest.approx(1.0)
    assert all(node["pagerank"] == pytest.approx(0.25) for node in nodes.values())  # symmetric
    assert nodes["a__x"]["community"] == nodes["a__y"]["community"]
    assert nodes["b__p"]["community"] == nodes["b__q"]["community"]
    assert nodes["a__x"]["community"] != nodes["b__p"]["community"]
    assert body["metrics"]["communities_count"] == 2
    assert "pagerank" not in body["metrics"]  # per-node results live on the nodes only


async def test_metrics_follow_a_resync_from_the_store(tmp_path) -> None:
    from graphrag import SQLiteStore

    store = SQLiteStore(tmp_path / "graph.db")
    try:
        engine = GraphRAGEngine(store=store)
        for path in (["a__x", "a__y", "a__z"], ["a__z", "a__x"]):
            await engine.update_from_execution(sequence(path))
        first = await engine.refresh_metrics()
        await engine.sync_from_database()  # a fresh mirror, same graph
        await engine.update_from_execution(sequence(["a__y", "b__w"]))
        second = await engine.refresh_metrics()
        expected = networkx_pagerank(engine.graph)
        assert second.pagerank == pytest.approx(expected, abs=1e-6)
        assert second.node_count == first.node_count + 1
    finally:
        store.close()
