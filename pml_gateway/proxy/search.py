"""Tool search for ``pml_search_tools``: BM25 over what a tool says about itself, plus what the gateway saw.

Substring matching ranked ``files__list_directory_with_sizes`` first for "what time is it in
Tokyo" (it "matches is, it, in"). This is BM25 (``bm25s``) over each tool's name (split at
``__``, ``_``, ``-`` and camelCase, counted twice), title, description and parameter names, plus
its parameter descriptions as a second field at 0.3 weight (their example values, "Asia/Tokyo",
must not decide), with English stop words removed and words reduced to their stem (Snowball,
through PyStemmer when installed, so "branches" finds "branch").

Words alone miss requests that share none with the tool ("forget everything you know about
Bob" for ``memory__delete_entities``). Two things close that gap. Meaning: with the ``semantic``
extra installed (``proxy/semantic.py``: wordllama and all-MiniLM-L6-v2, two models inside their
wheels, offline, used together), each tool's name, description and parameter names are embedded
and the query's cosine to them, scaled per query so the best tool scores 1 and the average 0, is
blended with BM25: the model's ``lexical_weight`` (0.1 for the two together) words, the rest
meaning. And what the gateway saw: the tool a client calls right after a search, in the same
trace, is the one it was looking for. ``SearchFeedback`` keeps those labels (in the store too, so they outlive the process) as the
words of the queries that led to each tool: a third BM25 field of the tool's document (document
expansion from click logs), and, with the models, the embedded past queries themselves: a tool's
cosine moves toward its mean cosine to them as its labels grow (n / (n + 2)). On 70 labelled
requests (bench/search.py) that takes hit@1 / hit@3 from 0.457 / 0.557 (BM25) to 0.657 / 0.871
with the models, and 0.743 / 0.900 with a history of 73 labels; the weights were chosen on one
half of the requests and the other half is reported apart (bench/README.md).

The index is rebuilt lazily, at most once per change, not per query (``ToolSearch.update``):
the tools' own fields when the tool set changes (for the 50 tools of the five real servers on the
2-core machine, 6 ms of CPU), the learned fields alone when labels arrived (about 2 ms). Each
text (tool, past query, query) is embedded once and kept (``VECTOR_CACHE_SIZE``): embedding the
50 tools costs 0.35 s of CPU with MiniLM, a new query 3 ms, so the gateway does it in a worker
thread first (``texts_to_embed``, ``embed_ahead``) and the search on the event loop finds the
vectors ready; what is left there is 0.05 ms of CPU by words alone, 0.08 ms fused.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

from graphrag import GraphEvent, StoreUnavailable
from graphrag.events import GraphResetData, ToolForgottenData

from pml_gateway.proxy.semantic import Embedder, load_embedder

try:  # optional: the Snowball stemmer (declared in pyproject); plain words without it
    import Stemmer

    _stem: Callable[[str], str] = Stemmer.Stemmer("english").stemWord
except ImportError:  # pragma: no cover - depends on the environment
    _stem = str

#: Weight of the learned field (the words of past queries that led to the tool) against the main field.
FEEDBACK_WEIGHT = 1.0
#: Labels at which a tool's learned field counts half.
LABEL_PRIOR = 2.0
#: Weight of the parameter descriptions against the main field: "Asia/Tokyo" as an example value
#: of ``time__convert_time``'s target must not outrank ``time__get_current_time`` for "time in Tokyo".
PARAMETER_WEIGHT = 0.3
#: Weight of the graph boost (the probability that a tool follows the context tools).
GRAPH_WEIGHT = 0.5
#: Texts whose vectors are kept (tools, past queries, queries; the least recently used go first):
#: 4,096 x 640 float32 is 10 MB, and a text is embedded once, not at each catalog or label change.
VECTOR_CACHE_SIZE = 4096

log = logging.getLogger(__name__)

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(STOPWORDS_EN) | {"please", "me", "my", "i", "want", "need", "can", "could", "would", "let"}


def terms(text: str) -> list[str]:
    """Search terms of a text: words split at camelCase and punctuation, stop words out, stemmed."""
    words = _WORD.findall(_CAMEL.sub(" ", text).lower())
    return [_stem(w) for w in words if w not in _STOPWORDS]


_SPECIFIC = re.compile(r"[0-9./\\:@_]")


def generic_words(query: str) -> str:
    """A query without what is particular to one request: names (capitalised words after the first),
    numbers, file names and paths. "forget everything you know about Bob" teaches "forget", not "Bob"."""
    words = query.split()
    kept = [w for i, w in enumerate(words) if not _SPECIFIC.search(w) and not (i and w[:1].isupper())]
    return " ".join(kept)


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

    def meaning_text(self) -> str:
        """What the embedding model reads: server, name, title, description, parameter names.

        The name once (an average of token vectors: repeating it would drown the description).
        """
        server, _, name = self.tool_id.rpartition("__")
        properties = self.input_schema.get("properties")
        params = [p.replace("_", " ") for p in properties] if isinstance(properties, dict) else []
        name = name.replace("_", " ").replace("-", " ")
        return " ".join([server, f"{name}.", self.title or "", self.description or "", *params])

    def parameter_text(self) -> str:
        """The minor field: parameter descriptions (their examples name places, formats, ...)."""
        properties = self.input_schema.get("properties")
        if not isinstance(properties, dict):
            return ""
        return " ".join(spec["description"] for spec in properties.values() if isinstance(spec, dict) and isinstance(spec.get("description"), str))


@dataclass
class SearchHit:
    document: ToolDocument
    text_score: float  #: BM25 of the tool's own texts, relative to the best match of the query (1)
    feedback_score: float  #: BM25 of the words earlier searches that led to this tool used, on the same scale
    matched: list[str]  #: query terms found in the tool's text
    semantic_score: float = 0.0  #: closeness in meaning, per query: 1 the closest tool, 0 the average (can be < 0)


class LabelStore(Protocol):
    """Where search labels outlive the process (``graphrag.GraphStore`` implements it)."""

    def add_search_labels(self, labels: Sequence[tuple[str, str]], keep: int) -> None: ...

    def search_labels(self) -> list[tuple[str, str]]: ...


@dataclass
class SearchFeedback:
    """Labels the gateway saw: a search, then a call of ``tool_id`` in the same trace.

    Kept as the words of past queries per tool (the last ``per_tool`` of each), which the index
    adds to the tool as one more field: document expansion from click logs. BM25 then weighs the
    learned words as it weighs any other (a rare, telling word like "forget" much more than
    "what"), and a tool is found by the words people used to ask for it.

    With ``keep`` (the gateway's store) each label is also written there and ``restore`` reads
    them back at start-up: what search learned survives a restart, and a ``pml-gateway stdio``
    that a desktop client starts per session starts from everything earlier sessions taught.
    """

    per_tool: int = 50
    queries: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    labels: int = 0  #: labels learned so far; also the version of ``queries``
    keep: LabelStore | None = None

    def learn(self, query: str, tool_id: str) -> None:
        words = generic_words(query)  # what is particular to one request is neither learned nor stored
        self._add(tool_id, words)
        if self.keep is not None:
            try:
                self.keep.add_search_labels([(tool_id, words)], self.per_tool)
            except StoreUnavailable as exc:  # learned in memory all the same
                log.warning("search label for %r not stored: %s", tool_id, exc)

    def restore(self) -> None:
        """Learn the labels ``keep`` holds, oldest first (at start-up)."""
        if self.keep is None:
            return
        try:
            kept = self.keep.search_labels()
        except StoreUnavailable as exc:  # a database down at start: search starts from nothing learned
            log.warning("search labels not read: %s", exc)
            return
        for tool_id, words in kept:
            self._add(tool_id, words)

    def _add(self, tool_id: str, words: str) -> None:
        learned = self.queries[tool_id]
        learned.append(words)
        del learned[: -self.per_tool]
        self.labels += 1

    def text(self, tool_id: str) -> str:
        return " ".join(self.queries.get(tool_id, ()))

    def forget(self, tool_id: str | None = None) -> None:
        """Drop what was learned for ``tool_id`` (for every tool with None): an admin forget or reset."""
        if tool_id is None:
            self.queries.clear()
        else:
            self.queries.pop(tool_id, None)
        self.labels += 1  # a new version: the index drops the learned words at the next search

    def on_event(self, event: GraphEvent) -> None:
        """An engine listener: the admin's ``tool_forgotten`` and ``graph_reset`` forget labels too."""
        if isinstance(event.data, GraphResetData):
            self.forget()
        elif isinstance(event.data, ToolForgottenData):
            self.forget(event.data.tool_id)


class ToolSearch:
    """A BM25 index over the tools (and their embeddings, with the ``semantic`` extra), rebuilt when
    they change, with feedback from the gateway's traces."""

    def __init__(
        self,
        feedback: SearchFeedback | None = None,
        embedder: Callable[[], Embedder | None] = load_embedder,
        lexical_weight: float | None = None,
    ) -> None:
        self.feedback = feedback if feedback is not None else SearchFeedback()
        self._load_embedder = embedder  # called once, by ``load`` (the gateway calls it from a worker thread)
        self._embed: Embedder | None = None
        self._loaded = False
        self._lexical_weight = lexical_weight  # None: the model's own (``Embedder.lexical_weight``)
        self._vectors: np.ndarray | None = None  # one unit row per tool; None: words alone
        self._learned_vectors = np.zeros((0, 0))  # one row per past query ...
        self._learned_owner = np.zeros(0, dtype=int)  # ... and the index of the tool it led to
        self._key: tuple[Any, ...] | None = None
        self._documents: list[ToolDocument] = []
        self._doc_terms: list[frozenset[str]] = []
        self._bm25: list[tuple[float, bm25s.BM25]] = []  # (weight, index) per field
        self._label_evidence = np.zeros(0)
        self._labels_indexed = -1
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()  # text -> unit vector
        self._cache_lock = threading.Lock()  # embed_ahead fills the cache from a worker thread

    @property
    def lexical_weight(self) -> float:
        """Share of the words (BM25 with its learned field) in the fused score; the rest is meaning.

        Each model has the share chosen for it on the even half of bench/data/search_queries.json
        (the odd half is reported apart); without a model, words are all there is.
        """
        if self._lexical_weight is not None:
            return self._lexical_weight
        return self._embed.lexical_weight if self._embed is not None else 1.0

    def texts_to_embed(self, documents: Iterable[ToolDocument], query: str) -> list[str]:
        """What a search of ``query`` over ``documents`` will embed that is not embedded yet (none without a model)."""
        self.load()
        if self._embed is None:
            return []
        texts = [d.meaning_text() for d in documents] + [q for d in documents for q in self.feedback.queries.get(d.tool_id, ())] + [query]
        with self._cache_lock:
            return [t for t in dict.fromkeys(texts) if t not in self._cache]

    def embed_ahead(self, texts: list[str]) -> None:
        """Embed ``texts`` into the cache, from a worker thread: then the search itself, on the event
        loop, finds them there (the gateway's pml_search_tools: a catalog of 50 tools is 0.35 s of
        CPU with MiniLM, a query 3 ms)."""
        self._embedded(texts)

    @property
    def loaded(self) -> bool:
        """The models were loaded (or found missing): a search will not wait for them."""
        return self._loaded

    def load(self) -> None:
        """Load the embedding models now (once; from a worker thread, they take 0.2-0.5 s)."""
        if not self._loaded:
            self._embed = self._load_embedder()
            self._loaded = True


    def _embedded(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of ``texts``, each text embedded once (then kept, up to VECTOR_CACHE_SIZE)."""
        assert self._embed is not None
        if not texts:
            return self._embed([])
        with self._cache_lock:
            vectors = {t: self._cache[t] for t in texts if t in self._cache}
        new = [t for t in dict.fromkeys(texts) if t not in vectors]
        vectors.update(zip(new, self._embed(new)) if new else ())  # outside the lock: the model is thread-safe
        with self._cache_lock:
            for text in texts:
                self._cache[text] = vectors[text]
                self._cache.move_to_end(text)
            while len(self._cache) > VECTOR_CACHE_SIZE:
                self._cache.popitem(last=False)
        return np.array([vectors[t] for t in texts])

    def update(self, documents: Iterable[ToolDocument]) -> None:
        """Index these tools, unless they (and the labels learned) are the ones already indexed.

        The tools' own fields are re-indexed only when the tools change; new labels re-index the
        learned field alone.
        """
        documents = list(documents)
        self.load()
        key = tuple((d.tool_id, d.title, d.description) for d in documents)
        if key != self._key:
            self._key, self._labels_indexed = key, -1
            self._documents = documents
            main = [terms(d.text()) for d in documents]
            minor = [terms(d.parameter_text()) for d in documents]
            self._doc_terms = [frozenset(a) | frozenset(b) for a, b in zip(main, minor)]
            self._bm25 = [(1.0, _index(main)), (PARAMETER_WEIGHT, _index(minor))] if documents else []
            self._vectors = self._embedded([d.meaning_text() for d in documents]) if self._embed else None
        if self._documents and self._labels_indexed != self.feedback.labels:
            self._labels_indexed = self.feedback.labels
            learned = [terms(self.feedback.text(d.tool_id)) for d in self._documents]
            # One label is one person's wording: the learned field counts fully only once a tool has
            # several (n / (n + LABEL_PRIOR)), so a single odd query cannot outrank the tool's own text.
            counts = np.array([len(self.feedback.queries.get(d.tool_id, ())) for d in self._documents], dtype=float)
            self._label_evidence = counts / (counts + LABEL_PRIOR)
            self._bm25[2:] = [(FEEDBACK_WEIGHT, _index(learned))]
            if self._embed is not None:
                past = [(i, q) for i, d in enumerate(self._documents) for q in self.feedback.queries.get(d.tool_id, ())]
                self._learned_owner = np.array([i for i, _ in past], dtype=int)
                self._learned_vectors = self._embedded([q for _, q in past]) if past else np.zeros((0, 0))

    def search(self, query: str, limit: int, boosts: Mapping[str, float] | None = None) -> list[tuple[float, SearchHit]]:
        """The best ``limit`` tools for ``query``: (score, hit), best first; only tools that match at all."""
        if not self._bm25:
            return []
        query_terms = terms(query)
        fields = np.zeros((len(self._bm25), len(self._documents)))
        if query_terms:
            for row, (weight, bm25) in enumerate(self._bm25):
                fields[row] = weight * np.asarray(bm25.get_scores(query_terms), dtype=float)
        best = float(fields.sum(axis=0).max()) if fields.size else 0.0
        if best > 0:
            fields /= best  # the best match scores 1
        text, learned = fields[:2].sum(axis=0), fields[2] * self._label_evidence
        if self._vectors is not None:
            meaning = self._meaning(query)
            fused = self.lexical_weight * (text + learned) + (1 - self.lexical_weight) * meaning
        else:
            meaning, fused = np.zeros(len(self._documents)), text + learned
        boosts = boosts or {}
        scored = []
        for i, document in enumerate(self._documents):
            if text[i] <= 0 and learned[i] <= 0 and meaning[i] <= 0:
                continue  # the graph only reorders tools that match the query, by words or closer than average in meaning
            score = float(fused[i]) + GRAPH_WEIGHT * boosts.get(document.tool_id, 0.0)
            matched = [t for t in dict.fromkeys(query_terms) if t in self._doc_terms[i]]
            scored.append((score, SearchHit(document, float(text[i]), float(learned[i]), matched, float(meaning[i]))))
        scored.sort(key=lambda item: (-item[0], item[1].document.tool_id))
        return scored[:limit]

    def _meaning(self, query: str) -> np.ndarray:
        """Cosine of the query to each tool, moved toward its mean cosine to the past queries that led
        to the tool by the tool's label evidence, then scaled for this query: 1 the closest tool, 0 the average."""
        assert self._embed is not None and self._vectors is not None
        vector = self._embedded([query])[0]
        cosine = self._vectors @ vector
        if len(self._learned_owner):
            n = len(self._documents)
            total = np.bincount(self._learned_owner, weights=self._learned_vectors @ vector, minlength=n)
            past = total / np.maximum(np.bincount(self._learned_owner, minlength=n), 1)
            # only ever upward: a tool's own text is not made worse by the labels (tools without any have 0 evidence)
            cosine = cosine + self._label_evidence * np.clip(past - cosine, 0.0, None)
        spread = float(cosine.max() - cosine.mean())
        return (cosine - cosine.mean()) / spread if spread > 0 else np.zeros(len(cosine))


def _index(corpus: list[list[str]]) -> bm25s.BM25:
    bm25 = bm25s.BM25()
    bm25.index([doc or ["_"] for doc in corpus], show_progress=False)  # bm25s wants no empty document
    return bm25
