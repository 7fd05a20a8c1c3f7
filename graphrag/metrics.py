"""Graph metrics: density, PageRank over confidence weights, Louvain communities.

Computed from an ``ArraysSnapshot`` (see graph_arrays.py) in a worker thread. ``MetricsComputer``
keeps state warm between runs, because at a million edges building things costs more than
computing with them:

- PageRank keeps its sparse matrix. Edges are append-only, so edges added since the matrix was
  built go into a small second matrix, merged into the big one only once it has grown by a
  sixteenth; weight changes just refresh the matrix data in place (one gather). The iteration
  starts from the previous scores, so after a few changes it converges in a few steps.
- Communities keep their graph (igraph's, or arrays for networkx) and receive only new edges;
  large graphs are computed in a child process, because igraph holds the GIL (communities.py).

Everything heavy here is numpy/scipy C code that releases the GIL, so the event loop keeps
running while a recompute is under way.
"""

from __future__ import annotations

import logging
from datetime import datetime

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, Field

from .communities import (
    LOUVAIN_SEED,
    PROCESS_THRESHOLD_EDGES,
    CommunityRequest,
    CommunityState,
    CommunityWorker,
    canonical_labels,
    resolve_backend,
)
from .events import PageRankEntry, utcnow
from .grading import GradingStats
from .graph_arrays import ArraysSnapshot

__all__ = ["DAMPING", "LOUVAIN_SEED", "GraphMetrics", "MetricsComputer", "density", "top_k"]

log = logging.getLogger(__name__)

DAMPING = 0.85
#: networkx's tolerance: its iteration stops when the L1 change falls below N × tol.
PAGERANK_TOL = 1.0e-6
PAGERANK_MAX_ITER = 100
#: We stop when the L1 distance to the fixed point is provably below N × tol: the iteration
#: contracts by DAMPING, so that distance is at most change × d / (1 − d).
_STOP_FACTOR = (1.0 - DAMPING) / DAMPING
#: Merge the matrix of recently added edges into the main one when it holds this share of it.
_DELTA_SHARE = 16
_DELTA_MIN = 4096
#: Consecutive worker failures after which communities stay in-thread for good.
_WORKER_ATTEMPTS = 3


class GraphMetrics(BaseModel):
    node_count: int
    edge_count: int
    density: float
    pagerank_top_10: list[PageRankEntry]
    communities_count: int
    computed_at: datetime = Field(default_factory=utcnow)
    #: Live hit rates of suggestions (grading.py); filled in by the engine's /graph snapshot.
    suggestions: GradingStats | None = None
    # Per-node results, for the /graph snapshot; not part of metrics_updated.
    pagerank: dict[str, float] = Field(default_factory=dict, exclude=True, repr=False)
    communities: dict[str, int] = Field(default_factory=dict, exclude=True, repr=False)


def density(node_count: int, edge_count: int) -> float:
    """E / (N (N − 1)) for a directed graph without self-loops; 0 below two nodes."""
    return edge_count / (node_count * (node_count - 1)) if node_count > 1 else 0.0


def top_k(pagerank: dict[str, float], k: int) -> list[PageRankEntry]:
    """The ``k`` best scores; ties broken by tool id, so the top 10 is stable between runs."""
    ranked = sorted(pagerank.items(), key=lambda item: (-item[1], item[0]))[:k]
    return [PageRankEntry(tool_id=tool_id, score=score) for tool_id, score in ranked]


def _top_k_arrays(nodes: tuple[str, ...], scores: np.ndarray, k: int) -> list[PageRankEntry]:
    """``top_k`` without sorting every node: only those scoring at least the k-th best."""
    n = scores.shape[0]
    if n > k > 0:
        kth = np.partition(scores, n - k)[n - k]
        candidates = np.flatnonzero(scores >= kth).tolist()
    else:
        candidates = list(range(n))
    ranked = sorted(candidates, key=lambda i: (-scores[i], nodes[i]))[: max(k, 0)]
    return [PageRankEntry(tool_id=nodes[i], score=float(scores[i])) for i in ranked]


class _TransitionMatrix:
    """A = weights laid out as A[dst, src], kept as a main CSR part plus recently added edges.

    PageRank multiplies ``A @ (x / out_weight)``: the division happens on the N-vector, so a
    weight change only refreshes ``data`` (a gather by a fixed permutation).
    """

    def __init__(self) -> None:
        self.lineage: int | None = None
        self.main: sp.csr_matrix | None = None
        self.main_nodes = 0
        self.main_edges = 0
        self.order = np.empty(0, dtype=np.int64)  # CSR data position -> edge position
        self.delta: sp.csr_matrix | None = None
        self.delta_version: int | None = None

    def update(self, snapshot: ArraysSnapshot) -> None:
        m = snapshot.edge_count
        if (
            self.main is None
            or snapshot.lineage != self.lineage
            or m < self.main_edges
            or m - self.main_edges > max(_DELTA_MIN, self.main_edges // _DELTA_SHARE)
        ):
            self._build_main(snapshot)
        assert self.main is not None
        self.main.data = snapshot.weight[self.order]
        if m == self.main_edges:
            self.delta = None
        else:
            n = snapshot.node_count
            src, dst = snapshot.src[self.main_edges :], snapshot.dst[self.main_edges :]
            self.delta = sp.csr_matrix((snapshot.weight[self.main_edges :], (dst, src)), shape=(n, n))

    def _build_main(self, snapshot: ArraysSnapshot) -> None:
        n, m = snapshot.node_count, snapshot.edge_count
        # Build the pattern once with each entry's edge position as data (+1: no explicit zeros),
        # so the permutation from edge order to CSR order is read off the result.
        positions = np.arange(1, m + 1, dtype=np.float64)
        pattern = sp.csr_matrix((positions, (snapshot.dst, snapshot.src)), shape=(n, n))
        self.order = pattern.data.astype(np.int64) - 1
        self.main, self.main_nodes, self.main_edges = pattern, n, m
        self.lineage = snapshot.lineage

    def multiply(self, vector: np.ndarray) -> np.ndarray:
        assert self.main is not None
        out = np.zeros(vector.shape[0])
        out[: self.main_nodes] = self.main @ vector[: self.main_nodes]
        if self.delta is not None:
            out += self.delta @ vector
        return out


class MetricsComputer:
    """Computes ``GraphMetrics`` from snapshots; call from one thread at a time.

    ``community_backend``: "auto" (igraph when installed, else networkx), "igraph" or "networkx".
    ``process_threshold_edges``: graphs with more edges get their communities from the worker
    process (None: never; 0: always).
    """

    def __init__(
        self, *, community_backend: str = "auto", process_threshold_edges: int | None = PROCESS_THRESHOLD_EDGES
    ) -> None:
        self.community_backend = resolve_backend(community_backend)
        self.process_threshold_edges = process_threshold_edges
        self._matrix = _TransitionMatrix()
        self._scores: np.ndarray | None = None
        self._scores_lineage: int | None = None
        self._communities = CommunityState()
        self._worker: CommunityWorker | None = None
        self._worker_failures = 0
        #: Iterations the last PageRank took (for benchmarks and tests of the warm start).
        self.last_pagerank_iterations = 0

    def compute(self, snapshot: ArraysSnapshot) -> GraphMetrics:
        scores = self.pagerank(snapshot)
        labels = self.community_labels(snapshot)
        nodes = snapshot.nodes
        metrics = GraphMetrics(
            node_count=snapshot.node_count,
            edge_count=snapshot.edge_count,
            density=density(snapshot.node_count, snapshot.edge_count),
            pagerank_top_10=_top_k_arrays(nodes, scores, 10),
            communities_count=int(labels.max()) + 1 if labels.shape[0] else 0,
        )
        # The per-node maps are built here from typed arrays: validating them again would hold
        # the GIL (and so the event loop) for milliseconds per 10k nodes for nothing.
        return metrics.model_copy(
            update={"pagerank": dict(zip(nodes, scores.tolist())), "communities": dict(zip(nodes, labels.tolist()))}
        )

    def start_worker(self, *, wait: bool = True) -> None:
        """Start the community worker process now rather than on the first large graph.

        Starting it costs up to a second (a fresh interpreter importing numpy and igraph); a
        server that loads a large graph can take that off its first recompute. ``wait``: return
        once the child is ready (blocks: call it from a worker thread in async code).
        """
        if self._worker is None:
            self._worker = CommunityWorker()
        self._worker.start(wait=wait)

    def close(self) -> None:
        """Stop the worker process, if one was started (also happens at exit)."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    # -- PageRank ---------------------------------------------------------------------------
    def pagerank(self, snapshot: ArraysSnapshot) -> np.ndarray:
        """Weighted PageRank (damping 0.85, uniform teleport, dangling mass spread uniformly).

        The same fixed point as ``networkx.pagerank(G, weight="confidence")``.
        """
        n = snapshot.node_count
        if n == 0:
            self.last_pagerank_iterations = 0
            return np.zeros(0)
        self._matrix.update(snapshot)
        out_weight = np.bincount(snapshot.src, weights=snapshot.weight, minlength=n)
        dangling = out_weight == 0
        inverse_out = np.divide(1.0, out_weight, out=np.zeros(n), where=~dangling)
        x = self._start_vector(snapshot)
        stop = n * PAGERANK_TOL * _STOP_FACTOR
        for iteration in range(1, PAGERANK_MAX_ITER + 1):
            previous = x
            x = DAMPING * self._matrix.multiply(previous * inverse_out)
            x += (DAMPING * previous[dangling].sum() + 1.0 - DAMPING) / n
            if np.abs(x - previous).sum() < stop:
                break
        else:
            log.warning("pagerank did not converge in %d iterations", PAGERANK_MAX_ITER)
        self.last_pagerank_iterations = iteration
        x /= x.sum()
        self._scores, self._scores_lineage = x, snapshot.lineage
        return x

    def _start_vector(self, snapshot: ArraysSnapshot) -> np.ndarray:
        # Warm start: node indices are stable and only grow within a lineage, so the last scores
        # still line up; new nodes start at the uniform value.
        n = snapshot.node_count
        x = np.full(n, 1.0 / n)
        previous = self._scores
        if previous is not None and self._scores_lineage == snapshot.lineage and previous.shape[0] <= n:
            x[: previous.shape[0]] = previous
            x /= x.sum()
        return x

    # -- communities ------------------------------------------------------------------------
    def communities(self, snapshot: ArraysSnapshot) -> dict[str, int]:
        """Louvain on the undirected projection, fixed seed: tool id -> community (0 = largest)."""
        return dict(zip(snapshot.nodes, self.community_labels(snapshot).tolist()))

    def community_labels(self, snapshot: ArraysSnapshot) -> np.ndarray:
        """The community of each node index (0 = largest community, then by smallest member)."""
        return canonical_labels(self._membership(snapshot))

    def _membership(self, snapshot: ArraysSnapshot) -> np.ndarray:
        threshold = self.process_threshold_edges
        if threshold is not None and snapshot.edge_count > threshold:
            if self._worker is None:
                self._worker = CommunityWorker()
            try:
                membership = self._worker.membership(
                    self.community_backend,
                    snapshot.lineage,
                    snapshot.node_count,
                    snapshot.src,
                    snapshot.dst,
                    snapshot.weight,
                )
            except RuntimeError:  # the next call starts a fresh worker; this one computes here
                self._worker_failures += 1
                if self._worker_failures >= _WORKER_ATTEMPTS:  # e.g. no subprocesses allowed here
                    self.process_threshold_edges = None
                    log.exception(
                        "community worker failed %d times; communities are computed in-thread from now on",
                        self._worker_failures,
                    )
                else:
                    log.exception("community worker failed; computing in this thread")
            else:
                self._worker_failures = 0
                return membership
        state = self._communities
        continues = snapshot.lineage == state.lineage and snapshot.edge_count >= state.edge_count
        start = state.edge_count if continues else 0
        request = CommunityRequest(
            self.community_backend,
            snapshot.lineage,
            snapshot.node_count,
            start,
            snapshot.src[start:],
            snapshot.dst[start:],
            snapshot.weight,
        )
        return state.membership(request)
