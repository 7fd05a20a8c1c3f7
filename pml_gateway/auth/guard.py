"""The one gate every HTTP request and WebSocket passes: who is calling, and may they.

Built from the SDK's pieces (SDK_NOTES §9), composed around the whole app rather than one route,
so that routes other modules add are covered by ``scopes.required_scope``'s table:

    AuthenticationMiddleware(BearerAuthBackend(keys or JWT))   # scope["user"], scope["auth"]
      -> _Gate                                                  # stream tokens, profiles, scopes
        -> AuthContextMiddleware                                # get_access_token() in handlers
          -> the app

The gate, per request:

- ``/profiles/{name}/mcp`` is served as ``/mcp`` limited to that profile (404 for an unknown
  one). Without authentication, anyone reaching the port may use it (the local case); with it, a
  principal needs ``mcp`` and, if its credential names a profile, that same profile.
- ``?access_token=`` is accepted only on the event stream routes and only as a stream token
  (stream_tokens.py); it is removed from the query before the stream parses it. Anywhere else,
  or when it is not a stream token (an API key or JWT in a URL), the request is refused.
- Public paths pass; any other needs its scope, else the SDK's ``RequireAuthMiddleware`` answers
  401 ``invalid_token`` (with ``WWW-Authenticate: Bearer ... resource_metadata="..."`` when JWTs
  are on) or 403 ``insufficient_scope``, as JSON ``{"error", "error_description"}``.
- The credential's profile, resolved to its ``Profile``, goes into the scope
  (``principal.PROFILE_SCOPE_KEY``) for the MCP server and the event stream; a profile name the
  config does not define is refused (403): a restricted credential never falls back to "all".

Credentials stop here: the downstream links build their own headers from the config, and the
``Authorization`` header a client sent is never forwarded (tests/test_auth_http.py proves it).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from mcp.server.auth.handlers.metadata import ProtectedResourceMetadataHandler
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, BearerAuthBackend, RequireAuthMiddleware
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.routes import build_resource_metadata_url
from mcp.shared.auth import ProtectedResourceMetadata
from pydantic import AnyHttpUrl
from starlette.authentication import AuthCredentials
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pml_gateway.auth.jwt import JwtVerifier
from pml_gateway.auth.keys import KeyStore, KeysFileError, looks_like_key
from pml_gateway.auth.principal import PROFILE_SCOPE_KEY, principal_token, profile_name
from pml_gateway.auth.profiles import Profile
from pml_gateway.auth.scopes import ALL_SCOPES, MCP, PUBLIC, required_scope
from pml_gateway.auth.stream_tokens import StreamTokens
from pml_gateway.settings import Settings

log = logging.getLogger(__name__)

#: ASGI scope key: True when this process requires authentication (``shows_details`` reads it).
AUTH_ON_KEY = "pml.auth_on"
STREAM_PATHS = ("/events/stream", "/events/ws")
MCP_PATH = "/mcp"
PROFILES_PREFIX = "/profiles/"
METADATA_PATH = "/.well-known/oauth-protected-resource"


class CredentialVerifier:
    """The SDK's ``TokenVerifier`` for an ``Authorization: Bearer`` credential: an API key or a JWT."""

    def __init__(self, keys: KeyStore, jwt: JwtVerifier | None) -> None:
        self.keys = keys
        self.jwt = jwt

    async def verify_token(self, token: str) -> AccessToken | None:
        if looks_like_key(token):
            try:
                key = self.keys.verify(token)
            except KeysFileError as exc:  # damaged since start-up: refuse keys, say why once per request
                log.error("API keys refused: %s", exc)
                return None
            return principal_token(token, key.name, key.scopes, key.profile, kind="key") if key is not None else None
        if self.jwt is not None:
            return await self.jwt.verify_token(token)
        return None


class AuthPolicy:
    """The process's authentication: on or off, how credentials verify, the profiles, the routes.

    Authentication is ON when the keys file holds at least one key when the process starts, or
    any ``jwt_*`` setting is given; otherwise it is off for the life of the process (a key
    created later takes effect at the next start; a key revoked takes effect at once).
    """

    def __init__(self, settings: Settings, profiles: Mapping[str, Profile] | None = None) -> None:
        self.settings = settings
        self.keys = KeyStore(settings.keys_file)
        self.jwt = JwtVerifier(settings) if settings.jwt_enabled else None
        self.key_count = len(self.keys.load())
        self.enabled = self.key_count > 0 or self.jwt is not None
        self.verifier = CredentialVerifier(self.keys, self.jwt)
        self.stream_tokens = StreamTokens()
        self.profiles: Mapping[str, Profile] = profiles if profiles is not None else {}  # live: reloads show
        servers = settings.auth_servers or ([settings.jwt_issuer] if settings.jwt_issuer else [])
        self.auth_servers = [AnyHttpUrl(server) for server in servers]

    def describe(self) -> str:
        """The banner's auth line."""
        if not self.enabled:
            if is_loopback(self.settings.host):
                return "auth: off (no API keys, no JWT settings): loopback use only"
            return "auth: off (--allow-unauthenticated): anyone who reaches this address may use everything"
        kinds = []
        if self.key_count:
            kinds.append(f"API keys ({self.key_count} in {self.keys.path})")
        if self.jwt is not None:
            kinds.append(f"JWTs from {self.settings.jwt_issuer} for audience {self.settings.jwt_audience}")
        return "auth: on: " + " and ".join(kinds)

    # -- wiring --------------------------------------------------------------------------------
    def middleware(self) -> Middleware:
        return Middleware(_AuthStack, policy=self)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/events/token", self._events_token, methods=["POST"]),
            Route(METADATA_PATH + MCP_PATH, self._resource_metadata, methods=["GET"]),
        ]

    def resource_url(self, connection: HTTPConnection) -> str:
        return str(connection.base_url).rstrip("/") + MCP_PATH

    def metadata_url(self, connection: HTTPConnection) -> AnyHttpUrl | None:
        if self.jwt is None:
            return None  # no authorization server to point at: keys are made with the CLI
        return build_resource_metadata_url(AnyHttpUrl(self.resource_url(connection)))

    # -- routes --------------------------------------------------------------------------------
    async def _events_token(self, request: Request) -> Response:
        user = request.scope.get("user")
        if not self.enabled or not isinstance(user, AuthenticatedUser):
            return JSONResponse(
                {"error": "authentication is off: open /events/stream without a token"}, status_code=404
            )
        token = self.stream_tokens.mint(user.access_token)
        return JSONResponse({"token": token, "expires_in": self.stream_tokens.ttl_seconds}, headers={"Cache-Control": "no-store"})

    async def _resource_metadata(self, request: Request) -> Response:
        if self.jwt is None:
            return JSONResponse({"error": "no OAuth resource metadata: JWT authentication is off"}, status_code=404)
        metadata = ProtectedResourceMetadata(
            resource=AnyHttpUrl(self.resource_url(request)),
            authorization_servers=self.auth_servers,
            scopes_supported=list(ALL_SCOPES),
            resource_name="pml-gateway",
        )
        return await ProtectedResourceMetadataHandler(metadata).handle(request)


class _AuthStack:
    """The middleware the app installs: the SDK's authentication, the gate, the SDK's context."""

    def __init__(self, app: ASGIApp, policy: AuthPolicy) -> None:
        gate = _Gate(AuthContextMiddleware(app), policy)
        self._app: ASGIApp = AuthenticationMiddleware(gate, backend=BearerAuthBackend(policy.verifier)) if policy.enabled else gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


class _Gate:
    def __init__(self, app: ASGIApp, policy: AuthPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        policy = self.policy
        path: str = scope["path"]
        if not policy.enabled and not path.startswith(PROFILES_PREFIX) and b"access_token" not in scope.get("query_string", b""):
            await self.app(scope, receive, send)  # the local case: nothing to do, nothing to copy
            return
        scope = dict(scope)
        scope[AUTH_ON_KEY] = policy.enabled
        asked_profile: str | None = None
        if path.startswith(PROFILES_PREFIX):
            asked_profile, refusal = _profile_route(path, policy.profiles)
            if refusal is not None:
                await _refuse(scope, receive, send, 404, refusal)
                return
            scope["path"] = MCP_PATH
            scope["raw_path"] = MCP_PATH.encode()
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        url_tokens = [value for key, value in query if key == "access_token"]
        if url_tokens:
            scope["query_string"] = urlencode([(k, v) for k, v in query if k != "access_token"]).encode()
        if not policy.enabled:
            if asked_profile is not None:
                _set_user(scope, principal_token("", "anonymous", [MCP], asked_profile, kind="anonymous"))
                scope[PROFILE_SCOPE_KEY] = policy.profiles[asked_profile]
            await self.app(scope, receive, send)
            return

        if url_tokens:
            if path not in STREAM_PATHS:
                await _refuse(scope, receive, send, 400, "access_token in the URL is accepted only on /events/stream and "
                              "/events/ws, and only a token from POST /events/token: send credentials as Authorization: Bearer")
                return
            streamer = policy.stream_tokens.verify(url_tokens[-1])
            if streamer is None:
                scope.pop("user", None)  # an API key or JWT in the URL is not accepted, even when valid
                scope.pop("auth", None)
            else:
                _set_user(scope, streamer)
        if scope.get("method") == "OPTIONS":  # CORS preflights carry no credentials by design
            await self.app(scope, receive, send)
            return
        needed = required_scope(path)
        if needed == PUBLIC:
            await self.app(scope, receive, send)
            return
        user = scope.get("user")
        if not isinstance(user, AuthenticatedUser) or needed not in user.scopes:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": f"requires scope {needed}"})
                return
            await RequireAuthMiddleware(self.app, [needed], policy.metadata_url(HTTPConnection(scope)))(scope, receive, send)
            return
        held = profile_name(user.access_token)
        if asked_profile is not None and held is not None and held != asked_profile:
            await _refuse(scope, receive, send, 403, f"this credential is limited to profile {held!r}, not {asked_profile!r}")
            return
        effective = asked_profile or held
        if effective is not None:
            profile = policy.profiles.get(effective)
            if profile is None:
                await _refuse(scope, receive, send, 403, f"profile {effective!r} is not defined in the config")
                return
            scope[PROFILE_SCOPE_KEY] = profile
        await self.app(scope, receive, send)


def _profile_route(path: str, profiles: Mapping[str, Profile]) -> tuple[str | None, str | None]:
    """``/profiles/{name}/mcp`` -> (name, None), or (None, why it is refused)."""
    rest = path[len(PROFILES_PREFIX):]
    name, _, tail = rest.partition("/")
    if tail.rstrip("/") != MCP_PATH.strip("/") or not name:
        return None, f"not found: {path} (profiles are served at /profiles/{{name}}/mcp)"
    if name not in profiles:
        return None, f"unknown profile {name!r}" + (f" (defined: {', '.join(sorted(profiles))})" if profiles else " (the config defines none)")
    return name, None


def _set_user(scope: dict[str, Any], token: AccessToken) -> None:
    scope["user"] = AuthenticatedUser(token)
    scope["auth"] = AuthCredentials(token.scopes)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    await JSONResponse({"error": message}, status_code=status)(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (a name other than localhost may resolve anywhere)."""
    if host in ("localhost", "127.0.0.1", "::1"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def shows_details(scope: Mapping[str, Any]) -> bool:
    """Whether a request may see more than ``{"status"}`` of ``/health``: auth off, or a valid credential."""
    return not scope.get(AUTH_ON_KEY, False) or isinstance(scope.get("user"), AuthenticatedUser)
