"""The JSON routes around the engine: ``/events/stats``, ``/graph``, ``/executions``, ``/health``,
and the admin routes that delete learned history (``/graph/reset``, ``/graph/tools/{tool_id}``).

Handlers find the running process in ``request.app.state.pml`` (an ``AppState``, set by the
lifespan). Errors are JSON with an ``error`` message that names the problem, never a traceback.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from graphrag import GraphEvent, StoreUnavailable, UnknownTool, WorkflowExecution

from pml_gateway.settings import Settings
from pml_gateway.auth import PROFILE_SCOPE_KEY, shows_details
from pml_gateway.state import app_state
from pml_gateway.tool_list import tools_route

#: Larger ``POST /executions`` bodies are refused with 413.
MAX_BODY_BYTES = 16 * 1024 * 1024


def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def json_http_error(request: Request, exc: Exception) -> Response:
    """404, 405 and every other ``HTTPException`` as JSON, like the rest of the API."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Not found: {request.url.path}"
    elif exc.status_code == 405:
        message = f"Method {request.method} not allowed on {request.url.path}"
    else:
        message = exc.detail
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)  # 405 keeps Allow


# -- GET /events/stats ------------------------------------------------------------------------
async def events_stats(request: Request) -> Response:
    return JSONResponse(app_state(request).stream.stats().model_dump(mode="json"))


# -- GET /graph -------------------------------------------------------------------------------
async def graph(request: Request) -> Response:
    # last_event_id in the snapshot is the id the graph reflects: resume the stream from it.
    profile = request.scope.get(PROFILE_SCOPE_KEY)
    # [auth] a profile sees its tools only, as on its event stream; the loop runs between slices
    visible = profile.allows_tool if profile is not None else None
    body = await app_state(request).engine.snapshot_json_async(visible)
    return Response(body, media_type="application/json")


# -- POST /executions -------------------------------------------------------------------------
#: Executions learned per engine call: between chunks the event loop serves everyone else.
LEARN_CHUNK = 100


class _BadBody(ValueError):
    """The body as a whole is unusable (not JSON, wrong shape, over a limit): one message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite(value: str) -> float:
    number = float(value)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"{value[:20]} is too large for a number")
    return number


def load_json(raw: bytes) -> Any:
    """Strict JSON: no NaN / Infinity, no number that overflows a float, bounded nesting."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:
        raise _BadBody(400, "Malformed JSON body: nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise _BadBody(400, f"Malformed JSON body: {exc}") from None


def _check_limits(items: list[Any], settings: Settings) -> None:
    """Sizes checked on the raw JSON, before anything is validated or learned."""
    if len(items) > settings.max_executions_per_request:
        raise _BadBody(413, f"Too many executions: {len(items)} in one request, at most {settings.max_executions_per_request} (max_executions_per_request)")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue  # validation names it
        where = f"[{index}]" if len(items) > 1 else ""
        for key in ("tasks", "tool_ids"):
            tasks = item.get(key)
            if isinstance(tasks, list) and len(tasks) > settings.max_tasks_per_execution:
                raise _BadBody(413, f"{where}{key}: {len(tasks)} entries, at most {settings.max_tasks_per_execution} (max_tasks_per_execution)")
        for number, task in enumerate(item.get("tasks") or ()):
            deps = task.get("depends_on") if isinstance(task, dict) else None
            if isinstance(deps, list) and len(deps) > settings.max_dependencies_per_task:
                raise _BadBody(413, f"{where}tasks.{number}.depends_on: {len(deps)} entries, at most {settings.max_dependencies_per_task} (max_dependencies_per_task)")


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _validation_errors(exc: ValidationError, item: Any, prefix: tuple[int | str, ...] = ()) -> list[dict[str, Any]]:
    """Every problem of one item, each naming its field as the caller wrote it."""
    short_form = isinstance(item, dict) and "tool_ids" in item
    errors = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        name, colon, rest = message.partition(": ")
        if colon and name.isidentifier() and (not loc or (len(loc) == 2 and loc[0] == "tasks")):
            loc, message = (*loc, name), rest  # a model-level check that names its own field
        if short_form and len(loc) >= 2 and loc[0] == "tasks":  # tasks.3.tool_id was tool_ids[3]
            loc = ("tool_ids", loc[1])
        loc = prefix + loc
        errors.append({"field": _field(loc) or "body", "loc": list(loc), "message": message, "type": error["type"]})
    return errors


def parse_executions(body: Any) -> list[WorkflowExecution]:
    """One execution (an object) or several (a list), full or short form.

    Raises ``InvalidExecutions`` listing every problem, or ``_BadBody`` for the wrong shape.
    """
    if isinstance(body, dict):
        items, prefix = [body], False
    elif isinstance(body, list):
        if not body:
            raise _BadBody(422, "Invalid body: the list is empty: send at least one execution")
        items, prefix = body, True
    else:
        raise _BadBody(422, f"Invalid body: expected an execution object or a list of them, got {type(body).__name__}")
    executions, errors = [], []
    for index, item in enumerate(items):
        try:
            executions.append(WorkflowExecution.model_validate(item))
        except ValidationError as exc:
            errors.extend(_validation_errors(exc, item, (index,) if prefix else ()))
    if errors:
        raise InvalidExecutions(errors)
    return executions


class InvalidExecutions(ValueError):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors

    def response(self) -> JSONResponse:
        first = self.errors[0]
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        return error_response(422, f"Invalid execution: {first['field']}: {first['message']}{more}", errors=self.errors)


async def post_executions(request: Request) -> Response:
    state = app_state(request)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        # A text/plain POST needs no CORS preflight: any web page could write into a local gateway.
        return error_response(415, "Content-Type must be application/json")
    length = request.headers.get("content-length")
    if length is not None and length.isascii() and length.isdigit() and int(length) > MAX_BODY_BYTES:
        return error_response(413, f"Body too large: at most {MAX_BODY_BYTES} bytes")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        return error_response(413, f"Body too large: at most {MAX_BODY_BYTES} bytes")
    try:
        body = load_json(raw)
        _check_limits(body if isinstance(body, list) else [body], state.settings)
        executions = parse_executions(body)
    except InvalidExecutions as exc:
        return exc.response()
    except _BadBody as exc:
        problem = {"field": "body", "loc": [], "message": str(exc), "type": "body"}
        return error_response(exc.status, str(exc), errors=[problem])
    # All validated before any is learned: a bad item refuses the whole request. Large lists are
    # learned in chunks, each its own commit, so that other requests are served in between.
    try:
        for start in range(0, len(executions), LEARN_CHUNK):
            await state.engine.update_from_executions(executions[start : start + LEARN_CHUNK])
            if start + LEARN_CHUNK < len(executions):
                await anyio.sleep(0)
    except StoreUnavailable as exc:  # PostgreSQL restarting: retry (ingest is idempotent by workflow_id)
        return store_unavailable(exc)
    return JSONResponse({"workflow_ids": [e.workflow_id for e in executions]}, status_code=202)


def store_unavailable(exc: StoreUnavailable) -> JSONResponse:
    response = error_response(503, f"Store unavailable, retry later: {exc}")
    response.headers["Retry-After"] = "1"
    return response


# -- POST /graph/reset, DELETE /graph/tools/{tool_id} (scope admin: auth/scopes.py) -----------
def _event_answer(event: GraphEvent) -> Response:
    """The committed event as a WebSocket message carries it, ``{"id", "type", "data"}``, its
    ``data`` the very JSON the stream sends (serialised once, by the event)."""
    body = f'{{"id":{event.id},"type":"{event.type}","data":{event.data_json()}}}'
    return Response(body, media_type="application/json")


async def reset_graph(request: Request) -> Response:
    profile = request.scope.get(PROFILE_SCOPE_KEY)
    if profile is not None:  # [auth] a credential that sees part of the graph cannot delete all of it
        return error_response(403, f"a credential limited to profile {profile.name!r} cannot reset the whole graph")
    try:
        event = await app_state(request).engine.reset_graph()
    except StoreUnavailable as exc:
        return store_unavailable(exc)
    return _event_answer(event)


async def forget_tool(request: Request) -> Response:
    tool_id: str = request.path_params["tool_id"]  # percent-decoded; may contain "/"
    engine = app_state(request).engine
    unknown = error_response(404, f"Unknown tool: {tool_id!r} has no history in the graph")
    profile = request.scope.get(PROFILE_SCOPE_KEY)
    if profile is not None and not profile.allows_tool(tool_id, engine.tool_server(tool_id)):
        return unknown  # [auth] outside its profile: as if it did not exist, as on /graph
    try:
        event = await engine.forget_tool(tool_id)
    except UnknownTool:
        return unknown
    except StoreUnavailable as exc:
        return store_unavailable(exc)
    return _event_answer(event)


# -- GET /health ------------------------------------------------------------------------------
async def health(request: Request) -> Response:
    state = app_state(request)
    # "degraded": the store refused the last write (disk full, read-only, its server away); it says
    # "ok" again by itself once a write succeeds.
    status = "degraded" if state.engine.store_error is not None else "ok"
    if not shows_details(request.scope):  # auth on and no valid credential: the status only
        return JSONResponse({"status": status})
    downstreams: dict[str, Any] = {}
    for extension in state.extensions:
        downstreams.update(extension.health())
    body: dict[str, Any] = {"status": status, "downstreams": downstreams}
    if state.engine.store_error is not None:
        body["store_error"] = state.engine.store_error
    return JSONResponse(body)


async def metrics(request: Request) -> Response:
    """Prometheus text format: the app's registry (observability/metrics.py says what is in it)."""
    registry = app_state(request).instrumentation.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def http_routes() -> list[BaseRoute]:
    return [
        Route("/events/stats", events_stats, methods=["GET"]),
        Route("/graph", graph, methods=["GET"]),
        Route("/graph/reset", reset_graph, methods=["POST"]),
        Route("/graph/tools/{tool_id:path}", forget_tool, methods=["DELETE"]),
        Route("/executions", post_executions, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        tools_route(),  # GET /tools: the exposed tools, for the dashboard
        Route("/metrics", metrics, methods=["GET"]),
    ]
