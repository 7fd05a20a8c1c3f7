"""The JSON routes around the engine: ``/events/stats``, ``/graph``, ``/executions``, ``/health``.

Handlers find the running process in ``request.app.state.pml`` (an ``AppState``, set by the
lifespan). Errors are JSON with an ``error`` message that names the problem, never a traceback.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from graphrag import StoreUnavailable, WorkflowExecution

from pml_gateway.state import app_state

#: Larger ``POST /executions`` bodies are refused with 413.
MAX_BODY_BYTES = 16 * 1024 * 1024


def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


# -- GET /events/stats ------------------------------------------------------------------------
async def events_stats(request: Request) -> Response:
    return JSONResponse(app_state(request).stream.stats().model_dump(mode="json"))


# -- GET /graph -------------------------------------------------------------------------------
async def graph(request: Request) -> Response:
    # last_event_id in the snapshot is the id the graph reflects: resume the stream from it.
    return Response(app_state(request).engine.snapshot_json(), media_type="application/json")


# -- POST /executions -------------------------------------------------------------------------
def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _validation_errors(exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> list[dict[str, Any]]:
    errors = []
    for item in exc.errors(include_url=False, include_input=False):
        loc = prefix + tuple(item["loc"])
        errors.append({"field": _field(loc), "loc": list(loc), "message": item["msg"], "type": item["type"]})
    return errors


def parse_executions(body: Any) -> list[WorkflowExecution]:
    """One execution (an object) or several (a list), full or short form; ``ValueError`` on bad input."""
    if isinstance(body, dict):
        return [WorkflowExecution.model_validate(body)]
    if isinstance(body, list):
        if not body:
            raise _BadBody("the list is empty: send at least one execution")
        executions, errors = [], []
        for index, item in enumerate(body):
            try:
                executions.append(WorkflowExecution.model_validate(item))
            except ValidationError as exc:
                errors.extend(_validation_errors(exc, (index,)))
        if errors:
            raise _InvalidExecutions(errors)
        return executions
    raise _BadBody(f"expected an execution object or a list of them, got {type(body).__name__}")


class _BadBody(ValueError):
    pass


class _InvalidExecutions(ValueError):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors


def _invalid(errors: list[dict[str, Any]]) -> JSONResponse:
    first = errors[0]
    where = f"{first['field']}: " if first["field"] else ""
    return error_response(422, f"Invalid execution: {where}{first['message']}", errors=errors)


async def post_executions(request: Request) -> Response:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        return error_response(413, f"Body too large: at most {MAX_BODY_BYTES} bytes")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        return error_response(413, f"Body too large: at most {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return error_response(400, f"Malformed JSON body: {exc}")
    try:
        executions = parse_executions(body)
    except ValidationError as exc:
        return _invalid(_validation_errors(exc))
    except _InvalidExecutions as exc:
        return _invalid(exc.errors)
    except _BadBody as exc:
        return error_response(422, f"Invalid body: {exc}", errors=[{"field": "", "loc": [], "message": str(exc), "type": "body"}])
    engine = app_state(request).engine
    # All validated before any is learned: a bad item refuses the whole request. One commit.
    try:
        await engine.update_from_executions(executions)
    except StoreUnavailable as exc:  # PostgreSQL restarting: retry (ingest is idempotent by workflow_id)
        response = error_response(503, f"Store unavailable, retry later: {exc}")
        response.headers["Retry-After"] = "1"
        return response
    return JSONResponse({"workflow_ids": [e.workflow_id for e in executions]}, status_code=202)


# -- GET /health ------------------------------------------------------------------------------
async def health(request: Request) -> Response:
    state = app_state(request)
    downstreams: dict[str, Any] = {}
    for extension in state.extensions:
        downstreams.update(extension.health())
    return JSONResponse({"status": "ok", "downstreams": downstreams})


def http_routes() -> list[BaseRoute]:
    return [
        Route("/events/stats", events_stats, methods=["GET"]),
        Route("/graph", graph, methods=["GET"]),
        Route("/executions", post_executions, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ]
