"""Runs a workflow DAG of tool calls (``pml_execute_workflow``) and records what happened.

A task starts as soon as every task it depends on has succeeded, so independent tasks run in
parallel. A task whose dependency failed (or was skipped) does not run: it is ``skipped``, and so
are its own dependents. After each task settles, progress is reported (when the caller asked
for it). The execution is then recorded for learning with its dependency edges; skipped tasks
are left out of it, since they never ran. The DAG is checked by graphrag's validator, the one
``WorkflowExecution`` uses, so a workflow that runs can always be recorded.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

from graphrag import TaskRun, WorkflowExecution, check_dag
from graphrag.events import TaskStatus as ProgressStatus
from graphrag.events import WorkflowProgressData

#: Calls a tool by its exposed name; the result in wire form (a tool error on failure).
ToolCaller = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
Recorder = Callable[[WorkflowExecution], Awaitable[Any]]
ProgressReporter = Callable[[float, float, str], Awaitable[None]]
#: Hears every task start and settle (the ``workflow_progress`` events of the stream).
TaskObserver = Callable[[WorkflowProgressData], object]

MAX_TASKS = 256


class WorkflowTask(BaseModel):
    """One node of the DAG: call `tool` with `arguments` once every task in `depends_on` succeeded."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128, description="Task id, unique within the workflow.")
    tool: str = Field(min_length=1, description="Exposed tool name, e.g. notes__search_notes.")
    arguments: dict[str, Any] = Field(default_factory=dict, description="Arguments for the tool.")
    depends_on: list[str] = Field(default_factory=list, description="Ids of tasks that must succeed first.")


class WorkflowRequest(BaseModel):
    """A workflow to run: a DAG of tool calls."""

    model_config = ConfigDict(extra="forbid")

    workflow_id: str | None = Field(
        default=None, min_length=1, max_length=128, description="Id to record the execution under (generated if absent)."
    )
    tasks: list[WorkflowTask] = Field(min_length=1, max_length=MAX_TASKS, description="The DAG's tasks.")

    @field_validator("tasks")
    @classmethod
    def _check_dag(cls, tasks: list[WorkflowTask]) -> list[WorkflowTask]:
        check_dag(tasks)
        return tasks


TaskStatus = Literal["succeeded", "failed", "skipped"]


class TaskOutcome(BaseModel):
    """What one task did; `content` and `structured_content` are the tool's own result."""

    id: str
    tool: str
    status: TaskStatus
    is_error: bool
    content: list[dict[str, Any]] = Field(default_factory=list)
    structured_content: dict[str, Any] | None = None
    error: str | None = Field(default=None, description="Why it failed or was skipped.")
    duration_ms: float = 0.0


class WorkflowResult(BaseModel):
    """Every task's outcome, in the order given, and whether all of them succeeded."""

    workflow_id: str
    success: bool
    execution_time_ms: float
    tasks: list[TaskOutcome]


class WorkflowRunner:
    def __init__(
        self,
        call: ToolCaller,
        record: Recorder,
        *,
        server_of: Callable[[str], str | None] = lambda tool: None,
        max_parallel: int = 16,
        on_task: TaskObserver | None = None,
    ) -> None:
        self._call = call
        self._record = record
        self._server_of = server_of  # the server of an exposed tool name, recorded with the task
        self._max_parallel = max_parallel
        self._on_task = on_task

    async def run(self, request: WorkflowRequest, progress: ProgressReporter | None = None) -> WorkflowResult:
        workflow_id = request.workflow_id or f"wf-{uuid.uuid4().hex[:12]}"
        tasks = request.tasks
        total = len(tasks)
        done = {task.id: anyio.Event() for task in tasks}
        outcomes: dict[str, TaskOutcome] = {}
        limiter = anyio.CapacityLimiter(self._max_parallel)
        settled = 0
        started = time.perf_counter()

        def observe(task_id: str, tool: str, status: ProgressStatus) -> None:
            if self._on_task is not None:
                self._on_task(
                    WorkflowProgressData(
                        workflow_id=workflow_id, task_id=task_id, tool_id=tool, status=status, completed=settled, total=total
                    )
                )

        async def settle(outcome: TaskOutcome) -> None:
            nonlocal settled
            outcomes[outcome.id] = outcome
            settled += 1
            done[outcome.id].set()
            observe(outcome.id, outcome.tool, outcome.status)
            if progress is not None:
                await progress(settled, total, f"task {outcome.id} ({outcome.tool}) {outcome.status}")

        async def run_task(task: WorkflowTask) -> None:
            for dep in task.depends_on:
                await done[dep].wait()
            blocked = [dep for dep in task.depends_on if outcomes[dep].status != "succeeded"]
            if blocked:
                reason = ", ".join(f"{dep} {outcomes[dep].status}" for dep in blocked)
                await settle(
                    TaskOutcome(id=task.id, tool=task.tool, status="skipped", is_error=True, error=f"not run: {reason}")
                )
                return
            async with limiter:
                observe(task.id, task.tool, "started")
                t0 = time.perf_counter()
                result = await self._call(task.tool, task.arguments)
                elapsed = round((time.perf_counter() - t0) * 1000, 3)
            # The result as the downstream sent it (unchecked wire form): read defensively.
            failed = result.get("isError") is True
            raw_content = result.get("content")
            content = [c for c in raw_content if isinstance(c, dict)] if isinstance(raw_content, list) else []
            structured = result.get("structuredContent")
            error = None
            if failed:
                texts = [c["text"] for c in content if c.get("type") == "text" and isinstance(c.get("text"), str)]
                error = " ".join(texts) or "tool error"
            await settle(
                TaskOutcome(
                    id=task.id,
                    tool=task.tool,
                    status="failed" if failed else "succeeded",
                    is_error=failed,
                    content=content,
                    structured_content=structured if isinstance(structured, dict) else None,
                    error=error,
                    duration_ms=elapsed,
                )
            )

        async with anyio.create_task_group() as tg:
            for task in tasks:
                tg.start_soon(run_task, task)

        elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
        ordered = [outcomes[task.id] for task in tasks]
        result = WorkflowResult(
            workflow_id=workflow_id,
            success=all(o.status == "succeeded" for o in ordered),
            execution_time_ms=elapsed_ms,
            tasks=ordered,
        )
        ran = [task for task in tasks if outcomes[task.id].status != "skipped"]
        await self._record(
            WorkflowExecution(
                workflow_id=workflow_id,
                tasks=[
                    TaskRun(
                        id=task.id,
                        tool_id=task.tool,
                        server=self._server_of(task.tool),
                        depends_on=task.depends_on,
                        success=outcomes[task.id].status == "succeeded",
                    )
                    for task in ran
                ],
                success=result.success,
                execution_time_ms=elapsed_ms,
            )
        )
        return result
