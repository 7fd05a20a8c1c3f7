"""Next-tool suggestions: the probability that a tool comes next after the given ones AND succeeds.

What a caller wants ranked is P(next = c, c works | history). A bare counter ignores failures, a
success ratio ignores how often a transition happens, and an edge's confidence (evidence factor
times ratio) sits between the two; none of them is that probability. From the counts the engine
already keeps it is, for the last tool ``a`` of the history, P(next = c | a) times P(c works
after a):

    p1(c | a) = n_ac / (out_a + GAMMA)  x  (s_ac + M * R_c) / (n_ac + M)

``n_ac`` and ``s_ac`` the observations and successes of a -> c, ``out_a`` all observed transitions
out of ``a`` (the sum of its out-edges' ``observed_count``). Whether c works is mostly a property
of c, seen on every edge into it, not only on a -> c: ``R_c = (S_c + 1) / (N_c + 2)`` pools c's
incoming edges (S_c, N_c: their successes and observations; the engine keeps these sums as node
attributes ``in_success`` / ``in_observed``), and the edge's own ratio is shrunk toward it with a
prior of M observations. So a rarely seen transition borrows what is known of its target, and a
tool that fails specifically after ``a`` still ranks low once that was seen a few times.
Measured on simulated workflows over the TaskBench graphs (bench/engine.py table d): within 0.005
of the simulation's true model at 3,000 executions and 0.013 at 1,000; with the edge's own ratio
alone it was 0.021 short at 1,000 and 0.04-0.07 at 100 executions (now 0.03-0.05).

Second order: when the history holds two tools (p, a) and the engine has seen that pair followed
by something (``m`` times in all), the estimate is refined with what followed that pair,
shrunk toward the first-order estimate (a Dirichlet prior of weight KAPPA):

    p2(c | p, a) = (s_pac + KAPPA * p1(c | a)) / (m + KAPPA)

Second-order counts are sparse (a pair seen three times says little), and where the tools really
behave first-order they only add noise: measured, always refining cost 0.01-0.02 of hit@1 in
first-order worlds. So the pair's evidence is used only where it contradicts the first-order
model: a G-test of the pair's next-tool counts against p(next | a) = n_ac / out_a, at the 5%
level (chi-square quantile by the Wilson-Hilferty approximation, no scipy on this path). With no
or consistent second-order evidence the estimate is p1 unchanged. When the last tool has no successors, earlier tools of the history are used,
each step back halving the estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import networkx as nx
from pydantic import BaseModel, Field

from .learning import TransitionState

#: Smoothing of P(next = c | a): a tool seen after ``a`` once in ten is not quite 1/10.
GAMMA = 0.5
#: Strength, in observations, of the target's pooled reliability behind an edge's own ratio.
M = 4.0
#: Weight of the first-order prior behind second-order evidence, in observations.
KAPPA = 4.0

#: z of the one-sided 5% level of the G-test.
Z_95 = 1.6449


def _chi2_quantile(df: int) -> float:
    """The 95% quantile of chi-square with ``df`` degrees of freedom (Wilson-Hilferty)."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + Z_95 * math.sqrt(h)) ** 3


def _contradicts_first_order(context: Mapping[str, TransitionState], successors: Mapping[str, dict]) -> bool:
    """Whether what followed the pair differs significantly from what follows its last tool."""
    out = sum(attrs["observed_count"] for attrs in successors.values())
    seen = sum(t.observed_count for t in context.values())
    g = 0.0
    for third, evidence in context.items():
        expected = seen * successors[third]["observed_count"] / out if third in successors else 0.0
        if expected <= 0.0:
            return True  # something followed the pair that never follows the last tool alone
        g += 2.0 * evidence.observed_count * math.log(evidence.observed_count / expected)
    return g > _chi2_quantile(max(1, len(successors) - 1))


#: (first, second) -> third -> evidence, as the engine keeps it.
SecondOrder = Mapping[tuple[str, str], Mapping[str, TransitionState]]


class Suggestion(BaseModel):
    tool_id: str
    confidence: float = Field(description="The learned confidence of the edge the suggestion comes from.")
    reason: str
    probability: float = Field(
        default=0.0, description="Estimated probability that this tool comes next and succeeds."
    )


def reliability(graph: nx.DiGraph, tool: str) -> float:
    """R_c: how often steps into ``tool`` succeeded, over all its incoming edges (smoothed)."""
    attrs = graph.nodes[tool]
    if "in_observed" in attrs:
        observed, succeeded = attrs["in_observed"], attrs["in_success"]
    else:  # a graph not built by the engine: sum the in-edges
        observed = sum(a["observed_count"] for a in graph.pred[tool].values())
        succeeded = sum(a["success_count"] for a in graph.pred[tool].values())
    return (succeeded + 1) / (observed + 2)


def first_order(graph: nx.DiGraph, source: str) -> dict[str, float]:
    """p1(c | source) for every successor ``c`` of ``source`` (empty if it has none)."""
    successors = graph.succ[source] if source in graph else {}
    out = sum(attrs["observed_count"] for attrs in successors.values())
    probabilities = {}
    for target, attrs in successors.items():
        n = attrs["observed_count"]
        works = (attrs["success_count"] + M * reliability(graph, target)) / (n + M)
        probabilities[target] = n / (out + GAMMA) * works
    return probabilities


@dataclass
class _Ranking:
    source: str  #: the tool of the history whose successors are ranked
    distance: int  #: how many steps back from the last tool it is
    context: Mapping[str, TransitionState]  #: second-order evidence used ({} if none)
    seen_after_pair: int
    scored: list[tuple[float, str]]  #: (probability, tool), best first


def _rank(graph: nx.DiGraph, after: Sequence[str], second_order: SecondOrder | None) -> _Ranking | None:
    if not after:
        return None
    last = after[-1]
    for distance, source in enumerate(reversed(after)):
        probabilities = first_order(graph, source)
        probabilities.pop(last, None)
        if probabilities:
            break
    else:
        return None
    weight = 0.5**distance
    context: Mapping[str, TransitionState] = {}
    if distance == 0 and len(after) >= 2 and second_order is not None:
        context = second_order.get((after[-2], last), {})
        if context and not _contradicts_first_order(context, graph.succ[last]):
            context = {}
    seen_after_pair = sum(t.observed_count for t in context.values())
    scored: list[tuple[float, str]] = []
    for target, p1 in probabilities.items():
        if context:
            evidence = context.get(target)
            p = ((evidence.success_count if evidence else 0) + KAPPA * p1) / (seen_after_pair + KAPPA)
        else:
            p = weight * p1
        scored.append((p, target))
    scored.sort(key=lambda item: (-item[0], item[1]))
    return _Ranking(source, distance, context, seen_after_pair, scored)


def rank_next(graph: nx.DiGraph, after: Sequence[str], limit: int, second_order: SecondOrder | None = None) -> list[str]:
    """The ids ``suggest_next`` would return, without building the models (live grading's hot path)."""
    ranking = _rank(graph, after, second_order)
    return [target for _, target in ranking.scored[:limit]] if ranking else []


def suggest_next(
    graph: nx.DiGraph, after: Sequence[str], limit: int = 5, second_order: SecondOrder | None = None
) -> list[Suggestion]:
    """The most probable next tools after ``after`` (oldest first), best first.

    The last tool of ``after`` is never suggested (a tool following itself teaches nothing).
    """
    ranking = _rank(graph, after, second_order)
    if ranking is None or limit <= 0:
        return []
    source, context = ranking.source, ranking.context
    weight = 0.5**ranking.distance
    out = sum(attrs["observed_count"] for attrs in graph.succ[source].values())
    suggestions = []
    for p, target in ranking.scored[:limit]:
        attrs = graph.succ[source][target]
        reason = (
            f"{attrs['edge_type']} edge from {source}: observed {attrs['observed_count']}x, "
            f"{attrs['success_count']} succeeded, {attrs['failure_count']} failed (confidence {attrs['confidence']:.3f}); "
            f"{attrs['observed_count']} of the {out} transitions out of {source}"
        )
        if context:
            evidence = context.get(target)
            followed = evidence.success_count if evidence else 0
            reason += f"; after {after[-2]} -> {after[-1]} it came next and succeeded {followed} of {ranking.seen_after_pair} times"
        elif ranking.distance:
            reason += f"; {after[-1]} has no learned successors, so this comes from {ranking.distance} step(s) back"
        suggestions.append(
            Suggestion(
                tool_id=target,
                confidence=round(weight * attrs["confidence"], 6),
                reason=reason,
                probability=round(p, 6),
            )
        )
    return suggestions
