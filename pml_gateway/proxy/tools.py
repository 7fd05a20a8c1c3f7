"""The gateway's own tools (DESIGN.md "MCP surface"): metrics, search, suggestions, workflows.

Each tool has a pydantic input model (its ``inputSchema``, checked before it runs) and an output
model (its ``outputSchema``). Results carry the output as ``structuredContent`` and the same JSON
as text. Bad arguments come back as a tool error naming the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import mcp.types as types
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from graphrag import GraphRAGEngine

from pml_gateway.proxy.registry import ToolRegistry
from pml_gateway.proxy.workflows import ProgressReporter, WorkflowRequest, WorkflowResult, WorkflowRunner

GRAPH_METRICS = "pml_graph_metrics"
SEARCH_TOOLS = "pml_search_tools"
SUGGEST_NEXT_TOOLS = "pml_suggest_next_tools"
EXECUTE_WORKFLOW = "pml_execute_workflow"
CALL_TOOL = "pml_call_tool"
NAMES = frozenset({GRAPH_METRICS, SEARCH_TOOLS, SUGGEST_NEXT_TOOLS, EXECUTE_WORKFLOW, CALL_TOOL})


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


class CallToolInput(_Input):
    tool: str = Field(min_length=1, max_length=128, description="The exposed name of a downstream tool (<server>__<tool>).")
    arguments: dict[str, Any] = Field(default_factory=dict, description="Its arguments, as its input schema says.")


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
    output_model: type[BaseModel] | None  #: None: the result is the called tool's own
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
    _Spec(
        CALL_TOOL,
        "Call tool",
        "Call any downstream tool by its exposed name (as pml_search_tools and pml_suggest_next_tools "
        "return it) with its arguments. The result is the tool's own, exactly as a direct call returns "
        "it, and the call is learned from like a direct one.",
        CallToolInput,
        None,
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
            output_schema=_schema(spec.output_model) if spec.output_model is not None else None,
            annotations=types.ToolAnnotations(read_only_hint=spec.read_only, open_world_hint=not spec.read_only),
        )
        for spec in SPECS
    ]


def output_json(output: BaseModel) -> str:
    """The text JSON of a tool's output (also what the graph://metrics resource reads)."""
    return json.dumps(output.model_dump(mode="json"), separators=(",", ":"))


def structured_result(output: BaseModel, *, is_error: bool = False) -> types.CallToolResult:
    data = output.model_dump(mode="json")
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=output_json(output))],
        structured_content=data,
        is_error=is_error,
    )


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)


def describe_validation(tool: str, exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"]) or "arguments"
        message = re.sub(r"^Value error, ", "", error["msg"])
        parts.append(f"{loc}: {message}")
    return f"invalid arguments for {tool}: " + "; ".join(parts)


_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class GatewayTools:
    """Answers calls to the pml_* tools."""

    def __init__(
        self,
        engine: GraphRAGEngine,
        registry: ToolRegistry,
        call_downstream: Callable[[str, dict[str, Any]], Awaitable[types.CallToolResult]],
        record: Callable[..., Awaitable[Any]],
        unavailable_reason: Callable[[str], str | None] = lambda name: None,
    ) -> None:
        self.engine = engine
        self._unavailable_reason = unavailable_reason
        self.registry = registry
        self.runner = WorkflowRunner(call_downstream, record)
        self._call_downstream = call_downstream
        self._definitions = definitions()

    def definitions(self) -> list[types.Tool]:
        return self._definitions

    def input_schema(self, name: str) -> dict[str, Any] | None:
        for tool in self._definitions:
            if tool.name == name:
                return tool.input_schema
        return None

    async def call(
        self, name: str, arguments: dict[str, Any] | None, progress: ProgressReporter | None = None
    ) -> types.CallToolResult:
        spec = next(s for s in SPECS if s.name == name)
        try:
            params = spec.input_model.model_validate(arguments or {})
        except ValidationError as exc:
            return _error(describe_validation(name, exc))
        if isinstance(params, GraphMetricsInput):
            return structured_result(await self.graph_metrics())
        if isinstance(params, SearchToolsInput):
            return structured_result(self.search_tools(params))
        if isinstance(params, SuggestNextInput):
            return structured_result(self.suggest_next(params))
        if isinstance(params, CallToolInput):  # reached from workflows and tests; upstream unwraps it first
            unwrapped = self.unwrap_call(arguments)
            if isinstance(unwrapped, types.CallToolResult):
                return unwrapped
            return await self._call_downstream(*unwrapped)
        assert isinstance(params, WorkflowRequest)
        problem = self._check_workflow_tools(params)
        if problem:
            return _error(f"invalid arguments for {name}: {problem}")
        result = await self.runner.run(params, progress)
        # A workflow whose tasks failed still ran: the per-task results say what happened.
        return structured_result(result, is_error=False)

    def unwrap_call(self, arguments: dict[str, Any] | None) -> tuple[str, dict[str, Any]] | types.CallToolResult:
        """``pml_call_tool``'s (tool, arguments), or the tool error that says what is wrong with them."""
        try:
            params = CallToolInput.model_validate(arguments or {})
        except ValidationError as exc:
            return _error(describe_validation(CALL_TOOL, exc))
        if params.tool in NAMES:
            return _error(f"invalid arguments for {CALL_TOOL}: tool: {params.tool!r} is one of the gateway's own tools: call it directly")
        return params.tool, params.arguments

    # -- pml_graph_metrics -------------------------------------------------------------------

    async def graph_metrics(self) -> GraphMetricsOutput:
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
            pagerank_top_10=[PageRankScore(tool_id=e.tool_id, score=e.score) for e in metrics.pagerank_top_10],
            communities_count=metrics.communities_count,
            computed_at=metrics.model_dump(mode="json")["computed_at"],
            last_event_id=engine.last_event_id,
        )

    # -- pml_search_tools --------------------------------------------------------------------

    def search_tools(self, params: SearchToolsInput) -> SearchToolsOutput:
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

    def suggest_next(self, params: SuggestNextInput) -> SuggestNextOutput:
        suggestions = self.engine.suggest_next(params.after, limit=params.limit)
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

    def _check_workflow_tools(self, request: WorkflowRequest) -> str | None:
        for index, task in enumerate(request.tasks):
            if task.tool in NAMES:
                return f"tasks.{index}.tool: the gateway's own tools cannot run inside a workflow"
            if task.tool not in self.registry:
                why = self._unavailable_reason(task.tool)
                return f"tasks.{index}.tool: " + (f"{task.tool!r} is unavailable: {why}" if why else f"unknown tool {task.tool!r}")
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
