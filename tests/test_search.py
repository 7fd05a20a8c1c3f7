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
        search_models = gw.gateway.upstream.tools.search
        assert not search_models.loaded  # tool_exposure=all: nobody searched yet, nothing loaded
        async with Client(gw.mcp_url, cache=None) as client:

            async def search(query: str) -> list[dict[str, Any]]:
                result = await client.call_tool("pml_search_tools", {"query": query, "limit": 3})
                assert not result.is_error, text(result)
                tools: list[dict[str, Any]] = result.structured_content["tools"]
                return tools

            # no word in common with any memory tool: found by meaning alone
            erase = await search("erase what you know about Carol")
            assert search_models.loaded  # at the first search, in a worker thread
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


def test_search_without_the_models_is_bm25_alone(monkeypatch: pytest.MonkeyPatch, fresh_loader: None) -> None:
    for module in ("wordllama", "onnxruntime"):
        monkeypatch.setitem(sys.modules, module, None)  # as if the semantic extra were not installed
    assert semantic.load_embedder() is None
    search = ToolSearch()  # the default loader: finds no model, falls back to words
    search.update(snapshot_documents())
    assert search.lexical_weight == 1.0
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


@pytest.mark.parametrize(
    ("missing", "model"),
    [("onnxruntime", semantic.WordLlamaEmbedder), ("wordllama", semantic.MiniLMEmbedder)],
)
def test_one_model_missing_leaves_the_other_with_its_own_weight(monkeypatch: pytest.MonkeyPatch, fresh_loader: None, missing: str, model: type) -> None:
    monkeypatch.setitem(sys.modules, missing, None)
    embed = semantic.load_embedder()
    assert isinstance(embed, model)
    search = ToolSearch()
    search.update(snapshot_documents())
    assert search.lexical_weight == model.lexical_weight
    assert ranked(search, "erase what you know about Carol")[0].startswith("memory__delete_")


def test_a_damaged_model_is_left_out_with_a_warning(monkeypatch: pytest.MonkeyPatch, fresh_loader: None, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "model.onnx"
    broken.write_bytes(semantic.minilm_model_file().read_bytes()[:-1] + b"\0")  # one byte changed
    monkeypatch.setattr(semantic, "minilm_model_file", lambda: broken)
    embed = semantic.load_embedder()
    assert isinstance(embed, semantic.WordLlamaEmbedder)  # search goes on, by wordllama and words
    assert "without MiniLMEmbedder" in caplog.text and "sha256 differs" in caplog.text


def test_bundled_models_load_offline_from_their_wheels(tmp_path: Path) -> None:
    # No hub, no cache, no route out: an empty HOME (no ~/.cache), HF_HUB_OFFLINE, and proxies
    # pointing at a closed port so that any download attempt would fail.
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "PYTHONPATH": str(ROOT)}
    script = (
        "import logging, json\n"
        "from pml_gateway.proxy import semantic\n"
        "before = (list(logging.getLogger().handlers), logging.getLogger().level)\n"
        "embed = semantic.load_embedder()\n"
        "v = embed(['what time is it', 'current time in a timezone', 'delete a file'])\n"
        "minilm = semantic.MiniLMEmbedder()\n"
        "m = minilm(['what time is it', 'current time in a timezone', 'delete a file', ''])\n"
        "print(json.dumps({'shape': list(v.shape), 'norms': [float(x) for x in (v * v).sum(axis=1)],\n"
        "  'members': sorted(type(e).__name__ for _, e in embed.members),\n"
        "  'closer': float(v[0] @ v[1]) > float(v[0] @ v[2]), 'minilm_closer': float(m[0] @ m[1]) > float(m[0] @ m[2]),\n"
        "  'minilm_shape': list(m.shape), 'minilm_norms': [float(x) for x in (m * m).sum(axis=1)],\n"
        "  'logging_kept': before == (list(logging.getLogger().handlers), logging.getLogger().level)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["members"] == ["MiniLMEmbedder", "WordLlamaEmbedder"]
    assert out["shape"] == [3, 256 + 384] and np.allclose(out["norms"], 1.0, atol=1e-5)
    assert out["minilm_shape"] == [4, 384] and np.allclose(out["minilm_norms"], 1.0, atol=1e-5)  # an empty text too
    assert out["closer"] and out["minilm_closer"] and out["logging_kept"]
    assert not (tmp_path / ".cache").exists()  # nothing downloaded or cached
    assert not done.stderr  # onnxruntime's warnings stay quiet


def test_the_sentence_encoder_reads_requests_that_share_no_word_with_their_tool() -> None:
    # The averaged word vectors of wordllama put "tally 3 plus 9" nearest a subscription toggle and
    # "o'clock" nearest convert_time; the contextual model reads them right, and so does the ensemble.
    documents = snapshot_documents()
    models = {name: ToolSearch(embedder=lambda e=embed: e, lexical_weight=0.0) for name, embed in (("minilm", semantic.MiniLMEmbedder()), ("both", semantic.load_embedder()))}
    for search in models.values():
        search.update(documents)
        assert ranked(search, "tally 3 plus 9")[0] == "everything__get-sum"
        assert ranked(search, "what o'clock is it in Lima")[0] == "time__get_current_time"
    bm25 = ToolSearch(embedder=words_only)
    bm25.update(documents)
    assert "everything__get-sum" not in ranked(bm25, "tally 3 plus 9")  # no word in common


class CountingEmbedder:
    def __init__(self) -> None:
        model = semantic.load_embedder()
        assert model is not None, "the semantic extra is part of make install"
        self.model = model
        self.lexical_weight = model.lexical_weight
        self.batches: list[int] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.batches.append(len(texts))
        return self.model(texts)


def test_each_text_is_embedded_once_and_labels_move_meaning() -> None:
    counting = CountingEmbedder()
    search = ToolSearch(embedder=lambda: counting)
    documents = snapshot_documents()
    search.update(documents)
    search.update(documents)
    assert counting.batches == [len(documents)]  # the catalog once, not per update or query
    before = search.search("erase what you know about Carol", 3)
    assert counting.batches == [len(documents), 1]  # the query alone
    assert before[0][1].document.tool_id == "memory__delete_observations"  # close, but not the one people meant
    search.search("erase what you know about Carol", 3)
    assert counting.batches == [len(documents), 1]  # the same request again: nothing embedded

    # a search, then a call: the label moves delete_entities toward the words of that request
    search.feedback.learn("erase all you know about Dave", "memory__delete_entities")
    search.update(documents)
    assert counting.batches[2:] == [1]  # the one past query, not the catalog again
    after = {hit.document.tool_id: (score, hit) for score, hit in search.search("erase what you know about Carol", 3)}
    assert max(after, key=lambda t: after[t][0]) == "memory__delete_entities"
    assert after["memory__delete_entities"][1].semantic_score == 1.0 and after["memory__delete_entities"][1].feedback_score > 0

    # a server dropped a tool, or a profile sees fewer: re-indexed, but the texts are not embedded again
    search.update(documents[:-1])
    assert len(counting.batches) == 3 and len(search.search("erase what you know about Carol", 50)) <= len(documents) - 1
    changed = ToolDocument("time__get_current_time", "time", None, "Tell the time somewhere.", {"properties": {"timezone": {}}})
    search.update([*documents[:-1], changed])
    assert counting.batches[3:] == [1]  # the one changed description


def test_embed_ahead_leaves_nothing_for_the_search_to_embed() -> None:
    # The gateway embeds off the event loop first (tools.py), then searches on it.
    counting = CountingEmbedder()
    search = ToolSearch(embedder=lambda: counting)
    documents = snapshot_documents()
    search.feedback.learn("wipe what you know about Dave", "memory__delete_entities")
    texts = search.texts_to_embed(documents, "erase what you know about Carol")
    assert len(texts) == len(documents) + 2  # the tools, the past query and the query
    search.embed_ahead(texts)
    assert search.texts_to_embed(documents, "erase what you know about Carol") == []
    batches = len(counting.batches)
    search.update(documents)
    assert search.search("erase what you know about Carol", 3)[0][1].document.tool_id.startswith("memory__delete_")
    assert len(counting.batches) == batches  # nothing embedded on the event loop's side
    assert ToolSearch(embedder=words_only).texts_to_embed(documents, "anything") == []  # without a model: nothing to do


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
