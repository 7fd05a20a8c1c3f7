"""Live grading of rankings: how often the tool really used next was among the top 1 / top 3.

Nobody knows how good a ranking is in production unless it is checked against what happened.
Two rankings are checked, on the same terms, by whoever sees the calls happen:

- next-tool suggestions: each call of a sequence against ``suggest_next`` of the calls before it
  (graded as it happens, from what the engine knew at that moment: ``engine.grade_next``);
- tool search: the first call after a search, against that search's results.

``SuggestionGrader`` keeps the running counts as plain attributes (``next_tool.evaluations``,
``next_tool.hits_at_1``, ... and the same for ``search``) and ``stats()`` returns them with the
rates, as ``/graph``'s metrics, ``pml_graph_metrics`` and the Prometheus exporter show them.
Counts are per process and start at zero: they measure this run, not the stored history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field


class RankingStats(BaseModel):
    evaluations: int = Field(description="Rankings checked against the tool really used next.")
    hits_at_1: int = Field(description="... where that tool was ranked first.")
    hits_at_3: int = Field(description="... where it was in the top 3.")
    hit_rate_at_1: float | None = Field(description="hits_at_1 / evaluations (null before the first).")
    hit_rate_at_3: float | None = Field(description="hits_at_3 / evaluations (null before the first).")


class GradingStats(BaseModel):
    """Running hit rates of next-tool suggestions and of tool search."""

    evaluations: int
    hits_at_1: int
    hits_at_3: int
    hit_rate_at_1: float | None
    hit_rate_at_3: float | None
    search: RankingStats


@dataclass
class HitCounter:
    evaluations: int = 0
    hits_at_1: int = 0
    hits_at_3: int = 0

    def grade(self, ranked: Sequence[str], actual: str) -> None:
        self.evaluations += 1
        self.hits_at_1 += bool(ranked) and ranked[0] == actual
        self.hits_at_3 += actual in ranked[:3]

    def stats(self) -> RankingStats:
        n = self.evaluations
        return RankingStats(
            evaluations=n,
            hits_at_1=self.hits_at_1,
            hits_at_3=self.hits_at_3,
            hit_rate_at_1=round(self.hits_at_1 / n, 6) if n else None,
            hit_rate_at_3=round(self.hits_at_3 / n, 6) if n else None,
        )


class SuggestionGrader:
    """Running hit@1 / hit@3 of next-tool suggestions (``next_tool``) and of tool search (``search``)."""

    def __init__(self) -> None:
        self.next_tool = HitCounter()
        self.search = HitCounter()

    @property
    def version(self) -> tuple[int, int]:
        """Changes with every grading: a cache of the stats is stale when it differs."""
        return self.next_tool.evaluations, self.search.evaluations

    def stats(self) -> GradingStats:
        return GradingStats(**self.next_tool.stats().model_dump(), search=self.search.stats())
