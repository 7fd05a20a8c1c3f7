"""The graph as one JSON document: ``GET /graph``. Resume the stream from ``last_event_id``."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from .events import EdgeType
from .metrics import GraphMetrics


class SnapshotNode(BaseModel):
    id: str
    server: str | None
    pagerank: float | None  # None until metrics were first computed
    community: int | None


class SnapshotEdge(BaseModel):
    from_tool_id: str
    to_tool_id: str
    confidence: float
    observed_count: int
    success_count: int
    failure_count: int
    edge_type: EdgeType
    last_observed: datetime


class GraphSnapshot(BaseModel):
    last_event_id: int | None
    nodes: list[SnapshotNode]
    edges: list[SnapshotEdge]
    metrics: GraphMetrics | None
