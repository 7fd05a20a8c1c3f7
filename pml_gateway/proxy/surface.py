"""Everything of MCP besides tools, through the gateway: prompts, resources, completion, logging,
subscriptions, instructions, and the downstream side of the relays in ``relay.py``.

Two faces. Downstream, each supervisor calls ``connected`` once a server is up (and again when
it says a list changed), ``on_message`` for what it sends, and ``disconnected`` when it goes;
``client_options`` are the callbacks its client is built with. Upstream, the handlers
(``list_prompts`` ... ``set_logging_level``) are registered on the gateway's MCP server and
written like any ``Server`` handler: ``(ctx, params) -> result``, so every transport and both
eras get them. A request for something unknown or unavailable is a JSON-RPC error naming it.

What each era gets is in docs/api/mcp-tools.md ("Capabilities"), kept true to this module by
tests/test_mcp_surface*.py.

A server configured ``"session": "per_client"`` (issue 16, ``downstream/session_pool.py``) gets
the requests of a 2025-era upstream session (calls, prompts/get, resources/read and
subscriptions, completion) on that session's own downstream session, opened on its first such
request with the logging level the session set; ``logging/setLevel`` and
``roots/list_changed`` reach that session's own downstream session when it has one open, never
the others; what a session's own downstream session sends (logs, resource updates,
server-to-client requests) reaches that upstream session only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import mcp.types as types
from mcp import Client, MCPError
from mcp.server import Server, ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import ListenHandler, ResourceUpdated, SubscriptionBus
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from pml_gateway.auth import Profile, request_caller
from pml_gateway.proxy.prompts import PromptCatalog, RegisteredPrompt
from pml_gateway.proxy.relay import (
    SEND_TIMEOUT_SECONDS,
    Relay,
    UpstreamCall,
    current_session,
    hears,
    legacy_session_key,
    own_session_key,
    quietly,
)
from pml_gateway.proxy.resources import GraphResources, ResourceCatalog, Subscriptions

if TYPE_CHECKING:
    from pml_gateway.proxy.downstream.supervisor import Downstream

logger = logging.getLogger(__name__)

__all__ = ["Surface"]

RESOURCE_NOT_FOUND = -32002  #: the MCP spec's code for an unknown resource
ResultT = TypeVar("ResultT", bound=types.Result)


class Surface:
    """Prompts, resources, completion, logging and subscriptions of every downstream, and the graph's."""

    def __init__(self, downstream: Callable[[str], Downstream | None]) -> None:
        self._downstream = downstream
        self.prompts = PromptCatalog()
        self.resources = ResourceCatalog()
        self.relay = Relay()
        self.subscriptions = Subscriptions(self._start_relaying, self._stop_relaying)
        self.graph: GraphResources | None = None
        self.log_level: types.LoggingLevel | None = None  #: the last level a client set, for new downstreams
        self._instructions: dict[str, str] = {}
        self._connected: set[str] = set()
        self._subscribed: dict[str, set[str]] = {}  # server -> URIs the gateway subscribed to there
        self._sessions: Callable[[], Iterable[tuple[str, ServerSession]]] = lambda: ()
        self._bus: SubscriptionBus | None = None
        self._server: Server[Any] | None = None
        self._base_instructions: str | None = None
        self._listen: ListenHandler | None = None

    def attach(
        self,
        server: Server[Any],
        sessions: Callable[[], Iterable[tuple[str, ServerSession]]],
        bus: SubscriptionBus,
        listen: ListenHandler,
    ) -> None:
        """The upstream server these handlers serve: its instructions, live sessions and event bus."""
        self._server, self._sessions, self._bus, self._listen = server, sessions, bus, listen
        self._base_instructions = server.instructions
        self.relay.attach(sessions)
        self._merge_instructions()

    def handlers(self) -> dict[str, Any]:
        """The ``Server(...)`` keyword arguments of this module's handlers."""
        return {
            "on_list_prompts": self.list_prompts,
            "on_get_prompt": self.get_prompt,
            "on_list_resources": self.list_resources,
            "on_list_resource_templates": self.list_resource_templates,
            "on_read_resource": self.read_resource,
            "on_subscribe_resource": self.subscribe,
            "on_unsubscribe_resource": self.unsubscribe,
            "on_subscriptions_listen": self.listen,
            "on_completion": self.complete,
            "on_set_logging_level": self.set_logging_level,
            "on_roots_list_changed": self.roots_list_changed,
        }

    # -- the downstream side -------------------------------------------------------------------

    def client_options(self, server: str, session: str | None = None) -> dict[str, Any]:
        """``Client`` keyword arguments for ``server``: the relays of server-to-client requests."""
        return self.relay.client_options(server, session)

    def in_flight(self, server: str, session: str | None = None) -> AbstractContextManager[UpstreamCall | None]:
        """File the current upstream call under ``server`` while a request to it runs (``Relay``)."""
        return self.relay.in_flight(server, session)

    def session_key(self) -> str | None:
        """The upstream session of the call running now (its own downstream sessions: issue 16)."""
        return current_session()

    async def session_opened(self, downstream: Downstream, session: str, client: Client) -> set[str]:
        """An upstream session's own downstream session opened: it gets the level that session set
        and its subscriptions to this server's resources. Returns the URIs subscribed to."""
        caps = client.server_capabilities
        if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return set()  # no setLevel, no resources/subscribe in that era
        level = self.relay.session_level(session)
        if level is not None and caps.logging is not None:
            await quietly(client.session.send_request(_set_level(level), types.EmptyResult), f"logging level of {downstream.name!r}")
        subscribed: set[str] = set()
        if caps.resources is not None and caps.resources.subscribe:
            for uri in sorted(self.subscriptions.uris()):
                if session in self.subscriptions.sessions(uri) and self.resources.owner(uri) == downstream.name:
                    request = types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri))
                    if await quietly(client.session.send_request(request, types.EmptyResult), f"subscribe to {uri!r}"):
                        subscribed.add(uri)
        return subscribed

    def wants_sdk(self) -> bool:
        """Whether the current upstream call needs the SDK's client downstream (progress, logs)."""
        return self.relay.wants_sdk()

    async def connected(self, downstream: Downstream, client: Client) -> None:
        """List a (re)connected server's prompts and resources; give it the level and subscriptions."""
        name = downstream.name
        first = name not in self._connected
        self._connected.add(name)
        caps = client.server_capabilities
        modern = client.protocol_version in MODERN_PROTOCOL_VERSIONS
        if caps.prompts is not None:
            self.prompts.set_server(name, await _all(name, client.session.list_prompts, "prompts"))
        if caps.resources is not None:
            resources = await _all(name, client.session.list_resources, "resources")
            templates = await _all(name, client.session.list_resource_templates, "resource_templates")
            self.resources.set_server(name, resources, templates)
        if client.instructions and self._instructions.get(name) != client.instructions:
            self._instructions[name] = client.instructions
            self._merge_instructions()
        if first and self.log_level is not None and caps.logging is not None and not modern:
            await quietly(downstream.request(_set_level(self.log_level), types.EmptyResult), f"logging level of {name!r}")
        for uri in self.subscriptions.uris() - self._subscribed.get(name, set()):
            if self.resources.owner(uri) == name:
                await self._subscribe_downstream(downstream, uri)

    def disconnected(self, server: str) -> None:
        self._connected.discard(server)
        self.prompts.remove_server(server)
        self.resources.remove_server(server)
        self._subscribed.pop(server, None)
        if self._instructions.pop(server, None) is not None:
            self._merge_instructions()

    async def on_message(self, server: str, message: Any, session: str | None = None) -> None:
        """A notification from ``server`` (over upstream ``session``'s own downstream session, or the
        shared one): logs and resource updates go on to clients, of that session only when it is one."""
        downstream = self._downstream(server)
        per_client = downstream is not None and downstream.per_client
        if isinstance(message, types.LoggingMessageNotification):
            await self.relay.relay_log(server, message.params, session=session, per_client=per_client)
        elif isinstance(message, types.ResourceUpdatedNotification):
            uri = message.params.uri
            if session is not None or self.resources.owner(uri) == server or uri in self._subscribed.get(server, ()):
                await self.notify_updated(uri, session=session, per_client=per_client)

    # -- prompts -------------------------------------------------------------------------------

    async def list_prompts(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        profile = _profile(ctx)
        entries = self.prompts.prompts()
        if profile is not None:  # [auth] a profile sees only its prompts
            entries = [entry for entry in entries if profile.allows_prompt(entry.name, entry.server)]
        return types.ListPromptsResult(prompts=[entry.prompt for entry in entries])

    async def get_prompt(self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams) -> types.GetPromptResult:
        entry = self._prompt(ctx, params.name)
        request = types.GetPromptRequest(params=params.model_copy(update={"name": entry.original_name}))
        return await self._send(entry.server, request, types.GetPromptResult, own_session_key(ctx))

    # -- resources -----------------------------------------------------------------------------

    async def list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        own = self.graph.definitions() if self.graph is not None else []  # read filtered per profile
        downstream = self.resources.resources()
        profile = _profile(ctx)
        if profile is not None:  # [auth] a profile sees only its resources
            downstream = [r for r in downstream if profile.allows_resource(str(r.uri), self.resources.owner(str(r.uri)))]
        return types.ListResourcesResult(resources=[*own, *downstream])

    async def list_resource_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        templates = self.resources.templates()
        profile = _profile(ctx)
        if profile is not None:  # [auth] globs match the template text, `servers` its owner
            templates = [
                t for t in templates if profile.allows_resource(t.uri_template, self.resources.template_owner(t.uri_template))
            ]
        return types.ListResourceTemplatesResult(resource_templates=templates)

    async def read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        if self.graph is not None and self.graph.owns(params.uri):
            return await self.graph.read(params.uri, _profile(ctx))
        server = self._resource_owner(ctx, params.uri)
        return await self._send(server, types.ReadResourceRequest(params=params), types.ReadResourceResult, own_session_key(ctx))

    async def subscribe(self, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
        key = legacy_session_key(ctx)
        if key is None:
            raise MCPError(types.INVALID_REQUEST, "resources/subscribe needs a session (use subscriptions/listen)")
        if not (self.graph is not None and self.graph.owns(params.uri)):
            server = self._resource_owner(ctx, params.uri)  # an unknown URI is an error now, not silence later
            await self._subscribe_own(server, own_session_key(ctx), params.uri, subscribe=True)
        await self.subscriptions.add_session(key, params.uri)
        return types.EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        key = legacy_session_key(ctx)
        if key is not None:
            server = self.resources.owner(params.uri)
            if server is not None:
                await self._subscribe_own(server, own_session_key(ctx), params.uri, subscribe=False)
            await self.subscriptions.remove_session(key, params.uri)
        return types.EmptyResult()

    async def _subscribe_own(self, server: str, session: str | None, uri: str, *, subscribe: bool) -> None:
        """Per_client servers: (un)subscribe on upstream ``session``'s own downstream session."""
        downstream = self._downstream(server)
        if downstream is None or downstream.sessions is None or session is None:
            return  # shared: the gateway's one subscription there (_start_relaying) serves every client
        caps = downstream.server_capabilities
        if caps is None or caps.resources is None or not caps.resources.subscribe or downstream.modern:
            return
        if subscribe:
            request: types.ClientRequest = types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri))
            await downstream.request(request, types.EmptyResult, session=session)
        elif downstream.sessions.get(session) is not None:
            request = types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri))
            await quietly(downstream.request(request, types.EmptyResult, session=session), f"unsubscribe from {uri!r}")
        own = downstream.sessions.get(session)
        if own is not None:  # a session holding subscriptions is not closed for idleness
            (own.subscriptions.add if subscribe else own.subscriptions.discard)(uri)

    async def listen(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        """``subscriptions/listen`` (2026-07-28): the SDK's handler, with the URIs relayed meanwhile."""
        assert self._listen is not None
        uris = list(dict.fromkeys(params.notifications.resource_subscriptions or ()))
        try:
            for uri in uris:
                await self.subscriptions.add_listener(uri)
            return await self._listen(ctx, params)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(SEND_TIMEOUT_SECONDS * 5):
                for uri in uris:
                    await self.subscriptions.remove_listener(uri)

    async def session_ended(self, key: str) -> None:
        await self.subscriptions.forget_session(key)
        self.relay.forget_session(key)

    async def notify_updated(self, uri: str, *, session: str | None = None, per_client: bool = False) -> None:
        """``notifications/resources/updated`` to every subscriber of ``uri``, in both eras.

        Issue 16: ``session``: the update came over that session's own downstream session, and goes
        to it alone; ``per_client``: it came over a per_client server's shared session, and goes to
        no session with its own there.
        """
        sessions = dict(self._sessions())
        keys = [key for key in self.subscriptions.sessions(uri) if hears(key, session, per_client)]
        with anyio.move_on_after(SEND_TIMEOUT_SECONDS):
            for key in keys:
                upstream = sessions.get(key)
                if upstream is not None:
                    await quietly(upstream.send_resource_updated(uri), f"resources/updated to {key}")
        if self._bus is not None and session is None:
            await self._bus.publish(ResourceUpdated(uri=uri))

    async def _start_relaying(self, uri: str) -> None:
        server = self.resources.owner(uri)
        downstream = self._downstream(server) if server is not None else None
        if downstream is not None and downstream.server_capabilities is not None:  # connected
            await self._subscribe_downstream(downstream, uri)

    async def _subscribe_downstream(self, downstream: Downstream, uri: str) -> None:
        caps = downstream.server_capabilities
        if caps is None or caps.resources is None or not caps.resources.subscribe or downstream.modern:
            return  # 2026-07-28 downstreams have no resources/subscribe (see the docs' notes)
        request = types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri))
        if await quietly(downstream.request(request, types.EmptyResult), f"subscribe to {uri!r}"):
            self._subscribed.setdefault(downstream.name, set()).add(uri)

    async def _stop_relaying(self, uri: str) -> None:
        for server, uris in self._subscribed.items():
            if uri in uris:
                uris.discard(uri)
                downstream = self._downstream(server)
                if downstream is not None:
                    request = types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri))
                    await quietly(downstream.request(request, types.EmptyResult), f"unsubscribe from {uri!r}")

    # -- completion, logging, roots ------------------------------------------------------------

    async def complete(self, ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams) -> types.CompleteResult:
        ref = params.ref
        if isinstance(ref, types.PromptReference):
            entry = self._prompt(ctx, ref.name)
            server, ref = entry.server, ref.model_copy(update={"name": entry.original_name})
        else:
            if self.graph is not None and self.graph.owns(ref.uri):
                return types.CompleteResult(completion=types.Completion(values=[]))
            server = self.resources.template_owner(ref.uri) or self._owner(ref.uri)
            profile = _profile(ctx)
            if profile is not None and not profile.allows_resource(ref.uri, server):
                raise MCPError(RESOURCE_NOT_FOUND, f"resource {ref.uri!r} is not allowed for profile {profile.name!r}")
        request = types.CompleteRequest(params=params.model_copy(update={"ref": ref}))
        return await self._send(server, request, types.CompleteResult, own_session_key(ctx))

    async def set_logging_level(
        self, ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        """Forwarded to every downstream that logs; this session then hears messages at or above it.

        Per_client servers: to this session's own downstream session if it has one open (one opened
        later gets the level then), never to the shared one or another session's.
        """
        self.relay.set_session_level(legacy_session_key(ctx), params.level)
        self.log_level = params.level
        own = own_session_key(ctx)
        async with anyio.create_task_group() as tg:
            for name in sorted(self._connected):
                downstream = self._downstream(name)
                caps = downstream.server_capabilities if downstream is not None else None
                if downstream is None or caps is None or caps.logging is None or downstream.modern:
                    continue
                if not self._reaches_own(downstream, own):
                    continue
                request = downstream.request(_set_level(params.level), types.EmptyResult, session=own)
                tg.start_soon(quietly, request, f"logging level of {name!r}")
        return types.EmptyResult()

    async def roots_list_changed(self, ctx: ServerRequestContext[Any, Any], params: types.NotificationParams | None) -> None:
        """A client's roots changed: every downstream that may ask for them hears of it (and asks that client)."""
        self.relay.roots_changed(legacy_session_key(ctx))
        own = own_session_key(ctx)
        for name in sorted(self._connected):
            downstream = self._downstream(name)
            if downstream is None or downstream.modern or not self._reaches_own(downstream, own):
                continue
            notification = types.RootsListChangedNotification()
            await quietly(downstream.notify(notification, session=own), f"roots/list_changed to {name!r}")

    # -- helpers -------------------------------------------------------------------------------

    def _prompt(self, ctx: ServerRequestContext[Any, Any], name: str) -> RegisteredPrompt:
        """The prompt ``name`` as this caller may use it: unknown and outside its profile are errors."""
        entry = self.prompts.get(name)
        if entry is None:
            raise MCPError(types.INVALID_PARAMS, f"unknown prompt {name!r}")
        profile = _profile(ctx)
        if profile is not None and not profile.allows_prompt(entry.name, entry.server):
            raise MCPError(types.INVALID_PARAMS, f"prompt {name!r} is not allowed for profile {profile.name!r}")
        return entry

    def _resource_owner(self, ctx: ServerRequestContext[Any, Any], uri: str) -> str:
        """The server of ``uri`` as this caller may use it: unknown and outside its profile are errors."""
        server = self._owner(uri)
        profile = _profile(ctx)
        if profile is not None and not profile.allows_resource(uri, server):
            raise MCPError(RESOURCE_NOT_FOUND, f"resource {uri!r} is not allowed for profile {profile.name!r}")
        return server

    @staticmethod
    def _reaches_own(downstream: Downstream, session: str | None) -> bool:
        """Whether session state of upstream ``session`` is sent to ``downstream`` now: always to a
        shared server; to a per_client one only over that session's own downstream session, when
        open (one opened later gets the level then; ``session_opened``)."""
        return downstream.sessions is None or session is None or downstream.sessions.get(session) is not None

    def _owner(self, uri: str) -> str:
        server = self.resources.owner(uri)
        if server is None:
            raise MCPError(RESOURCE_NOT_FOUND, f"unknown resource {uri!r}: no downstream server lists it or a template matching it")
        return server

    async def _send(
        self, server: str, request: types.ClientRequest, result_type: type[ResultT], session: str | None = None
    ) -> ResultT:
        downstream = self._downstream(server)
        if downstream is None:
            raise MCPError(types.INTERNAL_ERROR, f"downstream server {server!r} is not configured")
        return await downstream.request(request, result_type, session=session)

    def _merge_instructions(self) -> None:
        if self._server is None:
            return
        parts = [self._base_instructions] if self._base_instructions else []
        parts += [f"## {name}\n\n{text.strip()}" for name, text in sorted(self._instructions.items())]
        self._server.instructions = "\n\n".join(parts) or None


def _profile(ctx: ServerRequestContext[Any, Any]) -> Profile | None:
    """[auth] The caller's profile, put in the request's scope by the gate (None: unlimited)."""
    return request_caller(getattr(ctx.request, "scope", None)).profile


def _set_level(level: types.LoggingLevel) -> types.SetLevelRequest:
    return types.SetLevelRequest(params=types.SetLevelRequestParams(level=level))


async def _all(server: str, list_page: Callable[..., Awaitable[Any]], field: str) -> list[Any]:
    """Every item of a paginated list request; none (logged) when the server refuses it."""
    items: list[Any] = []
    cursor: str | None = None
    while True:
        try:
            page = await list_page(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        except MCPError as exc:  # declared but broken: its tools still work
            logger.warning("downstream %r: listing %s failed: %s", server, field.replace("_", " "), exc.message)
            return items
        items.extend(getattr(page, field))
        cursor = page.next_cursor
        if not cursor:
            return items
