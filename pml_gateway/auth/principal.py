"""Who is calling: the SDK's ``AccessToken`` is the one shape every kind of credential becomes.

API keys, JWTs and stream tokens all verify to an ``AccessToken`` whose ``client_id`` is the
principal's name and whose ``claims`` carry ``pml_kind`` (``key`` / ``jwt`` / ``stream`` /
``anonymous``) and ``pml_profile``. The rest of the process asks ``current_principal`` (from the
ASGI scope, or the SDK's ``get_access_token()`` context variable) and never which kind it was.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken

from pml_gateway.auth.profiles import Profile
from pml_gateway.auth.scopes import effective_scopes

#: ASGI scope key: the ``Profile`` that limits this request (set by the guard), if any.
PROFILE_SCOPE_KEY = "pml.profile"


def principal_token(
    token: str,
    name: str,
    scopes: list[str],
    profile: str | None,
    *,
    kind: str,
    expires_at: int | None = None,
    claims: Mapping[str, Any] | None = None,
) -> AccessToken:
    """The ``AccessToken`` of a principal: ``client_id`` is its name, its profile in the claims."""
    return AccessToken(
        token=token,
        client_id=name,
        scopes=effective_scopes(scopes),
        expires_at=expires_at,
        subject=name,
        claims={**(claims or {}), "pml_kind": kind, "pml_profile": profile},
    )


def profile_name(token: AccessToken) -> str | None:
    value = (token.claims or {}).get("pml_profile")
    return value if isinstance(value, str) and value else None


def current_principal(scope: Mapping[str, Any] | None) -> AccessToken | None:
    """The authenticated principal of a request (its ASGI scope), else of the current context."""
    user = scope.get("user") if scope is not None else None
    if isinstance(user, AuthenticatedUser):
        return user.access_token
    return get_access_token()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling (the principal's name, None without authentication) and its profile, if any."""

    principal: str | None
    profile: Profile | None

    @property
    def profile_name(self) -> str | None:
        return self.profile.name if self.profile is not None else None


def request_caller(scope: Mapping[str, Any] | None) -> Caller:
    """The caller of a request, from its ASGI scope (None over stdio: the local user, unlimited)."""
    token = current_principal(scope)
    profile = scope.get(PROFILE_SCOPE_KEY) if scope is not None else None
    return Caller(token.client_id if token is not None else None, profile if isinstance(profile, Profile) else None)


_caller: ContextVar[Caller] = ContextVar("pml_caller", default=Caller(None, None))


@contextmanager
def calling_as(caller: Caller) -> Iterator[None]:
    """Run a tool call's work (a workflow's tasks included) as ``caller``: see ``caller_in_context``."""
    token = _caller.set(caller)
    try:
        yield
    finally:
        _caller.reset(token)


def caller_in_context() -> Caller:
    """The caller whose tool call this code runs for (tasks started inside it inherit it)."""
    return _caller.get()
