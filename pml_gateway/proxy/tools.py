"""The gateway's own tools (DESIGN.md "MCP surface"): metrics, search, suggestions, workflows.

Each tool has a pydantic input model (its ``inputSchema``, checked before it runs) and an output
model (its ``outputSchema``). Results carry the output as ``structuredContent`` and the same JSON
as text, in wire form like every result in the proxy. Bad arguments come back as a tool error
naming the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mcp.types as types
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from graphrag import GraphRAGEngine

from pml_gateway.proxy.downstream import errors
from pml_gateway.auth.profiles import Profile
from pml_gateway.proxy.registry import ToolRegistry
from pml_gateway.proxy.workflows import ProgressReporter, Recorder, ToolCaller, WorkflowRequest, WorkflowResult, WorkflowRunner

__all__ = ["NAMES", "GatewayTools", "ProgressReporter", "definitions"]

GRAPH_METRICS = "pml_graph_metrics"
SEARCH_TOOLS = "pml_search_tools"
SUGGEST_NEXT_TOOLS = "pml_suggest_next_tools"
EXECUTE_WORKFLOW = "pml_execute_workflow"
NAMES = frozenset({GRAPH_METRICS, SEARCH_TOOLS, SUGGEST_NEXT_TOOLS, EXECUTE_WORKFLOW})


# -- inputs --------------------------------------------------------------------------------------


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GraphMetricsInput(_Input):
    pass


class SearchToolsInput(_Input):
    query: str = Field(min_length=1, max_length=500, description="Words to look for in tool names and descriptions.")
    limit: int = Field(default=5, ge=1, le=50, description="How many tools to return.")
    context_tools: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="Tools already used: tools the graph learned to follow them rank higher.",
    )


class SuggestNextInput(_Input):
    after: list[str] = Field(
        min_length=1, max_length=50, description="Tool ids just used, oldest first; the last weighs most."
    )
    limit: int = Field(default=5, ge=1, le=50, description="How many suggestions to return.")


# -- outputs -------------------------------------------------------------------------------------


class PageRankScore(BaseModel):
    tool_id: str
    score: float


class GraphMetricsOutput(BaseModel):
    node_count: int
    edge_count: int
    density: float
    pagerank_top_10: list[PageRankScore]
    communities_count: int
    computed_at: str = Field(description="When the metrics were computed (ISO 8601, UTC).")
    last_event_id: int | None = Field(description="Newest graph event: resume /events/stream from here.")


class ToolMatch(BaseModel):
    tool_id: str
    server: str | None = Field(description="Downstream server, or null for the gateway's own tools.")
    description: str | None
    score: float = Field(description="Text match plus graph boost; higher is better.")
    text_score: float
    graph_score: float = Field(description="Learned confidence of an edge from a context tool (0 if none).")
    reason: str


class SearchToolsOutput(BaseModel):
    query: str
    tools: list[ToolMatch]


class NextToolSuggestion(BaseModel):
    tool_id: str
    confidence: float
    reason: str
    available: bool = Field(description="Whether the tool can be called right now.")


class SuggestNextOutput(BaseModel):
    after: list[str]
    suggestions: list[NextToolSuggestion]


# -- the tools -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    name: str
    title: str
    description: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    read_only: bool


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with ``$defs`` inlined: not every client resolves ``$ref``."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    schema = inline(schema)
    schema.pop("title", None)
    schema.setdefault("properties", {})
    return schema


SPECS: tuple[_Spec, ...] = (
    _Spec(
        GRAPH_METRICS,
        "Graph metrics",
        "Metrics of the learned tool graph: node and edge counts, density, the PageRank top 10, "
        "the number of communities, when they were computed and the newest event id.",
        GraphMetricsInput,
        GraphMetricsOutput,
        True,
    ),
    _Spec(
        SEARCH_TOOLS,
        "Search tools",
        "Find tools by words in their names and descriptions. Tools that the graph learned to follow "
        "`context_tools` rank higher.",
        SearchToolsInput,
        SearchToolsOutput,
        True,
    ),
    _Spec(
        SUGGEST_NEXT_TOOLS,
        "Suggest next tools",
        "Tools that usually come next after the given ones, from the learned graph, each with its "
        "confidence and the reason (edge type, counts).",
        SuggestNextInput,
        SuggestNextOutput,
        True,
    ),
    _Spec(
        EXECUTE_WORKFLOW,
        "Execute workflow",
        "Run a DAG of tool calls: each task calls `tool` with `arguments` once every task in its "
        "`depends_on` succeeded; independent tasks run in parallel; a failed task skips its dependents. "
        "Reports progress when given a progress token, records the execution for learning, and returns "
        "each task's result.",
        WorkflowRequest,
        WorkflowResult,
        False,
    ),
)


def definitions() -> list[types.Tool]:
    return [
        types.Tool(
            name=spec.name,
            title=spec.title,
            description=spec.description,
            input_schema=_schema(spec.input_model),
            output_schema=_schema(spec.output_model),
            annotations=types.ToolAnnotations(read_only_hint=spec.read_only, open_world_hint=not spec.read_only),
        )
        for spec in SPECS
    ]


def structured_result(output: BaseModel) -> dict[str, Any]:
    """The output as a tool result in wire form: ``structuredContent`` and the same JSON as text."""
    data = output.model_dump(mode="json")
    return {
        "content": [{"type": "text", "text": json.dumps(data, separators=(",", ":"))}],
        "structuredContent": data,
        "isError": False,
        "resultType": "complete",
    }


def describe_validation(tool: str, exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"]) or "arguments"
        parts.append(f"{loc}: {error['msg']}")
    return errors.invalid_arguments(tool, "; ".join(parts))


_WORD = re.compile(r"[a-z0-9]+")


def _everything(name: str) -> bool:
    """The visibility of a caller without a profile."""
    return True


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class GatewayTools:
    """Answers calls to the pml_* tools."""

    def __init__(
        self,
        engine: GraphRAGEngine,
        registry: ToolRegistry,
        call_downstream: ToolCaller,
        record: Recorder,
        missing: Callable[[str], str] = errors.unknown_tool,
    ) -> None:
        self.engine = engine
        self._missing = missing  # why a tool name is not callable (DownstreamPool.missing)
        self.registry = registry
        self.runner = WorkflowRunner(call_downstream, record, server_of=registry.owner, on_task=engine.emit_live)
        self._definitions = definitions()

    def definitions(self) -> list[types.Tool]:
        return self._definitions

    def input_schema(self, name: str) -> dict[str, Any] | None:
        for tool in self._definitions:
            if tool.name == name:
                return tool.input_schema
        return None

    async def call(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        progress: ProgressReporter | None = None,
        *,
        profile: Profile | None = None,
    ) -> dict[str, Any]:
        """Run a pml_* tool; the result in wire form (bad arguments: a tool error naming the field).

        With a ``profile`` (auth/profiles.py), only its tools appear or run.
        """
        spec = next(s for s in SPECS if s.name == name)
        try:
            params = spec.input_model.model_validate(arguments or {})
        except ValidationError as exc:
            return errors.tool_error(describe_validation(name, exc))
        visible = self.visibility(profile)
        if isinstance(params, GraphMetricsInput):
            return structured_result(await self.graph_metrics(visible))
        if isinstance(params, SearchToolsInput):
            return structured_result(self.search_tools(params, visible))
        if isinstance(params, SuggestNextInput):
            return structured_result(self.suggest_next(params, visible))
        assert isinstance(params, WorkflowRequest)
        problem = self._check_workflow_tools(params, visible)
        if problem:
            return errors.tool_error(errors.invalid_arguments(name, problem))
        # A workflow whose tasks failed still ran: the per-task results say what happened.
        return structured_result(await self.runner.run(params, progress))

    def visibility(self, profile: Profile | None) -> Callable[[str], bool]:
        """[auth] Whether a tool id is visible to (and callable by) a caller with this profile.

        Everything without a profile; with one, the gateway's own tools and what the profile allows.
        """
        if profile is None:
            return _everything

        def visible(name: str) -> bool:
            if name in NAMES:
                return True
            entry = self.registry.get(name)
            return profile.allows_tool(name, entry.server if entry is not None else None)

        return visible

    # -- pml_graph_metrics -------------------------------------------------------------------

    async def graph_metrics(self, visible: Callable[[str], bool] = _everything) -> GraphMetricsOutput:
        engine = self.engine
        metrics = engine.metrics
        graph = engine.graph
        if metrics is None or (metrics.node_count, metrics.edge_count) != (
            graph.number_of_nodes(),
            graph.number_of_edges(),
        ):
            # Stale or never computed: compute now so the answer matches GET /graph.
            metrics = await engine.refresh_metrics()
        return GraphMetricsOutput(
            node_count=metrics.node_count,
            edge_count=metrics.edge_count,
            density=metrics.density,
            pagerank_top_10=[
                PageRankScore(tool_id=e.tool_id, score=e.score) for e in metrics.pagerank_top_10 if visible(e.tool_id)
            ],
            communities_count=metrics.communities_count,
            computed_at=metrics.model_dump(mode="json")["computed_at"],
            last_event_id=engine.last_event_id,
        )

    # -- pml_search_tools --------------------------------------------------------------------

    def search_tools(self, params: SearchToolsInput, visible: Callable[[str], bool] = _everything) -> SearchToolsOutput:
        query_words = list(dict.fromkeys(_words(params.query)))
        boosts: dict[str, tuple[float, str]] = {}
        known_context = [t for t in params.context_tools if t in self.engine.graph]
        if known_context:
            for s in self.engine.suggest_next(known_context, limit=10_000):
                boosts[s.tool_id] = (s.confidence, s.reason)
        candidates: list[tuple[str, str | None, str | None]] = [
            (entry.name, entry.server, entry.tool.description) for entry in self.registry.tools()
        ]
        candidates += [(tool.name, None, tool.description) for tool in self._definitions]
        candidates = [candidate for candidate in candidates if visible(candidate[0])]
        matches: list[ToolMatch] = []
        for name, server, description in candidates:
            text = _text_score(query_words, params.query, name, description or "")
            if text <= 0:
                continue
            graph_score, graph_reason = boosts.get(name, (0.0, ""))
            matched = [w for w in query_words if w in name.lower() or w in (description or "").lower()]
            reason = f"matches {', '.join(matched)}" if matched else "matches the query"
            if graph_score:
                reason += f"; {graph_reason}"
            matches.append(
                ToolMatch(
                    tool_id=name,
                    server=server,
                    description=description,
                    score=round(text + graph_score, 6),
                    text_score=round(text, 6),
                    graph_score=round(graph_score, 6),
                    reason=reason,
                )
            )
        matches.sort(key=lambda m: (-m.score, m.tool_id))
        return SearchToolsOutput(query=params.query, tools=matches[: params.limit])

    # -- pml_suggest_next_tools --------------------------------------------------------------

    def suggest_next(self, params: SuggestNextInput, visible: Callable[[str], bool] = _everything) -> SuggestNextOutput:
        if visible is _everything:
            suggestions = self.engine.suggest_next(params.after, limit=params.limit)
        else:  # [auth] a profile: hidden tools are neither evidence nor answers
            after = [tool for tool in params.after if visible(tool)]
            ranked = self.engine.suggest_next(after, limit=10_000) if after else []
            suggestions = [s for s in ranked if visible(s.tool_id)][: params.limit]
        return SuggestNextOutput(
            after=params.after,
            suggestions=[
                NextToolSuggestion(
                    tool_id=s.tool_id,
                    confidence=s.confidence,
                    reason=s.reason,
                    available=s.tool_id in self.registry,
                )
                for s in suggestions
            ],
        )

    # -- pml_execute_workflow ----------------------------------------------------------------

    def _check_workflow_tools(self, request: WorkflowRequest, visible: Callable[[str], bool] = _everything) -> str | None:
        for index, task in enumerate(request.tasks):
            if task.tool in NAMES:
                return f"tasks.{index}.tool: the gateway's own tools cannot run inside a workflow"
            if not visible(task.tool):
                return f"tasks.{index}.tool: {task.tool!r} is not allowed for this profile"
            if task.tool not in self.registry:
                return f"tasks.{index}.tool: {self._missing(task.tool)}"
        return None


def _text_score(query_words: list[str], query: str, name: str, description: str) -> float:
    """In [0, ~1.5]: share of query words found, the name weighing twice the description."""
    if not query_words:
        return 0.0
    name_words = set(_words(name))
    name_lower = name.lower()
    description_words = set(_words(description))
    score = 0.0
    for word in query_words:
        if word in name_words:
            score += 1.0
        elif word in name_lower:
            score += 0.75  # part of a word of the name: "note" in "notes__read_note"
        elif word in description_words:
            score += 0.5
        elif any(d.startswith(word) for d in description_words):
            score += 0.35
    score /= len(query_words)
    if query.strip().lower() in name_lower:
        score += 0.5  # the whole query is in the name
    return score
