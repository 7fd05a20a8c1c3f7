"""A numeric mirror of the graph, kept up to date edge by edge, for metrics off the event loop.

networkx stays the graph of record. Metrics run in a worker thread and must not iterate the
networkx graph while the loop mutates it; copying 100k edges out of networkx takes longer than a
loop may stall. This mirror keeps nodes as integers and edges as growable numpy arrays, so a
consistent snapshot costs one copy of the weights (a few milliseconds at a million edges).

Edges are append-only: an edge keeps its position forever and only its weight changes. So
``src``/``dst`` up to the current count never change, a snapshot can share them, and the metrics
code can tell that a newer snapshot merely extends an older one (same ``lineage``, more edges)
and update its own structures incrementally instead of rebuilding them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Lineages are unique in the process, so state keyed on one is never mistaken
#: for state of another mirror (the engine starts a fresh mirror on every sync).
_counter = itertools.count(1)


@dataclass(frozen=True)
class ArraysSnapshot:
    """An immutable view: node ids by index, and edges as (src, dst, weight) arrays."""

    nodes: tuple[str, ...]
    src: np.ndarray  # int32 node indices, read-only
    dst: np.ndarray
    weight: np.ndarray  # float64 confidences, a private copy
    #: Identifies the mirror the snapshot came from: two snapshots of the same lineage agree on
    #: every edge position the older one has.
    lineage: int = 0

    @property
    def node_count(self) -> int:
        return len(self.nodes)

    @property
    def edge_count(self) -> int:
        return int(self.src.shape[0])


class GraphArrays:
    def __init__(self, capacity: int = 1024) -> None:
        self._nodes: list[str] = []
        self._index: dict[str, int] = {}
        #: (src << 32) | dst -> edge position; int keys hash faster and weigh less than tuples.
        self._edge_index: dict[int, int] = {}
        self._src = np.empty(capacity, dtype=np.int32)
        self._dst = np.empty(capacity, dtype=np.int32)
        self._weight = np.empty(capacity, dtype=np.float64)
        self._edges = 0
        self._lineage = next(_counter)
        self._nodes_snapshot: tuple[str, ...] = ()

    @classmethod
    def from_edges(
        cls, nodes: Sequence[str], src: np.ndarray, dst: np.ndarray, weight: np.ndarray
    ) -> GraphArrays:
        """A mirror loaded in bulk: ``nodes`` by index, edges as index arrays (no duplicates)."""
        arrays = cls(capacity=max(1024, int(src.shape[0])))
        arrays._nodes = list(nodes)
        arrays._index = {tool_id: i for i, tool_id in enumerate(arrays._nodes)}
        if len(arrays._index) != len(arrays._nodes):
            raise ValueError("nodes: duplicate tool ids")
        m = int(src.shape[0])
        if not (dst.shape[0] == weight.shape[0] == m):
            raise ValueError("src, dst and weight must have the same length")
        if m and (min(int(src.min()), int(dst.min())) < 0 or max(int(src.max()), int(dst.max())) >= len(arrays._nodes)):
            raise ValueError("edges: a node index is out of range")
        arrays._src[:m], arrays._dst[:m], arrays._weight[:m] = src, dst, weight
        keys = (arrays._src[:m].astype(np.int64) << 32) | arrays._dst[:m].astype(np.int64)
        arrays._edge_index = dict(zip(keys.tolist(), range(m)))
        if len(arrays._edge_index) != m:
            raise ValueError("edges: duplicate (src, dst) pairs")
        arrays._edges = m
        return arrays

    @property
    def node_count(self) -> int:
        return len(self._nodes)

    @property
    def edge_count(self) -> int:
        return self._edges

    def node_index(self, tool_id: str) -> int:
        index = self._index.get(tool_id)
        if index is None:
            index = self._index[tool_id] = len(self._nodes)
            self._nodes.append(tool_id)
        return index

    def set_edge(self, source: str, target: str, weight: float) -> None:
        s, t = self.node_index(source), self.node_index(target)
        key = (s << 32) | t
        position = self._edge_index.get(key)
        if position is None:
            if self._edges == self._src.shape[0]:
                self._grow()
            position = self._edge_index[key] = self._edges
            self._src[position], self._dst[position] = s, t
            self._edges += 1
        self._weight[position] = weight

    def _grow(self) -> None:
        # New buffers: views handed out by earlier snapshots keep the old ones alive, unchanged.
        size = self._src.shape[0] * 2
        self._src = np.resize(self._src, size)
        self._dst = np.resize(self._dst, size)
        self._weight = np.resize(self._weight, size)

    def snapshot(self) -> ArraysSnapshot:
        if len(self._nodes_snapshot) != len(self._nodes):
            self._nodes_snapshot = tuple(self._nodes)  # nodes only grow: rebuild the tuple only then
        n = self._edges
        # src/dst below n are never written again (append-only), so views are safe to share.
        src, dst = self._src[:n], self._dst[:n]
        src.flags.writeable = False
        dst.flags.writeable = False
        return ArraysSnapshot(
            nodes=self._nodes_snapshot,
            src=src,
            dst=dst,
            weight=self._weight[:n].copy(),
            lineage=self._lineage,
        )
