"""Resources through the gateway: downstream URIs unchanged, owned by one server each; the graph's own.

Downstream resources and templates keep their URIs (so a ``resource_link`` a tool returns reads
through the gateway as it is). ``ResourceCatalog`` knows who owns what: a URI listed by a server
belongs to it; otherwise the first template that matches it (RFC 6570, the SDK's own
``UriTemplate``). When two servers list the same URI or template, the first by server name owns
it, and the collision is logged once.

``GraphResources`` are the gateway's own: ``graph://metrics`` (the JSON of ``pml_graph_metrics``)
and ``graph://snapshot`` (the JSON of ``GET /graph``). A subscriber hears of every
``metrics_updated`` (metrics) and, at most once per ``SNAPSHOT_MIN_INTERVAL`` seconds, of any
other graph change (snapshot): a busy graph must not turn into a notification storm.

``Subscriptions`` counts who wants updates of each URI (2025-era sessions by ``resources/subscribe``,
2026-era clients by their ``subscriptions/listen`` filter), so that a downstream is subscribed
once, when the first client wants a URI, and unsubscribed when the last one stops.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import anyio
import mcp.types as types
from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate

from graphrag import GraphEvent, GraphRAGEngine

from pml_gateway.auth import Profile

logger = logging.getLogger(__name__)

__all__ = ["GRAPH_METRICS_URI", "GRAPH_SNAPSHOT_URI", "GraphResources", "ResourceCatalog", "Subscriptions"]

GRAPH_METRICS_URI = "graph://metrics"
GRAPH_SNAPSHOT_URI = "graph://snapshot"
#: Snapshot updates are coalesced to at most one per this many seconds.
SNAPSHOT_MIN_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class _Template:
    server: str
    template: types.ResourceTemplate
    parsed: UriTemplate | None  #: None when the downstream's template does not parse: never matched


class ResourceCatalog:
    """Each connected server's resources and templates, and who owns a URI."""

    def __init__(self) -> None:
        self._resources: dict[str, list[types.Resource]] = {}
        self._templates: dict[str, list[types.ResourceTemplate]] = {}
        self._owner: dict[str, str] = {}  # exact URI -> server
        self._parsed: list[_Template] = []
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def resources(self) -> list[types.Resource]:
        """Every exposed resource, each URI once (its owner's), ordered by server then as listed."""
        return [r for server in sorted(self._resources) for r in self._resources[server] if self._owner.get(r.uri) == server]

    def templates(self) -> list[types.ResourceTemplate]:
        seen: set[str] = set()
        out: list[types.ResourceTemplate] = []
        for entry in self._parsed:
            if entry.template.uri_template not in seen:
                seen.add(entry.template.uri_template)
                out.append(entry.template)
        return out

    def owner(self, uri: str) -> str | None:
        """The server that serves ``uri``: by exact URI, else by the first matching template."""
        server = self._owner.get(uri)
        if server is not None:
            return server
        for entry in self._parsed:
            if entry.parsed is not None and entry.parsed.match(uri) is not None:
                return entry.server
        return None

    def template_owner(self, uri_template: str) -> str | None:
        return next((e.server for e in self._parsed if e.template.uri_template == uri_template), None)

    def set_server(
        self, server: str, resources: Iterable[types.Resource], templates: Iterable[types.ResourceTemplate]
    ) -> None:
        resources, templates = list(resources), list(templates)
        if self._resources.get(server) == resources and self._templates.get(server) == templates:
            return
        self._resources[server] = resources
        self._templates[server] = templates
        self._rebuild()

    def remove_server(self, server: str) -> None:
        if self._resources.pop(server, None) is not None or self._templates.pop(server, None) is not None:
            self._templates.pop(server, None)
            self._rebuild()

    def _rebuild(self) -> None:
        before = (self.resources(), self.templates())
        owner: dict[str, str] = {}
        for server in sorted(self._resources):
            for resource in self._resources[server]:
                first = owner.setdefault(resource.uri, server)
                if first != server:
                    logger.warning("resource %r of server %r is also listed by %r: %r serves it", resource.uri, server, first, first)
        parsed: list[_Template] = []
        claimed: dict[str, str] = {}
        for server in sorted(self._templates):
            for template in self._templates[server]:
                first = claimed.setdefault(template.uri_template, server)
                if first != server:
                    logger.warning(
                        "resource template %r of server %r is also listed by %r: %r serves it",
                        template.uri_template, server, first, first,
                    )
                    continue
                parsed.append(_Template(server, template, _parse(server, template.uri_template)))
        self._owner, self._parsed = owner, parsed
        if (self.resources(), self.templates()) != before:
            for listener in list(self._listeners):
                listener()


def _parse(server: str, uri_template: str) -> UriTemplate | None:
    try:
        return UriTemplate.parse(uri_template)
    except InvalidUriTemplate as exc:
        logger.warning("resource template %r of server %r cannot be matched (%s): listed only", uri_template, server, exc)
        return None


class Subscriptions:
    """How many clients want updates of each URI; the first and last one start and stop the relay."""

    def __init__(
        self,
        start: Callable[[str], Awaitable[None]],
        stop: Callable[[str], Awaitable[None]],
    ) -> None:
        self._start, self._stop = start, stop
        self._sessions: dict[str, set[str]] = {}  # URI -> 2025-era session keys
        self._listeners: dict[str, int] = {}  # URI -> open 2026-era listen streams

    def uris(self) -> set[str]:
        return set(self._sessions) | set(self._listeners)

    def sessions(self, uri: str) -> set[str]:
        return set(self._sessions.get(uri, ()))

    async def add_session(self, key: str, uri: str) -> None:
        fresh = uri not in self.uris()
        self._sessions.setdefault(uri, set()).add(key)
        if fresh:
            await self._start(uri)

    async def remove_session(self, key: str, uri: str) -> None:
        keys = self._sessions.get(uri)
        if keys is None or key not in keys:
            return
        keys.discard(key)
        if not keys:
            del self._sessions[uri]
        if uri not in self.uris():
            await self._stop(uri)

    async def forget_session(self, key: str) -> None:
        for uri in [u for u, keys in self._sessions.items() if key in keys]:
            await self.remove_session(key, uri)

    async def add_listener(self, uri: str) -> None:
        fresh = uri not in self.uris()
        self._listeners[uri] = self._listeners.get(uri, 0) + 1
        if fresh:
            await self._start(uri)

    async def remove_listener(self, uri: str) -> None:
        count = self._listeners.get(uri, 0) - 1
        if count > 0:
            self._listeners[uri] = count
            return
        self._listeners.pop(uri, None)
        if uri not in self.uris():
            await self._stop(uri)


class GraphResources:
    """``graph://metrics`` and ``graph://snapshot``: reading them, and telling subscribers of changes."""

    def __init__(
        self,
        engine: GraphRAGEngine,
        metrics_json: Callable[[Profile | None], Awaitable[str]],
        notify: Callable[[str], Awaitable[None]],
    ) -> None:
        self.engine = engine
        self._metrics_json = metrics_json
        self._notify = notify
        self._metrics_changed = anyio.Event()
        self._snapshot_changed = anyio.Event()

    @staticmethod
    def definitions() -> list[types.Resource]:
        return [
            types.Resource(
                uri=GRAPH_METRICS_URI,
                name="graph-metrics",
                title="Graph metrics",
                description="The learned tool graph's metrics (the JSON of the pml_graph_metrics tool); "
                "subscribers hear of every metrics_updated.",
                mime_type="application/json",
            ),
            types.Resource(
                uri=GRAPH_SNAPSHOT_URI,
                name="graph-snapshot",
                title="Graph snapshot",
                description="The whole learned tool graph (the JSON of GET /graph); subscribers hear of "
                f"changes at most once every {SNAPSHOT_MIN_INTERVAL:g} s.",
                mime_type="application/json",
            ),
        ]

    def owns(self, uri: str) -> bool:
        return uri in (GRAPH_METRICS_URI, GRAPH_SNAPSHOT_URI)

    async def read(self, uri: str, profile: Profile | None = None) -> types.ReadResourceResult:
        """The JSON as ``profile`` may see it: its tools only, as ``GET /graph`` and pml_graph_metrics answer."""
        if uri == GRAPH_METRICS_URI:
            text = await self._metrics_json(profile)
        else:  # built in slices, the loop served between them, as GET /graph
            text = (await self.engine.snapshot_json_async(profile.allows_tool if profile is not None else None)).decode()
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
        )

    def on_event(self, event: GraphEvent) -> None:
        """The engine's listener (synchronous, in order): flag what changed, the notifier sends."""
        if event.type == "metrics_updated":
            self._metrics_changed.set()
        else:
            self._snapshot_changed.set()

    async def run(self) -> None:
        """Send the flagged updates until cancelled (listens to the engine meanwhile)."""
        self.engine.on(self.on_event)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._metrics_loop)
                tg.start_soon(self._snapshot_loop)
        finally:
            self.engine.off(self.on_event)

    async def _metrics_loop(self) -> None:
        while True:
            await self._metrics_changed.wait()
            self._metrics_changed = anyio.Event()
            await self._notify(GRAPH_METRICS_URI)

    async def _snapshot_loop(self) -> None:
        while True:
            await self._snapshot_changed.wait()
            self._snapshot_changed = anyio.Event()
            await self._notify(GRAPH_SNAPSHOT_URI)
            await anyio.sleep(SNAPSHOT_MIN_INTERVAL)  # changes meanwhile make one more update after
