"""Graph metrics: density, PageRank over confidence weights, Louvain communities.

Computed from an ``ArraysSnapshot`` (see graph_arrays.py) in a worker thread. ``MetricsComputer``
keeps state warm between runs: the sparse transition matrix is rebuilt only when the structure
changed (new nodes or edges), and PageRank starts from the previous scores, so a recompute after
a few edge updates converges in a few iterations.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime

import networkx as nx
import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, Field

from .events import PageRankEntry, utcnow
from .graph_arrays import ArraysSnapshot

log = logging.getLogger(__name__)

DAMPING = 0.85
PAGERANK_TOL = 1.0e-6  # per node, as networkx
PAGERANK_MAX_ITER = 100
LOUVAIN_SEED = 42


class GraphMetrics(BaseModel):
    node_count: int
    edge_count: int
    density: float
    pagerank_top_10: list[PageRankEntry]
    communities_count: int
    computed_at: datetime = Field(default_factory=utcnow)
    # Per-node results, for the /graph snapshot; not part of metrics_updated.
    pagerank: dict[str, float] = Field(default_factory=dict, exclude=True, repr=False)
    communities: dict[str, int] = Field(default_factory=dict, exclude=True, repr=False)


def density(node_count: int, edge_count: int) -> float:
    """E / (N (N − 1)) for a directed graph without self-loops; 0 below two nodes."""
    return edge_count / (node_count * (node_count - 1)) if node_count > 1 else 0.0


def top_k(pagerank: dict[str, float], k: int) -> list[PageRankEntry]:
    # Ties broken by tool id, so the top 10 is stable between runs.
    ranked = sorted(pagerank.items(), key=lambda item: (-item[1], item[0]))[:k]
    return [PageRankEntry(tool_id=tool_id, score=score) for tool_id, score in ranked]


class MetricsComputer:
    """Computes ``GraphMetrics`` from snapshots; call from one thread at a time."""

    def __init__(self, *, community_backend: str = "auto") -> None:
        self._community_backend = community_backend
        self._structure_version = -1
        self._matrix: sp.csr_matrix | None = None  # column-stochastic transpose: x' = M @ x
        self._order: np.ndarray | None = None  # matrix data position -> snapshot edge position
        self._scores: np.ndarray | None = None

    def compute(self, snapshot: ArraysSnapshot) -> GraphMetrics:
        scores = self.pagerank(snapshot)
        pagerank = dict(zip(snapshot.nodes, scores.tolist()))
        communities = self.communities(snapshot)
        return GraphMetrics(
            node_count=snapshot.node_count,
            edge_count=snapshot.edge_count,
            density=density(snapshot.node_count, snapshot.edge_count),
            pagerank_top_10=top_k(pagerank, 10),
            communities_count=len(set(communities.values())),
            pagerank=pagerank,
            communities=communities,
        )

    # -- PageRank ---------------------------------------------------------------------------
    def pagerank(self, snapshot: ArraysSnapshot) -> np.ndarray:
        """Weighted PageRank (damping 0.85, uniform teleport, dangling mass spread uniformly)."""
        n = snapshot.node_count
        if n == 0:
            return np.zeros(0)
        matrix = self._transition_matrix(snapshot)
        out_weight = np.bincount(snapshot.src, weights=snapshot.weight, minlength=n)
        dangling = out_weight == 0
        x = self._start_vector(n)
        for _ in range(PAGERANK_MAX_ITER):
            previous = x
            x = DAMPING * (matrix @ x) + (DAMPING * previous[dangling].sum() + 1.0 - DAMPING) / n
            if np.abs(x - previous).sum() < n * PAGERANK_TOL:
                break
        else:
            log.warning("pagerank did not converge in %d iterations", PAGERANK_MAX_ITER)
        x /= x.sum()
        self._scores = x
        return x

    def _transition_matrix(self, snapshot: ArraysSnapshot) -> sp.csr_matrix:
        n, src, dst = snapshot.node_count, snapshot.src, snapshot.dst
        if self._matrix is None or snapshot.structure_version != self._structure_version:
            # Build the pattern once per structure; data holds each entry's edge position.
            positions = np.arange(1, src.shape[0] + 1, dtype=np.float64)  # +1: keep explicit entries
            pattern = sp.csr_matrix((positions, (dst, src)), shape=(n, n))
            self._order = pattern.data.astype(np.int64) - 1
            self._matrix = pattern
            self._structure_version = snapshot.structure_version
        assert self._order is not None
        out_weight = np.bincount(src, weights=snapshot.weight, minlength=n)
        order = self._order
        with np.errstate(divide="ignore", invalid="ignore"):
            self._matrix.data = snapshot.weight[order] / out_weight[src[order]]
        return self._matrix

    def _start_vector(self, n: int) -> np.ndarray:
        # Warm start: node indices are stable and only grow, so the last scores still line up.
        if self._scores is None or self._scores.shape[0] > n:
            return np.full(n, 1.0 / n)
        x = np.full(n, 1.0 / n)
        x[: self._scores.shape[0]] = self._scores
        return x / x.sum()

    # -- communities ------------------------------------------------------------------------
    def communities(self, snapshot: ArraysSnapshot) -> dict[str, int]:
        """Louvain on the undirected projection (reciprocal edges' weights summed), fixed seed."""
        if snapshot.node_count == 0:
            return {}
        if self._community_backend in ("auto", "igraph"):
            try:
                return _igraph_louvain(snapshot)
            except ImportError:
                if self._community_backend == "igraph":
                    raise
        return _networkx_louvain(snapshot)


def _undirected_weights(snapshot: ArraysSnapshot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    low = np.minimum(snapshot.src, snapshot.dst)
    high = np.maximum(snapshot.src, snapshot.dst)
    matrix = sp.coo_matrix((snapshot.weight, (low, high)), shape=(snapshot.node_count,) * 2).tocsr()
    matrix.sum_duplicates()
    coo = matrix.tocoo()
    return coo.row, coo.col, coo.data


def _networkx_louvain(snapshot: ArraysSnapshot) -> dict[str, int]:
    rows, cols, weights = _undirected_weights(snapshot)
    graph = nx.Graph()
    graph.add_nodes_from(range(snapshot.node_count))
    graph.add_weighted_edges_from(zip(rows.tolist(), cols.tolist(), weights.tolist()))
    parts = nx.community.louvain_communities(graph, weight="weight", seed=LOUVAIN_SEED)
    return _label(snapshot, parts)


def _igraph_louvain(snapshot: ArraysSnapshot) -> dict[str, int]:
    import igraph  # optional extra "fast"

    rows, cols, weights = _undirected_weights(snapshot)
    graph = igraph.Graph(n=snapshot.node_count, edges=np.column_stack((rows, cols)).tolist(), directed=False)
    igraph.set_random_number_generator(random.Random(LOUVAIN_SEED))
    clustering = graph.community_multilevel(weights=weights.tolist())
    return _label(snapshot, [set(members) for members in clustering])


def _label(snapshot: ArraysSnapshot, parts: list[set[int]]) -> dict[str, int]:
    # Community 0 is the largest, then by smallest member: labels stay stable for colouring.
    ordered = sorted(parts, key=lambda part: (-len(part), min(part)))
    labels: dict[str, int] = {}
    for label, part in enumerate(ordered):
        for index in part:
            labels[snapshot.nodes[index]] = label
    return labels
