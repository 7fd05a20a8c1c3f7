"""Downstream sessions of their own for upstream sessions: ``"session": "per_client"`` (issue 16).

By default every upstream client reaches a downstream over the one connection its supervisor
keeps (``supervisor.py``), so what a server keeps per session is shared by all of them: the
logging level one client sets is the level every client gets, a ``toggle-simulated-logging`` of
one client stops another's ("Started..." for one, "Stopped..." for the next), a subscription
made for one is one for all. For a server configured ``per_client``, each 2025-era upstream
session (``session:<Mcp-Session-Id>``) gets a downstream session of its own: a separate process
for stdio, a separate MCP session on the same URL for HTTP. The supervisor's own connection stays
the primary one: the tool, prompt and resource catalogs come from it, and callers without an
upstream session (2026-07-28 clients, which have none; the stdio upstream, which is one client
anyway; ``POST /executions``) use it.

The pool:

- opens a session lazily, on the upstream session's first request to that server, and gives it
  the caller's logging level and resource subscriptions there (the ``opened`` hook) before the
  request goes, so a session reopened (after idleness, eviction, a restart) has them again;
- keeps at most ``max_sessions``; at the bound the least recently used session that has no
  request in flight is closed, and when every one is busy the request fails with an error
  saying so (``SessionUnavailable``);
- closes a session after ``session_idle_seconds`` without a request, unless it holds resource
  subscriptions (closing it would silently end them); when the upstream session ends; and all
  of them when the primary connection ends (the supervisor's restart reopens them lazily).

What a session costs (bench/README.md, "Per-client downstream sessions", bench/sessions.py): a
stdio server's whole process (server-everything: about 27 MiB of PSS and 0.22 s of CPU to start);
an HTTP session one ``initialize`` round trip (about 20 ms of gateway CPU, 0.1 MiB) and what the
server keeps per session. A call costs the same as on the shared session.

Each session is held open by a task of its own in the pool's task group (SDK_NOTES §4: a
transport's failure raises out of the task that entered it), which catches every failure, so a
broken per-client session never takes the primary connection down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc
from mcp import Client

from pml_gateway.proxy.downstream import errors
from pml_gateway.proxy.downstream.sdk_link import SdkLink

logger = logging.getLogger(__name__)

__all__ = ["OwnSession", "SessionPool", "SessionUnavailable"]


class SessionUnavailable(Exception):
    """No downstream session could be had for this upstream session; ``str`` says why."""


@dataclass(eq=False)
class OwnSession:
    """One upstream session's own session with the downstream."""

    key: str  #: the upstream session (``session:<id>``)
    client: Client | None = None
    link: SdkLink | None = None
    last_used: float = field(default_factory=time.monotonic)
    busy: int = 0  #: requests in flight
    subscriptions: set[str] = field(default_factory=set)  #: URIs subscribed to on this session
    error: str | None = None  #: why it could not be opened
    ready: anyio.Event = field(default_factory=anyio.Event)  #: opened, or failed (``error``)
    _close: anyio.Event = field(default_factory=anyio.Event)

    @contextmanager
    def using(self) -> Iterator[OwnSession]:
        """Mark a request in flight (a busy session is neither evicted nor closed for idleness)."""
        self.busy += 1
        self.last_used = time.monotonic()
        try:
            yield self
        finally:
            self.busy -= 1
            self.last_used = time.monotonic()

    def close(self) -> None:
        """Ask its task to close it; calls still in flight on it fail with ``LinkError`` at once."""
        if self.link is not None:
            self.link.close()
        self._close.set()


class SessionPool:
    """The per-client sessions of one downstream server while its primary connection lives."""

    def __init__(
        self,
        server: str,
        open_client: Callable[[str], AbstractAsyncContextManager[Client]],
        *,
        max_sessions: int,
        idle_seconds: float,
        opened: Callable[[str, Client], Awaitable[set[str]]] | None = None,
    ) -> None:
        self.server = server
        self._open_client = open_client  # a Client for upstream session ``key``, entered by the pool
        self._opened = opened  # gives a new session its upstream session's state; returns the URIs subscribed
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self._sessions: dict[str, OwnSession] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self.opened_total = 0  #: sessions opened since start (tests, stats)
        self.evicted_total = 0  #: sessions closed to make room

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, key: str) -> OwnSession | None:
        """The open session of ``key``, if any (no session is opened)."""
        session = self._sessions.get(key)
        return session if session is not None and session.link is not None else None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SessionPool]:
        """Sessions can be had while inside; all of them are closed on the way out."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._close_idle, name=f"idle sessions of {self.server}")
            try:
                yield self
            finally:
                self._tg = None
                for session in list(self._sessions.values()):
                    self._close(session)
                tg.cancel_scope.cancel()

    async def session(self, key: str) -> OwnSession:
        """``key``'s session, opened now if it has none. Raises ``SessionUnavailable``."""
        session = self._sessions.get(key)
        if session is None:
            if self._tg is None:
                raise SessionUnavailable("its connection is being set up")
            self._make_room()
            session = self._sessions[key] = OwnSession(key)
            self._tg.start_soon(self._hold, session, name=f"session of {key} with {self.server}")
        session.last_used = time.monotonic()
        await session.ready.wait()  # bounded: the Client's read timeout bounds the handshake
        if session.error is not None:
            raise SessionUnavailable(f"opening one failed: {session.error}")
        return session

    def close(self, key: str) -> None:
        """The upstream session ended: its downstream session goes too."""
        session = self._sessions.get(key)
        if session is not None:
            self._close(session)

    def discard(self, session: OwnSession) -> None:
        """Its connection broke: closed, and the next request of its client opens a new one."""
        logger.info("downstream %r: the session of %s broke; the next request opens a new one", self.server, session.key)
        self._close(session)

    def _close(self, session: OwnSession) -> None:
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]  # gone now for new requests: its task closes it in the background
        session.close()

    def _make_room(self) -> None:
        if len(self._sessions) < self.max_sessions:
            return
        idle = [s for s in self._sessions.values() if s.busy == 0 and s.ready.is_set()]
        if not idle:
            raise SessionUnavailable(
                f"all {self.max_sessions} of its sessions (max_sessions) have requests in flight"
            )
        victim = min(idle, key=lambda s: s.last_used)
        logger.warning(
            "downstream %r: %d sessions (max_sessions): closing the least recently used one, of %s",
            self.server, self.max_sessions, victim.key,
        )
        self.evicted_total += 1
        self._close(victim)

    async def _hold(self, session: OwnSession) -> None:
        """Open ``session``, keep it open until asked to close, and always leave the pool clean."""
        try:
            async with self._open_client(session.key) as client:
                if self._opened is not None:
                    session.subscriptions |= await self._opened(session.key, client)
                session.client, session.link = client, SdkLink(client)
                self.opened_total += 1
                session.ready.set()
                logger.info("downstream %r: opened a session for %s (%d open)", self.server, session.key, len(self))
                await session._close.wait()
        except Exception as exc:  # its own failure only: the primary connection and other sessions go on
            session.error = errors.describe_error(exc)
            logger.warning("downstream %r: the session of %s ended: %s", self.server, session.key, session.error)
        finally:
            if session.link is not None:
                session.link.close()
            if session.error is None and not session.ready.is_set():
                session.error = "the connection closed"
            session.link = None
            session.ready.set()
            if self._sessions.get(session.key) is session:
                del self._sessions[session.key]

    async def _close_idle(self) -> None:
        while True:
            await anyio.sleep(min(self.idle_seconds / 2, 30.0))
            now = time.monotonic()
            for session in list(self._sessions.values()):
                if session.busy == 0 and not session.subscriptions and now - session.last_used >= self.idle_seconds:
                    logger.info("downstream %r: closing the idle session of %s", self.server, session.key)
                    self._close(session)
