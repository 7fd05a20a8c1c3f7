"""Next-tool suggestions: rank the successors of the given tools by what the graph learned."""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
from pydantic import BaseModel


class Suggestion(BaseModel):
    tool_id: str
    confidence: float
    reason: str


def suggest_next(graph: nx.DiGraph, after: Sequence[str], limit: int = 5) -> list[Suggestion]:
    """Successors of ``after``, best first.

    The last tool weighs most (it is what runs next to), earlier ones decay by half per step.
    A successor's score is its best weighted edge confidence; confidence already folds in the
    failure ratio, so a tool that usually fails after the last one ranks below a reliable one.
    Tools already in ``after`` are not suggested again.
    """
    exclude = set(after)
    best: dict[str, tuple[float, str, dict]] = {}
    for distance, source in enumerate(reversed(after)):
        if source not in graph:
            continue
        weight = 0.5**distance
        for target, attrs in graph.succ[source].items():
            if target in exclude:
                continue
            score = weight * attrs["confidence"]
            if target not in best or score > best[target][0]:
                best[target] = (score, source, attrs)
    ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))[: max(0, limit)]
    return [
        Suggestion(
            tool_id=target,
            confidence=round(score, 6),
            reason=(
                f"{attrs['edge_type']} edge from {source}: observed {attrs['observed_count']}x, "
                f"{attrs['success_count']} succeeded, {attrs['failure_count']} failed "
                f"(confidence {attrs['confidence']:.3f})"
            ),
        )
        for target, (score, source, attrs) in ranked
    ]
