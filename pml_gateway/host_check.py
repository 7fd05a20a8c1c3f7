"""DNS-rebinding and cross-site protection for every route, not only ``/mcp``.

A page on ``http://evil.example`` that resolves its own name to 127.0.0.1 reaches a local gateway
with ``Host: evil.example``: every request whose Host is not one of ours is refused (421). A page
on any origin can also send "simple" requests (a ``text/plain`` POST, a WebSocket) without a
preflight: a POST, DELETE or WebSocket whose ``Origin`` is not allowed by ``cors_origins`` is
refused (403). Reading answers cross-origin stays governed by CORS (``cors.py``).

The allowed Host names are the loopback names, the host the server is bound to (unless it is a
wildcard such as ``0.0.0.0``) and the ``allowed_hosts`` setting; the protection never switches
itself off. The same list feeds the MCP SDK's own check on ``/mcp`` (``transport_settings``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from pml_gateway.cors import origin_regex
from pml_gateway.settings import Settings

__all__ = ["HostCheckMiddleware", "allowed_host_names", "transport_settings"]

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
#: Methods a page can send cross-site without a preflight that changes something.
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def allowed_host_names(settings: Settings) -> list[str]:
    """Host names (without port) this gateway answers to."""
    names = list(LOOPBACK_NAMES)
    bound = settings.host.strip("[]")
    if bound not in WILDCARD_HOSTS:
        names.append(f"[{bound}]" if ":" in bound else bound)
    names.extend(settings.allowed_hosts)
    return list(dict.fromkeys(name.lower() for name in names))


def _origins(settings: Settings, hosts: Iterable[str]) -> list[str]:
    """Origins allowed to change things: the CORS list and pages served by the gateway itself."""
    own = [f"{scheme}://{host}:*" for host in hosts for scheme in ("http", "https")]
    own += [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")]
    return [*settings.cors_origins, *own]


def transport_settings(settings: Settings) -> TransportSecuritySettings:
    """The MCP SDK's DNS-rebinding settings for ``/mcp``, from the same lists as the middleware."""
    hosts = allowed_host_names(settings)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*hosts, *(f"{host}:*" for host in hosts)],
        allowed_origins=_origins(settings, hosts),
    )


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        end = value.find("]")
        return value[: end + 1] if end != -1 else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostCheckMiddleware:
    """Refuses foreign ``Host`` headers (421) and cross-site writes (403), as JSON."""

    def __init__(self, app: ASGIApp, *, hosts: Sequence[str], origins: Sequence[str]) -> None:
        self.app = app
        self.hosts = frozenset(hosts)
        regex = origin_regex(origins)
        self.origin = re.compile(regex) if regex else None

    @classmethod
    def from_settings(cls, app: ASGIApp, settings: Settings) -> HostCheckMiddleware:
        hosts = allowed_host_names(settings)
        return cls(app, hosts=hosts, origins=_origins(settings, hosts))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        problem = self._problem(kind, scope.get("method", "GET"), headers)
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, message = problem
        response = JSONResponse({"error": message}, status_code=status)
        if kind == "websocket":
            if "websocket.http.response" in scope.get("extensions", {}):
                await response(scope, receive, send)  # Starlette answers the handshake with the JSON
            else:
                await send({"type": "websocket.close", "code": 1008, "reason": message})  # a bare 403
            return
        await response(scope, receive, send)

    def _problem(self, kind: str, method: str, headers: Headers) -> tuple[int, str] | None:
        host = headers.get("host")
        if host is None or _host_name(host) not in self.hosts:
            return 421, f"Invalid Host header {host!r}: add the name to allowed_hosts (PML_ALLOWED_HOSTS) to serve it"
        origin = headers.get("origin")
        if origin is not None and (kind == "websocket" or method in _UNSAFE_METHODS):
            if self.origin is None or not self.origin.fullmatch(origin):
                return 403, f"Origin {origin!r} is not allowed: add it to cors_origins (PML_CORS_ORIGINS)"
        return None

