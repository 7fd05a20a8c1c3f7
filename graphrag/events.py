"""Event models: every learning step of the engine, and the per-connection events of the stream.

Each event type has one payload model. A payload's JSON is the SSE ``data`` line: its fields plus
``timestamp`` (ISO 8601, UTC, milliseconds, ``Z``). ``GraphEvent`` pairs a payload with its type
and, for graph events, the id the store's log gave it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar

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
    #: Graph events get an id from the store's log; live and connection events never do.
    has_id: ClassVar[bool] = True
    #: Connection events (``connected``, ``heartbeat``, ``reset``) belong to one stream and pass
    #: every filter; all others are filtered by type, tool, server and workflow.
    per_connection: ClassVar[bool] = False

    if TYPE_CHECKING:
        timestamp: datetime

    def named_tools(self) -> tuple[str, ...]:
        """The tool ids this event names (what ``?tools=`` filters match): none by default."""
        return ()

    def named_server(self) -> str | None:
        """The downstream server this event names itself, if any (``?servers=``)."""
        return None

    def named_workflow(self) -> str | None:
        """The workflow this event belongs to, if any (``?workflow_id=``)."""
        return None


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

    def named_tools(self) -> tuple[str, ...]:
        return (self.from_tool_id, self.to_tool_id)


class EdgeUpdatedData(EventPayload):
    event_type: ClassVar[str] = "edge_updated"
    from_tool_id: str
    to_tool_id: str
    old_confidence: float = Field(gt=0, le=1)
    new_confidence: float = Field(gt=0, le=1)
    observed_count: int = Field(ge=1)
    edge_type: EdgeType
    timestamp: Timestamp = _timestamp()

    def named_tools(self) -> tuple[str, ...]:
        return (self.from_tool_id, self.to_tool_id)


class WorkflowExecutedData(EventPayload):
    event_type: ClassVar[str] = "workflow_executed"
    workflow_id: str
    tool_ids: list[str]
    success: bool
    execution_time_ms: float = Field(ge=0)
    timestamp: Timestamp = _timestamp()

    def named_tools(self) -> tuple[str, ...]:
        return tuple(self.tool_ids)

    def named_workflow(self) -> str | None:
        return self.workflow_id


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


ToolRemovedReason = Literal["disconnected", "removed", "config_changed"]
TaskStatus = Literal["started", "succeeded", "failed", "skipped"]


class _ToolChange(EventPayload):
    """A tool of a downstream server, as the gateway exposes it, and that server (given, not parsed)."""

    tool_id: str
    server: str

    def named_tools(self) -> tuple[str, ...]:
        return (self.tool_id,)

    def named_server(self) -> str | None:
        return self.server


class ToolAddedData(_ToolChange):
    """A downstream's tool became available (its server connected, or listed a new tool)."""

    event_type: ClassVar[str] = "tool_added"
    timestamp: Timestamp = _timestamp()


class ToolRemovedData(_ToolChange):
    """A tool is no longer available: its server went away (``disconnected``), stopped listing it
    (``removed``), or left the config (``config_changed``)."""

    event_type: ClassVar[str] = "tool_removed"
    reason: ToolRemovedReason
    timestamp: Timestamp = _timestamp()


class ToolForgottenData(EventPayload):
    """An administrator deleted one tool's learned history: its node, every edge to or from it and
    every second-order count through it (``pml-gateway admin forget-tool``, ``DELETE
    /graph/tools/{tool_id}``). A client drops the tool and its edges."""

    event_type: ClassVar[str] = "tool_forgotten"
    tool_id: str
    server: str | None = Field(description="The server recorded with the tool's node (null: external).")
    edges_removed: int = Field(ge=0)
    transitions_removed: int = Field(ge=0)
    timestamp: Timestamp = _timestamp()

    def named_tools(self) -> tuple[str, ...]:
        return (self.tool_id,)

    def named_server(self) -> str | None:
        return self.server


class GraphResetData(EventPayload):
    """An administrator reset the learned graph (``pml-gateway admin reset``, ``POST /graph/reset``):
    every node, edge, second-order count and recorded execution is gone, and the log before this
    event with them. A client empties its graph (the tools the servers offer stay available)."""

    event_type: ClassVar[str] = "graph_reset"
    nodes_removed: int = Field(ge=0)
    edges_removed: int = Field(ge=0)
    timestamp: Timestamp = _timestamp()


class WorkflowProgressData(EventPayload):
    """One task of a running workflow changed state: live only (no id, never stored)."""

    event_type: ClassVar[str] = "workflow_progress"
    has_id: ClassVar[bool] = False
    workflow_id: str
    task_id: str
    tool_id: str
    status: TaskStatus
    completed: int = Field(ge=0, description="Tasks settled so far (succeeded, failed or skipped).")
    total: int = Field(ge=1)
    timestamp: Timestamp = _timestamp()

    def named_tools(self) -> tuple[str, ...]:
        return (self.tool_id,)

    def named_workflow(self) -> str | None:
        return self.workflow_id


class HeartbeatData(EventPayload):
    per_connection: ClassVar[bool] = True
    event_type: ClassVar[str] = "heartbeat"
    has_id: ClassVar[bool] = False
    connected_clients: int = Field(ge=0)
    uptime_seconds: float = Field(ge=0)
    timestamp: Timestamp = _timestamp()


class ConnectedData(EventPayload):
    per_connection: ClassVar[bool] = True
    event_type: ClassVar[str] = "connected"
    has_id: ClassVar[bool] = False
    client_id: str
    connected_clients: int = Field(ge=0)
    last_event_id: int | None
    timestamp: Timestamp = _timestamp()


class ResetData(EventPayload):
    per_connection: ClassVar[bool] = True
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
        ToolAddedData,
        ToolRemovedData,
        ToolForgottenData,
        GraphResetData,
        WorkflowProgressData,
        HeartbeatData,
        ConnectedData,
        ResetData,
    )
}
#: Graph events that delete learned history: a follower that meets one reloads the whole graph.
ERASING_EVENT_TYPES: frozenset[str] = frozenset({"tool_forgotten", "graph_reset"})
#: Types produced by the engine, stored in the log and given ids.
GRAPH_EVENT_TYPES: frozenset[str] = frozenset(t for t, m in PAYLOAD_MODELS.items() if m.has_id)
#: Types that belong to one stream connection (no id, never stored, never filtered out).
CONNECTION_EVENT_TYPES: frozenset[str] = frozenset(t for t, m in PAYLOAD_MODELS.items() if m.per_connection)
#: Types broadcast live to every stream but never stored (no id): ``workflow_progress``.
LIVE_EVENT_TYPES: frozenset[str] = frozenset(t for t, m in PAYLOAD_MODELS.items() if not m.has_id and not m.per_connection)
#: Types a ``?types=`` filter selects among (the others always come).
FILTERABLE_EVENT_TYPES: frozenset[str] = GRAPH_EVENT_TYPES | LIVE_EVENT_TYPES
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
        return trusted(cls, {"type": data.event_type, "data": data, "id": id})

    @cached_property
    def _data_json(self) -> str:
        # The payload's own serializer, called directly (what model_dump_json does, minus its wrapper).
        data = self.data
        return type(data).__pydantic_serializer__.to_json(data).decode()

    def data_json(self) -> str:
        """The payload as one line of compact JSON: the SSE ``data`` field (computed once)."""
        try:  # where cached_property keeps it, read without its descriptor (and its lock): hot path
            return self.__dict__["_data_json"]  # type: ignore[no-any-return]
        except KeyError:
            return self._data_json


_Model = TypeVar("_Model", bound=BaseModel)


def trusted(cls: type[_Model], fields: dict[str, Any]) -> _Model:
    """A model from values this package computed itself, every field given: no validation.

    What ``model_construct`` does, without its per-field loop: 0.7 µs against 3.2 µs for a
    ``GraphEvent`` (5 events per learned execution). The one place that sets pydantic's instance
    slots directly; tests/test_engine.py compares its models with validated ones, field by field.
    """
    model = cls.__new__(cls)
    object.__setattr__(model, "__dict__", fields)
    object.__setattr__(model, "__pydantic_fields_set__", set(fields))
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model
