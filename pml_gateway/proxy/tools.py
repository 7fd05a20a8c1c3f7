"""The gateway's own tools (DESIGN.md "MCP surface"): metrics, search, suggestions, calls, workflows.

Each tool has a pydantic input model (its ``inputSchema``, checked before it runs) and an output
model (its ``outputSchema``). Results carry the output as ``structuredContent`` and the same JSON
as text, in wire form like every result in the proxy. Bad arguments come back as a tool error
naming the field.

``pml_call_tool`` has no output model: it answers with the called tool's own result. The upstream
server turns it into a direct call of that tool (``call_target``), so that it is the same call,
with the same result, learning, trace and grading, on one code path.

Lean exposure (``tool_exposure=lean``): ``tools/list`` holds only these tools, in lean form
(``lean_definitions``: one-line descriptions, input schemas without titles and descriptions, no
output schemas), so that a client with hundreds of downstream tools keeps its context small.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import mcp.types as types
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from graphrag import GraphRAGEngine
from graphrag.grading import GradingStats

from pml_gateway.proxy.downstream import errors
from pml_gateway.auth.profiles import Profile
from pml_gateway.proxy.registry import ToolRegistry
from pml_gateway.proxy.workflows import ProgressReporter, Recorder, ToolCaller, WorkflowRequest, WorkflowResult, WorkflowRunner
from pml_gateway.proxy.search import ToolDocument, ToolSearch
from pml_gateway.proxy.traces import TraceRecorder

__all__ = ["NAMES", "GatewayTools", "ProgressReporter", "definitions"]

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
    tool: str = Field(min_length=1, max_length=128, description="Exposed name of the tool to call, as pml_search_tools returns it.")
    arguments: dict[str, Any] = Field(default_factory=dict, description="The tool's arguments.")


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
    suggestions: GradingStats = Field(
        description="Live grading: how often the tool really called next was the top 1 / in the top 3 suggested "
        "(and the same for the first call after a search, under `search`)."
    )


class ToolMatch(BaseModel):
    tool_id: str
    server: str | None = Field(description="Downstream server, or null for the gateway's own tools.")
    title: str | None = None
    description: str | None
    input_schema: dict[str, Any] = Field(description="The tool's input JSON schema, to call it (pml_call_tool).")
    score: float = Field(
        description="text_score + feedback_score + 0.5 graph_score; with the semantic extra, "
        "0.1 (text_score + feedback_score) + 0.9 semantic_score + 0.5 graph_score. Higher is better."
    )
    text_score: float = Field(description="BM25 over name, title, description and parameters, relative to the best match (1).")
    feedback_score: float = Field(
        default=0.0, description="BM25 of the words of earlier searches that led to this tool, on the text_score scale."
    )
    graph_score: float = Field(description="Probability that this tool follows the context tools (0 if none).")
    semantic_score: float = Field(
        default=0.0,
        description="Closeness in meaning (semantic extra; 0 without it): 1 the closest tool, 0 the average.",
    )
    reason: str


class SearchToolsOutput(BaseModel):
    query: str
    tools: list[ToolMatch]


class NextToolSuggestion(BaseModel):
    tool_id: str
    probability: float = Field(description="Estimated probability that this tool comes next and succeeds.")
    confidence: float
    reason: str
    available: bool = Field(description="Whether the tool can be called right now.")


class SuggestNextOutput(BaseModel):
    after: list[str]
    suggestions: list[NextToolSuggestion]
    note: str | None = Field(default=None, description="Why there are no suggestions, when there are none.")


# -- the tools -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    name: str
    title: str
    description: str
    input_model: type[BaseModel]
    output_model: type[BaseModel] | None  # None: the result is another tool's (pml_call_tool)
    read_only: bool
    lean_description: str  # the one line lean exposure lists


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
        "Graph metrics and live suggestion hit rates.",
    ),
    _Spec(
        SEARCH_TOOLS,
        "Search tools",
        "Find tools for a request in plain words (BM25 over names, descriptions and parameters, plus what "
        "earlier searches led to). Each result has its description and input schema. Tools that the graph "
        "learned to follow `context_tools` rank higher.",
        SearchToolsInput,
        SearchToolsOutput,
        True,
        "Find tools for a request in plain words; returns names and input schemas.",
    ),
    _Spec(
        SUGGEST_NEXT_TOOLS,
        "Suggest next tools",
        "Tools likely to come next after the given ones, from the learned graph, ranked by the estimated "
        "probability that each follows and succeeds, with its confidence and the reason (edge type, counts).",
        SuggestNextInput,
        SuggestNextOutput,
        True,
        "Tools likely to come next after the given ones.",
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
        "Call a tool found by search: {tool, arguments}.",
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
        "Run a DAG of tool calls: tasks [{id, tool, arguments, depends_on}].",
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


def lean_definitions() -> list[types.Tool]:
    """The pml_* tools as lean exposure lists them: one line each, bare input schemas, no output schemas."""
    return [
        types.Tool(name=spec.name, description=spec.lean_description, input_schema=_lean(_schema(spec.input_model)))
        for spec in SPECS
    ]


def _lean(schema: Any) -> Any:
    """A JSON schema without its prose (titles, descriptions) and limits a model does not need."""
    if isinstance(schema, list):
        return [_lean(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    lean = {}
    for key, value in schema.items():
        if key in ("title", "description", "maxLength", "minLength", "maxItems", "minItems", "additionalProperties"):
            continue
        if key == "properties" and isinstance(value, dict):
            lean[key] = {name: _lean(prop) for name, prop in value.items()}  # names stay, even "title"
        else:
            lean[key] = _lean(value)
    return lean


def output_json(output: BaseModel) -> str:
    """The text JSON of a tool's output (also what the graph://metrics resource reads)."""
    return json.dumps(output.model_dump(mode="json"), separators=(",", ":"))


def structured_result(output: BaseModel) -> dict[str, Any]:
    """The output as a tool result in wire form: ``structuredContent`` and the same JSON as text."""
    return {
        "content": [{"type": "text", "text": output_json(output)}],
        "structuredContent": output.model_dump(mode="json"),
        "isError": False,
        "resultType": "complete",
    }


def describe_validation(tool: str, exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"]) or "arguments"
        parts.append(f"{loc}: {error['msg']}")
    return errors.invalid_arguments(tool, "; ".join(parts))


def _everything(name: str) -> bool:
    """The visibility of a caller without a profile."""
    return True


class GatewayTools:
    """Answers calls to the pml_* tools."""

    def __init__(
        self,
        engine: GraphRAGEngine,
        registry: ToolRegistry,
        call_downstream: ToolCaller,
        record: Recorder,
        missing: Callable[[str], str] = errors.unknown_tool,
        traces: TraceRecorder | None = None,
        search: ToolSearch | None = None,
    ) -> None:
        self.engine = engine
        self.traces = traces
        self.search = search if search is not None else ToolSearch()
        self._missing = missing  # why a tool name is not callable (DownstreamPool.missing)
        self.registry = registry
        self.runner = WorkflowRunner(call_downstream, record, server_of=registry.owner, on_task=engine.emit_live)
        self._definitions = definitions()
        self._lean_definitions = lean_definitions()

    def definitions(self) -> list[types.Tool]:
        return self._definitions

    def lean_definitions(self) -> list[types.Tool]:
        return self._lean_definitions

    def input_schema(self, name: str) -> dict[str, Any] | None:
        for tool in self._definitions:
            if tool.name == name:
                return tool.input_schema
        return None

    def call_target(self, arguments: dict[str, Any] | None) -> tuple[str, dict[str, Any]] | dict[str, Any]:
        """What ``pml_call_tool`` calls: (tool name, its arguments), or the error to answer with."""
        try:
            params = CallToolInput.model_validate(arguments or {})
        except ValidationError as exc:
            return errors.tool_error(describe_validation(CALL_TOOL, exc))
        if params.tool in NAMES:
            return errors.tool_error(errors.invalid_arguments(CALL_TOOL, f"tool: {params.tool!r} is a gateway tool: call it directly"))
        return params.tool, params.arguments

    async def call(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        progress: ProgressReporter | None = None,
        *,
        profile: Profile | None = None,
        caller: str | None = None,
    ) -> dict[str, Any]:
        """Run a pml_* tool; the result in wire form (bad arguments: a tool error naming the field).

        With a ``profile`` (auth/profiles.py), only its tools appear or run; ``caller`` (a trace
        key) lets a search be graded by the call that follows it.
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
            # The models' work off the event loop (loading them at the first search: 0.2-0.5 s; a new
            # catalog of 50 tools: 0.35 s of CPU with the semantic extra); the search on it then
            # finds every vector it needs ready.
            if not self.search.loaded:
                await anyio.to_thread.run_sync(self.search.load)
            texts = self.search.texts_to_embed(self._search_documents(visible), params.query)
            if texts:
                await anyio.to_thread.run_sync(self.search.embed_ahead, texts)
            found = self.search_tools(params, visible)
            if caller is not None and self.traces is not None:
                self.traces.searched(caller, params.query, [match.tool_id for match in found.tools])
            return structured_result(found)
        if isinstance(params, SuggestNextInput):
            unknown = [
                f"after.{i}: unknown tool {tool!r} (not a tool of this gateway, and never seen by the graph)"
                for i, tool in enumerate(params.after)
                if tool not in self.engine.graph and tool not in self.registry and tool not in NAMES
            ]
            if unknown:
                return errors.tool_error(errors.invalid_arguments(name, "; ".join(unknown)))
            return structured_result(self.suggest_next(params, visible))
        if isinstance(params, CallToolInput):  # the upstream server resolves it before it gets here
            return errors.tool_error(f"{CALL_TOOL} is answered by the MCP server, not inside a workflow or script")
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
            suggestions=engine.grader.stats(),
        )

    # -- pml_search_tools --------------------------------------------------------------------

    def _search_documents(self, visible: Callable[[str], bool]) -> list[ToolDocument]:
        # Downstream tools only: the pml_* tools are always listed, and "call", "tool", "search" in their
        # descriptions matched half of all natural requests.
        return [
            ToolDocument(entry.name, entry.server, entry.tool.title, entry.tool.description, entry.tool.input_schema)
            for entry in self.registry.tools()
            if visible(entry.name)
        ]

    def search_tools(self, params: SearchToolsInput, visible: Callable[[str], bool] = _everything) -> SearchToolsOutput:
        self.search.update(self._search_documents(visible))  # a no-op unless the tools changed
        boosts: dict[str, float] = {}
        reasons: dict[str, str] = {}
        known_context = [t for t in params.context_tools if t in self.engine.graph]
        if known_context:
            for s in self.engine.suggest_next(known_context, limit=10_000):
                boosts[s.tool_id], reasons[s.tool_id] = s.probability, s.reason
        matches = []
        for score, hit in self.search.search(params.query, params.limit, boosts):
            doc = hit.document
            parts = [f"matches {', '.join(hit.matched)}"] if hit.matched else []
            if hit.feedback_score:
                parts.append("earlier searches with these words led to it")
            if hit.semantic_score > 0:  # closer than the average tool
                parts.append("close in meaning")
            if doc.tool_id in reasons:
                parts.append(reasons[doc.tool_id])
            matches.append(
                ToolMatch(
                    tool_id=doc.tool_id,
                    server=doc.server,
                    title=doc.title,
                    description=doc.description,
                    input_schema=doc.input_schema,
                    score=round(score, 6),
                    text_score=round(hit.text_score, 6),
                    feedback_score=round(hit.feedback_score, 6),
                    graph_score=round(boosts.get(doc.tool_id, 0.0), 6),
                    semantic_score=round(hit.semantic_score, 6),
                    reason="; ".join(parts) or "matches the query",
                )
            )
        return SearchToolsOutput(query=params.query, tools=matches)

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
            note=None if suggestions else "no tool has been seen after these yet",
            suggestions=[
                NextToolSuggestion(
                    tool_id=s.tool_id,
                    probability=s.probability,
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
