"""Tool search by words and meaning: real servers' catalogs, the bundled model offline, the fallback without it.

Quality (hit@1/hit@3 on 70 labelled requests) is measured by bench/search.py, not here: these
tests pin behaviour, with requests written for them (not taken from the labelled set).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mcp import Client

from gateway_support import ROOT, run_gateway, text, wait_for
from graphrag import GraphEvent
from graphrag.events import GraphResetData, ToolForgottenData
from pml_gateway.proxy import semantic
from pml_gateway.proxy.search import SearchFeedback, ToolDocument, ToolSearch

NODE_BIN = ROOT / ".tools" / "node_modules" / ".bin"
PY_BIN = ROOT / ".tools" / "py" / "bin"
SNAPSHOT = ROOT / "bench" / "data" / "real_tools.json"  # the five real servers' tools, as the gateway lists them


def snapshot_documents() -> list[ToolDocument]:
    tools = json.loads(SNAPSHOT.read_text())["tools"]
    return [ToolDocument(t["name"], t["server"], t.get("title"), t.get("description"), t["inputSchema"]) for t in tools]


def ranked(search: ToolSearch, query: str, limit: int = 3) -> list[str]:
    return [hit.document.tool_id for _, hit in search.search(query, limit)]


def words_only() -> None:
    return None


@pytest.mark.anyio
async def test_natural_requests_find_tools_of_real_servers_by_meaning(tmp_path: Path) -> None:
    servers = {
        "memory": {"command": str(NODE_BIN / "mcp-server-memory"), "env": {"MEMORY_FILE_PATH": str(tmp_path / "memory.jsonl")}},
        "time": {"command": str(PY_BIN / "mcp-server-time")},
        "git": {"command": str(PY_BIN / "mcp-server-git"), "args": ["--repository", str(ROOT)]},
    }
    async with run_gateway(tmp_path, servers) as gw:
        registry = gw.gateway.registry
        await wait_for(lambda: all(registry.get(t) for t in ("memory__delete_entities", "time__get_current_time", "git__git_log")), timeout=30)
        async with Client(gw.mcp_url, cache=None) as client:

            async def search(query: str) -> list[dict[str, Any]]:
                result = await client.call_tool("pml_search_tools", {"query": query, "limit": 3})
                assert not result.is_error, text(result)
                tools: list[dict[str, Any]] = result.structured_content["tools"]
                return tools

            # no word in common with any memory tool: found by meaning alone
            erase = await search("erase what you know about Carol")
            assert {t["tool_id"] for t in erase} <= {"memory__delete_entities", "memory__delete_observations", "memory__delete_relations"}
            assert "memory__delete_entities" in {t["tool_id"] for t in erase}
            assert all(t["semantic_score"] > 0 and t["text_score"] == 0 and "close in meaning" in t["reason"] for t in erase)
            assert erase[0]["semantic_score"] == 1.0 and erase[0]["input_schema"]["properties"]

            people = await search("who do you know that works at Initech")
            assert all(t["tool_id"].startswith("memory__") for t in people)

            clock = await search("what time is it in Tokyo")
            assert {t["tool_id"] for t in clock[:2]} == {"time__get_current_time", "time__convert_time"}
            assert any("matches time" in t["reason"] for t in clock[:2])  # words count too

        # the same live catalog by words alone: nothing for the first two requests
        documents = [ToolDocument(e.name, e.server, e.tool.title, e.tool.description, e.tool.input_schema) for e in registry.tools()]
        bm25 = ToolSearch(embedder=words_only)
        bm25.update(documents)
        assert ranked(bm25, "erase what you know about Carol") == []
        assert not any(t.startswith("memory__") for t in ranked(bm25, "who do you know that works at Initech"))


@pytest.fixture
def fresh_loader() -> Iterator[None]:
    semantic._load.cache_clear()
    yield
    semantic._load.cache_clear()


def test_search_without_the_model_is_bm25_alone(monkeypatch: pytest.MonkeyPatch, fresh_loader: None) -> None:
    monkeypatch.setitem(sys.modules, "wordllama", None)  # as if the semantic extra were not installed
    assert semantic.load_embedder() is None
    search = ToolSearch()  # the default loader: finds no model, falls back to words
    search.update(snapshot_documents())
    # no word shared with a memory tool and no meaning: no memory tool (other tools' texts happen to say "know")
    assert not any(t.startswith("memory__") for t in ranked(search, "erase what you know about Carol"))
    results = search.search("list the git branches", 3)
    assert results[0][1].document.tool_id == "git__git_branch"
    assert all(hit.semantic_score == 0.0 and hit.text_score > 0 for _, hit in results)
    # the learned labels still work, by words (a few of them: one label alone counts a third)
    for name in ("Dave", "Erin", "Frank"):
        search.feedback.learn(f"erase what you know about {name}", "memory__delete_entities")
    search.update(snapshot_documents())
    assert ranked(search, "erase what you know about Carol")[0] == "memory__delete_entities"


def test_bundled_model_loads_offline_from_the_wheel(tmp_path: Path) -> None:
    # No hub, no cache, no route out: an empty HOME (no ~/.cache/wordllama), HF_HUB_OFFLINE, and proxies
    # pointing at a closed port so that any download attempt would fail.
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "PYTHONPATH": str(ROOT)}
    script = (
        "import logging, json\n"
        "from pml_gateway.proxy.semantic import load_embedder\n"
        "before = (list(logging.getLogger().handlers), logging.getLogger().level)\n"
        "embed = load_embedder()\n"
        "v = embed(['what time is it', 'current time in a timezone', 'delete a file'])\n"
        "print(json.dumps({'shape': list(v.shape), 'norms': [float(x) for x in (v * v).sum(axis=1)],\n"
        "  'closer': float(v[0] @ v[1]) > float(v[0] @ v[2]),\n"
        "  'logging_kept': before == (list(logging.getLogger().handlers), logging.getLogger().level)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["shape"] == [3, 256] and np.allclose(out["norms"], 1.0, atol=1e-5)
    assert out["closer"] and out["logging_kept"]
    assert not (tmp_path / ".cache").exists()  # nothing downloaded or cached


class CountingEmbedder:
    def __init__(self) -> None:
        model = semantic.load_embedder()
        assert model is not None, "the semantic extra is part of make install"
        self.model = model
        self.batches: list[int] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.batches.append(len(texts))
        return self.model(texts)


def test_tools_are_embedded_once_per_catalog_change_and_labels_move_meaning() -> None:
    counting = CountingEmbedder()
    search = ToolSearch(embedder=lambda: counting)
    documents = snapshot_documents()
    search.update(documents)
    search.update(documents)
    assert counting.batches == [len(documents)]  # the catalog once, not per update or query
    before = search.search("erase what you know about Carol", 3)
    assert counting.batches == [len(documents), 1]  # the query alone
    assert before[0][1].document.tool_id == "memory__delete_observations"  # close, but not the one people meant

    # a search, then a call: the label moves delete_entities toward the words of that request
    search.feedback.learn("erase all you know about Dave", "memory__delete_entities")
    search.update(documents)
    assert counting.batches[2:] == [1]  # the one past query, not the catalog again
    after = {hit.document.tool_id: (score, hit) for score, hit in search.search("erase what you know about Carol", 3)}
    assert max(after, key=lambda t: after[t][0]) == "memory__delete_entities"
    assert after["memory__delete_entities"][1].semantic_score == 1.0 and after["memory__delete_entities"][1].feedback_score > 0

    search.update(documents[:-1])  # a server dropped a tool: the catalog is embedded again
    assert counting.batches[-2:] == [len(documents) - 1, 1]  # the tools, then the past query again


def test_an_admin_forget_or_reset_forgets_search_labels() -> None:
    feedback = SearchFeedback()
    feedback.learn("erase what you know about Carol", "memory__delete_entities")
    feedback.learn("what o'clock is it", "time__get_current_time")
    version = feedback.labels
    forgotten = ToolForgottenData(tool_id="memory__delete_entities", server="memory", edges_removed=0, transitions_removed=0)
    feedback.on_event(GraphEvent(id=1, type="tool_forgotten", data=forgotten))
    assert feedback.text("memory__delete_entities") == "" and feedback.text("time__get_current_time")
    assert feedback.labels > version  # the index re-reads them
    feedback.on_event(GraphEvent(id=2, type="graph_reset", data=GraphResetData(nodes_removed=1, edges_removed=0)))
    assert not feedback.queries
