"""A numeric mirror of the graph, kept up to date edge by edge, for metrics off the event loop.

networkx stays the graph of record. Metrics run in a worker thread and must not iterate the
networkx graph while the loop mutates it; copying 100k edges out of networkx takes longer than a
loop may stall. This mirror keeps nodes as integers and edges as growable numpy arrays, so a
consistent snapshot is a few memcpys (microseconds), and the sparse matrix can be built from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ArraysSnapshot:
    """An immutable copy: node ids by index, and edges as (src, dst, weight) arrays."""

    nodes: tuple[str, ...]
    src: np.ndarray  # int32 node indices
    dst: np.ndarray
    weight: np.ndarray  # float64 confidences
    #: Bumped whenever an edge or node is added (weights alone changing keep it): lets the metrics
    #: code reuse a sparse structure built for the same version.
    structure_version: int

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
        self._edge_index: dict[tuple[int, int], int] = {}
        self._src = np.empty(capacity, dtype=np.int32)
        self._dst = np.empty(capacity, dtype=np.int32)
        self._weight = np.empty(capacity, dtype=np.float64)
        self._edges = 0
        self._structure_version = 0
        self._nodes_snapshot: tuple[str, ...] = ()

    def node_index(self, tool_id: str) -> int:
        index = self._index.get(tool_id)
        if index is None:
            index = self._index[tool_id] = len(self._nodes)
            self._nodes.append(tool_id)
            self._structure_version += 1
        return index

    def set_edge(self, source: str, target: str, weight: float) -> None:
        s, t = self.node_index(source), self.node_index(target)
        position = self._edge_index.get((s, t))
        if position is None:
            if self._edges == self._src.shape[0]:
                self._grow()
            position = self._edge_index[(s, t)] = self._edges
            self._src[position], self._dst[position] = s, t
            self._edges += 1
            self._structure_version += 1
        self._weight[position] = weight

    def _grow(self) -> None:
        size = self._src.shape[0] * 2
        self._src = np.resize(self._src, size)
        self._dst = np.resize(self._dst, size)
        self._weight = np.resize(self._weight, size)

    def snapshot(self) -> ArraysSnapshot:
        if len(self._nodes_snapshot) != len(self._nodes):
            self._nodes_snapshot = tuple(self._nodes)  # nodes only grow: rebuild the tuple only then
        n = self._edges
        return ArraysSnapshot(
            nodes=self._nodes_snapshot,
            src=self._src[:n].copy(),
            dst=self._dst[:n].copy(),
            weight=self._weight[:n].copy(),
            structure_version=self._structure_version,
        )

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]
