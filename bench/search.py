"""Tool search quality: hit@1 / hit@3 of ``pml_search_tools`` rankers on natural requests.

    .venv/bin/python bench/search.py            # the table for bench/README.md, in about a second
    .venv/bin/python bench/search.py --misses   # also list the queries each ranker misses

Tools: the 50 tools of the five real servers (server-everything, memory, filesystem, time, git) as
the gateway exposes them, snapshot in bench/data/real_tools.json (``--snapshot`` refreshes it from
the real servers through a real gateway); the gateway's own pml_* tools are not searched. Queries:
bench/data/search_queries.json, each with its acceptable tools. Rankers:

- substring: the scorer ``pml_search_tools`` used before (share of query words found in the
  name or description), kept here as the baseline;
- BM25: ``pml_gateway.proxy.search.ToolSearch`` with no feedback (stemming and stop words);
- BM25 + feedback (leave-one-out): the same after the gateway saw the OTHER queries of the set,
  each followed by a call of its tool (the query itself is never among its own labels);
- BM25 + feedback (history): after the 73 past searches of bench/data/search_history.json (other
  people, places and files; written apart from the query set), each with the tool called next.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pml_gateway.proxy.search import SearchFeedback, ToolDocument, ToolSearch, terms  # noqa: E402

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


def evaluate(show_misses: bool) -> None:
    docs = documents()
    by_id = {d.tool_id: d for d in docs}
    queries = json.loads(QUERIES.read_text())["queries"]
    disjoint = [shares_no_word(q["query"], q["tools"], by_id) for q in queries]

    def substring(q: str, i: int) -> list[str]:
        ranked = sorted(docs, key=lambda d: (-substring_score(q, d), d.tool_id))
        return [d.tool_id for d in ranked if substring_score(q, d) > 0][:3]

    plain = ToolSearch()
    plain.update(docs)

    def bm25(q: str, i: int) -> list[str]:
        return [hit.document.tool_id for _, hit in plain.search(q, 3)]

    def with_feedback(q: str, i: int) -> list[str]:
        feedback = SearchFeedback()
        for j, other in enumerate(queries):
            if j != i:
                feedback.learn(other["query"], other["tools"][0])
        search = ToolSearch(feedback)
        search.update(docs)
        return [hit.document.tool_id for _, hit in search.search(q, 3)]

    history = ToolSearch()
    past_searches = json.loads(HISTORY.read_text())["searches"]
    for past in past_searches:
        history.feedback.learn(past["query"], past["called"])
    history.update(docs)

    def with_history(q: str, i: int) -> list[str]:
        return [hit.document.tool_id for _, hit in history.search(q, 3)]

    rankers = (
        ("substring (before)", substring),
        ("BM25", bm25),
        ("BM25 + feedback (leave-one-out)", with_feedback),
        (f"BM25 + feedback (history of {len(past_searches)} searches)", with_history),
    )
    rows = []
    for name, ranker in rankers:
        hits1 = hits3 = d1 = d3 = 0
        misses = []
        for i, q in enumerate(queries):
            ranked = ranker(q["query"], i)
            h1 = bool(ranked[:1]) and ranked[0] in q["tools"]
            h3 = any(t in q["tools"] for t in ranked[:3])
            hits1 += h1
            hits3 += h3
            d1 += h1 and disjoint[i]
            d3 += h3 and disjoint[i]
            if not h3:
                misses.append(f"{q['query']!r} -> {ranked} (want {q['tools'][0]})")
        n, nd = len(queries), sum(disjoint)
        rows.append((name, hits1 / n, hits3 / n, d1 / nd, d3 / nd))
        if show_misses:
            print(f"\n{name}: {len(misses)} misses at 3")
            for m in misses:
                print("  ", m)
    print(f"\n**Tool search: {len(queries)} natural requests over {len(docs)} tools ({sum(disjoint)} share no word with their tool)**\n")
    print("| ranker | hit@1 | hit@3 | hit@1 (no shared word) | hit@3 (no shared word) |")
    print("|---|---|---|---|---|")
    for name, h1, h3, n1, n3 in rows:
        print(f"| {name} | {h1:.3f} | {h3:.3f} | {n1:.3f} | {n3:.3f} |")


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
    evaluate(args.misses)


if __name__ == "__main__":
    main()
