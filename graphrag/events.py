"""Event models: every learning step of the engine, and the per-connection events of the stream.

Each event type has one payload model. A payload's JSON is the SSE ``data`` line: its fields plus
``timestamp`` (ISO 8601, UTC, milliseconds, ``Z``). ``GraphEvent`` pairs a payload with its type
and, for graph events, the id the store's log gave it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, SerializeAsAny, model_validator

EdgeType = Literal["dependency", "sequence"]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@lru_cache(maxsize=256)  # the events of one learning step share one timestamp
def format_timestamp(value: datetime) -> str:
    """``2026-11-21T12:00:00.000Z``: UTC, millisecond precision, as browsers' Date.parse likes it."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    elif value.utcoffset():
        value = value.astimezone(timezone.utc)
    return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


Timestamp = Annotated[datetime, PlainSerializer(format_timestamp, return_type=str)]


def _timestamp() -> Any:
    return Field(default_factory=utcnow, description="When it happened (ISO 8601, UTC).")


class EventPayload(BaseModel):
    """Base of every payload. ``event_type`` names the SSE ``event:`` field.

    Every payload ends with ``timestamp: Timestamp = _timestamp()``: declared in each class, last,
    so that the JSON lists the payload's own fields first, as the documented examples do (a
    serializer that reorders keys costs more than the rest of the serialisation).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_type: ClassVar[str]
    #: Graph events get an id from the store's log; connection events never do.
    has_id: ClassVar[bool] = True

    if TYPE_CHECKING:
        timestamp: datetime


class GraphSyncedData(EventPayload):
    event_type: ClassVar[str] = "graph_synced"
    node_count: int = Field(ge=0)
    edge_count: int = Field(ge=0)
    sync_duration_ms: float = Field(ge=0)
    timestamp: Timestamp = _timestamp()


class EdgeCreatedData(EventPayload):
    event_type: ClassVar[str] = "edge_created"
    from_tool_id: str
    to_tool_id: str
    confidence_score: float = Field(gt=0, le=1)
    observed_count: int = Field(ge=1)
    edge_type: EdgeType
    timestamp: Timestamp = _timestamp()


class EdgeUpdatedData(EventPayload):
    event_type: ClassVar[str] = "edge_updated"
    from_tool_id: str
    to_tool_id: str
    old_confidence: float = Field(gt=0, le=1)
    new_confidence: float = Field(gt=0, le=1)
    observed_count: int = Field(ge=1)
    edge_type: EdgeType
    timestamp: Timestamp = _timestamp()


class WorkflowExecutedData(EventPayload):
    event_type: ClassVar[str] = "workflow_executed"
    workflow_id: str
    tool_ids: list[str]
    success: bool
    execution_time_ms: float = Field(ge=0)
    timestamp: Timestamp = _timestamp()


class PageRankEntry(BaseModel):
    model_config = ConfigDict(frozen=True)
    tool_id: str
    score: float


class MetricsUpdatedData(EventPayload):
    event_type: ClassVar[str] = "metrics_updated"
    node_count: int = Field(ge=0)
    edge_count: int = Field(ge=0)
    density: float = Field(ge=0)
    pagerank_top_10: list[PageRankEntry]
    communities_count: int = Field(ge=0)
    timestamp: Timestamp = _timestamp()


class HeartbeatData(EventPayload):
    event_type: ClassVar[str] = "heartbeat"
    has_id: ClassVar[bool] = False
    connected_clients: int = Field(ge=0)
    uptime_seconds: float = Field(ge=0)
    timestamp: Timestamp = _timestamp()


class ConnectedData(EventPayload):
    event_type: ClassVar[str] = "connected"
    has_id: ClassVar[bool] = False
    client_id: str
    connected_clients: int = Field(ge=0)
    last_event_id: int | None
    timestamp: Timestamp = _timestamp()


class ResetData(EventPayload):
    event_type: ClassVar[str] = "reset"
    has_id: ClassVar[bool] = False
    reason: str
    oldest_event_id: int | None
    requested_event_id: int | None
    timestamp: Timestamp = _timestamp()


#: Every event type, in the order the docs list them.
PAYLOAD_MODELS: dict[str, type[EventPayload]] = {
    model.event_type: model
    for model in (
        GraphSyncedData,
        EdgeCreatedData,
        EdgeUpdatedData,
        WorkflowExecutedData,
        MetricsUpdatedData,
        HeartbeatData,
        ConnectedData,
        ResetData,
    )
}
#: Types produced by the engine, stored in the log and given ids.
GRAPH_EVENT_TYPES: frozenset[str] = frozenset(t for t, m in PAYLOAD_MODELS.items() if m.has_id)
#: Types that belong to one stream connection (no id, never stored).
CONNECTION_EVENT_TYPES: frozenset[str] = frozenset(t for t, m in PAYLOAD_MODELS.items() if not m.has_id)
EVENT_TYPES: frozenset[str] = frozenset(PAYLOAD_MODELS)


class GraphEvent(BaseModel):
    """One event: its ``type``, its payload ``data`` and, for graph events, its log ``id``."""

    model_config = ConfigDict(frozen=True)

    type: str
    data: SerializeAsAny[EventPayload]
    id: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _payload_for_type(cls, value: Any) -> Any:
        # Accept {"type": ..., "data": {...}} from JSON (the store's log) by picking the payload model.
        if isinstance(value, dict) and isinstance(value.get("data"), dict):
            model = PAYLOAD_MODELS.get(value.get("type", ""))
            if model is None:
                raise ValueError(f"type: unknown event type {value.get('type')!r}")
            value = {**value, "data": model.model_validate(value["data"])}
        return value

    @model_validator(mode="after")
    def _type_matches_payload(self) -> GraphEvent:
        if self.data.event_type != self.type:
            raise ValueError(f"type: {self.type!r} does not match payload {type(self.data).__name__}")
        return self

    @classmethod
    def of(cls, data: EventPayload, id: int | None = None) -> GraphEvent:
        return cls(type=data.event_type, data=data, id=id)

    @classmethod
    def stored(cls, data: EventPayload, id: int) -> GraphEvent:
        """A logged event, built without re-validation: ``data`` is already a validated payload."""
        return cls.model_construct(type=data.event_type, data=data, id=id)

    @cached_property
    def _data_json(self) -> str:
        return self.data.model_dump_json()

    def data_json(self) -> str:
        """The payload as one line of compact JSON: the SSE ``data`` field (computed once)."""
        return self._data_json
