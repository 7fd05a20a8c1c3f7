"""Traces: the proxied calls of one caller, learned as one sequence workflow.

Each call to a downstream tool is added to its caller's open trace. A trace closes after
``idle_seconds`` without a call, when its caller's session ends, when it reaches ``max_calls``,
or at shutdown; it is then recorded as a ``WorkflowExecution`` whose tasks are the calls in order
(so consecutive calls become ``sequence`` edges) and which succeeded when every call did.

Who is "one caller" depends on the protocol era (SDK_NOTES §8): on 2025-11-25 and earlier the
MCP session; on 2026-07-28, which has no sessions, what identifies the caller: a trace id the
client sends in ``_meta``, else the HTTP connection (client address AND port, plus client name);
over stdio, the process. Keyed by address and name alone, two agents on one machine were merged
into one trace and taught false edges (``files__read_text_file -> git__git_status`` between two
agents running side by side). The SDK's client keeps one keep-alive connection per ``Client``
(measured: every call of a client came over the same port, two clients over two), so the port
separates them. A client whose connection is replaced (the server's keep-alive timeout, 5 s in
uvicorn, after a long pause) starts a new trace: the one edge across the reconnect is not learned,
because a new connection cannot be told apart from another caller's; a client that wants its
calls joined across connections sends a trace id in ``_meta`` (``pml-gateway/trace_id``).
Where one key still holds two callers (behind a proxy that pools connections), their calls
overlap in time sooner or later: a trace is cut wherever a call started before the previous one
ended, and no edge is learned across the cut (``_sequences``).

Crashes (issue 15 item 13: 55-66% of proxied calls were in traces still open at a SIGKILL, and
their learning was lost). With a ``keep`` (the store), every open trace that changed is written to
the store at most ``checkpoint_seconds`` after its change (one transaction for all of them, each
trace as its calls: ``SavedTrace``), and its row is deleted once the trace is recorded. A
crash therefore loses at most the calls of the last ``checkpoint_seconds``. The rows of a process
that died are recorded by whichever process on the same database sees them stale first (at
start-up, then every ``sweep_seconds``): stale means not saved for ``stale_after`` =
``idle_seconds + 2 * checkpoint_seconds + STALE_MARGIN`` seconds, which a live process's trace
never is (it closes after ``idle_seconds`` of quiet, and a change is saved within
``checkpoint_seconds``). Several processes share a database (replicas), so "not mine and old" is
the only safe test of "its owner is gone" (the age is by the writer's and the reader's wall
clocks: replicas on several hosts need them within ``STALE_MARGIN`` of each other).

Why this teaches nothing wrong and nothing twice: a saved trace is recorded as the trace would
have been had it closed at its last save: the same ``_executions``, the same ``workflow_id`` s
(fixed when the trace opens). Later calls only extend a trace and the cut at overlaps looks only
backwards, so what is recovered is a prefix of the real trace with the same cuts (no edge across
a cut, no edge across callers). Ingest is idempotent by ``workflow_id``:
an execution recorded by its owner before the crash and recovered again, or recovered by two
replicas at once, is learned once. (Closing traces into the store every few seconds instead was
rejected: each piece would be its own execution, and an edge seen in two pieces would count twice
where the whole trace counts it once.) A trace whose recording fails (store unavailable) keeps its
row, so a later sweep records it. Cost (SQLite, synchronous=FULL, load average 9 on 2 cores): one
checkpoint of 100 open traces of 100 calls each, 6.4 ms of CPU and 21 ms of wall time on the loop,
at most once per ``checkpoint_seconds``; 1 trace of 10 calls, 0.2 ms.

Live grading (graphrag/grading.py) happens here too, where every proxied call passes (SDK path
and fast path alike): each call is graded against the suggestions after the calls before it in
its trace, and the first call after a ``pml_search_tools`` of the same caller against that
search's results; that call is also the search's label (``on_search_label``: the search index
learns that the query led to this tool).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import to_json

from graphrag import TaskRun, WorkflowExecution

logger = logging.getLogger(__name__)

Recorder = Callable[[WorkflowExecution], Awaitable[Any]]
#: (history of the trace, oldest first; the tool called now)
GradeNext = Callable[[Sequence[str], str], None]
#: (the search's query; its ranked tool ids; the tool called next)
SearchLabel = Callable[[str, Sequence[str], str], None]

#: Seconds beyond ``idle_seconds + 2 * checkpoint_seconds`` before another process's saved trace
#: counts as orphaned (a live process whose event loop stalls that long loses, at worst, the tail
#: of that trace: never an edge taught wrong or twice).
STALE_MARGIN = 2.0


class SavedTrace(BaseModel):
    """A trace as saved in the store (``open_traces.body``): its calls in order, each as
    ``[tool id, server, success, started, ended]``, times in seconds from the first call's start.

    Calls, not executions: a checkpoint then costs a JSON dump (measured: 100 open traces of 100
    calls, 52 ms of CPU as validated executions), and recovery cuts them into executions with the
    very code that records a live trace (``_executions``).
    """

    model_config = ConfigDict(extra="forbid")

    calls: list[tuple[str, str | None, bool, float, float]]


class OpenTraceStore(Protocol):
    """Where open traces are kept across a crash (``graphrag.GraphStore`` implements it)."""

    def save_open_traces(self, saved: Mapping[str, str], dropped: Sequence[str], now: float) -> None: ...

    def stale_open_traces(self, before: float) -> dict[str, str]: ...


@dataclass
class _Call:
    tool_id: str
    server: str | None
    success: bool
    started: float  # monotonic
    ended: float


@dataclass
class _Search:
    query: str
    ranked: list[str]
    at: float  # monotonic


@dataclass
class _Trace:
    started: float  # monotonic, first call's start
    last: float  # monotonic, last call's end
    calls: list[_Call] = field(default_factory=list)
    #: fixed at open: a saved copy and the final recording share their workflow_ids
    trace_id: str = field(default_factory=lambda: f"trace-{uuid.uuid4().hex[:12]}")
    dirty: bool = True  # changed since it was last saved
    saved: bool = False  # has a row in the store


class TraceRecorder:
    """Groups proxied calls per caller and records each closed trace through ``record``."""

    def __init__(
        self,
        record: Recorder,
        *,
        idle_seconds: float,
        max_calls: int = 100,
        clock: Callable[[], float] = time.monotonic,
        grade_next: GradeNext | None = None,
        on_search_label: SearchLabel | None = None,
        keep: OpenTraceStore | None = None,
        checkpoint_seconds: float = 2.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._record = record
        self.idle_seconds = idle_seconds
        self.max_calls = max_calls
        self._clock = clock
        self._keep = keep
        self.checkpoint_seconds = checkpoint_seconds
        #: another process's saved trace this old (wall clock) is an orphan
        self.stale_after = idle_seconds + 2 * checkpoint_seconds + STALE_MARGIN
        #: how often saved traces are looked at for orphans
        self.sweep_seconds = max(checkpoint_seconds, self.stale_after / 4)
        self._wall = wall_clock
        self._done: set[str] = set()  # recorded traces whose saved rows are still to delete
        self._next_checkpoint = -math.inf  # monotonic
        self._next_sweep = -math.inf  # monotonic
        self._keep_failing = False
        self.recovered = 0  #: orphaned traces of other (dead) processes recorded so far
        self._open: dict[str, _Trace] = {}
        self._full: list[tuple[str, _Trace]] = []  # closed by max_calls, waiting to be recorded
        self._grade_next = grade_next
        self._on_search_label = on_search_label
        self._searches: dict[str, _Search] = {}  # each caller's last search not yet followed by a call
        self._wake = anyio.Event()
        self.recorded = 0  #: traces recorded so far

    @property
    def open_traces(self) -> int:
        return len(self._open)

    def add(
        self, caller: str, tool_id: str, *, success: bool, server: str | None = None, started: float | None = None
    ) -> None:
        """One proxied call of ``server``'s tool finished. ``started``: its monotonic start (default: now)."""
        now = self._clock()
        started = now if started is None else started
        trace = self._open.get(caller)
        if trace is None or not trace.calls or started >= trace.calls[-1].ended:
            self._grade(caller, trace, tool_id)  # a call that overlapped the previous one followed nothing
        if trace is None:
            trace = self._open[caller] = _Trace(started=started, last=now)
            self._wake.set()  # the idle watcher may be sleeping with no deadline
        trace.calls.append(_Call(tool_id, server, success, started, now))
        trace.last = now
        if self._keep is not None and not trace.dirty:
            trace.dirty = True
            self._wake.set()  # the watcher saves it within checkpoint_seconds
        if len(trace.calls) >= self.max_calls:
            # Recording is async and add() is not: the watcher records it on its next pass.
            self._full.append((caller, self._open.pop(caller)))
            self._wake.set()

    def searched(self, caller: str, query: str, ranked: Sequence[str]) -> None:
        """``caller`` ran ``pml_search_tools``: its next call tells which result it wanted."""
        self._searches[caller] = _Search(query, list(ranked), self._clock())
        self._wake.set()  # the idle watcher forgets searches nobody followed up

    def _grade(self, caller: str, trace: _Trace | None, tool_id: str) -> None:
        try:
            if self._grade_next is not None and trace is not None and trace.calls:
                self._grade_next([call.tool_id for call in trace.calls], tool_id)
            search = self._searches.pop(caller, None)
            if search is not None and self._on_search_label is not None:
                self._on_search_label(search.query, search.ranked, tool_id)
        except Exception:  # grading must never break serving
            logger.exception("could not grade the call of %s to %s", caller, tool_id)

    async def end(self, caller: str) -> None:
        """The caller's session ended: record its trace now."""
        trace = self._open.pop(caller, None)
        self._searches.pop(caller, None)
        if trace is not None:
            await self._save(caller, trace)

    async def flush(self) -> None:
        """Record every open trace (shutdown)."""
        await self._save_full()
        for caller in list(self._open):
            await self.end(caller)
        self.checkpoint()  # their saved rows go

    async def run(self) -> None:
        """Close traces that went quiet, save open ones, record orphans; until cancelled, then flush."""
        try:
            while True:
                await self._save_full()
                now = self._clock()
                for caller, trace in list(self._open.items()):
                    if now - trace.last >= self.idle_seconds:
                        await self.end(caller)
                for caller, search in list(self._searches.items()):
                    if now - search.at >= self.idle_seconds:
                        del self._searches[caller]
                if self._keep is not None:
                    if now >= self._next_sweep:
                        self._next_sweep = now + self.sweep_seconds
                        await self.recover()
                    if self._unsaved() and now >= self._next_checkpoint:
                        self._next_checkpoint = now + self.checkpoint_seconds
                        self.checkpoint()
                deadline = min(
                    [t.last + self.idle_seconds for t in self._open.values()]
                    + [s.at + self.idle_seconds for s in self._searches.values()]
                    + ([self._next_sweep] if self._keep is not None else [])
                    + ([self._next_checkpoint] if self._unsaved() else []),
                    default=math.inf,
                )
                self._wake = anyio.Event()
                with anyio.move_on_after(max(0.0, deadline - self._clock()) if deadline != math.inf else None):
                    await self._wake.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await self.flush()

    async def _save_full(self) -> None:
        while self._full:
            caller, trace = self._full.pop(0)
            await self._save(caller, trace)

    async def _save(self, caller: str, trace: _Trace) -> None:
        try:
            for execution in _executions(trace):
                await self._record(execution)
                logger.debug("trace of %s recorded: %s", caller, execution.tool_ids)
            self.recorded += 1
            if trace.saved:
                self._done.add(trace.trace_id)  # its saved row goes at the next checkpoint
                self._wake.set()
        except Exception:  # learning must never break serving
            logger.exception("could not record the trace of %s", caller)
            if self._keep is not None and trace.dirty:  # keep it whole for a later sweep, if the store takes it
                self._save_rows({trace.trace_id: _dump(trace)}, [])

    # -- kept across a crash ---------------------------------------------------------------------

    def _unsaved(self) -> bool:
        return self._keep is not None and (
            bool(self._done) or any(t.dirty for t in self._open.values()) or any(t.dirty for _, t in self._full)
        )

    def checkpoint(self) -> None:
        """Save every open trace changed since its last save, delete the rows of recorded ones."""
        if self._keep is None:
            return
        changed = [t for t in self._open.values() if t.dirty] + [t for _, t in self._full if t.dirty]
        dropped = list(self._done)
        if (changed or dropped) and self._save_rows({t.trace_id: _dump(t) for t in changed}, dropped):
            for trace in changed:
                trace.dirty, trace.saved = False, True
            self._done.difference_update(dropped)

    def _save_rows(self, saved: dict[str, str], dropped: list[str]) -> bool:
        assert self._keep is not None
        try:
            self._keep.save_open_traces(saved, dropped, self._wall())
        except Exception as exc:  # the store is away: retried at the next checkpoint, said once
            if not self._keep_failing:
                logger.warning("could not save the open traces (retried every %s s): %s", self.checkpoint_seconds, exc)
            self._keep_failing = True
            return False
        self._keep_failing = False
        return True

    async def recover(self) -> None:
        """Record the saved traces of processes that stopped without recording them (a crash)."""
        if self._keep is None:
            return
        try:
            rows = self._keep.stale_open_traces(self._wall() - self.stale_after)
        except Exception as exc:
            logger.warning("could not read the saved open traces: %s", exc)
            return
        mine = {t.trace_id for t in self._open.values()} | {t.trace_id for _, t in self._full} | self._done
        recovered = 0
        for trace_id, body in rows.items():
            if trace_id in mine:
                continue
            try:
                saved = SavedTrace.model_validate_json(body)
                executions = _executions(_Trace(0.0, 0.0, [_Call(*call) for call in saved.calls], trace_id=trace_id))
            except ValidationError as exc:  # written by another version: nothing to learn from it
                logger.warning("saved trace %s is unreadable, dropped: %s", trace_id, str(exc).splitlines()[0])
                self._done.add(trace_id)
                continue
            try:
                for execution in executions:
                    await self._record(execution)  # idempotent: what was recorded before counts once
            except Exception:
                logger.exception("could not record the saved trace %s (retried at the next sweep)", trace_id)
                continue
            self._done.add(trace_id)
            recovered += 1
        if recovered:
            self.recovered += recovered
            logger.info("recorded %d trace(s) left open by a process that stopped", recovered)
        if self._done:
            self.checkpoint()


def _executions(trace: _Trace) -> list[WorkflowExecution]:
    """What the trace is recorded as: one execution per run of consecutive calls."""
    return [
        WorkflowExecution(
            workflow_id=trace.trace_id if index == 0 else f"{trace.trace_id}-{index}",
            tasks=[
                TaskRun(id=f"t{i}", tool_id=call.tool_id, server=call.server, success=call.success)
                for i, call in enumerate(calls)
            ],
            success=all(call.success for call in calls),
            execution_time_ms=round(max(0.0, calls[-1].ended - calls[0].started) * 1000, 3),
        )
        for index, calls in enumerate(_sequences(trace.calls))
    ]


def _dump(trace: _Trace) -> str:
    """The trace as ``SavedTrace`` JSON, written without building the model (it is on the loop)."""
    origin = trace.calls[0].started
    calls = [[c.tool_id, c.server, c.success, c.started - origin, c.ended - origin] for c in trace.calls]
    return to_json({"calls": calls}).decode()


def _sequences(calls: list[_Call]) -> list[list[_Call]]:
    """The trace cut wherever a call started before the previous one ended.

    Overlapping calls are not a sequence: they are parallel calls of one agent, or calls of two
    callers that share one key (behind a proxy that pools connections, say) and cannot be told
    apart. Either way no edge is learned across them; each run of truly consecutive calls is
    recorded as its own execution.
    """
    segments: list[list[_Call]] = []
    for call in calls:
        if segments and call.started >= segments[-1][-1].ended:
            segments[-1].append(call)
        else:
            segments.append([call])
    return segments
