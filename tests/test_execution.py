"""WorkflowExecution: both input forms, and bad input refused with the field named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from graphrag import TaskRun, WorkflowExecution


def test_short_form_becomes_a_sequence_of_tasks() -> None:
    execution = WorkflowExecution.model_validate(
        {"workflow_id": "w1", "tool_ids": ["a", "b", "c"], "success": False, "execution_time_ms": 12.5}
    )
    assert execution.tool_ids == ["a", "b", "c"]
    assert [t.depends_on for t in execution.tasks] == [[], [], []]
    assert execution.success is False
    assert all(not task.success for task in execution.tasks)
    assert execution.execution_time_ms == 12.5


def test_success_defaults_to_every_task_succeeding() -> None:
    ok = WorkflowExecution(tasks=[TaskRun(id="1", tool_id="a"), TaskRun(id="2", tool_id="b")])
    failed = WorkflowExecution(tasks=[TaskRun(id="1", tool_id="a"), TaskRun(id="2", tool_id="b", success=False)])
    assert ok.success is True
    assert failed.success is False
    assert ok.workflow_id.startswith("wf-") and ok.workflow_id != failed.workflow_id


@pytest.mark.parametrize(
    ("payload", "loc", "message"),
    [
        ({"tool_ids": []}, (), "tool_ids: must name at least one tool"),
        ({"tool_ids": "abc"}, (), "tool_ids: must be a list"),
        ({"tasks": []}, ("tasks",), "at least 1 item"),
        ({"tasks": [{"id": "x", "tool_id": ""}]}, ("tasks", 0, "tool_id"), "at least 1 character"),
        ({"tasks": [{"id": "x", "tool_id": "   "}]}, ("tasks", 0), "tool_id must not be blank"),
        ({"tasks": [{"id": "x", "tool_id": "a", "depends_on": ["zz"]}]}, ("tasks", 0, "depends_on"), "'zz' names no task"),
        ({"tasks": [{"id": "x", "tool_id": "a", "depends_on": ["x"]}]}, ("tasks", 0, "depends_on"), "depends on itself"),
        (
            {"tasks": [{"id": "x", "tool_id": "a", "depends_on": ["y"]}, {"id": "y", "tool_id": "b", "depends_on": ["x"]}]},
            ("tasks",),
            "dependency cycle x -> y -> x",
        ),
        ({"tasks": [{"id": "x", "tool_id": "a"}, {"id": "x", "tool_id": "b"}]}, ("tasks", 1, "id"), "duplicate task id 'x'"),
        ({"tool_ids": ["a"], "tasks": [{"id": "x", "tool_id": "a"}]}, (), "either tasks or tool_ids"),
        ({"tool_ids": ["a"], "execution_time_ms": -1}, ("execution_time_ms",), "greater than or equal to 0"),
        ({"tool_ids": ["a"], "colour": "red"}, ("colour",), "Extra inputs are not permitted"),
    ],
)
def test_bad_input_is_refused_naming_the_field(payload: dict, loc: tuple, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        WorkflowExecution.model_validate(payload)
    error = caught.value.errors()[0]
    assert error["loc"] == loc
    assert message in error["msg"]


def test_a_longer_cycle_is_found() -> None:
    tasks = [
        {"id": "a", "tool_id": "t", "depends_on": []},
        {"id": "b", "tool_id": "t", "depends_on": ["a", "d"]},
        {"id": "c", "tool_id": "t", "depends_on": ["b"]},
        {"id": "d", "tool_id": "t", "depends_on": ["c"]},
    ]
    with pytest.raises(ValidationError, match="dependency cycle b -> d -> c -> b"):
        WorkflowExecution.model_validate({"tasks": tasks})
