"""Drives realistic workflows through a running pml-gateway, so there is something to learn.

    python workload.py --url http://127.0.0.1:8000/mcp [--seconds 60] [--seed 1]

Each round opens an MCP session and runs one scenario over the example servers of mcp.json
(notes, text, math): a chain of proxied calls where each step uses the previous result (the
gateway learns the chain as a trace when the session ends), or a DAG through
``pml_execute_workflow`` (learned with its dependency edges). Some rounds follow the gateway's
own ``pml_suggest_next_tools``, some hit a tool error on purpose, some speak the 2026-07-28
protocol (no session: the trace closes after the gateway's idle time). It loops until stopped.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp.types as types
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client

TOPICS = ["release", "dune", "lisbon", "dashboard", "budget", "wheel", "friday"]
TEXTS = [
    "The gateway shipped on Friday. Tests are green and the release works. Everyone is happy with the result.",
    "The dashboard is slow on large graphs. We found a bug in the layout code. Bob will fix the problem next week.",
    "Lisbon was great. The food was excellent and the weather was good. We will go back in the autumn.",
    "Budget review: travel costs went up. The conference was expensive but useful. We need a better plan for next year.",
]


class Caller:
    """Calls tools through one session and remembers what was called (for the log line)."""

    def __init__(self, call: Callable[[str, dict[str, Any]], Awaitable[types.CallToolResult]]) -> None:
        self._call = call
        self.steps: list[str] = []
        self.failed = 0

    async def __call__(self, tool: str, **arguments: Any) -> dict[str, Any]:
        result = await self._call(tool, arguments)
        self.steps.append(tool)
        if result.is_error:
            self.failed += 1
            return {}
        return result.structured_content or {}

    async def suggest_next(self, after: str) -> list[str]:
        """What the gateway learned usually follows ``after`` (not a step of the chain itself)."""
        result = await self._call("pml_suggest_next_tools", {"after": [after], "limit": 3})
        return [s["tool_id"] for s in (result.structured_content or {}).get("suggestions", [])]


# -- chains of proxied calls -------------------------------------------------------------------


async def research(call: Caller, rng: random.Random) -> None:
    found = await call("notes__search_notes", query=rng.choice(TOPICS))
    matches = found.get("matches") or (await call("notes__search_notes", query="the"))["matches"]
    note = await call("notes__read_note", note_id=matches[0]["id"])
    summary = await call("text__summarize", text=note["body"], sentences=1)
    words = await call("text__keywords", text=note["body"], limit=3)
    tags = [k["word"] for k in words.get("keywords", [])]
    await call("notes__create_note", title=f"Summary of {note['title']}", body=summary.get("summary", ""), tags=tags)


async def review(call: Caller, rng: random.Random) -> None:
    listed = await call("notes__list_notes", tag=rng.choice(["work", "travel", None]))
    notes = listed.get("notes") or (await call("notes__list_notes"))["notes"]
    note = await call("notes__read_note", note_id=rng.choice(notes)["id"])
    mood = await call("text__sentiment", text=note["body"])
    await call("notes__append_to_note", note_id=note["id"], text=f"Review: {mood.get('label', 'unknown')}.")


async def budget(call: Caller, rng: random.Random) -> None:
    costs = [round(rng.uniform(20, 400), 2) for _ in range(rng.randint(3, 8))]
    stats = await call("math__statistics", numbers=costs)
    change = await call("math__percent_change", old=stats["min"], new=stats["max"])
    await call(
        "notes__create_note",
        title="Budget check",
        body=f"Mean {stats['mean']:.2f}, spread {change.get('value', 0):.0f}%.",
        tags=["budget"],
    )


async def travel(call: Caller, rng: random.Random) -> None:
    km = rng.choice([12, 42.195, 120, 800])
    miles = await call("math__convert_units", value=km, from_unit="km", to_unit="mi")
    total = await call("math__multiply", a=miles["value"], b=rng.randint(2, 10))
    body = f"{km} km each way, {total['value']:.1f} miles in all."
    counts = await call("text__word_count", text=body)
    await call("notes__create_note", title=f"Trip plan ({counts['words']} words)", body=body, tags=["travel"])


async def clumsy(call: Caller, rng: random.Random) -> None:
    """Reads a note that does not exist first: the gateway learns that this step tends to fail."""
    await call("notes__read_note", note_id="deadbeef")
    found = await call("notes__search_notes", query=rng.choice(TOPICS))
    if found.get("matches"):
        await call("notes__read_note", note_id=found["matches"][0]["id"])


async def follow_suggestions(call: Caller, rng: random.Random) -> None:
    """An agent that asks the gateway what usually comes next, and does that."""
    context: dict[str, Any] = {"text": rng.choice(TEXTS)}
    found = await call("notes__search_notes", query=rng.choice(TOPICS))
    if found.get("matches"):
        context["note_id"] = found["matches"][0]["id"]
    last = "notes__search_notes"
    for _ in range(3):
        suggestions = await call.suggest_next(last)
        choices = [s for s in suggestions if s in GENERIC]
        if not choices:
            return
        last = choices[0]
        out = await call(last, **GENERIC[last](context))
        if "id" in out:
            context["note_id"] = out["id"]
        if "body" in out:
            context["text"] = out["body"]


GENERIC: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "notes__read_note": lambda c: {"note_id": c.get("note_id", "deadbeef")},
    "text__summarize": lambda c: {"text": c["text"], "sentences": 1},
    "text__keywords": lambda c: {"text": c["text"], "limit": 3},
    "text__sentiment": lambda c: {"text": c["text"]},
    "text__word_count": lambda c: {"text": c["text"]},
}

CHAINS = [research, research, review, budget, travel, clumsy, follow_suggestions]


# -- a DAG through pml_execute_workflow ----------------------------------------------------------


def analysis_dag(rng: random.Random) -> dict[str, Any]:
    """Three analyses of one text in parallel, a note that waits for all three; numbers beside it."""
    text = rng.choice(TEXTS)
    costs = [round(rng.uniform(10, 90), 1) for _ in range(5)]
    return {
        "tasks": [
            {"id": "count", "tool": "text__word_count", "arguments": {"text": text}},
            {"id": "keywords", "tool": "text__keywords", "arguments": {"text": text, "limit": 4}},
            {"id": "mood", "tool": "text__sentiment", "arguments": {"text": text}},
            {
                "id": "save",
                "tool": "notes__create_note",
                "arguments": {"title": "Text analysis", "body": text, "tags": ["analysis"]},
                "depends_on": ["count", "keywords", "mood"],
            },
            {"id": "stats", "tool": "math__statistics", "arguments": {"numbers": costs}},
            {
                "id": "growth",
                "tool": "math__percent_change",
                "arguments": {"old": costs[0], "new": costs[-1]},
                "depends_on": ["stats"],
            },
        ]
    }


# -- the loop ------------------------------------------------------------------------------------


async def one_round(url: str, rng: random.Random) -> str:
    started = time.perf_counter()
    modern = rng.random() < 0.2
    if rng.random() < 0.25:
        name = "workflow (DAG)"
        async with Client(url, mode="auto" if modern else "legacy", cache=None) as client:
            result = await client.call_tool("pml_execute_workflow", analysis_dag(rng))
        tasks = (result.structured_content or {}).get("tasks", [])
        steps = " | ".join(t["tool"] for t in tasks)
        ok = bool(result.structured_content and result.structured_content.get("success"))
    else:
        scenario = rng.choice(CHAINS)
        name = scenario.__name__
        if modern:
            async with Client(url, cache=None) as client:
                call = Caller(lambda tool, args: client.call_tool(tool, args))
                await scenario(call, rng)
        else:
            async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                call = Caller(lambda tool, args: session.call_tool(tool, args))
                await scenario(call, rng)
        steps = " -> ".join(call.steps)
        ok = call.failed == 0
    ms = (time.perf_counter() - started) * 1000
    return f"workload: {name:<18} {'ok    ' if ok else 'failed'} {ms:6.0f} ms  {steps}"


#: Why a round of the ``clumsy`` chain fails: on purpose, so that the graph has a failing step.
ON_PURPOSE = "clumsy reads a note that does not exist first, on purpose: the graph learns that step fails"


async def run(url: str, seconds: float | None, seed: int | None, pause: float, every: float, dashboard: str | None) -> None:
    """Rounds until ``seconds`` pass; one line each, or with ``every`` a summary every so often."""
    rng = random.Random(seed)
    deadline = None if seconds is None else time.monotonic() + seconds
    counts = {"ok": 0, "failed": 0, "clumsy": 0, "error": 0}
    next_summary = time.monotonic() + every
    while deadline is None or time.monotonic() < deadline:
        try:
            with anyio.fail_after(60):
                line = await one_round(url, rng)
            outcome = "failed" if " failed " in line else "ok"
            counts[outcome] += 1
            counts["clumsy"] += outcome == "failed" and "clumsy" in line
            if not every:
                print(line + ("  (" + ON_PURPOSE + ")" if outcome == "failed" and "clumsy" in line else ""), flush=True)
        except Exception as exc:  # gateway restarting or a server down: report and keep going
            while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
                exc = exc.exceptions[0]
            counts["error"] += 1
            print(f"workload: round failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            await anyio.sleep(2)
        if every and time.monotonic() >= next_summary:
            next_summary = time.monotonic() + every
            print(_summary(counts, dashboard), flush=True)
            counts = dict.fromkeys(counts, 0)
        await anyio.sleep(rng.uniform(pause / 2, pause * 1.5))


def _summary(counts: dict[str, int], dashboard: str | None) -> str:
    rounds = counts["ok"] + counts["failed"]
    line = f"workload: {rounds} workflows ({counts['ok']} ok, {counts['failed']} failed"
    if counts["clumsy"]:
        line += f": {counts['clumsy']} of them because {ON_PURPOSE}"
    line += ")"
    if counts["error"]:
        line += f", {counts['error']} rounds could not run"
    return line + (f"; watch it live at {dashboard}" if dashboard else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/mcp", help="the gateway's /mcp endpoint")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: never)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable run")
    parser.add_argument("--pause", type=float, default=0.8, help="mean pause between rounds, seconds")
    parser.add_argument("--every", type=float, default=0.0, help="print a summary this often instead of every round")
    parser.add_argument("--dashboard", default=None, help="the dashboard's URL, repeated in each summary")
    args = parser.parse_args()
    try:
        anyio.run(run, args.url, args.seconds, args.seed, args.pause, args.every, args.dashboard)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
