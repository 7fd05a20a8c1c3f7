"""What the engine learns from: one workflow execution, as a DAG of task runs.

Two input forms are accepted everywhere (Python, ``POST /executions``):

- full: ``{workflow_id, tasks: [{id, tool_id, depends_on, success}], success, execution_time_ms}``
- short: ``{workflow_id, tool_ids: [...], success, execution_time_ms}``, a plain sequence.

Bad input is refused with a ``pydantic.ValidationError`` whose location names the field
(``tasks.1.depends_on``). ``check_dag`` is the one DAG validator: the gateway's workflow runner
checks its requests with it too.

A task may say which server its tool belongs to (``server``): the library never works it out
from the tool's name, whose scheme belongs to whoever names the tools.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

ToolId = str
#: Longest task or tool id accepted (exposed MCP names are at most 64 characters).
MAX_ID_LENGTH = 256


def invisible_character(value: str) -> str | None:
    """Why ``value`` is not a usable id (control, zero-width or bidi characters), or None.

    Such characters make two ids that look alike differ, or reorder what a reader sees.
    """
    if len(value) > MAX_ID_LENGTH:
        return f"longer than {MAX_ID_LENGTH} characters"
    for char in value:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            return f"contains the invisible or control character U+{ord(char):04X}"
    return None


def _new_workflow_id() -> str:
    return f"wf-{uuid.uuid4().hex[:12]}"


class TaskRun(BaseModel):
    """One task of a workflow: which tool ran, what it waited for, whether it worked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, description="Task id, unique within the workflow.")
    tool_id: ToolId = Field(min_length=1, description="The tool that ran, e.g. files__read.")
    server: str | None = Field(default=None, description="The server the tool belongs to, when known.")
    depends_on: list[str] = Field(default_factory=list, description="Ids of tasks this one waited for.")
    success: bool = True

    @model_validator(mode="after")
    def _tool_id_not_blank(self) -> TaskRun:
        if not self.tool_id.strip():
            raise PydanticCustomError("blank_tool_id", "tool_id must not be blank")
        for name in ("id", "tool_id"):
            problem = invisible_character(getattr(self, name))
            if problem:
                raise PydanticCustomError("invalid_characters", f"{name}: {problem}")
        return self


class WorkflowExecution(BaseModel):
    """A finished workflow: its tasks (a DAG), overall success and duration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: str = Field(default_factory=_new_workflow_id, min_length=1)
    tasks: list[TaskRun] = Field(min_length=1)
    success: bool = Field(default=None, validate_default=False)  # type: ignore[assignment]
    execution_time_ms: float = Field(default=0.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _accept_short_form(cls, value: Any) -> Any:
        if not isinstance(value, dict) or "tool_ids" not in value:
            return value
        if "tasks" in value:
            raise PydanticCustomError("ambiguous_form", "give either tasks or tool_ids, not both")
        value = dict(value)
        tool_ids = value.pop("tool_ids")
        if not isinstance(tool_ids, list):
            # Refused here: past this point the error would name ``tasks``, not what the caller sent.
            raise PydanticCustomError("list_type", "tool_ids: must be a list of tool ids")
        if not tool_ids:
            raise PydanticCustomError("too_short", "tool_ids: must name at least one tool")
        task_success = value.get("success", True)
        value["tasks"] = [
            {"id": f"t{i}", "tool_id": tool_id, "success": task_success if isinstance(task_success, bool) else True}
            for i, tool_id in enumerate(tool_ids)
        ]
        return value

    @field_validator("tasks")
    @classmethod
    def _check_dag(cls, tasks: list[TaskRun]) -> list[TaskRun]:
        check_dag(tasks)
        return tasks

    @model_validator(mode="after")
    def _default_success(self) -> WorkflowExecution:
        if self.success is None:  # default: the workflow worked when every task did
            object.__setattr__(self, "success", all(task.success for task in self.tasks))
        return self

    @property
    def tool_ids(self) -> list[ToolId]:
        return [task.tool_id for task in self.tasks]

    @property
    def has_dependencies(self) -> bool:
        return any(task.depends_on for task in self.tasks)


class DagTask(Protocol):
    """What ``check_dag`` reads of a task."""

    @property
    def id(self) -> str: ...

    @property
    def depends_on(self) -> list[str]: ...


def check_dag(tasks: Sequence[DagTask]) -> None:
    """Refuse tasks that are not a DAG: duplicate ids, unknown or self dependencies, a cycle.

    For a ``field_validator`` of a ``tasks`` list: raises ``pydantic.ValidationError``, whose
    location pydantic puts under the field (``tasks.1.depends_on``; ``tasks`` for a cycle).
    """

    def refuse(kind: str, message: str, loc: tuple[int | str, ...], value: Any) -> None:
        error = InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)
        raise ValidationError.from_exception_data("tasks", [error])

    seen: set[str] = set()
    for index, task in enumerate(tasks):
        if task.id in seen:
            refuse("duplicate_task_id", f"duplicate task id {task.id!r}", (index, "id"), task.id)
        seen.add(task.id)
    for index, task in enumerate(tasks):
        for dep in task.depends_on:
            if dep == task.id:
                refuse("self_dependency", f"task {dep!r} depends on itself", (index, "depends_on"), task.depends_on)
            if dep not in seen:
                message = f"{dep!r} names no task of this workflow"
                refuse("unknown_dependency", message, (index, "depends_on"), task.depends_on)
    cycle = _find_cycle({task.id: task.depends_on for task in tasks})
    if cycle:
        refuse("dependency_cycle", "dependency cycle " + " -> ".join(cycle), (), [task.id for task in tasks])


def _find_cycle(depends_on: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as a list of task ids (first id repeated at the end), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(depends_on, WHITE)
    for root in depends_on:
        if colour[root] != WHITE:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        colour[root] = GREY
        while stack:
            node, i = stack[-1]
            deps = depends_on[node]
            if i < len(deps):
                stack[-1] = (node, i + 1)
                nxt = deps[i]
                if colour[nxt] == GREY:
                    return path[path.index(nxt) :] + [nxt]
                if colour[nxt] == WHITE:
                    colour[nxt] = GREY
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                colour[node] = BLACK
                stack.pop()
                path.pop()
    return None
