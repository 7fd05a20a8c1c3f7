"""Tool search for ``pml_search_tools``: BM25 over what a tool says about itself, plus what the gateway saw.

Substring matching ranked ``files__list_directory_with_sizes`` first for "what time is it in
Tokyo" (it "matches is, it, in"). This is BM25 (``bm25s``) over each tool's name (split at
``__``, ``_``, ``-`` and camelCase, counted twice), title, description, parameter names and
parameter descriptions, with English stop words removed and words reduced to their stem
(Snowball, through PyStemmer when installed, so "branches" finds "branch").

Words alone miss requests that share none with the tool ("forget everything you know about
Bob" for ``memory__delete_entities``). The gateway sees the answer for free: the tool a client
calls right after a search, in the same trace, is the one it was looking for. ``SearchFeedback``
keeps those labels (stemmed query word -> tool counts, in memory) and adds a boost for tools that
earlier searches with the same words led to. bench/search.py measures each part.

The index is rebuilt lazily when the set of tools changes (``ToolSearch.update``), at most once
per change, not per query.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

try:  # optional: the Snowball stemmer (declared in pyproject); plain words without it
    import Stemmer

    _stem: Callable[[str], str] = Stemmer.Stemmer("english").stemWord
except ImportError:  # pragma: no cover - depends on the environment
    _stem = str

#: Weight of the learned query -> tool labels against the text score (both in [0, 1]).
FEEDBACK_WEIGHT = 0.8
#: Weight of the parameter descriptions against the main field: "Asia/Tokyo" as an example value
#: of ``time__convert_time``'s target must not outrank ``time__get_current_time`` for "time in Tokyo".
PARAMETER_WEIGHT = 0.3
#: Weight of the graph boost (the probability that a tool follows the context tools).
GRAPH_WEIGHT = 0.5

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(STOPWORDS_EN) | {"please", "me", "my", "i", "want", "need", "can", "could", "would", "let"}


def terms(text: str) -> list[str]:
    """Search terms of a text: words split at camelCase and punctuation, stop words out, stemmed."""
    words = _WORD.findall(_CAMEL.sub(" ", text).lower())
    return [_stem(w) for w in words if w not in _STOPWORDS]


@dataclass(frozen=True)
class ToolDocument:
    """What the index knows of one tool."""

    tool_id: str
    server: str | None
    title: str | None
    description: str | None
    input_schema: dict[str, Any]

    def text(self) -> str:
        """The main field: name (twice), title, description, parameter names."""
        name = self.tool_id.replace("__", " ").replace("_", " ").replace("-", " ")
        properties = self.input_schema.get("properties")
        params = [p.replace("_", " ") for p in properties] if isinstance(properties, dict) else []
        return " ".join([name, name, self.title or "", self.description or "", *params])

    def parameter_text(self) -> str:
        """The minor field: parameter descriptions (their examples name places, formats, ...)."""
        properties = self.input_schema.get("properties")
        if not isinstance(properties, dict):
            return ""
        return " ".join(spec["description"] for spec in properties.values() if isinstance(spec, dict) and isinstance(spec.get("description"), str))


@dataclass
class SearchHit:
    document: ToolDocument
    text_score: float  #: BM25, divided by the best BM25 score of the query (so in [0, 1])
    feedback_score: float  #: share of the query's words whose earlier searches led to this tool
    matched: list[str]  #: query terms found in the tool's text


@dataclass
class SearchFeedback:
    """Labels the gateway saw: a search, then a call of ``tool_id`` in the same trace."""

    counts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    labels: int = 0

    def learn(self, query: str, tool_id: str) -> None:
        for term in set(terms(query)):
            self.counts[term][tool_id] += 1
        self.labels += 1

    def scores(self, query_terms: Sequence[str]) -> dict[str, float]:
        """For each tool, the mean over the query's terms of P(tool | term) (add-one smoothed)."""
        unique = set(query_terms)
        if not unique:
            return {}
        scores: dict[str, float] = defaultdict(float)
        for term in unique:
            tools = self.counts.get(term)
            if not tools:
                continue
            total = sum(tools.values()) + 1
            for tool_id, count in tools.items():
                scores[tool_id] += count / total / len(unique)
        return dict(scores)


class ToolSearch:
    """A BM25 index over the tools, rebuilt when they change, with feedback from the gateway's traces."""

    def __init__(self, feedback: SearchFeedback | None = None) -> None:
        self.feedback = feedback if feedback is not None else SearchFeedback()
        self._key: tuple[Any, ...] | None = None
        self._documents: list[ToolDocument] = []
        self._doc_terms: list[frozenset[str]] = []
        self._bm25: list[tuple[float, bm25s.BM25]] = []  # (weight, index) per field

    def update(self, documents: Iterable[ToolDocument]) -> None:
        """Index these tools, unless they are the ones already indexed."""
        documents = list(documents)
        key = tuple((d.tool_id, d.title, d.description) for d in documents)
        if key == self._key:
            return
        self._key = key
        self._documents = documents
        main = [terms(d.text()) or ["_"] for d in documents]  # bm25s wants no empty document
        minor = [terms(d.parameter_text()) or ["_"] for d in documents]
        self._doc_terms = [frozenset(a) | frozenset(b) for a, b in zip(main, minor)]
        self._bm25 = []
        if documents:
            for weight, corpus in ((1.0, main), (PARAMETER_WEIGHT, minor)):
                bm25 = bm25s.BM25()
                bm25.index(corpus, show_progress=False)
                self._bm25.append((weight, bm25))

    def search(self, query: str, limit: int, boosts: Mapping[str, float] | None = None) -> list[tuple[float, SearchHit]]:
        """The best ``limit`` tools for ``query``: (score, hit), best first; only tools that match at all."""
        if not self._bm25:
            return []
        query_terms = terms(query)
        raw = np.zeros(len(self._documents))
        if query_terms:
            for weight, bm25 in self._bm25:
                raw += weight * np.asarray(bm25.get_scores(query_terms), dtype=float)
        best = float(raw.max()) if raw.size else 0.0
        text = raw / best if best > 0 else raw
        learned = self.feedback.scores(query_terms)
        boosts = boosts or {}
        scored = []
        for i, document in enumerate(self._documents):
            feedback = learned.get(document.tool_id, 0.0)
            graph = boosts.get(document.tool_id, 0.0)
            if text[i] <= 0 and feedback <= 0:
                continue  # the graph only reorders tools that match the query
            score = float(text[i]) + FEEDBACK_WEIGHT * feedback + GRAPH_WEIGHT * graph
            matched = [t for t in dict.fromkeys(query_terms) if t in self._doc_terms[i]]
            scored.append((score, SearchHit(document, float(text[i]), feedback, matched)))
        scored.sort(key=lambda item: (-item[0], item[1].document.tool_id))
        return scored[:limit]
