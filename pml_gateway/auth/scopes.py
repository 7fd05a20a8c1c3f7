"""The scopes, and which one each route needs (DESIGN.md "Who may do what").

One table for the whole HTTP surface, matched on the path, so that a route another module adds
later is covered by the rule for its prefix, and a path nobody listed needs ``admin``: refusing
by default is the safe mistake. ``admin`` grants every scope; it is expanded once, when a
principal is authenticated (``effective_scopes``), so the SDK's ``RequireAuthMiddleware`` can
check a plain membership.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

MCP: Final = "mcp"
EVENTS_READ: Final = "events:read"
EXECUTIONS_WRITE: Final = "executions:write"
METRICS_READ: Final = "metrics:read"
ADMIN: Final = "admin"
ALL_SCOPES: Final = (MCP, EVENTS_READ, EXECUTIONS_WRITE, METRICS_READ, ADMIN)

#: Paths anyone may fetch: the dashboard page and its files (the page asks for a key), the
#: resource metadata (clients read it to learn where to get a token), and /health (which answers
#: only ``{"status"}`` without a token: http_api.py asks ``shows_details``).
PUBLIC: Final = "public"

#: (path, is_prefix, scope), first match wins.
_RULES: Final[tuple[tuple[str, bool, str], ...]] = (
    ("/health", False, PUBLIC),
    ("/dashboard", True, PUBLIC),
    ("/static/", True, PUBLIC),
    ("/favicon.ico", False, PUBLIC),
    ("/.well-known/oauth-protected-resource", True, PUBLIC),
    ("/mcp", False, MCP),
    ("/profiles/", True, MCP),
    ("/events/token", False, EVENTS_READ),
    ("/events/", True, EVENTS_READ),
    ("/graph", False, EVENTS_READ),
    ("/graph/", True, ADMIN),  # POST /graph/reset, DELETE /graph/tools/{tool_id}: deleting history
    ("/executions", False, EXECUTIONS_WRITE),
    ("/metrics", False, METRICS_READ),
)


def required_scope(path: str) -> str:
    """The scope a request to ``path`` needs, ``PUBLIC``, or ``admin`` for a path not listed."""
    for rule, is_prefix, scope in _RULES:
        if path == rule or (is_prefix and path.startswith(rule)) or (not is_prefix and path == rule + "/"):
            return scope
    return ADMIN


def unknown_scopes(scopes: Iterable[str]) -> list[str]:
    return [scope for scope in scopes if scope not in ALL_SCOPES]


def effective_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes a principal holds: known ones only, and every scope when ``admin`` is among them."""
    held = [scope for scope in dict.fromkeys(scopes) if scope in ALL_SCOPES]
    return list(ALL_SCOPES) if ADMIN in held else held
