"""Test shorthand for executions: a plain sequence of tools (the short form of POST /executions)."""

from __future__ import annotations

from typing import Any

from graphrag import WorkflowExecution


def sequence(
    tool_ids: list[str], *, success: bool = True, execution_time_ms: float = 0.0, workflow_id: str | None = None
) -> WorkflowExecution:
    """``{workflow_id, tool_ids, success, execution_time_ms}``: consecutive tools give sequence edges."""
    data: dict[str, Any] = {"tool_ids": tool_ids, "success": success, "execution_time_ms": execution_time_ms}
    if workflow_id is not None:
        data["workflow_id"] = workflow_id
    return WorkflowExecution.model_validate(data)
