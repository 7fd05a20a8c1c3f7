"""Example MCP server: plain-text tools (counts, a first-sentences summary, keywords, sentiment)."""

from __future__ import annotations

import re
from collections import Counter

from pydantic import BaseModel, Field

from _serve import serve
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("text", instructions="Small text utilities: count, summarize, keywords, sentiment.", log_level="WARNING")

STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was we were will with "
    "not but our they you your i he she his her them then than there their so if do does did".split()
)
POSITIVE = frozenset("good great agreed ship love happy excellent win fast clean success works done".split())
NEGATIVE = frozenset("bad slow broken fail failed bug late sad problem error crash wrong".split())

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[A-Za-zÀ-ÿ']+")


class Counts(BaseModel):
    words: int
    sentences: int
    characters: int


class Summary(BaseModel):
    summary: str
    sentences_kept: int
    sentences_total: int


class Keyword(BaseModel):
    word: str
    count: int


class Keywords(BaseModel):
    keywords: list[Keyword]


class Sentiment(BaseModel):
    score: float = Field(description="From -1 (negative) to 1 (positive).")
    label: str


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


@server.tool()
def word_count(text: str) -> Counts:
    """Count words, sentences and characters."""
    return Counts(words=len(_WORD.findall(text)), sentences=len(_sentences(text)), characters=len(text))


@server.tool()
def summarize(text: str, sentences: int = Field(default=2, ge=1, le=20)) -> Summary:
    """Summarize by keeping the first sentences."""
    all_sentences = _sentences(text)
    if not all_sentences:
        raise ToolError("text is empty")
    kept = all_sentences[:sentences]
    return Summary(summary=" ".join(kept), sentences_kept=len(kept), sentences_total=len(all_sentences))


@server.tool()
def keywords(text: str, limit: int = Field(default=5, ge=1, le=50)) -> Keywords:
    """The most frequent words that are not stopwords."""
    words = [w.lower() for w in _WORD.findall(text) if len(w) > 2 and w.lower() not in STOPWORDS]
    ranked = sorted(Counter(words).items(), key=lambda item: (-item[1], item[0]))[:limit]
    return Keywords(keywords=[Keyword(word=w, count=c) for w, c in ranked])


@server.tool()
def sentiment(text: str) -> Sentiment:
    """A tiny lexicon-based sentiment score."""
    words = [w.lower() for w in _WORD.findall(text)]
    pos = sum(w in POSITIVE for w in words)
    neg = sum(w in NEGATIVE for w in words)
    score = 0.0 if pos + neg == 0 else (pos - neg) / (pos + neg)
    label = "positive" if score > 0.2 else "negative" if score < -0.2 else "neutral"
    return Sentiment(score=round(score, 3), label=label)


if __name__ == "__main__":
    serve(server)
