"""The learning rule: which edges an execution observes, and how an edge's confidence moves.

Confidence = type_weight × (1 − 0.97^(s+1)) × (s+1)/(n+2), for s successful of n observations.
The success ratio alone lets one lucky observation tie a transition seen a hundred times; the
evidence factor makes confidence grow with the amount of evidence too. Both factors rise with a
success and the ratio falls with a failure, so success raises confidence and failure lowers it.
The value is always in (0, 1].

Second-order evidence: for every path of three tools an execution shows (three consecutive
calls of a sequence, or grandparent -> parent -> task along ``depends_on``), the engine counts how
often the third followed the first two and how often that step succeeded (``TransitionState``).
Suggestions use it to refine the first-order estimate when the history holds two tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .events import EdgeType
from .execution import WorkflowExecution

#: A dependency (explicit data flow) is stronger evidence than mere succession.
TYPE_WEIGHT: dict[str, float] = {"dependency": 1.0, "sequence": 0.85}
#: How fast evidence saturates: about 100 successes give 95% of the ceiling.
EVIDENCE_RATE = 0.97


def confidence(edge_type: EdgeType, successes: int, observations: int) -> float:
    evidence = 1.0 - EVIDENCE_RATE ** (successes + 1)
    ratio = (successes + 1) / (observations + 2)
    # Rounded to 12 places: no float noise on the wire (0.03349, not 0.03349000000000002), while
    # one more observation still moves the value up to ~10^6 observations.
    return round(TYPE_WEIGHT[edge_type] * evidence * ratio, 12)


@dataclass(frozen=True, slots=True)
class Observation:
    """One edge seen once in one execution."""

    source: str
    target: str
    edge_type: EdgeType
    success: bool


@dataclass(frozen=True, slots=True)
class EdgeState:
    """What the engine knows of one edge: the graph's edge attributes, and a row of the store."""

    source: str
    target: str
    edge_type: EdgeType
    observed_count: int
    success_count: int
    failure_count: int
    confidence: float
    last_observed: datetime


def observations(execution: WorkflowExecution) -> list[Observation]:
    """The edges an execution shows, each once, in first-seen order.

    With any ``depends_on`` the DAG is the evidence: one dependency edge per (dep → task).
    Without, consecutive tasks give sequence edges. A tool following itself teaches nothing
    about tool-to-tool relations and is skipped. An edge seen twice in one execution counts
    once; it succeeded only if every occurrence did (both ends' tasks succeeded).
    """
    tasks = {task.id: task for task in execution.tasks}
    pairs: list[tuple[str, str, bool]] = []
    edge_type: EdgeType
    if execution.has_dependencies:
        edge_type = "dependency"
        for task in execution.tasks:
            for dep_id in task.depends_on:
                dep = tasks[dep_id]
                pairs.append((dep.tool_id, task.tool_id, dep.success and task.success))
    else:
        edge_type = "sequence"
        for prev, task in zip(execution.tasks, execution.tasks[1:]):
            pairs.append((prev.tool_id, task.tool_id, prev.success and task.success))
    seen: dict[tuple[str, str], bool] = {}
    for source, target, success in pairs:
        if source == target:
            continue
        key = (source, target)
        seen[key] = seen.get(key, True) and success
    return [Observation(s, t, edge_type, ok) for (s, t), ok in seen.items()]


@dataclass(frozen=True, slots=True)
class TransitionState:
    """Second-order evidence: ``third`` came right after ``first`` -> ``second`` this often."""

    first: str
    second: str
    third: str
    observed_count: int
    success_count: int


def transitions(execution: WorkflowExecution) -> list[tuple[str, str, str, bool]]:
    """The three-tool paths an execution shows, each once: ``(first, second, third, success)``.

    Success is that of the last step (both the second and the third task succeeded), the same
    rule as an edge's. Paths with a repeated consecutive tool are skipped, as self edges are.
    """
    tasks = {task.id: task for task in execution.tasks}
    found: dict[tuple[str, str, str], bool] = {}
    if execution.has_dependencies:
        chains = [
            (tasks[grand], tasks[parent], task)
            for task in execution.tasks
            for parent in task.depends_on
            for grand in tasks[parent].depends_on
        ]
    else:
        chains = list(zip(execution.tasks, execution.tasks[1:], execution.tasks[2:]))
    for a, b, c in chains:
        if a.tool_id == b.tool_id or b.tool_id == c.tool_id:
            continue
        key = (a.tool_id, b.tool_id, c.tool_id)
        found[key] = found.get(key, True) and b.success and c.success
    return [(a, b, c, ok) for (a, b, c), ok in found.items()]


def learn_transition(previous: TransitionState | None, path: tuple[str, str, str, bool]) -> TransitionState:
    first, second, third, success = path
    observed = (previous.observed_count if previous else 0) + 1
    successes = (previous.success_count if previous else 0) + int(success)
    return TransitionState(first, second, third, observed, successes)


def learn(previous: EdgeState | None, observation: Observation, now: datetime) -> EdgeState:
    """The edge after one more observation. A dependency is never downgraded to a sequence."""
    if previous is None:
        edge_type = observation.edge_type
        observed, successes, failures = 1, int(observation.success), int(not observation.success)
    else:
        edge_type = "dependency" if "dependency" in (previous.edge_type, observation.edge_type) else "sequence"
        observed = previous.observed_count + 1
        successes = previous.success_count + int(observation.success)
        failures = previous.failure_count + int(not observation.success)
    return EdgeState(
        source=observation.source,
        target=observation.target,
        edge_type=edge_type,
        observed_count=observed,
        success_count=successes,
        failure_count=failures,
        confidence=confidence(edge_type, successes, observed),
        last_observed=now,
    )
