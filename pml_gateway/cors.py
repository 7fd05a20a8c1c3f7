"""CORS for the whole HTTP API: an allow-list of origin patterns, where ``*`` matches anything.

Starlette's ``CORSMiddleware`` does the work; this subclass turns the ``cors_origins`` patterns
(``http://localhost:*``) into its regex and makes refusals strict: an origin that does not match
gets no CORS header at all (a refused preflight is a plain 403), only ``Vary: Origin``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Send

ALLOWED_METHODS = ("GET", "HEAD", "POST", "DELETE", "OPTIONS")
#: Readable by browser code: the MCP session header and the 503's hint.
EXPOSED_HEADERS = ("Mcp-Session-Id", "Retry-After")
PREFLIGHT_MAX_AGE = 600


def origin_regex(patterns: Sequence[str]) -> str | None:
    """``["http://localhost:*"]`` -> ``http://localhost:[^/]*``; a lone ``*`` allows every origin."""
    if not patterns:
        return None
    parts = []
    for pattern in patterns:
        if pattern == "*":
            parts.append(".*")
        else:
            parts.append("[^/]*".join(re.escape(piece) for piece in pattern.split("*")))
    return "|".join(f"(?:{part})" for part in parts)


class OriginPatternCORSMiddleware(CORSMiddleware):
    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        super().__init__(
            app,
            allow_origins=(),
            allow_origin_regex=origin_regex(origins),
            allow_methods=ALLOWED_METHODS,
            allow_headers=("*",),  # the origin is trusted already: mirror what it asks for
            expose_headers=EXPOSED_HEADERS,
            max_age=PREFLIGHT_MAX_AGE,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        if not self.is_allowed_origin(request_headers["origin"]):
            return JSONResponse(
                {"error": f"Origin not allowed: {request_headers['origin']}"},
                status_code=403,
                headers={"Vary": "Origin"},
            )
        return super().preflight_response(request_headers)

    async def send(self, message: Message, send: Send, request_headers: Headers) -> None:
        if message["type"] != "http.response.start":
            await send(message)
            return
        origin = request_headers.get("origin")
        if origin is not None and self.is_allowed_origin(origin):
            await super().send(message, send, request_headers)
            return
        # Refused (or no Origin at all): no CORS headers, but caches must still key on Origin.
        message.setdefault("headers", [])
        headers = MutableHeaders(scope=message)
        headers["Vary"] = ", ".join([*headers.getlist("Vary"), "Origin"])
        await send(message)


def cors_middleware(origins: Sequence[str]) -> Middleware:
    return Middleware(OriginPatternCORSMiddleware, origins=list(origins))
